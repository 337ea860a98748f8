"""Joint vectors out of sensor_msgs/JointState, the way every node of this stack reads them."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import JointState


def joint_vector(msg: JointState, names) -> np.ndarray | None:
    """Positions of ``names`` in that order (by name; positional when the message has no names).

    None for a message that lacks a joint, has mismatched lengths, or non-finite positions: such a
    message is skipped, never used.
    """
    if msg.name:
        index = {n: i for i, n in enumerate(msg.name)}
        if not all(n in index for n in names) or len(msg.position) != len(msg.name):
            return None
        q = np.array([msg.position[index[n]] for n in names], dtype=np.float64)
    elif len(msg.position) == len(names):
        q = np.asarray(msg.position, dtype=np.float64)
    else:
        return None
    return q if np.all(np.isfinite(q)) else None
