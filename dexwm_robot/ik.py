"""The one inverse-kinematics solver of the arm: damped least squares on the forward kinematics.

Used by the simulation's scripted demonstrations and data collection (hand points to a target, with
a null-space drift to a comfortable posture) and by the teleop node (small flange jogs). The hand's
joints stay fixed during a solve, so the target point is fixed in the flange frame and an iteration
needs only the arm's chain and its analytic Jacobian (``RobotKinematics.arm_point_jacobian``).
"""
from __future__ import annotations

import numpy as np

from .joints import ARM_DOF


def _rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """World-frame rotation error of ``current`` towards ``target`` (the sine-weighted axis, which
    equals the rotation vector for small errors and never flips sign near pi)."""
    r = target @ current.T
    return 0.5 * np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])


def solve_arm_ik(kinematics, q, target, rotation=None, point: str = "palm", iterations: int = 200,
                 tol: float = 1e-3, rotation_tol: float = 0.02, rotation_weight: float = 0.3,
                 damping: float = 1e-4, max_iteration_step: float | None = 0.2,
                 posture_gain: float = 0.1, limit_margin: float = 1e-3) -> np.ndarray:
    """Arm joints (7,) that bring a hand point to ``target`` (and the flange to ``rotation``).

    ``q`` (23,): the start (its hand joints stay fixed). ``point``: "flange", "palm" or
    "palm_tips" (see ``RobotKinematics.arm_jacobian``). ``rotation`` (3, 3): the flange (and palm)
    orientation in the world, weighted by ``rotation_weight`` against position [m per rad].
    ``damping``: added to J J^T. ``max_iteration_step``: cap per joint and iteration (None: none).
    ``posture_gain``: the arm is redundant (7 joints, 6 constraints), so in the null space it
    drifts towards the middle of each joint range, the base turned to face the target, away from
    limits and wrist flips (0: no drift). Joints stay ``limit_margin`` inside their limits.
    """
    q = np.array(q, dtype=np.float64)
    if q.shape != (len(kinematics.lower),) or not np.all(np.isfinite(q)):
        raise ValueError(f"joints must be {len(kinematics.lower)} finite values, got shape {q.shape}")
    target = np.asarray(target, dtype=np.float64)
    lo, hi = kinematics.arm_lower, kinematics.arm_upper
    nominal = 0.5 * (lo + hi)
    nominal[0] = np.clip(np.arctan2(target[1], target[0]), lo[0], hi[0])
    offset = kinematics.point_in_flange(q, point)   # the hand joints stay fixed
    for _ in range(iterations):
        p, r, jac_pos, jac_rot = kinematics.arm_point_jacobian(q[:ARM_DOF], offset)
        err = target - p
        rows, errs = [jac_pos], [err]
        rot_err = np.zeros(3)
        if rotation is not None:
            rot_err = _rotation_error(rotation, r)
            rows.append(rotation_weight * jac_rot)
            errs.append(rotation_weight * rot_err)
        if np.linalg.norm(err) < tol and np.linalg.norm(rot_err) < rotation_tol:
            break
        jac = np.vstack(rows)
        e = np.concatenate(errs)
        jac_pinv = jac.T @ np.linalg.inv(jac @ jac.T + damping * np.eye(len(e)))
        dq = jac_pinv @ e
        if posture_gain:
            dq += (np.eye(ARM_DOF) - jac_pinv @ jac) @ (posture_gain * (nominal - q[:ARM_DOF]))
        if max_iteration_step is not None:
            dq = np.clip(dq, -max_iteration_step, max_iteration_step)
        q[:ARM_DOF] = np.clip(q[:ARM_DOF] + dq, lo + limit_margin, hi - limit_margin)
    return q[:ARM_DOF].copy()


def arm_ik_error(kinematics, q, target, rotation=None, point: str = "palm") -> float:
    """Position error [m] plus 0.1 x orientation error [rad] of joints q (23,)."""
    p, r, _, _ = kinematics.arm_jacobian(q, point)
    err = float(np.linalg.norm(p - np.asarray(target)))
    if rotation is not None:
        cos = np.clip((np.trace(np.asarray(rotation).T @ r) - 1) / 2, -1, 1)
        err += 0.1 * float(np.arccos(cos))
    return err


def solve_arm_ik_global(kinematics, q, target, rotation=None, point: str = "palm") -> tuple[np.ndarray, float]:
    """``solve_arm_ik`` from several starting postures; the best solution and its error.

    Errors are ``arm_ik_error``; a good solution near ``q`` keeps the current IK branch, otherwise
    1 rad of extra motion weighs like 2 cm of error and solutions hugging a limit are penalised.
    """
    q = np.array(q, dtype=np.float64)
    q_init = q[:ARM_DOF].copy()
    lo, hi = kinematics.arm_lower, kinematics.arm_upper
    mid = 0.5 * (lo + hi)
    mid[0] = np.arctan2(target[1], target[0])
    seeds = [q_init, mid]
    for q7 in (-2.2, -0.8, 0.8, 2.2):
        for q5 in (-1.0, 0.0, 1.0):
            seed = mid.copy()
            seed[4], seed[6] = q5, q7
            seeds.append(seed)
    best, best_cost, best_err = None, np.inf, np.inf
    for seed in seeds:
        arm = solve_arm_ik(kinematics, np.r_[seed, q[ARM_DOF:]], target, rotation, point=point)
        err = arm_ik_error(kinematics, np.r_[arm, q[ARM_DOF:]], target, rotation, point)
        if seed is q_init and err < 3e-3:
            return arm, err
        margin = np.minimum(arm - lo, hi - arm).min()
        cost = err + 0.02 * np.linalg.norm(arm - q_init) + (0.05 if margin < 0.05 else 0.0)
        if cost < best_cost:
            best, best_cost, best_err = arm, cost, err
    return best, best_err
