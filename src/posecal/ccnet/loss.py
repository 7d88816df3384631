"""CCNet loss (paper Eq. 19–21 and App. C surrogates). Imports torch.

``L = Σ_k v_k · ℓ(ŝ_k, OKS_k) + λ · Σ_k BCE(v̂_k, v_k > 0)``, averaged over the batch, with
``ℓ`` the squared error (Eq. 19, default) or binary cross-entropy against the soft OKS target
(``conf_loss="bce"``, a surrogate of App. C). ``v_k`` is 1 where keypoint k is labelled (its OKS is
defined), λ = 0.2 by default (App. B).

Masks (both optional, (B, K)): ``conf_mask`` replaces ``v_k`` as the confidence-loss weight (e.g. every
annotated keypoint of an unmatched detection, whose target is 0), ``vis_mask`` weights the visibility term
(0 for keypoints a dataset does not annotate at all, and for detections without a gt). Without them the loss
is exactly Eq. 19–21.
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
    conf_mask: torch.Tensor | None = None,
    vis_mask: torch.Tensor | None = None,
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
        conf_mask: (B, K) confidence-loss weight (default ``vis``); the target is ``oks`` where it is > 0.
        vis_mask: (B, K) visibility-loss weight (default 1).
    """
    vis = vis.to(s_hat.dtype)
    cw = vis if conf_mask is None else conf_mask.to(s_hat.dtype)
    target = torch.where(cw > 0, torch.nan_to_num(oks.to(s_hat.dtype), nan=0.0), torch.zeros_like(s_hat))
    if conf_loss == "mse":
        conf = (s_hat - target) ** 2
    elif conf_loss == "bce":
        conf = _bce(s_hat, target)
    else:
        raise ValueError(f"conf_loss must be one of {CONF_LOSSES}, got {conf_loss!r}")
    vb = _bce(v_hat, vis) if vis_mask is None else vis_mask.to(s_hat.dtype) * _bce(v_hat, vis)
    per_inst = (cw * conf).sum(dim=1) + lam * vb.sum(dim=1)
    return per_inst.mean() if reduction == "mean" else per_inst.sum()
