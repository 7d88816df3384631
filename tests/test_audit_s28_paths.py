"""Audit of hostile file-system situations (session 28): file names that are not valid UTF-8, '-' given where a
command cannot write to stdout, a stdout whose reader has gone, a full disk, SIGTERM in the middle of a run, and
two runs writing one output folder at once."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from _cocogen import make_coco_set
from posecal._outputs import atomic_dir
from posecal._util import atomic_path
from posecal.cli import main

BAD = "bad\udcff.json"  # the file name b"bad\xff.json" as Python sees it (not valid UTF-8)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as for users
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def coco(tmp_path):
    gt, res = make_coco_set(5, n_images=6, max_gts=4, max_dets=6)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(res))
    return tmp_path / "gt.json", tmp_path / "pred.json"


def _bad_name_or_skip(folder: Path) -> Path:
    p = folder / BAD
    try:
        p.write_bytes(b"")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses file names that are not valid UTF-8")
    p.unlink()
    return p


# --- file names that are not valid UTF-8 (Linux allows any bytes but '/' and NUL) -----------------------------

@pytest.mark.parametrize("cmd", ["evaluate", "compare"])
def test_reports_name_a_file_whose_name_is_not_utf8(coco, tmp_path, capsys, cmd):
    """The HTML report shows the input's name: it was encoded strictly as UTF-8 and crashed (a traceback, exit
    1) after all the work."""
    pytest.importorskip("matplotlib")
    gt, pred = coco
    bad = _bad_name_or_skip(tmp_path)
    bad.write_bytes(pred.read_bytes())
    rep = tmp_path / "rep"
    argv = (["evaluate", "--gt", str(gt), "--pred", str(bad)] if cmd == "evaluate"
            else ["compare", "--gt", str(gt), str(bad), str(pred), "--resamples", "20"])
    assert main([*argv, "--report", str(rep)]) == 0, capsys.readouterr().err
    page = (rep / "index.html").read_bytes()
    page.decode("utf-8")  # a valid UTF-8 page
    assert b"bad\\udcff.json" in page


def test_tables_print_a_file_name_that_is_not_utf8_under_a_utf8_locale(coco, tmp_path):
    """Under a UTF-8 locale (en_US.UTF-8: stdout encodes strictly) printing the name crashed with a
    UnicodeEncodeError traceback (compare's "A = ...", apply's "... rescored with HEAD")."""
    gt, pred = coco
    bad = _bad_name_or_skip(tmp_path)
    bad.write_bytes(pred.read_bytes())
    env = {**_env(), "PYTHONIOENCODING": "utf-8:strict"}
    p = subprocess.run([sys.executable, "-m", "posecal", "compare", "--gt", str(gt), str(bad), str(pred),
                        "--resamples", "20"], capture_output=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert f"A = {tmp_path}/bad\\udcff.json".encode() in p.stdout


def test_a_head_in_a_folder_whose_name_is_not_utf8_loads(tmp_path):
    """safetensors' load_file refuses such a path ("Path ... is not valid UTF-8"): apply/export/study said
    "unreadable safetensors" about a sound head."""
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from posecal.ccnet.checkpoint import load_head
    from test_head_hostile import _head

    d = _bad_name_or_skip(tmp_path).with_name("head\udcfe")
    _head(d, context=True)
    head, meta = load_head(d)
    assert meta["head"] == "kpt" and hasattr(head, "context_stage")


# --- '-' where a command cannot write to stdout ----------------------------------------------------------------

DASH = [
    ["convert", "lsp", "J.mat", "--images", "I", "--out", "-"],
    ["detect", "--model", "m.onnx", "--images", "I", "--out", "-"],
    ["extract", "--model", "m.onnx", "--data", "d.json", "--images", "I", "--out", "-"],
    ["study", "visibility", "--store", "S", "--out", "-"],
    ["demo", "--out", "-"],
    ["evaluate", "--gt", "g.json", "--pred", "p.json", "--report", "-"],
    ["compare", "--gt", "g.json", "a.json", "b.json", "--report", "-"],
    ["rescore", "--pred", "p.json", "--method", "isotonic", "--fit-gt", "g.json", "--fit-pred", "p.json",
     "--save-calibrator", "-", "--out", "x.json"],
]


@pytest.mark.parametrize("argv", DASH, ids=[" ".join(a[:1] + a[-2:]) for a in DASH])
def test_dash_is_refused_where_stdout_is_not_supported(tmp_path, monkeypatch, capsys, argv):
    """A file or folder literally named '-' was written (and the clobber checks, which skip '-', bypassed)."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'-' (stdout) is not supported here" in err[0], err
    assert not os.path.lexists(tmp_path / "-")


