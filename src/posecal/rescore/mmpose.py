"""MMPose's own instance scores as a rescorer (the baselines of Table 1). numpy only."""

from __future__ import annotations

from typing import ClassVar

from posecal.rescore.aggregate import instance_score
from posecal.rescore.base import (
    GtLike,
    PredLike,
    Rescorer,
    RescoreResult,
    _as_pred,
    _bbox_score,
    _finite_param,
    register_rescorer,
)

__all__ = ["MMPOSE_MODES", "MMPoseRescorer"]

MMPOSE_MODES = ("bbox", "keypoint", "bbox_keypoint", "bbox_rle")


class MMPoseRescorer(Rescorer):
    """MMPose 1.x ``CocoMetric`` instance score modes ``bbox``, ``keypoint``, ``bbox_keypoint``, ``bbox_rle``
    (keypoint scores kept as they are).

    The rule is :func:`posecal.rescore.aggregate.instance_score` (MMPose's ``compute_metrics`` loop:
    ``bbox_keypoint`` = box score × mean of the keypoint scores above ``keypoint_score_thr``, 0 when none
    passes — Eq. 5 of the paper times the box score). The box score is the records' ``bbox_score`` field
    when every record has one, else 1. Registered as ``mmpose-<mode>``.

    Args:
        mode: one of :data:`MMPOSE_MODES`.
        keypoint_score_thr: MMPose's ``keypoint_score_thr`` (strictly greater passes).
    """

    _params: ClassVar[tuple[str, ...]] = ("mode", "keypoint_score_thr")

    def __init__(self, mode: str = "bbox_keypoint", keypoint_score_thr: float = 0.2):
        if mode not in MMPOSE_MODES:
            raise ValueError(f"unknown MMPose score mode {mode!r}")
        self.mode, self.keypoint_score_thr = mode, _finite_param("keypoint_score_thr", keypoint_score_thr)

    @property
    def method(self) -> str:  # type: ignore[override]
        return f"mmpose-{self.mode}"

    def transform(self, pred: PredLike, gt: GtLike = None, **kw: object) -> RescoreResult:
        """Keypoint scores ``(D, K)`` unchanged; instance scores ``(D,)`` by ``mode``."""
        pred = _as_pred(pred)
        s = pred.keypoints[..., 2].copy()
        inst = instance_score(s, self.mode, None if self.mode == "keypoint" else _bbox_score(pred),
                              self.keypoint_score_thr)
        return RescoreResult(s, inst)


for _mode in MMPOSE_MODES:
    register_rescorer(f"mmpose-{_mode}", mode=_mode)(MMPoseRescorer)
del _mode
