"""Audit (session 30, a user whose scripts pass paths carelessly): outputs that alias inputs or the user's own
files, inputs given twice under different names, and Ctrl-C in the middle of a write.

- ``evaluate --report R`` / ``compare --report R`` replace R as a whole; a previous report folder was recognised by
  file suffixes only, so a user's ``R/baseline.json`` (e.g. ``evaluate --json R/baseline.json``) or a prediction
  file kept beside its report was deleted without a word.
- ``fit --store S --store COPY_OF_S`` (or ``--val-store COPY_OF_S``) trained on every row twice (or validated on
  training rows): only the same folder given twice was refused.
- Ctrl-C during ``extract --merge`` left a half-merged store at ``--out`` that the next merge refused to touch
  ("delete it and merge again"); merging is not resumable, so an interrupted merge now leaves nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from _cocogen import make_coco_set
from posecal.cli import main

POSECAL_PAGE = '<!doctype html><html><head><meta name="generator" content="posecal"><title>posecal</title>'


def _one_error(rc: int, err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for p in parts:
        assert p in lines[0], lines[0]


@pytest.fixture
def coco(tmp_path):
    gt, res = make_coco_set(5, n_images=6, max_gts=3, max_dets=4)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(res))
    return tmp_path / "gt.json", tmp_path / "pred.json"


def _old_report(folder: Path, *user_files: str) -> Path:
    folder.mkdir()
    (folder / "index.html").write_text(POSECAL_PAGE)
    (folder / "metrics.json").write_text("{}")
    (folder / "pr_curves.png").write_bytes(b"png")
    for name in user_files:
        (folder / name).write_text('{"mine": true}')
    return folder


@pytest.mark.parametrize("cmd", ["evaluate", "compare"])
@pytest.mark.parametrize("mine", ["baseline.json", "my_predictions.json", "notes.html", "photo.png"])
def test_report_keeps_a_users_file_in_a_previous_report_folder(coco, tmp_path, capsys, cmd, mine):
    pytest.importorskip("matplotlib")
    gt, pred = coco
    rep = _old_report(tmp_path / "R", mine)
    argv = (["evaluate", "--gt", str(gt), "--pred", str(pred)] if cmd == "evaluate"
            else ["compare", "--gt", str(gt), str(pred), str(pred), "--resamples", "5"])
    rc = main([*argv, "--report", str(rep)])
    _one_error(rc, capsys.readouterr().err, repr(mine), "not a posecal report folder")
    assert (rep / mine).read_text() == '{"mine": true}'
    assert (rep / "index.html").read_text() == POSECAL_PAGE  # nothing replaced


def test_report_still_replaces_a_previous_report(coco, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    gt, pred = coco
    rep = _old_report(tmp_path / "R")
    (rep / "compare.json").write_text("{}")  # a compare report before: evaluate's report replaces it whole
    assert main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--report", str(rep)]) == 0, \
        capsys.readouterr().err
    assert (rep / "index.html").read_text() != POSECAL_PAGE
    assert not (rep / "compare.json").exists()


# --- fit: the same rows under two folder names ----------------------------------------------------------------

@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    pytest.importorskip("torch")
    from test_ccnet_cli import make_store

    d = tmp_path_factory.mktemp("s30")
    a = make_store(d / "A", N=24, seed=0)
    b = make_store(d / "B", N=24, seed=1)
    shutil.copytree(a, d / "COPY")
    return a, b, d / "COPY"


@pytest.mark.parametrize("flag", ["--store", "--val-store"])
def test_fit_refuses_a_copy_of_a_training_store(stores, tmp_path, capsys, flag):
    a, _, copy = stores
    rc = main(["fit", "--store", str(a), flag, str(copy), "--out", str(tmp_path / "H"), "--steps", "2"])
    _one_error(rc, capsys.readouterr().err, str(copy), f"'{flag}'", "same rows")
    assert not (tmp_path / "H").exists()


def test_fit_takes_two_stores_of_other_rows(stores, tmp_path, capsys):
    a, b, _ = stores
    rc = main(["fit", "--store", str(a), "--store", str(b), "--out", str(tmp_path / "H"), "--steps", "2"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "H" / "head.json").is_file()


# --- extract --merge interrupted --------------------------------------------------------------------------------

def _shards(out: Path, n_rows: int = 12) -> None:
    """Two finished shard stores ``OUT.shard-i-of-2`` (synthetic rows; chunks of 2 rows)."""
    from posecal.models.store import StoreWriter

    K = 3
    names = ["a", "b", "c"]
    settings = {"model_sha256": "abc", "tensor": "feat", "keypoint_set": None, "keypoint_names": names,
                "keypoint_sigmas": [0.05, 0.05, 0.05], "pooling": "heatmap", "input_size": [32, 32]}
    gt = {"images": [{"id": i + 1, "file_name": f"{i + 1}.jpg", "width": 40, "height": 40} for i in range(n_rows)],
          "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": 100.0,
                           "bbox": [0.0, 0.0, 10.0, 10.0], "keypoints": [5, 5, 2] * K, "num_keypoints": K}
                          for i in range(n_rows)],
          "categories": [{"id": 1, "name": "thing", "keypoints": names, "skeleton": []}]}
    for i in range(2):
        w = StoreWriter(out.with_name(f"{out.name}.shard-{i}-of-2"), num_instances=n_rows, chunk_size=2,
                        settings=settings, shard=(i, 2))
        for j in w.pending_chunks():
            a, b = w.chunk_rows(j)
            w.write_chunk(j, {"image_id": np.arange(a, b, dtype=np.int64) + 1,
                              "ann_id": np.arange(a, b, dtype=np.int64) + 1,
                              "bbox": np.tile([0.0, 0.0, 10.0, 10.0], (b - a, 1)),
                              "box_score": np.ones(b - a),
                              "keypoints": np.full((b - a, K, 2), 5.0),
                              "scores": np.full((b - a, K), 0.5),
                              "features_kpt": np.ones((b - a, K, 4), np.float32)})
        w.finalize(gt=gt)


def test_interrupted_merge_leaves_no_half_merged_store(tmp_path, capsys, monkeypatch):
    import posecal.models.store as store_mod

    out = tmp_path / "M"
    _shards(out)
    real_copy, calls = store_mod._copy_chunk, []

    def copy_then_interrupt(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_copy(*a, **kw)

    monkeypatch.setattr(store_mod, "_copy_chunk", copy_then_interrupt)
    assert main(["extract", "--merge", "--out", str(out)]) == 130
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))  # was: a half-merged store
    monkeypatch.setattr(store_mod, "_copy_chunk", real_copy)
    capsys.readouterr()
    assert main(["extract", "--merge", "--out", str(out)]) == 0, capsys.readouterr().err  # the shards are intact
    assert (out / "meta.json").is_file()
