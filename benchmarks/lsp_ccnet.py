"""Real-data CCNet experiment (issue 6): EfficientPose-I on LSP, BlazePose-full on COCO-MINI (5-fold CV).

Stores come from ``posecal extract`` and are cached outside the repository (default ``/work/cache/ccnet``)::

    posecal convert lsp ../shared/data/lsp/joints.mat --images ../shared/data/lsp/images --split train \
        --out CACHE/lsp_train.json                     # and --split test → CACHE/lsp_test.json
    posecal extract --model ../shared/models/efficientpose/EfficientPoseI.tflite --images \
        ../shared/data/lsp/images --data CACHE/lsp_train.json --out CACHE/lsp_train_hm --pooling heatmap
    (same for lsp_test_hm; --pooling spatial → *_sp; --augment 4 --seed 1 → lsp_train_aug4_hm)
    posecal extract --model ../shared/models/mediapipe/pose_landmark_full.tflite --data \
        ../shared/data/coco-mini/person_keypoints_train2017.json --images ../shared/data/coco-mini/train2017 \
        --out CACHE/coco_mini_bp_hm --pooling heatmap          (and --pooling spatial → coco_mini_bp_sp)

    PYTHONPATH=src python3 benchmarks/lsp_ccnet.py --cache /work/cache/ccnet [--json OUT.json]

Rows: heatmap max (the store's predictions: MMPose ``bbox_keypoint``, box score 1), closed-form
(``posecal.rescore`` closed-form, gt area, the store's ``sigma_hat``), CCNet heads, oracle (each instance's
true OKS). Columns from ``posecal.calibration.run_audit``: AP, AR, Pearson and AUSE (instance, keypoint).
The "CCNet (posecal fit, defaults)" row runs the CLI contract: ``posecal fit --store TRAIN --out HEAD`` and
``posecal apply --store TEST --head HEAD``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

COLS = ("mAP", "mAR", "pearson_instance", "pearson_keypoint", "ause_instance", "ause_keypoint")


def audit_row(gt: Any, records: list[dict]) -> dict[str, float]:
    from posecal.calibration.audit import run_audit
    from posecal.io.coco import load_results

    res = load_results(records, gt)
    m = run_audit(gt, res, n_random=0).metrics
    return {k: (None if m.get(k) is None else float(m[k])) for k in COLS}


def with_scores(records: list[dict], kpt: np.ndarray, inst: np.ndarray) -> list[dict]:
    out = []
    for i, r in enumerate(records):
        kp = list(r["keypoints"])
        kp[2::3] = [float(x) for x in kpt[i]]
        out.append({**r, "keypoints": kp, "score": float(inst[i])})
    return out


def baseline_rows(data: Any) -> dict[str, list[dict]]:
    """heatmap max, closed-form, oracle records for a StoreData (posecal.ccnet.targets.load_store)."""
    from posecal.io.coco import load_results
    from posecal.models.store import FeatureStore
    from posecal.rescore import get_rescorer

    rows = {"heatmap max (MMPose bbox_keypoint)": data.records}
    pred = load_results(data.records, data.gt)
    sigma = FeatureStore.open(data.path).read("sigma_hat")
    cf = get_rescorer("closed-form", area="gt", sigmas=data.sigmas).transform(pred, data.gt, sigma=sigma)
    rows["closed-form (gt area, store sigma_hat)"] = with_scores(
        data.records, cf.keypoint_scores, cf.instance_scores
    )
    inst = np.nanmean(np.where(data.vis, data.oks, np.nan), axis=1)
    rows["oracle (true OKS)"] = with_scores(data.records, np.nan_to_num(data.oks), np.nan_to_num(inst))
    return rows


def ccnet_records(data: Any, s: np.ndarray, v: np.ndarray) -> list[dict]:
    from posecal.ccnet.apply import rescore_records

    return rescore_records(data.records, s, v)


def gap_of(sp: np.ndarray) -> np.ndarray:
    return sp.astype(np.float32).mean(axis=(2, 3))


def fit_predict(kind: str, Xtr: np.ndarray, T: np.ndarray, V: np.ndarray, Xte: np.ndarray, **kw: Any):
    from posecal.ccnet.train import TrainConfig, fit_head, predict

    t = time.perf_counter()
    r = fit_head(Xtr, T, V, TrainConfig(head=kind, **kw), show_progress=False)
    s, v = predict(r.head, Xte)
    return s, v, time.perf_counter() - t


def lsp(cache: Path, steps: int, spatial_steps: int) -> dict[str, dict]:
    from posecal.ccnet.targets import load_store
    from posecal.cli import main as cli

    te, tr = load_store(str(cache / "lsp_test_hm")), load_store(str(cache / "lsp_train_hm"))
    rows = {k: audit_row(te.gt, r) for k, r in baseline_rows(te).items()}
    sel = tr.has_target
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        assert cli(["fit", "--store", str(cache / "lsp_train_hm"), "--out", f"{d}/head"]) == 0
        assert (
            cli(
                [
                    "apply",
                    "--store",
                    str(cache / "lsp_test_hm"),
                    "--head",
                    f"{d}/head",
                    "--out",
                    f"{d}/cal.json",
                ]
            )
            == 0
        )
        rows["CCNet (posecal fit, defaults: kpt)"] = {
            **audit_row(te.gt, json.loads(Path(f"{d}/cal.json").read_text())),
            "seconds": time.perf_counter() - t,
        }
    au_p = cache / "lsp_train_aug4_hm"
    if (au_p / "meta.json").is_file():
        au = load_store(str(au_p))
        X = np.concatenate([tr.features[sel], au.features[au.has_target]])
        T = np.concatenate([tr.oks[sel], au.oks[au.has_target]])
        V = np.concatenate([tr.vis[sel], au.vis[au.has_target]])
        s, v, sec = fit_predict("kpt", X, T, V, te.features, steps=steps)
        rows["CCNet kpt, train + 4 augmented copies"] = {
            **audit_row(te.gt, ccnet_records(te, s, v)),
            "seconds": sec,
        }
    sp_tr, sp_te = cache / "lsp_train_sp", cache / "lsp_test_sp"
    if (sp_tr / "meta.json").is_file() and (sp_te / "meta.json").is_file():
        from posecal.models.store import FeatureStore

        Str = FeatureStore.open(sp_tr).features()[sel]
        Ste = FeatureStore.open(sp_te).features()
        s, v, sec = fit_predict("fc", gap_of(Str), tr.oks[sel], tr.vis[sel], gap_of(Ste), steps=steps)
        rows["CCNet fc on GAP features"] = {**audit_row(te.gt, ccnet_records(te, s, v)), "seconds": sec}
        for kind in ("conv_gap", "conv_sigmoid_gap"):
            s, v, sec = fit_predict(kind, Str, tr.oks[sel], tr.vis[sel], Ste, steps=spatial_steps)
            rows[f"CCNet {kind} ({spatial_steps} steps)"] = {
                **audit_row(te.gt, ccnet_records(te, s, v)),
                "seconds": sec,
            }
    return rows


def coco_mini_cv(cache: Path, steps: int, folds: int = 5, seed: int = 0) -> dict[str, dict]:
    """Out-of-fold CCNet scores on COCO-MINI: folds by image (seeded), each fold scored by a head trained on
    the other four; the whole set is then evaluated once (so AR is comparable across rows)."""
    from posecal.ccnet.targets import load_store
    from posecal.models.store import FeatureStore

    hm, sp = cache / "coco_mini_bp_hm", cache / "coco_mini_bp_sp"
    if not (hm / "meta.json").is_file():
        return {}
    data = load_store(str(hm))
    rows = {k: audit_row(data.gt, r) for k, r in baseline_rows(data).items()}
    img = np.array([r["image_id"] for r in data.records])
    uniq = np.unique(img)
    fold_of_img = dict(zip(uniq, np.random.default_rng(seed).permutation(len(uniq)) % folds, strict=True))
    fold = np.array([fold_of_img[i] for i in img])
    variants = [("kpt", data.features)]
    if (sp / "meta.json").is_file():
        ann_sp = FeatureStore.open(sp).read("ann_id")
        assert np.array_equal(ann_sp, FeatureStore.open(hm).read("ann_id"))
        variants.append(("fc", gap_of(FeatureStore.open(sp).features())))
    for kind, F in variants:
        s = np.zeros(data.oks.shape)
        v = np.zeros(data.oks.shape)
        t = time.perf_counter()
        for f in range(folds):
            trn = (fold != f) & data.has_target
            s[fold == f], v[fold == f], _ = fit_predict(
                kind, F[trn], data.oks[trn], data.vis[trn], F[fold == f], steps=steps
            )
        name = f"CCNet {kind}{' (GAP)' if kind == 'fc' else ''}, {folds}-fold CV"
        rows[name] = {**audit_row(data.gt, ccnet_records(data, s, v)), "seconds": time.perf_counter() - t}
    return rows


def table(rows: dict[str, dict]) -> str:
    head = "| confidence | AP | AR | Pearson inst. | Pearson kpt | AUSE inst. | AUSE kpt |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name, m in rows.items():
        cells = []
        for k in COLS:
            x = m.get(k)
            cells.append("—" if x is None else (f"{100 * x:.1f}" if k in ("mAP", "mAR") else f"{x:.3f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="/work/cache/ccnet")
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--spatial-steps", type=int, default=3000)
    ap.add_argument("--only", choices=["lsp", "coco-mini"])
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    cache = Path(a.cache)
    out = {}
    if a.only in (None, "lsp"):
        out["lsp"] = lsp(cache, a.steps, a.spatial_steps)
        print("## EfficientPose-I, LSP test (1001–2000), trained on LSP train (1–1000)\n")
        print(table(out["lsp"]) + "\n")
    if a.only in (None, "coco-mini"):
        out["coco_mini"] = coco_mini_cv(cache, a.steps)
        print("## BlazePose-full, COCO-MINI train (gt boxes), 5-fold cross-validation\n")
        print(table(out["coco_mini"]) + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
