"""Audit: ``posecal apply`` (default: each image keeps the detection order of the store's own score) leaves every
COCO AR stat identical — against pycocotools itself, not only posecal's evaluator.

What COCOeval's AR depends on, and what is exercised here: per image (and category) the detections sorted by
score (stable mergesort, ties in results-file order) and cut at maxDets 20, then greedy matching per OKS threshold
and area range; crowd regions and gts without labelled keypoints (ignored); string image ids; a second category;
more than 20 detections per image (the top-20 cut); tied old scores, scores 0, tied / all-equal / zero new scores.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _cocogen import make_coco_set
from posecal.io.coco import load_gt, load_results
from posecal.keypoints import COCO17, LSP14
from posecal.metrics.cocoeval import STAT_NAMES, evaluate
from posecal.rescore.order import keep_image_order

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

AR = slice(5, 10)  # AR, AR50, AR75, ARm, ARl in COCOeval.stats


def _pycoco(gt: dict, res: list, sigmas: np.ndarray | None = None) -> np.ndarray:
    """COCOeval(iouType='keypoints').stats (10,) of a results list (``sigmas``: OKS sigmas other than COCO's)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(res)), "keypoints")
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, np.float64)


def _posecal(gt: dict, res: list) -> np.ndarray:
    g = load_gt(copy.deepcopy(gt))
    ev = evaluate(g, load_results(copy.deepcopy(res), g), warn=False)
    return np.array([ev.stats[k] for k in STAT_NAMES])


def _string_ids(gt: dict, res: list) -> tuple[dict, list]:
    gt = copy.deepcopy(gt)
    for im in gt["images"]:
        im["id"] = f"im{im['id']}"
    for a in gt["annotations"]:
        a["image_id"] = f"im{a['image_id']}"
    return gt, [dict(r, image_id=f"im{r['image_id']}") for r in res]


_NEW = st.one_of(
    st.tuples(st.just("uniform"), st.integers(0, 2**32 - 1)),  # free floats in [0, 1]
    st.tuples(st.just("pool"), st.integers(0, 2**32 - 1)),  # few distinct values: ties everywhere, zeros
    st.tuples(st.just("equal"), st.integers(0, 2**32 - 1)),  # every detection the same new score
    st.tuples(st.just("reversed"), st.integers(0, 2**32 - 1)),  # the old order turned upside down
)


def _new_scores(kind: str, seed: int, old: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(old)
    if kind == "uniform":
        return rng.uniform(0, 1, n)
    if kind == "pool":
        return rng.choice([0.0, 0.0, 0.25, 0.5, 1.0], n)
    if kind == "equal":
        return np.full(n, float(rng.choice([0.0, 0.3, 1.0])))
    return 1.0 - old  # reversed: the projection must pool every image to one value (+ tie steps)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), new=_NEW, strings=st.booleans(), two_cats=st.booleans(),
       with_bbox=st.booleans())
def test_kept_order_leaves_every_pycocotools_ar_stat_identical(seed, new, strings, two_cats, with_bbox):
    gt, res = make_coco_set(seed, n_images=4, max_gts=6, max_dets=30, p_crowd=0.2, p_tie=0.5,
                            p_zero_score=0.2, two_categories=two_cats, result_bbox=with_bbox, p_dup=0.3)
    if not res:
        return
    if strings:
        gt, res = _string_ids(gt, res)
    img = np.array([r["image_id"] for r in res])
    old = np.array([float(r["score"]) for r in res])
    # score-0 ties among the old scores too (the store's bbox_keypoint score is 0 when no keypoint passes 0.2)
    old = np.where(np.random.default_rng(seed).uniform(size=len(old)) < 0.15, 0.0, old)
    res = [dict(r, score=float(s)) for r, s in zip(res, old, strict=True)]
    kept = keep_image_order(img, old, _new_scores(*new, old))
    assert np.isfinite(kept).all()
    out = [dict(r, score=float(s)) for r, s in zip(res, kept, strict=True)]
    out = orjson.loads(orjson.dumps(out))  # the JSON round trip apply's file takes
    before, after = _pycoco(gt, res), _pycoco(gt, out)
    np.testing.assert_array_equal(after[AR], before[AR])
    # posecal's evaluator agrees with pycocotools on the rescored file, AP included
    np.testing.assert_array_equal(_posecal(gt, out), after)


