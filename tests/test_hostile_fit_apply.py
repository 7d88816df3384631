"""Hostile inputs to ``posecal fit`` / ``posecal apply``: damaged store metadata and arrays the checksums do not
catch, hyper-parameters that make training overflow or diverge, ``--out -`` for a head, an empty store, SIGINT;
and the missing-joint mask (``extract --allow-missing-joints``) applied by ``fit`` exactly as ``apply`` applies
it (recorded metrics, context stage). Synthetic stores only (tests/test_ccnet_cli.py's builder)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

torch = pytest.importorskip("torch")

from posecal.ccnet.apply import instance_scores, mask_missing  # noqa: E402
from posecal.ccnet.checkpoint import load_head  # noqa: E402
from posecal.ccnet.context import context_features  # noqa: E402
from posecal.ccnet.fit import predict_store  # noqa: E402
from posecal.ccnet.targets import head_inputs, load_store, model_keypoints  # noqa: E402
from posecal.ccnet.train import predict  # noqa: E402
from posecal.cli import main  # noqa: E402
from posecal.io.coco import load_gt, load_results  # noqa: E402
from posecal.keypoints import LSP14  # noqa: E402
from posecal.metrics.cocoeval import evaluate  # noqa: E402
from posecal.models.store import StoreWriter  # noqa: E402
from test_ccnet_cli import make_store  # noqa: E402
from test_head_hostile import _DROP, edit_json_file  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
K = LSP14.num_keypoints
MISSING = 3  # the keypoint the "model" of the missing-joint store lacks


def _one_error(rc: int, err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for p in parts:
        assert p in lines[0], lines[0]


def _edit_meta(store: Path, **kw: object) -> None:
    """Set keys of the store's meta.json (None removes one)."""
    edit_json_file(store / "meta.json", **{k: _DROP if v is None else v for k, v in kw.items()})


def _set_chunk(store: Path, name: str, fn, j: int = 0) -> None:
    """Rewrite chunk j of array ``name`` with ``fn(array)`` and its checksum, as a hostile edit that the store's
    integrity checks cannot see."""
    f = store / "arrays" / name / f"{j:06d}.npy"
    a = fn(np.load(f).copy())
    buf = io.BytesIO()
    np.save(buf, a)
    f.write_bytes(buf.getvalue())
    idx = json.loads((store / "index.json").read_text())
    idx["checksums"][f"{j:06d}"][name] = hashlib.sha256(buf.getvalue()).hexdigest()
    (store / "index.json").write_text(json.dumps(idx))


def _put(row: int, col: tuple, value: float):
    def fn(a: np.ndarray) -> np.ndarray:
        a[(row, *col)] = value
        return a
    return fn


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("hostile_fit") / "S", N=48)


@pytest.fixture
def store(base, tmp_path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "S"))


