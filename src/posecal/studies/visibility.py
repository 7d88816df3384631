"""Visibility study (paper Sec. 6.5, Fig. 4) on a feature store, raw scores vs a CCNet head.

(a) Keypoint confidence of **visible** (gt v = 2) vs **occluded** (gt v = 1) joints of the detections, for
the raw keypoint score and CCNet's ŝ (and v̂), with their keypoint OKS for reference (occluded joints are
located worse, so a calibrated confidence should be lower there, by about as much as the OKS).

(b) COCO AP (OKS .50:.95, the exact evaluator) of the instance score aggregated from keypoint
confidences in four ways, for raw scores and for CCNet's ŝ:

* ``all``: mean over all K keypoints;
* ``tau``: mean over keypoints whose confidence exceeds τ (MMPose's ``keypoint`` rule; all if none does);
* ``gt_visibility``: mean over the keypoints that count in the OKS (gt v > 0) — an oracle;
* ``gt_visible``: mean over the gt-visible keypoints (v = 2) — an oracle of a stricter kind;
* ``predicted_visibility``: Σ v̂ₖ cₖ / Σ v̂ₖ with CCNet's v̂ (Sec. 5; needs a head).

On LSP every joint is labelled (v ∈ {1, 2}), so ``gt_visibility`` equals ``all`` there and the
visible/occluded split is ``gt_visible``. Coordinates are never changed: only the ranking differs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from posecal.errors import PosecalInputError

__all__ = ["VARIANTS", "masked_mean", "visibility_study", "plot_visibility"]

VARIANTS = ("all", "tau", "gt_visibility", "gt_visible", "predicted_visibility")


def masked_mean(c: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Σ wₖcₖ / Σ wₖ per row of ``c (N, K)`` with weights ``w (N, K)`` (a mask or v̂); plain mean where
    Σ w = 0."""
    c, w = np.asarray(c, np.float64), np.asarray(w, np.float64)
    den = w.sum(axis=1)
    return np.where(den > 0, (w * c).sum(axis=1) / np.where(den > 0, den, 1.0), c.mean(axis=1))


def _stats(x: np.ndarray) -> dict[str, object]:
    x = np.asarray(x, np.float64)
    if x.size == 0:
        return {"n": 0, "mean": None, "median": None, "std": None}
    return {"n": int(x.size), "mean": float(x.mean()), "median": float(np.median(x)), "std": float(x.std())}


