"""Feature store: round trip, resume after a kill is bit-identical, shards merge to the same bytes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from posecal.errors import PosecalInputError
from posecal.models.store import FeatureStore, StoreWriter, merge_stores
from posecal.rescore.aggregate import instance_score

N, K, C, CS = 23, 5, 7, 4
SETTINGS = {"model_sha256": "ab" * 32, "tensor": "t", "pooling": "gap", "keypoint_set": "x"}


def _chunk_arrays(start: int, stop: int) -> dict[str, np.ndarray]:
    # depends on row indices only, like extraction does
    rows = np.arange(start, stop)
    rng = [np.random.default_rng(1000 + r) for r in rows]
    return {
        "image_id": rows.astype(np.int64) + 1,
        "ann_id": rows.astype(np.int64) * 10,
        "bbox": np.stack([g.uniform(0, 100, 4) for g in rng]),
        "box_score": np.ones(len(rows)),
        "crop_transform": np.stack([g.normal(size=(2, 3)) for g in rng]),
        "keypoints": np.stack([g.uniform(0, 200, (K, 2)) for g in rng]),
        "scores": np.stack([g.uniform(0, 1, K) for g in rng]),
        "sigma_hat": np.full((len(rows), K), np.nan),
        "features_gap": np.stack([g.normal(size=C).astype(np.float32) for g in rng]),
    }


def _write(path: Path, shard=(0, 1), stop_after: int | None = None) -> StoreWriter:
    w = StoreWriter(path, num_instances=N, chunk_size=CS, settings=SETTINGS, shard=shard)
    for k, j in enumerate(w.pending_chunks()):
        if stop_after is not None and k == stop_after:
            return w
        w.write_chunk(j, _chunk_arrays(*w.chunk_rows(j)))
    return w


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_round_trip_and_partial_reads(tmp_path):
    w = _write(tmp_path / "s")
    fs = w.finalize(gt={"images": [], "annotations": [], "categories": []})
    assert fs.num_instances == N and fs.feature_name == "features_gap"
    full = _chunk_arrays(0, N)
    for name, a in full.items():
        np.testing.assert_array_equal(fs.read(name), a)
    rows = np.array([22, 0, 5, 4, 13])
    np.testing.assert_array_equal(fs.read("keypoints", rows), full["keypoints"][rows])
    np.testing.assert_array_equal(fs.read("scores", slice(3, 9)), full["scores"][3:9])
    assert len(fs.predictions) == N
    rec = fs.predictions[7]
    assert rec["image_id"] == 8
    kp = np.array(rec["keypoints"]).reshape(K, 3)
    np.testing.assert_allclose(kp[:, :2], full["keypoints"][7])
    np.testing.assert_allclose(kp[:, 2], full["scores"][7])
    s = full["scores"][7]
    assert rec["score"] == pytest.approx(s[s > 0.2].mean())
    assert fs.gt_path is not None
    with pytest.raises(PosecalInputError, match="features_gap"):
        fs.read("nope")


def test_instance_score_bbox_keypoint():
    sc = np.array([[0.1, 0.5, 0.9], [0.1, 0.1, 0.0]])
    # MMPose CocoMetric: no keypoint above 0.2 -> bbox_score * 0 = 0 (never the box score alone)
    np.testing.assert_allclose(instance_score(sc, "bbox_keypoint", np.array([0.5, 0.8])), [0.5 * 0.7, 0.0])


def test_resume_after_kill_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    _write(ref).finalize(gt={"a": 1})
    # a subprocess writes 2 chunks, leaves a half-written temporary, then is SIGKILLed
    killed = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import _write
        from pathlib import Path
        w = _write(Path({str(killed)!r}), stop_after=2)
        (Path({str(killed)!r}) / "arrays" / "keypoints" / ".000002.npy.abc.npy.tmp").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", script], env=env)
    assert r.returncode != 0
    assert not (killed / "meta.json").exists()
    with pytest.raises(PosecalInputError, match="unfinished"):
        FeatureStore.open(killed)
    w = StoreWriter(killed, num_instances=N, chunk_size=CS, settings=SETTINGS)
    assert w.pending_chunks() == list(range(2, 6))
    for j in w.pending_chunks():
        w.write_chunk(j, _chunk_arrays(*w.chunk_rows(j)))
    w.finalize(gt={"a": 1})
    assert _tree(killed) == _tree(ref)


def test_resume_with_other_settings_refused(tmp_path):
    _write(tmp_path / "s", stop_after=1)
    with pytest.raises(PosecalInputError, match="different settings"):
        StoreWriter(tmp_path / "s", num_instances=N, chunk_size=CS, settings={**SETTINGS, "pooling": "kpt"})


def test_shards_merge_to_identical_bytes(tmp_path):
    ref = tmp_path / "ref"
    _write(ref).finalize(gt={"a": 1})
    shards = [tmp_path / f"sh{i}" for i in range(3)]
    for i, s in enumerate(shards):
        w = _write(s, shard=(i, 3))
        assert w.finalize(gt={"a": 1}) is None
    with pytest.raises(PosecalInputError, match="shards 0..2"):
        merge_stores(shards[:2], tmp_path / "bad")
    merge_stores(shards[::-1], tmp_path / "merged")
    assert _tree(tmp_path / "merged") == _tree(ref)
