"""Shared pieces of the ONNX and PyTorch heatmap adapters (NCHW models, MMPose-style preprocessing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_joint_names(num_joints: int, joint_names: Sequence[str] | None) -> tuple[str, ...]:
    """Joint names given, else the unique known keypoint set with ``num_joints`` keypoints."""
    if joint_names is not None:
        if len(joint_names) != num_joints:
            raise PosecalInputError(f"{len(joint_names)} joint names for a model with {num_joints} outputs",
                                    field="joint_names")
        return tuple(joint_names)
    from posecal.keypoints import KEYPOINT_SETS

    sets = [s for s in KEYPOINT_SETS.values() if s.num_keypoints == num_joints]
    if len(sets) != 1:
        names = ", ".join(s.name for s in sets) or "none"
        raise PosecalInputError(f"model has {num_joints} heatmap channels, matching keypoint sets: {names}; "
                                "give joint names", field="joint_names")
    return tuple(sets[0].names)


def preprocess_nchw(crops: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) float32 ``(rgb/255 - mean) / std``."""
    x = np.asarray(crops, dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


def preprocessing_info(mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    return {"color": "RGB", "layout": "NCHW", "scale": 1 / 255, "mean": list(mean), "std": list(std)}
