"""``posecal export --model MODEL.onnx --head HEAD_DIR --out MODEL_calibrated.onnx``: calibrated ONNX.

An ONNX model gets the CCNet head grafted onto its penultimate tensor: one onnxruntime session returns the
original outputs plus ``keypoint_confidence (B, K)``, ``keypoint_visibility (B, K)`` and
``instance_confidence (B,)``. A TFLite model (``--model X.tflite``) or a PyTorch one (``.pt``, ``.pt2``) is not
grafted: the output is a head-only ONNX with inputs ``features (B, C, h, w)`` [and ``heatmaps (B, J, h', w')``],
run after the model (two-stage use, see :mod:`posecal.ccnet.export`: ``run_two_stage``).

A model without a built-in card takes ``--model-card CARD.json``, as for ``posecal extract`` (the head must
have been fitted on stores extracted with the same card); a TorchScript ``.pt`` takes ``--input-size W H``.
The output is a file: ``--out -`` (stdout) is refused.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from posecal.cli._args import positive_int
from posecal.errors import PosecalInputError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="graft a CCNet head onto an ONNX model (head-only ONNX for TFLite)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pose model (.onnx: grafted; .tflite, .pt, .pt2: head-only ONNX)")
    p.add_argument("--head", required=True, help="head directory from posecal fit")
    p.add_argument("--out", required=True, help="ONNX file to write (a file name: '-' is refused)")
    p.add_argument("--model-card", default=None,
                   help="model card JSON, as given to posecal extract (default: built-in card by SHA-256)")
    p.add_argument("--input-size", type=positive_int, nargs=2, default=None, metavar=("W", "H"),
                   help="model input size; needed for a TorchScript .pt model only")
    p.add_argument("--head-only", action="store_true", help="write the head-only ONNX even for an ONNX model")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="leave every node of the model untouched (default: when the heatmaps are a plain 1x1 Conv "
                   "of the feature tensor, the head's filters are added to it, kept only if the model's outputs "
                   "stay byte-identical under onnxruntime CPU)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    return p


def run(args: argparse.Namespace) -> int:
    from posecal._outputs import check_creatable, refuse_clobber
    from posecal._util import dumps_json
    from posecal.ccnet.export import export, export_head_only
    from posecal.errors import PosecalWarning

    if args.out == "-":  # an ONNX model on stdout is of no use (apply / rescore write JSON there)
        raise PosecalInputError("an ONNX model cannot be written to stdout: give a file name, e.g. "
                                "MODEL_calibrated.onnx", field="--out")
    refuse_clobber({"--model": args.model, "--head": args.head, "--model-card": args.model_card},
                   {"--out": args.out})
    check_creatable(args.out, "file")

    adapter_args = {"model_card": args.model_card, "input_size": args.input_size}
    summary = export_head_only(args.model, args.head, args.out, **adapter_args) if args.head_only else \
        export(args.model, args.head, args.out, fuse=args.fuse, **adapter_args)
    if not args.fuse and summary["mode"] != "grafted":
        warnings.warn("--no-fuse: ignored for a head-only ONNX (no model graph to fuse into)", PosecalWarning,
                      stacklevel=1)
    if args.json:
        sys.stdout.write(dumps_json(summary, indent=True).decode() + "\n")
    elif summary["mode"] == "grafted":
        print(f"{args.out}: {args.model} + {summary['head']} head at {summary['model_tensor']} "
              f"({summary['pooling']} pooling, {summary['added_nodes']} nodes); inputs: "
              + ", ".join(summary["inputs"]) + "; outputs: " + ", ".join(summary["outputs"]))
        if "box_score" in summary["inputs"]:
            print("box_score (B,) float32: the detector's score of each crop's box (1.0 for gt boxes or "
                  "single-person crops); the head reads it with the keypoint-score statistics")
    else:
        src = {"features": summary["model_tensor"], "heatmaps": summary.get("heatmap_tensor")}
        print(f"{args.out}: head-only ONNX ({summary['head']}, {summary['pooling']} pooling); inputs: "
              + ", ".join(f"{i} from {src[i]}" if src.get(i) else i for i in summary["inputs"])
              + " (channels-first: transpose NHWC tensors); outputs: " + ", ".join(summary["outputs"]))
    if (summary.get("filter_rank") or summary.get("fused_into_model_conv")) and not args.json:
        what = f"{summary['filter_rank']} maps (filter rank)" if summary.get("filter_rank") else "filters"
        where = ("in the model's own last convolution (widened; its outputs checked unchanged)"
                 if summary.get("fused_into_model_conv") else "by a separate convolution")
        print(f"the head's {what} are computed {where}")
    if summary.get("box_score_note") and not args.json:
        print(f"note: {summary['box_score_note']}")
    if summary.get("context_stage") and not args.json:
        print(f"note: the head's context stage is {summary['context_stage']}")
    elif not args.json:
        print("note: instance_confidence is the head's score of one crop; posecal apply keeps each image's own "
              "ranking of its people unless --reorder, so apply --reorder is what equals it")
    return 0
