"""camera_driver: ROS-free camera frame sources (RealSense, recorded files, OpenCV video/webcam)."""
