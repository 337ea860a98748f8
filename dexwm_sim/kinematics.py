"""Batched forward kinematics of the FR3 arm + Allegro hand, without stepping physics.

Used by the simulation (keypoints of every frame), the data collector and the planner (which calls
it on ~1500 joint vectors per CEM iteration), so it runs on numpy batches: (..., 23) joint vectors
in the planner's order (fr3_joint1..7, then the 16 Allegro joints in allegro_driver order).

The kinematic tree is read from the compiled MuJoCo scene (body offsets, body orientations, hinge
axes, site offsets), so it is by construction the same robot the simulation steps; a test checks the
result against MuJoCo's own ``mj_kinematics``.

Keypoints (MANO layout, 21 per hand): 0 = wrist (the Allegro palm centre),
then thumb, index, middle, ring, little with 4 points each from the knuckle out to the tip. An
Allegro finger contributes its proximal, medial and distal joint frames plus the fingertip; the ring
finger is copied to stand in for the missing little finger.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

ARM_DOF = 7
HAND_DOF = 16
DOF = ARM_DOF + HAND_DOF

# MANO finger order (thumb first) -> our body-name stems.
MANO_FINGERS = ("thumb", "index", "middle", "ring")
_FINGER_POINTS = ("proximal", "medial", "distal")
EE_BODY = "allegro_mount"        # the FR3 flange (the Allegro mounting plate)
PALM_SITE = "allegro_palm_center"


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


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
    def from_scene(cls, scene=None) -> "RobotKinematics":
        """Read the kinematic tree of the simulation scene (builds it when not given)."""
        from .model import ALL_JOINTS, build_model
        import mujoco

        scene = scene or build_model()
        m = scene.model
        jid = {name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name) for name in ALL_JOINTS}
        joint_index = {j: i for i, j in enumerate(jid.values())}
        first = m.jnt_bodyid[jid[ALL_JOINTS[0]]]

        # Bodies needed: the subtree of the first arm link (ids are topologically ordered).
        needed = [b for b in range(first, m.nbody) if cls._descends(m, b, first)]
        body_to_link = {}
        links = []
        for b in needed:
            parent = m.body_parentid[b]
            joint, axis = -1, np.zeros(3)
            if m.body_jntnum[b] > 1:
                raise ValueError(f"body {m.body(b).name} has several joints")
            if m.body_jntnum[b] == 1:
                j = m.body_jntadr[b]
                if m.jnt_type[j] != mujoco.mjtJoint.mjJNT_HINGE or j not in joint_index:
                    raise ValueError(f"unexpected joint {m.joint(j).name}")
                if np.linalg.norm(m.jnt_pos[j]) > 1e-12:
                    raise ValueError("hinge axes must pass through the body origin")
                joint, axis = joint_index[j], m.jnt_axis[j].copy()
            links.append(_Link(parent=body_to_link.get(parent, -1), pos=m.body_pos[b].copy(),
                               rot=_quat_to_mat(m.body_quat[b]), joint=joint, axis=axis))
            body_to_link[b] = len(links) - 1

        # Fixed transform world <- parent of the first arm link.
        data = mujoco.MjData(m)
        mujoco.mj_kinematics(m, data)
        root = m.body_parentid[first]
        root_pos, root_rot = data.xpos[root].copy(), data.xmat[root].reshape(3, 3).copy()

        point_link, point_offset = [], []

        def site(name):
            s = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, name)
            if s < 0:
                raise ValueError(f"scene has no site {name}")
            point_link.append(body_to_link[m.site_bodyid[s]])
            point_offset.append(m.site_pos[s].copy())

        def body(name):
            b = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name)
            point_link.append(body_to_link[b])
            point_offset.append(np.zeros(3))

        site(PALM_SITE)
        for finger in MANO_FINGERS:
            for part in _FINGER_POINTS:
                body(f"allegro_{finger}_{part}")
            site(f"allegro_{finger}_tip")
        ee = body_to_link[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, EE_BODY)]
        return cls(links, root_pos, root_rot, point_link, point_offset, scene.lower, scene.upper, ee)

    @staticmethod
    def _descends(m, body: int, ancestor: int) -> bool:
        while body > ancestor:
            body = m.body_parentid[body]
        return body == ancestor

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
