"""Top-down crop geometry: box -> centre/size, warp alignment, inverse transform, flip."""

from __future__ import annotations

import numpy as np
import pytest

from posecal.models.crop import apply_affine, crop_matrix, invert_affine, warp
from posecal.theory.heatmap import topdown_crop_box


def test_topdown_crop_box_aspect_and_padding():
    b = topdown_crop_box(np.array([[10.0, 20.0, 30.0, 90.0], [0.0, 0.0, 80.0, 10.0]]), (48, 64))
    c, s = b[:, :2], b[:, 2:]
    np.testing.assert_allclose(c, [[25, 65], [40, 5]])
    np.testing.assert_allclose(s[:, 0] / s[:, 1], 0.75)
    np.testing.assert_allclose(s, [[67.5 * 1.25, 90 * 1.25], [80 * 1.25, 80 / 0.75 * 1.25]])


@pytest.mark.parametrize("rot,flip", [(0.0, False), (23.0, False), (0.0, True), (-35.0, True)])
def test_warp_samples_where_the_inverse_points(rot, flip):
    # a linear ramp image: bilinear sampling reproduces x and y exactly (up to uint8 truncation, < 1)
    yy, xx = np.mgrid[0:120, 0:150]
    img = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)
    b = topdown_crop_box(np.array([40.0, 30.0, 60.0, 50.0]), (48, 64))[0]
    c, s = b[:2], b[2:]
    M = crop_matrix(c, s, (48, 64), rot=rot, flip=flip)
    out = warp(img, M, (48, 64)).astype(float)
    v, u = np.mgrid[0:64, 0:48]
    pts = apply_affine(invert_affine(M), np.stack([u.ravel(), v.ravel()], -1)).reshape(64, 48, 2)
    inside = (pts[..., 0] > 0) & (pts[..., 0] < 149) & (pts[..., 1] > 0) & (pts[..., 1] < 119)
    assert inside.mean() > 0.9
    d = out[..., :2] - pts
    assert np.all(d[inside] <= 1e-6) and np.all(d[inside] > -1.0)
    assert abs(d[inside].mean() + 0.5) < 0.1  # truncation bias only, no half-pixel shift


def test_inverse_round_trip_and_centre():
    c, s = np.array([100.0, 50.0]), np.array([40.0, 80.0])
    M = crop_matrix(c, s, (32, 64), rot=10.0)
    np.testing.assert_allclose(apply_affine(M, c[None]), [[15.5, 31.5]])  # box centre -> input centre
    p = np.random.default_rng(0).uniform(0, 200, (7, 2))
    np.testing.assert_allclose(apply_affine(invert_affine(M), apply_affine(M, p)), p, atol=1e-9)
    Mf = crop_matrix(c, s, (32, 64), flip=True)
    Mn = crop_matrix(c, s, (32, 64))
    q = apply_affine(Mn, p)
    np.testing.assert_allclose(apply_affine(Mf, p), np.stack([31 - q[:, 0], q[:, 1]], 1))


def test_exif_orientation_is_warned_once_and_not_applied(tmp_path):
    import warnings

    from PIL import Image

    from posecal.errors import PosecalWarning
    from posecal.models.crop import load_image

    a = np.zeros((4, 6, 3), np.uint8)
    a[0, 0] = 255  # top-left marker, as stored
    im = Image.fromarray(a)
    ex = im.getexif()
    ex[0x0112] = 6  # "rotate 90° clockwise to display"
    im.save(tmp_path / "r.jpg", exif=ex, quality=100)
    Image.fromarray(a).save(tmp_path / "plain.jpg", quality=100)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = load_image(tmp_path / "r.jpg")
        load_image(tmp_path / "r.jpg")
        load_image(tmp_path / "plain.jpg")
    msgs = [str(x.message) for x in w if issubclass(x.category, PosecalWarning)]
    assert len(msgs) == 1 and "r.jpg" in msgs[0] and "orientation 6" in msgs[0], msgs
    assert got.shape == (4, 6, 3) and got[0, 0, 0] > 200  # pixels as stored, not rotated