def _ann(i: int, img: int, xy: np.ndarray) -> dict:
    return {"id": i, "image_id": img, "category_id": 1, "iscrowd": 0, "area": 10000.0, "num_keypoints": 17,
            "bbox": [100.0, 100.0, 100.0, 100.0], "keypoints": np.c_[xy, np.full(17, 2)].ravel().tolist()}


def test_the_top20_cut_keeps_its_detections():
    """An image with 25 detections: the 24 best by the old score miss the only person, the last one hits it. Free
    rescoring lifts the hit into the top 20 (AR 0 -> 1); the kept order leaves it cut, as before (AR 0)."""
    rng = np.random.default_rng(3)
    p = rng.uniform(100, 200, (17, 2))
    gt = {"images": [{"id": 7, "width": 640, "height": 480, "file_name": "7.jpg"}],
          "annotations": [_ann(1, 7, p)],
          "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.names), "skeleton": []}]}
    res = []
    for j in range(25):
        xy = p if j == 24 else p + np.array([300.0, 200.0]) + rng.normal(0, 5, (17, 2))
        res.append({"image_id": 7, "category_id": 1, "score": round(1 - j / 50, 2),
                    "keypoints": np.c_[xy, np.ones(17)].ravel().tolist()})
    old = np.array([r["score"] for r in res])
    new = np.r_[np.full(24, 0.1), 0.9]
    img = np.full(25, 7)
    free = [dict(r, score=float(s)) for r, s in zip(res, new, strict=True)]
    kept = [dict(r, score=float(s)) for r, s in zip(res, keep_image_order(img, old, new), strict=True)]
    b, f, k = _pycoco(gt, res), _pycoco(gt, free), _pycoco(gt, kept)
    assert b[5] == 0 and f[5] == 1
    np.testing.assert_array_equal(k[AR], b[AR])


# ---- end to end: posecal apply on a synthetic detection store ----------------------------------------------
def _det_store(path, *, seed: int = 1, n_img: int = 4, per_img: int = 26):
    """A detection store (meta ``boxes``) with ``per_img`` detections per image (> 20: the top-20 cut matters)
    around 3 people, own scores with ties and zeros (raw keypoint scores from a pool; box score 0 on some rows),
    in the settings of tests/test_ccnet_cli.py's make_store (so its head applies)."""
    from posecal.models.store import StoreWriter

    K = LSP14.num_keypoints
    rng = np.random.default_rng(seed)
    images, anns, rows = [], [], []
    for im in range(1, n_img + 1):
        images.append({"id": im, "file_name": f"{im}.jpg", "width": 400, "height": 400})
        people = [rng.uniform(40, 360, (K, 2)) * 0.3 + rng.uniform(0, 250, 2) for _ in range(3)]
        for p in people:
            anns.append({"id": len(anns) + 1, "image_id": im, "category_id": 1, "iscrowd": 0, "area": 6000.0,
                         "bbox": [float(p[:, 0].min()), float(p[:, 1].min()), 100.0, 100.0],
                         "keypoints": np.c_[p, np.full(K, 2)].ravel().tolist(), "num_keypoints": K})
        for _ in range(per_img):
            p = people[int(rng.integers(0, 3))]
            err = float(np.exp(rng.uniform(0, 3.5)))
            rows.append((im, p + rng.normal(0, err, (K, 2)), err))
    N = len(rows)
    kp = np.stack([r[1] for r in rows])
    err = np.array([r[2] for r in rows])
    feats = np.concatenate([np.log(err)[:, None, None] + 0.3 * rng.normal(size=(N, K, 1)),
                            rng.normal(size=(N, K, 5))], -1).astype(np.float32)
    raw = rng.choice([0.1, 0.3, 0.6, 0.9], (N, K))
    raw[rng.uniform(size=N) < 0.2] = 0.1  # no keypoint above 0.2: own score 0
    box = rng.choice([0.0, 0.5, 1.0], N)
    settings = {"model_sha256": "abc", "tensor": "feat", "keypoint_set": "lsp14", "keypoint_names": list(LSP14.names),
                "pooling": "heatmap", "input_size": [200, 200], "boxes": {"file": "DET.json", "sha256": "0"}}
    w = StoreWriter(path, num_instances=N, chunk_size=64, settings=settings)
    for j in w.pending_chunks():
        a, b = w.chunk_rows(j)
        w.write_chunk(j, {
            "image_id": np.array([r[0] for r in rows[a:b]], np.int64), "ann_id": np.zeros(b - a, np.int64),
            "bbox": np.c_[kp[a:b].min(1), kp[a:b].max(1) - kp[a:b].min(1)], "box_score": box[a:b],
            "crop_transform": np.tile(np.eye(2, 3), (b - a, 1, 1)), "keypoints": kp[a:b], "scores": raw[a:b],
            "sigma_hat": np.full((b - a, K), np.nan), "features_kpt": feats[a:b]})
    w.finalize(gt={"images": images, "annotations": anns,
                   "categories": [{"id": 1, "name": "person", "keypoints": list(LSP14.names), "skeleton": []}]})
    return path


@pytest.fixture(scope="module")
def det_apply(tmp_path_factory):
    pytest.importorskip("torch")
    from posecal.cli import main
    from test_ccnet_cli import make_store

    d = tmp_path_factory.mktemp("s27")
    assert main(["fit", "--store", str(make_store(d / "train", N=96)), "--out", str(d / "head"), "--steps", "60",
                 "--batch-size", "32", "--lr", "1e-2"]) == 0
    store = _det_store(d / "det")
    for name, extra in (("kept", []), ("free", ["--reorder"])):
        assert main(["apply", "--store", str(store), "--head", str(d / "head"), "--out", str(d / f"{name}.json"),
                     *extra]) == 0
    return d, store


def test_apply_on_a_crowded_detection_store_keeps_every_ar_stat(det_apply):
    d, store = det_apply
    gt = orjson.loads((store / "gt.json").read_bytes())
    before = orjson.loads((store / "predictions.json").read_bytes())
    kept = orjson.loads((d / "kept.json").read_bytes())
    free = orjson.loads((d / "free.json").read_bytes())
    own = np.array([r["score"] for r in before])
    img = np.array([r["image_id"] for r in before])
    assert np.bincount(img).max() > 20 and (own == 0).sum() > 2 and len(np.unique(own)) < len(own)  # cut, ties
    b, k = _pycoco(gt, before, LSP14.sigmas), _pycoco(gt, kept, LSP14.sigmas)
    np.testing.assert_array_equal(k[AR], b[AR])
    assert _pycoco(gt, free, LSP14.sigmas)[5] != b[5]  # a store where the order matters: --reorder moves AR
    np.testing.assert_array_equal(_posecal(gt, kept), k)
    np.testing.assert_array_equal(_posecal(gt, before), b)
    new = np.array([r["score"] for r in kept])
    for i in np.unique(img):  # each image's order is the old one, strictly (no tie left to the file order)
        r = np.flatnonzero(img == i)
        np.testing.assert_array_equal(r[np.argsort(-new[r], kind="stable")], r[np.argsort(-own[r], kind="stable")])
        assert len(np.unique(new[r])) == len(r)


def test_apply_cli_evaluate_gives_identical_ar(det_apply, capsys):
    """What the issue's check runs: ``posecal evaluate --json -`` on predictions.json and on apply's file."""
    from posecal.cli import main

    d, store = det_apply
    stats = {}
    for name, pred in (("before", store / "predictions.json"), ("kept", d / "kept.json")):
        capsys.readouterr()
        assert main(["evaluate", "--gt", str(store / "gt.json"), "--pred", str(pred), "--json", "-"]) == 0
        stats[name] = orjson.loads(capsys.readouterr().out)["coco"]
    for key in ("AR", "AR50", "AR75", "ARm", "ARl"):
        assert stats["kept"][key] == stats["before"][key], key


def test_records_without_a_positive_keypoint_score_keep_them_for_xtcocotools():
    """xtcocotools (MMPose's evaluator, `--flavor xtcocotools`) drops detections whose keypoint scores are all
    <= 0. Before, apply wrote ŝ > 0 over them, so they took part after rescoring and AR moved under that flavor
    (a synthetic store: 0.875 -> 0.958); now such a record keeps its scores, and AR is identical."""
    from posecal.ccnet.apply import rescore_records
    from posecal.io.coco import load_gt, load_results
    from posecal.metrics.cocoeval import evaluate

    rng = np.random.default_rng(0)
    K, n_img = 17, 6
    names = [f"k{i}" for i in range(K)]
    imgs = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(1, n_img + 1)]
    anns, recs = [], []
    for i in range(1, n_img + 1):
        xy = rng.uniform(100, 300, (K, 2))
        anns.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "num_keypoints": K, "area": 20000.0,
                     "bbox": [100, 100, 200, 200],
                     "keypoints": np.concatenate([xy, np.full((K, 1), 2.0)], 1).ravel().tolist()})
        for j in range(3):  # a good detection, a worse one, a poor one per image
            p = xy + rng.normal(0, 3 + 15 * j, xy.shape)
            sc = np.zeros(K) if j == 0 and i % 2 else rng.uniform(0.1, 1, K)  # every other best: all scores 0
            recs.append({"image_id": i, "category_id": 1, "score": float(1 - 0.3 * j),
                         "keypoints": np.concatenate([p, sc[:, None]], 1).ravel().tolist()})
    gt = load_gt({"images": imgs, "annotations": anns, "categories": [{"id": 1, "name": "person",
                                                                        "keypoints": names}]})
    s_hat = rng.uniform(0.2, 0.9, (len(recs), K))
    new = rescore_records(recs, s_hat, rng.uniform(0.5, 1, (len(recs), K)),
                          instance=np.array([r["score"] for r in recs]))
    for r, n in zip(recs, new, strict=True):
        if max(r["keypoints"][2::3]) <= 0:
            assert n["keypoints"] == r["keypoints"]
        else:
            np.testing.assert_array_equal(n["keypoints"][2::3], s_hat[recs.index(r)])
    before = evaluate(gt, load_results(recs, gt), flavor="xtcocotools", sigmas=np.full(K, 0.05), warn=False)
    after = evaluate(gt, load_results(new, gt), flavor="xtcocotools", sigmas=np.full(K, 0.05), warn=False)
    ar = ("AR", "AR50", "AR75", "ARm", "ARl")
    assert [after.stats[k] for k in ar] == [before.stats[k] for k in ar]
    # the rows kept out by xtcocotools are the ones whose scores stayed <= 0: without that, AR moved
    moved = [dict(r, keypoints=n["keypoints"][:2] + [0.5] + n["keypoints"][3:]) if max(r["keypoints"][2::3]) <= 0
             else n for r, n in zip(recs, new, strict=True)]
    third = evaluate(gt, load_results(moved, gt), flavor="xtcocotools", sigmas=np.full(K, 0.05), warn=False)
    assert [third.stats[k] for k in ar] != [before.stats[k] for k in ar]


def test_rescore_keeps_keypoint_scores_of_records_without_a_positive_one():
    """The same rule for `posecal rescore`'s writers (RescoreResult.to_records): before, the closed form wrote
    l²/(σ²+l²) > 0 over a record whose keypoint scores were all 0, which xtcocotools then stopped dropping."""
    from posecal.io.coco import load_results
    from posecal.rescore.base import RescoreResult

    recs = [{"image_id": 1, "category_id": 1, "score": 0.9, "keypoints": [10.0, 20.0, 0.0] * 17},
            {"image_id": 1, "category_id": 1, "score": 0.8, "keypoints": [10.0, 20.0, 0.5] * 17}]
    pred = load_results(recs)
    out = RescoreResult(np.full((2, 17), 0.7), np.array([0.6, 0.5])).to_records(pred)
    assert out[0]["keypoints"] == recs[0]["keypoints"] and out[0]["score"] == 0.6
    assert out[1]["keypoints"][2::3] == [0.7] * 17 and out[1]["score"] == 0.5
