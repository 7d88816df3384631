"""CCNet heads (paper Sec. 5, App. B). Imports torch.

Every head maps a batch of frozen features to ``(s_hat, v_hat)``, both ``(B, K)`` in [0, 1]:
``s_hat[k]`` the expected keypoint OKS, ``v_hat[k]`` the probability that keypoint k is labelled
(counts in the OKS). Features are normalised inside the head with per-channel statistics of the
training set, held as buffers (so they travel with the weights in the safetensors checkpoint).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from posecal.ccnet import HEAD_KINDS
from posecal.errors import PosecalInputError

__all__ = ["CCNetHead", "GATE_INPUTS", "POSE_HIDDEN", "build_head", "feature_shape_ok", "project_filter_rank"]

GATE_INPUTS = 6
"""``kpt_inst``: the instance gate reads the keypoint-mean of the last 6 normalised input channels, the
per-keypoint instance evidence of :func:`posecal.ccnet.targets.instance_evidence` (s_k, mean s, max s,
fraction of s > 0.2, box score, bbox_keypoint score)."""


POSE_HIDDEN = 64
"""``kpt_pose``: hidden width of the pose-context MLP."""


def _pose_width(num_keypoints: int) -> int:
    from posecal.ccnet.targets import pose_channels

    return pose_channels(num_keypoints)


def _kaiming_(weight: torch.Tensor, bias: torch.Tensor | None, fan_in: int) -> None:
    """PyTorch's default (Kaiming-uniform, a=√5) init, as nn.Linear / nn.Conv2d use (paper App. B)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound)


