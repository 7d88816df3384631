"""Rescorers: MMPose modes, closed form (Table-1 ordering on the simulator), calibrators, JSON, CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from posecal import theory
from posecal.errors import PosecalInputError
from posecal.io.coco import load_gt, load_results
from posecal.keypoints import COCO17
from posecal.metrics.cocoeval import evaluate
from posecal.rescore import (
    ClosedFormRescorer,
    IsotonicRescorer,
    LogLogRescorer,
    Rescorer,
    _pava,
    get_rescorer,
    instance_score,
    match_to_gt,
)
from posecal.theory.simulate import simulate


def _load(sim, model="heatmap"):
    gt = load_gt(sim.gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = load_results(sim.heatmap_results if model == "heatmap" else sim.rle_results, gt)
    return gt, res


@pytest.fixture(scope="module")
def sims():
    return {seed: simulate(2000, seed=seed) for seed in (0, 1)}


# --- MMPose modes -------------------------------------------------------------------------------
def _mmpose_reference(kpt_scores, bbox_score, mode, thr=0.2):
    """Transcription of MMPose 1.x CocoMetric.compute_metrics' per-instance loop."""
    out = []
    for s, b in zip(kpt_scores, bbox_score, strict=True):
        if mode == "bbox":
            out.append(b)
        elif mode == "keypoint":
            out.append(np.mean(s))
        elif mode == "bbox_rle":
            out.append(float(b + np.mean(s) + np.max(s)))
        else:
            mean_kpt_score, valid_num = 0, 0
            for v in s:
                if v > thr:
                    mean_kpt_score += v
                    valid_num += 1
            if valid_num != 0:
                mean_kpt_score /= valid_num
            out.append(b * mean_kpt_score)
    return np.array(out)


@pytest.mark.parametrize("mode", ["bbox", "keypoint", "bbox_keypoint", "bbox_rle"])
def test_mmpose_modes_match_reference(mode):
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 1.2, (300, 17))
    s[:5] = 0.1  # no keypoint above the threshold -> 0
    s[5, 3] = 0.2  # exactly at the threshold is not counted
    b = rng.uniform(0.3, 1, 300)
    got, want = instance_score(s, mode, b, 0.2), _mmpose_reference(s, b, mode)
    if mode in ("bbox", "bbox_keypoint"):  # the default rule: bit for bit
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_mmpose_rescorer_uses_bbox_score_and_keeps_keypoints(sims):
    gt, res = _load(sims[0])
    for r in res.records:
        r["bbox_score"] = 0.5
    out = get_rescorer("mmpose-bbox_keypoint").transform(res)
    np.testing.assert_array_equal(out.keypoint_scores, res.keypoints[..., 2])
    np.testing.assert_allclose(
        out.instance_scores, 0.5 * np.array([r["score"] for r in sims[0].heatmap_results])
    )


