"""``study occlusion --model-card``, the warning for a card-less ONNX model, and resuming ``extract`` with the
images folder spelled differently (relative / absolute), with the differing setting named when it differs."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import pytest

from posecal.errors import PosecalWarning

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SP_MODEL = ("models", "simplepose", "ultralight-nano-simplepose.onnx")
NO_CARD = "no model card matched"


from test_hostile_inputs import _run, _write  # noqa: E402  (the CLI runner and JSON writer)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture
def sp_copy(shared, tmp_path):
    """The SimplePose graph re-saved with another doc_string (same name, other folder, other SHA-256) and the
    built-in SimplePose card as JSON with ``sha256: null``."""
    import onnx

    from posecal.models.cards import BUILTIN_CARDS
    from posecal.models.store import file_sha256

    orig = shared(*SP_MODEL)
    m = onnx.load_model(str(orig))
    m.doc_string = (m.doc_string or "") + "posecal test copy"
    (tmp_path / "copy").mkdir()
    model = tmp_path / "copy" / orig.name
    onnx.save_model(m, str(model))
    assert file_sha256(model) != file_sha256(orig)
    card = copy.deepcopy(next(c for c in BUILTIN_CARDS.values() if c["name"] == "ultralight-nano-simplepose"))
    card["sha256"] = None
    return orig, model, _write(tmp_path / "card.json", card)


# --- 1. study occlusion --model-card ----------------------------------------------------------------------
def test_study_occlusion_takes_a_model_card_and_matches_the_builtin_card(mini, sp_copy, tmp_path):
    data, img, _ = mini
    orig, model, card = sp_copy
    common = ["--data", data, "--images", img, "--joint", "left_shoulder", "--radii", "0", "24", "--limit", "3",
              "--json"]
    rc, out_ref, err = _run(["study", "occlusion", "--model", orig, "--out", tmp_path / "ref", *common])
    assert rc == 0, err
    rc, out_card, err = _run(["study", "occlusion", "--model", model, "--model-card", card,
                              "--out", tmp_path / "card", *common])
    assert rc == 0, err
    assert NO_CARD not in err  # the card describes it: nothing guessed
    ref, got = json.loads(out_ref), json.loads(out_card)
    assert ref["instances"] > 0 and len(ref["curves"]["occluder"]["raw_confidence"]) == 2
    assert got == ref
    assert json.loads((tmp_path / "card" / "occlusion.json").read_text()) == ref
    # without the card the copy runs on the generic adapter's guesses (argmax decoding, no subpixel): it warns
    rc, out_generic, err = _run(["study", "occlusion", "--model", model, "--out", tmp_path / "generic", *common])
    assert rc == 0, err
    assert NO_CARD in err and str(model) in err
    assert json.loads(out_generic)["per_instance"] != ref["per_instance"]


def test_study_occlusion_model_card_errors_are_one_line(mini, sp_copy, tmp_path):
    data, img, _ = mini
    _, model, card = sp_copy
    bad = json.loads(card.read_text())
    bad["sha256"] = "a" * 64
    out = tmp_path / "occ"
    rc, _, err = _run(["study", "occlusion", "--model", model, "--model-card", _write(tmp_path / "bad.json", bad),
                       "--data", data, "--images", img, "--joint", "left_shoulder", "--radii", "0", "--out", out])
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "bad.json" in err and "'sha256'" in err and "another model file" in err
    assert not out.exists()


# --- 2. a card-less ONNX model warns -------------------------------------------------------------------------
def test_cardless_onnx_model_warns_once_naming_file_assumptions_and_flag(sp_copy, shared):
    from posecal.models.adapters.base import load_adapter

    orig, model, card = sp_copy
    with pytest.warns(PosecalWarning) as rec:
        a = load_adapter(model)
    msgs = [str(w.message) for w in rec if issubclass(w.category, PosecalWarning)]
    assert len(msgs) == 1
    msg = msgs[0]
    assert str(model) in msg and NO_CARD in msg and "--model-card" in msg
    assert "ImageNet" in msg and "(B, 3, 256, 192)" in msg and "coco17" in msg and a.tensor_name in msg
    assert "\n" not in msg
    assert a.kind == "onnx-heatmap"
    with warnings.catch_warnings():  # a built-in card or a --model-card: nothing is guessed, no warning
        warnings.simplefilter("error")
        assert getattr(load_adapter(orig), "card", None) is not None
        assert getattr(load_adapter(model, model_card=card), "card", None) is not None


def test_cardless_onnx_extract_warns_on_stderr_and_still_succeeds(mini, sp_copy, tmp_path):
    data, img, _ = mini
    _, model, _ = sp_copy
    rc, _, err = _run(["extract", "--model", model, "--data", data, "--images", img, "--out", tmp_path / "st"])
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if NO_CARD in ln]
    assert len(lines) == 1 and lines[0].startswith("posecal extract: warning: ") and str(model) in lines[0]
    meta = json.loads((tmp_path / "st" / "meta.json").read_text())
    assert meta["model_kind"] == "onnx-heatmap" and "model_card" not in meta


# --- 3. resuming extract with the images folder spelled differently -----------------------------------------
def _resumable(store: Path) -> None:
    """Make a finished store a partial one: drop meta.json and the last chunk's files (recomputed on resume)."""
    (store / "meta.json").unlink()
    for f in store.rglob("*.npy"):
        if f.name == "000001.npy":
            f.unlink()


