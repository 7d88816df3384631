"""A posecal process started with stdout closed (``cmd >&-``): results asked for on stdout are refused in one
line (exit 2, nothing written), everything else runs (its tables have nowhere to go, as print() drops them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _cocogen import make_coco_set

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _closed_stdout(argv: list[str], cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-m", "posecal", *argv], cwd=cwd, env=env, stderr=subprocess.PIPE,
                       text=True, preexec_fn=lambda: os.close(1), timeout=120)
    return p.returncode, p.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("closed")
    gt, res = make_coco_set(seed=3)[:2]
    import json

    (d / "gt.json").write_text(json.dumps(gt))
    (d / "pred.json").write_text(json.dumps(res))
    return d


@pytest.mark.parametrize("argv, field", [
    (["rescore", "--gt", "gt.json", "--pred", "pred.json", "--method", "mmpose-keypoint", "--out", "-"], "--out"),
    (["evaluate", "--gt", "gt.json", "--pred", "pred.json", "--json", "-"], "--json"),
    (["compare", "--gt", "gt.json", "pred.json", "pred.json", "--json", "--resamples", "10"], "--json"),
])
def test_results_on_a_closed_stdout_are_refused(files, argv, field):
    """Before: rescore wrote its results with sys.stdout.buffer after all the work: AttributeError traceback."""
    before = sorted(p.name for p in files.iterdir())
    rc, err = _closed_stdout(argv, files)
    lines = err.strip().splitlines()
    assert rc == 2 and "Traceback" not in err, err
    assert f"field '{field}': stdout is closed" in lines[-1] and sum("error" in ln for ln in lines) == 1, err
    assert sorted(p.name for p in files.iterdir()) == before


def test_commands_writing_files_still_run_with_stdout_closed(files):
    rc, err = _closed_stdout(["rescore", "--gt", "gt.json", "--pred", "pred.json", "--method", "mmpose-keypoint",
                              "--out", "o.json"], files)
    assert rc == 0 and "Traceback" not in err, err
    assert (files / "o.json").stat().st_size > 0
    rc, err = _closed_stdout(["evaluate", "--gt", "gt.json", "--pred", "pred.json"], files)
    assert rc == 0 and "Traceback" not in err, err
