"""``posecal extract``: run a frozen top-down pose model over a dataset and write a feature store.

    posecal extract --model MODEL_FILE --data DATA.json --images DIR --out STORE
        [--pooling {heatmap,gap,spatial}] [--boxes gt|DET.json] [--oks-nms 0.9] [--model-card CARD.json]
        [--flip] [--augment N --seed S]
        [--shard i/n] [--skip-missing] [--tensor NAME] [--model-kind K] [--allow-missing-joints]
        [--input-size W H]                    # a TorchScript .pt model without a card giving its size
        [--sigmas S ...]                      # OKS sigmas of DATA's own skeleton (names posecal does not know)
    posecal extract --merge --out STORE        # combine STORE.shard-<i>-of-<n> written with --shard

An interrupted or killed run resumes when the same command is run again (the finished store is byte-identical to
an uninterrupted run's); other settings (model, data, --pooling, --flip, ...) are refused, and the chunks of an
image replaced since they were written are recomputed, with a warning (docs/design.md, "Integrity").

The same pipeline is available from Python as :func:`posecal.models.extract.extract` (any
:class:`PoseAdapter`, e.g. a ``TorchAdapter`` around an in-memory module).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from posecal._util import dumps_json
from posecal.cli._args import data_sigmas_arg, nonneg_int, positive_float, positive_int, threads, unit_float
from posecal.errors import PosecalInputError, PosecalWarning
from posecal.models.adapters.pooling import POOLINGS
from posecal.models.extract import extract, parse_shard, shard_dir


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("extract", help="run a pose model top-down over a dataset into a feature store",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model file: .tflite, .onnx, TorchScript .pt (with --input-size or a model "
                   "card) or torch.export .pt2")
    p.add_argument("--input-size", type=positive_int, nargs=2, default=None, metavar=("W", "H"),
                   help="model input size; needed for a TorchScript model only (or its model card's input.size)")
    p.add_argument("--data", help="COCO keypoints JSON (e.g. from posecal convert)")
    p.add_argument("--images", help="image folder")
    p.add_argument("--out", required=True, help="store directory")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="gap: (C); heatmap: heatmap-weighted per keypoint (K, C); spatial: (C, H, W) float16 "
                   "(default: the model card's, else heatmap, what fit's default recipe reads; gap for a model without "
                   "heatmap outputs)")
    p.add_argument("--boxes", default="gt", help="'gt' or a COCO detection results JSON (posecal detect); "
                   "detections get the box score folded into the instance score and OKS-NMS 0.9")
    p.add_argument("--model-card", default=None, help="model card JSON, for any model file (.onnx, .pt, .pt2, "
                   ".tflite; default: built-in card by SHA-256)")
    p.add_argument("--oks-nms", type=unit_float, default=0.9, metavar="THR",
                   help="OKS-NMS threshold for detection boxes (MMPose's 0.9); 1: no OKS-NMS "
                   "(--max-per-image still applies)")
    p.add_argument("--max-per-image", type=nonneg_int, default=20, metavar="N",
                   help="detections kept per image after OKS-NMS, best first (COCO's maxDets 20; 0 = all)")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored crop")
    p.add_argument("--augment", type=nonneg_int, default=0, metavar="N",
                   help="N jittered copies per instance (flip, scale/rotation, occluders), for CCNet")
    p.add_argument("--seed", type=nonneg_int, default=0, help="--augment: seed of the jitter (per row)")
    p.add_argument("--shard", default=None, metavar="i/n",
                   help="write shard i of n to OUT.shard-i-of-n (default from RANK/WORLD_SIZE when n > 1)")
    p.add_argument("--merge", action="store_true", help="merge OUT.shard-*-of-n into OUT")
    p.add_argument("--skip-missing", action="store_true", help="skip instances whose image is missing")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip instances whose image cannot be decoded (empty, corrupt, truncated, too large); "
                   "they are listed in the store's meta.json")
    p.add_argument("--tensor", default=None, help="feature tensor name (default: discovered penultimate)")
    p.add_argument("--model-kind", default=None, help="efficientpose or blazepose, for a TFLite model "
                   "(default: recognised)")
    p.add_argument("--allow-missing-joints", action="store_true",
                   help="dataset keypoints the model lacks get score 0 instead of an error (automatic, with a "
                   "warning, for keypoints the data file declares not annotated: categories[0]."
                   "annotated_keypoints, as convert --keypoint-set writes)")
    p.add_argument("--target-sigma", type=positive_float, default=None,
                   help="training-target Gaussian sigma in heatmap px for sigma-hat (default per model kind)")
    p.add_argument("--sigma-method", choices=["fit", "peak"], default="fit", help="sigma-hat estimator")
    p.add_argument("--sigmas", nargs="+", metavar="S", default=None,
                   help="OKS sigmas, one per keypoint of DATA (space or comma separated): a skeleton posecal "
                   "does not know (an animal's, a robot's) is taken as it is, by its categories[0].keypoints "
                   "names; the store carries the sigmas to fit, apply, export and study")
    p.add_argument("--chunk-size", type=positive_int, default=64,
                   help="rows per store chunk (the unit of resume and --shard)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="crops per model call")
    p.add_argument("--threads", type=threads, default=None,
                   help="model runtime threads, 1-1024 (default: the runtime's own)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(_option_defaults={a.dest: a.default for a in p._actions if a.option_strings})
    return p


_MERGE_READS = {"out", "merge", "json", "help"}  # what --merge uses; the shards carry every other setting


def _warn_ignored_by_merge(args: argparse.Namespace) -> None:
    """One warning naming the options given with ``--merge`` that it does not use (the merged store keeps the
    settings its shards were extracted with)."""
    defaults = getattr(args, "_option_defaults", {})
    given = [d for d, v in defaults.items() if d not in _MERGE_READS and getattr(args, d, v) != v]
    if given:
        flags = ", ".join("--" + d.replace("_", "-") for d in given)
        warnings.warn(f"{flags}: ignored with --merge (the merged store keeps the settings its shards were "
                      "extracted with)", PosecalWarning, stacklevel=2)


# --------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from posecal._outputs import check_creatable, refuse_clobber
    from posecal.models.extract import merge_shards

    args.out = _named_out(args.out)
    if args.merge:
        _warn_ignored_by_merge(args)
        out = Path(args.out)
        # OUT.shard-<i>-of-<n> folders only: not a log or backup beside them (OUT.shard-0-of-2.log, ...bak)
        shards = sorted(p for p in out.parent.glob(glob.escape(out.name) + ".shard-*-of-*")
                        if re.fullmatch(re.escape(out.name) + r"\.shard-\d+-of-\d+", p.name) and p.is_dir())
        if not shards:
            raise PosecalInputError(f"no shard stores {out.name}.shard-*-of-* found", file=str(out.parent))
        refuse_clobber({"shard": [str(x) for x in shards]}, {"--out": out})
        check_creatable(out, "dir")
        with _removed_on_failure(out, resumable=False):  # a half-merged store only blocks the next merge
            store = merge_shards(shards, out)
        _report(store, args)
        return 0
    for flag in ("model", "data", "images"):
        if not getattr(args, flag):
            raise PosecalInputError(f"--{flag} is required", field=f"--{flag}")
    from posecal.models.adapters.base import load_adapter
    from posecal.models.store import file_sha256

    if not 0 < args.oks_nms <= 1:
        raise PosecalInputError("must be in (0, 1]", field="--oks-nms")
    if args.max_per_image < 0:
        raise PosecalInputError("must be >= 0", field="--max-per-image")
    shard = parse_shard(args.shard)
    sigmas = data_sigmas_arg(args.sigmas)  # before the model loads and is hashed
    out = Path(args.out) if shard[1] == 1 else shard_dir(args.out, *shard)
    refuse_clobber({"--model": args.model, "--data": args.data, "--images": args.images,
                    "--boxes": None if args.boxes == "gt" else args.boxes}, {"--out": out})
    check_creatable(out, "dir")
    adapter = load_adapter(args.model, tensor=args.tensor, model_kind=args.model_kind,
                           num_threads=args.threads, input_size=args.input_size, model_card=args.model_card)
    with _removed_on_failure(out):
        # default (pooling None): the model card's pooling, else heatmap pooling (what fit's default recipe reads)
        # for a heatmap model, gap for a coordinate one (posecal.models.extract.extract)
        res = extract(adapter, args.data, args.images, out, pooling=args.pooling, boxes=args.boxes,
                      flip=args.flip,
                      augment=args.augment, seed=args.seed, shard=shard, skip_missing=args.skip_missing,
                      skip_bad_images=args.skip_bad_images,
                      allow_missing_joints=args.allow_missing_joints, chunk_size=args.chunk_size,
                      batch_size=args.batch_size, model_sha256=file_sha256(args.model),
                      target_sigma=args.target_sigma, sigma_method=args.sigma_method,
                      oks_nms_thr=None if args.oks_nms >= 1 else args.oks_nms,
                      max_per_image=args.max_per_image or None, sigmas=sigmas)
    if res is None:
        msg = (f"shard {shard[0]}/{shard[1]} written to {out}; "
               f"merge with: posecal extract --merge --out {args.out}")
        print(json_line({"shard": list(shard), "path": str(out)}) if args.json else msg)
        return 0
    _report(res, args)
    return 0


def _named_out(out: str) -> str:
    """``--out`` as a path with a last name: the store's siblings (``OUT.all``, ``OUT.shard-i-of-n``) are named
    after it, so ``.``, ``..`` or ``dir/..`` become the absolute folder they mean; the filesystem root is refused."""
    if out == "" or Path(out).name not in ("", ".", ".."):
        return out
    full = os.path.abspath(out)
    if not Path(full).name:
        raise PosecalInputError("the filesystem root cannot be a store; name a folder", file=out, field="--out")
    return full


@contextlib.contextmanager
def _removed_on_failure(out: Path, *, resumable: bool = True) -> Iterator[None]:
    """A store this run creates (and its ``OUT.all`` staging store of detection crops) is removed if the run
    fails (an existing partial store is kept: its finished chunks are valid and a re-run resumes them; an
    existing empty folder is emptied again). A killed or interrupted run (SIGKILL, Ctrl-C) leaves it to resume;
    with ``resumable=False`` (``--merge``, which a re-run refuses to continue) Ctrl-C removes it too."""
    from posecal.models.store import LOCK_NAME, StoreLockedError

    def empty_dir(p: Path) -> bool:  # an empty folder given as --out (a lock file aside) is the run's to fill
        try:
            return p.is_dir() and not p.is_symlink() and all(c.name == LOCK_NAME for c in p.iterdir())
        except OSError:
            return False

    stage = out.with_name(out.name + ".all")
    fresh, fresh_stage = not out.exists(), not stage.exists()
    emptied = [p for p in (out, stage) if empty_dir(p)]
    try:
        yield
    except StoreLockedError:
        raise  # another process's store: never touched
    except BaseException as e:
        if resumable and not isinstance(e, Exception):  # Ctrl-C: the finished chunks are kept for the re-run
            raise
        for path, new in ((out, fresh), (stage, fresh_stage)):
            if new and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
        for path in emptied:  # left as empty as it was found (the folder itself is the user's)
            for child in path.iterdir() if path.is_dir() else ():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise


def json_line(obj: Any) -> str:
    return dumps_json(obj).decode()


def _report(store, args) -> None:
    m = store.meta
    summary = {"store": str(store.path), "instances": store.num_instances, "model": m.get("model_file"),
               "tensor": m.get("tensor"), "keypoint_set": m.get("keypoint_set"), "pooling": m.get("pooling"),
               "features": (m["arrays"].get(store.feature_name, {}).get("shape")
                            if store.feature_name else None)}
    if args.json:
        print(json_line(summary))
    else:
        w = max(len(k) for k in summary)
        for k, v in summary.items():
            print(f"{k:<{w}}  {v}")
