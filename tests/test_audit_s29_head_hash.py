"""Audit s29: a head folder whose ``head.safetensors`` (or ``context.safetensors``) is another head's file of
the same shapes loaded without complaint — ``posecal apply`` / ``export`` then used the wrong weights.
``save_head`` records each file's SHA-256 in head.json and ``load_head`` checks it (after the checks that
name what is wrong inside a damaged file); a head saved before the key existed loads as before."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from posecal.ccnet.checkpoint import CONTEXT_SHA, WEIGHTS_SHA, load_head  # noqa: E402
from posecal.errors import PosecalInputError  # noqa: E402
from test_head_hostile import _DROP, _head, edit_json_file  # noqa: E402


def _other(tmp_path, name, **kw):
    torch.manual_seed(1)
    d = _head(tmp_path / name, **kw)
    with torch.no_grad():  # same shapes, other values
        from safetensors.torch import load_file, save_file

        s = load_file(d / "head.safetensors")
        s["weight"] = s["weight"] + 0.5
        save_file(s, d / "head.safetensors")
    return d


def test_another_heads_weights_are_refused(tmp_path):
    a = _head(tmp_path / "a")
    assert len(json.loads((a / "head.json").read_text())[WEIGHTS_SHA]) == 64
    b = _other(tmp_path, "b")
    shutil.copy(b / "head.safetensors", a / "head.safetensors")
    with pytest.raises(PosecalInputError) as e:
        load_head(a)
    assert e.value.field == WEIGHTS_SHA and str(e.value.file).endswith("head.safetensors")
    edit_json_file(a / "head.json", weights_sha256=_DROP)  # what the message says to do to use it anyway
    load_head(a)


def test_another_heads_context_stage_is_refused(tmp_path):
    a = _head(tmp_path / "a", context=True)
    b = _head(tmp_path / "b", context=True, box_score=True)
    assert json.loads((a / "head.json").read_text())[CONTEXT_SHA]
    ctx = b / "context.safetensors"
    from safetensors.numpy import load_file, save_file

    arr = load_file(ctx)
    arr["coef"] = arr["coef"] * 0.5
    save_file(arr, a / "context.safetensors")
    with pytest.raises(PosecalInputError) as e:
        load_head(a)
    assert e.value.field == CONTEXT_SHA


def test_a_head_without_the_hashes_still_loads(tmp_path):
    a = _head(tmp_path / "a", context=True)
    edit_json_file(a / "head.json", weights_sha256=_DROP, context_sha256=_DROP)
    assert load_head(a)[0].context_stage is not None


def test_a_garbage_hash_names_head_json(tmp_path):
    a = _head(tmp_path / "a")
    edit_json_file(a / "head.json", weights_sha256=12)
    with pytest.raises(PosecalInputError) as e:
        load_head(a)
    assert e.value.field == WEIGHTS_SHA and str(e.value.file).endswith("head.json")
