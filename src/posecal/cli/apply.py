"""``posecal apply --store STORE --head HEAD_DIR --out RESULTS.json``: rescore with a CCNet head.

Every keypoint coordinate of ``STORE/predictions.json`` is kept bit for bit; only the keypoint scores
(→ ŝ_k), the instance ``score`` (→ ĉ = Σ v̂ŝ / Σ v̂, × box score if the head was fitted so) change,
and a ``"visibility"`` list (v̂_k) is added. Keypoints the model lacks (``extract --allow-missing-joints``)
get ŝ = v̂ = 0 and so take no part in ĉ. On a detection store (``extract --boxes``), a head fitted with
detection stores also carries the context stage (learned NMS, :mod:`posecal.ccnet.context`), which replaces
the instance score by one that also weighs the detection against the higher-scored detections of its image.
The new instance scores keep each image's detection order of the store's own score (isotonic projection,
:mod:`posecal.rescore.order`), so COCO AR is identical by construction; ``--reorder`` drops that constraint.
A head whose metadata (keypoint set, feature tensor and shape, pooling, model tensor / file hash) differs
from the store's is refused, naming the difference.

``--out -`` writes the results JSON to stdout (as ``posecal rescore --out -``); the summary line, or the
``--json`` summary, then goes to stderr so that stdout holds only the results.
"""

from __future__ import annotations

import argparse
import sys

from posecal.errors import PosecalInputError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "apply",
        help="rescore a store's predictions with a CCNet head",
        description="Rescore STORE/predictions.json with a CCNet head: coordinates kept, keypoint "
        "scores -> s_hat, instance score -> sum(v_hat*s_hat)/sum(v_hat), plus a 'visibility' "
        "list. A head fitted on another keypoint set, feature tensor/shape, pooling or model "
        "is refused (exit 2).",
    )
    p.add_argument("--store", required=True, help="feature store directory")
    p.add_argument("--head", required=True, help="head directory from posecal fit")
    p.add_argument("--out", required=True,
                   help="COCO results JSON to write; '-' writes it to stdout (the summary then goes to stderr)")
    p.add_argument("--reorder", action="store_true",
                   help="let the new instance scores reorder the detections of an image (default: each image "
                   "keeps the order of the store's own score, so COCO AR stays identical; see "
                   "posecal.rescore.order)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout (stderr with --out -)")
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from posecal._outputs import check_creatable, refuse_clobber
    from posecal._util import dumps_json
    from posecal.ccnet.apply import instance_scores, mask_missing, rescore_records
    from posecal.ccnet.checkpoint import check_compatible, load_head
    from posecal.ccnet.context import own_scores, store_context
    from posecal.ccnet.targets import (
        check_finite_rows,
        evidence_columns,
        load_store,
        model_keypoints,
        store_features,
    )
    from posecal.ccnet.train import predict
    from posecal.io.coco import save_results
    from posecal.models.store import FeatureStore

    to_stdout = args.out == "-"
    if to_stdout and getattr(sys.stdout, "buffer", None) is None:  # started with stdout closed (`>&-`)
        raise PosecalInputError("stdout is closed: give a file name", field="--out")
    refuse_clobber({"--store": args.store, "--head": args.head}, {"--out": None if to_stdout else args.out})
    if not to_stdout:
        check_creatable(args.out, "file")
    head, meta = load_head(args.head)
    data = load_store(args.store, need_gt=False, features=False)
    check_compatible(meta, data.head_meta, file=args.head)
    _warn_flip_mismatch(meta, data.meta, args)
    fs = FeatureStore.open(args.store)
    feats = store_features(fs)  # + instance evidence where the model card asks
    check_finite_rows(feats, args.store, fs.feature_name)
    if meta.get("evidence"):  # per-keypoint evidence columns the head was trained with
        ev = evidence_columns(args.store, tuple(meta["evidence"]), data.sigmas)
        feats = np.concatenate([np.asarray(feats, np.float32), ev], axis=-1)
    s, v = predict(head, feats)
    if not (np.isfinite(s).all() and np.isfinite(v).all()):
        raise PosecalInputError("the head produced non-finite scores on this store", file=args.head)
    # keypoints the model lacks (extract --allow-missing-joints): s_hat = v_hat = 0, out of the instance score
    s, v = mask_missing(s, v, model_keypoints(data.meta, s.shape[1], file=f"{args.store}/meta.json"))
    box = data.box_score if meta.get("box_score") else None
    stage = getattr(head, "context_stage", None)
    detections = data.meta.get("boxes", "gt") != "gt"
    use_stage = stage is not None and detections  # learned NMS among the image's detections (ccnet.context)
    own = own_scores(data.records, f"{args.store}/predictions.json")
    ctx = store_context(args.store, data.records, data.sigmas) if use_stage else None
    inst = instance_scores(s, v, own, fs.read("image_id"), box_score=box,
                           stage=stage if use_stage else None, context=ctx, reorder=args.reorder)
    if not np.isfinite(inst).all():
        raise PosecalInputError("the context stage produced non-finite scores on this store", file=args.store)
    recs = rescore_records(data.records, s, v, box_score=box, file=f"{args.store}/predictions.json",
                           instance=inst)
    if to_stdout:  # serialised completely before the first byte goes out
        payload = dumps_json(recs)
        sys.stdout.buffer.write(payload + b"\n")
        sys.stdout.flush()
    else:
        save_results(args.out, recs)
    summary = {
        "records": len(recs),
        "head": args.head,
        "out": args.out,
        "mean_score": float(sum(r["score"] for r in recs) / max(len(recs), 1)),
        "context_stage": use_stage,
        "image_order": "free" if args.reorder else "kept",
    }
    info = sys.stderr if to_stdout else sys.stdout  # stdout carries the results with --out -
    if args.json:
        info.write(dumps_json(summary, indent=True).decode() + "\n")
    else:
        how = " (+ context stage over each image's detections)" if use_stage else ""
        print(f"{len(recs)} records rescored with {args.head}{how} → {'stdout' if to_stdout else args.out}",
              file=info)
    return 0


def _warn_flip_mismatch(head_meta: dict, store_meta: dict, args: argparse.Namespace) -> None:
    """Warn when the store's flip test (``extract --flip``: averaged with the mirrored crop, so other keypoint
    scores and features) is not what the head was trained on; heads from before this record say nothing."""
    import warnings

    from posecal.errors import PosecalWarning

    seen = (head_meta.get("train") or {}).get("flip_test") if isinstance(head_meta.get("train"), dict) else None
    flip = bool(store_meta.get("flip_test"))
    if isinstance(seen, list) and seen and flip not in seen:
        warnings.warn(f"{args.store}: extracted {'with' if flip else 'without'} --flip, the head's training stores "
                      f"{'without' if flip else 'with'} it: keypoint scores and features differ, the head's "
                      "calibration may not carry over (extract the stores alike)", PosecalWarning, stacklevel=2)
