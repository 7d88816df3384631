"""``POSECAL_PROGRESS=log``: progress for pipelines whose stderr is a log file (added in session 30).

Without a terminal posecal shows no progress (the MLOps audit: a 10-minute extract in Airflow said nothing
until it ended), and ``POSECAL_PROGRESS=1`` forced tqdm's carriage-return redraws into the log. ``log`` writes
plain lines instead: the first, the last and one every ``POSECAL_PROGRESS_INTERVAL`` seconds; ``--json``
stdout stays one document.
"""

from __future__ import annotations

import json

import pytest

from test_hostile_inputs import _run

pytest.importorskip("onnxruntime")


def test_log_mode_writes_whole_lines_and_keeps_json_stdout(shared, mini, tmp_path, monkeypatch):
    data, img, _ = mini
    monkeypatch.setenv("POSECAL_PROGRESS", "log")
    monkeypatch.setenv("POSECAL_PROGRESS_INTERVAL", "0")
    rc, out, err = _run(["detect", "--model", shared("models", "nanodet", "nanodet-m-416.onnx"), "--images", img,
                         "--data", data, "--out", tmp_path / "det.json", "--json"])
    assert rc == 0, err
    assert json.loads(out)["images"] == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("detect:")]
    assert "\r" not in err and lines[0].startswith("detect: 0/2 (0 %)") and lines[-1].startswith("detect: 2/2 (100 %)")
    assert len(lines) == len(set(lines))  # the final state once


def test_default_without_a_terminal_is_silent(shared, mini, tmp_path, monkeypatch):
    data, img, _ = mini
    monkeypatch.delenv("POSECAL_PROGRESS", raising=False)
    rc, out, err = _run(["detect", "--model", shared("models", "nanodet", "nanodet-m-416.onnx"), "--images", img,
                         "--data", data, "--out", tmp_path / "det.json", "--json"])
    assert rc == 0 and err == "", err
