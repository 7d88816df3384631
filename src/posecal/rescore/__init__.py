"""Rescoring keypoint and instance confidences without training a network (Sec. 4.4, Table 1).

Every rescorer is a scikit-learn-style estimator (:class:`Rescorer`)::

    r = get_rescorer("closed-form", area="gt")   # by name, from the registry
    r.get_params() / r.set_params(area="pred")   # constructor parameters
    r.fit(pred, gt)                              # optional (learned calibrators need it: NotFittedError)
    out = r.transform(pred, gt)                  # RescoreResult: keypoint_scores (D, K), instance_scores (D,)
    records = out.to_records(pred)               # COCO results with the same coordinates and new scores
    r.to_json() / Rescorer.from_json(d)          # persistence of the (fitted) rescorer as plain JSON

``pred`` is a :class:`posecal.io.coco.CocoResults` (or a path / list of records), ``gt`` a
:class:`posecal.io.coco.CocoGroundTruth` (or a path / dict). Coordinates are never changed.

Methods (``RESCORERS``), one module each:

- ``closed-form`` (:mod:`.closed_form`) — per-keypoint expected OKS ``l^2 / (sigma^2 + l^2)`` (Eq. 12)
  with ``l^2 = (2k)^2 area`` and ``sigma`` from the heatmap peak (Eq. 17 inverted, ``model="heatmap"``),
  from RLE's ``1 - sigma`` (Eq. 3, ``model="rle"``) or given directly (e.g. ``sigma_hat`` of a feature
  store). ``area``: ``gt`` (matched gt), ``pred`` (pycocotools' detection area: box w*h, else keypoint
  extent) or ``mean`` (dataset mean) — the three columns of Table 1.
- ``mmpose-bbox``, ``mmpose-bbox_keypoint``, ``mmpose-bbox_rle`` (:mod:`.mmpose`) — MMPose 1.x
  ``CocoMetric`` score modes; ``mmpose-keypoint`` — the plain mean of the keypoint scores (MMPose
  ``keypoint``). All instance scores come from :func:`posecal.rescore.aggregate.instance_score`
  (MMPose-exact).
- ``isotonic`` (:mod:`.learned`) — monotone map raw keypoint score -> keypoint OKS fitted on matched pairs
  (PAVA).
- ``loglog`` (:mod:`.learned`) — linear fit of ``log(error / l)`` on ``log(score)`` (keypoint-moseq style),
  turned into an expected keypoint OKS through the Rayleigh mean-log and Eq. 12 (``1 / (1 + sigma_n^2)``,
  ``l = 1``).
- ``visibility`` (:mod:`.visibility`) — ĉ = Σ v̂ₖ ŝₖ / Σ v̂ₖ (the CCNet instance confidence, Sec. 5) with
  any per-keypoint visibility.

:mod:`.base` holds the interface and the registry, :mod:`.matching` the detection -> gt assignment used
for fitting and for the gt area.
"""

from __future__ import annotations

from posecal.errors import NotFittedError
from posecal.rescore.aggregate import INSTANCE_SCORE_MODES, instance_score
from posecal.rescore.base import (
    GtLike,
    PredLike,
    Rescorer,
    RescoreResult,
    get_rescorer,
    register_rescorer,
    registered_rescorers,
    rescorer_class,
)
from posecal.rescore.closed_form import ClosedFormRescorer
from posecal.rescore.learned import (
    IsotonicRescorer,
    LogLogRescorer,
    _pava,  # noqa: F401  (the private name older callers import)
    pava,
)
from posecal.rescore.matching import match_to_gt, matched_keypoint_pairs
from posecal.rescore.mmpose import MMPOSE_MODES, MMPoseRescorer
from posecal.rescore.visibility import VisibilityRescorer

__all__ = [
    "AGGREGATES",
    "GtLike",
    "MMPOSE_MODES",
    "NotFittedError",
    "PredLike",
    "RescoreResult",
    "Rescorer",
    "ClosedFormRescorer",
    "MMPoseRescorer",
    "VisibilityRescorer",
    "IsotonicRescorer",
    "LogLogRescorer",
    "RESCORERS",
    "get_rescorer",
    "instance_score",
    "match_to_gt",
    "matched_keypoint_pairs",
    "pava",
    "register_rescorer",
    "registered_rescorers",
    "rescorer_class",
]

#: Instance aggregation modes a rescorer's ``aggregate`` accepts.
AGGREGATES = INSTANCE_SCORE_MODES

#: Every registered method name, in registration order (the ``posecal rescore --method`` choices).
RESCORERS: tuple[str, ...] = tuple(registered_rescorers())
