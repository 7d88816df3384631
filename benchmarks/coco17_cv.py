"""Outer K-fold cross-validation by image of the default COCO-17 chain on coco-mini detections (not a test;
figures in docs/results.md, "Context stage" and "A rank-constrained head").

Each fold's detections are rescored by :func:`posecal.ccnet.fit.fit_from_stores` (what ``posecal fit`` runs:
the store's default recipe, context stage included) trained on the ``--extra`` stores (e.g. the SimplePose
LSPET-as-COCO-17 gt-box store) plus the other folds of the ``--mini`` detection store (``extract --boxes``),
never on its own fold; the whole set is then evaluated once with the out-of-fold scores
(:func:`posecal.metrics.cocoeval.evaluate`, pycocotools-exact). Rows: the store's own MMPose score, the head
alone and head + context stage, each with every image's detection order kept (``posecal apply``'s default,
:func:`posecal.rescore.order.keep_image_order`) and free (``apply --reorder``).

Options change one factor of the recipe: ``--rank R`` (``fit --filter-rank R``), ``--steps``, ``--head-seeds N``
(mean of N heads' scores, seeds 0..N-1; head alone), ``--mini-weight W`` (the detection store's training rows
repeated W times; head alone). ``--capture`` keeps each fold's context-stage training arrays (out-of-fold ĉ,
targets) in ``--save``; ``--stage-variants FILE.npz`` then refits the stage with extra per-detection features
(logit of the own score, logit of the box score, log box area) and ridge values on those arrays, without new
head fits. ``--out-dir`` writes the out-of-fold result files for ``posecal compare``.

    PYTHONPATH=src python3 benchmarks/coco17_cv.py --mini S_MINI --extra S_LSPET --seed 0 --save cv_s0.npz \\
        [--rank 4] [--capture] [--out-dir RES]
    PYTHONPATH=src python3 benchmarks/coco17_cv.py --mini S_MINI --stage-variants cv_s0.npz
    posecal compare --gt ../shared/data/coco-mini/person_keypoints_train2017.json RES/own.json RES/context.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np


def _ap(mini, scores: np.ndarray) -> dict[str, float]:
    from posecal.metrics.cocoeval import evaluate

    return evaluate(mini.gt, mini.results(), scores=scores, sigmas=mini.sigmas, warn=False).stats


def run_cv(a: argparse.Namespace) -> None:
    from posecal.ccnet import context as C
    from posecal.ccnet.fit import default_recipe, fit_from_stores, predict_store
    from posecal.ccnet.select import image_folds
    from posecal.ccnet.targets import load_store

    t0 = time.time()
    mini = load_store(a.mini)
    extras = [load_store(p) for p in a.extra]
    recipe = default_recipe(mini.meta, mini.head_meta["feature_tensor"])
    if a.steps:
        recipe = replace(recipe, steps=a.steps)
    if a.rank:
        recipe = replace(recipe, filter_rank=a.rank)
    # the context stage exists for detection stores only (a gt-box --mini store: the head alone)
    context = (not a.no_context and a.head_seeds == 1 and a.mini_weight == 1
               and mini.meta.get("boxes", "gt") != "gt")
    print(recipe.label(), "| context stage" if context else "| head alone", flush=True)
    iid = np.array([r["image_id"] for r in mini.records])
    fold = image_folds([iid], a.folds, a.seed)[0]
    captured: dict[str, np.ndarray] = {}
    if a.capture:  # record the stage's training arrays (the out-of-fold ĉ fit_context_stage computes)
        orig = C.ContextStage.fit

        def fit(self, c, x, t):
            captured.update(c=np.asarray(c), t=np.asarray(t))
            return orig(self, c, x, t)

        C.ContextStage.fit = fit
    ctx = C.store_context(mini.path, mini.records, mini.sigmas)
    c_head, c_ctx = np.zeros(len(fold)), np.zeros(len(fold))
    out: dict[str, np.ndarray] = {"fold": fold}
    for k in range(a.folds):
        tr = replace(mini, has_target=mini.has_target & (fold != k), _results=None)
        held = fold == k
        cs = []
        for s in range(a.head_seeds):
            head, _ = fit_from_stores(extras + [tr] * a.mini_weight, replace(recipe, seed=recipe.seed + s),
                                      show_progress=False, context=context)
            cs.append(predict_store(head, mini, recipe.evidence, box_score=recipe.box_score)[2])
        c = np.mean(cs, axis=0)
        c_head[held] = c[held]
        if context:
            c_ctx[held] = head.context_stage.transform(c, ctx)[held]
        if a.capture:
            out.update({f"rows{k}": np.flatnonzero(tr.has_target), f"coof{k}": captured["c"],
                        f"t{k}": captured["t"], f"call{k}": c})
        print(f"fold {k}: {time.time() - t0:.0f} s", flush=True)
    _report(a, mini, iid, c_head, c_ctx if context else None, out)


def _report(a, mini, iid, c_head, c_ctx, out) -> None:
    from posecal.ccnet.context import own_scores
    from posecal.rescore.order import keep_image_order

    own = own_scores(mini.records)
    rows = [("own score (MMPose bbox_keypoint)", own), ("head alone, order kept", keep_image_order(iid, own, c_head)),
            ("head alone, free (--reorder)", c_head)]
    if c_ctx is not None:
        rows += [("head + context, order kept (default)", keep_image_order(iid, own, c_ctx)),
                 ("head + context, free (--reorder)", c_ctx)]
    print(f"{'':40s} {'AP':>6} {'AP50':>6} {'AP75':>6} {'APm':>6} {'APl':>6} {'AR':>6}")
    for name, sc in rows:
        e = _ap(mini, sc)
        print(f"{name:40s} " + " ".join(f"{100 * e[m]:6.2f}" for m in ("AP", "AP50", "AP75", "APm", "APl", "AR")))
    if a.save:
        np.savez(a.save, own=own, head=c_head, **({"ctx": c_ctx} if c_ctx is not None else {}), **out)
    if a.out_dir:
        d = Path(a.out_dir)
        d.mkdir(parents=True, exist_ok=True)
        names = ["own", "head", "head_reorder", "context", "context_reorder"]
        for n, (_, sc) in zip(names, rows, strict=False):
            (d / f"{n}.json").write_text(json.dumps([dict(r, score=float(s)) for r, s in zip(mini.records, sc,
                                                                                               strict=True)]))


def stage_variants(a: argparse.Namespace) -> None:
    """Refit the context stage per fold on the captured arrays with extra features / other ridge values."""
    from posecal.ccnet.context import ContextStage, _logit, own_scores, store_context
    from posecal.ccnet.targets import load_store
    from posecal.rescore.order import keep_image_order

    mini = load_store(a.mini, features=False)
    recs = mini.records
    own = own_scores(recs)
    iid = np.array([r["image_id"] for r in recs])
    box = np.array([r["bbox"] for r in recs], np.float64)
    la = np.log(np.maximum(box[:, 2] * box[:, 3], 1.0))
    lo, lb = _logit(own), _logit([r["bbox_score"] for r in recs])
    ctx = store_context(mini.path, recs, mini.sigmas).astype(np.float64)
    extra = {"six features": np.zeros((len(recs), 0)), "+ logit own score": lo[:, None],
             "+ logit box score": lb[:, None], "+ log box area": la[:, None], "+ all three": np.c_[lo, lb, la]}
    d = np.load(a.stage_variants)
    fold = d["fold"]
    folds = int(fold.max()) + 1
    head = _ap(mini, keep_image_order(iid, own, d["head"]))["AP"]
    print(f"{a.stage_variants}: head alone, order kept {100 * head:.2f}")
    for name, X in extra.items():
        for l2 in (a.l2 or [1e-4]):
            sc = np.zeros(len(recs))
            for k in range(folds):
                r = d[f"rows{k}"]
                st = ContextStage(l2).fit(d[f"coof{k}"], np.c_[ctx[r], X[r]], d[f"t{k}"])
                held = fold == k
                sc[held] = st.transform(d[f"call{k}"][held], np.c_[ctx[held], X[held]])
            kept, free = _ap(mini, keep_image_order(iid, own, sc))["AP"], _ap(mini, sc)["AP"]
            print(f"  {name:20s} ridge {l2:g}: order kept {100 * kept:.2f}, free {100 * free:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mini", required=True, help="detection store of coco-mini (extract --boxes)")
    ap.add_argument("--extra", action="append", default=[], help="other training stores (gt boxes)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="fold assignment seed")
    ap.add_argument("--steps", type=int, default=0, help="override the recipe's steps")
    ap.add_argument("--rank", type=int, default=0, help="fit --filter-rank")
    ap.add_argument("--head-seeds", type=int, default=1, help="mean of this many heads' scores (head alone)")
    ap.add_argument("--mini-weight", type=int, default=1, help="repeat the detection rows (head alone)")
    ap.add_argument("--no-context", action="store_true", help="head alone (fit --no-context)")
    ap.add_argument("--capture", action="store_true", help="save the context stage's training arrays too")
    ap.add_argument("--save", default=None, help="npz of the out-of-fold scores")
    ap.add_argument("--out-dir", default=None, help="write the out-of-fold result files here")
    ap.add_argument("--stage-variants", default=None, metavar="NPZ",
                    help="refit the stage on a --capture file with extra features (no head fits)")
    ap.add_argument("--l2", type=float, action="append", default=None, help="stage ridge values (variants)")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    if a.capture and not a.save:
        ap.error("--capture needs --save")
    stage_variants(a) if a.stage_variants else run_cv(a)


if __name__ == "__main__":
    main()
