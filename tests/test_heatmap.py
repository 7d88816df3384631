"""Heatmap decoding and sigma estimation: synthetic Gaussians of known parameters, real EfficientPose."""

from __future__ import annotations

import numpy as np
import pytest

from posecal import theory
from posecal.theory import heatmap


def _gauss(H, W, cx, cy, w, amp=1.0):
    y, x = np.mgrid[0:H, 0:W].astype(float)
    return amp * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * w * w))


def _batch():
    rng = np.random.default_rng(0)
    n = 40
    cx = rng.uniform(10, 38, n)
    cy = rng.uniform(10, 54, n)
    w = rng.uniform(1.6, 4.5, n)
    amp = rng.uniform(0.2, 1.3, n)
    hm = np.stack([_gauss(64, 48, *a) for a in zip(cx, cy, w, amp, strict=True)]).reshape(8, 5, 64, 48)
    return hm, cx.reshape(8, 5), cy.reshape(8, 5), w.reshape(8, 5), amp.reshape(8, 5)


def test_argmax_and_dark_recover_subpixel_centre():
    hm, cx, cy, _, amp = _batch()
    c0, mx = heatmap.decode_argmax(hm)
    assert c0.shape == (8, 5, 2)
    assert np.all(np.abs(c0[..., 0] - cx) <= 0.5) and np.all(np.abs(c0[..., 1] - cy) <= 0.5)
    np.testing.assert_array_equal(mx, hm.reshape(8, 5, -1).max(-1))
    c1, _ = heatmap.decode_dark(hm)
    np.testing.assert_allclose(c1[..., 0], cx, atol=1e-6)  # log of a Gaussian is quadratic: Taylor is exact
    np.testing.assert_allclose(c1[..., 1], cy, atol=1e-6)
    c2, _ = heatmap.decode_dark(
        hm, blur_kernel=11
    )  # blurring a Gaussian keeps its centre (away from borders)
    assert np.abs(c2 - np.stack([cx, cy], -1)).max() < 0.05
    assert np.abs(c2 - np.stack([cx, cy], -1)).max() < np.abs(c0 - np.stack([cx, cy], -1)).max()


def test_fit_gaussian_recovers_width_amplitude_centre():
    hm, cx, cy, w, amp = _batch()
    fit = heatmap.fit_gaussian(hm, radius=6)
    assert fit["ok"].all()
    np.testing.assert_allclose(fit["width"], w, rtol=1e-6)
    np.testing.assert_allclose(fit["amplitude"], amp, rtol=1e-6)
    np.testing.assert_allclose(fit["center"][..., 0], cx, atol=1e-6)
    np.testing.assert_allclose(fit["center"][..., 1], cy, atol=1e-6)


def test_fit_gaussian_with_noise_is_close():
    rng = np.random.default_rng(1)
    hm = _gauss(64, 48, 20.3, 30.7, 3.0) + rng.normal(0, 0.01, (64, 48))
    fit = heatmap.fit_gaussian(hm[None], radius=6)
    assert fit["width"][0] == pytest.approx(3.0, rel=0.05)


def test_estimate_sigma_peak_and_fit_agree_on_ideal_heatmaps():
    """An MSE-optimal heatmap (Eq. 15) has peak l~^2/(s^2+l~^2) and width^2 s^2+l~^2: both invert to s."""
    lt = 2.0
    sig = np.array([[0.5, 1.0, 2.0, 3.0]])
    width = np.sqrt(sig**2 + lt**2)
    peak = theory.heatmap_peak(sig**2, lt**2)
    hm = np.stack([_gauss(64, 48, 23.4, 31.2, wd, pk) for wd, pk in zip(width[0], peak[0], strict=True)])[
        None
    ]
    s_peak = heatmap.estimate_sigma(hm, method="peak", target_sigma=lt)
    s_fit = heatmap.estimate_sigma(hm, method="fit", target_sigma=lt, radius=8)
    # argmax peak is sampled at the nearest pixel, so slightly below the continuous maximum
    np.testing.assert_allclose(s_fit, sig, rtol=1e-5)
    assert np.all(np.abs(s_peak - sig) < 0.25)
    s_peak_exact = heatmap.estimate_sigma(method="peak", peak=peak, target_sigma=lt)
    np.testing.assert_allclose(s_peak_exact, sig, rtol=1e-10)
    # conversion to image pixels through the crop scale
    scale = np.array([3.5])
    np.testing.assert_allclose(
        heatmap.estimate_sigma(hm, method="fit", target_sigma=lt, scale=scale, radius=8), sig * 3.5, rtol=1e-5
    )


