"""``posecal fit --store STORE --out HEAD_DIR [--val-store STORE]``: train a CCNet head (paper Sec. 5).

Targets are the per-keypoint OKS (Eq. 7, one term per keypoint) of the store's predictions against its
gt (``gt_keypoints`` of an augmented store, else ``gt.json`` by ``ann_id``) with the keypoint set's
sigmas and the gt area; the visibility target is "labelled" (gt v > 0). Rows without a gt or without
any labelled keypoint carry no target and are left out of training.

Distributed: ``torchrun --nproc_per_node N -m posecal fit ...`` (DDP, gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from posecal.ccnet.targets import load_store, scores_and_ap
from posecal.errors import PosecalInputError

# head chosen by default for each store feature tensor: the recommended recipe (see docs/results.md, "CCNet")
DEFAULT_HEAD = {"features_kpt": "kpt", "features_gap": "fc", "features_spatial": "conv_gap"}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "fit",
        help="train a CCNet head on a feature store",
        description="Train a CCNet confidence/visibility head on a feature store (paper Sec. 5). "
        "With no other option: the recommended recipe.",
    )
    p.add_argument("--store", required=True, action="append",
                   help="feature store directory (from posecal extract); repeat to train on several stores "
                   "of the same model/tensor/pooling (e.g. a plain and an --augment store)")
    p.add_argument("--out", required=True, help="head directory to write (head.safetensors + head.json)")
    p.add_argument("--val-store", help="store to validate on (AP, Pearson) during training")
    p.add_argument("--head", choices=["fc", "conv_gap", "conv_sigmoid_gap", "kpt", "kpt_inst"],
                   help="head kind; default: the recommended one for the store's feature tensor")
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lam", type=float, default=0.2, help="visibility loss weight λ (Eq. 21)")
    p.add_argument("--conf-loss", choices=["mse", "bce"], default="mse",
                   help="confidence loss: MSE (Eq. 19) or BCE on the soft OKS target (App. C)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0, help="steps between validations (0: 10 per run)")
    p.add_argument("--box-score", action="store_true", help="multiply ĉ by the box score")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1 if pooled)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (this rank's GPU under torchrun)")
    p.add_argument("--json", action="store_true", help="print the final metadata as JSON on stdout")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from posecal._util import dumps_json
    from posecal.ccnet import HEAD_KINDS
    from posecal.ccnet.checkpoint import save_head
    from posecal.ccnet.train import TrainConfig, default_device, distributed_env, fit_head

    if args.steps < 1 or args.batch_size < 1:
        raise PosecalInputError("--steps and --batch-size must be >= 1", field="--steps/--batch-size")
    stores = [load_store(p) for p in args.store]
    train = stores[0]
    for p, d in zip(args.store[1:], stores[1:], strict=True):
        if d.head_meta != train.head_meta:
            diffs = [k for k in train.head_meta if train.head_meta[k] != d.head_meta[k]]
            raise PosecalInputError(f"store differs from {args.store[0]} in {', '.join(diffs)}", file=p)
    val = load_store(args.val_store) if args.val_store else None
    feat_name = train.head_meta["feature_tensor"]
    from posecal.ccnet.targets import default_head, loss_masks

    kind = args.head or default_head(train.meta, feat_name, DEFAULT_HEAD[feat_name])
    if HEAD_KINDS[kind] != feat_name:
        raise PosecalInputError(f"head {kind!r} reads {HEAD_KINDS[kind]}, the store has {feat_name}",
                                file=args.store[0], field="--head")
    if val is not None and val.head_meta != train.head_meta:
        diffs = [k for k in train.head_meta if train.head_meta[k] != val.head_meta[k]]
        raise PosecalInputError(f"validation store differs from the training store in {', '.join(diffs)}",
                                file=args.val_store)
    threads = args.threads or (1 if feat_name != "features_spatial" else None)
    if threads:
        torch.set_num_threads(threads)
    X = np.concatenate([d.features[d.has_target] for d in stores])
    T = np.concatenate([d.oks[d.has_target] for d in stores])
    V = np.concatenate([d.vis[d.has_target] for d in stores])
    if not len(X):
        raise PosecalInputError("no row of the store has a gt with a labelled keypoint", file=args.store[0])
    cfg = TrainConfig(head=kind, steps=args.steps, batch_size=args.batch_size, lr=args.lr, lam=args.lam,
                      conf_loss=args.conf_loss, weight_decay=args.weight_decay, seed=args.seed,
                      eval_every=args.eval_every)
    device = default_device(args.device)
    rank, world = distributed_env(device)
    on_eval = None
    if val is not None:
        def on_eval(step: int, head: Any) -> dict[str, Any]:
            m = scores_and_ap(head, val, use_box_score=args.box_score)
            print(f"step {step}: val " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()), file=sys.stderr)
            return m
    res = fit_head(X, T, V, cfg, on_eval=on_eval, device=device, **loss_masks(stores))
    if rank == 0:
        metrics = {"train": scores_and_ap(res.head, train, use_box_score=args.box_score)}
        if val is not None:
            metrics["val"] = scores_and_ap(res.head, val, use_box_score=args.box_score)
        meta = {
            **train.head_meta,
            "aggregation": "sum(v_hat*s_hat)/sum(v_hat)" + (" * box_score" if args.box_score else ""),
            "box_score": bool(args.box_score),
            "train": {**cfg.to_dict(), "stores": [os.path.abspath(p) for p in args.store], "rows": len(X),
                      "world_size": world, "final_loss": float(res.losses[-100:].mean())},
            "metrics": metrics,
            "history": res.history,
        }
        save_head(args.out, res.head, meta)
        if args.json:
            sys.stdout.write(dumps_json(meta, indent=True).decode() + "\n")
        else:
            for split, m in metrics.items():
                print(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
            print(f"head written to {args.out}")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0
