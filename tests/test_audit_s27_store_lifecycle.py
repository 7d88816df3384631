"""Audit (s27) of ``posecal extract``'s store lifecycle: sharding, merging, resuming and re-running.

Each case is refused in one line with exit code 2 and nothing left half-written, or — where the input is legal —
gives the store a single run writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posecal.errors import PosecalInputError
from posecal.models.store import StoreWriter, merge_stores
from test_hostile_inputs import SP_MODEL, _one_error, _run, _write
from test_store import CS, SETTINGS, N, _chunk_arrays

GT = {"images": [], "annotations": [], "categories": []}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def _shard(path: Path, i: int, n: int, settings=SETTINGS, finish: bool = True, gt=GT) -> Path:
    """A synthetic shard store (test_store's rows); unfinished (every chunk written, then the run killed before
    finalize) with ``finish=False``."""
    w = StoreWriter(path, num_instances=N, chunk_size=CS, settings=settings, shard=(i, n))
    for j in w.pending_chunks():
        w.write_chunk(j, _chunk_arrays(*w.chunk_rows(j)))
    if finish:
        assert w.finalize(gt=gt) is None
    else:
        w.release()
    return path


def _single(path: Path) -> Path:
    w = StoreWriter(path, num_instances=N, chunk_size=CS, settings=SETTINGS)
    for j in w.pending_chunks():
        w.write_chunk(j, _chunk_arrays(*w.chunk_rows(j)))
    w.finalize(gt=GT)
    return path


# --- re-running a finished detection store ---------------------------------------------------------------
def test_rerun_on_a_finished_detection_store_with_other_nms_settings_is_refused(shared, mini, tmp_path):
    data, img, det = mini
    b = json.loads(det.read_text())
    boxes = _write(tmp_path / "dup.json", b + [{**x, "bbox": [x["bbox"][0] + 1, *x["bbox"][1:]], "score": 0.5}
                                               for x in b])
    base = ["extract", "--model", shared(*SP_MODEL), "--data", data, "--images", img, "--boxes", boxes,
            "--out", tmp_path / "st", "--threads", "1", "--chunk-size", "4"]
    rc, _, err = _run(base)
    assert rc == 0, err
    before = _files(tmp_path / "st")
    # was: exit 0 and the old store (kept with OKS-NMS 0.9, 20 per image) returned as if it were this run's
    for extra, needle in ((["--max-per-image", "1"], "oks_nms.max_per_image (store 20, now 1)"),
                          (["--oks-nms", "0.5"], "oks_nms.thr (store 0.9, now 0.5)"),
                          (["--oks-nms", "1"], "oks_nms.thr"),
                          (["--chunk-size", "3"], "chunk_size (store 4, now 3)")):
        rc, _, err = _run(base + extra)
        _one_error(rc, err, "different settings", needle)
        assert _files(tmp_path / "st") == before
    rc, _, err = _run(base)  # the same settings: the finished store, as it is
    assert rc == 0, err
    assert _files(tmp_path / "st") == before and not (tmp_path / "st.all").exists()


# --- a failing run into an existing empty folder -----------------------------------------------------------
def test_failed_extract_into_an_empty_out_folder_leaves_it_empty(shared, mini, tmp_path):
    data, img, _ = mini
    d = json.loads(data.read_text())
    f = img / d["images"][-1]["file_name"]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])  # a valid header: refused only when decoded
    out = tmp_path / "st"
    out.mkdir()
    rc, _, err = _run(["extract", "--model", shared(*SP_MODEL), "--data", data, "--images", img, "--out", out,
                       "--threads", "1", "--chunk-size", "1"])
    _one_error(rc, err, f.name, "truncated")
    assert out.is_dir() and not list(out.iterdir())  # was: a partial store (index.json, arrays/, .lock)


def test_failed_merge_into_an_empty_out_folder_leaves_it_empty(tmp_path):
    for i in range(2):
        _shard(tmp_path / f"m.shard-{i}-of-2", i, 2)
    bad = tmp_path / "m.shard-1-of-2" / "arrays" / "scores" / "000001.npy"
    b = bytearray(bad.read_bytes())
    b[-1] ^= 1
    bad.write_bytes(bytes(b))
    (tmp_path / "m").mkdir()
    rc, _, err = _run(["extract", "--merge", "--out", tmp_path / "m"])
    _one_error(rc, err, "m.shard-1-of-2", "'scores'", "damaged")
    assert not list((tmp_path / "m").iterdir())  # was: the chunks copied so far, and no index.json


# --- merging ------------------------------------------------------------------------------------------------
def test_merge_refuses_shards_whose_run_was_interrupted_before_finishing(tmp_path):
    ref = _single(tmp_path / "ref")
    shards = [_shard(tmp_path / f"s{i}", i, 2, finish=False) for i in range(2)]  # every chunk, no finalize
    with pytest.raises(PosecalInputError, match=r"s0: field 'shard.json': shard 0/2 is unfinished"):
        merge_stores(shards, tmp_path / "m")  # was: a store without gt.json, unlike the single run's
    assert not (tmp_path / "m").exists()
    for i, s in enumerate(shards):  # re-running the shards finishes them: the merge is the single-run store
        _shard(s, i, 2)
    merge_stores(shards, tmp_path / "m")
    assert _files(tmp_path / "m") == _files(ref)


def test_merge_refuses_shards_with_different_gt(tmp_path):
    shards = [_shard(tmp_path / "s0", 0, 2), _shard(tmp_path / "s1", 1, 2, gt={**GT, "info": {"x": 1}})]
    with pytest.raises(PosecalInputError, match=r"s1: field 'gt.json': gt.json differs from"):
        merge_stores(shards, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_merge_names_the_settings_that_differ_and_accepts_a_folder_spelled_differently(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    rel, absolute = {**SETTINGS, "images": "img"}, {**SETTINGS, "images": str(tmp_path / "img")}
    _shard(tmp_path / "a.shard-0-of-2", 0, 2, settings=rel)
    _shard(tmp_path / "a.shard-1-of-2", 1, 2, settings=absolute)
    w = StoreWriter(tmp_path / "ref", num_instances=N, chunk_size=CS, settings=rel)
    for j in w.pending_chunks():
        w.write_chunk(j, _chunk_arrays(*w.chunk_rows(j)))
    w.finalize(gt=GT)
    rc, _, err = _run(["extract", "--merge", "--out", "a"])  # was: "shard differs ... in fingerprint"
    assert rc == 0, err
    assert _files(tmp_path / "a") == _files(tmp_path / "ref")
    _shard(tmp_path / "b.shard-0-of-2", 0, 2)
    _shard(tmp_path / "b.shard-1-of-2", 1, 2, settings={**SETTINGS, "pooling": "spatial"})
    rc, _, err = _run(["extract", "--merge", "--out", "b"])
    _one_error(rc, err, "b.shard-1-of-2", "field 'pooling'", 'pooling ("gap" there, "spatial" here)')
    assert not (tmp_path / "b").exists()


def test_merge_ignores_files_and_folders_beside_the_shards(tmp_path):
    ref = _single(tmp_path / "ref")
    for name in ("st[1]", "st"):  # glob characters in --out are its own name (was: "no shard stores found")
        for i in range(2):
            _shard(tmp_path / f"{name}.shard-{i}-of-2", i, 2)
    (tmp_path / "st.shard-0-of-2.log").write_text("torchrun log\n")  # was: "not a posecal store" for the log
    shutil.copytree(tmp_path / "st.shard-1-of-2", tmp_path / "st.shard-1-of-2.bak")
    for name in ("st", "st[1]"):
        rc, _, err = _run(["extract", "--merge", "--out", tmp_path / name])
        assert rc == 0, err
        assert _files(tmp_path / name) == _files(ref)


def test_merge_names_a_duplicated_and_a_missing_shard(tmp_path):
    a, b = _shard(tmp_path / "a", 0, 3), _shard(tmp_path / "b", 1, 3)
    shutil.copytree(a, tmp_path / "a2")
    with pytest.raises(PosecalInputError, match=r"a2: field 'shard': shard 0/3 given twice \(also .*a\)"):
        merge_stores([a, b, tmp_path / "a2"], tmp_path / "m")
    with pytest.raises(PosecalInputError, match=r"got \[0, 1\] \(missing: 2\)"):
        merge_stores([a, b], tmp_path / "m")


@pytest.mark.parametrize("key, value", [("num_instances", "23"), ("chunk_size", 0), ("shard", [0, "2"]),
                                        ("chunks", ["0"])])
def test_merge_refuses_an_edited_shard_index_in_one_line(tmp_path, key, value):
    shards = [_shard(tmp_path / f"m.shard-{i}-of-2", i, 2) for i in range(2)]
    for s in shards:  # the same edit in every shard (was: a TypeError traceback for some)
        p = s / "index.json"
        ix = json.loads(p.read_text())
        ix[key] = value
        p.write_text(json.dumps(ix))
    rc, _, err = _run(["extract", "--merge", "--out", tmp_path / "m"])
    _one_error(rc, err, "m.shard-0-of-2/index.json", f"field '{key}'", "corrupt shard index")
    assert not (tmp_path / "m").exists()


# --- shards from torchrun's environment ---------------------------------------------------------------------
@pytest.mark.parametrize("rank", ["2", "-1", "7"])
def test_a_rank_outside_the_world_size_is_named(monkeypatch, shared, mini, tmp_path, rank):
    data, img, _ = mini
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    rc, _, err = _run(["extract", "--model", shared(*SP_MODEL), "--data", data, "--images", img,
                       "--out", tmp_path / "st", "--threads", "1"])
    _one_error(rc, err, "field 'RANK'", f"rank {rank} is not one of 0..1")  # was: "field 'shard': bad shard"
    assert not list(tmp_path.glob("st*"))


def test_merge_into_the_leftovers_of_an_interrupted_merge_says_so(tmp_path):
    for i in range(2):
        _shard(tmp_path / f"m.shard-{i}-of-2", i, 2)
    (tmp_path / "m" / "arrays" / "scores").mkdir(parents=True)  # a merge killed while copying chunks
    (tmp_path / "m" / ".lock").touch()
    rc, _, err = _run(["extract", "--merge", "--out", tmp_path / "m"])
    _one_error(rc, err, "m: merge output exists and is not empty (an interrupted merge? delete it")


def test_merge_says_which_given_options_it_ignores(tmp_path):
    """Before: `extract --merge --out X --pooling gap --flip` merged the shards as they were, silently."""
    ref = _single(tmp_path / "ref")
    for i in range(2):
        _shard(tmp_path / f"st.shard-{i}-of-2", i, 2)
    rc, _, err = _run(["extract", "--merge", "--out", tmp_path / "st", "--pooling", "gap", "--flip",
                       "--chunk-size", "3"])
    assert rc == 0, err
    warned = [ln for ln in err.splitlines() if "ignored with --merge" in ln]
    assert len(warned) == 1 and "--pooling, --flip, --chunk-size: ignored with --merge" in warned[0], err
    assert _files(tmp_path / "st") == _files(ref)
    for i in range(2):
        _shard(tmp_path / f"s2.shard-{i}-of-2", i, 2)
    rc, _, err = _run(["extract", "--merge", "--out", tmp_path / "s2", "--json"])
    assert rc == 0 and "ignored" not in err, err