@pytest.mark.parametrize("first", ["relative", "absolute"])
def test_extract_resumes_with_the_images_folder_spelled_differently(mini, shared, tmp_path, monkeypatch, first):
    data, img, _ = mini
    monkeypatch.chdir(tmp_path)
    spell = {"relative": "img", "absolute": str(img.resolve())}
    second = "absolute" if first == "relative" else "relative"
    base = ["extract", "--model", shared(*SP_MODEL), "--data", data, "--chunk-size", "1"]
    ref, st = tmp_path / "ref", tmp_path / "st"
    assert _run([*base, "--images", spell[first], "--out", ref])[0] == 0
    rc, _, err = _run([*base, "--images", spell[first], "--out", st])
    assert rc == 0, err
    assert json.loads((st / "meta.json").read_text())["images"] == spell[first]  # recorded as typed
    assert json.loads((st / "meta.json").read_text())["num_instances"] > 1  # more than one chunk
    _resumable(st)
    rc, _, err = _run([*base, "--images", spell[second], "--out", st])
    assert rc == 0, err
    # the resumed store is the one a single run writes: the first spelling stays recorded
    assert _tree(st) == _tree(ref)
    rc, _, err = _run([*base, "--images", "./" + "img/", "--out", st])  # a finished store: returned as it is
    assert rc == 0, err
    assert _tree(st) == _tree(ref)


def test_extract_resume_with_other_settings_names_them(mini, shared, tmp_path):
    data, img, _ = mini
    other = tmp_path / "img2"
    shutil.copytree(img, other)
    base = ["extract", "--model", shared(*SP_MODEL), "--data", data, "--chunk-size", "1"]
    st = tmp_path / "st"
    assert _run([*base, "--images", img, "--out", st])[0] == 0
    _resumable(st)
    before = _tree(st)
    for extra, needle in ((["--images", other, "--pooling", "heatmap"], "images (store "),
                          (["--images", img, "--pooling", "gap"], "pooling (store \"heatmap\", now \"gap\")")):
        rc, _, err = _run([*base, *extra, "--out", st])
        assert rc == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert "different settings" in err and needle in err and str(st) in err
        key = needle.split(" ")[0]
        assert f"field '{key}'" in err
        assert _tree(st) == before  # nothing touched
    rc, _, err = _run([*base, "--images", other, "--pooling", "gap", "--out", st])
    assert rc == 2 and "images (store " in err and "pooling (store " in err and "field 'settings'" in err


def test_finished_detection_store_rerun_compares_images_by_real_path(mini, shared, tmp_path, monkeypatch):
    data, img, det = mini
    monkeypatch.chdir(tmp_path)
    base = ["extract", "--model", shared(*SP_MODEL), "--data", data, "--boxes", det, "--out", tmp_path / "st"]
    assert _run([*base, "--images", "img"])[0] == 0
    before = _tree(tmp_path / "st")
    rc, _, err = _run([*base, "--images", img.resolve()])
    assert rc == 0, err
    assert _tree(tmp_path / "st") == before
    rc, _, err = _run([*base, "--images", img.resolve(), "--pooling", "gap"])
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "pooling (store \"heatmap\", now \"gap\")" in err and "field 'pooling'" in err
    assert _tree(tmp_path / "st") == before


def test_store_writer_names_differing_settings_and_accepts_a_respelled_folder(tmp_path, monkeypatch):
    import numpy as np

    from posecal.errors import PosecalInputError
    from posecal.models.store import StoreWriter, settings_diff

    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    s = {"images": "img", "pooling": "gap", "model_sha256": "x"}
    w = StoreWriter(tmp_path / "s", num_instances=4, chunk_size=2, settings=s)
    w.write_chunk(0, {"image_id": np.arange(2)})
    w.release()
    # the previous code's store: settings as typed (relative), fingerprint over them; resumed with the absolute path
    w = StoreWriter(tmp_path / "s", num_instances=4, chunk_size=2, settings={**s, "images": str(tmp_path / "img")})
    assert w.pending_chunks() == [1] and w.settings["images"] == "img"
    w.release()
    with pytest.raises(PosecalInputError, match=r"fingerprint differs: model_sha256 \(store \"x\", now \"y\"\)"):
        StoreWriter(tmp_path / "s", num_instances=4, chunk_size=2, settings={**s, "model_sha256": "y"})
    assert settings_diff(s, {**s, "images": "./img/"}) == []
    assert settings_diff(s, {**s, "images": "other"}) == ["images"]
    assert settings_diff(s, {"images": "img", "pooling": "gap"}) == ["model_sha256"]
