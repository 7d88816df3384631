"""The learned-NMS context stage (posecal.ccnet.context): features against a brute-force reference, the
stacked logistic stage, and its checkpoint round trip."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posecal.ccnet.context import CONTEXT_NAMES, ContextStage, context_features, instance_target
from posecal.errors import PosecalInputError
from posecal.keypoints import COCO17
from posecal.models.nms import oks_iou


def _reference(image_id, kp, box, score, sigmas):
    """Row by row, pair by pair: OKS from posecal.models.nms.oks_iou (MMPose's), IoU by hand."""
    N = len(image_id)
    out = np.zeros((N, len(CONTEXT_NAMES)))
    area = np.maximum(box[:, 2] * box[:, 3], 1.0)
    for i in range(N):
        same = [j for j in range(N) if image_id[j] == image_id[i]]
        # rank: rows of the image with a higher score, or an equal score and an earlier row
        above = [j for j in same if score[j] > score[i] or (score[j] == score[i] and j < i)]
        oks, iou = [], []
        for j in above:
            g = np.c_[kp[j], np.zeros(len(kp[j]))].ravel()
            d = np.c_[kp[i], np.zeros(len(kp[i]))].ravel()[None]
            oks.append(float(oks_iou(g, d, area[j], area[i:i + 1], sigmas)[0]))
            x0, y0 = max(box[i, 0], box[j, 0]), max(box[i, 1], box[j, 1])
            x1 = min(box[i, 0] + box[i, 2], box[j, 0] + box[j, 2])
            y1 = min(box[i, 1] + box[i, 3], box[j, 1] + box[j, 3])
            inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
            iou.append(inter / max(box[i, 2] * box[i, 3] + box[j, 2] * box[j, 3] - inter, 1e-12))
        best = max(score[j] for j in same)
        out[i] = [np.log1p(len(above)), score[i] / best if best > 0 else 1.0,
                  max(oks, default=0.0), np.log1p(sum(o > 0.5 for o in oks)),
                  max(iou, default=0.0), np.log1p(sum(u > 0.5 for u in iou))]
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(0, 10_000), st.integers(1, 3))
def test_context_features_match_brute_force(n, seed, n_img):
    rng = np.random.default_rng(seed)
    image_id = rng.integers(0, n_img, n)
    xy = rng.uniform(0, 100, (n, 2))
    box = np.c_[xy, rng.uniform(5, 60, (n, 2))]
    kp = box[:, None, :2] + rng.uniform(0, 1, (n, 17, 2)) * box[:, None, 2:]
    if n > 1:  # a near-duplicate of row 0, and a score tie
        kp[1], box[1] = kp[0] + rng.normal(0, 1, (17, 2)), box[0]
        image_id[1] = image_id[0]
    score = np.round(rng.uniform(0, 1, n), 1)
    got = context_features(image_id, kp, box, score, COCO17.sigmas)
    np.testing.assert_allclose(got, _reference(image_id, kp, box, score, COCO17.sigmas), rtol=1e-5, atol=1e-6)


def test_context_features_are_permutation_equivariant_and_lone_rows_are_neutral():
    rng = np.random.default_rng(1)
    n = 12
    image_id = np.repeat([3, 7, 9], 4)
    box = np.c_[rng.uniform(0, 50, (n, 2)), rng.uniform(10, 40, (n, 2))]
    kp = box[:, None, :2] + rng.uniform(0, 1, (n, 17, 2)) * box[:, None, 2:]
    score = rng.uniform(0, 1, n)
    f = context_features(image_id, kp, box, score, COCO17.sigmas)
    p = rng.permutation(n)
    np.testing.assert_allclose(context_features(image_id[p], kp[p], box[p], score[p], COCO17.sigmas), f[p],
                               rtol=1e-6)
    lone = context_features(np.array([5]), kp[:1], box[:1], score[:1], COCO17.sigmas)
    np.testing.assert_array_equal(lone, [[0, 1, 0, 0, 0, 0]])
    # the best detection of every image has nothing above it
    for iid in (3, 7, 9):
        r = np.flatnonzero(image_id == iid)
        top = r[np.argmax(score[r])]
        np.testing.assert_array_equal(f[top], [0, 1, 0, 0, 0, 0])


