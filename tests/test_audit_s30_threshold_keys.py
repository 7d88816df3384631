"""``keypoint_thresholds`` rows carry the same keys whether or not a threshold reaches the target.

Found (session 30, a pipeline persona parsing ``evaluate --json``): a target no threshold reaches was written as
``{"target", "threshold": null, "threshold_reason"}`` only, so ``row["kept"]`` raised a KeyError in a script
that reads the rows. Now such a row keeps nothing (``kept`` 0, ``n_kept`` 0, as ``compare`` counts it) with
``precision`` null; with no keypoint pairs at all ``kept`` is null too.
"""

from __future__ import annotations

import numpy as np

from posecal.calibration.audit import _threshold_rows

KEYS = {"target", "threshold", "kept", "precision", "n_kept", "n"}


def test_rows_have_the_same_keys_reached_or_not():
    c = np.array([0.9, 0.8, 0.7, 0.6])
    ok = np.array([1, 0, 1, 0], bool)  # the most confident is correct: 100 % reachable, 90 % too; none below
    reached, unreached = _threshold_rows(c, ok, (0.9,)) + _threshold_rows(c, ~ok, (0.9,))
    assert KEYS <= set(reached) and reached["threshold"] == 0.9
    assert KEYS <= set(unreached)
    assert unreached["threshold"] is None and unreached["threshold_reason"]
    assert (unreached["kept"], unreached["n_kept"], unreached["n"], unreached["precision"]) == (0.0, 0, 4, None)


def test_no_pairs_row_is_undefined_but_complete():
    (row,) = _threshold_rows(np.zeros(0), np.zeros(0, bool), (0.95,))
    assert KEYS <= set(row) and row["kept"] is None and row["n"] == 0 and row["threshold_reason"]
