"""Keep each image's detection order: new instance scores that leave COCO AR unchanged by construction.

COCOeval matches the detections of an image greedily in decreasing score order (``evaluateImg``: each takes
the best unmatched gt with OKS ≥ t), so a rescoring that reorders the detections *within* an image can change
which gt a detection matches, and with it recall — AR then moves even though no coordinate changed. A
rescoring that only changes how images' detections interleave in the dataset-wide ranking changes AP and never
AR (the per-image matches, hence every TP/FP label, stay the same).

:func:`keep_image_order` projects new scores onto that set: per image, the isotonic (least-squares,
non-increasing) regression of the new scores along the old order (pool-adjacent-violators; Barlow et al.
1972), then ties broken in the old order by ≤ (n − 1)·1e-9 (by one float spacing per place where the scores are so
large that 1e-9 is below it) so the order is strict. Numpy + scipy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TIE_STEP", "keep_image_order"]

TIE_STEP = 1e-9
"""Added per place (the last detection of an image gets 0, the first (n − 1)·TIE_STEP) so pooled scores keep the
old order strictly."""


def keep_image_order(image_id: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``(N,)`` scores closest to ``new`` (least squares, per image) that order every image's detections as
    ``old`` does.

    Args:
        image_id: (N,) image of each detection.
        old: (N,) the scores whose per-image order is kept (e.g. the store's own MMPose score); ties are
            ordered by row, as pycocotools' stable sort orders tied detections of the results file.
        new: (N,) the new scores (e.g. CCNet's).

    Detections alone in their image keep their new score; so does every image whose new scores already
    follow the old order (up to the tie step).

    >>> keep_image_order(np.array([1, 1, 2]), np.array([0.9, 0.5, 0.7]), np.array([0.2, 0.6, 0.3])).round(6)
    array([0.4, 0.4, 0.3])
    """
    from scipy.optimize import isotonic_regression

    image_id = np.asarray(image_id)
    old = np.asarray(old, np.float64).reshape(-1)
    new = np.asarray(new, np.float64).reshape(-1)
    if not (len(image_id) == len(old) == len(new)):
        raise ValueError(f"image_id, old and new must have one length; got {len(image_id)}, {len(old)}, {len(new)}")
    out = new.copy()
    _, img = np.unique(image_id, return_inverse=True)  # any hashable, sortable ids -> 0..I-1
    img = img.reshape(-1)
    order = np.lexsort((np.arange(len(old)), -old, img))  # by image, then old score down, then row
    bounds = np.flatnonzero(np.diff(img[order])) + 1
    for rows in np.split(order, bounds):
        n = len(rows)
        if n < 2:
            continue
        y = isotonic_regression(new[rows], increasing=False).x
        z = y + TIE_STEP * np.arange(n - 1, -1, -1)
        if np.any(np.diff(z) >= 0):  # |score| ≳ 4e6: the step is below the float spacing; step by ulps instead
            for i in range(n - 2, -1, -1):
                if z[i] <= z[i + 1]:
                    z[i] = np.nextafter(z[i + 1], np.inf)
        out[rows] = z
    return out
