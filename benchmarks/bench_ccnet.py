"""CCNet cost: training speed on pooled features and head FLOPs vs the pose model's.

    PYTHONPATH=src python3 benchmarks/bench_ccnet.py [--n 10000] [--steps 12000] [--threads 1]
        [--model ../shared/models/efficientpose/EfficientPoseI.tflite] [--json OUT.json]

Training: the default recipe (12 000 Adam steps, batch 64) on synthetic pooled features of the
EfficientPose-I shapes (``features_kpt`` (N, 14, 144) and ``features_gap`` (N, 144)); wall time of
``fit_head`` including normalisation statistics. Target: < 60 s on 2 CPU cores.

FLOPs: 2 × multiply-adds of the TFLite graph's CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED /
TRANSPOSE_CONV ops (element-wise ops not counted), vs the head's forward pass per instance plus, for
the ``kpt`` head, the heatmap-weighted pooling it needs (2·J·C·H·W). Target: ≤ 2 %.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def tflite_flops(path: str) -> tuple[int, dict]:
    """(2 × multiply-adds of conv/FC ops, {feature tensor shapes}) of a TFLite model (batch 1)."""
    from posecal.models.adapters.tflite import Graph, read_model

    g = Graph(read_model(Path(path).read_bytes(), file=path))
    total = 0
    for k, op in enumerate(g.g.operators):
        name = g.op_name(k)
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"):
            continue
        if name == "TRANSPOSE_CONV":
            w, x = g.shape(op.inputs[1]), g.shape(op.inputs[2])
            total += 2 * int(np.prod(x[1:3])) * w[0] * w[1] * w[2] * w[3]
            continue
        out, w = g.shape(op.outputs[0]), g.shape(op.inputs[1])
        if name == "CONV_2D":
            total += 2 * int(np.prod(out[1:3])) * out[3] * w[1] * w[2] * w[3]
        elif name == "DEPTHWISE_CONV_2D":
            total += 2 * int(np.prod(out[1:3])) * out[3] * w[1] * w[2]
        else:  # FULLY_CONNECTED: weights (out, in)
            rows = int(np.prod(out[:-1])) if len(out) > 1 else 1
            total += 2 * rows * w[0] * w[1]
    return total, {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=str(REPO.parent / "shared/models/efficientpose/EfficientPoseI.tflite"))
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch

    from posecal.ccnet.heads import build_head
    from posecal.ccnet.train import TrainConfig, fit_head

    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    K, C, H, W, J = 14, 144, 32, 32, 16
    out: dict = {"n": a.n, "steps": a.steps, "threads": a.threads, "train_seconds": {}}
    for kind, shape in (("kpt", (K, C)), ("fc", (C,))):
        X = rng.normal(size=(a.n, *shape)).astype(np.float32)
        oks = rng.random((a.n, K))
        vis = rng.random((a.n, K)) > 0.1
        t = time.perf_counter()
        fit_head(X, oks, vis, TrainConfig(head=kind, steps=a.steps), show_progress=False)
        out["train_seconds"][kind] = round(time.perf_counter() - t, 2)
        print(f"train {kind:4s} {a.n} instances, {a.steps} steps: {out['train_seconds'][kind]:.2f} s")
    flops = {kind: build_head(kind, shape, K).flops_per_instance(shape)
             for kind, shape in (("kpt", (K, C)), ("fc", (C,)), ("conv_gap", (C, H, W)),
                                 ("conv_sigmoid_gap", (C, H, W)))}
    flops["kpt+pooling"] = flops["kpt"] + 2 * J * C * H * W
    out["head_flops"] = flops
    if Path(a.model).is_file():
        model_flops, _ = tflite_flops(a.model)
        out["model"] = Path(a.model).name
        out["model_flops"] = model_flops
        out["head_fraction_percent"] = {k: round(100 * v / model_flops, 4) for k, v in flops.items()}
        print(f"{out['model']}: {model_flops / 1e9:.3f} GFLOPs (conv/FC)")
        for k, v in flops.items():
            print(f"  head {k:17s} {v / 1e6:8.3f} MFLOPs  {100 * v / model_flops:.3f} %")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
