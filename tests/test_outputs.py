"""Shared output safety (posecal._outputs, posecal._util.atomic_path) and CLI plumbing (posecal.cli._args)."""

from __future__ import annotations

import argparse
import os

import pytest

from posecal._outputs import atomic_dir, check_creatable, refuse_clobber
from posecal._util import atomic_path, write_json_atomic
from posecal.cli._args import device, finite_float, one_line, plain_text, positive_int, threads
from posecal.errors import PosecalInputError


def test_refuse_clobber(tmp_path):
    a = tmp_path / "a.json"
    a.write_text("{}")
    store = tmp_path / "store"
    (store / "arrays").mkdir(parents=True)
    (tmp_path / "link.json").symlink_to(a)
    os.link(a, tmp_path / "hard.json")
    for out in (a, tmp_path / "link.json", tmp_path / "hard.json", store, store / "x.json", store / "arrays",
                tmp_path / "." / "a.json"):
        with pytest.raises(PosecalInputError, match="input --in"):
            refuse_clobber({"--in": [a, store]}, {"--out": out})
    with pytest.raises(PosecalInputError, match="--in"):  # a folder output whose files include an input
        refuse_clobber({"--in": tmp_path / "h" / "head.json"}, {"--out": tmp_path / "h"},
                       dir_outputs={"--out": ["head.json"]})
    with pytest.raises(PosecalInputError, match="same file"):
        refuse_clobber({}, {"--out": tmp_path / "o.json", "--save": tmp_path / "o.json"})
    refuse_clobber({"--in": a, "--none": None}, {"--out": tmp_path / "new.json", "--json": "-"})  # fine


def test_check_creatable(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    with pytest.raises(PosecalInputError, match="is a folder"):
        check_creatable(tmp_path / "d", "file")
    with pytest.raises(PosecalInputError, match="not a folder"):
        check_creatable(tmp_path / "f" / "x.json", "file")
    with pytest.raises(PosecalInputError, match="not a folder"):
        check_creatable(tmp_path / "f", "dir")
    with pytest.raises(PosecalInputError, match="cannot create"):
        check_creatable("/proc/posecal-x/out.json", "file")
    check_creatable(tmp_path / "new" / "deeper" / "x.json", "file")
    check_creatable(tmp_path / "d", "dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]  # the probes leave nothing


def test_atomic_writes_honour_umask_and_leave_nothing_on_failure(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"a": 1})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        write_json_atomic(tmp_path / "b.json", {"a": 1})
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "c.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as d:
        (d / "one.json").write_text("1")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]
    with atomic_dir(tmp_path / "out") as d:
        (d / "one.json").write_text("1")
        (d / "two.json").write_text("2")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one.json", "two.json"]


def test_validators_and_messages():
    assert positive_int("3") == 3 and threads("2") == 2 and finite_float("1e-3") == 1e-3
    assert device("cuda:1") == "cuda:1"
    for fn, bad in ((positive_int, "0"), (positive_int, "-1"), (positive_int, "1.5"), (positive_int, "2" * 30),
                    (threads, "0"), (finite_float, "nan"), (finite_float, "inf"), (device, "gpu")):
        with pytest.raises(argparse.ArgumentTypeError):
            fn(bad)
    assert one_line("a\nb\rc\x1b\u2028") == "a\\nb\\rc\\x1b\\u2028"
    assert plain_text("``x`` and :func:`posecal.a` **b**::\n") == "x and posecal.a b:\n"


def test_check_report_folder(tmp_path):
    """A report replaces its folder as a whole: only a new, empty or previous-report folder is accepted."""
    from posecal._outputs import check_report_folder

    check_report_folder(tmp_path / "new", {})
    (tmp_path / "empty").mkdir()
    check_report_folder(tmp_path / "empty", {})
    old = tmp_path / "old"
    old.mkdir()
    for f in ("index.html", "metrics.json", "pr_curves.png"):
        (old / f).write_text("x")
    # before: any index.html made a folder "a previous report", so a user's site folder (index.html,
    # data.json, logo.png) was deleted as a whole by `--report` into it
    with pytest.raises(PosecalInputError, match="index.html that posecal did not write"):
        check_report_folder(old, {})
    (old / "index.html").write_text('<!doctype html><html><head><meta charset="utf-8"><meta name="generator" '
                                    'content="posecal"><title>anything</title>')
    check_report_folder(old, {"--gt": tmp_path / "gt.json"})
    (old / "index.html").write_text("<!doctype html>\n<html><head><title>posecal compare</title>")  # older reports
    check_report_folder(old, {})
    with pytest.raises(PosecalInputError, match="holds the input --gt"):
        check_report_folder(old, {"--gt": old / "metrics.json"})
    (old / "sub").mkdir()
    with pytest.raises(PosecalInputError, match="'sub'"):
        check_report_folder(old, {})
    only_json = tmp_path / "results"
    only_json.mkdir()
    (only_json / "pred.json").write_text("[]")
    with pytest.raises(PosecalInputError, match="holds .pred.json.: not a posecal report"):
        check_report_folder(only_json, {})
    (tmp_path / "file").write_text("x")
    with pytest.raises(PosecalInputError, match="not a folder"):
        check_report_folder(tmp_path / "file", {})