def test_visibility_aggregation(sims):
    s = np.array([[0.9, 0.5, 0.1], [0.3, 0.3, 0.3]])
    v = np.array([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(instance_score(s, "visibility", visibility=v), [(0.9 + 0.25) / 1.5, 0.0])
    gt, res = _load(sims[0])
    with pytest.raises(PosecalInputError, match="visibility"):
        get_rescorer("visibility").transform(res)
    with pytest.raises(PosecalInputError, match="visibility"):
        ClosedFormRescorer(aggregate="visibility").transform(res, gt)
    vis = (sims[0].visibility > 0).astype(float)
    out = get_rescorer("visibility").transform(res, visibility=vis)
    np.testing.assert_allclose(out.instance_scores, (res.keypoints[..., 2] * vis).sum(1) / vis.sum(1))


# --- closed form --------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["heatmap", "rle"])
def test_closed_form_table1_ordering_on_simulation(sims, model):
    """Table 1 on the simulator: AP(raw) < AP(pred area) < AP(gt area); AR identical for every scoring."""
    for sim in sims.values():
        gt, res = _load(sim, model)
        raw = evaluate(gt, res)
        ap = {}
        for area in ("gt", "pred", "mean"):
            r = ClosedFormRescorer(area=area, model=model).fit(res, gt)
            e = evaluate(gt, res, scores=r.transform(res, gt).instance_scores)
            ap[area] = e.stats["AP"]
            assert e.stats["AR"] == raw.stats["AR"]
        assert raw.stats["AP"] < ap["pred"] < ap["gt"], (raw.stats["AP"], ap)
        assert ap["mean"] < raw.stats["AP"]  # as in Table 1, one dataset-wide area hurts


def test_closed_form_with_true_sigma_is_eq12(sims):
    sim = sims[0]
    gt, res = _load(sim)
    r = ClosedFormRescorer(area="gt", aggregate="mean")
    out = r.transform(res, gt, sigma=sim.sigma)
    want = theory.perfect_expected_oks(sim.sigma**2, theory.oks_l2(COCO17.sigmas[None], sim.area[:, None]))
    np.testing.assert_allclose(out.keypoint_scores, want, rtol=1e-12)
    np.testing.assert_allclose(out.instance_scores, want.mean(1))
    # sigma recovered from noise-free heatmap peaks of perfect predictions is the true sigma
    sim0 = simulate(200, seed=9, score_noise=0.0, pred_error=0.0, gross_error_rate=0.0)
    gt0, res0 = _load(sim0)
    sig = ClosedFormRescorer().sigma_from_scores(res0)
    np.testing.assert_allclose(sig, sim0.sigma, rtol=1e-9)
    sig_rle = ClosedFormRescorer(model="rle").sigma_from_scores(_load(sim0, "rle")[1])
    np.testing.assert_allclose(sig_rle, sim0.sigma, rtol=1e-9)


def test_closed_form_areas_and_json_round_trip(sims):
    sim = sims[1]
    gt, res = _load(sim)
    m = match_to_gt(res, gt)
    np.testing.assert_array_equal(m, np.arange(len(res)))  # one person per image, in file order
    r = ClosedFormRescorer(area="mean").fit(res, gt)
    assert r.mean_area == pytest.approx(sim.area.mean())
    r2 = Rescorer.from_json(json.loads(json.dumps(r.to_json())))
    assert isinstance(r2, ClosedFormRescorer) and r2.mean_area == r.mean_area
    np.testing.assert_array_equal(r2.transform(res).keypoint_scores, r.transform(res).keypoint_scores)
    p = ClosedFormRescorer(area="pred").transform(res)
    want = theory.perfect_expected_oks(
        ClosedFormRescorer().sigma_from_scores(res) ** 2,
        theory.oks_l2(COCO17.sigmas[None], (sim.bbox[:, 2] * sim.bbox[:, 3])[:, None]),
    )
    np.testing.assert_allclose(p.keypoint_scores, want, rtol=1e-12)
    with pytest.raises(PosecalInputError, match="needs the ground truth"):
        ClosedFormRescorer(area="gt").transform(res)


def test_to_records_changes_only_scores(sims):
    gt, res = _load(sims[0])
    out = ClosedFormRescorer().transform(res, gt)
    recs = out.to_records(res)
    for a, b, ks, s in zip(
        res.records[:50], recs[:50], out.keypoint_scores, out.instance_scores, strict=False
    ):
        assert a["keypoints"][0::3] == b["keypoints"][0::3] and a["keypoints"][1::3] == b["keypoints"][1::3]
        assert b["keypoints"][2::3] == pytest.approx(ks.tolist()) and b["score"] == pytest.approx(s)
        assert {k: v for k, v in a.items() if k not in ("keypoints", "score")} == {
            k: v for k, v in b.items() if k not in ("keypoints", "score")
        }
    assert res.records[0]["keypoints"] is not recs[0]["keypoints"]  # input untouched


# --- learned calibrators ------------------------------------------------------------------------
def test_pava_known_answer_and_monotone():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    ux, y = _pava(x, np.array([1.0, 3.0, 2.0, 4.0]), np.ones(4))
    np.testing.assert_allclose(y, [1, 2.5, 2.5, 4])
    rng = np.random.default_rng(0)
    xs = rng.uniform(size=500)
    _, yy = _pava(xs, xs + rng.normal(0, 0.3, 500), np.ones(500))
    assert np.all(np.diff(yy) >= -1e-12)


def _keypoint_brier(sim, scores):
    """Mean squared gap between a keypoint score and the realised keypoint OKS (labelled keypoints)."""
    l2 = theory.oks_l2(COCO17.sigmas[None], sim.area[:, None])
    oks = np.exp(-((sim.pred_heatmap - sim.gt_xy) ** 2).sum(-1) / (2 * l2))
    lab = sim.visibility > 0
    return float(((scores - oks)[lab] ** 2).mean())


@pytest.mark.parametrize("method", ["isotonic", "loglog"])
def test_learned_calibrators_improve_keypoint_calibration(sims, method):
    """Fit on seed 0, apply to seed 1: scores closer to the realised keypoint OKS; JSON round trip."""
    gt0, res0 = _load(sims[0])
    gt1, res1 = _load(sims[1])
    r = get_rescorer(method).fit(res0, gt0)
    out = r.transform(res1)
    assert _keypoint_brier(sims[1], out.keypoint_scores) < _keypoint_brier(sims[1], res1.keypoints[..., 2])
    assert np.all((out.keypoint_scores >= 0) & (out.keypoint_scores <= 1))
    r2 = Rescorer.from_json(json.loads(json.dumps(r.to_json())))
    np.testing.assert_array_equal(r2.transform(res1).keypoint_scores, out.keypoint_scores)
    order = np.argsort(res1.keypoints[..., 2].ravel())
    assert np.all(np.diff(out.keypoint_scores.ravel()[order]) >= -1e-12)  # monotone in the raw score
    with pytest.raises(PosecalInputError):
        get_rescorer(method).transform(res1)  # not fitted
    with pytest.raises(PosecalInputError):
        Rescorer.from_json({"method": method, "params": {}, "state": {}})


def test_loglog_recovers_a_known_error_model():
    """Errors Rayleigh with per-axis scale sigma_n * l, sigma_n = c s^b: the fit finds (log c, b), and the
    mapped score equals the Monte Carlo mean OKS."""
    rng = np.random.default_rng(0)
    n = 4000
    c, b = 0.4, -0.8
    s = rng.uniform(0.1, 1.0, (n, 17))
    area = rng.uniform(2000, 20000, n)
    l = np.sqrt(theory.oks_l2(COCO17.sigmas[None], area[:, None]))
    sig_n = c * s**b
    mu = rng.uniform(100, 200, (n, 17, 2))
    gt_xy = mu
    pred = mu + (sig_n * l)[..., None] * rng.standard_normal((n, 17, 2))
    gt = {
        "images": [{"id": i + 1, "width": 400, "height": 400} for i in range(n)],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.names), "skeleton": []}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": float(area[i]),
                "bbox": [90, 90, 120, 120],
                "num_keypoints": 17,
                "keypoints": np.column_stack([gt_xy[i], np.full(17, 2)]).ravel().tolist(),
            }
            for i in range(n)
        ],
    }
    res = [
        {
            "image_id": i + 1,
            "category_id": 1,
            "score": 1.0,
            "keypoints": np.column_stack([pred[i], s[i]]).ravel().tolist(),
        }
        for i in range(n)
    ]
    r = LogLogRescorer().fit(res, gt)
    a_hat, b_hat = r.coef_
    # E[ln R] = ln(sigma) + (ln 2 - gamma)/2 is folded into the intercept by the fit
    assert b_hat == pytest.approx(b, abs=0.02)
    assert a_hat - 0.5 * (np.log(2) - np.euler_gamma) == pytest.approx(np.log(c), abs=0.02)
    np.testing.assert_allclose(r.sigma_n(np.array([0.3, 0.9])), c * np.array([0.3, 0.9]) ** b, rtol=0.05)
    mapped = r.map_scores(np.array([0.5]))[0]
    sn = c * 0.5**b
    z = sn * rng.standard_normal((1_000_000, 2))
    mc = np.exp(-(z**2).sum(1) / 2).mean()
    assert mapped == pytest.approx(mc, abs=0.01)
    assert isinstance(IsotonicRescorer().fit(res, gt).x_, np.ndarray)


