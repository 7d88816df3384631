"""Hostile inputs for ``posecal compare``, ``evaluate --report``, ``study`` and ``demo``: one error line naming
the flag, exit 2, strict JSON, no half-written report folder (also when interrupted), no wrong numbers.

Everything is built here from synthetic COCO sets (``_cocogen``); nothing needs ../shared.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from _cocogen import make_coco_set
from test_hostile_inputs import _one_error, _run, _write

pytest.importorskip("matplotlib")








def _strict(text: str):
    def bad(c):
        raise AssertionError(f"non-standard JSON token {c}")

    return json.loads(text, parse_constant=bad)


def _refs_exist(folder: Path) -> list[str]:
    refs = re.findall(r'(?:src|href)="([^"]+)"', (folder / "index.html").read_text())
    assert refs and all((folder / r).is_file() for r in refs), refs
    return refs


def _no_leftovers(parent: Path, name: str) -> None:
    left = [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]
    assert not left, left


@pytest.fixture
def coco(tmp_path):
    gt, res = make_coco_set(31, n_images=6, max_gts=3, max_dets=5, p_crowd=0.0, p_zero_kpts=0.0)
    return gt, res, _write(tmp_path / "gt.json", gt), _write(tmp_path / "a.json", res)


def _sparse_world(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A gt of 40 images of which only one holds people; B ranks that image's detections backwards."""
    gt, res = make_coco_set(5, n_images=1, max_gts=4, max_dets=8, p_crowd=0.0, p_zero_kpts=0.0, p_tie=0.0,
                            p_dup=0.0, nk_mismatch=0.0)
    assert gt["annotations"] and len(res) >= 3
    used = {im["id"] for im in gt["images"]}
    gt["images"] += [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"}
                     for i in range(1000, 1100) if i not in used][:39]
    b = [dict(r, score=1.0 - r["score"]) for r in res]
    return _write(tmp_path / "gt.json", gt), _write(tmp_path / "a.json", res), _write(tmp_path / "b.json", b)


# --- compare: numbers ------------------------------------------------------------------------------------
def test_resamples_that_draw_no_person_are_left_out_not_counted_as_ties(tmp_path):
    from posecal.calibration.compare import compare

    g, a, b = _sparse_world(tmp_path)
    res = compare(str(g), str(a), str(b), resamples=300, seed=0)
    # 39 of 40 images are empty: about (39/40)^40 = 36 % of the draws hold no person, AP undefined there
    left = 300 - res.used("AP")
    assert 60 < left < 160
    assert np.isnan(res.samples["AP"]).sum() == left == np.isnan(res.samples["AR"]).sum()
    # before the fix those draws read ΔAP = −1 − (−1) = 0: a tie, and an interval reaching 0
    assert res.delta["AP"] != 0 and res.p_tied["AP"] < 0.05
    lo, hi = res.interval["AP"]
    assert np.sign(lo) == np.sign(hi) == np.sign(res.delta["AP"])
    rc, out, err = _run(["compare", "--gt", g, a, b, "--resamples", "300", "--json"])
    assert rc == 0, err
    doc = _strict(out)
    assert doc["metrics"]["AP"]["resamples_used"] == res.used("AP")
    assert doc["metrics"]["AP"]["interval"] == [lo, hi]
    rc, out, _ = _run(["compare", "--gt", g, a, b, "--resamples", "300"])
    assert rc == 0 and f"AP {left}" in out and "resamples left out" in out


def test_identical_files_give_exact_zero_and_every_resample_used(coco):
    _, _, g, a = coco
    rc, out, err = _run(["compare", "--gt", g, a, a, "--resamples", "20", "--json"])
    assert rc == 0, err
    m = _strict(out)["metrics"]
    assert m["AP"]["delta"] == 0.0 and m["AP"]["interval"] == [0.0, 0.0] and m["AP"]["p_tied"] == 1.0
    assert m["AP"]["resamples_used"] == 20


# --- compare --report ------------------------------------------------------------------------------------
def test_compare_report_survives_scores_near_the_float_limit(coco, tmp_path):
    _, res, g, a = coco
    huge = [dict(r, score=1e308 if i % 2 else -1e308) for i, r in enumerate(res)]
    b = _write(tmp_path / "b.json", huge)
    rep = tmp_path / "rep"
    rc, out, err = _run(["compare", "--gt", g, a, b, "--resamples", "5", "--report", rep, "--json"])
    assert rc == 0 and "Traceback" not in err, err
    assert "not drawn" in err and "outside [0, 1]" in err  # warned, not squashed
    _strict(out)
    _strict((rep / "compare.json").read_text())
    refs = _refs_exist(rep)
    assert {"pr_curves.png", "reliability.png", "sparsification.png"} <= set(refs)
    _no_leftovers(tmp_path, "rep")


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_compare_report_path_is_checked_before_the_bootstrap(coco, tmp_path, monkeypatch, where):
    import posecal.calibration.compare as C

    _, _, g, a = coco
    if where == "proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc")
        rep = "/proc/posecal-report"  # writable for root by os.access, yet nothing can be created there
    else:
        (tmp_path / "afile").write_text("x")
        rep = tmp_path / "afile" / "sub"

    def boom(*_a, **_k):
        raise AssertionError("the bootstrap ran before --report was checked")

    monkeypatch.setattr(C, "compare", boom)
    rc, _, err = _run(["compare", "--gt", g, a, a, "--report", rep])
    _one_error(rc, err, "'--report'", str(rep))