def visibility_study(store: str | os.PathLike, *, head: str | os.PathLike | None = None, tau: float = 0.2
                     ) -> dict[str, object]:
    """Run the study on a feature store with gt (see the module docstring); returns the JSON-ready result
    and, under ``"_arrays"``, the per-keypoint arrays the plot uses (dropped from the JSON)."""
    from posecal.io.coco import load_gt, load_results
    from posecal.keypoints import keypoint_set_from_meta
    from posecal.metrics.cocoeval import evaluate
    from posecal.metrics.oks import keypoint_oks
    from posecal.models.store import FeatureStore

    fs = FeatureStore.open(store)
    if fs.gt_path is None:
        raise PosecalInputError("the store has no gt.json", file=str(store))
    from posecal.metrics.cocoeval import with_oks_area

    gt = with_oks_area(load_gt(fs.gt_path))
    try:
        ks = keypoint_set_from_meta(fs.meta)
    except KeyError as e:
        raise PosecalInputError(str(e.args[0]) if e.args else str(e), file=str(store),
                                field="keypoint_set") from None
    if ks.num_keypoints != gt.num_joints:  # an edited meta.json: the arrays, not the set, say what was extracted
        raise PosecalInputError(f"{ks.name} has {ks.num_keypoints} keypoints but the store's gt.json "
                                f"{gt.num_joints} (edited?)", file=str(Path(store) / "meta.json"),
                                field="keypoint_set")
    records = fs.predictions
    row_of = {int(a): i for i, a in enumerate(gt.ann_id)}
    g = np.array([row_of.get(int(a), -1) for a in fs.read("ann_id")], dtype=np.int64)
    ok = g >= 0
    if not ok.any():
        raise PosecalInputError("no row of the store has a ground-truth person (the study needs gt boxes)",
                                file=str(store), field="ann_id")
    gtk = np.where(ok[:, None, None], gt.keypoints[np.maximum(g, 0)], 0.0)
    if "gt_keypoints" in fs.arrays:  # augmented copies: occluder-updated flags
        gtk[ok] = fs.read("gt_keypoints")[ok]
    gtv = gtk[..., 2]
    if not (gtv > 0).any():
        raise PosecalInputError("the store's ground truth labels no keypoint: AP is undefined", file=str(store),
                                field="gt.json")
    area = np.where(ok, gt.area[np.maximum(g, 0)], 1.0)
    oks = np.where(gtv > 0, keypoint_oks(fs.read("keypoints"), gtk, area, ks.sigmas), np.nan)
    raw = np.array([r["keypoints"][2::3] for r in records], np.float64)
    conf: dict[str, np.ndarray] = {"raw": raw}
    vhat = None
    if head is not None:
        from posecal.ccnet.checkpoint import check_compatible, load_head
        from posecal.ccnet.targets import store_features, store_head_meta
        from posecal.ccnet.train import predict

        hd, meta = load_head(head)
        # the head's input as posecal apply builds it: the store's features [+ the instance evidence its
        # model card asks for] [+ the per-keypoint evidence columns the head was trained with]
        check_compatible(meta, store_head_meta(fs.meta, fs.feature_name), file=str(head))
        feats = store_features(fs)
        if meta.get("evidence"):  # per-keypoint evidence columns the head was trained with
            from posecal.ccnet.targets import evidence_columns

            ev = evidence_columns(str(store), tuple(meta["evidence"]), ks.sigmas)
            feats = np.concatenate([np.asarray(feats, np.float32), ev], axis=-1)
        s, vhat = predict(hd, feats)
        # keypoints the model lacks (extract --allow-missing-joints): s_hat = v_hat = 0, as posecal apply
        from posecal.ccnet.apply import mask_missing
        from posecal.ccnet.targets import model_keypoints

        s, vhat = mask_missing(s, vhat, model_keypoints(fs.meta, ks.num_keypoints, file=Path(store) / "meta.json"))
        conf["ccnet"] = s
    res = load_results(records, gt)
    K = raw.shape[1]
    masks = {
        "all": lambda c: np.ones_like(c),
        "tau": lambda c: (c > tau).astype(np.float64),
        "gt_visibility": lambda c: (gtv > 0).astype(np.float64),
        "gt_visible": lambda c: (gtv == 2).astype(np.float64),
        "predicted_visibility": (lambda c: vhat) if vhat is not None else None,
    }
    ap: dict[str, dict[str, float | None]] = {}
    ar = None
    for name, c in conf.items():
        ap[name] = {}
        for var in VARIANTS:
            mk = masks[var]
            if mk is None:
                ap[name][var] = None
                continue
            score = masked_mean(c, mk(c))
            ev = evaluate(gt, res, scores=score, sigmas=ks.sigmas, warn=False)
            ap[name][var] = float(ev.stats["AP"])
            ar = float(ev.stats["AR"])
        ap[name]["own_instance_score"] = None
    ev0 = evaluate(gt, res, sigmas=ks.sigmas, warn=False)
    ap["raw"]["own_instance_score"] = float(ev0.stats["AP"])
    # (a) visible vs occluded, over matched detections' labelled keypoints
    groups = {"visible": gtv == 2, "occluded": gtv == 1}
    part_a: dict[str, object] = {}
    for gname, m in groups.items():
        part_a[gname] = {"keypoint_oks": _stats(oks[m]), "raw": _stats(raw[m])}
        if head is not None:
            part_a[gname]["ccnet"] = _stats(conf["ccnet"][m])
            part_a[gname]["ccnet_visibility"] = _stats(vhat[m])
    arrays = {"gtv": gtv, "oks": oks, **conf}
    if vhat is not None:
        arrays["vhat"] = vhat
    return {
        "study": "visibility", "store": str(store), "head": None if head is None else str(head),
        "keypoint_set": ks.name, "model": fs.meta.get("model_file"), "K": K,
        "instances": len(records), "tau": tau, "AR": ar, "confidence_by_visibility": part_a,
        "AP": ap, "_arrays": arrays,
    }


def plot_visibility(result: dict[str, object], path: str | os.PathLike) -> None:
    """Fig. 4: (a) confidence of visible vs occluded joints (box plots), (b) AP per aggregation variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posecal._util import atomic_path

    a = result["_arrays"]
    gtv = a["gtv"]
    names = [n for n in ("raw", "ccnet") if n in a]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    data, labels = [], []
    for what in ("oks", *names):
        for gname, m in (("visible", gtv == 2), ("occluded", gtv == 1)):
            x = a[what][m]
            data.append(x[np.isfinite(x)])
            labels.append(f"{'OKS' if what == 'oks' else what}\n{gname}")
    ax1.boxplot(data, showfliers=False)
    ax1.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax1.set_title("(a) keypoint confidence: visible vs occluded")
    ax1.grid(alpha=0.3)
    width = 0.8 / len(names)
    x = np.arange(len(VARIANTS))
    for i, n in enumerate(names):
        vals = [result["AP"][n][v] for v in VARIANTS]
        ax2.bar(x + i * width, [np.nan if v is None else 100 * v for v in vals], width, label=n)
    ax2.set_xticks(x + width * (len(names) - 1) / 2, [v.replace("_", "\n") for v in VARIANTS], fontsize=7)
    finite = [100 * v for n in names for v in result["AP"][n].values() if v is not None]
    if result.get("AR") is not None:
        finite.append(100 * result["AR"])
    if finite:
        ax2.set_ylim(min(finite) - 2, max(finite) + 1)
    if result.get("AR") is not None:
        ax2.axhline(100 * result["AR"], color="k", ls=":", label="AR (ceiling)")
    ax2.set_ylabel("AP (%)")
    ax2.set_title(f"(b) AP by aggregation (τ = {result['tau']})")
    ax2.legend(fontsize=8)
    fig.suptitle(f"Visibility study: {result.get('model')} ({result['instances']} instances)")
    fig.tight_layout()
    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
