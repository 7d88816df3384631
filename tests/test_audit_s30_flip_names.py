"""Mirror partners of keypoint names, for ``extract --flip`` and the keypoint sets' flip pairs (session 30).

Found by the custom-skeleton audit: ``flip_index`` paired only names containing ``left`` / ``right``, so an
animal skeleton named ``L_ear`` / ``R_ear`` or ``paw_l`` / ``paw_r`` was left unpaired and ``--flip`` averaged each
left joint with the mirrored image's *same* (now right-side) joint; the keypoint sets' own flip pairs knew
``l_`` prefixes but not ``ear_left`` suffixes. Both now use :func:`posecal.keypoints.mirror_name`.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from posecal.keypoints import KEYPOINT_SETS, MMPOSE_EVAL_SETS, _norm, custom_keypoint_set, mirror_name
from posecal.models.adapters.joints import flip_index


def _old_flip_index(names):
    """The rule before: substring left <-> right only."""
    idx = {_norm(str(n)): i for i, n in enumerate(names)}
    perm = np.arange(len(names))
    for n, i in idx.items():
        for a, b in (("left", "right"), ("right", "left")):
            m = n.replace(a, b)
            if m != n and m in idx:
                perm[i] = idx[m]
    return perm


def test_builtin_sets_pair_as_before():
    for ks in (*KEYPOINT_SETS.values(), *MMPOSE_EVAL_SETS.values()):
        np.testing.assert_array_equal(flip_index(ks.names), _old_flip_index(ks.names), err_msg=ks.name)
        perm = ks.flip_index()
        np.testing.assert_array_equal(perm, flip_index(ks.names), err_msg=ks.name)


def test_animal_style_names_pair():
    names = ["nose", "L_ear", "R_ear", "paw_l", "paw_r", "LeftEye", "RightEye", "tail_base", "tail_tip",
             "lt_hock", "rt_hock"]
    perm = flip_index(names)
    assert perm.tolist() == [0, 2, 1, 4, 3, 6, 5, 7, 8, 10, 9]  # was: [0, 1, 2, 3, 4, 6, 5, 7, 8, 9, 10]
    pairs = custom_keypoint_set(names, [0.05] * len(names)).flip_pairs
    assert pairs == ((1, 2), (3, 4), (5, 6), (9, 10))


_TOKENS = st.sampled_from(["l", "r", "left", "right", "ear", "paw", "lt", "rt", "tail", "leftear", "x"])


@given(st.lists(st.lists(_TOKENS, min_size=1, max_size=3).map("_".join), min_size=1, max_size=8, unique=True))
def test_mirror_is_an_involution_and_flip_index_a_permutation(names):
    for n in names:
        assert mirror_name(mirror_name(n)) == n
    perm = flip_index(names)
    assert sorted(perm.tolist()) == list(range(len(names)))
    np.testing.assert_array_equal(perm[perm], np.arange(len(names)))
