"""Batched forward kinematics of the FR3 arm + Allegro hand, without stepping physics.

Used by the simulation (keypoints of every frame), the data collector and the planner (which calls
it on ~1500 joint vectors per CEM iteration), so it runs on numpy batches: (..., 23) joint vectors
in the planner's order (``dexwm_robot.joints``: fr3_joint1..7, then the 16 Allegro joints).

The kinematic tree is read from the robot description (``dexwm_robot.description``: body offsets,
body orientations, hinge axes, site offsets), the same files the simulation compiles; a test checks
the result against MuJoCo's own ``mj_kinematics`` of the simulation scene.

Keypoints (MANO layout, 21 per hand): 0 = wrist (the Allegro palm centre),
then thumb, index, middle, ring, little with 4 points each from the knuckle out to the tip. An
Allegro finger contributes its proximal, medial and distal joint frames plus the fingertip; the ring
finger is copied to stand in for the missing little finger.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import allegro
from .description import HAND_PREFIX, Description, load as load_description
from .joints import ARM_DOF, DOF, HAND_DOF, JOINT_NAMES, LOWER, UPPER  # noqa: F401  (HAND_DOF: for callers)

# MANO finger order (thumb first) -> our body-name stems.
MANO_FINGERS = allegro.FINGERS_THUMB_FIRST
_FINGER_POINTS = ("proximal", "medial", "distal")
EE_BODY = f"{HAND_PREFIX}mount"        # the FR3 flange (the Allegro mounting plate)
PALM_SITE = f"{HAND_PREFIX}palm_center"


@dataclass
class _Link:
    parent: int          # index into the link list, -1 = the fixed robot root
    pos: np.ndarray      # (3,) offset in the parent frame
    rot: np.ndarray      # (3, 3) orientation in the parent frame
    joint: int           # index into the 23-vector, -1 = rigid
    axis: np.ndarray     # (3,) hinge axis in this link's frame

    @cached_property
    def abc(self) -> np.ndarray:
        """(3, 9) [A | B | C] with A = rot, B = rot K, C = rot K^2 (K = cross-product matrix of axis)."""
        a = self.axis
        K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
        return np.stack([self.rot, self.rot @ K, self.rot @ K @ K], axis=1).reshape(3, 9)

    @cached_property
    def rot_t(self) -> np.ndarray:
        return np.ascontiguousarray(self.rot.T)

    @cached_property
    def abc_t(self) -> np.ndarray:
        """(9, 3): row (which, j) holds column j of A, B or C, so abc_t @ P_i gives row i of P @ [A|B|C]."""
        return np.ascontiguousarray(self.abc.T)


class RobotKinematics:
    """Forward kinematics of arm + hand over batches of joint vectors (..., 23)."""

    def __init__(self, links, root_pos, root_rot, point_link, point_offset, lower, upper, ee_link):
        self._links = links
        self._root_pos = root_pos
        self._root_rot = root_rot
        self._point_link = np.asarray(point_link)      # (P,) link index of each named point
        self._point_offset = np.asarray(point_offset)  # (P, 3) offset in that link's frame
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self._ee_link = ee_link
        # Rows of the 17 distinct points (palm + 4 fingers x 4) that make up the 21 MANO keypoints.
        mano = [0] + [1 + 4 * f + k for f in range(4) for k in range(4)]
        mano += mano[13:17]  # little finger := ring finger
        self._mano_rows = np.asarray(mano)
        self._tip_rows = np.asarray([0, 4, 8, 12, 16])  # palm, thumb/index/middle/ring tips

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_description(cls, description: Description | None = None) -> "RobotKinematics":
        """The kinematics of the robot description (``dexwm_robot.description.load()`` by default)."""
        d = description or load_description()
        index = {name: i for i, name in enumerate(JOINT_NAMES)}
        first = d.joint_body(JOINT_NAMES[0])
        # The fixed transform world <- parent of the first arm link; links are the bodies below it.
        root_pos, root_rot = np.zeros(3), np.eye(3)
        chain = []
        b = d.bodies[first].parent
        while b >= 0:
            chain.append(d.bodies[b])
            b = d.bodies[b].parent
        for body in reversed(chain):
            if body.joint is not None:
                raise ValueError(f"body {body.name} above the first arm joint moves")
            root_pos, root_rot = root_pos + root_rot @ body.pos, root_rot @ body.rot
        body_to_link: dict = {}
        links = []
        for i, body in enumerate(d.bodies):
            if i != first and body.parent not in body_to_link:
                continue
            joint, axis = -1, np.zeros(3)
            if body.joint is not None:
                if body.joint.name not in index:
                    raise ValueError(f"unexpected joint {body.joint.name} in the robot description")
                joint, axis = index[body.joint.name], body.joint.axis
            links.append(_Link(parent=body_to_link.get(body.parent, -1) if i != first else -1,
                               pos=body.pos, rot=body.rot, joint=joint, axis=axis))
            body_to_link[i] = len(links) - 1
        moving = {link.joint for link in links} - {-1}
        if moving != set(range(DOF)):
            missing = [JOINT_NAMES[j] for j in range(DOF) if j not in moving]
            raise ValueError(f"the robot description lacks joints {missing}")

        point_link, point_offset = [], []

        def site(name):
            b, pos = d.site(name)
            point_link.append(body_to_link[b])
            point_offset.append(pos)

        def body(name):
            point_link.append(body_to_link[d.index(name)])
            point_offset.append(np.zeros(3))

        site(PALM_SITE)
        for finger in MANO_FINGERS:
            for part in _FINGER_POINTS:
                body(f"{HAND_PREFIX}{finger}_{part}")
            site(f"{HAND_PREFIX}{finger}_tip")
        ee = body_to_link[d.index(EE_BODY)]
        return cls(links, root_pos, root_rot, point_link, point_offset, LOWER, UPPER, ee)

    # --- limits -----------------------------------------------------------------------------------
    @property
    def arm_lower(self) -> np.ndarray:
        return self.lower[:ARM_DOF]

    @property
    def arm_upper(self) -> np.ndarray:
        return self.upper[:ARM_DOF]

    @property
    def hand_lower(self) -> np.ndarray:
        return self.lower[ARM_DOF:]

    @property
    def hand_upper(self) -> np.ndarray:
        return self.upper[ARM_DOF:]

    # --- forward kinematics -----------------------------------------------------------------------
    def _link_frames(self, q: np.ndarray):
        """World positions (L, 3, N) and rotations (L, 3, 3, N) of every link for q (N, 23).

        The batch is the last axis so that every operation runs over contiguous length-N vectors
        (stacked 3x3 matrix products over a leading batch axis are several times slower).
        """
        n = q.shape[0]
        L = len(self._links)
        pos = np.empty((L, 3, n))
        rot = np.empty((L, 3, 3, n))
        sin_q = np.sin(q.T)
        one_minus_cos_q = 1.0 - np.cos(q.T)
        root_rot = np.ascontiguousarray(np.broadcast_to(self._root_rot[:, :, None], (3, 3, n)))
        for i, link in enumerate(self._links):
            if link.parent < 0:
                p_pos, p_rot = self._root_pos[:, None], root_rot
            else:
                p_pos, p_rot = pos[link.parent], rot[link.parent]
            # Per batch element (P @ x)_i = sum_k P_ik x_k and (P @ M)_ij = sum_k P_ik M_kj; with the
            # batch last these are small matmuls broadcast over i (fast BLAS-like loops).
            pos[i] = p_pos + np.matmul(link.pos[None, None], p_rot)[:, 0]
            if link.joint < 0:
                rot[i] = np.matmul(link.rot_t[None], p_rot)
                continue
            # Local rotation rot0 @ R(axis, theta) = A + sin(theta) B + (1 - cos(theta)) C (Rodrigues).
            prod = np.matmul(link.abc_t[None], p_rot).reshape(3, 3, 3, n)   # (i, which, j, N)
            r = rot[i]
            np.multiply(prod[:, 1], sin_q[link.joint], out=r)
            r += prod[:, 0]
            r += one_minus_cos_q[link.joint] * prod[:, 2]
        return pos, rot

    def _check(self, q) -> tuple[np.ndarray, tuple]:
        q = np.asarray(q, dtype=np.float64)
        if q.shape[-1] != DOF:
            raise ValueError(f"joint vectors must have {DOF} entries on the last axis, got shape {q.shape}")
        return q.reshape(-1, DOF), q.shape[:-1]

    def _points(self, q) -> tuple[np.ndarray, tuple]:
        flat, batch = self._check(q)
        pos, rot = self._link_frames(flat)
        lk = self._point_link
        pts = pos[lk] + np.einsum("pikn,pk->pin", rot[lk], self._point_offset)   # (P, 3, N)
        return pts.transpose(2, 0, 1), batch

    def keypoints_world(self, q) -> np.ndarray:
        """21 MANO-layout keypoints (..., 21, 3) in the world frame for joint vectors (..., 23)."""
        pts, batch = self._points(q)
        return pts[:, self._mano_rows].reshape(*batch, 21, 3)

    def palm_and_tips_world(self, q) -> np.ndarray:
        """Palm centre, then thumb, index, middle, ring fingertips (..., 5, 3) in the world frame."""
        pts, batch = self._points(q)
        return pts[:, self._tip_rows].reshape(*batch, 5, 3)

    def ee_pose(self, q):
        """Pose of the FR3 flange (the Allegro mount): position (..., 3), rotation (..., 3, 3)."""
        flat, batch = self._check(q)
        pos, rot = self._link_frames(flat)
        return (pos[self._ee_link].T.reshape(*batch, 3),
                rot[self._ee_link].transpose(2, 0, 1).reshape(*batch, 3, 3))

    # --- the arm alone (inverse kinematics) ------------------------------------------------------
    @cached_property
    def _flange_chain(self) -> list:
        """(offset, rotation or None, joint, (A, B, C), axis) of each link from the robot root to the
        flange: the arm's serial chain, joints 0..6 in order (rotation None: a hinge)."""
        chain, k = [], self._ee_link
        while k >= 0:
            link = self._links[k]
            blocks = tuple(np.ascontiguousarray(b) for b in np.split(link.abc, 3, axis=1))
            chain.append((link.pos, None if link.joint >= 0 else link.rot, link.joint, blocks, link.axis))
            k = link.parent
        return chain[::-1]

    def arm_chain(self, q_arm):
        """Flange position (3,) and rotation (3, 3), and the world axis and origin (3, 7) of every arm
        joint, for one arm vector (7,). Plain 3x3 products: an IK iteration needs one joint vector,
        for which the batched ``_link_frames`` mostly pays numpy's per-call overhead."""
        p, r = self._root_pos, self._root_rot
        axes, origins = np.empty((3, ARM_DOF)), np.empty((3, ARM_DOF))
        for pos, rot, joint, (a, b, c), axis in self._flange_chain:
            p = p + r @ pos
            if rot is not None:
                r = r @ rot
                continue
            theta = float(q_arm[joint])
            r = r @ (a + math.sin(theta) * b + (1.0 - math.cos(theta)) * c)
            axes[:, joint] = r @ axis
            origins[:, joint] = p
        return p, r, axes, origins

    def point_in_flange(self, q, point: str = "palm") -> np.ndarray:
        """A hand point (3,) in the flange frame for joints q (23,); it moves only with the hand.

        ``point``: "flange", "palm" (palm centre) or "palm_tips" (mean of the palm centre and the 4
        fingertips, the reach rule's point).
        """
        if point == "flange":
            return np.zeros(3)
        if point not in ("palm", "palm_tips"):
            raise ValueError(f"point must be flange, palm or palm_tips, got {point!r}")
        flat, _ = self._check(q)
        pos, rot = self._link_frames(flat[:1])
        rows = self._tip_rows[:1] if point == "palm" else self._tip_rows
        lk = self._point_link[rows]
        world = (pos[lk, :, 0] + np.einsum("pik,pk->pi", rot[lk, :, :, 0], self._point_offset[rows])).mean(axis=0)
        r = rot[self._ee_link, :, :, 0]
        return r.T @ (world - pos[self._ee_link, :, 0])

    def arm_jacobian(self, q, point: str = "palm"):
        """For joints q (23,): the hand point (3,) in the world, the flange rotation (3, 3), d point /
        d q_arm (3, 7) and the flange's angular-velocity Jacobian (3, 7), world frame."""
        q = np.asarray(q, dtype=np.float64)
        return self.arm_point_jacobian(q[:ARM_DOF], self.point_in_flange(q, point))

    def arm_point_jacobian(self, q_arm, offset):
        """``arm_jacobian`` for arm joints q_arm (7,) and a point given in the flange frame (3,)."""
        p_f, r, axes, origins = self.arm_chain(q_arm)
        p = p_f + r @ offset
        d = p[:, None] - origins
        # axis x (point - joint origin), written out: np.cross costs more than the arithmetic here
        jac_pos = np.stack([axes[1] * d[2] - axes[2] * d[1], axes[2] * d[0] - axes[0] * d[2],
                            axes[0] * d[1] - axes[1] * d[0]])
        return p, r, jac_pos, axes
