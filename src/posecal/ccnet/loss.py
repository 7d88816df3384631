"""CCNet loss (paper Eq. 19–21 and App. C surrogates). Imports torch.

``L = Σ_k v_k · ℓ(ŝ_k, OKS_k) + λ · Σ_k BCE(v̂_k, v_k > 0)``, averaged over the batch, with
``ℓ`` the squared error (Eq. 19, default) or binary cross-entropy against the soft OKS target
(``conf_loss="bce"``, a surrogate of App. C). ``v_k`` is 1 where keypoint k is labelled (its OKS is
defined), λ = 0.2 by default (App. B).
"""

from __future__ import annotations

import torch

__all__ = ["CONF_LOSSES", "ccnet_loss"]

CONF_LOSSES = ("mse", "bce")
_EPS = 1e-6


def _bce(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = p.clamp(_EPS, 1 - _EPS)
    return -(target * torch.log(p) + (1 - target) * torch.log1p(-p))


def ccnet_loss(
    s_hat: torch.Tensor,
    v_hat: torch.Tensor,
    oks: torch.Tensor,
    vis: torch.Tensor,
    *,
    lam: float = 0.2,
    conf_loss: str = "mse",
    reduction: str = "mean",
) -> torch.Tensor:
    """The CCNet loss.

    Args:
        s_hat: (B, K) predicted keypoint OKS in [0, 1].
        v_hat: (B, K) predicted visibility probability in [0, 1].
        oks: (B, K) target per-keypoint OKS; any value (e.g. NaN) where ``vis`` is 0.
        vis: (B, K) 1 where keypoint k is labelled (gt v > 0), else 0.
        lam: visibility weight λ (Eq. 21).
        conf_loss: ``"mse"`` (Eq. 19) or ``"bce"`` (BCE on the soft OKS target).
        reduction: ``"mean"`` over the batch, or ``"sum"``.
    """
    vis = vis.to(s_hat.dtype)
    target = torch.where(vis > 0, torch.nan_to_num(oks.to(s_hat.dtype), nan=0.0), torch.zeros_like(s_hat))
    if conf_loss == "mse":
        conf = (s_hat - target) ** 2
    elif conf_loss == "bce":
        conf = _bce(s_hat, target)
    else:
        raise ValueError(f"conf_loss must be one of {CONF_LOSSES}, got {conf_loss!r}")
    per_inst = (vis * conf).sum(dim=1) + lam * _bce(v_hat, vis).sum(dim=1)
    return per_inst.mean() if reduction == "mean" else per_inst.sum()