def test_compare_report_interrupted_keeps_the_previous_report(coco, tmp_path, monkeypatch):
    import posecal.calibration.compare_report as CR

    _, _, g, a = coco
    rep = tmp_path / "rep"
    assert _run(["compare", "--gt", g, a, a, "--resamples", "3", "--report", rep])[0] == 0
    before = {p.name: p.read_bytes() for p in rep.iterdir()}

    def interrupted(plt, pes, path):
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setitem(CR.FIGURES, "sparsification.png", interrupted)
    rc, _, err = _run(["compare", "--gt", g, a, a, "--resamples", "4", "--report", rep])
    assert rc == 130 and "interrupted" in err
    assert {p.name: p.read_bytes() for p in rep.iterdir()} == before
    _no_leftovers(tmp_path, "rep")
    (tmp_path / "new").mkdir()
    rc, _, _ = _run(["compare", "--gt", g, a, a, "--resamples", "4", "--report", tmp_path / "new" / "r"])
    assert rc == 130 and not (tmp_path / "new" / "r").exists()
    _no_leftovers(tmp_path / "new", "r")


# --- evaluate --report ---------------------------------------------------------------------------------
def test_evaluate_report_unwritable_place_is_named_before_work(coco, monkeypatch):
    import posecal.cli.evaluate as E

    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc")
    _, _, g, a = coco
    monkeypatch.setattr(E, "load_inputs", lambda *_: (_ for _ in ()).throw(AssertionError("loaded")))
    rc, _, err = _run(["evaluate", "--gt", g, "--pred", a, "--report", "/proc/posecal-report"])
    line = _one_error(rc, err, "'--report'", "/proc/posecal-report")
    assert ".tmp" not in line  # not the name of a temporary folder the user never chose


def test_evaluate_report_interrupted_leaves_old_report_or_nothing(coco, tmp_path, monkeypatch):
    import posecal.calibration.report as R

    _, _, g, a = coco
    rep = tmp_path / "rep"
    assert _run(["evaluate", "--gt", g, "--pred", a, "--report", rep, "--random-seeds", "1"])[0] == 0
    _refs_exist(rep)
    before = {p.name: p.read_bytes() for p in rep.iterdir()}
    real = R._fig_sparsification

    def interrupted(plt, audit, path):
        real(plt, audit, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "_fig_sparsification", interrupted)
    rc, _, err = _run(["evaluate", "--gt", g, "--pred", a, "--report", rep, "--random-seeds", "1"])
    assert rc == 130 and "interrupted" in err
    assert {p.name: p.read_bytes() for p in rep.iterdir()} == before
    rc, _, _ = _run(["evaluate", "--gt", g, "--pred", a, "--report", tmp_path / "fresh", "--random-seeds", "1"])
    assert rc == 130 and not (tmp_path / "fresh").exists()
    _no_leftovers(tmp_path, "rep")
    _no_leftovers(tmp_path, "fresh")


@pytest.mark.parametrize("case", ["single", "no_match", "kpt_scores_0", "no_labelled_gt", "empty", "seeds_0"])
def test_evaluate_report_degenerate_inputs_give_strict_json_and_whole_pages(coco, tmp_path, case):
    gt, res, g, a = coco
    args = ["--random-seeds", "1"]
    if case == "single":
        a = _write(tmp_path / "p.json", res[:1])
    elif case == "no_match":
        a = _write(tmp_path / "p.json", [dict(r, keypoints=[v + 5000 if i % 3 != 2 else v
                                                            for i, v in enumerate(r["keypoints"])]) for r in res])
    elif case == "kpt_scores_0":
        a = _write(tmp_path / "p.json", [dict(r, keypoints=[0 if i % 3 == 2 else v
                                                            for i, v in enumerate(r["keypoints"])]) for r in res])
    elif case == "no_labelled_gt":
        g2 = copy.deepcopy(gt)
        for ann in g2["annotations"]:
            ann["keypoints"], ann["num_keypoints"] = [0] * 51, 0
        g = _write(tmp_path / "g.json", g2)
    elif case == "empty":
        a = _write(tmp_path / "p.json", [])
    else:
        args = ["--random-seeds", "0"]
    rep = tmp_path / "rep"
    rc, out, err = _run(["evaluate", "--gt", g, "--pred", a, "--report", rep, "--json", "-", *args])
    assert rc == 0 and "Traceback" not in err, err
    doc = _strict(out)
    assert _strict((rep / "metrics.json").read_text())["calibration"] == doc["calibration"]
    _refs_exist(rep)
    for k, v in doc["calibration"].items():
        if v is None and not k.endswith("_reason") and k + "_reason" in doc["calibration"]:
            assert doc["calibration"][k + "_reason"]


