"""Heatmap decoding and per-keypoint ambiguity (sigma) estimation (Sec. 4.3, Eqs. 1, 17; App. A.3).

Units: functions taking heatmaps work in **heatmap pixels** (x = column, y = row, pixel centres at
integer coordinates). ``heatmap_to_image`` / ``image_px_per_heatmap_px`` convert through the top-down crop
(``topdown_crop_box``) to **image pixels**. Heatmaps have shape ``(..., H, W)`` (e.g. ``(N, K, H, W)``).

Two sigma estimators (both return the *ambiguity* sigma of ``p ~ N(mu, sigma^2 I)``, not the heatmap width):

- ``"peak"``: invert Eq. 17, ``sigma^2 = l~^2 (1/peak - 1)`` (``theory.sigma2_from_heatmap_peak``);
- ``"fit"``: weighted least-squares fit of an isotropic 2-D Gaussian around the peak (the paper's "fitting
  the heatmap with a Gaussian", App. A.3), then ``sigma^2 = width^2 - l~^2`` (Sec. 4.3).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from posecal import theory

__all__ = [
    "topdown_crop_box",
    "image_px_per_heatmap_px",
    "heatmap_to_image",
    "decode_argmax",
    "heatmap_to_input",
    "decode_dark",
    "fit_gaussian",
    "estimate_sigma",
]


def topdown_crop_box(
    bbox: ArrayLike, input_size: tuple[int, int] = (192, 256), padding: float = 1.25
) -> np.ndarray:
    """Top-down crop of a box, as MMPose/SBL build it: centre kept, aspect fixed to the input's, then padded.

    Args:
        bbox: ``(N, 4)`` boxes ``(x, y, w, h)`` in image pixels.
        input_size: model input ``(W, H)`` in pixels.
        padding: scale factor applied after the aspect fix (MMPose default 1.25).
    Returns:
        ``(N, 4)`` crops ``(cx, cy, cw, ch)`` in image pixels (centre and size).
    """
    b = np.atleast_2d(np.asarray(bbox, dtype=np.float64))
    aspect = input_size[0] / input_size[1]
    cx, cy = b[:, 0] + 0.5 * b[:, 2], b[:, 1] + 0.5 * b[:, 3]
    w, h = b[:, 2].copy(), b[:, 3].copy()
    wide = w > aspect * h
    h = np.where(wide, w / aspect, h)
    w = np.where(wide, w, h * aspect)
    return np.stack([cx, cy, w * padding, h * padding], axis=1)


def image_px_per_heatmap_px(crop: ArrayLike, heatmap_size: tuple[int, int]) -> np.ndarray:
    """Image pixels per heatmap pixel ``(N,)`` for crops ``(N, 4)`` ``(cx, cy, cw, ch)``, heatmap ``(W, H)``.

    The crop has the input's aspect ratio so the x and y factors agree; their mean is returned.
    """
    c = np.atleast_2d(np.asarray(crop, dtype=np.float64))
    return 0.5 * (c[:, 2] / heatmap_size[0] + c[:, 3] / heatmap_size[1])


def heatmap_to_image(coords: ArrayLike, crop: ArrayLike, heatmap_size: tuple[int, int]) -> np.ndarray:
    """Map heatmap-pixel coordinates ``(N, K, 2)`` to image pixels through crops ``(N, 4)``.

    Heatmap pixel centre ``i`` covers ``[i - 0.5, i + 0.5]``; the heatmap spans the crop exactly
    (MMPose's ``(x + 0.5) / W * cw + x0`` without the legacy half-pixel shift).
    """
    xy = np.asarray(coords, dtype=np.float64)
    c = np.atleast_2d(np.asarray(crop, dtype=np.float64))
    x0 = c[:, 0] - 0.5 * c[:, 2]
    y0 = c[:, 1] - 0.5 * c[:, 3]
    out = np.empty_like(xy)
    out[..., 0] = (xy[..., 0] + 0.5) * (c[:, 2] / heatmap_size[0])[:, None] + x0[:, None]
    out[..., 1] = (xy[..., 1] + 0.5) * (c[:, 3] / heatmap_size[1])[:, None] + y0[:, None]
    return out


def decode_argmax(heatmaps: ArrayLike, subpixel: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1: ``p_hat = argmax H``, ``s_hat = max H`` — posecal's one argmax decoder (MMPose's
    ``get_heatmap_maximum``; :func:`heatmap_to_input` is the codec scale to model-input pixels).

    Args:
        heatmaps: ``(..., H, W)``.
        subpixel: add MMPose's/SimpleBaseline's quarter-pixel shift towards the higher neighbour
            (``0.25 · sign(H[x+1] − H[x−1])`` per axis where ``1 < x < W − 1``, as MMPose).
    Returns:
        ``coords (..., 2)`` (x, y) in heatmap pixels and ``maxvals (...)``.
    """
    h = np.asarray(heatmaps)
    H, W = h.shape[-2:]
    flat = h.reshape(*h.shape[:-2], H * W)
    idx = flat.argmax(-1)
    maxv = np.take_along_axis(flat, idx[..., None], -1)[..., 0].astype(np.float64)
    y, x = np.divmod(idx, W)
    coords = np.stack([x, y], axis=-1).astype(np.float64)
    if subpixel:
        def at(yy, xx):
            return np.take_along_axis(flat, (yy * W + xx)[..., None], -1)[..., 0].astype(np.float64)

        # MMPose refine_keypoints' conditions, transcribed: 1 < x < W - 1 (resp. y)
        xr, xl = np.clip(x + 1, 0, W - 1), np.clip(x - 1, 0, W - 1)
        yd, yu = np.clip(y + 1, 0, H - 1), np.clip(y - 1, 0, H - 1)
        dx = np.where((x > 1) & (x < W - 1), at(y, xr) - at(y, xl), 0.0)
        dy = np.where((y > 1) & (y < H - 1), at(yd, x) - at(yu, x), 0.0)
        coords += 0.25 * np.stack([np.sign(dx), np.sign(dy)], axis=-1)
    return coords, maxv


def heatmap_to_input(coords: ArrayLike, heatmap_size: tuple[int, int],
                     input_size: tuple[int, int]) -> np.ndarray:
    """Heatmap px ``(..., 2)`` -> model-input px: ``(c + 0.5) · (W_in / w_hm) − 0.5`` per axis.

    Heatmap pixel i covers input pixels ``[i·W/w, (i+1)·W/w)``; both grids put pixel centres at integers.
    Sizes are ``(W, H)``.
    """
    s = np.array([input_size[0] / heatmap_size[0], input_size[1] / heatmap_size[1]])
    return (np.asarray(coords, dtype=np.float64) + 0.5) * s - 0.5


def _gaussian_blur(h: np.ndarray, kernel: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for a given kernel size
    axes = (h.ndim - 2, h.ndim - 1)
    out = gaussian_filter(h, sigma=sigma, axes=axes, mode="nearest", truncate=(kernel // 2) / sigma)
    # DARK keeps the original maximum after blurring
    mx = h.max(axis=axes, keepdims=True)
    bmx = out.max(axis=axes, keepdims=True)
    return out * np.where(bmx > 0, mx / np.where(bmx > 0, bmx, 1), 1)


def decode_dark(
    heatmaps: ArrayLike, blur_kernel: int = 0, eps: float = 1e-10
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel decoding: second-order Taylor expansion of ``log H`` at the argmax (DARK, Zhang et al. 2020).

    ``offset = -Hess^{-1} grad`` of ``log(max(H, eps))`` by central differences; exact for a Gaussian.
    The offset is used only when the Hessian is negative definite and the offset stays within one pixel;
    otherwise the argmax is kept.

    Args:
        heatmaps: ``(..., H, W)``.
        blur_kernel: odd Gaussian-blur kernel applied first (DARK uses 11 for 64x48 maps); 0 = none.
    Returns:
        ``coords (..., 2)`` in heatmap pixels and the *unblurred* maxima ``(...)``.
    """
    h = np.asarray(heatmaps, dtype=np.float64)
    coords, maxv = decode_argmax(h)
    hb = _gaussian_blur(h, blur_kernel) if blur_kernel and blur_kernel > 1 else h
    H, W = h.shape[-2:]
    lg = np.log(np.maximum(hb, eps))
    lead = h.shape[:-2]
    flat = lg.reshape(-1, H, W)
    c = coords.reshape(-1, 2).astype(np.int64)
    n = flat.shape[0]
    x, y = c[:, 0], c[:, 1]
    inner = (x >= 1) & (x <= W - 2) & (y >= 1) & (y <= H - 2)
    xi, yi = np.clip(x, 1, W - 2), np.clip(y, 1, H - 2)
    r = np.arange(n)

    def at(dy, dx):
        return flat[r, yi + dy, xi + dx]

    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = at(0, 1) - 2 * at(0, 0) + at(0, -1)
    dyy = at(1, 0) - 2 * at(0, 0) + at(-1, 0)
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy**2
    ok = inner & (dxx < 0) & (det > 0)
    safe = np.where(ok, det, 1.0)
    ox = -(dyy * dx - dxy * dy) / safe
    oy = -(dxx * dy - dxy * dx) / safe
    ok &= (np.abs(ox) <= 1) & (np.abs(oy) <= 1)
    out = c.astype(np.float64)
    out[ok, 0] += ox[ok]
    out[ok, 1] += oy[ok]
    return out.reshape(*lead, 2), maxv


def fit_gaussian(heatmaps: ArrayLike, radius: int = 5, rel_threshold: float = 0.05) -> dict[str, np.ndarray]:
    """Weighted least-squares fit of ``A exp(-((x-x0)^2 + (y-y0)^2) / (2 w^2))`` around each heatmap's peak.

    The fit is linear in ``log h = a + b x + c y + d (x^2 + y^2)`` over the pixels within ``radius`` of
    the argmax whose value exceeds ``rel_threshold * peak``, with weights ``h^2`` (which makes the
    log-domain residuals match the linear-domain least-squares ones to first order; exact for a noiseless
    Gaussian). When the fit is not concave or has fewer than 4 usable pixels, the width falls back to the
    second moment ``w^2 = sum h r^2 / (2 sum h)`` of the positive part of the window (``ok`` False); when
    the window has no positive value at all, ``w = radius`` (maximal uncertainty). Widths of finite heatmaps
    are therefore always finite and positive; a heatmap holding a NaN or infinite value has no defined peak
    and gets NaN amplitude, centre and width (``ok`` False), as the ``"peak"`` estimator gives NaN there.

    Args:
        heatmaps: ``(..., H, W)``.
        radius: half-size of the square window, heatmap pixels.
        rel_threshold: pixels below this fraction of the peak are left out of the fit.
    Returns:
        dict with ``amplitude (...)``, ``center (..., 2)`` (x, y heatmap px), ``width (...)`` (heatmap px,
        the per-axis standard deviation of the fitted Gaussian), ``ok (...) bool``.
    """
    h = np.asarray(heatmaps, dtype=np.float64)
    lead = h.shape[:-2]
    H, W = h.shape[-2:]
    flat = h.reshape(-1, H, W)
    n = flat.shape[0]
    P = (2 * radius + 1) ** 2  # window pixels (explicit: reshape(0, -1) is ambiguous for an empty batch)
    bad = ~np.isfinite(flat).all(axis=(1, 2))  # NaN/inf anywhere: argmax and peak undefined -> NaN below
    if bad.any():
        flat = np.where(bad[:, None, None], 0.0, flat)
    coords, peak = decode_argmax(flat)
    cx, cy = coords[:, 0].astype(int), coords[:, 1].astype(int)
    off = np.arange(-radius, radius + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    X = cx[:, None, None] + ox[None]
    Y = cy[:, None, None] + oy[None]
    inside = (X >= 0) & (X < W) & (Y >= 0) & (Y < H)
    vals = flat[np.arange(n)[:, None, None], np.clip(Y, 0, H - 1), np.clip(X, 0, W - 1)]
    vals = np.where(inside, vals, 0.0)
    use = inside & (vals > np.maximum(rel_threshold * peak, 0.0)[:, None, None]) & (vals > 0)
    wgt = np.where(use, vals, 0.0) ** 2
    xs, ys = ox.astype(np.float64), oy.astype(np.float64)  # relative to the argmax, for conditioning
    basis = np.stack([np.ones_like(xs), xs, ys, xs**2 + ys**2], axis=-1).reshape(-1, 4)  # (P, 4)
    lv = np.log(np.where(use, vals, 1.0)).reshape(n, P)
    wf = wgt.reshape(n, P)
    A = np.einsum("np,pi,pj->nij", wf, basis, basis)
    rhs = np.einsum("np,pi,np->ni", wf, basis, lv)
    nuse = use.reshape(n, P).sum(1)
    good = nuse >= 4
    A[~good] = np.eye(4)
    rhs[~good] = 0.0
    try:
        coef = np.linalg.solve(A, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        coef = np.stack([np.linalg.lstsq(a, r, rcond=None)[0] for a, r in zip(A, rhs, strict=True)])
    d = coef[:, 3]
    ok = good & (d < 0) & np.isfinite(coef).all(1)
    dsafe = np.where(ok, d, -1.0)
    w2 = -1.0 / (2.0 * dsafe)
    x0 = coef[:, 1] * w2
    y0 = coef[:, 2] * w2
    with np.errstate(over="ignore"):  # a near-flat fit (d ≈ 0) can overflow: its amplitude falls back to the peak
        amp = np.exp(coef[:, 0] + (x0**2 + y0**2) / (2 * w2))
    amp = np.where(np.isfinite(amp), amp, peak)
    # fallback: second moment of the positive window about the argmax
    pos = np.clip(vals, 0.0, None).reshape(n, P)
    r2 = (xs**2 + ys**2).reshape(-1)
    msum = pos.sum(1)
    mom_w2 = np.where(msum > 0, (pos * r2).sum(1) / (2 * np.where(msum > 0, msum, 1.0)), float(radius) ** 2)
    mom_w2 = np.where(mom_w2 > 0, mom_w2, float(radius) ** 2)
    w2 = np.where(ok, w2, mom_w2)
    x0 = np.where(ok, x0, 0.0) + cx
    y0 = np.where(ok, y0, 0.0) + cy
    amp = np.where(ok, amp, peak)
    amp, x0, y0, w2 = (np.where(bad, np.nan, v) for v in (amp, x0, y0, w2))
    ok &= ~bad
    return {
        "amplitude": amp.reshape(lead),
        "center": np.stack([x0, y0], -1).reshape(*lead, 2),
        "width": np.sqrt(w2).reshape(lead),
        "ok": ok.reshape(lead),
    }


def estimate_sigma(
    heatmaps: ArrayLike | None = None,
    *,
    method: str = "fit",
    peak: ArrayLike | None = None,
    target_sigma: float = 2.0,
    scale: ArrayLike | None = None,
    radius: int = 5,
) -> np.ndarray:
    """Per-keypoint ambiguity sigma from heatmaps ``(N, K, H, W)`` or from peaks ``(N, K)``.

    Args:
        heatmaps: ``(N, K, H, W)`` (or any ``(..., H, W)``); optional for ``method="peak"`` with ``peak``.
        method: ``"peak"`` (invert Eq. 17) or ``"fit"`` (WLS Gaussian fit, ``sigma^2 = w^2 - l~^2``).
        peak: heatmap maxima ``(N, K)`` for ``method="peak"`` (default: decoded from ``heatmaps``).
        target_sigma: ``l~`` of the training target, heatmap pixels (2 for SBL/HRNet at 64x48).
        scale: image pixels per heatmap pixel, ``(N,)`` (``image_px_per_heatmap_px``); None = stay in
            heatmap pixels.
        radius: window half-size for ``"fit"``.
    Returns:
        sigma ``(N, K)`` — image pixels if ``scale`` is given, heatmap pixels otherwise. Non-negative; NaN (no
        estimate) where a heatmap holds a NaN or infinite value (``"fit"``) or a peak is NaN (``"peak"``).
    """
    lt2 = float(target_sigma) ** 2
    if method == "peak":
        if peak is None:
            if heatmaps is None:
                raise ValueError("estimate_sigma(method='peak') needs heatmaps or peak")
            _, peak = decode_argmax(heatmaps)
        s2 = theory.sigma2_from_heatmap_peak(peak, lt2)
    elif method == "fit":
        if heatmaps is None:
            raise ValueError("estimate_sigma(method='fit') needs heatmaps")
        w = fit_gaussian(heatmaps, radius=radius)["width"]
        s2 = theory.sigma2_from_heatmap_width(w**2, lt2)
    else:
        raise ValueError(f"unknown sigma method {method!r}; use 'peak' or 'fit'")
    sigma = np.sqrt(s2)
    if scale is not None:
        sc = np.asarray(scale, dtype=np.float64)
        sigma = sigma * sc.reshape(sc.shape + (1,) * (sigma.ndim - sc.ndim))
    return sigma
