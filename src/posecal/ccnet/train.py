"""CCNet training on in-memory arrays (paper App. B recipe). Imports torch.

Recipe: Adam (no weight decay), lr 1e-3, ×0.1 at 75 % of the steps, 12 000 steps, loss of
:func:`posecal.ccnet.loss.ccnet_loss`. Seeded; deterministic on CPU (same seed, same data → the same
weights bit for bit). Under ``torchrun`` (``WORLD_SIZE > 1``) the head is wrapped in
DistributedDataParallel (gloo on CPU, nccl on GPU): every rank draws the same global batch and takes
its ``rank::world`` share, and the per-rank loss is scaled so that the averaged gradient equals the
single-process gradient of the whole batch — so N-process training matches 1-process training up to
floating-point summation order.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from posecal._util import progress
from posecal.ccnet.heads import CCNetHead, build_head
from posecal.ccnet.loss import CONF_LOSSES, ccnet_loss
from posecal.errors import PosecalInputError
from posecal.rescore.aggregate import instance_score

OPTIMIZERS = ("adam", "lbfgs")

__all__ = [
    "OPTIMIZERS",
    "TrainConfig",
    "FitResult",
    "fit_head",
    "predict",
    "normalisation_stats",
    "quick_metrics",
    "distributed_env",
    "default_device",
]


MAX_HYPER = 1e30
"""Largest ``lr``, ``weight_decay`` and ``lam`` a :class:`TrainConfig` takes (see :func:`_check_config`)."""


@dataclass
class TrainConfig:
    """Training recipe. Defaults are the paper's (App. B) except ``head`` and ``batch_size``."""

    head: str = "kpt"
    steps: int = 12000
    batch_size: int = 64
    lr: float = 1e-3
    lr_drop_at: float = 0.75
    lr_drop: float = 0.1
    lam: float = 0.2
    conf_loss: str = "mse"
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 0
    """Steps between validation callbacks; 0 → 10 evaluations over the run."""
    optimizer: str = "adam"
    """``adam`` (mini-batches of ``batch_size``, the paper's) or ``lbfgs``: full-batch L-BFGS with a
    strong-Wolfe line search for ``steps`` iterations (``batch_size``, ``lr`` schedule and DDP unused;
    ``weight_decay`` is the same L2 term ``weight_decay/2·‖θ‖²`` Adam's coupled decay implies)."""
    filter_rank: int = 0
    """``kpt``/``kpt_inst``: after training, project the per-keypoint linear map to this rank
    (:func:`posecal.ccnet.heads.project_filter_rank`; a cheaper exported graph); 0: full rank."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    head: CCNetHead
    losses: np.ndarray
    """(steps,) training loss per step (global batch mean, as seen by rank 0's share × world)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per validation callback: ``{"step": s, **metrics}``."""


def distributed_env(device: str | torch.device = "cpu") -> tuple[int, int]:
    """(rank, world size); under torchrun (``WORLD_SIZE > 1``) initialises the default process group:
    gloo for a CPU ``device``, nccl for CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.device(device).type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def default_device(device: str = "cpu") -> torch.device:
    """``"cuda"`` → this process's GPU (``LOCAL_RANK`` under torchrun); anything else as given."""
    if device == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def normalisation_stats(kind: str, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the training features, float64.

    ``(N, C)`` → (C,); ``(N, K, C)`` → (K, C) (per keypoint and channel); ``(N, C, H, W)`` → (C,).
    """
    axes = (0, 2, 3) if features.ndim == 4 else (0,)
    mean = np.zeros(features.shape[1:2] if features.ndim == 4 else features.shape[1:], np.float64)
    sq = np.zeros_like(mean)
    n = 0
    for s in range(0, features.shape[0], 1024):  # chunked: float16 spatial stores can be large
        x = np.asarray(features[s : s + 1024], dtype=np.float64)
        mean += x.sum(axis=axes)
        sq += (x * x).sum(axis=axes)
        n += x.size // mean.size
    mean /= n
    var = np.maximum(sq / n - mean * mean, 0.0)
    return mean, np.sqrt(var)


def _check(features: np.ndarray, oks: np.ndarray, vis: np.ndarray) -> None:
    N = features.shape[0]
    if oks.ndim != 2 or vis.shape != oks.shape or oks.shape[0] != N:
        raise PosecalInputError(
            f"features (N={N}, ...), oks {oks.shape} and vis {vis.shape} must share N and be (N, K)"
        )
    if N == 0:
        raise PosecalInputError("no training instances")
    if not np.isfinite(oks[vis > 0]).all():
        raise PosecalInputError("target OKS must be finite wherever the keypoint is labelled")


def _check_config(cfg: TrainConfig) -> None:
    if cfg.optimizer not in OPTIMIZERS:
        raise PosecalInputError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    if cfg.conf_loss not in CONF_LOSSES:
        raise PosecalInputError(f"conf_loss must be one of {CONF_LOSSES}, got {cfg.conf_loss!r}")
    if not isinstance(cfg.filter_rank, int) or cfg.filter_rank < 0:
        raise PosecalInputError(f"filter_rank must be an integer >= 0, got {cfg.filter_rank!r}", field="filter_rank")
    if cfg.filter_rank and cfg.head not in ("kpt", "kpt_inst"):
        raise PosecalInputError(f"filter_rank applies to 'kpt' / 'kpt_inst' heads, not {cfg.head!r}",
                                field="filter_rank")
    # the optimiser steps float32 weights by lr / (1 - beta1) and decays them by weight_decay: above MAX_HYPER
    # torch cannot even represent the step (an exception, not a diverged head)
    for name, v in (("lr", cfg.lr), ("weight_decay", cfg.weight_decay), ("lam", cfg.lam)):
        low = "(0" if name == "lr" else "[0"
        if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= MAX_HYPER) or (low == "(0" and v == 0):
            raise PosecalInputError(f"{name} must be a finite number in {low}, {MAX_HYPER:g}], got {v!r}",
                                    field="--" + name.replace("_", "-"))


def _mask_tensor(mask: np.ndarray | None) -> torch.Tensor | None:
    return None if mask is None else torch.from_numpy(np.asarray(mask, np.float32))


def _rows(t: torch.Tensor | None, rows: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t[rows].to(device)


@contextlib.contextmanager
def _deterministic():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


def fit_head(
    features: np.ndarray,
    oks: np.ndarray,
    vis: np.ndarray,
    config: TrainConfig | None = None,
    *,
    on_eval: Callable[[int, CCNetHead], dict[str, Any]] | None = None,
    show_progress: bool = True,
    device: str | torch.device = "cpu",
    conf_mask: np.ndarray | None = None,
    vis_mask: np.ndarray | None = None,
) -> FitResult:
    """Train a CCNet head.

    Args:
        features: (N, C), (N, K, C) or (N, C, H, W) frozen features (any float dtype). They are
            normalised once into a float32 copy, except a float16 array over 4 GiB widened, which stays
            float16 and is normalised per batch.
        oks: (N, K) per-keypoint OKS of the frozen model's prediction vs gt (paper Eq. 7 per keypoint);
            ignored (may be NaN) where ``vis`` is 0.
        vis: (N, K) 1 where the gt keypoint is labelled (v > 0), else 0.
        config: the recipe (:class:`TrainConfig`).
        on_eval: called on rank 0 every ``config.eval_every`` steps and at the end with (step, head in eval
            mode); its dict is appended to ``history``.
        conf_mask, vis_mask: (N, K) optional loss masks (:func:`posecal.ccnet.loss.ccnet_loss`).
    """
    cfg = config or TrainConfig()
    _check_config(cfg)
    features = np.asarray(features) if not hasattr(features, "shape") else features
    oks = np.asarray(oks, np.float64)
    vis = (np.asarray(vis) > 0).astype(np.float32)
    _check(features, oks, vis)
    N, K = oks.shape
    device = torch.device(device)
    rank, world = distributed_env(device)
    if cfg.batch_size < world:
        raise PosecalInputError(f"batch_size {cfg.batch_size} is smaller than the world size {world}")

    with _deterministic():
        torch.manual_seed(cfg.seed)
        head = build_head(cfg.head, tuple(features.shape[1:]), K)
        mean, std = normalisation_stats(cfg.head, features)
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise PosecalInputError("features contain NaN or infinite values", field=cfg.head)
        head.set_normalisation(torch.from_numpy(mean).float(), torch.from_numpy(std).float())
        head.to(device)
        model: torch.nn.Module = head
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(head, device_ids=[device.index] if device.type == "cuda" else None)
        X = torch.from_numpy(np.ascontiguousarray(features))
        # normalise once (float32, chunked) instead of every step, unless a float16 array would not fit
        # comfortably in memory once widened (> 4 GiB): then each batch is widened and normalised
        prenorm = X.dtype != torch.float16 or X.numel() * 4 < 4 << 30
        if prenorm:
            m, sd = head.feat_mean.detach().cpu(), head.feat_std.detach().cpu()
            X = torch.cat([(X[s : s + 1024].float() - m) / sd for s in range(0, N, 1024)])
        T = torch.from_numpy(np.nan_to_num(oks, nan=0.0)).float()
        V = torch.from_numpy(vis)
        CM, VM = _mask_tensor(conf_mask), _mask_tensor(vis_mask)
        if cfg.optimizer == "lbfgs":
            if not prenorm:
                raise PosecalInputError("optimizer 'lbfgs' needs the features in memory as float32 (< 4 GiB)")
            losses, history = _fit_full_batch(head, X, T, V, cfg, device, on_eval, rank, CM, VM)
            head.eval()
            return FitResult(head=_finish(head.cpu(), cfg), losses=losses, history=history)
        opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        drop_step = max(1, int(round(cfg.steps * cfg.lr_drop_at)))
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[drop_step], gamma=cfg.lr_drop)
        rng = np.random.default_rng(cfg.seed)
        perm, pos = rng.permutation(N), 0
        B = min(cfg.batch_size, N) if world == 1 else cfg.batch_size
        eval_every = cfg.eval_every or max(1, cfg.steps // 10)
        losses = np.empty(cfg.steps, np.float64)
        history: list[dict[str, Any]] = []
        bar = progress(
            total=cfg.steps, desc=f"fit {cfg.head}", disable=(not show_progress) or rank != 0 or None
        )
        model.train()
        for step in range(cfg.steps):
            # the same global batch on every rank: epoch-wise permutations, drawn identically
            if pos + B > N:
                perm, pos = rng.permutation(N), 0
            idx = perm[pos : pos + B] if B <= N else rng.integers(0, N, size=B)
            pos += B
            local = torch.from_numpy(np.sort(idx[rank::world]))
            x = X[local].to(device)
            s_hat, v_hat = model(x, prenorm)
            loss_sum = ccnet_loss(
                s_hat,
                v_hat,
                T[local].to(device),
                V[local].to(device),
                lam=cfg.lam,
                conf_loss=cfg.conf_loss,
                reduction="sum",
                conf_mask=_rows(CM, local, device),
                vis_mask=_rows(VM, local, device),
            )
            # DDP averages gradients over ranks: scale so the average is the global-batch mean
            loss = loss_sum * (world / len(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses[step] = float(loss.detach())
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{losses[step]:.4f}")
            if on_eval is not None and rank == 0 and ((step + 1) % eval_every == 0 or step + 1 == cfg.steps):
                head.eval()
                with torch.no_grad():
                    metrics = on_eval(step + 1, head)
                head.train()
                history.append({"step": step + 1, **metrics})
                if metrics:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items() if isinstance(v, float)})
        bar.close()
    head.eval()
    return FitResult(head=_finish(head.cpu(), cfg), losses=losses, history=history)


def _finish(head: CCNetHead, cfg: TrainConfig) -> CCNetHead:
    """The trained head with ``cfg.filter_rank`` applied; :class:`PosecalInputError` when training diverged
    (a weight NaN, infinite or beyond :data:`posecal.ccnet.checkpoint.MAX_ABS`: such a head would be written,
    then refused by ``load_head``)."""
    from posecal.ccnet.checkpoint import MAX_ABS

    bad = [k for k, t in head.state_dict().items()
           if t.numel() and not (bool(torch.isfinite(t).all()) and float(t.double().abs().max()) <= MAX_ABS)]
    if bad:
        raise PosecalInputError(f"training diverged: the head's weights became NaN, infinite or above {MAX_ABS:g} "
                                f"in magnitude ({bad[0]}; load_head would refuse them) with lr "
                                f"{cfg.lr:g}, weight_decay {cfg.weight_decay:g}, lam {cfg.lam:g}; nothing written "
                                "(lower --lr, --weight-decay or --lam)", field="--lr")
    if cfg.filter_rank:
        from posecal.ccnet.heads import project_filter_rank

        project_filter_rank(head, cfg.filter_rank)
    return head


def _fit_full_batch(head: CCNetHead, X: torch.Tensor, T: torch.Tensor, V: torch.Tensor, cfg: TrainConfig,
                    device: torch.device, on_eval: Callable[[int, CCNetHead], dict[str, Any]] | None,
                    rank: int, conf_mask: torch.Tensor | None = None,
                    vis_mask: torch.Tensor | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Full-batch L-BFGS (strong Wolfe) on the normalised features ``X``: at most ``cfg.steps`` iterations
    (1.25 × as many loss evaluations) of ``mean CCNet loss + weight_decay/2·‖θ‖²``. Returns (loss per
    evaluation, validation history: one entry, at the end)."""
    X, T, V = X.to(device), T.to(device), V.to(device)
    CM = None if conf_mask is None else conf_mask.to(device)
    VM = None if vis_mask is None else vis_mask.to(device)
    params = list(head.parameters())
    # one call running all iterations: L-BFGS keeps its curvature pairs and step-size state inside the call
    # (repeated one-iteration calls can stall on a rejected direction)
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=cfg.steps, max_eval=cfg.steps * 5 // 4 + 1, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")
    if head.kind == "kpt":  # the per-keypoint linear map as one batched matmul over (K, N, C): 2x einsum's speed
        Xk = X.permute(1, 0, 2).contiguous()

        def outputs() -> tuple[torch.Tensor, torch.Tensor]:
            z = torch.baddbmm(head.bias[:, None, :], Xk, head.weight.transpose(1, 2)).permute(1, 0, 2)
            p = torch.sigmoid(z)
            return p[..., 0], p[..., 1]
    else:
        def outputs() -> tuple[torch.Tensor, torch.Tensor]:
            return head(X, True)

    losses: list[float] = []

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        s_hat, v_hat = outputs()
        loss = ccnet_loss(s_hat, v_hat, T, V, lam=cfg.lam, conf_loss=cfg.conf_loss, conf_mask=CM, vis_mask=VM)
        if cfg.weight_decay:
            loss = loss + 0.5 * cfg.weight_decay * sum((p * p).sum() for p in params)
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    head.train()
    opt.step(closure)
    history: list[dict[str, Any]] = []
    if on_eval is not None and rank == 0:
        head.eval()
        with torch.no_grad():
            history.append({"step": cfg.steps, **on_eval(cfg.steps, head)})
    return np.asarray(losses, np.float64), history


def predict(head: CCNetHead, features: np.ndarray, batch_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """``(s_hat (N, K), v_hat (N, K))`` float64 for ``features`` shaped as the head was trained on."""
    head.eval()
    outs_s, outs_v = [], []
    with torch.no_grad():
        for s in range(0, features.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(features[s : s + batch_size]))
            if x.dtype not in (torch.float16, torch.float32):
                x = x.float()
            a, b = head(x.to(head.feat_mean.device))
            outs_s.append(a.double().cpu().numpy())
            outs_v.append(b.double().cpu().numpy())
    K = head.num_keypoints
    if not outs_s:
        return np.zeros((0, K)), np.zeros((0, K))
    return np.concatenate(outs_s), np.concatenate(outs_v)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def quick_metrics(s_hat: np.ndarray, v_hat: np.ndarray, oks: np.ndarray, vis: np.ndarray,
                  conf_mask: np.ndarray | None = None, vis_mask: np.ndarray | None = None) -> dict[str, float]:
    """Pearson correlations used for monitoring (the audit module has the full set).

    ``pearson_kpt``: ŝ vs keypoint OKS over labelled keypoints; ``pearson_inst``: ĉ (Sec. 5 aggregation)
    vs the instance OKS against its own gt (mean keypoint OKS over labelled keypoints, Eq. 7);
    ``vis_acc``: accuracy of v̂ > 0.5 against labelled. ``conf_mask`` / ``vis_mask`` (N, K), the training
    loss masks (:class:`posecal.ccnet.targets.StoreData`), leave out what the losses leave out: keypoints the
    model lacks (``extract --allow-missing-joints``: ŝ = v̂ = 0 by construction) and ones the dataset does
    not annotate; ``vis_mask`` also the detections without a matched person (no visibility target).
    """
    lab = np.asarray(vis) > 0
    if conf_mask is not None:
        lab = lab & np.asarray(conf_mask, bool)
    has = lab.any(axis=1)
    inst = np.where(has, np.nansum(np.where(lab, oks, 0.0), axis=1) / np.maximum(lab.sum(axis=1), 1), np.nan)
    c = instance_score(s_hat, "visibility", visibility=v_hat)
    hit = (v_hat > 0.5) == (np.asarray(vis) > 0)
    if vis_mask is not None:
        hit = hit[np.asarray(vis_mask, bool)]
    return {
        "pearson_kpt": _pearson(s_hat[lab], np.asarray(oks)[lab]),
        "pearson_inst": _pearson(c[has], inst[has]),
        "vis_acc": float(hit.mean()) if hit.size else float("nan"),
    }