@pytest.fixture(scope="module")
def head(base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile_head") / "H"
    assert main(["fit", "--store", str(base), "--out", str(out), "--steps", "20", "--batch-size", "16"]) == 0
    return out


def _fit(store: Path, out: Path, *extra: str) -> int:
    return main(["fit", "--store", str(store), "--out", str(out), "--steps", "3", "--batch-size", "16", *extra])


# --------------------------------------------------------------------------------------------------------------
# damaged metadata / arrays


@pytest.mark.parametrize("joint_map, match", [
    ("abc", "expected a non-empty list of integers"),
    ([0] * (K - 1) + [True], "expected a non-empty list of integers"),
    (list(range(K - 1)) + [99], "entry 99 out of range [-1, 13]"),
    ([-2] + list(range(1, K)), "entry -2 out of range"),
])
def test_damaged_joint_map_is_refused_by_fit_and_apply(store, head, tmp_path, capsys, joint_map, match):
    """Before: a joint_map that was not a list of ints read as "every joint present" (rc 0, invented scores
    for the joints the model lacks); out-of-range entries were accepted."""
    _edit_meta(store, model_joints=list(LSP14.names), joint_map=joint_map)
    rc = _fit(store, tmp_path / "h")
    _one_error(rc, capsys.readouterr().err, f"{store / 'meta.json'}: field 'joint_map'", match)
    rc = main(["apply", "--store", str(store), "--head", str(head), "--out", str(tmp_path / "o.json")])
    _one_error(rc, capsys.readouterr().err, f"{store / 'meta.json'}: field 'joint_map'", match)
    assert not (tmp_path / "h").exists() and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("array, col, value", [
    ("box_score", (), np.nan),  # before: named 'features_kpt' (evidence stores) or accepted
    ("bbox", (2,), np.inf),  # before: accepted (silently no overlap in the context stage)
    ("scores", (1,), np.inf),
])
def test_non_finite_raw_arrays_are_named(store, head, tmp_path, capsys, array, col, value):
    _set_chunk(store, array, _put(5, col, value))
    for argv in (["fit", "--store", str(store), "--out", str(tmp_path / "h"), "--steps", "2"],
                 ["apply", "--store", str(store), "--head", str(head), "--out", str(tmp_path / "o.json")]):
        rc = main(argv)
        _one_error(rc, capsys.readouterr().err, f"{store}: record 5: field '{array}'")
    assert not (tmp_path / "h").exists() and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("size", ["x", ["a", "b"], [0, 0], [200], [-5, 1], [True, 2]])
def test_bad_input_size_with_pose_evidence(store, tmp_path, capsys, size):
    """Before: a traceback (ValueError from float('x')) or a vague 'features contain NaN' without a file."""
    _edit_meta(store, input_size=size)
    rc = _fit(store, tmp_path / "h", "--head", "kpt_pose", "--evidence", "pose")
    _one_error(rc, capsys.readouterr().err, f"{store / 'meta.json'}: field 'input_size'")
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("array, col, value, evidence, match", [
    ("crop_transform", (0, 0), np.nan, "pose", "NaN or infinite"),
    ("sigma_hat", (2,), np.inf, "cf", "infinite or negative"),
    ("sigma_hat", (2,), -1.0, "log_sigma", "infinite or negative"),
])
def test_bad_evidence_arrays(store, tmp_path, capsys, array, col, value, evidence, match):
    """Before: NaN crop transforms gave 'field kpt_pose: features contain NaN' (no file, no row); an infinite
    sigma_hat trained silently on inf-derived columns (numpy overflow warning only)."""
    _set_chunk(store, array, _put(7, col, value))
    head = ["--head", "kpt_pose"] if evidence == "pose" else ["--head", "kpt"]
    rc = _fit(store, tmp_path / "h", *head, "--evidence", evidence)
    _one_error(rc, capsys.readouterr().err, f"{store}: record 7: field '{array}'", match)
    assert not (tmp_path / "h").exists()


def test_empty_store_is_named_as_such(tmp_path, capsys, head):
    """Before: 'store has no feature tensor (extract with --pooling)' for a store with no rows."""
    w = StoreWriter(tmp_path / "E", num_instances=0, chunk_size=8, settings={"keypoint_set": "lsp14"})
    w.finalize()
    for argv in (["fit", "--store", str(tmp_path / "E"), "--out", str(tmp_path / "h")],
                 ["apply", "--store", str(tmp_path / "E"), "--head", str(head), "--out", str(tmp_path / "o.json")]):
        _one_error(main(argv), capsys.readouterr().err, "holds no rows (0 instances)")
    assert not (tmp_path / "h").exists() and not (tmp_path / "o.json").exists()


# --------------------------------------------------------------------------------------------------------------
# flags


@pytest.mark.parametrize("flags, field", [
    (["--lr", "1e308", "--optimizer", "adam"], "--lr"),  # before: RuntimeError traceback inside Adam
    (["--weight-decay", "1e300", "--optimizer", "adam"], "--weight-decay"),  # before: traceback
    (["--lam", "1e300"], "--lam"),  # before: rc 0 and a NaN head that apply then refused
    (["--lr", "1e30", "--optimizer", "adam"], "--lr"),  # diverges: before rc 0 with NaN weights written
])
def test_overflowing_or_diverging_training_writes_nothing(store, tmp_path, capsys, flags, field):
    rc = main(["fit", "--store", str(store), "--out", str(tmp_path / "h"), "--steps", "5", *flags])
    _one_error(rc, capsys.readouterr().err, f"field '{field}'")
    assert not (tmp_path / "h").exists()


def test_fit_refuses_stdout_as_head_folder(store, tmp_path, capsys, monkeypatch):
    """Before: '--out -' wrote a head folder named '-' (apply's '-' means stdout)."""
    monkeypatch.chdir(tmp_path)
    _one_error(_fit(store, Path("-")), capsys.readouterr().err, "field '--out'", "stdout")
    assert not (tmp_path / "-").exists()


def test_sigint_during_fit_leaves_no_output(base, tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "h"
    p = subprocess.Popen([sys.executable, "-m", "posecal", "fit", "--store", str(base), "--out", str(out),
                          "--steps", "10000000", "--batch-size", "8"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(4)  # well into training (startup and store loading take ~2 s)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    # "posecal: interrupted" if the signal landed while the command's modules were still loading (slow machine)
    assert p.returncode == 130 and err.strip().splitlines()[-1] in ("interrupted", "posecal: interrupted"), err
    assert "Traceback" not in err and not out.exists()
    assert not [f for f in tmp_path.iterdir() if f.name != "h"]  # no temporary folder left either


def test_ctrl_c_that_python_wraps_is_still_an_interrupt(base, tmp_path, capsys, monkeypatch):
    """Before: a Ctrl-C landing while torch lazily imported a module on first use (in
    ``use_deterministic_algorithms``) surfaced as 'RuntimeError: Error calling __set_name__' and a traceback,
    rc 1 (seen once on CI): Python wraps a KeyboardInterrupt raised in ``__set_name__``."""
    import posecal.ccnet.train as train

    class _Field:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def wrapped_interrupt():
        type("ExceptionStack", (), {"_exc_stack": _Field()})  # what torch._dynamo's import did
        yield

    monkeypatch.setattr(train, "_deterministic", wrapped_interrupt)
    rc = main(["fit", "--store", str(base), "--out", str(tmp_path / "h"), "--steps", "3"])
    err = capsys.readouterr().err
    assert rc == 130 and err.strip().splitlines() == ["interrupted"], err
    assert not (tmp_path / "h").exists() and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------------------
# the missing-joint mask: fit computes what apply computes


def _missing_joint_store(path: Path) -> Path:
    """The synthetic store of a model without keypoint MISSING: joint_map −1 there, its keypoint at (0, 0) with
    score 0 (as extract --allow-missing-joints stores it), its features noise the head still reads."""
    make_store(path, N=120, seed=3)
    joints = [n for i, n in enumerate(LSP14.names) if i != MISSING]
    _edit_meta(path, model_joints=joints, joint_map=[-1 if i == MISSING else i - (i > MISSING) for i in range(K)])
    idx = json.loads((path / "index.json").read_text())
    for j in idx["chunks"]:
        _set_chunk(path, "keypoints", _put(slice(None), (MISSING,), 0.0), j)
        _set_chunk(path, "scores", _put(slice(None), (MISSING,), 0.0), j)
    # predictions.json is derived from the arrays: rebuild it (and its checksum) as finalize would
    from posecal.models.store import FeatureStore, predictions_from_arrays

    fs = FeatureStore.open(path)
    preds = predictions_from_arrays(fs.read("image_id"), fs.read("keypoints"), fs.read("scores"),
                                    fs.read("box_score"), fs.read("bbox"))
    data = orjson.dumps(preds)
    (path / "predictions.json").write_bytes(data)
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["predictions.json"] = hashlib.sha256(data).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_fit_metrics_equal_evaluating_apply_output_with_a_missing_joint(tmp_path, capsys):
    """Before: fit's recorded AP/AR and Pearson checks came from the unmasked head outputs, apply's results
    from the masked ones (ŝ = v̂ = 0 on the missing joint), so they disagreed."""
    st = _missing_joint_store(tmp_path / "S")
    h = tmp_path / "H"
    assert main(["fit", "--store", str(st), "--out", str(h), "--steps", "150", "--batch-size", "32", "--lr",
                 "1e-2"]) == 0
    rec = json.loads((h / "head.json").read_text())["metrics"]["train"]
    out = tmp_path / "cal.json"
    assert main(["apply", "--store", str(st), "--head", str(h), "--out", str(out)]) == 0
    capsys.readouterr()
    after = orjson.loads(out.read_bytes())
    assert all(r["visibility"][MISSING] == 0 and r["keypoints"][3 * MISSING + 2] == 0 for r in after)
    gt = load_gt(st / "gt.json")
    ev = evaluate(gt, load_results(after, gt), sigmas=LSP14.sigmas, warn=False)
    assert rec["AP"] == pytest.approx(ev.stats["AP"], abs=1e-12)
    assert rec["AR"] == pytest.approx(ev.stats["AR"], abs=1e-12)
    # the Pearson checks and the visibility accuracy, from apply's ŝ / v̂
    from posecal.ccnet.train import quick_metrics

    data = load_store(str(st))
    s = np.array([r["keypoints"][2::3] for r in after])
    v = np.array([r["visibility"] for r in after])
    sel = data.has_target
    for k, val in quick_metrics(s[sel], v[sel], data.oks[sel], data.vis[sel], data.conf_mask[sel],
                                data.vis_mask[sel]).items():  # over what the losses see
        assert rec[k] == pytest.approx(val, abs=1e-6), k
    # not vacuous: the unmasked outputs rank the people differently (the old recorded AP)
    head, _ = load_head(h)
    s_raw, v_raw = predict(head, head_inputs(data))
    assert np.abs(s_raw[:, MISSING]).min() > 0 and np.abs(v_raw[:, MISSING]).min() > 0
    from posecal.rescore.aggregate import instance_score

    c_raw = instance_score(np.asarray(s_raw, np.float64), "visibility", visibility=v_raw)
    c_apply = np.array([r["score"] for r in after])
    assert not np.allclose(c_raw, c_apply)


def test_predict_store_is_apply_for_the_context_stage(tmp_path):
    """predict_store (the out-of-fold ĉ the context stage is fitted on, and fit's metrics) returns apply's
    masked ŝ, v̂ and its instance score (before the order projection / context stage)."""
    st = _missing_joint_store(tmp_path / "S")
    assert main(["fit", "--store", str(st), "--out", str(tmp_path / "H"), "--steps", "10"]) == 0
    head, _ = load_head(tmp_path / "H")
    data = load_store(str(st))
    s, v, c = predict_store(head, data)
    s_a, v_a = mask_missing(*predict(head, head_inputs(data)), model_keypoints(data.meta, K))
    np.testing.assert_array_equal(s, s_a)
    np.testing.assert_array_equal(v, v_a)
    assert (s[:, MISSING] == 0).all() and (v[:, MISSING] == 0).all()
    ids = np.array([r["image_id"] for r in data.records])
    own = np.array([r["score"] for r in data.records])
    np.testing.assert_allclose(c, instance_scores(s_a, v_a, own, ids, reorder=True), rtol=0, atol=1e-12)


def test_context_features_leave_missing_joints_out_of_the_pairwise_oks():
    """Two detections that agree only on the joint both lack (stored at (0, 0)) do not overlap."""
    kp = np.zeros((2, 3, 2))
    kp[0, :2] = [[10, 10], [20, 20]]
    kp[1, :2] = [[90, 90], [80, 80]]
    box = np.array([[0, 0, 10, 10], [0, 0, 10, 10.0]])
    args = (np.array([1, 1]), kp, box, np.array([0.9, 0.5]), np.full(3, 0.1))
    with_missing = context_features(*args)
    masked = context_features(*args, have=np.array([True, True, False]))
    assert with_missing[1, 2] == pytest.approx(1 / 3, abs=1e-6)  # the (0, 0) joint agreed perfectly
    assert masked[1, 2] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_array_equal(masked[0], with_missing[0])


# --------------------------------------------------------------------------------------------------------------
# ground truth without ``area`` (CrowdPose / AIC files): targets scaled as ``posecal evaluate`` scales OKS


def _drop_area(store: Path, only_first: bool = False) -> dict:
    f = store / "gt.json"
    gt = json.loads(f.read_text())
    for a in gt["annotations"][:1] if only_first else gt["annotations"]:
        del a["area"]
    f.write_text(json.dumps(gt))
    from posecal.models.store import file_sha256

    _edit_meta(store, files={**json.loads((store / "meta.json").read_text())["files"], "gt.json": file_sha256(f)})
    return gt


def test_fit_targets_on_gt_without_area_use_the_evaluators_box_area(store, tmp_path, capsys):
    from posecal.metrics.oks import keypoint_oks

    gt = _drop_area(store)
    data = load_store(str(store))
    box = np.array([a["bbox"] for a in gt["annotations"]], float)
    kp = np.array([a["keypoints"] for a in gt["annotations"]], float).reshape(len(box), K, 3)
    pred = np.array([r["keypoints"] for r in data.records], float).reshape(len(box), K, 3)[..., :2]
    want = keypoint_oks(pred, kp, 0.53 * box[:, 2] * box[:, 3], LSP14.sigmas)
    vis = kp[..., 2] > 0
    assert np.isfinite(data.oks[vis]).all()
    np.testing.assert_allclose(data.oks[vis], want[vis], rtol=1e-12)
    assert _fit(store, tmp_path / "H") == 0  # (it failed: "target OKS must be finite")
    # the recorded train AP is what `posecal evaluate` (0.53·w·h without area) gives on apply's output
    assert main(["apply", "--store", str(store), "--head", str(tmp_path / "H"), "--out", str(tmp_path / "c.json")]) == 0
    ev = evaluate(load_gt(str(store / "gt.json")), load_results(str(tmp_path / "c.json")), use_area=False)
    meta = json.loads((tmp_path / "H" / "head.json").read_text())
    assert abs(meta["metrics"]["train"]["AP"] - ev.stats["AP"]) < 1e-9


def test_fit_on_gt_with_some_areas_missing_names_the_annotation(store, tmp_path, capsys):
    _drop_area(store, only_first=True)
    rc = _fit(store, tmp_path / "H")
    _one_error(rc, capsys.readouterr().err, "gt.json", "record 1", "'area'")
    assert not (tmp_path / "H").exists()