# --- CLI ----------------------------------------------------------------------------------------
def test_cli_rescore_round_trip(tmp_path, capsys):
    from posecal._util import write_json_atomic
    from posecal.cli import main

    a, b = simulate(200, seed=11), simulate(200, seed=12)
    write_json_atomic(tmp_path / "gt.json", a.gt)
    write_json_atomic(tmp_path / "pred.json", a.heatmap_results)
    write_json_atomic(tmp_path / "fgt.json", b.gt)
    write_json_atomic(tmp_path / "fpred.json", b.heatmap_results)
    rc = main(
        [
            "rescore",
            "--pred",
            str(tmp_path / "pred.json"),
            "--gt",
            str(tmp_path / "gt.json"),
            "--method",
            "closed-form",
            "--area",
            "gt",
            "--out",
            str(tmp_path / "cf.json"),
            "--json",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "closed-form" and summary["detections"] == 200
    cf = json.loads((tmp_path / "cf.json").read_text())
    gt, res = _load(a)
    want = ClosedFormRescorer(area="gt").transform(res, gt)
    np.testing.assert_allclose([r["score"] for r in cf], want.instance_scores)
    assert [r["keypoints"][0::3] for r in cf] == [r["keypoints"][0::3] for r in a.heatmap_results]
    # fit + save a calibrator, then reuse it: identical output
    base = ["rescore", "--pred", str(tmp_path / "pred.json"), "--method", "isotonic"]
    assert (
        main(
            base
            + [
                "--fit-gt",
                str(tmp_path / "fgt.json"),
                "--fit-pred",
                str(tmp_path / "fpred.json"),
                "--save-calibrator",
                str(tmp_path / "iso.json"),
                "--out",
                str(tmp_path / "o1.json"),
            ]
        )
        == 0
    )
    assert main(base + ["--calibrator", str(tmp_path / "iso.json"), "--out", str(tmp_path / "o2.json")]) == 0
    assert (tmp_path / "o1.json").read_bytes() == (tmp_path / "o2.json").read_bytes()
    for mode in ("mmpose-bbox", "mmpose-keypoint", "mmpose-bbox_keypoint", "mmpose-bbox_rle", "loglog"):
        extra = []
        args = [
            "rescore",
            "--pred",
            str(tmp_path / "pred.json"),
            "--method",
            mode,
            "--out",
            str(tmp_path / "m.json"),
        ]
        if mode == "loglog":
            extra = ["--fit-gt", str(tmp_path / "fgt.json"), "--fit-pred", str(tmp_path / "fpred.json")]
        assert main(args + extra) == 0
    capsys.readouterr()
    # errors: exit 2, one line, nothing written
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 1, "category_id": 1, "score": 1.0, "keypoints": [1, 2]}]')
    for argv in (
        ["rescore", "--pred", str(bad), "--method", "mmpose-bbox", "--out", str(tmp_path / "x.json")],
        [
            "rescore",
            "--pred",
            str(tmp_path / "pred.json"),
            "--method",
            "closed-form",
            "--out",
            str(tmp_path / "x.json"),
        ],
        [
            "rescore",
            "--pred",
            str(tmp_path / "pred.json"),
            "--method",
            "isotonic",
            "--out",
            str(tmp_path / "x.json"),
        ],
        [
            "rescore",
            "--pred",
            str(tmp_path / "pred.json"),
            "--method",
            "loglog",
            "--calibrator",
            str(tmp_path / "iso.json"),
            "--out",
            str(tmp_path / "x.json"),
        ],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("posecal rescore: error:")
        assert not (tmp_path / "x.json").exists()


def test_cli_rescore_out_dash_writes_results_to_stdout(tmp_path, capsys, monkeypatch):
    """``--out -``: the results JSON on stdout (the same bytes as a file output), the summary on stderr, and
    no file named ``-``."""
    import io

    from posecal._util import write_json_atomic
    from posecal.cli import main

    a = simulate(50, seed=13)
    write_json_atomic(tmp_path / "gt.json", a.gt)
    write_json_atomic(tmp_path / "pred.json", a.heatmap_results)
    monkeypatch.chdir(tmp_path)
    base = ["rescore", "--pred", "pred.json", "--gt", "gt.json", "--method", "closed-form", "--area", "gt"]
    assert main(base + ["--out", "cf.json"]) == 0
    capsys.readouterr()
    buf = io.BytesIO()
    out = io.TextIOWrapper(buf, encoding="utf-8")
    monkeypatch.setattr("sys.stdout", out)
    assert main(base + ["--out", "-", "--json"]) == 0
    out.flush()
    err = capsys.readouterr().err
    assert buf.getvalue().rstrip(b"\n") == (tmp_path / "cf.json").read_bytes().rstrip(b"\n")
    assert json.JSONDecoder().raw_decode(err)[0]["detections"] == 50  # (then the warning line)
    assert not (tmp_path / "-").exists()


def test_cli_rescore_from_feature_store(tmp_path, capsys):
    """--store: predictions, gt and sigma_hat come from the store (NaN rows: score-derived sigma)."""
    from posecal.cli import main
    from posecal.models.store import StoreWriter

    sim = simulate(100, seed=13)
    sig = sim.sigma.copy()
    sig[:5] = np.nan
    w = StoreWriter(tmp_path / "store", num_instances=100, chunk_size=32, settings={"model": "simulation"})
    for j in w.pending_chunks():
        a, b = w.chunk_rows(j)
        w.write_chunk(
            j,
            {
                "image_id": sim.image_id[a:b],
                "ann_id": sim.ann_id[a:b],
                "bbox": sim.bbox[a:b],
                "box_score": np.ones(b - a),
                "keypoints": sim.pred_heatmap[a:b],
                "scores": sim.score_heatmap[a:b],
                "sigma_hat": sig[a:b],
            },
        )
    w.finalize(gt=sim.gt)
    rc = main(
        [
            "rescore",
            "--store",
            str(tmp_path / "store"),
            "--method",
            "closed-form",
            "--area",
            "gt",
            "--aggregate",
            "mean",
            "--out",
            str(tmp_path / "o.json"),
            "--json",
        ]
    )
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["sigma"] == "store sigma_hat"
    out = json.loads((tmp_path / "o.json").read_text())
    gt, res = _load(sim)
    r = ClosedFormRescorer(area="gt", aggregate="mean")
    want = r.transform(res, gt, sigma=sim.sigma).keypoint_scores
    want[:5] = r.transform(res, gt).keypoint_scores[:5]
    got = np.array([o["keypoints"][2::3] for o in out])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.allclose([o["keypoints"][0::3] for o in out], sim.pred_heatmap[..., 0])
    # --pred with the store's rows in another order: refused (sigma_hat is read row by row), nothing written
    rows = json.loads((tmp_path / "store" / "predictions.json").read_text())
    (tmp_path / "rev.json").write_text(json.dumps(rows[::-1]))
    argv = ["rescore", "--store", str(tmp_path / "store"), "--method", "closed-form", "--out", str(tmp_path / "r.json")]
    capsys.readouterr()
    assert main(argv[:3] + ["--pred", str(tmp_path / "rev.json")] + argv[3:]) == 2
    err = capsys.readouterr().err
    assert "rev.json: record 0: field 'image_id': is not the store's row 0" in err and "100 of 100 rows differ" in err
    assert not (tmp_path / "r.json").exists()
    # the same rows in the store's order, rescored (new scores, same coordinates): accepted, same output
    for r_ in rows:
        r_["score"] = 0.5
    (tmp_path / "same.json").write_text(json.dumps(rows))
    assert main(argv[:3] + ["--pred", str(tmp_path / "same.json"), "--aggregate", "mean", "--area", "gt"]
                + argv[3:]) == 0
    got2 = np.array([o["keypoints"][2::3] for o in json.loads((tmp_path / "r.json").read_text())])
    np.testing.assert_allclose(got2, want, rtol=1e-12)


def _renamed_set(sim, tmp_path):
    """The simulation's gt/results with keypoint names posecal does not know (a user's own 17-point set)."""
    gt = json.loads(json.dumps(sim.gt))
    gt["categories"][0]["keypoints"] = [f"p{k}" for k in range(17)]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(sim.heatmap_results))
    return tmp_path / "gt.json", tmp_path / "pred.json"