# --- stdout whose reader has gone, a full disk -----------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--json", "-"]])
def test_broken_stdout_is_one_error_line_and_exit_2(coco, tmp_path, extra):
    """With stdout buffered (no PYTHONUNBUFFERED), a closed reader gave Python's two-line "Exception ignored
    ... BrokenPipeError" and exit 120."""
    gt, pred = coco
    r, w = os.pipe()
    os.close(r)  # the reader is gone before posecal writes a byte
    try:
        p = subprocess.run([sys.executable, "-m", "posecal", "evaluate", "--gt", str(gt), "--pred", str(pred),
                            *extra], stdout=w, stderr=subprocess.PIPE, env=_env(), timeout=120)
    finally:
        os.close(w)
    err = p.stderr.decode().strip().splitlines()  # with --json -, the summary table goes to stderr first
    assert p.returncode == 2 and err[-1:] == ["posecal evaluate: error: stdout: Broken pipe"], (p.returncode, err)
    assert not any("Exception" in line or "Error" in line for line in err[:-1]), err


def test_a_failed_write_names_the_output(tmp_path):
    """A full disk (ENOSPC from write(), which names no file) was reported as a bare "No space left on device"."""
    target = tmp_path / "x.json"
    with pytest.raises(OSError) as ei, atomic_path(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert ei.value.filename == str(target)
    folder = tmp_path / "out"
    with pytest.raises(OSError) as ei, atomic_dir(folder):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert ei.value.filename == str(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written, no temporary left


# --- SIGTERM in the middle of a run ----------------------------------------------------------------------------

TERM_MID_REPORT = r"""
import os, signal, sys
import posecal.calibration.report as report
real = report.write_report
def write_then_term(*a, **k):
    out = real(*a, **k)            # the report is in its temporary folder ...
    os.kill(os.getpid(), signal.SIGTERM)   # ... when the run is told to stop
    return out
report.write_report = write_then_term
sys.argv = ["posecal", "evaluate", "--gt", sys.argv[1], "--pred", sys.argv[2], "--report", sys.argv[3]]
from posecal.cli import console_main
console_main()
"""


def test_sigterm_leaves_no_temporary_folder(coco, tmp_path):
    """SIGTERM ended the process on the spot (exit -15), leaving the hidden '.rep.xxxx.tmp' folder behind."""
    pytest.importorskip("matplotlib")
    gt, pred = coco
    rep = tmp_path / "out" / "rep"
    rep.parent.mkdir()
    p = subprocess.run([sys.executable, "-c", TERM_MID_REPORT, str(gt), str(pred), str(rep)],
                       capture_output=True, env=_env(), timeout=300)
    err = p.stderr.decode().strip().splitlines()
    assert p.returncode == 128 + signal.SIGTERM, (p.returncode, err)
    assert err[-1:] == [f"terminated (signal {int(signal.SIGTERM)})"], err
    assert list(rep.parent.iterdir()) == []  # no report, no temporary folder


# --- two runs writing one output folder at once ----------------------------------------------------------------

def test_two_writers_of_one_folder_leave_one_runs_files(tmp_path, monkeypatch):
    """atomic_dir renamed each file into an existing folder with no lock: two runs (two `posecal fit --out H`)
    interleaved and left one run's head.json beside the other's head.safetensors."""
    out = tmp_path / "H"
    out.mkdir()
    real_replace = os.replace
    a_moved_one, go_on = threading.Event(), threading.Event()

    def replace(src, dst):  # run A pauses after moving its first file in
        real_replace(src, dst)
        if threading.current_thread().name == "A" and Path(dst).name == "a":
            a_moved_one.set()
            go_on.wait(10)

    monkeypatch.setattr(os, "replace", replace)

    def write(tag: str) -> None:
        with atomic_dir(out) as t:
            for n in "ab":
                (t / n).write_text(tag)

    ta = threading.Thread(target=write, args=("A",), name="A")
    ta.start()
    assert a_moved_one.wait(10)
    tb = threading.Thread(target=write, args=("B",), name="B")
    tb.start()
    tb.join(1.0)  # with the lock, B waits for A here
    go_on.set()
    ta.join(10)
    tb.join(10)
    assert len({(out / n).read_text() for n in "ab"}) == 1  # one run's files, not a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["H"]
