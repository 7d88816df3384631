"""Real-data CCNet (issue 13): EfficientPose-I trained on LSPET + LSP train, recipe selected by CV on that
training data only, tested once on LSP test with paired-bootstrap intervals.

Stores (outside the repository; ``posecal extract`` with its defaults, i.e. heatmap pooling)::

    posecal convert lspet ../shared/data/lspet/joints.mat --images ../shared/data/lspet/images --out W/LSPET.json
    posecal convert lsp ../shared/data/lsp/joints.mat --images ../shared/data/lsp/images --split train \
        --out W/LSP_TRAIN.json                                       # and --split test -> W/LSP_TEST.json
    posecal extract --model ../shared/models/efficientpose/EfficientPoseI.tflite --data W/LSPET.json \
        --images ../shared/data/lspet/images --out W/STORE_LSPET      # same for LSP_TRAIN, LSP_TEST

    PYTHONPATH=src nice python3 benchmarks/lsp_ccnet.py --work W [--cv 5] [--json OUT.json]

Parts (each printed, all written to ``--json``):

1. ``cv``: the CV table of :func:`posecal.ccnet.select.cross_validate` over :func:`default_grid` of the
   default recipe, folds by image over LSPET + LSP train (what ``posecal fit --cv K`` prints).
2. ``visibility``: a head of the default recipe trained on folds 1..K-1, scored on the held-out LSPET images
   of fold 0: v̂ against "annotated" (AUROC, AP, Brier; posecal.calibration.metrics) and the paper's Fig. 4
   aggregation variants in AP (posecal.studies.visibility.masked_mean), raw scores and CCNet's ŝ.
3. ``test``: the default recipe fitted on all of LSPET + LSP train, applied to LSP test (images 1001–2000,
   looked at once, recipe fixed): raw (MMPose ``bbox_keypoint``, the store's own score), closed form (Eq. 12,
   gt area, store σ̂), CCNet, oracle (true OKS), with AP/AR/Pearson/AUSE (posecal.calibration.run_audit) and
   ΔAP / ΔAR intervals from ``posecal.calibration.compare`` (1000 paired resamples, seed 0).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

COLS = ("mAP", "mAR", "pearson_instance", "ause_instance")


def audit_row(gt: Any, records: list[dict]) -> dict[str, float | None]:
    from posecal.calibration.audit import run_audit
    from posecal.io.coco import load_results

    m = run_audit(gt, load_results(records, gt), n_random=0).metrics
    return {k: (None if m.get(k) is None else float(m[k])) for k in COLS}


def with_scores(records: list[dict], kpt: np.ndarray, inst: np.ndarray) -> list[dict]:
    out = []
    for i, r in enumerate(records):
        kp = list(r["keypoints"])
        kp[2::3] = [float(x) for x in kpt[i]]
        out.append({**r, "keypoints": kp, "score": float(inst[i])})
    return out


def cv_part(stores: list, k: int) -> dict[str, Any]:
    from posecal.ccnet.fit import default_recipe
    from posecal.ccnet.select import cross_validate, default_grid

    base = default_recipe(stores[0].meta, stores[0].head_meta["feature_tensor"])
    rows = cross_validate(stores, default_grid(base), k=k, seed=0,
                          on_row=lambda r: print(f"  {r.recipe.label():<62} CV AP {100 * r.mean_ap:6.2f} "
                                                 f"(own score {100 * np.mean(r.base_ap):6.2f}, Δ "
                                                 f"{100 * r.mean_delta:+5.2f}) {r.seconds:5.0f} s", flush=True))
    return {"k": k, "rows": [r.to_dict() for r in rows],
            "selected": max(rows, key=lambda r: r.mean_ap).recipe.to_dict(), "default": base.to_dict()}


def visibility_part(stores: list, k: int) -> dict[str, Any]:
    """Default recipe trained on folds != 0, scored on the LSPET images of fold 0."""
    from posecal.calibration.metrics import auroc, average_precision_binary, brier
    from posecal.ccnet.fit import default_recipe, fit_from_stores, predict_store
    from posecal.ccnet.select import FoldEvaluator, image_folds
    from posecal.studies.visibility import masked_mean

    folds = image_folds([np.array([int(r["image_id"]) for r in d.records]) for d in stores], k, 0)
    recipe = default_recipe(stores[0].meta, stores[0].head_meta["feature_tensor"])
    sub = []
    for d, f in zip(stores, folds, strict=True):
        keep = f != 0
        sub.append(replace(d, has_target=d.has_target & keep))
    head, _ = fit_from_stores(sub, recipe, show_progress=False)
    lspet = stores[0]
    held = np.flatnonzero(folds[0] == 0)
    s, v, c = predict_store(head, lspet, recipe.evidence)
    raw = np.array([r["keypoints"][2::3] for r in lspet.records], np.float64)
    lab = lspet.vis[held]
    out: dict[str, Any] = {"images": int(held.size), "keypoints": int(lab.size),
                           "unannotated_fraction": float(1 - lab.mean())}
    y = lab.reshape(-1).astype(float)
    def safe(fn: Any, *a: Any) -> float | None:
        try:
            return float(fn(*a))
        except ValueError:  # MetricUndefined: one class only
            return None

    for name, p in (("ccnet_v_hat", v[held]), ("raw_score", raw[held])):
        q = p.reshape(-1)
        out[name] = {"AUROC": safe(auroc, q, y), "AP": safe(average_precision_binary, q, y),
                     "Brier": safe(brier, np.clip(q, 0, 1), y)}
    fe = FoldEvaluator([lspet])
    ap: dict[str, dict[str, float]] = {}
    for cname, conf in (("raw", raw[held]), ("ccnet", s[held])):
        ap[cname] = {
            "all": fe.ap(held, masked_mean(conf, np.ones_like(conf)))["AP"],
            "tau_0.2": fe.ap(held, masked_mean(conf, (conf > 0.2).astype(float)))["AP"],
            "gt_visibility": fe.ap(held, masked_mean(conf, lab.astype(float)))["AP"],
            "predicted_visibility": fe.ap(held, masked_mean(conf, v[held]))["AP"],
        }
    ap["raw"]["own_score (MMPose bbox_keypoint)"] = fe.ap(held)["AP"]
    out["AP"] = ap
    return out


def test_part(stores: list, test: Any, resamples: int) -> dict[str, Any]:
    from posecal.calibration.compare import compare
    from posecal.ccnet.apply import rescore_records
    from posecal.ccnet.fit import default_recipe, fit_from_stores, predict_store
    from posecal.io.coco import load_results
    from posecal.models.store import FeatureStore
    from posecal.rescore import get_rescorer

    recipe = default_recipe(stores[0].meta, stores[0].head_meta["feature_tensor"])
    t0 = time.perf_counter()
    head, meta = fit_from_stores(stores, recipe, show_progress=False)
    fit_s = time.perf_counter() - t0
    s, v, _ = predict_store(head, test, recipe.evidence)
    pred = load_results(test.records, test.gt)
    sigma = FeatureStore.open(test.path).read("sigma_hat")
    cf = get_rescorer("closed-form", area="gt", sigmas=test.sigmas).transform(pred, test.gt, sigma=sigma)
    inst = np.nanmean(np.where(test.vis, test.oks, np.nan), axis=1)
    recs = {
        "raw (MMPose bbox_keypoint)": test.records,
        "closed form (Eq. 12, gt area, store σ̂)": with_scores(test.records, cf.keypoint_scores, cf.instance_scores),
        "CCNet (fit defaults, LSPET + LSP train)": rescore_records(test.records, s, v),
        "oracle (true OKS)": with_scores(test.records, np.nan_to_num(test.oks), np.nan_to_num(inst)),
    }
    rows = {}
    for name, r in recs.items():
        rows[name] = audit_row(test.gt, r)
        print(f"  {name:<45} AP {100 * rows[name]['mAP']:6.2f}  AR {100 * rows[name]['mAR']:6.2f}  "
              f"Pearson {rows[name]['pearson_instance']:.3f}  AUSE {rows[name]['ause_instance']:.4f}", flush=True)
    names = list(recs)
    deltas = {}
    for a, b in ((names[0], names[2]), (names[1], names[2]), (names[0], names[1])):
        c = compare(test.gt, recs[a], recs[b], resamples=resamples, seed=0)
        deltas[f"{b} − {a}"] = c.to_dict()
        print(f"  Δ {b} − {a}: AP {100 * c.delta['AP']:+.2f} [{100 * c.interval['AP'][0]:+.2f}, "
              f"{100 * c.interval['AP'][1]:+.2f}], AR {100 * c.delta['AR']:+.2f}", flush=True)
    return {"recipe": recipe.to_dict(), "fit_seconds": fit_s, "train_rows": meta["train"]["rows"], "rows": rows,
            "compare": deltas}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/ccnet", help="folder with STORE_LSPET, STORE_LSP_TRAIN, STORE_LSP_TEST")
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--parts", default="cv,visibility,test")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    from posecal.ccnet.fit import load_training_stores
    from posecal.ccnet.targets import load_store

    torch.set_num_threads(1)
    w = Path(args.work)
    stores, _ = load_training_stores([str(w / "STORE_LSPET"), str(w / "STORE_LSP_TRAIN")])
    out: dict[str, Any] = {"stores": [d.path for d in stores],
                           "rows": [int(d.has_target.sum()) for d in stores]}
    parts = args.parts.split(",")
    if "cv" in parts:
        print(f"CV ({args.cv}-fold by image) on LSPET + LSP train:", flush=True)
        out["cv"] = cv_part(stores, args.cv)
    if "visibility" in parts:
        print("visibility on held-out LSPET images (fold 0):", flush=True)
        out["visibility"] = visibility_part(stores, args.cv)
        print(json.dumps(out["visibility"], indent=1), flush=True)
    if "test" in parts:
        print("LSP test (recipe fixed):", flush=True)
        out["test"] = test_part(stores, load_store(str(w / "STORE_LSP_TEST")), args.resamples)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
