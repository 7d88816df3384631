"""``posecal detect``: person boxes from a detector model over an image folder, as COCO detection results.

    posecal detect --model DET.onnx --images DIR [--data DATA.json] --out DET.json
        [--score-thr 0.05] [--max-per-image 100] [--model-card CARD.json] [--skip-bad-images] [--skip-missing] [--json]

With ``--data``, image ids come from it (file_name -> id; string ids are written as the same strings) and,
when it has person annotations, the recall of the gt boxes at IoU 0.5 is printed. Without it, ids are the
numbers in the file names (COCO style) when every name is one, else the 1-based position in the sorted file
list, and each box also carries its image's ``file_name``: ``extract --boxes`` refuses a box whose
``file_name`` is not the data file's image of that id (ids made up from the folder need not be the data's).
Library: :mod:`posecal.models.detect`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posecal.cli._args import int_in, threads


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("detect", help="person boxes from a detector over an image folder (COCO results)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="detector model file (.onnx), e.g. nanodet-m-416.onnx")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--data", default=None, help="COCO JSON: image ids (file_name -> id) and gt for recall")
    p.add_argument("--out", required=True, help="COCO detection results JSON to write")
    p.add_argument("--score-thr", type=float, default=0.05, help="minimum person score (default 0.05)")
    p.add_argument("--max-per-image", type=int, default=100,
                   help="boxes kept per image after NMS (0: all of them, as extract's --max-per-image 0)")
    p.add_argument("--model-card", default=None, help="model card JSON (default: built-in card by SHA-256)")
    p.add_argument("--category-id", type=int_in(0, 2**63 - 1), default=None, metavar="ID",
                   help="category_id written on the boxes and used for the recall (default: the keypoint "
                   "category of --data, categories[0].id, the one posecal extract --boxes crops; else 1)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="give images that cannot be decoded (empty, corrupt, truncated, too large) no detection, "
                   "with one warning, instead of stopping at the first")
    p.add_argument("--skip-missing", action="store_true",
                   help="with --data: leave out its images missing from --images (one warning; the recall "
                   "counts the gt of the images detected on), as extract --skip-missing does")
    p.add_argument("--threads", type=threads, default=None,
                   help="onnxruntime threads, 1-1024 (default: onnxruntime's own)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    return p


def run(args: argparse.Namespace) -> int:
    from posecal._outputs import check_creatable, real, refuse_clobber
    from posecal._util import dumps_json, write_json_atomic
    from posecal.datasets.coco import image_key, keypoint_category
    from posecal.errors import PosecalInputError
    from posecal.models.adapters.base import find_model_kind
    from posecal.models.cards import card_for_model
    from posecal.models.detect import NanoDetDetector, detect_folder, image_ids, read_data, recall_at_iou

    if not 0 <= args.score_thr <= 1:
        raise PosecalInputError("must be in [0, 1]", field="--score-thr")
    if args.max_per_image < 0:
        raise PosecalInputError("must be >= 0 (0 keeps every box)", field="--max-per-image")
    # every input is checked before the detector runs; the output is written once, atomically, at the end
    refuse_clobber({"--model": args.model, "--model-card": args.model_card, "--data": args.data,
                    "--images": args.images}, {"--out": args.out})
    link = Path(args.out)  # a link in the image folder (to an image elsewhere) is one of its images too
    if link.is_symlink() and real(args.images) in (real(link.parent) / link.name).parents:
        raise PosecalInputError(f"output lies inside the input --images ({real(args.images)}); choose another path",
                                file=args.out, field="--out")
    check_creatable(args.out, "file")
    if find_model_kind(args.model) != "onnx":
        raise PosecalInputError("detector must be an ONNX model", file=args.model, field="--model")
    card = card_for_model(args.model, args.model_card, task="detector")
    if card is None:
        raise PosecalInputError("unknown detector (no built-in card matches its SHA-256); give --model-card",
                                file=args.model, field="--model-card")
    data = read_data(args.data) if args.data else None
    cat = args.category_id if args.category_id is not None else keypoint_category(data) if data else 1
    if args.skip_missing and data is None:
        raise PosecalInputError("needs --data (without it, the images are the folder's own files)",
                                field="--skip-missing")
    pairs = image_ids(args.images, data, data_file=args.data, skip_missing=args.skip_missing)
    det = NanoDetDetector(args.model, card, num_threads=args.threads, card_file=args.model_card)
    dets = detect_folder(det, pairs, args.images, score_thr=args.score_thr, max_per_image=args.max_per_image,
                         skip_bad_images=args.skip_bad_images, category_id=cat,
                         with_file_name=data is None)  # made-up ids: extract --boxes checks the images
    summary = {"out": args.out, "images": len(pairs), "detections": len(dets),
               "per_image": round(len(dets) / max(len(pairs), 1), 2), "model": card["name"]}
    if data is not None and any(a.get("category_id", cat) == cat for a in data.get("annotations", [])):
        seen = data
        if args.skip_missing:  # the gt of the images detected on
            ran = {image_key(i) for i, _ in pairs}
            seen = {**data, "annotations": [a for a in data.get("annotations", [])
                                            if image_key(a["image_id"]) in ran]}
        rec, n = recall_at_iou(dets, seen, 0.5, category_id=cat)
        summary["recall_iou50"], summary["gt_boxes"] = round(rec, 4), n
    write_json_atomic(args.out, dets, indent=False)
    if args.json:
        print(dumps_json(summary).decode())
    else:
        print(f"{summary['detections']} person boxes on {summary['images']} images "
              f"({summary['per_image']}/image) -> {args.out}")
        if "recall_iou50" in summary:
            print(f"recall at IoU 0.5: {summary['recall_iou50']:.3f} of {summary['gt_boxes']} gt boxes")
    return 0