class CCNetHead(nn.Module):
    """One CCNet head.

    Args:
        kind: one of ``posecal.ccnet.HEAD_KINDS`` (``fc``, ``conv_gap``, ``conv_sigmoid_gap``, ``kpt``,
            ``kpt_inst``, ``kpt_pose``).
        in_channels: C, the input channel count (EfficientPose-I 144, BlazePose-full 48, SBL 256...; with
            evidence columns appended, their width too — ``kpt_pose``: the last P =
            :func:`posecal.ccnet.targets.pose_channels` (K) channels are the ``pose`` evidence).
        num_keypoints: K.

    Input shapes: ``fc`` (B, C); ``conv_gap`` / ``conv_sigmoid_gap`` (B, C, H, W); ``kpt*`` (B, K, C).
    Output: ``(s_hat (B, K), v_hat (B, K))`` in [0, 1].
    """

    def __init__(self, kind: str, in_channels: int, num_keypoints: int):
        super().__init__()
        if kind not in HEAD_KINDS:  # API misuse; a head file naming an unknown kind is checked by load_head
            raise ValueError(f"unknown head kind {kind!r}; choose one of {sorted(HEAD_KINDS)}")
        self.kind, self.in_channels, self.num_keypoints = kind, int(in_channels), int(num_keypoints)
        C, K = self.in_channels, self.num_keypoints
        if kind in ("kpt", "kpt_inst", "kpt_pose"):
            # per-keypoint linear: K independent C→2 maps (confidence, visibility); kpt_pose: on the channels
            # before the pose evidence, which a small MLP reads instead (one vector per instance)
            P = _pose_width(K) if kind == "kpt_pose" else 0
            if kind == "kpt_pose" and C <= P:
                raise PosecalInputError(f"head 'kpt_pose' needs the features + the {P} 'pose' evidence "
                                        f"channels, got {C} channels (fit with --evidence pose)")
            self.weight = nn.Parameter(torch.empty(K, 2, C - P))
            self.bias = nn.Parameter(torch.empty(K, 2))
            for k in range(K):
                _kaiming_(self.weight.data[k], self.bias.data[k], C - P)
            if kind == "kpt_pose":
                self.pose_width = P
                self.ctx1 = nn.Linear(P, POSE_HIDDEN)
                self.ctx2 = nn.Linear(POSE_HIDDEN, 2 * K)
                nn.init.zeros_(self.ctx2.weight)  # starts as the plain kpt head
                nn.init.zeros_(self.ctx2.bias)
            norm_shape: tuple[int, ...] = (K, C)
            if kind == "kpt_inst":  # instance gate over the instance evidence (last GATE_INPUTS channels)
                if C < GATE_INPUTS:
                    raise PosecalInputError(f"head 'kpt_inst' needs >= {GATE_INPUTS} channels (features + "
                                            f"instance evidence), got {C}")
                self.gate = nn.Linear(GATE_INPUTS, 1)
        elif kind == "fc":
            self.linear = nn.Linear(C, 2 * K)
            norm_shape = (C,)
        else:
            self.conv = nn.Conv2d(C, 2 * K, kernel_size=1)
            norm_shape = (C, 1, 1)
        self.register_buffer("feat_mean", torch.zeros(norm_shape))
        self.register_buffer("feat_std", torch.ones(norm_shape))

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the feature normalisation (shape (C,) — or (K, C) for ``kpt``); std floored at 1e-6."""
        self.feat_mean.copy_(mean.reshape(self.feat_mean.shape))
        self.feat_std.copy_(std.reshape(self.feat_std.shape).clamp_min(1e-6))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` with the stored training statistics, float32."""
        return (x.float() - self.feat_mean) / self.feat_std

    def logits(self, x: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        """Pre-sigmoid outputs (B, K, 2) for ``fc``/``conv_gap``/``kpt``; for ``conv_sigmoid_gap``
        the already-pooled probabilities (B, K, 2). ``normalised``: ``x`` already went through
        :meth:`normalise` (training normalises a spatial feature array once, not every step)."""
        x = x.float() if normalised else self.normalise(x)
        B, K = x.shape[0], self.num_keypoints
        if self.kind in ("kpt", "kpt_inst"):
            return torch.einsum("bkc,kjc->bkj", x, self.weight) + self.bias
        if self.kind == "kpt_pose":
            P = self.pose_width
            z = torch.einsum("bkc,kjc->bkj", x[:, :, :-P], self.weight) + self.bias
            return z + self.ctx2(torch.relu(self.ctx1(x[:, 0, -P:]))).view(B, K, 2)
        if self.kind == "fc":
            return self.linear(x).view(B, K, 2)
        y = self.conv(x)  # (B, 2K, H, W)
        if self.kind == "conv_sigmoid_gap":
            y = torch.sigmoid(y)
        return y.mean(dim=(2, 3)).view(B, K, 2)

    def forward(self, x: torch.Tensor, normalised: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "kpt_inst":
            xn = x.float() if normalised else self.normalise(x)
            p = torch.sigmoid(torch.einsum("bkc,kjc->bkj", xn, self.weight) + self.bias)
            q = torch.sigmoid(self.gate(xn[:, :, -GATE_INPUTS:].mean(dim=1)))  # (B, 1)
            return p[..., 0] * q, p[..., 1]
        z = self.logits(x, normalised)
        p = z if self.kind == "conv_sigmoid_gap" else torch.sigmoid(z)
        return p[..., 0], p[..., 1]

    def flops_per_instance(self, feature_shape: tuple[int, ...]) -> int:
        """Multiply-adds ×2 of one forward pass for one instance with ``feature_shape`` (no batch axis)."""
        C, K = self.in_channels, self.num_keypoints
        if self.kind in ("kpt", "kpt_inst"):
            return 2 * K * 2 * C + 2 * K * C + (2 * GATE_INPUTS + K * GATE_INPUTS if self.kind == "kpt_inst" else 0)
        if self.kind == "kpt_pose":
            P, Hd = self.pose_width, POSE_HIDDEN
            return 2 * K * 2 * (C - P) + 2 * K * C + 2 * P * Hd + 2 * Hd * 2 * K
        if self.kind == "fc":
            return 2 * C * 2 * K + 2 * C
        H, W = feature_shape[-2:]
        return H * W * (2 * C * 2 * K + 2 * C + 2 * K)


def feature_shape_ok(kind: str, shape: tuple[int, ...], num_keypoints: int) -> str | None:
    """Why a per-instance feature shape does not fit head ``kind`` (None when it does).

    ``ValueError`` for a ``kind`` not in ``HEAD_KINDS``."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"unknown head kind {kind!r}; choose one of {sorted(HEAD_KINDS)}")
    want = {"fc": 1, "conv_gap": 3, "conv_sigmoid_gap": 3, "kpt": 2, "kpt_inst": 2, "kpt_pose": 2}[kind]
    if len(shape) != want:
        return f"head {kind!r} needs features of {want} axes per instance, got shape {tuple(shape)}"
    if kind in ("kpt", "kpt_inst", "kpt_pose") and shape[0] != num_keypoints:
        return f"head 'kpt' needs (K={num_keypoints}, C) features, got {tuple(shape)}"
    if kind == "kpt_pose" and shape[1] <= _pose_width(num_keypoints):
        return (f"head 'kpt_pose' needs the features + the {_pose_width(num_keypoints)} 'pose' evidence channels, "
                f"got {shape[1]} channels (fit with --evidence pose)")
    return None


def build_head(kind: str, feature_shape: tuple[int, ...], num_keypoints: int) -> CCNetHead:
    """Head of ``kind`` for per-instance features of ``feature_shape`` ((C,), (K, C) or (C, H, W))."""
    why = feature_shape_ok(kind, tuple(feature_shape), num_keypoints)
    if why:
        raise PosecalInputError(why)
    C = feature_shape[-1] if kind in ("kpt", "kpt_inst", "kpt_pose") else feature_shape[0]
    return CCNetHead(kind, C, num_keypoints)


def project_filter_rank(head: CCNetHead, rank: int) -> CCNetHead:
    """Project a ``kpt``/``kpt_inst`` head's per-keypoint linear map to rank ``rank``, in place.

    The head computes z_kj = Σ_c W'_kjc x_kc + b'_kj on the raw features x (K, C), W' = W / σ the weights with
    the normalisation folded in (:meth:`CCNetHead.normalise`); seen as one (2K, C) matrix of 2K filters over the
    C channels, W' is replaced by its best rank-``rank`` approximation (truncated SVD, Eckart–Young) with each
    channel weighted by its typical scale s_c = √(mean_k σ_kc²), so the channels count as the head sees
    them. ``b`` and the normalisation stay. A rank-r head reads the heatmap-pooled features through r shared
    projections of the C channels: an exported graph computes those r maps once per pixel instead of 2K
    (:func:`posecal.ccnet.export.export_calibrated`; with SimplePose's 17 heatmaps the r ≤ 15 maps fit in the
    padding of the model's own last convolution). ``rank`` ≥ min(2K, C) leaves the head unchanged.

    >>> h = CCNetHead("kpt", 8, 3)
    >>> _ = project_filter_rank(h, 2)
    >>> sv = torch.linalg.svdvals((h.weight / h.feat_std[:, None, :]).reshape(6, 8).double())
    >>> int((sv > 1e-5 * sv[0]).sum())  # float32 weights: the rest is rounding
    2
    """
    if head.kind not in ("kpt", "kpt_inst"):
        raise PosecalInputError(f"filter rank applies to 'kpt' / 'kpt_inst' heads, not {head.kind!r}",
                                field="filter_rank")
    if rank < 1:
        raise PosecalInputError(f"filter rank must be >= 1, got {rank}", field="filter_rank")
    K, C = head.num_keypoints, head.in_channels
    if rank >= min(2 * K, C):
        return head
    with torch.no_grad():
        W = head.weight.detach().double().cpu()  # (K, 2, C)
        sd = head.feat_std.detach().double().cpu().expand(K, C)  # (K, C)
        s = sd.pow(2).mean(0).sqrt()  # (C,)
        M = (W / sd[:, None, :]).reshape(2 * K, C) * s
        U, S, Vt = torch.linalg.svd(M, full_matrices=False)
        Mr = (U[:, :rank] * S[:rank]) @ Vt[:rank] / s
        head.weight.copy_((Mr.reshape(K, 2, C) * sd[:, None, :]).to(head.weight.dtype))
    return head
