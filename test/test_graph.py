"""The shared graph description (config/graph.yaml) and its resolution into node processes."""
import shutil

import pytest
import yaml

from dexwm_ros import graph
from dexwm_ros.graph import GraphError, resolve_graph

# robot_state_publisher is not installable here (no ROS 2 distribution): left out, see test_robot_model_graph.py.
CONTRACT_NODES = {
    True: ["/sim", "/dexwm/planner", "/joint_state_merger"],
    False: ["/camera/camera", "/franka", "/allegro", "/dexwm/planner", "/joint_state_merger"],
}


@pytest.mark.parametrize("name", ["grasp", "reach", "place"])
@pytest.mark.parametrize("sim", [True, False])
def test_graph_nodes_follow_the_contract(name, sim):
    nodes = resolve_graph(name, {"sim": str(sim).lower()})
    assert [n.full_name for n in nodes] == CONTRACT_NODES[sim]
    planner = next(n for n in nodes if n.name == "planner")
    assert planner.parameters["task"] == name
    for n in nodes:
        assert n.params_file.is_file()


def test_arguments_are_typed_like_the_node_yaml():
    nodes = {n.name: n for n in resolve_graph("reach", {"seed": "7", "real_time_factor": "2"})}
    assert nodes["sim"].parameters["seed"] == 7
    assert nodes["sim"].parameters["real_time_factor"] == 2.0
    assert isinstance(nodes["sim"].parameters["real_time_factor"], float)
    hw = {n.name: n for n in resolve_graph("grasp", {"sim": "false", "camera_serial": "012345",
                                                    "robot_ip": "10.0.0.2"})}
    assert hw["camera"].parameters["serial"] == "012345"
    assert hw["franka"].parameters["robot_ip"] == "10.0.0.2"
    # A serial number made of digits must reach the node as a string.
    args = hw["camera"].ros_args()
    assert "serial:='012345'" in args
    # Empty arguments keep the YAML value.
    assert "checkpoint" not in hw["planner"].parameters


def test_planner_plans_in_the_calibrated_camera_frame(tmp_path):
    """The calibration file that places the camera in TF also gives the planner its extrinsic (its
    actions and planned-hand pixels are in the camera frame); without one the node keeps its default."""
    import numpy as np

    from dexwm_ros.planner_settings import PlannerSettings

    w2c = np.eye(4)
    w2c[:3, 3] = (0.1, -0.2, 1.3)
    calib = tmp_path / "calib.yaml"
    calib.write_text(yaml.safe_dump(w2c.tolist()))
    planner = next(n for n in resolve_graph("grasp", {"sim": "false", "extrinsics": str(calib)}) if n.name == "planner")
    assert planner.parameters["world_to_camera"] == [float(v) for v in w2c.ravel()]
    assert "world_to_camera:=[1.0, 0.0, 0.0, 0.1," in " ".join(planner.ros_args())
    settings = PlannerSettings(world_to_camera=tuple(planner.parameters["world_to_camera"]))
    np.testing.assert_array_equal(settings.camera_extrinsic(), w2c)
    default = next(n for n in resolve_graph("grasp", {"sim": "false"}) if n.name == "planner")
    assert "world_to_camera" not in default.parameters
    bad = tmp_path / "bad.yaml"
    bad.write_text("[1, 2, 3]")
    with pytest.raises(GraphError, match="camera calibration"):
        resolve_graph("grasp", {"sim": "false", "extrinsics": str(bad)})


def test_ros_args_name_and_namespace():
    cam = next(n for n in resolve_graph("grasp", {"sim": "false"}) if n.name == "camera")
    args = cam.ros_args()
    assert args[:5] == ["--ros-args", "-r", "__node:=camera", "-r", "__ns:=/camera"]
    assert "--params-file" in args


@pytest.mark.parametrize("graph_name,arguments,message", [
    ("fly", {}, "unknown graph 'fly'"),
    ("grasp", {"speed": "1"}, "unknown argument 'speed'"),
    ("grasp", {"sim": "maybe"}, "not a boolean"),
    ("grasp", {"seed": "abc"}, "is not a int"),
])
def test_bad_arguments_name_the_cause(graph_name, arguments, message):
    with pytest.raises(GraphError, match=message):
        resolve_graph(graph_name, arguments)


def test_missing_config_file_is_named(tmp_path, monkeypatch):
    shutil.copytree(graph.config_dir(), tmp_path / "config")
    (tmp_path / "config" / "planner.yaml").unlink()
    monkeypatch.setenv("DEXWM_CONFIG_DIR", str(tmp_path / "config"))
    with pytest.raises(GraphError, match="planner.yaml"):
        resolve_graph("grasp")


def test_parse_assignments():
    assert graph.parse_assignments(["a:=1", "b:=x:=y", "c:="]) == {"a": "1", "b": "x:=y", "c": ""}
    with pytest.raises(GraphError, match="name:=value"):
        graph.parse_assignments(["sim=true"])


def test_every_node_config_is_a_ros_params_file():
    for path in graph.config_dir().glob("*.yaml"):
        if path.name == "graph.yaml" or path.name.startswith("wm_"):
            continue
        data = yaml.safe_load(path.read_text())
        assert "/**" in data and "ros__parameters" in data["/**"], path.name
