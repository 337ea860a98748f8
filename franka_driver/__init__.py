"""franka_driver: the ROS-free Franka arm core over franky (libfranka), and franky-sim for tests."""