# --- the folder swap ------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
@pytest.mark.parametrize("where", ["process", "other_thread"])
def test_replace_dir_holds_ctrl_c_back_between_its_two_renames(tmp_path, monkeypatch, where):
    """``other_thread``: the kernel hands a process-directed Ctrl-C to any thread that does not block it (a pool
    thread of onnxruntime or torch); before, only the main thread's signal mask held it back, so it landed
    between the renames (seen as a flaky failure of the ``process`` case in a test process with threads)."""
    import threading

    from posecal import _outputs

    final, tmp = tmp_path / "rep", tmp_path / ".rep.new"
    final.mkdir()
    (final / "index.html").write_text("old")
    tmp.mkdir()
    (tmp / "index.html").write_text("new")
    real = os.replace
    calls = []
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, daemon=True)
    worker.start()

    def replace(src, dst):
        real(src, dst)
        calls.append(dst)
        if len(calls) == 1:  # Ctrl-C right after the old folder went aside
            if where == "process":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                signal.pthread_kill(worker.ident, signal.SIGINT)
            for _ in range(1000):  # bytecodes in which Python would run a pending handler
                pass

    monkeypatch.setattr(_outputs.os, "replace", replace)
    try:
        with pytest.raises(KeyboardInterrupt):
            _outputs.replace_dir(tmp, final)
    finally:
        stop.set()
        worker.join()
    assert len(calls) == 2 and (final / "index.html").read_text() == "new"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back


# --- study ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["missing", "file", "folder"])
def test_study_head_that_is_not_a_head_folder_is_named(tmp_path, head):
    h = tmp_path / "h"
    if head == "file":
        h.write_text("{}")
    elif head == "folder":
        h.mkdir()
        (h / "other.txt").write_text("x")
    rc, _, err = _run(["study", "visibility", "--store", tmp_path / "store", "--head", h, "--out", tmp_path / "o"])
    _one_error(rc, err, "'--head'", str(h))
    assert not (tmp_path / "o").exists()


# --- demo -----------------------------------------------------------------------------------------------
def _fake_doc() -> dict:
    return {"label": "fake", "simulation": True, "seconds": 0.0, "provenance": {"data": "test"},
            "table": [{"method": "raw", "report": "before/index.html", "AP": 0.5, "AR": 0.6, "gap": 0.1,
                       "Pearson": None, "AUSE": 0.01}]}


def _fake_stage(out: Path) -> None:
    (out / "before").mkdir(parents=True)
    for f in ("index.html", "reliability.png"):
        (out / "before" / f).write_text("x")


def test_demo_interrupted_leaves_no_half_written_folder(tmp_path, monkeypatch):
    import posecal.demo as D

    def interrupted(out, **_):
        _fake_stage(out)
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "run_simulation", interrupted)
    out = tmp_path / "demo"
    rc, _, err = _run(["demo", "--out", out])
    assert rc == 130 and not out.exists()
    _no_leftovers(tmp_path, "demo")

    def fine(out, **_):
        _fake_stage(out)
        return _fake_doc()

    monkeypatch.setattr(D, "run_simulation", fine)
    rc, out_text, err = _run(["demo", "--out", out, "--json"])
    assert rc == 0, err
    _strict(out_text)
    _refs_exist(out)
    assert sorted(p.name for p in out.iterdir()) == ["before", "demo.json", "index.html"]
    # a second run replaces the previous demo whole; an interrupted one leaves it as it was
    monkeypatch.setattr(D, "run_simulation", interrupted)
    assert _run(["demo", "--out", out])[0] == 130
    _refs_exist(out)
    _no_leftovers(tmp_path, "demo")


def test_demo_refuses_a_folder_it_would_replace_with_the_users_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc, _, err = _run(["demo", "--out", out])
    _one_error(rc, err, "'--out'", "notes.txt")
    assert (out / "notes.txt").read_text() == "keep me"


def test_lsp_demo_ctrl_c_keeps_its_work_aside_and_a_failure_keeps_nothing(tmp_path, monkeypatch):
    import posecal.demo as D

    def interrupted(lsp, model, out, **_):
        (out / "work").mkdir(parents=True, exist_ok=True)
        (out / "work" / "store").write_text("partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "run_lsp", interrupted)
    out = tmp_path / "demo"
    args = ["demo", "--lsp", tmp_path / "lsp", "--model", tmp_path / "m.tflite", "--out", out]
    rc, _, err = _run(args)
    stage = tmp_path / ".demo.partial"
    assert rc == 130 and not out.exists() and (stage / "work" / "store").is_file() and str(stage) in err

    def fails(lsp, model, out, **_):
        raise D.PosecalInputError("bad model", field="--model")

    monkeypatch.setattr(D, "run_lsp", fails)
    _one_error(*_run(args)[::2], "bad model")
    assert stage.is_dir()  # a resumable earlier run is not thrown away by a later failure
    import shutil

    shutil.rmtree(stage)
    _one_error(*_run(args)[::2], "bad model")
    assert not stage.exists() and not out.exists()
