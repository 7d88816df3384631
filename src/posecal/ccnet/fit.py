"""Fit a CCNet head from feature stores: the library behind ``posecal fit`` (paper Sec. 5). Imports torch.

:func:`fit_from_stores` checks that the stores can be trained on together, picks the recipe (the default
for the stores' model kind unless one is given), joins their rows that carry a target, trains
(:func:`posecal.ccnet.train.fit_head`), tears a DDP process group down and returns the head with its
metadata. :func:`default_recipe` holds the defaults selected by cross-validation on training data
(:mod:`posecal.ccnet.select`; the CV table that chose them is in docs/results.md).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from posecal.ccnet import HEAD_KINDS
from posecal.ccnet.targets import StoreData, default_head, head_inputs, load_store, metric_masks, uses_evidence
from posecal.errors import PosecalInputError, PosecalWarning
from posecal.rescore.aggregate import instance_score

__all__ = ["Recipe", "DEFAULT_HEAD", "DEFAULT_RECIPES", "default_recipe", "load_training_stores",
           "training_arrays", "training_masks", "fit_from_stores", "fit_context_stage", "predict_store",
           "rescored_ap", "CONTEXT_FOLDS"]

CONTEXT_FOLDS = 3
"""Folds (by image) of the cross-fitting that gives the context stage its out-of-fold instance scores."""

#: head chosen for each store feature tensor when no recipe is known for the store's model kind
DEFAULT_HEAD = {"features_kpt": "kpt", "features_gap": "fc", "features_spatial": "conv_gap"}


@dataclass(frozen=True)
class Recipe:
    """What ``posecal fit`` trains: the head kind, its evidence columns
    (:data:`posecal.ccnet.targets.EVIDENCE`) and the optimisation settings of
    :class:`posecal.ccnet.train.TrainConfig` (``head`` there is set from ``head`` here)."""

    head: str = "kpt"
    evidence: tuple[str, ...] = ()
    steps: int = 12000
    batch_size: int = 64
    lr: float = 1e-3
    lam: float = 0.2
    conf_loss: str = "mse"
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 0
    box_score: bool = False
    optimizer: str = "adam"
    filter_rank: int = 0

    def train_config(self) -> Any:
        from posecal.ccnet.train import TrainConfig

        return TrainConfig(head=self.head, steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                           lam=self.lam, conf_loss=self.conf_loss, weight_decay=self.weight_decay,
                           seed=self.seed, eval_every=self.eval_every, optimizer=self.optimizer,
                           filter_rank=self.filter_rank)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["evidence"] = list(self.evidence)
        return d

    def label(self) -> str:
        """Short human-readable name for CV tables."""
        ev = "+".join(self.evidence) or "-"
        opt = (f"lbfgs it={self.steps}" if self.optimizer == "lbfgs"
               else f"adam lr={self.lr:g} steps={self.steps} bs={self.batch_size}")
        rank = f" rank={self.filter_rank}" if self.filter_rank else ""
        return f"{self.head}{rank} ev={ev} {self.conf_loss} wd={self.weight_decay:g} {opt}"


#: defaults per (model kind, feature tensor), selected by ``posecal fit --cv 3`` on LSPET + LSP train
#: (EfficientPose-I, heatmap pooling; folds by image; docs/results.md "Recipe selection"). Never chosen on
#: a test split.
DEFAULT_RECIPES: dict[tuple[str, str], Recipe] = {
    ("efficientpose", "features_kpt"): Recipe(head="kpt_pose", evidence=("pose",), conf_loss="mse",
                                              weight_decay=1e-2, optimizer="lbfgs", steps=100),
}


def default_recipe(meta: dict[str, Any], feature_tensor: str) -> Recipe:
    """The default recipe for a store (its ``model_kind`` and feature tensor): :data:`DEFAULT_RECIPES`,
    else the paper's App. B recipe with the head the model card recommends
    (:func:`posecal.ccnet.targets.default_head`) or :data:`DEFAULT_HEAD`."""
    r = DEFAULT_RECIPES.get((str(meta.get("model_kind")), feature_tensor))
    if r is not None:
        return r
    # a model card that asks for the instance evidence (COCO-17 models behind a detector) gets kpt_inst
    return Recipe(head=default_head(meta, feature_tensor, DEFAULT_HEAD[feature_tensor]))


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [k for k in a if a[k] != b.get(k)]


def load_training_stores(paths: Sequence[str], val: str | None = None) -> tuple[list[StoreData], StoreData | None]:
    """Open the training stores (and a validation store) and check that they share model, tensor, pooling
    and keypoint set; errors name the store that differs."""
    stores = [load_store(p) for p in paths]
    if not stores:
        raise PosecalInputError("no training store given", field="--store")
    ref = stores[0].head_meta
    for p, d in zip(paths[1:], stores[1:], strict=True):
        if d.head_meta != ref:
            raise PosecalInputError(f"store differs from {paths[0]} in {', '.join(_diff(ref, d.head_meta))}", file=p)
    v = load_store(val) if val else None
    if v is not None and v.head_meta != ref:
        raise PosecalInputError("validation store differs from the training store in "
                                f"{', '.join(_diff(ref, v.head_meta))}", file=val)
    return stores, v


def _training_rows(d: StoreData, rows: np.ndarray | None) -> np.ndarray:
    """(N,) bool: the rows of store ``d`` that carry a target, restricted to ``rows`` when given."""
    sel = d.has_target.copy()
    if rows is not None:
        keep = np.zeros_like(sel)
        keep[np.asarray(rows, np.int64)] = True
        sel &= keep
    return sel


def training_arrays(stores: Sequence[StoreData], evidence: Sequence[str] = (),
                    rows: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X (N, ...), T (N, K) OKS targets, V (N, K) labelled)`` over the stores' rows that carry a target
    (restricted to ``rows[i]`` of store i when given), in store order."""
    xs, ts, vs = [], [], []
    for i, d in enumerate(stores):
        sel = _training_rows(d, None if rows is None else rows[i])
        x = head_inputs(d, tuple(evidence))
        xs.append(x[sel])
        ts.append(d.oks[sel])
        vs.append(d.vis[sel])
    X = np.concatenate(xs)
    if not len(X):
        raise PosecalInputError("no row of the store has a gt with a labelled keypoint", file=stores[0].path)
    if rows is None and not any(v.any() for v in vs):  # detection stores: every row unmatched (target 0)
        raise PosecalInputError("no detection of the stores matches a person with a labelled keypoint (COCOeval "
                                "matching at OKS 0.5): nothing but zeros to learn", file=stores[0].path)
    return X, np.concatenate(ts), np.concatenate(vs)


