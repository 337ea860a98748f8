"""The three manipulation tasks the stack plans for and judges (the paper's): reach, grasp, place.

The planner's task parameter, the Execute action's task field, the evaluation's paper protocol and
the simulation's paper-protocol stages (``paper-<task>``) all use these names.
"""
from __future__ import annotations

TASK_KINDS = ("reach", "grasp", "place")
