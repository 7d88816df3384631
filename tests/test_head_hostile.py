"""Hostile CCNet head folders: ``load_head`` (and through it ``posecal apply`` / ``posecal export``) refuses
malformed metadata and weights with one :class:`PosecalInputError` naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors.torch import load_file, save_file  # noqa: E402

from posecal.ccnet.checkpoint import MAX_ABS, load_head, save_head  # noqa: E402
from posecal.ccnet.context import CONTEXT_NAMES, ContextStage  # noqa: E402
from posecal.ccnet.heads import CCNetHead  # noqa: E402
from posecal.ccnet.targets import evidence_width, pose_channels  # noqa: E402
from posecal.cli import main  # noqa: E402
from posecal.errors import PosecalInputError  # noqa: E402

K, C = 3, 5
AGG = "sum(v_hat*s_hat)/sum(v_hat)"


def _meta(**kw: object) -> dict[str, object]:
    return {"keypoint_set": "lsp14", "feature_tensor": "features_kpt", "feature_shape": [K, C],
            "pooling": "heatmap", "model_tensor": "t", "model_sha256": "ab" * 32, "evidence": [],
            "aggregation": AGG, "box_score": False, **kw}


def _head(path: Path, kind: str = "kpt", extra: int = 0, context: bool = False, **meta: object) -> Path:
    """A tiny head of ``kind`` on (K, C + extra) inputs saved with :func:`save_head`; its ``feature_shape`` is
    the input less the ``evidence`` columns."""
    torch.manual_seed(0)
    head = CCNetHead(kind, C + extra, K)
    m = _meta(**meta)
    m["feature_shape"] = [K, C + extra - evidence_width(m["evidence"], K)]
    if context:
        rng = np.random.default_rng(0)
        c, ctx = rng.uniform(0.1, 0.9, 40), rng.uniform(0, 1, (40, len(CONTEXT_NAMES)))
        head.context_stage = ContextStage().fit(c, ctx, c * (ctx[:, 2] < 0.5))
        m["context"] = {"features": ["logit_c", *CONTEXT_NAMES]}
    save_head(path, head, m)
    return path


def edit_json_file(file: Path, **kw: object) -> None:
    """Set keys of a JSON object file (``_DROP`` removes one)."""
    m = json.loads(file.read_text())
    for k, v in kw.items():
        if v is _DROP:
            m.pop(k, None)
        else:
            m[k] = v
    file.write_text(json.dumps(m))


def _edit_json(path: Path, **kw: object) -> None:
    edit_json_file(path / "head.json", **kw)


def _edit_tensors(path: Path, fn) -> None:
    p = path / "head.safetensors"
    save_file(fn(load_file(str(p))), str(p))


_DROP = object()


def _refused(path: Path, file: str, field: str | None, match: str = "") -> PosecalInputError:
    with pytest.raises(PosecalInputError, match=match) as e:
        load_head(path)
    assert e.value.file == str(path / file), str(e.value)
    assert e.value.field == field, str(e.value)
    return e.value


def test_well_formed_heads_load(tmp_path):
    P = pose_channels(K)
    for kind, extra, ev in (("kpt", 0, []), ("kpt", 1, ["score"]), ("kpt", 2 + P, ["cf", "score", "pose"]),
                            ("kpt_inst", 6, []), ("kpt_pose", P, ["pose"])):
        d = _head(tmp_path / f"{kind}{extra}", kind, extra, evidence=ev)
        head, meta = load_head(d)
        assert head.in_channels == C + extra and meta["evidence"] == ev
    d = _head(tmp_path / "ctx", context=True, box_score=True, aggregation=AGG + " * box_score")
    assert load_head(d)[0].context_stage is not None
    # float16 / float64 weights are read into the float32 head
    d = _head(tmp_path / "f64")
    _edit_tensors(d, lambda s: {k: v.double() for k, v in s.items()})
    edit_json_file(d / "head.json", weights_sha256=_DROP)  # a re-saved weights file no longer has the saved hash
    load_head(d)


@pytest.mark.parametrize("edit, field, match", [
    (lambda s: {**s, "feat_std": torch.zeros_like(s["feat_std"])}, "feat_std", ">= 1e-07"),
    (lambda s: {**s, "feat_std": -s["feat_std"]}, "feat_std", ">= 1e-07"),
    (lambda s: {k: v.to(torch.int32) for k, v in s.items()}, "bias", "not floating point"),
    (lambda s: {**s, "weight": torch.full_like(s["weight"], 3e38)}, "weight", "above the bound"),
    (lambda s: {**s, "weight": torch.full_like(s["weight"], 2 * MAX_ABS).double()}, "weight", "above the bound"),
    (lambda s: {**s, "feat_mean": torch.full_like(s["feat_mean"], float("inf"))}, "feat_mean", "non-finite"),
    (lambda s: {**s, "bias": torch.full_like(s["bias"], float("nan"))}, "bias", "non-finite"),
])
def test_bad_tensors_are_refused(tmp_path, edit, field, match):
    d = _head(tmp_path / "h")
    _edit_tensors(d, edit)
    _refused(d, "head.safetensors", field, match)


@pytest.mark.parametrize("extra, evidence, match", [
    (1, ["score"], None),  # fits
    (0, ["score"], r"5 \+ 1 = 6"),  # a head trained without it
    (1, [], r"6 input channels.* 5 \+ 0 = 5"),
    (1, _DROP, r"6 input channels.* 5 \+ 0 = 5"),  # the key removed: no evidence columns
    (1, "score", "expected a list"),  # not split into characters
    (1, 5, "expected a list"),
    (1, {}, "expected a list"),
    (1, [1], "expected a list"),
    (1, ["bogus"], "unknown evidence 'bogus'"),
    (2, ["score", "score"], "twice"),
    (2 * pose_channels(K), ["pose", "pose"], "twice"),
])
def test_evidence_must_fit_the_input_width(tmp_path, extra, evidence, match):
    d = _head(tmp_path / "h", "kpt", extra, evidence=["score"] * extra if extra < 3 else [])
    _edit_json(d, evidence=evidence)
    if match is None:
        assert load_head(d)[0].in_channels == C + extra
    else:
        _refused(d, "head.json", "evidence", match)


def test_evidence_per_head_kind(tmp_path):
    d = _head(tmp_path / "inst", "kpt_inst", 7)
    _edit_json(d, evidence=["score"])
    _refused(d, "head.json", "evidence", "takes no evidence")
    P = pose_channels(K)
    d = _head(tmp_path / "pose", "kpt_pose", P + 1, evidence=["score", "pose"])
    load_head(d)
    _edit_json(d, evidence=["pose", "score"])
    _refused(d, "head.json", "evidence", "last")
    _edit_json(d, evidence=_DROP)
    _refused(d, "head.json", "evidence", "last")
    torch.manual_seed(0)
    save_head(tmp_path / "fc", CCNetHead("fc", 4, K), {"feature_tensor": "features_gap", "feature_shape": [4]})
    load_head(tmp_path / "fc")
    _edit_json(tmp_path / "fc", evidence=["score"])
    _refused(tmp_path / "fc", "head.json", "evidence", "takes no evidence")
    _edit_json(tmp_path / "fc", evidence=[], feature_shape=[5])
    _refused(tmp_path / "fc", "head.json", "feature_shape", "4 input channels")


@pytest.mark.parametrize("key, value, field, match", [
    ("box_score", "yes", "box_score", "true or false"),
    ("box_score", 1, "box_score", "true or false"),
    ("box_score", True, "aggregation", "disagrees"),
    ("aggregation", "max", "aggregation", "unsupported aggregation"),
    ("aggregation", 3, "aggregation", "unsupported aggregation"),
    ("context", "x", "context", "expected an object"),
    ("context", [], "context", "expected an object"),
    ("feature_shape", "3x5", "feature_shape", "positive sizes"),
    ("feature_shape", [3, "x"], "feature_shape", "positive sizes"),
    ("feature_shape", [3, 0], "feature_shape", "positive sizes"),
    ("feature_shape", [3, True], "feature_shape", "positive sizes"),
    ("feature_shape", [], "feature_shape", "positive sizes"),
    ("feature_shape", [3, 5, 1], "feature_shape", "2 axes"),
    ("feature_shape", [4, 5], "feature_shape", "K=3"),
    ("model_tensor", 5, "model_tensor", "expected a string"),
    ("pooling", ["heatmap"], "pooling", "expected a string"),
    ("model_sha256", 5, "model_sha256", "expected a string"),
    ("feature_tensor", "features_gap", "feature_tensor", "reads features_kpt"),
    ("train", "x", "train", "expected an object"),
    ("train", {"store": 5}, "train.store", "path string"),
    ("recipe", [], "recipe", "expected an object"),
])
def test_metadata_types(tmp_path, key, value, field, match):
    d = _head(tmp_path / "h")
    _edit_json(d, **{key: value})
    _refused(d, "head.json", field, match)


def test_optional_keys_may_be_absent(tmp_path):
    d = _head(tmp_path / "h")
    _edit_json(d, **dict.fromkeys(("aggregation", "box_score", "feature_shape", "model_tensor", "pooling",
                                   "model_sha256", "evidence", "context"), _DROP))
    load_head(d)


def test_context_entry_and_file_must_agree(tmp_path):
    d = _head(tmp_path / "h", context=True)
    _edit_json(d, context=None)
    _refused(d, "head.json", "context", "context.safetensors is present")
    _edit_json(d, context={})
    assert load_head(d)[0].context_stage is not None
    (d / "context.safetensors").unlink()
    _refused(d, "context.safetensors", None, "missing file")
    d = _head(tmp_path / "i", context=True)
    from safetensors.numpy import load_file as load_np
    from safetensors.numpy import save_file as save_np

    arrs = load_np(str(d / "context.safetensors"))
    save_np({k: v.astype(np.int64) for k, v in arrs.items()}, str(d / "context.safetensors"))
    _refused(d, "context.safetensors", "coef", "not floating point")


def test_saving_a_stageless_head_over_one_with_a_stage_drops_the_stale_file(tmp_path):
    d = _head(tmp_path / "h", context=True)
    _head(d)
    assert not (d / "context.safetensors").exists()
    assert not hasattr(load_head(d)[0], "context_stage")


def test_constructor_errors_name_head_json(tmp_path):
    d = _head(tmp_path / "h", "kpt_inst", 6)
    _edit_json(d, in_channels=5, feature_shape=_DROP)
    _refused(d, "head.json", "in_channels", "needs >= 6")


@pytest.mark.parametrize("cmd", ["apply", "export"])
def test_cli_refuses_with_one_line(tmp_path, capsys, cmd):
    bad = _head(tmp_path / "h")
    _edit_tensors(bad, lambda s: {**s, "feat_std": torch.zeros_like(s["feat_std"])})
    ev = _head(tmp_path / "e", "kpt", 0)
    _edit_json(ev, evidence="score")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x08\x07")  # never opened: the head is checked first
    for head, file, field in ((bad, "head.safetensors", "feat_std"), (ev, "head.json", "evidence")):
        args = ["apply", "--store", str(tmp_path / "S")] if cmd == "apply" else ["export", "--model", str(model)]
        out = tmp_path / f"out_{head.name}.{'json' if cmd == 'apply' else 'onnx'}"
        assert main([*args, "--head", str(head), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"posecal {cmd}: error: {head / file}: field '{field}': "), err
        assert not out.exists()