def test_instance_target_averages_the_seen_keypoints():
    oks = np.array([[0.5, np.nan, 1.0], [0, 0, 0], [np.nan, np.nan, np.nan]])
    mask = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0]], bool)
    np.testing.assert_allclose(instance_target(oks, mask), [0.75, 0.0, 0.0])


def test_context_stage_learns_to_demote_duplicates_and_round_trips():
    rng = np.random.default_rng(0)
    n = 600
    c = rng.uniform(0.05, 0.95, n)
    ctx = np.zeros((n, 6))
    dup = rng.uniform(size=n) < 0.4
    ctx[:, 2] = np.where(dup, rng.uniform(0.6, 1.0, n), rng.uniform(0, 0.3, n))  # max OKS to a better detection
    t = np.where(dup, 0.0, c)
    st_ = ContextStage().fit(c, ctx, t)
    out = st_.transform(c, ctx)
    assert out[dup].mean() < 0.5 * c[dup].mean() and out[~dup].mean() > 0.8 * c[~dup].mean()
    # better than the head's score alone, in the stage's own loss
    ce = lambda p: -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))  # noqa: E731
    assert ce(out) < ce(c)
    st2 = ContextStage.from_arrays(st_.arrays())
    np.testing.assert_array_equal(st2.transform(c, ctx), out)
    bad = st_.arrays()
    bad["coef"] = bad["coef"][:-1]
    with pytest.raises(ValueError, match="coef"):
        ContextStage.from_arrays(bad)
    with pytest.raises(ValueError, match="not fitted"):
        ContextStage().transform(c, ctx)


def test_checkpoint_carries_the_context_stage(tmp_path):
    import json

    from posecal.ccnet.checkpoint import load_head, save_head
    from posecal.ccnet.heads import build_head

    head = build_head("kpt", (17, 8), 17)
    rng = np.random.default_rng(0)
    c, ctx = rng.uniform(0.1, 0.9, 50), rng.uniform(0, 1, (50, 6))
    head.context_stage = ContextStage().fit(c, ctx, c * (ctx[:, 2] < 0.5))
    save_head(tmp_path / "H", head, {"keypoint_set": "coco17", "context": {"features": list(CONTEXT_NAMES)}})
    h2, meta = load_head(tmp_path / "H")
    np.testing.assert_array_equal(h2.context_stage.transform(c, ctx), head.context_stage.transform(c, ctx))
    # a head without the stage drops a stale "context" key instead of naming a file it does not write
    save_head(tmp_path / "H0", build_head("kpt", (17, 8), 17), {"keypoint_set": "coco17", "context": {}})
    assert "context" not in json.loads((tmp_path / "H0" / "head.json").read_text())
    assert not hasattr(load_head(tmp_path / "H0")[0], "context_stage")
    (tmp_path / "H" / "context.safetensors").unlink()
    with pytest.raises(PosecalInputError, match="context.safetensors"):
        load_head(tmp_path / "H")


def test_context_features_stay_finite_on_non_finite_coordinates():
    kp = np.zeros((3, 17, 2))
    kp[1, 0] = np.nan
    box = np.array([[0, 0, 10, 10], [0, 0, np.nan, 10], [1, 1, 10, 10.0]])
    f = context_features(np.array([1, 1, 1]), kp, box, np.array([0.9, 0.5, 0.3]), COCO17.sigmas)
    assert np.isfinite(f).all()
    assert f[1, 2] == 0 and f[2, 2] == 1.0  # the NaN row overlaps nothing; row 2 duplicates row 0


def test_own_scores_name_the_bad_record():
    from posecal.ccnet.context import own_scores

    np.testing.assert_array_equal(own_scores([{"score": 0.5}, {"score": 2}]), [0.5, 2.0])  # > 1 is legal
    for bad in ("0.5", None, float("nan"), True):
        with pytest.raises(PosecalInputError) as e:
            own_scores([{"score": 0.1}, {"score": bad}], "S/predictions.json")
        assert e.value.record == 1 and e.value.field == "score" and "S/predictions.json" in str(e.value)
