"""Start the DexWM-ROS grasp graph: simulation (sim:=true, default) or camera + franka + allegro, plus
the planner. Arguments and nodes come from config/graph.yaml (see the README's argument table):

    ros2 launch dexwm_ros grasp.launch.py sim:=false robot_ip:=172.16.0.2 can_channel:=can0
"""
from dexwm_ros.launch_support import generate_graph_launch_description


def generate_launch_description():
    return generate_graph_launch_description("grasp")