def test_cli_rescore_sigmas_for_a_users_own_keypoint_set(tmp_path, capsys):
    """--sigmas / --keypoint-set: the closed form and the learned calibrators on keypoint names posecal does not
    know give what the library gives with those sigmas; wrong counts, unused sigmas, and sigmas next to a loaded
    calibrator are refused."""
    from posecal.cli import main

    sim = simulate(150, seed=21)
    g, p = _renamed_set(sim, tmp_path)
    sig = COCO17.sigmas * 1.5
    base = ["rescore", "--pred", str(p), "--gt", str(g), "--out", str(tmp_path / "o.json")]
    for method, extra in (("closed-form", []), ("isotonic", ["--fit-gt", str(g), "--fit-pred", str(p)])):
        for sig_args in (["--sigmas", *map(str, sig)], ["--sigmas", ",".join(map(str, sig))]):
            assert main(base + ["--method", method, *extra, *sig_args]) == 0
            got = np.array([o["score"] for o in json.loads((tmp_path / "o.json").read_text())])
            gt, res = load_gt(g), load_results(p, None)
            r = get_rescorer(method, sigmas=sig)
            r.fit(res, gt)
            np.testing.assert_allclose(got, r.transform(res, gt).instance_scores, rtol=1e-12)
    assert main(base + ["--method", "closed-form", "--keypoint-set", "coco17"]) == 0
    (tmp_path / "o.json").unlink()
    capsys.readouterr()
    for argv, field, needle in (
        (["--method", "closed-form", "--sigmas", "0.1", "0.2"], "--sigmas", "expected 17 finite"),
        (["--method", "closed-form", "--sigmas", *["0.1"] * 16, "-0.1"], "--sigmas", "expected 17 finite"),
        (["--method", "closed-form", "--keypoint-set", "lsp14"], "--keypoint-set", "has 14 keypoints"),
        (["--method", "mmpose-bbox", "--keypoint-set", "coco17"], "--keypoint-set", "does not use OKS sigmas"),
    ):
        assert main(base + argv) == 2
        err = capsys.readouterr().err
        assert f"field '{field}'" in err and needle in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize(
    "method",
    [
        "closed-form",
        "mmpose-bbox",
        "mmpose-keypoint",
        "mmpose-bbox_keypoint",
        "mmpose-bbox_rle",
        "visibility",
        "isotonic",
        "loglog",
    ],
)
def test_every_method_round_trips_through_json(sims, method, tmp_path):
    gt, res = _load(sims[0])
    vis = (sims[0].visibility > 0).astype(float)
    params = {"keypoint_score_thr": 0.3} if method.startswith("mmpose") else {}
    r = get_rescorer(method, **params).fit(res, gt)
    r.save(tmp_path / "c.json")
    r2 = Rescorer.load(tmp_path / "c.json")
    assert type(r2) is type(r) and r2.method == method
    a, b = r.transform(res, gt, visibility=vis), r2.transform(res, gt, visibility=vis)
    np.testing.assert_array_equal(a.keypoint_scores, b.keypoint_scores)
    np.testing.assert_array_equal(a.instance_scores, b.instance_scores)
    (tmp_path / "bad.json").write_text('{"method": "nope"}')
    with pytest.raises(PosecalInputError, match="unknown method"):
        Rescorer.load(tmp_path / "bad.json")


