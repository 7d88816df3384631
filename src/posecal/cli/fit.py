"""``posecal fit --store STORE [--store STORE2 ...] --out HEAD_DIR``: train a CCNet head (paper Sec. 5).

Targets are the per-keypoint OKS (Eq. 7, one term per keypoint) of the store's predictions against its
gt (``gt_keypoints`` of an augmented store, else ``gt.json`` by ``ann_id``) with the keypoint set's
sigmas and the gt area; the visibility target is "labelled" (gt v > 0). Rows without a gt or without
any labelled keypoint carry no target and are left out of training.

With no option but the stores, the recipe is the default for the stores' model kind
(:data:`posecal.ccnet.fit.DEFAULT_RECIPES`, selected by cross-validation on training data); every option
given overrides that recipe's value. ``--cv K`` scores a small grid of recipes by K-fold cross-validation
over images (:mod:`posecal.ccnet.select`; an image's rows in every store made from the same data file share
a fold), prints the CV table and refits the selected recipe (the best CV
AP; the default stays unless beaten by more than 0.1 AP) on all the data.

Distributed: ``torchrun --nproc_per_node N -m posecal fit ...`` (DDP, gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from posecal.ccnet.targets import EVIDENCE
from posecal.cli._args import device, nonneg_float, nonneg_int, positive_float, positive_int, threads
from posecal.errors import PosecalInputError, PosecalWarning


def _evidence(s: str) -> tuple[str, ...]:
    names = tuple(x for x in s.split(",") if x) if s not in ("", "none") else ()
    bad = [x for x in names if x not in EVIDENCE]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown evidence {bad[0]!r}; choose from {', '.join(EVIDENCE)} or none")
    dup = [x for i, x in enumerate(names) if x in names[:i]]
    if dup:  # a head cannot read the same columns twice (load_head refuses it)
        raise argparse.ArgumentTypeError(f"evidence {dup[0]!r} given twice")
    return names


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "fit",
        help="train a CCNet head on feature stores (--cv K: select the recipe by cross-validation)",
        description="Train a CCNet confidence/visibility head on feature stores (paper Sec. 5). "
        "With no other option: the default recipe for the stores' model kind (selected by cross-validation "
        "on training data); each option overrides one setting of it.",
    )
    p.add_argument("--store", required=True, action="append",
                   help="feature store directory (from posecal extract); repeat to train on several stores "
                   "of the same model/tensor/pooling (e.g. LSPET and LSP train, or a plain and an --augment store)")
    p.add_argument("--out", required=True, help="head directory to write (head.safetensors + head.json; with "
                   "detection stores also context.safetensors)")
    p.add_argument("--val-store", help="store to validate on (AP, Pearson) during training")
    p.add_argument("--head", choices=["fc", "conv_gap", "conv_sigmoid_gap", "kpt", "kpt_inst", "kpt_pose"],
                   help="head kind; default: the recipe's")
    p.add_argument("--evidence", type=_evidence, default=None,
                   help=f"comma-separated per-keypoint evidence columns appended to heatmap-pooled features "
                   f"({', '.join(EVIDENCE)}) or 'none'; default: the recipe's")
    p.add_argument("--optimizer", choices=["adam", "lbfgs"], default=None,
                   help="adam: mini-batches (the paper's App. B recipe: --optimizer adam --steps 12000 --batch-size 64 "
                   "--lr 1e-3 --weight-decay 0); lbfgs: full batch; default: the recipe's")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="Adam steps or L-BFGS iterations (default: the recipe's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="Adam batch size (default: the recipe's)")
    p.add_argument("--lr", type=positive_float, default=None, help="Adam learning rate (default: the recipe's)")
    p.add_argument("--lam", type=nonneg_float, default=None,
                   help="visibility loss weight λ (Eq. 21; default: the recipe's, 0.2)")
    p.add_argument("--conf-loss", choices=["mse", "bce"], default=None,
                   help="confidence loss: MSE (Eq. 19) or BCE on the soft OKS target (App. C); default: the "
                   "recipe's, mse")
    p.add_argument("--weight-decay", type=nonneg_float, default=None, help="L2 weight decay (default: the recipe's)")
    p.add_argument("--seed", type=nonneg_int, default=None, help="training seed (default: the recipe's, 0)")
    p.add_argument("--eval-every", type=nonneg_int, default=None,
                   help="steps between validations (0: 10 per run; default: the recipe's, 0)")
    p.add_argument("--box-score", action="store_true", default=None,
                   help="multiply ĉ by the box score (default: the recipe's, off)")
    p.add_argument("--filter-rank", type=nonneg_int, default=None, metavar="R",
                   help="kpt / kpt_inst heads: project the per-keypoint linear map to rank R after training, so "
                   "an exported graph computes R maps per pixel instead of 2K (0, or R >= min(2K, C): full rank; "
                   "default: the recipe's)")
    p.add_argument("--no-context", dest="context", action="store_false",
                   help="with detection stores (extract --boxes): skip the learned-NMS context stage that "
                   "rescores each detection against the higher-scored detections of its image (default: fitted, "
                   "by cross-fitting with 3 extra head fits)")
    p.add_argument("--cv", type=_cv_folds, default=None, metavar="K",
                   help="select the recipe by K-fold cross-validation over images among a small grid around "
                   "the recipe, print the CV table, refit the winner on all the data")
    p.add_argument("--cv-seed", type=nonneg_int, default=0, help="fold assignment seed for --cv")
    p.add_argument("--threads", type=threads, default=None, help="torch threads (default 1 if pooled)")
    p.add_argument("--device", type=device, default="cpu",
                   help="cpu (default) or cuda (this rank's GPU under torchrun)")
    p.add_argument("--json", action="store_true", help="print the final metadata as JSON on stdout")
    return p


_RECIPE_FLAGS = ("head", "evidence", "optimizer", "steps", "batch_size", "lr", "lam", "conf_loss", "weight_decay",
                 "seed", "eval_every", "box_score", "filter_rank")


def _recipe(args: argparse.Namespace, stores: list) -> Any:
    from posecal.ccnet.fit import default_recipe

    base = default_recipe(stores[0].meta, stores[0].head_meta["feature_tensor"])
    over = {k: getattr(args, k) for k in _RECIPE_FLAGS if getattr(args, k) is not None}
    if "head" in over and over["head"] != base.head and "evidence" not in over:
        # evidence columns need per-keypoint features; only kpt_pose reads the pose evidence
        kept = tuple(e for e in base.evidence if e != "pose")
        over["evidence"] = {"kpt_pose": kept + ("pose",), "kpt": kept}.get(over["head"], ())
    if over.get("head", base.head) not in ("kpt", "kpt_inst") and "filter_rank" not in over:
        over["filter_rank"] = 0  # the default recipe's rank is for its kpt head
    return replace(base, **over)


def _cv_folds(s: str) -> int:
    v = positive_int(s)
    if v < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2, got {v}")
    return v


def _check_before_training(args: argparse.Namespace) -> None:
    """Everything that can be checked before minutes of training: outputs (no input, writable), device."""
    from posecal._outputs import check_creatable, refuse_clobber

    if args.out == "-":  # apply's '-' (stdout) has no meaning for a head folder of two or three files
        raise PosecalInputError("a head is a folder (head.json + head.safetensors) and cannot be written to "
                                "stdout: give a folder name", field="--out")
    refuse_clobber({"--store": args.store, "--val-store": args.val_store}, {"--out": args.out},
                   dir_outputs={"--out": ["head.json", "head.safetensors"]})
    check_creatable(args.out, "dir", sibling=True)  # atomic_dir builds the head next to it
    _check_device(args.device)
    seen: dict[str, str] = {}
    for s in args.store:
        real = os.path.realpath(s)
        if real in seen:  # the same rows twice would silently weigh that store double
            raise PosecalInputError(f"the same store as {seen[real]!r}, given twice", file=s, field="--store")
        seen[real] = s
    if args.val_store and os.path.realpath(args.val_store) in seen:  # its metrics would be training metrics
        raise PosecalInputError(f"is also a training store ({seen[os.path.realpath(args.val_store)]!r}): the "
                                "validation metrics would be measured on training rows; give a held-out store",
                                file=args.val_store, field="--val-store")


def _rows_key(d: Any) -> tuple[str, str] | None:
    """What identifies a store's rows: the SHA-256 of its ``predictions.json`` and ``gt.json`` (meta.json's
    ``files``, checked when the store is opened); None for a store written before they were recorded."""
    f = d.meta.get("files") or {}
    k = (f.get("predictions.json"), f.get("gt.json"))
    return k if all(isinstance(x, str) for x in k) else None


def _refuse_same_rows(args: argparse.Namespace, stores: list, val: Any) -> None:
    """Two folders holding the same rows (a copy of a store, or one extraction run twice into two folders)
    would weigh those rows double, or measure the validation metrics on training rows: refused, as the same
    folder given twice is (:func:`_check_before_training`)."""
    seen: dict[tuple[str, str], str] = {}
    for p, d in zip(args.store, stores, strict=True):
        k = _rows_key(d)
        if k is not None and k in seen:
            raise PosecalInputError(f"holds the same rows as {seen[k]!r} (the same predictions.json and gt.json: "
                                    "a copy, or the same extraction run twice); they would weigh double",
                                    file=p, field="--store")
        if k is not None:
            seen[k] = p
    k = _rows_key(val) if val is not None else None
    if k is not None and k in seen:
        raise PosecalInputError(f"holds the same rows as the training store {seen[k]!r}: the validation "
                                "metrics would be measured on training rows; give a held-out store",
                                file=args.val_store, field="--val-store")


def _check_cv_folds(stores: list, args: argparse.Namespace) -> None:
    """Every ``--cv`` fold leaves rows with a target to train on (images without a labelled person count as
    images but teach nothing): else one line before the first fit, not a misleading 'no row of the store has
    a gt with a labelled keypoint' from inside the cross-validation."""
    import numpy as np

    from posecal.ccnet.select import image_count, image_folds, store_image_keys

    ids, datasets = store_image_keys(stores)
    folds = image_folds(ids, args.cv, args.cv_seed, datasets=datasets)
    for f in range(args.cv):
        if not any(bool(np.any(d.has_target[fo != f])) for d, fo in zip(stores, folds, strict=True)):
            n = image_count([i[d.has_target] for i, d in zip(ids, stores, strict=True)], datasets)
            raise PosecalInputError(f"--cv {args.cv}: fold {f + 1} holds every image with a labelled person "
                                    f"({n} in all), so its training part has nothing to learn from; give a "
                                    "smaller --cv, another --cv-seed, or more labelled images",
                                    file=args.store[0], field="--cv")


