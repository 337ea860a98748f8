"""dexwm_robot: the facts of the robot, defined once (the bottom layer of the stack).

Joint names, order, counts and limits of the Franka FR3 arm and the Allegro V4 hand; the kinematic
description and batched forward/inverse kinematics; the head camera model and the one image crop the
world model sees; the joint-command safety check. numpy/scipy only: no rclpy, no simulation scene,
and nothing from dexwm_planner, dexwm_sim, the drivers or dexwm_ros, so the planner, the
simulation, the driver cores and the nodes can all stand on it.
"""
