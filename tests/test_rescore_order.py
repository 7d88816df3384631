"""keep_image_order: each image keeps the old detection order, so COCO AR is identical by construction."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from _cocogen import make_coco_set
from posecal.io.coco import load_gt, load_results
from posecal.keypoints import COCO17
from posecal.metrics.cocoeval import evaluate
from posecal.rescore.order import keep_image_order


def _scene(seed):
    gt, res = make_coco_set(seed, n_images=4, max_gts=5, max_dets=12, p_dup=0.4, p_crowd=0.0)
    g = load_gt(gt)
    r = load_results(res, g)
    return g, r, np.array([d["image_id"] for d in res]), np.array([float(d["score"]) for d in res])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_ar_is_identical_and_the_order_is_kept(seed):
    g, r, img, old = _scene(seed)
    new = np.random.default_rng(seed).uniform(0, 1, len(old))
    kept = keep_image_order(img, old, new)
    for i in np.unique(img):
        rows = np.flatnonzero(img == i)
        np.testing.assert_array_equal(rows[np.argsort(-kept[rows], kind="stable")],
                                      rows[np.argsort(-old[rows], kind="stable")])
        # the projection only pools: each image's total is the new one (+ the tie steps)
        assert abs(kept[rows].sum() - new[rows].sum()) < 1e-6
    a, b = evaluate(g, r, scores=old, warn=False), evaluate(g, r, scores=kept, warn=False)
    assert a.stats["AR"] == b.stats["AR"]
    np.testing.assert_array_equal(a.recall, b.recall)


def test_free_reordering_moves_ar_where_two_detections_compete():
    """Two people 20 px apart (OKS 0.33 to each other); d1 between them (OKS 0.57 to g1, 0.73 to g2), d2 on g2.
    d1 first: it takes g2 and d2 is left unmatched (recall 1/2 at OKS 0.5, 0.55); d2 first: both people are
    matched. So rescoring d2 above d1 moves AR — unless the image keeps its old order."""
    rng = np.random.default_rng(0)
    p = rng.uniform(200, 300, (17, 2))
    g1, g2 = p, p + np.array([20.0, 0.0])
    d1, d2 = p + np.array([12.0, 0.0]), g2

    def ann(i, xy):
        kp = np.c_[xy, np.full(17, 2)].ravel().tolist()
        return {"id": i, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 10000.0, "num_keypoints": 17,
                "bbox": [150.0, 150.0, 200.0, 200.0], "keypoints": kp}

    gt = {"images": [{"id": 1, "width": 640, "height": 480, "file_name": "1.jpg"}],
          "annotations": [ann(1, g1), ann(2, g2)],
          "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.names), "skeleton": []}]}
    res = [{"image_id": 1, "category_id": 1, "score": s, "keypoints": np.c_[xy, np.ones(17)].ravel().tolist()}
           for xy, s in ((d1, 0.9), (d2, 0.8))]
    g = load_gt(gt)
    r = load_results(res, g)
    old, new, img = np.array([0.9, 0.8]), np.array([0.1, 0.9]), np.array([1, 1])
    ar = {name: evaluate(g, r, scores=sc, warn=False).stats["AR"]
          for name, sc in (("old", old), ("free", new), ("kept", keep_image_order(img, old, new)))}
    assert ar["free"] > ar["old"] and ar["kept"] == ar["old"]


def test_ordered_scores_are_left_alone_and_lone_detections_untouched():
    img = np.array([1, 1, 1, 2])
    old = np.array([0.9, 0.5, 0.1, 0.3])
    new = np.array([0.8, 0.6, 0.2, 0.7])
    out = keep_image_order(img, old, new)
    np.testing.assert_allclose(out, new + np.array([2e-9, 1e-9, 0, 0]), atol=1e-15)
    # ties in the old score: row order, as pycocotools' stable sort of the results file
    out = keep_image_order(np.array([5, 5]), np.array([0.4, 0.4]), np.array([0.1, 0.9]))
    assert out[0] > out[1]