def test_cli_calibrator_records_its_skeleton_and_warns_on_another(tmp_path, capsys):
    """--save-calibrator writes what it was fitted on; --calibrator on results with another keypoint count
    warns (the map still applies, exit 0), on the same count it does not."""
    from posecal._util import write_json_atomic
    from posecal.cli import main

    a = simulate(120, seed=31)
    write_json_atomic(tmp_path / "gt.json", a.gt)
    write_json_atomic(tmp_path / "pred.json", a.heatmap_results)
    cal = tmp_path / "cal.json"
    assert main(["rescore", "--pred", str(tmp_path / "pred.json"), "--method", "isotonic", "--fit-gt",
                 str(tmp_path / "gt.json"), "--fit-pred", str(tmp_path / "pred.json"), "--save-calibrator", str(cal),
                 "--out", str(tmp_path / "o.json")]) == 0
    assert json.loads(cal.read_text())["fitted_on"] == {"num_keypoints": 17, "keypoint_set": "coco17"}
    five = [dict(r, keypoints=r["keypoints"][:15]) for r in a.heatmap_results]  # a 5-keypoint skeleton
    write_json_atomic(tmp_path / "five.json", five)
    capsys.readouterr()
    for src, warned in (("pred.json", False), ("five.json", True)):
        assert main(["rescore", "--pred", str(tmp_path / src), "--method", "isotonic", "--calibrator", str(cal),
                     "--out", str(tmp_path / "o2.json")]) == 0
        err = capsys.readouterr().err
        assert ("calibrator fitted on 17 keypoints (coco17), applied to 5" in err) == warned, err
