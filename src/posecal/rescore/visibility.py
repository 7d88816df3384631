"""The CCNet instance score (paper Sec. 5, after Eq. 21) with any per-keypoint visibility. numpy only."""

from __future__ import annotations

import numpy as np

from posecal.errors import PosecalInputError
from posecal.rescore.aggregate import instance_score
from posecal.rescore.base import (
    GtLike,
    PredLike,
    Rescorer,
    RescoreResult,
    _as_pred,
    _checked_visibility,
    register_rescorer,
)

__all__ = ["VisibilityRescorer"]


@register_rescorer("visibility")
class VisibilityRescorer(Rescorer):
    """ĉ = Σ v̂ₖ ŝₖ / Σ v̂ₖ, 0 where Σ v̂ₖ = 0; keypoint scores unchanged.

    The CCNet instance confidence (paper Sec. 5 after Eq. 21: the OKS weighting of Eqs. 6-7 with the
    predicted visibility as the weights), :func:`posecal.rescore.aggregate.instance_score` mode
    ``visibility``.

    The visibility ``(D, K)`` in [0, 1] comes from ``transform(..., visibility=)`` or else the records'
    ``visibility`` lists. No parameters, no state.
    """

    method = "visibility"

    def transform(
        self, pred: PredLike, gt: GtLike = None, *, visibility: np.ndarray | None = None, **kw: object
    ) -> RescoreResult:
        """Keypoint scores ``(D, K)`` unchanged; instance scores ``(D,)`` weighted by the visibility."""
        pred = _as_pred(pred)
        v = visibility if visibility is not None else pred.visibility
        if v is None and len(pred) == 0:  # no records: no scores (as every other method), not "record 0"
            v = np.zeros(pred.keypoints.shape[:2])
        if v is None:
            raise PosecalInputError(
                "visibility rescoring needs a 'visibility' list per record", pred.path, 0, "visibility"
            )
        s = pred.keypoints[..., 2].copy()
        return RescoreResult(s, instance_score(s, "visibility", visibility=_checked_visibility(pred, v)))
