"""Audit: hostile inputs against the custom-skeleton (``extract --sigmas``), bracketed ``--sigmas`` and output-folder
features (an 8-image mouse store from a random ONNX model, heads and stores edited by hand, concurrent runs).

Regressions (each failed before the fix):

* ``extract --sigmas 1e308 ...`` (or ``1e-160``) wrote a store that every later command refused (``fit``: "(2σ)²
  must be a positive finite float"), and ``rescore --sigmas 1e308`` blamed "a tampered calibrator" or warned
  "overflow" and wrote a file: ``--sigmas`` now refuses such sigmas up front, as ``evaluate`` did;
* ``--sigmas "[0.1],[0.2]"``, ``"]0.1 0.2["`` or ``"[[0.1, 0.2]]"`` were read as numbers: malformed brackets are
  refused;
* a store's ``meta.json`` edited to duplicate, empty or non-string ``keypoint_names``, or to sigmas whose (2σ)²
  overflows, was accepted by ``fit`` (which wrote a head carrying them), ``study visibility`` and ``rescore``;
  edited to 5 names and sigmas for a 4-keypoint store, ``study visibility`` and ``rescore --oks-nms`` crashed with a
  traceback (a broadcast ValueError);
* a custom head whose ``head.json`` lost ``keypoint_names`` or ``keypoint_sigmas`` was applied (the comparison
  skipped a key missing on one side), and one edited to out-of-range sigmas was exported;
* two ``evaluate --report SAME`` at once: one failed with "holds '.posecal-probe.xxxx': not a posecal report
  folder" (the other run's writability probe);
* ``fit --out H`` with ``H`` writable in a read-only parent trained first and then failed naming a temporary
  folder (``.H.xxxx.tmp: Read-only file system``): refused before the work now, naming the parent;
* DATA whose keypoint names are coco17's, given ``--sigmas``, silently became a 'custom' set: it now warns.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from posecal.errors import PosecalInputError, PosecalWarning
from test_audit_s28_custom_skeleton import NAMES, SIGMAS, _mouse_store
from test_hostile_inputs import _one_error, _run


@pytest.fixture(scope="module")
def mouse(tmp_path_factory):
    return _mouse_store(tmp_path_factory.mktemp("s28_newsurf"), *map(str, SIGMAS))


def _edited_store(mouse, tmp_path: Path, **meta_edits) -> Path:
    dst = tmp_path / "EDITED"
    shutil.copytree(mouse["store"], dst)
    meta = json.loads((dst / "meta.json").read_text(encoding="utf-8"))
    meta.update(meta_edits)
    (dst / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return dst


@pytest.mark.parametrize("sig", ["1e308", "1e-160"])
def test_extract_refuses_sigmas_whose_square_overflows(mouse, tmp_path, sig):
    rc, _, err = _run(["extract", "--model", mouse["model"], "--model-card", mouse["card"], "--data", mouse["data"],
                       "--images", mouse["base"] / "images", "--out", tmp_path / "S", "--sigmas", sig, "0.05", "0.05",
                       "0.1"])
    _one_error(rc, err, "--sigmas", "out of range")
    assert not (tmp_path / "S").exists()


def test_rescore_refuses_sigmas_whose_square_overflows(mouse, tmp_path):
    pred = mouse["store"] / "predictions.json"
    for method in ("closed-form", "mmpose-bbox"):
        rc, _, err = _run(["rescore", "--pred", pred, "--gt", mouse["data"], "--method", method, "--oks-nms", "0.9",
                           "--sigmas", "1e308", "0.05", "0.05", "0.1", "--out", tmp_path / "r.json"])
        _one_error(rc, err, "--sigmas", "out of range")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("sig", [["[0.03,0.05],[0.05,0.1]"], ["]0.03 0.05 0.05 0.1["], ["[[0.03,0.05,0.05,0.1]]"],
                                 ["0.03,0.05,0.05,0.1]"], ["[0.03,", "0.05]", "[0.05,", "0.1]"]])
def test_malformed_brackets_are_refused(mouse, sig):
    pred = mouse["store"] / "predictions.json"
    rc, _, err = _run(["evaluate", "--gt", mouse["data"], "--pred", pred, "--sigmas", *sig, "--json", "-"])
    _one_error(rc, err, "--sigmas", "malformed brackets")
    rc, _, err = _run(["compare", "--gt", mouse["data"], pred, pred, "--sigmas", *sig, "--resamples", "3"])
    _one_error(rc, err, "--sigmas", "malformed brackets")


def test_one_bracketed_list_still_reads(mouse):
    pred = mouse["store"] / "predictions.json"
    rc, out, err = _run(["evaluate", "--gt", mouse["data"], "--pred", pred, "--sigmas", "[0.03,", "0.05,", "0.05,",
                         "0.1]", "--json", "-"])
    assert rc == 0, err
    assert json.loads(out)["sigma_values"] == SIGMAS


def test_keypoint_set_from_meta_refuses_bad_names_and_sigmas():
    from posecal.keypoints import keypoint_set_from_meta

    good = {"keypoint_set": "custom", "keypoint_names": NAMES, "keypoint_sigmas": SIGMAS}
    assert keypoint_set_from_meta(good).names == tuple(NAMES)
    for edit in ({"keypoint_names": ["a", "A", "b", "c"]}, {"keypoint_names": [1, 2, 3, 4]},
                 {"keypoint_names": ["", "b", "c", "d"]}, {"keypoint_names": [["a"], "b", "c", "d"]},
                 {"keypoint_sigmas": [1e308, 0.05, 0.05, 0.1]}, {"keypoint_sigmas": [1e-300, 0.05, 0.05, 0.1]},
                 {"keypoint_sigmas": [10 ** 400, 0.05, 0.05, 0.1]}):
        with pytest.raises(KeyError):
            keypoint_set_from_meta({**good, **edit})


@pytest.mark.parametrize("edit", [{"keypoint_names": ["a", "a", "b", "c"]}, {"keypoint_names": [1, 2, 3, 4]},
                                  {"keypoint_sigmas": [1e308, 0.05, 0.05, 0.1]}])
def test_edited_store_names_and_sigmas_are_one_line(mouse, tmp_path, edit):
    store = _edited_store(mouse, tmp_path, **edit)
    rc, _, err = _run(["fit", "--store", store, "--out", tmp_path / "H", "--steps", "2"])
    _one_error(rc, err, "meta.json", "keypoint_set 'custom'")
    assert not (tmp_path / "H").exists()
    rc, _, err = _run(["study", "visibility", "--store", store, "--out", tmp_path / "V"])
    _one_error(rc, err, "keypoint_set 'custom'")
    rc, _, err = _run(["rescore", "--store", store, "--method", "closed-form", "--out", tmp_path / "r.json"])
    _one_error(rc, err, "meta.json", "keypoint_sigmas")
    assert not (tmp_path / "r.json").exists()


def test_edited_store_with_more_keypoints_than_its_arrays(mouse, tmp_path):
    store = _edited_store(mouse, tmp_path, keypoint_names=["a", "b", "c", "d", "e"], keypoint_sigmas=[0.1] * 5)
    rc, _, err = _run(["study", "visibility", "--store", store, "--out", tmp_path / "V"])
    _one_error(rc, err, "meta.json", "keypoint_set")
    rc, _, err = _run(["rescore", "--store", store, "--method", "mmpose-bbox", "--oks-nms", "0.9", "--out",
                       tmp_path / "r.json"])
    _one_error(rc, err, "meta.json", "keypoint_sigmas")
    assert not (tmp_path / "V").exists() and not (tmp_path / "r.json").exists()


def _custom_head(tmp_path: Path) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from posecal.ccnet.checkpoint import save_head
    from posecal.ccnet.heads import CCNetHead

    d = tmp_path / "HEAD"
    save_head(d, CCNetHead("kpt", 12, 4), {"keypoint_set": "custom", "keypoint_names": NAMES,
                                           "keypoint_sigmas": SIGMAS, "feature_tensor": "features_kpt",
                                           "feature_shape": [4, 12], "pooling": "heatmap"})
    return d


@pytest.mark.parametrize("edit", ["drop_names", "drop_sigmas", "big_sigma", "five_names"])
def test_edited_custom_head_is_refused_on_load(tmp_path, edit):
    from posecal.ccnet.checkpoint import load_head

    d = _custom_head(tmp_path)
    load_head(d)  # as written
    meta = json.loads((d / "head.json").read_text(encoding="utf-8"))
    if edit == "drop_names":
        del meta["keypoint_names"]
    elif edit == "drop_sigmas":
        del meta["keypoint_sigmas"]
    elif edit == "big_sigma":
        meta["keypoint_sigmas"] = [1e308, 0.05, 0.05, 0.1]
    else:
        meta["keypoint_names"], meta["keypoint_sigmas"] = ["a", "b", "c", "d", "e"], [0.1] * 5
    (d / "head.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(PosecalInputError) as e:
        load_head(d)
    assert e.value.field in ("keypoint_names", "keypoint_sigmas") and "head.json" in str(e.value)


def test_check_compatible_custom_key_missing_on_one_side():
    from posecal.ccnet.checkpoint import check_compatible

    base = {"keypoint_set": "custom", "feature_tensor": "spatial", "feature_shape": [4, 12],
            "keypoint_names": NAMES, "keypoint_sigmas": SIGMAS}
    check_compatible(base, dict(base))
    with pytest.raises(PosecalInputError, match="keypoint_sigmas"):
        check_compatible({k: v for k, v in base.items() if k != "keypoint_sigmas"}, dict(base))
    known = {"keypoint_set": "coco17", "feature_tensor": "spatial", "feature_shape": [4, 12]}
    check_compatible(known, {**known, "keypoint_names": ["nose"]})  # known sets: names are not compared when absent


def test_report_folder_check_ignores_another_runs_probe(tmp_path):
    from posecal._outputs import PROBE_PREFIX, check_report_folder

    rep = tmp_path / "REP"
    rep.mkdir()
    (rep / "index.html").write_text('<html><head><meta name="generator" content="posecal"></head></html>')
    (rep / "metrics.json").write_text("{}")
    fd, _ = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=rep)  # what a concurrent run's check_creatable leaves
    import os

    os.close(fd)
    check_report_folder(rep, {})
    (rep / "notes.txt").write_text("mine")
    with pytest.raises(PosecalInputError, match="notes.txt"):
        check_report_folder(rep, {})


def test_existing_out_folder_in_an_unwritable_parent_is_refused_before_the_work(tmp_path, monkeypatch):
    import posecal._outputs as outputs

    out = tmp_path / "H"
    out.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*a, dir=None, **kw):  # a read-only parent (a bind mount) with a writable folder in it
        if Path(dir) == tmp_path:
            raise OSError(30, "Read-only file system")
        return real_mkstemp(*a, dir=dir, **kw)

    monkeypatch.setattr(outputs.tempfile, "mkstemp", mkstemp)
    outputs.check_creatable(out, "dir")  # the folder itself is writable
    with pytest.raises(PosecalInputError, match="Read-only file system") as e:
        outputs.check_creatable(out, "dir", sibling=True)
    assert str(tmp_path) in str(e.value)


def test_known_names_with_sigmas_warn(mouse):
    from posecal.datasets.coco import keypoint_set
    from posecal.keypoints import COCO17

    d = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.names)}]}
    with pytest.warns(PosecalWarning, match="coco17"):
        ks = keypoint_set(d, file="gt.json", sigmas=[0.05] * 17)
    assert ks.name == "custom"