def _check_device(device: str) -> None:
    """The --device exists on this machine (its syntax was checked at parse time)."""
    import torch

    if device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        idx = int(device.partition(":")[2] or os.environ.get("LOCAL_RANK", "0") or 0)
        if idx >= n:
            raise PosecalInputError(f"{device}: this machine has {n} CUDA device(s)", field="--device")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise PosecalInputError("mps is not available on this machine", field="--device")


def _print_cv(rows: list, file: Any) -> None:
    w = max(len(r.recipe.label()) for r in rows)
    print(f"{'recipe':<{w}}  {'CV AP':>7}  {'sd':>6}  {'Δ vs own score':>14}  {'s':>6}", file=file)
    for r in rows:
        d = r.to_dict()
        delta = d["cv_delta_ap"] + 0.0 if round(d["cv_delta_ap"], 4) else 0.0  # no "-0.0000"
        print(f"{d['label']:<{w}}  {d['cv_ap']:7.4f}  {d['cv_ap_sd']:6.4f}  {delta:+14.4f}  "
              f"{d['seconds']:6.1f}", file=file)


def run(args: argparse.Namespace) -> int:
    from posecal._util import dumps_json
    from posecal.ccnet.checkpoint import save_head
    from posecal.ccnet.fit import fit_from_stores, load_training_stores

    _check_before_training(args)
    stores, val = load_training_stores(args.store, args.val_store)
    _refuse_same_rows(args, stores, val)
    recipe = _recipe(args, stores)
    cv = None
    if args.cv:
        from posecal.ccnet.select import TOLERANCE, cross_validate, default_grid, image_count, select, store_image_keys

        n_img = image_count(*store_image_keys(stores))  # an image in two stores of one data file counts once
        if args.cv > n_img:
            raise PosecalInputError(f"--cv {args.cv} needs at least {args.cv} images; the stores hold {n_img}",
                                    file=args.store[0], field="--cv")
        _check_cv_folds(stores, args)
        grid = default_grid(recipe)
        print(f"cv: {len(grid)} recipes × {args.cv} folds = {len(grid) * args.cv} fits (the base recipe: "
              f"{recipe.label()}); --steps N shortens each", file=sys.stderr)
        rows = cross_validate(stores, grid, k=args.cv, seed=args.cv_seed,
                              on_row=lambda r: print(f"cv: {r.recipe.label()}: AP {r.mean_ap:.4f} "
                                                     f"(own score {r.mean_base_ap:.4f})",
                                                     file=sys.stderr))
        best = select(rows)
        recipe = best.recipe
        cv = {"k": args.cv, "seed": args.cv_seed, "selected": recipe.to_dict(), "tolerance": TOLERANCE,
              "rows": [r.to_dict() for r in rows]}
        own = best.mean_base_ap  # over the folds that hold a labelled person
        if best.mean_ap < own:
            warnings.warn(f"--cv: no recipe beat the stores' own scores by cross-validation (selected "
                          f"{recipe.label()}: CV AP {best.mean_ap:.4f} < own score {own:.4f}); the head may lower "
                          "AP on data like this (more training data, or keep the model's own scores)",
                          PosecalWarning, stacklevel=1)
        if not args.json:
            _print_cv(rows, sys.stdout)
            print(f"selected: {recipe.label()}")
    if not args.context and not any(d.meta.get("boxes", "gt") != "gt" for d in stores):
        warnings.warn("--no-context: ignored, no training store holds detections (the context stage is fitted "
                      "on detection stores only)", PosecalWarning, stacklevel=1)
    head, meta = fit_from_stores(stores, recipe, val, device=args.device, threads=args.threads, verbose=True,
                                 context=args.context)
    if not meta:  # a non-zero rank under torchrun
        return 0
    if cv is not None:
        meta["cv"] = cv
    replaced = (Path(args.out) / "head.json").is_file()
    save_head(args.out, head, meta)
    if replaced:  # outputs are overwritten, as everywhere; say so, a head may have taken minutes to fit
        warnings.warn(f"{args.out}: replaced the head that was there", PosecalWarning, stacklevel=1)
    if args.json:
        sys.stdout.write(dumps_json(meta, indent=True).decode() + "\n")
    else:
        for split, m in meta["metrics"].items():  # in-sample on train; the head's scores, as apply --reorder
            if split == "applied":  # per training store, what `posecal apply` writes (context stage, order kept)
                for path, mm in m.items():
                    own = f" (own score: AP {mm['own_AP']:.4f})" if "own_AP" in mm else ""
                    print(f"apply on {path} (in-sample): " + ", ".join(f"{k} {v:.4f}" for k, v in mm.items()
                                                                       if k != "own_AP") + own)
                continue
            label = split
            if split == "train":  # the first store, the head's own scores
                label += f" ({args.store[0]}" + (", the head alone" if "context" in meta else "") + ")"
            print(f"{label}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
        if "context" in meta:
            print(f"context stage: fitted on {meta['context']['rows']} detections (out-of-fold scores, "
                  f"{meta['context']['folds']} folds)")
        print(f"head written to {args.out}")
    return 0
