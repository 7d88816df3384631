"""Joint orders of the supported models and name-based maps onto a dataset's keypoint set.

EfficientPose (16, MPII joints in its own order) maps to MPII-16 by name and to LSP-14 with
``upper_neck -> neck``; BlazePose-33 maps to COCO-17 by name (indices 0, 2, 5, 7, 8, 11–16, 23–28).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from posecal.errors import PosecalInputError
from posecal.keypoints import JOINT_ALIASES, _norm, mirror_name

EFFICIENTPOSE16 = (
    "head_top", "upper_neck", "right_shoulder", "right_elbow", "right_wrist", "thorax", "left_shoulder",
    "left_elbow", "left_wrist", "pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
    "left_ankle",
)  # fmt: skip

BLAZEPOSE33 = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle", "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip

# dataset name -> model name used when the names differ between conventions
ALIASES = JOINT_ALIASES


def joint_map(model_joints: Sequence[str], dataset_joints: Sequence[str], *,
              allow_missing: bool = False, model: str = "model", file: str | None = None) -> np.ndarray:
    """Index (K_data,) into the model's joints for each dataset keypoint, by name (case, space and dash
    insensitive, as keypoint-set recognition and :func:`flip_index`: AIC's ``"Right Shoulder"`` is
    ``right_shoulder``); -1 where missing.

    A dataset keypoint the model lacks raises :class:`PosecalInputError` naming it, unless
    ``allow_missing`` (then -1: such keypoints get score 0 downstream); ``file`` (the dataset's) is named in
    that error.
    """
    idx: dict[str, int] = {}
    for i, n in enumerate(model_joints):
        idx.setdefault(_norm(str(n)), i)
    out = np.full(len(dataset_joints), -1, dtype=np.int64)
    missing = []
    for k, name in enumerate(dataset_joints):
        key = _norm(str(name))
        for cand in (key, *ALIASES.get(key, ())):
            if cand in idx:
                out[k] = idx[cand]
                break
        else:
            missing.append(name)
    if missing and not allow_missing:
        raise PosecalInputError(f"{model} has no joint for dataset keypoint(s) {', '.join(missing)} "
                                "(use --allow-missing-joints to give them score 0)", file=file,
                                field="categories[0].keypoints")
    return out


def flip_index(names: Sequence[str]) -> np.ndarray:
    """Permutation (K,) swapping mirror partners (:func:`posecal.keypoints.mirror_name`: ``left_ear`` /
    ``right_ear``, ``mouth_left`` / ``mouth_right``, ``L_paw`` / ``R_paw``, ``ear_l`` / ``ear_r``); names compared
    case, space and dash insensitively (a card's ``"Left Ear"`` and ``"Right Ear"`` are partners)."""
    idx = {_norm(str(n)): i for i, n in enumerate(names)}
    perm = np.arange(len(names))
    for n, i in idx.items():
        m = mirror_name(n)
        if m != n and m in idx:
            perm[i] = idx[m]
    return perm