def test_fit_gaussian_degenerate_inputs_stay_finite_positive():
    flat = np.zeros((1, 16, 16))
    neg = -np.ones((1, 16, 16))
    f = heatmap.fit_gaussian(np.concatenate([flat, neg]))
    assert np.all(np.isfinite(f["width"])) and np.all(f["width"] > 0)
    assert not f["ok"].any()


def test_crop_and_coordinate_round_trip():
    bbox = np.array([[10.0, 20.0, 60.0, 100.0], [0.0, 0.0, 200.0, 100.0]])
    crop = heatmap.topdown_crop_box(bbox, (192, 256), 1.25)
    np.testing.assert_allclose(crop[:, 2] / crop[:, 3], 0.75)
    np.testing.assert_allclose(crop[:, :2], [[40, 70], [100, 50]])
    assert crop[0, 3] == pytest.approx(125.0) and crop[1, 2] == pytest.approx(250.0)
    scale = heatmap.image_px_per_heatmap_px(crop, (48, 64))
    np.testing.assert_allclose(scale, crop[:, 2] / 48)
    # heatmap centre pixel (23.5, 31.5) maps to the crop centre
    xy = heatmap.heatmap_to_image(np.array([[[23.5, 31.5]], [[23.5, 31.5]]]), crop, (48, 64))
    np.testing.assert_allclose(xy[:, 0], crop[:, :2])


def test_sigma_on_real_efficientpose_heatmaps(shared):
    """EfficientPose-I on 4 LSP images: sigma-hat from the pass3 heatmaps is finite and positive."""
    import scipy.io
    from PIL import Image

    litert = pytest.importorskip("ai_edge_litert.interpreter")
    model = shared("models", "efficientpose", "EfficientPoseI.tflite")
    lsp = shared("data", "lsp")
    joints = scipy.io.loadmat(lsp / "joints.mat")["joints"]  # (3, 14, 2000)
    interp = litert.Interpreter(model_path=str(model), num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    outs = {d["name"]: d for d in interp.get_output_details()}
    name = "pass3_detection2_confs/BiasAdd"
    assert name in outs, sorted(outs)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    sigmas, scales, amps, widths = [], [], [], []
    for i in (1000, 1001, 1002, 1003):  # test split (images 1001-1004)
        img = Image.open(lsp / "images" / f"im{i + 1:04d}.jpg").convert("RGB")
        xy = joints[:2, :, i].T
        c = 0.5 * (xy.min(0) + xy.max(0))
        half = 0.6 * float((xy.max(0) - xy.min(0)).max()) + 4
        box = (c[0] - half, c[1] - half, c[0] + half, c[1] + half)
        crop = img.crop(tuple(int(round(v)) for v in box)).resize((256, 256), Image.BILINEAR)
        x = ((np.asarray(crop, dtype=np.float32) / 255.0 - mean) / std).astype(np.float32)[None]
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        hm = interp.get_tensor(outs[name]["index"])[0]  # (32, 32, 16) NHWC
        assert hm.shape == (32, 32, 16)
        sigmas.append(
            heatmap.estimate_sigma(
                np.moveaxis(hm, -1, 0)[None], method="fit", target_sigma=1.0, scale=np.array([2 * half / 32])
            )
        )
        scales.append(2 * half / 32)
        fit = heatmap.fit_gaussian(np.moveaxis(hm, -1, 0))
        amps.append(fit["amplitude"])
        widths.append(fit["width"])
        assert np.all(np.isfinite(fit["width"])) and np.all(fit["width"] > 0)
        assert fit["ok"].mean() > 0.5  # most real peaks are concave enough for the Gaussian fit
        s_peak = heatmap.estimate_sigma(np.moveaxis(hm, -1, 0)[None], method="peak", target_sigma=1.0)
        assert np.all(np.isfinite(s_peak)) and np.all(s_peak >= 0)
    sig = np.concatenate(sigmas)
    assert sig.shape == (4, 16)
    assert np.all(np.isfinite(sig)) and np.all(sig > 0)
    # App. A.3 / Eq. 17 on real maps: wider heatmaps have lower peaks (rank correlation over 64 keypoints)
    from scipy.stats import spearmanr

    amp, wid = np.concatenate(amps), np.concatenate(widths)
    assert spearmanr(amp, wid).statistic < -0.5


def test_fit_gaussian_near_flat_fit_does_not_overflow():
    """A log-linear ramp with a tiny curvature fits a Gaussian centred far outside the map: its amplitude
    would overflow exp; it falls back to the peak, without a RuntimeWarning (seen on MoveNet heatmaps)."""
    import warnings

    from posecal.theory.heatmap import fit_gaussian

    yy, xx = np.mgrid[0:16, 0:16].astype(float)
    h = np.exp(0.5 * xx - 1e-9 * (xx**2 + yy**2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = fit_gaussian(h[None])
    assert np.isfinite(r["amplitude"]).all() and r["amplitude"][0] == h.max()
