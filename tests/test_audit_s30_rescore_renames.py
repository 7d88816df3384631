"""``rescore --out O --save-calibrator C`` promises both files or neither; a Ctrl-C between the two renames
left a new C beside an old O (reported by the s30 aliasing audit). The renames now run with SIGINT / SIGTERM
held back: the interrupt lands after both, and the run still exits 130."""

from __future__ import annotations

import os
import signal

from test_rescore_audit_s24 import world  # noqa: F401  (module fixture)


def test_ctrl_c_between_the_two_renames_lands_after_both(world, monkeypatch):  # noqa: F811
    from posecal.cli import main

    d = world
    out, cal = d / "o.json", d / "c.json"
    out.write_text("[]")
    cal.write_text("{}")
    real_replace = os.replace
    done: list[str] = []

    def replace_then_interrupt(src, dst):  # Ctrl-C right after the first rename
        real_replace(src, dst)
        if os.path.basename(dst) in ("o.json", "c.json"):  # the final renames (writers use temp files too)
            done.append(os.path.basename(dst))
            if len(done) == 1:
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    rc = main(["rescore", "--pred", str(d / "pred.json"), "--gt", str(d / "gt.json"), "--method", "closed-form",
               "--out", str(out), "--save-calibrator", str(cal)])
    assert rc == 130
    assert sorted(done) == ["c.json", "o.json"]  # was: only the first renamed, then KeyboardInterrupt
    assert out.read_text() != "[]" and cal.read_text() != "{}"


def test_compare_warns_when_a_and_b_are_the_same_file(world):  # noqa: F811
    """``compare --gt G A.json A.json`` (a script's typo) ran silently, reporting 'all tied'; now one warning."""
    from test_hostile_inputs import _run

    d = world
    rc, out, err = _run(["compare", "--gt", d / "gt.json", d / "pred.json", d / "pred.json", "--resamples", "20"])
    assert rc == 0 and err.count("same content as A") == 1, err
    rc, out, err = _run(["compare", "--gt", d / "gt.json", d / "pred.json", d / "fpred.json", "--resamples", "20"])
    assert "same content" not in err
