"""What the planner node shows, as messages (no rclpy): its status, the Execute action's feedback,
result and terminal state, its diagnostics, the planned hand keypoints as markers and the
predicted-rollout image."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from dexwm_planner.session import CANCELED, Progress
from dexwm_robot.view import model_view
from dexwm_ros.action import Execute
from dexwm_ros.msg import PlannerStatus

KEYPOINT_COLOURS = [(255, 255, 0), (255, 80, 80), (80, 255, 80), (80, 160, 255), (255, 80, 255), (255, 200, 80)]


@dataclass
class PlannerState:
    """What the status and the diagnostics report: the state, the task, the active (sub)goal's progress,
    its phase and the captured sequence being executed."""

    state: str = "idle"
    task: str = ""
    progress: Progress = field(default_factory=Progress)
    phase: str = ""
    sequence: str = ""

    def status(self, stamp, has_goal: bool) -> PlannerStatus:
        p = self.progress
        msg = PlannerStatus(state=self.state, task=self.task, has_goal=has_goal, step=int(p.steps),
                            current_cost=float(p.current_cost), best_cost=float(p.best_cost),
                            planned_cost=float(p.planned_cost), replan_seconds=float(p.replan_seconds),
                            subgoal=int(p.subgoal), subgoals=int(p.subgoals), phase=self.phase, sequence=self.sequence)
        msg.header.stamp = stamp
        return msg

    def diagnostics(self, stamp, stale: list[str], has_goal: bool) -> DiagnosticArray:
        status = DiagnosticStatus(name="dexwm/planner", hardware_id="dexwm")
        if self.state == "failed":
            status.level, status.message = DiagnosticStatus.ERROR, "last goal failed"
        elif stale and self.state != "idle":
            status.level, status.message = DiagnosticStatus.WARN, f"stale: {', '.join(stale)}"
        else:
            status.level, status.message = DiagnosticStatus.OK, self.state
        values = {"state": self.state, "has_goal": str(has_goal), "stale_inputs": ", ".join(stale) or "none"}
        values.update({k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in asdict(self.progress).items()})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = stamp
        return msg


def feedback_message(progress: Progress) -> Execute.Feedback:
    return Execute.Feedback(step=progress.steps, subgoal=int(progress.subgoal), subgoals=int(progress.subgoals),
                            current_cost=float(progress.current_cost), best_cost=float(progress.best_cost),
                            planned_cost=float(progress.planned_cost), replan_seconds=float(progress.replan_seconds))


def result_message(success: bool, steps: int, progress: Progress, reason: str,
                   subgoal_reasons: list[str] | None = None) -> Execute.Result:
    return Execute.Result(success=success, steps=int(steps), final_cost=float(progress.current_cost), reason=reason,
                          subgoal_reasons=list(subgoal_reasons or []))


def end_goal(goal_handle, success: bool, reason: str) -> None:
    """The terminal state of an Execute goal handle for a run's outcome."""
    if success:
        goal_handle.succeed()
    elif reason == CANCELED and goal_handle.is_cancel_requested:
        goal_handle.canceled()
    else:   # also a cancel the action server has not marked yet: the goal ends all the same
        goal_handle.abort()


def keypoint_markers(keypoints: np.ndarray, frame_id: str, stamp) -> MarkerArray:
    """One sphere list per planned step (keypoints (T, K, 3) in ``frame_id``), later steps brighter."""
    out = MarkerArray()
    out.markers.append(Marker(action=Marker.DELETEALL))
    horizon = len(keypoints)
    for t, kps in enumerate(keypoints):
        m = Marker(ns="dexwm_planned_keypoints", id=t, type=Marker.SPHERE_LIST, action=Marker.ADD)
        m.header.stamp, m.header.frame_id = stamp, frame_id
        m.pose.orientation.w = 1.0
        m.scale.x = m.scale.y = m.scale.z = 0.015
        shade = (t + 1) / horizon
        m.color = ColorRGBA(r=1.0 * shade, g=0.4, b=1.0 - 0.7 * shade, a=0.9)
        m.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in kps]
        out.markers.append(m)
    return out


def rollout_strip(current: np.ndarray, goal: np.ndarray, keypoints: np.ndarray | None,
                  goal_keypoints: np.ndarray | None, image_size: tuple[int, int]) -> np.ndarray:
    """Current view | one panel per planned step with its predicted keypoints | the goal."""
    import cv2

    def draw(img, kps):
        img = img.copy()
        for k, (u, v) in enumerate(np.asarray(kps)[:6]):
            if np.isfinite(u) and np.isfinite(v):
                cv2.circle(img, (int(round(u)), int(round(v))), 3, KEYPOINT_COLOURS[k], -1)
        return img
    base = model_view(current, image_size)
    panels = [base] + [draw(base, kps) for kps in ([] if keypoints is None else keypoints)]
    goal_view = model_view(goal, image_size)
    panels.append(draw(goal_view, goal_keypoints) if goal_keypoints is not None else goal_view)
    sep = np.full((image_size[0], 4, 3), 255, np.uint8)
    out = []
    for p in panels:
        out += [p, sep]
    return np.concatenate(out[:-1], axis=1)


def rollout_image(model, planner, current: np.ndarray, plan, image_size: tuple[int, int]) -> np.ndarray:
    """The rollout strip of ``plan`` (a PlanStep of ``planner``), with the goal's keypoints as the
    world model ``model`` decodes them from the goal latent."""
    import torch

    with torch.no_grad():
        goal_keypoints = np.asarray(model.keypoints_2d(planner.goal_latent[None]))[0]
    return rollout_strip(current, planner.goal_image, plan.predicted_keypoints, goal_keypoints, image_size)
