"""``posecal rescore`` audit: flag combinations that cannot mean what they say, calibrators on another keypoint set,
a loaded calibrator's OKS sigmas in --oks-nms, box scores on some records only, negative visibility weights, the
log-log fit without data, tampered calibrator values, bit-exact JSON round trips, the closed form against a Monte
Carlo of OKS, and the per-image order projection at large scores. Synthetic data only (posecal's simulator)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from posecal import theory
from posecal.errors import PosecalInputError
from posecal.keypoints import CROWDPOSE14, LSP14
from posecal.rescore import Rescorer, get_rescorer
from posecal.rescore.order import keep_image_order
from posecal.theory.simulate import simulate
from test_hostile_inputs import _one_error, _run, _write


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """gt/pred (simulation seed 41) and a fitting split (seed 42), COCO-17."""
    d = tmp_path_factory.mktemp("s24")
    a, b = simulate(150, seed=41), simulate(150, seed=42)
    _write(d / "gt.json", a.gt)
    _write(d / "pred.json", a.heatmap_results)
    _write(d / "fgt.json", b.gt)
    _write(d / "fpred.json", b.heatmap_results)
    return d


def _refused(argv: list, d: Path, *needles: str) -> str:
    """Exit 2, one error line naming ``needles``, and no --out / --save-calibrator written."""
    outs = [Path(argv[i + 1]) for i, a in enumerate(argv) if a in ("--out", "--save-calibrator") and argv[i + 1]]
    for p in outs:
        p.unlink(missing_ok=True)
    rc, _, err = _run(argv)
    line = _one_error(rc, err, *needles)
    assert not any(p.exists() for p in outs), line
    return line


def _fit_args(d: Path) -> list:
    return ["--fit-gt", d / "fgt.json", "--fit-pred", d / "fpred.json"]


def test_flag_combinations_that_would_be_ignored_are_refused_or_warned(world):
    d = world
    base = ["rescore", "--pred", d / "pred.json", "--out", d / "x.json"]
    rc, _, err = _run(base[:3] + ["--method", "isotonic", *_fit_args(d), "--save-calibrator", d / "iso.json",
                                  "--out", d / "o.json"])
    assert rc == 0, err
    # a loaded calibrator with --fit-gt/--fit-pred (silently not refitted before)
    _refused(base + ["--method", "isotonic", "--calibrator", d / "iso.json", *_fit_args(d)], d, "'--fit-gt'",
             "iso.json", "already fitted")
    # a loaded calibrator with an option that disagrees with its own (silently the calibrator's before)
    _refused(base + ["--method", "isotonic", "--calibrator", d / "iso.json", "--aggregate", "mean"], d,
             "'--aggregate'", "saved with --aggregate bbox_keypoint")
    # the same value as the calibrator's, or the default, is fine
    rc, _, err = _run(base + ["--method", "isotonic", "--calibrator", d / "iso.json", "--aggregate", "bbox_keypoint"])
    assert rc == 0, err
    (d / "x.json").unlink()
    # --fit-gt/--fit-pred on a method that learns nothing from them: warned, the output as without them
    for m in (["mmpose-bbox"], ["mmpose-keypoint"], ["closed-form", "--area", "pred"]):
        rc, _, err = _run(base + ["--method", *m])
        assert rc == 0, err
        plain = (d / "x.json").read_text()
        rc, _, err = _run(base + ["--method", *m, *_fit_args(d)])
        assert rc == 0 and "learns nothing from --fit-gt/--fit-pred" in err, err
        assert (d / "x.json").read_text() == plain
    rc, _, err = _run(base + ["--method", "closed-form", "--area", "mean", *_fit_args(d)])
    assert rc == 0, err  # the mean area of the fitting gt
    (d / "x.json").unlink()
    # --nms-area without --oks-nms: warned
    rc, _, err = _run(base + ["--method", "mmpose-keypoint", "--nms-area", "extent"])
    assert rc == 0 and "--nms-area only applies with --oks-nms" in err, err


def _skeleton_world(d: Path, names: tuple[str, ...], tag: str) -> tuple[Path, Path]:
    """A 14-keypoint gt/pred (the simulation's first 14 joints) under the keypoint names ``names``."""
    sim = simulate(120, seed=43)
    gt = json.loads(json.dumps(sim.gt))
    gt["categories"][0]["keypoints"] = list(names)
    gt["categories"][0]["skeleton"] = []
    for a in gt["annotations"]:
        a["keypoints"] = a["keypoints"][:42]
        a["num_keypoints"] = sum(v > 0 for v in a["keypoints"][2::3])
    pred = [dict(r, keypoints=r["keypoints"][:42]) for r in sim.heatmap_results]
    return _write(d / f"gt_{tag}.json", gt), _write(d / f"pred_{tag}.json", pred)


def test_a_calibrator_on_another_keypoint_set_is_warned_and_a_damaged_one_refused(world):
    """Fitted on LSP-14: applied to LSP-14 it runs silently; to CrowdPose-14 (same count, other joints) or to
    COCO-17 it runs with a warning naming both sets (the score → OKS map still applies, learned on other
    joints); a damaged fitted_on is refused naming the calibrator and 'fitted_on'."""
    d = world
    lg, lp = _skeleton_world(d, LSP14.names, "lsp")
    cg, cp = _skeleton_world(d, CROWDPOSE14.names, "crowd")
    cal = d / "iso_lsp.json"
    rc, _, err = _run(["rescore", "--pred", lp, "--method", "isotonic", "--fit-gt", lg, "--fit-pred", lp,
                       "--save-calibrator", cal, "--out", d / "o.json"])
    assert rc == 0, err
    assert json.loads(cal.read_text())["fitted_on"] == {"num_keypoints": 14, "keypoint_set": "lsp14"}
    use = ["rescore", "--method", "isotonic", "--calibrator", cal, "--out", d / "x.json"]
    for extra, needles in (([lp, "--gt", lg], ()),
                           ([cp, "--gt", cg], ("fitted on 14 keypoints (lsp14)", "applied to 14 (crowdpose14)")),
                           ([d / "pred.json"], ("fitted on 14 keypoints (lsp14)", "applied to 17"))):
        rc, _, err = _run(use + ["--pred", *extra])
        assert rc == 0, err
        (d / "x.json").unlink()
        assert ("learned on other joints" in err) == bool(needles), err
        assert all(n in err for n in needles), err
    for bad in ("x", {"num_keypoints": True}, {"num_keypoints": 14, "keypoint_set": 5}, 3):
        tampered = {**json.loads(cal.read_text()), "fitted_on": bad}
        _refused(use[:4] + [_write(d / "t.json", tampered), "--out", d / "x.json", "--pred", lp], d, "t.json",
                 "'fitted_on'")


def test_oks_nms_uses_a_loaded_calibrators_own_sigmas(world):
    """A calibrator fitted with --sigmas on a skeleton posecal does not know: --oks-nms with it used to ask for
    --sigmas, which a loaded calibrator refuses; it now takes the calibrator's, and keeps what a fit with those
    --sigmas keeps."""
    d = world
    sim = simulate(120, seed=44)
    gt = json.loads(json.dumps(sim.gt))
    gt["categories"][0]["keypoints"] = [f"p{k}" for k in range(5)]
    gt["categories"][0]["skeleton"] = []
    for a in gt["annotations"]:
        a["keypoints"] = a["keypoints"][:15]
        a["num_keypoints"] = sum(v > 0 for v in a["keypoints"][2::3])
    recs = [dict(r, keypoints=r["keypoints"][:15]) for r in sim.heatmap_results]
    recs += [dict(r, image_id=r["image_id"], keypoints=[v + 0.5 if i % 3 != 2 else v for i, v in
                                                         enumerate(r["keypoints"])]) for r in recs[:40]]
    g, p = _write(d / "gt5.json", gt), _write(d / "pred5.json", recs)
    sig = ["--sigmas", *["0.07"] * 5]
    rc, out1, err = _run(["rescore", "--pred", p, "--method", "isotonic", "--fit-gt", g, "--fit-pred", p, *sig,
                          "--save-calibrator", d / "iso5.json", "--oks-nms", "0.9", "--json", "--out", d / "a.json"])
    assert rc == 0, err
    rc, out2, err = _run(["rescore", "--pred", p, "--method", "isotonic", "--calibrator", d / "iso5.json",
                          "--oks-nms", "0.9", "--json", "--out", d / "b.json"])
    assert rc == 0, err
    assert (d / "a.json").read_bytes() == (d / "b.json").read_bytes()
    nms = json.loads(out2)["oks_nms"]
    assert nms == json.loads(out1)["oks_nms"] and nms["removed"] > 0


def test_box_scores_on_some_records_only_are_refused(world):
    """One record without bbox_score made every box score 1 (the detector's scores silently dropped); now it is
    an error naming that record, for every mode that reads box scores; modes that do not read them still run."""
    d = world
    recs = json.loads((d / "pred.json").read_text())
    del recs[7]["bbox_score"]
    p = _write(d / "some_bs.json", recs)
    base = ["rescore", "--pred", p, "--gt", d / "gt.json", "--out", d / "x.json"]
    for m in ("mmpose-bbox", "mmpose-bbox_keypoint", "mmpose-bbox_rle", "closed-form"):
        _refused(base + ["--method", m], d, "some_bs.json", "record 7", "'bbox_score'")
    for extra in (["--method", "mmpose-keypoint"], ["--method", "closed-form", "--aggregate", "mean"]):
        rc, _, err = _run(base + extra)
        assert rc == 0, err
    # none has one: box scores of 1, as before
    p0 = _write(d / "no_bs.json", [{k: v for k, v in r.items() if k != "bbox_score"} for r in recs])
    rc, _, err = _run(["rescore", "--pred", p0, "--method", "mmpose-bbox", "--out", d / "y.json"])
    assert rc == 0, err
    assert {r["score"] for r in json.loads((d / "y.json").read_text())} == {1.0}


def test_negative_visibility_is_refused(world):
    d = world
    recs = [dict(r, visibility=[1.0] * 17) for r in json.loads((d / "pred.json").read_text())]
    recs[4]["visibility"] = [1.0, -0.5] + [0.0] * 15  # weights summing to 0.5: no longer a weighted mean
    p = _write(d / "vis.json", recs)
    _refused(["rescore", "--pred", p, "--method", "visibility", "--out", d / "x.json"], d, "vis.json", "record 4",
             "'visibility'", "keypoint 1", "-0.5")
    _refused(["rescore", "--pred", p, "--method", "closed-form", "--area", "pred", "--aggregate", "visibility",
              "--out", d / "x.json"], d, "record 4", "'visibility'")
    recs[4]["visibility"] = [2.0] * 17  # COCO-style flags as weights: legal
    rc, _, err = _run(["rescore", "--pred", _write(d / "vis2.json", recs), "--method", "visibility", "--out",
                       d / "x.json"])
    assert rc == 0, err


def test_loglog_without_nonzero_errors_is_refused(world):
    """Predictions exactly on the gt: no log(error) to fit (it silently fitted coef_ = [0, 0] before)."""
    d = world
    gt = json.loads((d / "gt.json").read_text())
    perfect = [{"image_id": a["image_id"], "category_id": 1, "score": 0.9,
                "keypoints": [v if i % 3 != 2 else 0.8 for i, v in enumerate(a["keypoints"])]}
               for a in gt["annotations"]]
    fp = _write(d / "perfect.json", perfect)
    with pytest.raises(PosecalInputError, match="non-zero error"):
        get_rescorer("loglog").fit(str(fp), str(d / "gt.json"))
    _refused(["rescore", "--pred", d / "pred.json", "--method", "loglog", "--fit-gt", d / "gt.json", "--fit-pred", fp,
              "--out", d / "x.json"], d, "perfect.json", "non-zero error")


def test_tampered_calibrator_values(world):
    d = world
    rc, _, err = _run(["rescore", "--pred", d / "pred.json", "--method", "isotonic", *_fit_args(d),
                       "--save-calibrator", d / "iso.json", "--out", d / "o.json"])
    assert rc == 0, err
    rc, _, err = _run(["rescore", "--pred", d / "pred.json", "--method", "loglog", *_fit_args(d),
                       "--save-calibrator", d / "ll.json", "--out", d / "o.json"])
    assert rc == 0, err
    rc, _, err = _run(["rescore", "--pred", d / "pred.json", "--gt", d / "gt.json", "--method", "closed-form",
                       "--area", "mean", "--save-calibrator", d / "cf.json", "--out", d / "o.json"])
    assert rc == 0, err
    iso, ll, cf = (json.loads((d / f).read_text()) for f in ("iso.json", "ll.json", "cf.json"))

    def use(method, obj):
        return ["rescore", "--pred", d / "pred.json", "--method", method, "--calibrator", _write(d / "t.json", obj),
                "--out", d / "x.json"]

    n = len(iso["state"]["y_"])
    for y in ([1.5] * n, [-0.2] * n, [1.0] + [0.0] * (n - 1)):  # an isotonic fit's y_ are OKS in [0, 1], rising
        _refused(use("isotonic", {**iso, "state": {**iso["state"], "y_": y}}), d, "t.json", "'state.y_'")
    for size in ([1.5, 2], [48.5, 64]):  # int() truncated these silently
        _refused(use("closed-form", {**cf, "params": {**cf["params"], "heatmap_size": size}}), d, "t.json",
                 "'params.heatmap_size'")
    # a steep (but finite) log-log fit: expected OKS 0 where sigma_n overflows, no numpy warning line
    rc, _, err = _run(use("loglog", {**ll, "state": {"coef_": [300.0, -300.0]}}))
    assert rc == 0 and "overflow" not in err, err
    s = np.array([r["keypoints"][2::3] for r in json.loads((d / "x.json").read_text())])
    assert np.isfinite(s).all() and s.min() >= 0 and s.max() <= 1


@pytest.mark.parametrize("method", ["isotonic", "loglog", "closed-form"])
def test_fitted_calibrator_round_trips_bit_exactly(world, method):
    """--save-calibrator → Rescorer.load: the same float64 bits in every parameter and state array, the same
    bytes when saved again, the same output through --calibrator; the file is plain JSON (no pickle)."""
    d = world
    extra = _fit_args(d) if method != "closed-form" else ["--gt", d / "gt.json", "--area", "mean"]
    cal = d / f"{method}_rt.json"
    rc, _, err = _run(["rescore", "--pred", d / "pred.json", "--method", method, *extra, "--save-calibrator", cal,
                       "--out", d / "a.json"])
    assert rc == 0, err
    obj = json.loads(cal.read_text())
    r = get_rescorer(method, **({"area": "mean"} if method == "closed-form" else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r.fit(str(d / ("fpred.json" if method != "closed-form" else "pred.json")),
              str(d / ("fgt.json" if method != "closed-form" else "gt.json")))
    loaded = Rescorer.load(cal)
    for s in r._state:
        a, b = np.asarray(getattr(r, s), np.float64), np.asarray(getattr(loaded, s), np.float64)
        assert a.shape == b.shape and a.tobytes() == b.tobytes(), s
    assert loaded.to_json() == {k: v for k, v in obj.items() if k != "fitted_on"}
    loaded.save(d / "again.json")
    Rescorer.load(d / "again.json").save(d / "again2.json")
    assert (d / "again.json").read_bytes() == (d / "again2.json").read_bytes()
    rc, _, err = _run(["rescore", "--pred", d / "pred.json", "--method", method, "--calibrator", cal,
                       *(["--gt", d / "gt.json"] if method == "closed-form" else []), "--out", d / "b.json"])
    assert rc == 0, err
    assert (d / "a.json").read_bytes() == (d / "b.json").read_bytes()


def test_json_summary_is_valid_on_empty_results(world):
    d = world
    p = _write(d / "empty.json", [])
    rc, out, err = _run(["rescore", "--pred", p, "--method", "closed-form", "--area", "pred", "--json",
                         "--out", d / "e.json"])
    assert rc == 0, err
    s = json.loads(out)
    assert s["detections"] == 0 and s["instance_score"] == {"raw_mean": None, "new_mean": None}
    assert json.loads((d / "e.json").read_text()) == []


@pytest.mark.parametrize(("sigma", "k", "area", "delta"),
                         [(3.0, 0.079, 5000.0, 0.0), (10.0, 0.026, 2e4, 5.0), (1.0, 0.107, 300.0, 3.0)])
def test_closed_form_matches_a_monte_carlo_of_oks(sigma, k, area, delta):
    """Eq. 11/12: E over p ~ N(mu, sigma² I) of exp(-||p_hat - p||² / (2 l²)), l² = (2k)² area, is
    l²/(sigma² + l²) · exp(-Δ²/(2(sigma² + l²))); and what ClosedFormRescorer writes for a given sigma is Eq. 12."""
    rng = np.random.default_rng(7)
    l2 = float(theory.oks_l2(k, area))
    z = sigma * rng.standard_normal((1_000_000, 2)) + np.array([delta, 0.0])
    mc = np.exp(-(z**2).sum(1) / (2 * l2)).mean()
    assert float(theory.expected_oks(sigma**2, l2, delta**2)) == pytest.approx(mc, abs=2e-3)
    side = float(np.sqrt(area))
    rec = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [0.0, 0.0, side, side],
            "keypoints": [10.0, 10.0, 0.5] * 17}]
    sig = np.full(17, k)
    out = get_rescorer("closed-form", area="pred", sigmas=sig).transform(rec, sigma=np.full((1, 17), sigma))
    assert out.keypoint_scores[0, 0] == pytest.approx(l2 / (sigma**2 + l2), rel=1e-9)


def test_keep_image_order_stays_strict_for_large_scores():
    """The 1e-9 tie step is below the float spacing above ~4e6: pooled scores tied, and pycocotools' stable
    sort then follows the file order, not the old order (AR could move). Now each place is one ulp apart."""
    old = np.array([0.1, 0.5, 0.9, 0.3])
    new = np.full(4, 5e7)
    out = keep_image_order(np.ones(4, int), old, new)
    assert list(np.argsort(-out, kind="mergesort")) == list(np.argsort(-old, kind="mergesort"))
    assert np.all(np.abs(out - 5e7) < 1e-6)
    small = keep_image_order(np.ones(4, int), old, np.full(4, 0.3))  # ordinary scores: the 1e-9 steps as before
    np.testing.assert_allclose(small - 0.3, [0.0, 2e-9, 3e-9, 1e-9], atol=1e-15)  # old order: rows 2, 1, 3, 0
