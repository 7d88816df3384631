"""Audit (session 28, review of the session's change):

* ``rescore --calibrator C`` whose every new instance score is 0 warned naming the command line's
  ``--keypoint-score-thr`` (default 0.2) although the loaded calibrator keeps and uses its own (here 2).
* a SIGTERM that Python wrapped into another exception before ``main``'s handler was in place exited 143
  but said "posecal: interrupted" (the Ctrl-C wording); it now says "terminated (signal 15)", as elsewhere.
"""

from __future__ import annotations

import sys
import warnings

import pytest

from test_audit_s28_rescore_all_zero import _files


def test_all_zero_warning_names_the_loaded_calibrators_threshold(tmp_path, capsys):
    from posecal.cli import main

    gt, pred = _files(tmp_path)
    cal = tmp_path / "c.json"
    common = ["rescore", "--pred", str(pred), "--gt", str(gt), "--method", "mmpose-bbox_keypoint"]
    assert main([*common, "--keypoint-score-thr", "2", "--save-calibrator", str(cal),
                 "--out", str(tmp_path / "a.json")]) == 0
    capsys.readouterr()
    assert main([*common, "--calibrator", str(cal), "--out", str(tmp_path / "b.json")]) == 0
    err = capsys.readouterr().err
    assert "every new instance score is 0" in err
    assert "--keypoint-score-thr 2.0" in err and "--keypoint-score-thr 0.2" not in err


def test_wrapped_sigterm_before_main_says_terminated(monkeypatch, capsys):
    import posecal.cli as cli

    def main() -> int:
        try:
            raise cli.Terminated(15)
        except cli.Terminated as e:
            raise RuntimeError("while a class body ran") from e

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # console_main sets it: restored
    monkeypatch.setattr(cli, "_terminate_as_interrupt", lambda: None)  # no handler left in the test process
    monkeypatch.setattr(cli, "main", main)
    monkeypatch.setattr(cli, "_exit_interrupted", sys.exit)  # in-process: os._exit would end pytest itself
    with pytest.raises(SystemExit) as e:
        cli.console_main()
    assert e.value.code == 143
    assert capsys.readouterr().err == "posecal: terminated (signal 15)\n"
