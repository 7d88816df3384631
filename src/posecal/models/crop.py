"""Top-down crops: the affine warp image -> model input and its inverse (the crop box itself, centre and
size from a person box, is :func:`posecal.theory.heatmap.topdown_crop_box`, the one crop-box builder).

Coordinates: image pixels and input pixels both have pixel centres at integers (COCO convention).
An affine ``M`` of shape (2, 3) maps ``[x, y, 1]`` (image px) to input px; :func:`invert_affine`
gives the way back. Warping uses PIL (bilinear), no OpenCV.
"""

from __future__ import annotations

import numpy as np

__all__ = ["crop_matrix", "invert_affine", "apply_affine", "warp", "load_image"]


def crop_matrix(center: np.ndarray, size: np.ndarray, out_size: tuple[int, int], rot: float = 0.0,
                flip: bool = False) -> np.ndarray:
    """(2, 3) affine image px -> input px for one crop.

    ``center`` (2,), ``size`` (2,) crop extent in image px, ``out_size`` (W, H) input px, ``rot`` degrees
    (counter-clockwise in the image, positive rotates the person clockwise in the crop as MMPose),
    ``flip`` mirrors the crop horizontally (u -> W - 1 - u).
    """
    cx, cy = float(center[0]), float(center[1])
    W, H = out_size
    sx, sy = W / float(size[0]), H / float(size[1])
    t = np.deg2rad(rot)
    c, s = np.cos(t), np.sin(t)
    # centre to origin, rotate, scale, centre of the output (pixel centres at integers: (W-1)/2)
    R = np.array([[c, s], [-s, c]])
    A = np.diag([sx, sy]) @ R
    b = np.array([(W - 1) / 2.0, (H - 1) / 2.0]) - A @ np.array([cx, cy])
    M = np.concatenate([A, b[:, None]], axis=1)
    if flip:
        M = np.array([[-1.0, 0.0, W - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([M, [0, 0, 1]])
    return M


def invert_affine(M: np.ndarray) -> np.ndarray:
    """Inverse of a (..., 2, 3) affine."""
    M = np.asarray(M, dtype=np.float64)
    A, b = M[..., :2], M[..., 2:]
    Ai = np.linalg.inv(A)
    return np.concatenate([Ai, -Ai @ b], axis=-1)


def apply_affine(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply (2, 3) affine(s) to points (..., P, 2); M may be (N, 2, 3) with pts (N, P, 2)."""
    M = np.asarray(M, dtype=np.float64)
    p = np.asarray(pts, dtype=np.float64)
    return np.einsum("...ij,...pj->...pi", M[..., :2], p) + M[..., None, :, 2]


def load_image(path, record: object = None) -> np.ndarray:
    """RGB uint8 (H, W, 3). A missing, empty, corrupt, truncated or oversized image raises
    :class:`posecal.errors.PosecalInputError` naming the image (and ``record``, e.g. the annotation id).

    16-bit grayscale images (PIL modes ``I;16*``, ``I`` with values in 0…65535) keep their high byte, as
    OpenCV's ``imread(IMREAD_COLOR)`` (what MMPose reads with) does — PIL's ``convert("RGB")`` would saturate
    them to white. Floating-point images are refused."""
    from PIL import Image

    from posecal.errors import PosecalInputError

    try:
        with Image.open(path) as im:
            _warn_exif_orientation(im, path)
            a = _rgb8(im, path, record)
    except PosecalInputError:  # _rgb8's own one line (a ValueError too): not wrapped again
        raise
    except OSError as e:  # missing, unreadable, not an image (UnidentifiedImageError), truncated
        raise PosecalInputError(f"cannot read image: {e.strerror or e}", file=str(path), record=record,
                                field="file_name") from None
    except (ValueError, SyntaxError, EOFError, Image.DecompressionBombError, MemoryError) as e:
        raise PosecalInputError(f"cannot read image: {type(e).__name__}: {e}", file=str(path), record=record,
                                field="file_name") from None
    if a.ndim != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise PosecalInputError(f"image has shape {a.shape}", file=str(path), record=record, field="file_name")
    return a


_EXIF_WARNED: set[str] = set()


def _warn_exif_orientation(im, path) -> None:
    """Warn once per image whose EXIF orientation tag asks for a rotation or mirror: posecal reads pixels as
    stored — the frame COCO's annotations (and ``width``/``height``) are made in — and never applies it."""
    try:
        o = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a damaged EXIF block is not an image error
        return
    if o in (None, 1) or str(path) in _EXIF_WARNED:
        return
    _EXIF_WARNED.add(str(path))
    import warnings

    from posecal.errors import PosecalWarning

    warnings.warn(f"{path}: EXIF orientation {o} is not applied: pixels are read as stored (the frame COCO "
                  "annotations use); if the annotations were made on the rotated picture, save it rotated",
                  PosecalWarning, stacklevel=3)


def _rgb8(im, path, record) -> np.ndarray:
    from posecal.errors import PosecalInputError

    if im.mode == "F":
        raise PosecalInputError("floating-point images are not supported; save it as 8 or 16 bits",
                                file=str(path), record=record, field="file_name")
    if im.mode == "I" or im.mode.startswith("I;16"):
        g = np.asarray(im).astype(np.int64)
        if g.size and (g.min() < 0 or g.max() > 65535):
            raise PosecalInputError("32-bit integer image with values outside 0…65535", file=str(path),
                                    record=record, field="file_name")
        return np.repeat((g >> 8).astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def warp(image: np.ndarray, M: np.ndarray, out_size: tuple[int, int], fill: int = 0) -> np.ndarray:
    """Warp an RGB uint8 image (H, W, 3) with the image -> input affine ``M``; returns (H_out, W_out, 3).

    Bilinear (PIL). Input pixel u samples the image at ``invert_affine(M) @ [u, 1]``; outside is ``fill``.
    """
    from PIL import Image

    Mi = invert_affine(M)
    # PIL samples continuous coordinates whose pixel centres sit at +0.5; convert from integer centres
    A, b = Mi[:, :2], Mi[:, 2]
    b_pil = b + 0.5 - A @ np.array([0.5, 0.5])
    coeffs = (A[0, 0], A[0, 1], b_pil[0], A[1, 0], A[1, 1], b_pil[1])
    im = Image.fromarray(np.ascontiguousarray(image))
    out = im.transform(tuple(int(v) for v in out_size), Image.Transform.AFFINE, coeffs,
                       resample=Image.Resampling.BILINEAR, fillcolor=(fill,) * 3)
    return np.asarray(out)


def warn_image_sizes(odd: list[tuple[int, str, tuple[int, int], tuple[int, int]]], data_file: str | None,
                     stacklevel: int = 3) -> None:
    """One warning for the images whose header size differs from the data's ``width``/``height``: ``odd`` holds
    (record index, file name, header (w, h), data (w, h)) per such image (a wrong ``--images`` folder, or resized
    copies). Nothing when ``odd`` is empty."""
    if not odd:
        return
    import warnings

    from posecal.errors import PosecalWarning

    r, name, wh, want = odd[0]
    warnings.warn(f"{data_file}: {len(odd)} image(s) differ in size from the data's width/height (first: record "
                  f"images[{r}], {name} is {wh[0]}x{wh[1]}, the data says {want[0]}x{want[1]}); does --images "
                  "hold this data's images?", PosecalWarning, stacklevel=stacklevel + 1)
