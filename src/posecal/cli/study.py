"""``posecal study``: the paper's robustness studies on real crops (PNG + JSON in ``--out``).

    posecal study occlusion --model M --data DATA.json --images DIR --joint NAME [--head HEAD_DIR] --out DIR
        [--radii 0 8 16 ...] [--limit N] [--blur-sigma S]          # Fig. 3: occluders / blurs at one joint
        [--model-card CARD.json]                                   # a model without a built-in card
        [--input-size W H]                                         # a TorchScript .pt model (or its card)
        [--sigmas S ...]                                           # DATA's own skeleton, as extract --sigmas
    posecal study visibility --store STORE [--head HEAD_DIR] --out DIR [--tau T]
                                                    # Fig. 4: visible vs occluded; AP by aggregation
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from posecal.cli._args import data_sigmas_arg, nonneg_float, nonneg_int, positive_int, threads


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("study", help="occlusion / visibility robustness studies (paper Figs. 3, 4)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_subparsers(dest="study", metavar="STUDY", required=True)
    o = s.add_parser("occlusion", help="occluders and blurs of growing radius at one joint (Fig. 3)")
    o.add_argument("--model", required=True, help="pose model: .tflite, .onnx, TorchScript .pt (with --input-size "
                   "or a model card) or torch.export .pt2")
    o.add_argument("--input-size", type=positive_int, nargs=2, default=None, metavar=("W", "H"),
                   help="model input size; needed for a TorchScript model only (or its model card's input.size)")
    o.add_argument("--data", required=True, help="COCO keypoints JSON (e.g. posecal convert lsp)")
    o.add_argument("--images", required=True, help="image folder")
    o.add_argument("--joint", required=True, help="keypoint name, e.g. right_wrist")
    o.add_argument("--head", default=None, help="CCNet head directory (adds the calibrated confidence)")
    o.add_argument("--out", required=True, help="output directory (occlusion.png, occlusion.json)")
    o.add_argument("--radii", type=nonneg_float, nargs="+", default=None, help="radii in input px (default 0..64)")
    o.add_argument("--limit", type=nonneg_int, default=100, help="at most N instances (0: all)")
    o.add_argument("--blur-sigma", type=nonneg_float, default=6.0, help="Gaussian blur sigma, input px (at most 1e6)")
    o.add_argument("--model-card", default=None, help="model card JSON (default: built-in card by SHA-256)")
    o.add_argument("--sigmas", nargs="+", metavar="S", default=None,
                   help="OKS sigmas, one per keypoint of DATA, for a skeleton posecal does not know (as posecal "
                   "extract --sigmas)")
    o.add_argument("--threads", type=threads, default=None,
                   help="model runtime threads, 1-1024 (default: the runtime's own)")
    o.add_argument("--json", action="store_true", help="print the result JSON on stdout")
    v = s.add_parser("visibility", help="visible vs occluded confidence; AP by aggregation (Fig. 4)")
    v.add_argument("--store", required=True, help="feature store with gt (posecal extract)")
    v.add_argument("--head", default=None, help="CCNet head directory (adds ŝ, v̂ and predicted visibility)")
    v.add_argument("--out", required=True, help="output directory (visibility.png, visibility.json)")
    v.add_argument("--tau", type=nonneg_float, default=0.2, help="threshold of the tau aggregation (>= 0)")
    v.add_argument("--json", action="store_true", help="print the result JSON on stdout")
    return p


def _check_head(head: str | None) -> None:
    """``--head`` names a CCNet head folder (``posecal fit --out``), checked before any model runs."""
    from posecal.errors import PosecalInputError

    if head is None:
        return
    h = Path(head)
    if not h.exists():
        raise PosecalInputError("no such folder (--head takes a CCNet head folder, as posecal fit --out writes)",
                                file=head, field="--head")
    if not h.is_dir():
        raise PosecalInputError("not a folder (--head takes a CCNet head folder, as posecal fit --out writes)",
                                file=head, field="--head")
    if not (h / "head.json").is_file():
        raise PosecalInputError("holds no head.json: not a posecal CCNet head folder (posecal fit --out)",
                                file=head, field="--head")


def run(args: argparse.Namespace) -> int:
    from posecal._outputs import atomic_dir, check_creatable, refuse_clobber
    from posecal._util import dumps_json, write_json_atomic
    from posecal.ccnet.export import make_shareable

    out = Path(args.out)
    if args.study == "occlusion" and args.model_card is not None and not args.model_card.strip():
        from posecal.errors import PosecalInputError

        raise PosecalInputError("empty path", field="--model-card")  # else read as the folder '.'
    if args.study == "occlusion":
        ins = {"--model": args.model, "--data": args.data, "--images": args.images, "--head": args.head,
               "--model-card": args.model_card}
    else:
        ins = {"--store": args.store, "--head": args.head}
    refuse_clobber(ins, {"--out": out}, dir_outputs={"--out": [f"{args.study}.png", f"{args.study}.json"]})
    check_creatable(out, "dir", sibling=True)  # atomic_dir builds the files next to it
    _check_head(args.head)
    if args.study == "occlusion":
        from posecal.studies.occlusion import DEFAULT_RADII, occlusion_study, plot_occlusion

        res = occlusion_study(args.model, args.data, args.images, args.joint, head=args.head,
                              radii=args.radii or DEFAULT_RADII, limit=args.limit or None,
                              blur_sigma=args.blur_sigma, threads=args.threads, model_card=args.model_card,
                              input_size=args.input_size, sigmas=data_sigmas_arg(args.sigmas))
        with atomic_dir(out) as tmp:  # both files or neither
            plot_occlusion(res, tmp / "occlusion.png")
            write_json_atomic(tmp / "occlusion.json", res)
            make_shareable(tmp / "occlusion.png", tmp / "occlusion.json")
        if args.json:
            sys.stdout.write(dumps_json(res, indent=True).decode() + "\n")
            return 0
        print(f"occlusion study, {res['joint']}, {res['instances']} crops ({res['model']})")
        for mode, c in res["curves"].items():
            print(f"  {mode:<8} {'radius':>6}  {'OKS':>6}  {'raw':>6}  {'CCNet':>6}")
            for i, r in enumerate(res["radii_input_px"]):
                cc = c["ccnet_confidence"][i]
                print(f"  {'':<8} {r:>6.0f}  {c['joint_oks'][i]:>6.3f}  {c['raw_confidence'][i]:>6.3f}  "
                      + ("   n/a" if cc is None else f"{cc:>6.3f}"))
        print(f"written: {out / 'occlusion.png'}, {out / 'occlusion.json'}")
        return 0
    from posecal.studies.visibility import VARIANTS, plot_visibility, visibility_study

    res = visibility_study(args.store, head=args.head, tau=args.tau)
    with atomic_dir(out) as tmp:  # both files or neither
        plot_visibility(res, tmp / "visibility.png")
        res.pop("_arrays")
        write_json_atomic(tmp / "visibility.json", res)
        make_shareable(tmp / "visibility.png", tmp / "visibility.json")
    if args.json:
        sys.stdout.write(dumps_json(res, indent=True).decode() + "\n")
        return 0
    print(f"visibility study: {res['instances']} instances ({res['model']})")
    for g, d in res["confidence_by_visibility"].items():
        parts = [f"{k} {v['mean']:.3f}" for k, v in d.items() if v["mean"] is not None]
        print(f"  {g:<9} mean " + ", ".join(parts))
    print("  AP (%) by aggregation:")  # one column per aggregation, each value under its name
    print(f"  {'':<6} " + "  ".join(f"{v:>{max(len(v), 6)}}" for v in VARIANTS))
    for n, row in res["AP"].items():
        print(f"  {n:<6} " + "  ".join(f"{'n/a' if row[v] is None else f'{100 * row[v]:.2f}':>{max(len(v), 6)}}"
                                       for v in VARIANTS))
    print(f"written: {out / 'visibility.png'}, {out / 'visibility.json'}")
    return 0
