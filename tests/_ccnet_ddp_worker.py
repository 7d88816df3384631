"""Run under torchrun by tests/test_ccnet_ddp.py: train a head on a fixed synthetic problem, save it."""

import sys

import numpy as np
import torch

from posecal.ccnet.checkpoint import save_head
from posecal.ccnet.train import TrainConfig, distributed_env, fit_head


def problem(seed: int = 0, N: int = 600, K: int = 5, C: int = 12):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, K, C)).astype(np.float32)
    w = rng.normal(size=(K, C)) / np.sqrt(C) * 2
    oks = 1 / (1 + np.exp(-(X * w).sum(-1)))
    vis = rng.random((N, K)) > 0.2
    return X, oks, vis


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1]
    X, oks, vis = problem()
    res = fit_head(
        X, oks, vis, TrainConfig(head="kpt", steps=200, batch_size=32, seed=3), show_progress=False
    )
    rank, world = distributed_env()
    if rank == 0:
        save_head(
            out,
            res.head,
            {
                "keypoint_set": "synthetic",
                "feature_tensor": "features_kpt",
                "feature_shape": list(X.shape[1:]),
                "world_size": world,
            },
        )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
