"""oks_nms_per_image groups the rows by image with one sort (it scanned every row once per image: O(N x
images), minutes at COCO-train scale); what it keeps must not change: the same rows as running
:func:`posecal.models.nms.oks_nms` on each image's rows found by a scan."""

from __future__ import annotations

import numpy as np
import pytest

from posecal.keypoints import COCO17
from posecal.models.nms import oks_nms, oks_nms_per_image


def _scan_reference(image_id, kp, ks, score, sigmas, thr, areas):
    kp3 = np.concatenate([kp, ks[..., None]], axis=-1)
    keep = [rows[oks_nms(kp3[rows], score[rows], areas[rows], thr, sigmas)]
            for rows in (np.flatnonzero(image_id == i) for i in np.unique(image_id))]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


@pytest.mark.parametrize("seed", range(8))
def test_per_image_grouping_keeps_what_a_scan_keeps(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 60))
    image_id = rng.choice([7, 3, 11, 5, 2], size=n)  # interleaved, unsorted ids
    centre = rng.uniform(0, 200, (n, 1, 2))
    kp = centre + rng.normal(0, 3 if seed % 2 else 20, (n, 17, 2))
    if n > 3:
        kp[1], image_id[1] = kp[0] + 0.01, image_id[0]  # a near duplicate: something to suppress
    ks = rng.uniform(0, 1.3, (n, 17))
    score = np.round(rng.uniform(0, 1.2, n), 1)  # ties and scores above 1
    areas = rng.uniform(100, 5000, n)
    sig = np.asarray(COCO17.sigmas)
    for thr in (0.9, 0.5):
        got = oks_nms_per_image(image_id, kp, ks, score, sig, thr, areas, show_progress=True)
        want = _scan_reference(image_id, kp, ks, score, sig, thr, areas)
        np.testing.assert_array_equal(got, want)
        assert got.dtype.kind == "i"
    if n > 3:
        assert oks_nms_per_image(image_id, kp, ks, score, sig, 0.5, areas).size < n
