"""What an Execute goal asks for, checked before anything is planned (ROS-free): the task, the step
budget and a single goal or a sequence of subgoals; a request that cannot run is refused with the
reason the action result carries (``bad_goal: ...``, ``no_goal: ...``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dexwm_robot.tasks import TASK_KINDS
from dexwm_ros.goal_images import Goal, fit_goal_depth, fit_goal_image
from dexwm_ros.goal_store import MAX_SUBGOALS, GoalStore, check_sequence_name, sequence_subgoals
from dexwm_ros.image_conversion import depth_to_numpy, image_to_numpy
from dexwm_ros.planner_settings import MAX_STEPS_RANGE


class Refused(Exception):
    """An Execute request that cannot run; ``str()`` is the result's reason."""


@dataclass(frozen=True)
class ExecutePlan:
    task: str
    max_steps: int
    goals: list[Goal]            # one for a single goal, the subgoals of a sequence
    sequence: bool               # run as a sequence of subgoals
    name: str = ""               # the captured sequence's name
    new_goal: bool = False       # a single goal image sent with the request (it becomes the current goal)


def read_request(request, default_task: str, default_max_steps: int, goals: GoalStore,
                 camera_hw: tuple[int, int] | None) -> ExecutePlan:
    """The plan of an Execute goal ``request`` (dexwm_ros/action/Execute); Refused saying why not.
    ``camera_hw``: the camera's image size, which goal images are brought to (None: not known)."""
    low, high = MAX_STEPS_RANGE
    if request.max_steps != 0 and not low <= request.max_steps <= high:
        raise Refused(f"bad_goal: max_steps {request.max_steps} is outside {low}..{high} "
                      "(0 uses the max_steps parameter)")
    if request.task and request.task not in TASK_KINDS:
        raise Refused(f"bad_goal: unknown task {request.task!r}")
    task, max_steps = request.task or default_task, int(request.max_steps) or int(default_max_steps)
    try:
        name, sequence = _sequence(request, goals, camera_hw)
        if sequence:
            sequence_subgoals(sequence)       # unknown phases fail before anything moves
            return ExecutePlan(task, max_steps, sequence, True, name)
        if request.goal_image.height > 0 and not request.use_captured_goal:
            if len(request.goal_depths) > 1:
                raise ValueError(f"{len(request.goal_depths)} depth images for one goal image")
            image = fit_goal_image(image_to_numpy(request.goal_image), camera_hw)
            depth = _goal_depth(request.goal_depths[0], image, "the goal image") if request.goal_depths else None
            return ExecutePlan(task, max_steps, [Goal(image, None, "the Execute request", depth=depth)], False,
                               new_goal=True)
        if request.goal_depths:
            raise ValueError("goal_depths need their goal images (goal_image or goal_images)")
    except ValueError as e:
        raise Refused(f"bad_goal: {e}") from None
    goal = goals.goal
    if goal is None:
        raise Refused("no_goal: no goal: send a goal image, call /dexwm/capture_goal, use the RViz tools or set "
                      "the goal_image parameter")
    return ExecutePlan(task, max_steps, [goal], False)


def _sequence(request, goals: GoalStore, camera_hw) -> tuple[str, list[Goal]]:
    """The subgoals the request names (its goal images or a captured sequence; none for a single
    goal); Refused when the named sequence is empty, ValueError for a bad request."""
    if request.goal_images and request.sequence:
        raise ValueError("give goal_images or a sequence name, not both")
    if request.phases and len(request.phases) != len(request.goal_images):
        raise ValueError(f"{len(request.phases)} phases for {len(request.goal_images)} goal images "
                         "(give one per image, or none)")
    if request.goal_depths and request.goal_images and len(request.goal_depths) != len(request.goal_images):
        raise ValueError(f"{len(request.goal_depths)} depth images for {len(request.goal_images)} goal images "
                         "(give one per image, or none)")
    if request.goal_depths and request.sequence:
        raise ValueError("a captured sequence keeps the depth images captured with it: no goal_depths")
    if len(request.goal_images) > MAX_SUBGOALS:
        raise ValueError(f"{len(request.goal_images)} goal images: at most {MAX_SUBGOALS}")
    if request.sequence:
        name = check_sequence_name(request.sequence)
        sequence = goals.sequence(name)
        if not sequence:
            raise Refused(f"no_goal: sequence {name!r} is empty: append frames with /dexwm/capture_sequence or "
                          "RViz's 2D Pose Estimate tool")
        return name, sequence
    phases = list(request.phases) or [""] * len(request.goal_images)
    depths = list(request.goal_depths) or [None] * len(request.goal_images)
    sequence = []
    for i, (msg, phase, depth_msg) in enumerate(zip(request.goal_images, phases, depths)):
        try:
            image = fit_goal_image(image_to_numpy(msg), camera_hw)
        except ValueError as e:
            raise ValueError(f"goal image {i}: {e}") from None
        depth = None if depth_msg is None else _goal_depth(depth_msg, image, f"goal image {i}")
        sequence.append(Goal(image, None, f"request[{i}]", phase, depth))
    return "", sequence


def _goal_depth(msg, image: np.ndarray, what: str) -> np.ndarray:
    """The depth image [m] of a goal, at its colour image's size; ValueError naming the goal."""
    try:
        return fit_goal_depth(depth_to_numpy(msg), image.shape[:2])
    except ValueError as e:
        raise ValueError(f"depth of {what}: {e}") from None
