"""Image context of a detection: how it sits among the other detections of its image (a learned-NMS input).

Top-down pipelines score each detection alone, so a duplicate of a person (a second box on the same person
that OKS-NMS at 0.9 let through) or a false positive inside a crowd scores like a real person — on multi-person
images that costs AP (the duplicates and false positives rank among the true matches). :func:`context_features`
describes each detection by its relation to the **higher-scored** detections of the same image, as greedy NMS
and COCOeval's matching see them (a detection is demoted by what ranks above it): its rank, its score relative
to the image's best, its largest keypoint OKS and box IoU to a higher-scored detection and how many of those
overlap it. The ordering is by the MMPose ``bbox_keypoint`` score (the store's own score, fixed at
extraction), so the features do not depend on the head that reads them.

:class:`ContextStage` is the learned NMS on top of a CCNet head (Hosang, Benenson & Schiele, "Learning
non-maximum suppression", CVPR 2017, in its simplest form): a logistic regression of the detection's target
(its mean keypoint OKS to the gt person COCOeval matches it to, 0 when unmatched) on ``[logit ĉ, context]``,
ĉ the head's instance score. It is *stacked* (Wolpert 1992): ``posecal fit`` trains it on out-of-fold ĉ
(:func:`posecal.ccnet.fit.fit_context_stage`), never on the scores of a head that saw the same rows. It
changes the instance score only; keypoint scores ŝ and visibilities stay the head's. Numpy + scipy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CONTEXT_NAMES", "ContextStage", "context_features", "instance_target", "own_scores",
           "store_context"]

CONTEXT_NAMES = ("log1p_rank", "score_over_max", "max_oks_above", "log1p_n_oks_above",
                 "max_iou_above", "log1p_n_iou_above")
"""Column names of :func:`context_features` (``n_*_above``: higher-scored detections with OKS / IoU > 0.5)."""


def _pair_oks(kp: np.ndarray, area: np.ndarray, sigmas: np.ndarray, have: np.ndarray | None = None) -> np.ndarray:
    """(D, D) keypoint OKS between every pair of detections (scale: the mean of the two areas, as
    :func:`posecal.models.nms.oks_iou`), over the keypoints in ``have`` (K,) bool (None: all)."""
    vars_ = (2 * np.asarray(sigmas, np.float64)) ** 2
    d2 = ((kp[:, None] - kp[None]) ** 2).sum(-1)  # (D, D, K)
    s = (area[:, None] + area[None]) / 2 + np.spacing(1)
    e = np.exp(-d2 / vars_ / s[..., None] / 2)
    keep = np.ones(e.shape[-1], bool) if have is None else np.asarray(have, bool)
    return e[..., keep].mean(-1) if keep.any() else np.zeros(e.shape[:-1])


def _pair_iou(box: np.ndarray) -> np.ndarray:
    """(D, D) IoU of xywh boxes."""
    x0, y0 = box[:, 0], box[:, 1]
    x1, y1 = x0 + box[:, 2], y0 + box[:, 3]
    w = np.clip(np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]), 0, None)
    h = np.clip(np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]), 0, None)
    inter = w * h
    a = box[:, 2] * box[:, 3]
    return inter / np.maximum(a[:, None] + a[None] - inter, 1e-12)


def context_features(image_id: np.ndarray, keypoints: np.ndarray, bbox: np.ndarray, score: np.ndarray,
                     sigmas: np.ndarray, have: np.ndarray | None = None) -> np.ndarray:
    """``(N, 6)`` float32 context of every detection among the detections of its image (:data:`CONTEXT_NAMES`).

    Args:
        image_id: (N,) image of each row.
        keypoints: (N, K, 2) predicted keypoints, image px.
        bbox: (N, 4) the detection boxes, xywh image px (their areas scale the OKS).
        score: (N,) the ordering score (the store's own MMPose ``bbox_keypoint`` score); ties keep row order.
        sigmas: (K,) the keypoint set's OKS sigmas.
        have: (K,) bool, the keypoints the model has (:func:`posecal.ccnet.targets.model_keypoints`; None:
            all). The others (``extract --allow-missing-joints``) sit at (0, 0) in every detection and would
            count as perfect agreement between any two of them: the pairwise OKS leaves them out.

    A row alone in its image gets ``[0, 1, 0, 0, 0, 0]``; so does every person of a gt-box store whose image
    holds one annotated person.

    >>> f = context_features(np.array([1, 1]), np.zeros((2, 1, 2)), np.array([[0, 0, 10, 10], [0, 0, 10, 10.]]),
    ...                      np.array([0.9, 0.3]), np.array([0.1]))
    >>> [round(float(x), 3) for x in f[1, :6]]
    [0.693, 0.333, 1.0, 0.693, 1.0, 0.693]
    """
    image_id = np.asarray(image_id)
    kp = np.asarray(keypoints, np.float64)
    box = np.asarray(bbox, np.float64).reshape(-1, 4)
    sc = np.nan_to_num(np.asarray(score, np.float64).reshape(-1))
    N = len(image_id)
    out = np.zeros((N, len(CONTEXT_NAMES)))
    area = np.maximum(np.nan_to_num(box[:, 2] * box[:, 3], nan=1.0, posinf=1.0, neginf=1.0), 1.0)
    for iid in np.unique(image_id):
        rows = np.flatnonzero(image_id == iid)
        rows = rows[np.argsort(-sc[rows], kind="stable")]  # rank order
        D = len(rows)
        above = np.tril(np.ones((D, D), bool), -1)  # above[i, j]: j ranks above i
        with np.errstate(invalid="ignore"):  # a non-finite coordinate gives no overlap, not a NaN feature
            O = np.where(above, np.nan_to_num(_pair_oks(kp[rows], area[rows], sigmas, have), nan=0.0), 0.0)
            U = np.where(above, np.nan_to_num(_pair_iou(box[rows]), nan=0.0), 0.0)
        best = sc[rows].max()
        out[rows] = np.stack([
            np.log1p(np.arange(D)),
            sc[rows] / best if best > 0 else np.ones(D),
            O.max(1), np.log1p((O > 0.5).sum(1)),
            U.max(1), np.log1p((U > 0.5).sum(1)),
        ], 1)
    return out.astype(np.float32)


def own_scores(records: list[dict[str, Any]], file: str | None = None) -> np.ndarray:
    """``(N,)`` the records' ``score`` (the store's own score), each a finite number, else one error naming the
    record and field (:func:`posecal.datasets.coco.number`)."""
    from posecal.datasets.coco import number

    return np.array([number(r.get("score") if isinstance(r, dict) else None, file, i, "score")
                     for i, r in enumerate(records)], np.float64)


def store_context(path: str, records: list[dict[str, Any]], sigmas: np.ndarray) -> np.ndarray:
    """:func:`context_features` ``(N, 6)`` of every row of the store at ``path`` (its ``image_id``,
    ``keypoints``, ``bbox`` arrays; ordering score: :func:`own_scores` of ``records``, the store's own score;
    the keypoints the model lacks, store ``joint_map`` −1, left out of the pairwise OKS). ``posecal fit`` and
    ``posecal apply`` both read the context from here."""
    import os

    from posecal.ccnet.targets import model_keypoints
    from posecal.models.store import FeatureStore

    fs = FeatureStore.open(path)
    own = own_scores(records, f"{path}/predictions.json")
    have = model_keypoints(fs.meta, len(sigmas), file=os.path.join(str(path), "meta.json"))
    return context_features(fs.read("image_id"), fs.read("keypoints"), fs.read("bbox"), own, sigmas, have)


def instance_target(oks: np.ndarray, conf_mask: np.ndarray) -> np.ndarray:
    """``(N,)`` the context stage's target: the mean of the per-keypoint OKS targets ``oks (N, K)`` over the
    keypoints the confidence loss sees (``conf_mask (N, K)``), 0 for a row with none — an unmatched detection's
    targets are all 0 (:mod:`posecal.ccnet.targets`)."""
    m = np.asarray(conf_mask, bool)
    o = np.where(m, np.nan_to_num(np.asarray(oks, np.float64)), 0.0)
    return np.where(m.any(1), o.sum(1) / np.maximum(m.sum(1), 1), 0.0)


def _logit(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, np.float64), 1e-4, 1 - 1e-4)
    return np.log(c / (1 - c))


MAX_ABS = 1e30
"""Largest magnitude :meth:`ContextStage.from_arrays` accepts (as :data:`posecal.ccnet.checkpoint.MAX_ABS`)."""
MIN_STD = 1e-7
"""Smallest ``std`` :meth:`ContextStage.from_arrays` accepts (:meth:`ContextStage.fit` floors it at 1e-6)."""


class ContextStage:
    """Learned NMS over a head's instance scores: ``ĉ' = σ(w · z((logit ĉ, context)) + b)``, z the
    standardisation of the training rows (see the module docstring).

    Args:
        l2: ridge penalty on ``w`` (the loss is the mean soft-label cross-entropy over rows).

    >>> rng = np.random.default_rng(0)
    >>> c, ctx = rng.uniform(0.1, 0.9, 200), rng.uniform(0, 1, (200, 6))
    >>> t = c * (ctx[:, 2] < 0.5)                 # duplicates (high OKS to a better detection) are worth 0
    >>> st = ContextStage().fit(c, ctx, t)
    >>> st.coef[3] < 0                            # weight of max_oks_above
    np.True_
    """

    def __init__(self, l2: float = 1e-4):
        self.l2 = float(l2)
        self.mean: np.ndarray | None = None  # (1 + C,)
        self.std: np.ndarray | None = None  # (1 + C,)
        self.coef: np.ndarray | None = None  # (2 + C,): w (1 + C), then b

    def _design(self, c: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        return np.concatenate([_logit(c)[:, None], np.asarray(ctx, np.float64)], axis=1)

    def fit(self, c: np.ndarray, ctx: np.ndarray, target: np.ndarray) -> ContextStage:
        """Fit on instance scores ``c (N,)`` (out of fold), context ``ctx (N, C)`` and targets ``(N,)`` in [0, 1]."""
        from scipy.optimize import minimize

        X = self._design(c, ctx)
        y = np.clip(np.asarray(target, np.float64), 0.0, 1.0)
        if len(X) < 2:
            raise ValueError("the context stage needs at least 2 rows")
        self.mean, self.std = X.mean(0), X.std(0) + 1e-6
        Z = np.concatenate([(X - self.mean) / self.std, np.ones((len(X), 1))], axis=1)
        l2 = self.l2

        def loss(th: np.ndarray) -> tuple[float, np.ndarray]:
            z = Z @ th
            # mean soft-label cross-entropy, written with logaddexp for stability
            val = np.mean(np.logaddexp(0, z) - y * z) + l2 * float(th[:-1] @ th[:-1])
            g = Z.T @ (1 / (1 + np.exp(-z)) - y) / len(y)
            g[:-1] += 2 * l2 * th[:-1]
            return float(val), g

        self.coef = minimize(loss, np.zeros(Z.shape[1]), jac=True, method="L-BFGS-B").x
        return self

    def transform(self, c: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        """``(N,)`` new instance scores in (0, 1)."""
        if self.coef is None or self.mean is None or self.std is None:
            raise ValueError("ContextStage is not fitted")
        z = ((self._design(c, ctx) - self.mean) / self.std) @ self.coef[:-1] + self.coef[-1]
        with np.errstate(over="ignore"):  # exp(-z) = inf for z < -709: the sigmoid saturates at 0, as it should
            return 1 / (1 + np.exp(-z))

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted parameters as float64 arrays (``mean``, ``std``, ``coef``), for safetensors."""
        if self.coef is None or self.mean is None or self.std is None:
            raise ValueError("ContextStage is not fitted")
        return {"mean": self.mean.copy(), "std": self.std.copy(), "coef": self.coef.copy()}

    @classmethod
    def from_arrays(cls, arrs: dict[str, np.ndarray], l2: float = 1e-4) -> ContextStage:
        """Inverse of :meth:`arrays`; ``ValueError`` on missing, misshapen or non-finite arrays."""
        st = cls(l2)
        D = 1 + len(CONTEXT_NAMES)
        want = {"mean": (D,), "std": (D,), "coef": (D + 1,)}
        for k, shape in want.items():
            if k not in arrs:
                raise ValueError(f"missing array {k!r}")
            a = np.asarray(arrs[k], np.float64)
            if a.shape != shape:
                raise ValueError(f"array {k!r} has shape {a.shape}, expected {shape}")
            if not np.isfinite(a).all():
                raise ValueError(f"array {k!r} is not finite")
            if np.abs(a).max() > MAX_ABS:  # as load_head bounds the head's tensors: a hand-edited or corrupt stage
                raise ValueError(f"array {k!r} holds values up to {np.abs(a).max():.3g} in magnitude, above the "
                                 f"bound {MAX_ABS:g}")
        if (np.asarray(arrs["std"]) < MIN_STD).any():  # fit floors it at 1e-6
            raise ValueError(f"array 'std' must be >= {MIN_STD:g}")
        st.mean, st.std, st.coef = (np.asarray(arrs[k], np.float64) for k in ("mean", "std", "coef"))
        return st
