"""CLI consistency of ``posecal compare`` and ``posecal apply`` with ``evaluate`` / ``rescore``:

- compare takes ``--sigmas`` in every form evaluate takes (space or comma separated) and ``--keypoint-set``;
  a space-separated list before the result files does not swallow them;
- P(B better) counts tied resamples as half (a metric B cannot change reads 0.5 "all tied", not 0);
- ``apply --out -`` writes the results to stdout (summary on stderr), as ``rescore --out -`` does.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _cocogen import make_coco_set
from posecal.calibration.compare import METRICS, compare
from posecal.cli import main

SIG5 = ["0.026", "0.035", "0.035", "0.079", "0.089"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def custom5(tmp_path_factory):
    """A 5-keypoint set whose names match no known keypoint set; B = A with reversed scores."""
    d = tmp_path_factory.mktemp("custom5")
    gt, res = make_coco_set(3, n_images=8, max_dets=5, K=5, p_crowd=0.0)
    b = copy.deepcopy(res)
    for r in b:
        r["score"] = round(1.0 - r["score"], 3)
    for name, doc in (("gt.json", gt), ("a.json", res), ("b.json", b)):
        (d / name).write_text(json.dumps(doc))
    return {k: str(d / f"{k}.json") for k in ("gt", "a", "b")}


def test_compare_custom_set_needs_sigmas_and_names_flags_it_has(custom5, capsys):
    f = custom5
    rc, out, err = _cli(["compare", "--gt", f["gt"], f["a"], f["b"], "--resamples", "3"], capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f["gt"] in err and "--sigmas" in err and "--keypoint-set" in err
    # the --keypoint-set the message suggests exists: a set of the wrong size is refused for that reason
    rc, _, err = _cli(["compare", "--gt", f["gt"], "--keypoint-set", "coco17", f["a"], f["b"]], capsys)
    assert rc == 2 and "unrecognized" not in err and "17 keypoints" in err and "--keypoint-set" in err
    rc, _, err = _cli(["compare", "--gt", f["gt"], "--keypoint-set", "nope", f["a"], f["b"]], capsys)
    assert rc == 2 and "unknown keypoint set 'nope'" in err
    rc, _, err = _cli(["compare", "--gt", f["gt"], "--keypoint-set", "coco17", "--sigmas", *SIG5, f["a"], f["b"]],
                      capsys)
    assert rc == 2 and "not allowed with" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("form", ["space-before", "space-after", "comma-before", "comma-after", "mixed-between",
                                  "equals-then-space", "abbrev", "double-dash"])
def test_compare_sigmas_forms_agree(custom5, capsys, form):
    f = custom5
    files = [f["a"], f["b"]]
    comma = ",".join(SIG5)
    argv = {
        "space-before": ["--sigmas", *SIG5, *files],
        "space-after": [*files, "--sigmas", *SIG5],
        "comma-before": ["--sigmas", comma, *files],
        "comma-after": [*files, "--sigmas", comma],
        "mixed-between": [files[0], "--sigmas", "0.026,0.035", "0.035", "0.079,0.089", files[1]],
        "equals-then-space": [f"--sigmas={SIG5[0]}", *SIG5[1:], *files],
        "abbrev": ["--sig", *SIG5, *files],
        "double-dash": ["--sigmas", *SIG5, "--", *files],
    }[form]
    base = ["compare", "--gt", f["gt"], "--resamples", "7", "--json"]
    rc, out, err = _cli(base + argv, capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["files"] == {"A": f["a"], "B": f["b"], "gt": f["gt"]}
    want = compare(f["gt"], f["a"], f["b"], resamples=7, sigmas=[float(s) for s in SIG5]).to_dict()
    assert doc["metrics"] == want["metrics"]
    # the sigmas reached the evaluator: other sigmas give another AP
    other = compare(f["gt"], f["a"], f["b"], resamples=7, sigmas=[0.1] * 5).to_dict()
    assert other["metrics"]["AP"]["a"] != doc["metrics"]["AP"]["a"]


def test_compare_bad_sigmas_are_one_line_exit_2(custom5, capsys):
    f = custom5
    for argv, needle in (
        (["--sigmas", "0.1,x,0.1,0.1,0.1", f["a"], f["b"]], "--sigmas"),
        (["--sigmas", f["a"], f["b"]], "--sigmas"),  # no number at all: the file is named as not a number
        (["--sigmas", "0.1", "0.2", f["a"], f["b"]], "expected 5 finite OKS sigmas > 0"),
        ([f["a"], f["b"], "--sigmas", "0.1", "0.1", "0.1", "nan", "0.1"], "expected 5 finite OKS sigmas > 0"),
    ):
        rc, out, err = _cli(["compare", "--gt", f["gt"], *argv, "--resamples", "3"], capsys)
        assert rc == 2 and out == "", argv
        assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err, (argv, err)


def test_compare_keypoint_set_equals_default_set(tmp_path, capsys):
    gt, res = make_coco_set(6, n_images=6, max_dets=5)  # COCO-17 names
    b = copy.deepcopy(res)
    for r in b:
        r["score"] = 1.0 - r["score"]
    paths = {}
    for name, doc in (("gt", gt), ("a", res), ("b", b)):
        paths[name] = str(tmp_path / f"{name}.json")
        Path(paths[name]).write_text(json.dumps(doc))
    base = ["compare", "--gt", paths["gt"], paths["a"], paths["b"], "--resamples", "5", "--json"]
    rc1, out1, err1 = _cli(base, capsys)
    rc2, out2, err2 = _cli(base + ["--keypoint-set", "coco17"], capsys)
    assert rc1 == rc2 == 0, (err1, err2)
    assert json.loads(out1)["metrics"] == json.loads(out2)["metrics"]
    rc3, out3, _ = _cli(base + ["--keypoint-set", "crowdpose14"], capsys)
    assert rc3 == 2 and out3 == ""


def test_p_better_counts_ties_as_half():
    gt, res = make_coco_set(3, n_images=8, max_dets=5, K=5, p_crowd=0.0)
    b = copy.deepcopy(res)
    for r in b:
        r["score"] = round(1.0 - r["score"], 3)
    sig = [0.026, 0.035, 0.035, 0.079, 0.089]
    ab = compare(gt, res, b, resamples=40, seed=2, sigmas=sig)
    ba = compare(gt, b, res, resamples=40, seed=2, sigmas=sig)
    # the premise: AR cannot differ on this pair (every resample tied), AP does
    assert np.all(ab.samples["AR"] == 0) and np.any(ab.samples["AP"] != 0)
    assert ab.p_better["AR"] == 0.5 and ab.p_tied["AR"] == 1.0 and ab.all_tied("AR")
    assert ab.p_tied["AP"] < 1.0 and not ab.all_tied("AP")
    for m in METRICS:  # swapping A and B: P(B better) + P(A better) = 1, ties included
        if np.isfinite(ab.p_better[m]):
            assert ab.p_better[m] + ba.p_better[m] == pytest.approx(1.0, abs=1e-12), m
    d = ab.to_dict()["metrics"]
    assert d["AR"]["p_better"] == 0.5 and d["AR"]["p_tied"] == 1.0
    # identical inputs: every metric tied everywhere (or undefined), never "B certainly worse"
    same = compare(gt, res, copy.deepcopy(res), resamples=10, sigmas=sig)
    assert same.p_better["AP"] == same.p_better["AR"] == 0.5


def test_compare_table_json_and_report_show_ties(custom5, tmp_path, capsys):
    f = custom5
    base = ["compare", "--gt", f["gt"], f["a"], f["b"], "--resamples", "9", "--sigmas", *SIG5]
    rc, out, err = _cli(base, capsys)
    assert rc == 0, err
    ar = next(line for line in out.splitlines() if line.startswith("AR "))
    assert ar.endswith("0.5000 (all tied)"), ar
    ap = next(line for line in out.splitlines() if line.startswith("AP "))
    assert "all tied" not in ap
    rc, out, err = _cli(base + ["--json"], capsys)
    assert rc == 0, err
    m = json.loads(out)["metrics"]
    assert m["AR"]["p_better"] == 0.5 and m["AR"]["p_tied"] == 1.0 and m["AP"]["p_tied"] < 1.0
    pytest.importorskip("matplotlib")
    rep = tmp_path / "rep"
    rc, _, err = _cli(base + ["--report", str(rep)], capsys)
    assert rc == 0, err
    assert "0.5000 (all tied)" in (rep / "index.html").read_text()
    assert json.loads((rep / "compare.json").read_text())["metrics"]["AR"]["p_tied"] == 1.0


# -- apply --out - -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store_and_head(tmp_path_factory):
    pytest.importorskip("torch")
    from test_ccnet_cli import make_store

    d = tmp_path_factory.mktemp("apply_stdout")
    train, test = make_store(d / "train", N=64, seed=0), make_store(d / "test", N=40, seed=1)
    assert main(["fit", "--store", str(train), "--out", str(d / "head"), "--steps", "20", "--batch-size",
                 "16", "--json"]) == 0
    return d, test, d / "head"


def _apply(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "posecal", "apply", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_apply_out_dash_writes_stdout(store_and_head, tmp_path):
    d, store, head = store_and_head
    ref = tmp_path / "ref.json"
    p = _apply(["--store", str(store), "--head", str(head), "--out", str(ref)], tmp_path)
    assert p.returncode == 0, p.stderr
    want = json.loads(ref.read_text())
    assert len(want) == 40
    work = tmp_path / "cwd"
    work.mkdir()
    p = _apply(["--store", str(store), "--head", str(head), "--out", "-"], work)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == want  # stdout is exactly the results, nothing else
    assert "40 records rescored" in p.stderr and "stdout" in p.stderr
    assert list(work.iterdir()) == []  # no file named '-'
    # --json: the summary moves to stderr, stdout still carries only the results
    p = _apply(["--store", str(store), "--head", str(head), "--out", "-", "--json"], work)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == want
    summary = json.loads(p.stderr)
    assert summary["out"] == "-" and summary["records"] == 40
    assert list(work.iterdir()) == []
    # a file --out keeps its summary on stdout
    p = _apply(["--store", str(store), "--head", str(head), "--out", str(tmp_path / "x.json"), "--json"], work)
    assert p.returncode == 0 and json.loads(p.stdout)["out"] == str(tmp_path / "x.json")
    # bad input with --out -: one error line, nothing on stdout
    p = _apply(["--store", str(tmp_path / "nostore"), "--head", str(head), "--out", "-"], work)
    assert p.returncode == 2 and p.stdout == "" and len(p.stderr.strip().splitlines()) == 1


def test_a_missing_optional_extra_is_one_error_line(monkeypatch, tmp_path, capsys):
    """An optional dependency a command needs but that is not installed: one line naming it and the extra that
    installs it, exit 2 (compare --report checks before the bootstrap, so nothing is written); a missing
    module that is not an optional extra stays a bug (its traceback)."""
    import argparse

    from posecal.cli import _run_command

    def fails(name):
        def run(args):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return run

    for mod, extra in (("onnxruntime", "onnx"), ("torch", "torch"), ("ai_edge_litert", "tflite"),
                       ("matplotlib", "report")):
        assert _run_command(argparse.Namespace(command="x", _run=fails(mod))) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pip install 'posecal[{extra}]'" in err and "Traceback" not in err
    with pytest.raises(ModuleNotFoundError):
        _run_command(argparse.Namespace(command="x", _run=fails("posecal_no_such_module")))
    gt, res = make_coco_set(4, n_images=4, max_dets=3)
    g, a = tmp_path / "g.json", tmp_path / "a.json"
    g.write_text(json.dumps(gt))
    a.write_text(json.dumps(res))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    rc = main(["compare", "--gt", str(g), str(a), str(a), "--report", str(tmp_path / "R")])
    err = capsys.readouterr().err
    assert rc == 2 and "needs matplotlib" in err and "posecal[report]" in err and not (tmp_path / "R").exists()


def test_compare_says_why_a_metric_is_na(tmp_path, capsys):
    """A constant confidence has no Pearson correlation: the table, --json and the report say why."""
    gt, res = make_coco_set(5, n_images=6, max_dets=4, p_crowd=0.0)
    const = [dict(r, score=0.5) for r in res]
    g, a, b = tmp_path / "g.json", tmp_path / "a.json", tmp_path / "b.json"
    for f, doc in ((g, gt), (a, res), (b, const)):
        f.write_text(json.dumps(doc))
    rc, out, err = _cli(["compare", "--gt", str(g), str(a), str(b), "--resamples", "20"], capsys)
    assert rc == 0, err
    row = next(line for line in out.splitlines() if line.startswith("pearson"))
    assert "n/a: B: constant confidence" in row
    rc, out, _ = _cli(["compare", "--gt", str(g), str(a), str(b), "--resamples", "20", "--json",
                       "--report", str(tmp_path / "R")], capsys)
    doc = json.loads(out)["metrics"]["pearson"]
    assert rc == 0 and doc["b"] is None and doc["b_reason"] == "constant confidence" and "a_reason" not in doc
    assert "(n/a: B: constant confidence)" in (tmp_path / "R" / "index.html").read_text()