def training_masks(stores: Sequence[StoreData], rows: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """``conf_mask`` / ``vis_mask`` ``(N, K)`` over the same rows as :func:`training_arrays` (only when every
    store has them: joints a dataset does not annotate, detections with no target) — keyword arguments of
    :func:`posecal.ccnet.train.fit_head`."""
    out: dict[str, np.ndarray] = {}
    for name in ("conf_mask", "vis_mask"):
        if not all(getattr(d, name, None) is not None for d in stores):
            continue
        out[name] = np.concatenate([getattr(d, name)[_training_rows(d, None if rows is None else rows[i])]
                                    for i, d in enumerate(stores)])
    return out


def predict_store(head: Any, data: StoreData, evidence: Sequence[str] = (), *,
                  box_score: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(s_hat (N, K), v_hat (N, K), c (N,))`` for every row of ``data`` (c: Sec. 5 aggregation), as
    ``posecal apply`` computes them: keypoints the model lacks (store ``joint_map`` −1,
    :func:`posecal.ccnet.targets.model_keypoints`) get ŝ = v̂ = 0 (:func:`posecal.ccnet.apply.mask_missing`)
    and so take no part in c. ``fit``'s recorded metrics and the context stage's out-of-fold ĉ come from here."""
    from posecal.ccnet.apply import mask_missing
    from posecal.ccnet.targets import model_keypoints
    from posecal.ccnet.train import predict

    s, v = predict(head, head_inputs(data, tuple(evidence)))
    s, v = mask_missing(s, v, model_keypoints(data.meta, s.shape[1], file=os.path.join(data.path, "meta.json")))
    c = instance_score(s, "visibility", data.box_score if box_score else None, visibility=v)
    return s, v, c


def rescored_ap(head: Any, data: StoreData, evidence: Sequence[str] = (), *,
                box_score: bool = False) -> dict[str, float]:
    """AP/AR of ``data``'s predictions rescored by ``head`` (coordinates unchanged) and Pearson checks."""
    from posecal.ccnet.train import quick_metrics
    from posecal.metrics.cocoeval import evaluate

    s, v, c = predict_store(head, data, evidence, box_score=box_score)
    out: dict[str, float] = {}
    if data.gt is not None:
        ev = evaluate(data.gt, data.results(), scores=c, sigmas=data.sigmas, warn=False)
        out["AP"], out["AR"] = float(ev.stats["AP"]), float(ev.stats["AR"])
        sel = data.has_target
        out.update(quick_metrics(s[sel], v[sel], data.oks[sel], data.vis[sel], *metric_masks(data, sel)))
    return out


def applied_ap(head: Any, data: StoreData, evidence: Sequence[str] = (), *,
               box_score: bool = False) -> dict[str, float]:
    """AP/AR of ``data``'s predictions with the instance scores ``posecal apply`` writes for ``head`` on it:
    the head, then (detection stores) the head's context stage, then the store's own order kept per image
    (:func:`posecal.ccnet.apply.instance_scores`), and ``own_AP``: the same predictions ranked by the store's
    own score (``predictions.json``, MMPose's rule), the baseline (AR is the same). Empty without gt."""
    from posecal.ccnet.apply import instance_scores
    from posecal.ccnet.context import own_scores, store_context
    from posecal.metrics.cocoeval import evaluate

    if data.gt is None:
        return {}
    s, v, _ = predict_store(head, data, evidence, box_score=box_score)
    stage = getattr(head, "context_stage", None)
    use_stage = stage is not None and data.meta.get("boxes", "gt") != "gt"
    own = own_scores(data.records)
    ctx = store_context(data.path, data.records, data.sigmas) if use_stage else None
    iid = data.image_codes()
    c = instance_scores(s, v, own, iid, box_score=data.box_score if box_score else None,
                        stage=stage if use_stage else None, context=ctx)
    ev = evaluate(data.gt, data.results(), scores=c, sigmas=data.sigmas, warn=False)
    base = evaluate(data.gt, data.results(), scores=own, sigmas=data.sigmas, warn=False)
    return {"AP": float(ev.stats["AP"]), "AR": float(ev.stats["AR"]), "own_AP": float(base.stats["AP"])}


def _is_detection_store(d: StoreData) -> bool:
    return d.match is not None and d.has_target is not None and bool(d.has_target.any())


def fit_context_stage(stores: Sequence[StoreData], recipe: Recipe, *, folds: int = CONTEXT_FOLDS,
                      device: str = "cpu", show_progress: bool = False) -> tuple[Any, dict[str, Any]] | None:
    """The learned-NMS stage (:class:`posecal.ccnet.context.ContextStage`) for a head trained with ``recipe``
    on ``stores``, or None when no store holds detections (``--boxes`` stores with matched targets).

    Stacked: the training rows are split by image into ``folds`` (seed ``recipe.seed``; an image's rows in
    every store of the same data file share a fold, :func:`posecal.ccnet.select.image_folds`); a head trained with
    ``recipe`` on the other folds scores each fold's detection rows (ĉ, Sec. 5 aggregation), and the stage is
    fitted on those out-of-fold scores with the rows' image context against their instance targets
    (:func:`posecal.ccnet.context.instance_target`). Costs ``folds`` extra head fits. Returns the stage and
    its metadata."""
    from posecal.ccnet.context import CONTEXT_NAMES, ContextStage, instance_target, store_context
    from posecal.ccnet.select import image_count, image_folds, store_image_keys
    from posecal.ccnet.train import fit_head

    det = [i for i, d in enumerate(stores) if _is_detection_store(d)]
    if not det:
        return None
    keys, datasets = store_image_keys(stores)  # an image of two stores of one data file: one fold
    folds = min(folds, image_count(keys, datasets))
    if folds < 2:
        warnings.warn("context stage skipped: cross-fitting needs at least 2 training images", PosecalWarning,
                      stacklevel=2)
        return None
    fold = image_folds(keys, folds, recipe.seed, datasets=datasets)
    c_oof = {i: np.full(len(stores[i].records), np.nan) for i in det}
    for k in range(folds):
        rows = [np.flatnonzero(f != k) for f in fold]
        X, T, V = training_arrays(stores, recipe.evidence, rows)
        res = fit_head(X, T, V, recipe.train_config(), device=device, show_progress=show_progress,
                       **training_masks(stores, rows))
        for i in det:
            held = fold[i] == k
            if held.any():
                _, _, c = predict_store(res.head, stores[i], recipe.evidence, box_score=recipe.box_score)
                c_oof[i][held] = c[held]
    cs, xs, ts = [], [], []
    for i in det:
        d = stores[i]
        sel = d.has_target
        cs.append(c_oof[i][sel])
        xs.append(store_context(d.path, d.records, d.sigmas)[sel])
        ts.append(instance_target(d.oks, d.conf_mask if d.conf_mask is not None else d.vis)[sel])
    stage = ContextStage().fit(np.concatenate(cs), np.concatenate(xs), np.concatenate(ts))
    meta = {"features": ["logit_c", *CONTEXT_NAMES], "l2": stage.l2, "folds": folds,
            "rows": int(sum(len(c) for c in cs)), "stores": [stores[i].path for i in det],
            "applies_to": "detection stores (extract --boxes)"}
    return stage, meta


def _check_recipe(recipe: Recipe, train: StoreData, feat_name: str) -> None:
    """The recipe fits the store: its head reads the store's feature tensor (and, for ``kpt_inst``, the
    instance evidence the store holds), its evidence suits the head, steps and batch size are positive."""
    if HEAD_KINDS.get(recipe.head) != feat_name:
        raise PosecalInputError(f"head {recipe.head!r} reads {HEAD_KINDS.get(recipe.head)}, the store has "
                                f"{feat_name}", file=train.path, field="--head")
    if recipe.head == "kpt_pose" and (not recipe.evidence or recipe.evidence[-1] != "pose"):
        raise PosecalInputError("head 'kpt_pose' reads the 'pose' evidence: give it last (--evidence pose, or "
                                "e.g. score,pose), or fit the plain per-keypoint head (--head kpt)",
                                file=train.path, field="--evidence")
    if recipe.head == "kpt_inst" and recipe.evidence:
        raise PosecalInputError("head 'kpt_inst' reads the instance evidence as its last input channels; it takes "
                                "no further evidence columns (--evidence none)", file=train.path, field="--evidence")
    if recipe.head == "kpt_inst" and not uses_evidence(train.meta):
        # its gate would read the last feature channels as box score and keypoint-score statistics
        raise PosecalInputError("head 'kpt_inst' reads the instance evidence (box score, keypoint-score "
                                "statistics), which this store does not hold: its model card does not ask for it "
                                "(ccnet.evidence); fit --head kpt, or describe the model with a card whose "
                                "ccnet.evidence is true and extract again", file=train.path, field="--head")
    if recipe.evidence.count("pose") > 1:
        raise PosecalInputError("'pose' evidence given twice", field="--evidence")
    if recipe.steps < 1 or recipe.batch_size < 1:
        raise PosecalInputError("steps and batch size must be >= 1", field="--steps/--batch-size")


def fit_from_stores(stores: Sequence[StoreData], recipe: Recipe | None = None, val: StoreData | None = None, *,
                    device: str = "cpu", threads: int | None = None, show_progress: bool = True,
                    verbose: bool = False, context: bool = True) -> tuple[Any, dict[str, Any]]:
    """Train a CCNet head on the rows of ``stores`` that carry a target.

    Args:
        stores: training stores (:func:`load_training_stores`; they must share model, tensor, pooling).
        recipe: what to train; None → :func:`default_recipe` of the first store.
        val: optional validation store, evaluated during training (AP, Pearson) and at the end.
        device: ``cpu`` or ``cuda``; under torchrun each rank trains its share (DDP), rank 0 returns the
            metadata (other ranks get ``meta = {}``), and the process group is destroyed before returning.
        threads: torch threads (default 1 for pooled features, where more threads only add overhead).
        context: when a training store holds detections, also fit the learned-NMS context stage
            (:func:`fit_context_stage`; attached to the head as ``head.context_stage``, saved by
            :func:`posecal.ccnet.checkpoint.save_head`, used by ``posecal apply`` on detection stores).
    Returns:
        ``(head, meta)``: the trained :class:`posecal.ccnet.heads.CCNetHead` (CPU, eval mode) and the
        metadata for :func:`posecal.ccnet.checkpoint.save_head`.
    """
    import torch

    from posecal.ccnet.train import default_device, distributed_env, fit_head

    train = stores[0]
    feat_name = train.head_meta["feature_tensor"]
    recipe = recipe or default_recipe(train.meta, feat_name)
    _check_recipe(recipe, train, feat_name)
    threads = threads or (1 if feat_name != "features_spatial" else None)
    if threads:
        torch.set_num_threads(threads)
    X, T, V = training_arrays(stores, recipe.evidence)
    dev = default_device(device)
    rank, world = distributed_env(dev)
    on_eval = None
    if val is not None:
        Xv = head_inputs(val, recipe.evidence)

        def on_eval(step: int, head: Any) -> dict[str, Any]:
            m = rescored_ap(head, replace(val, features=Xv), (), box_score=recipe.box_score)
            if verbose:
                print(f"step {step}: val " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()), file=sys.stderr)
            return m
    try:
        res = fit_head(X, T, V, recipe.train_config(), on_eval=on_eval, device=dev, show_progress=show_progress,
                       **training_masks(stores))
        meta: dict[str, Any] = {}
        if rank == 0:
            metrics = {"train": rescored_ap(res.head, train, recipe.evidence, box_score=recipe.box_score)}
            if val is not None:
                metrics["val"] = rescored_ap(res.head, val, recipe.evidence, box_score=recipe.box_score)
            meta = {
                **train.head_meta,
                "evidence": list(recipe.evidence),
                "aggregation": "sum(v_hat*s_hat)/sum(v_hat)" + (" * box_score" if recipe.box_score else ""),
                "box_score": bool(recipe.box_score),
                "recipe": recipe.to_dict(),
                "train": {**recipe.train_config().to_dict(), "stores": [os.path.abspath(d.path) for d in stores],
                          "flip_test": sorted({bool(d.meta.get("flip_test")) for d in stores}),  # apply warns
                          "rows": len(X), "world_size": world, "final_loss": float(res.losses[-100:].mean())},
                "metrics": metrics,
                "history": res.history,
            }
            if context and world == 1:
                got = fit_context_stage(stores, recipe, device=dev, show_progress=show_progress)
                if got is not None:
                    res.head.context_stage, meta["context"] = got
            elif context and any(_is_detection_store(d) for d in stores):
                warnings.warn("context stage skipped under DDP (world size > 1): fit it in one process",
                              PosecalWarning, stacklevel=2)
            # in-sample, per training store, what `posecal apply` would write on it (context stage, order kept)
            metrics["applied"] = {d.path: applied_ap(res.head, d, recipe.evidence, box_score=recipe.box_score)
                                  for d in stores if d.gt is not None}
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()
    return res.head, meta
