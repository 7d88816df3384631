"""``posecal convert``: dataset annotations -> COCO keypoints JSON.

    posecal convert lsp JOINTS.mat --images DIR --split {train,test,all} --out LSP.json
    posecal convert lspet JOINTS.mat --images DIR --out LSPET.json    # LSP Extended, (14, 3, N)
    posecal convert mpii MPII.json [--images DIR] --out MPII_COCO.json
"""

from __future__ import annotations

import argparse

from posecal._util import dumps_json, write_json_atomic
from posecal.errors import PosecalInputError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("convert", help="convert LSP / LSPET joints.mat / MPII JSON to COCO keypoints JSON",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=["lsp", "lspet", "mpii"], help="source format")
    p.add_argument("src", help="joints.mat (lsp, lspet) or MMPose MPII JSON (mpii)")
    p.add_argument("--images", default=None, help="image folder (image sizes are read from it)")
    p.add_argument("--split", choices=["train", "test", "all"], default="all",
                   help="LSP split: train = 1–1000, test = 1001–2000")
    p.add_argument("--keypoint-set", default=None, metavar="SET",
                   help="remap to this keypoint set by joint name (e.g. coco17); joints the source lacks are "
                   "marked not annotated by the dataset (categories[0].annotated_keypoints)")
    p.add_argument("--out", required=True, help="output COCO JSON")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    return p


def run(args: argparse.Namespace) -> int:
    from posecal._outputs import check_creatable, refuse_clobber

    if args.split != "all" and args.format != "lsp":
        raise PosecalInputError(f"--split {args.split} applies to 'lsp' only ({args.format} has no split)",
                                field="--split")
    if args.keypoint_set is not None:  # checked before any input is read; "" would silently mean no remap
        if not args.keypoint_set.strip():
            raise PosecalInputError("empty; give a keypoint set name (e.g. coco17)", field="--keypoint-set")
        from posecal.datasets.remap import _get

        _get(args.keypoint_set)
    refuse_clobber({"src": args.src, "--images": args.images}, {"--out": args.out})
    check_creatable(args.out, "file")
    if args.format == "lsp":
        from posecal.datasets.lsp import read_lsp

        d = read_lsp(args.src, args.images, args.split)
    elif args.format == "lspet":
        from posecal.datasets.lsp import read_lspet

        d = read_lspet(args.src, args.images)
    else:
        from posecal.datasets.mpii import read_mpii

        d = read_mpii(args.src, args.images)
    from posecal.datasets.coco import check_converted

    check_converted(d, file=args.src, split=args.split if args.format == "lsp" else None)
    if args.keypoint_set is not None:
        from posecal.datasets.remap import remap_keypoint_set

        d = remap_keypoint_set(d, args.keypoint_set)
    write_json_atomic(args.out, d, indent=False)
    summary = {"out": args.out, "format": args.format, "images": len(d["images"]),
               "annotations": len(d["annotations"]),
               "keypoints": len(d["categories"][0]["keypoints"])}
    if args.json:
        print(dumps_json(summary).decode())
    else:
        print(f"wrote {summary['annotations']} annotations on {summary['images']} images "
              f"({summary['keypoints']} keypoints) to {args.out}")
    return 0
