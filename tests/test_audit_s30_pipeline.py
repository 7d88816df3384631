"""Audit s30 (pipelines): a resumed ``extract`` notices an image REPLACED since a chunk was written (same name,
other content) and recomputes that chunk, so the finished store equals a run from scratch on the current files;
an image only touched (same bytes) recomputes nothing."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from posecal.keypoints import COCO17
from posecal.models.extract import extract


class _BrightModel:
    """A stand-in pose model: both joints at the centroid of the crop's bright pixels; features: the crop."""

    kind = "bright"
    input_size = (32, 32)
    joint_names = ("left_wrist", "right_wrist")
    tensor_name = "fake"
    preprocessing = {"note": "test"}
    info = {"backend": "test"}

    def predict(self, crops):
        from posecal.models.adapters.base import ModelOutput

        B = crops.shape[0]
        coords = np.zeros((B, 2, 2))
        for b in range(B):
            m = crops[b].astype(float).sum(-1) + 1e-3
            yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]]
            coords[b] = [np.average(xx, weights=m), np.average(yy, weights=m)]
        feats = crops.astype(np.float32).transpose(0, 3, 1, 2)[:, :, ::8, ::8]
        return ModelOutput(coords=coords, scores=np.full((B, 2), 0.9), features=np.ascontiguousarray(feats))


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)


def _data(n: int) -> dict:
    images, anns = [], []
    for i in range(n):
        kp = np.zeros((17, 3))
        kp[COCO17.index("left_wrist")] = [20, 20, 2]
        kp[COCO17.index("right_wrist")] = [30, 25, 2]
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 50, "height": 40})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "keypoints": kp.ravel().tolist(),
                     "bbox": [10.0, 10.0, 30.0, 20.0], "area": 600.0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.names)}]}


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _run(img: Path, out: Path, data: dict):
    return extract(_BrightModel(), data, img, out, allow_missing_joints=True, model_sha256="0", chunk_size=2)


@pytest.fixture
def folder(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    for i in range(6):
        _image(img / f"{i}.png", i)
    return img


def test_resume_recomputes_the_chunk_of_a_replaced_image(folder, tmp_path, monkeypatch):
    import posecal.models.store as store_mod

    data = _data(6)
    orig = store_mod.StoreWriter.write_chunk
    calls = []

    def dying(self, j, arrays):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(j)
        return orig(self, j, arrays)

    monkeypatch.setattr(store_mod.StoreWriter, "write_chunk", dying)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        _run(folder, part, data)
    monkeypatch.setattr(store_mod.StoreWriter, "write_chunk", orig)
    assert not (part / "meta.json").exists()
    _image(folder / "1.png", 99)  # chunk 0 (rows 0-1) was cropped from the old 1.png
    with pytest.warns(UserWarning, match=r"recomputing 1 chunk\(s\) \(0\).*replaced.*1\.png"):
        _run(folder, part, data)
    ref = tmp_path / "ref"
    _run(folder, ref, data)
    assert _tree(part) == _tree(ref)


def test_rerun_of_a_finished_store_follows_a_replaced_image_and_ignores_a_touched_one(folder, tmp_path):
    data = _data(6)
    out = tmp_path / "st"
    first = _run(folder, out, data).read("features_gap")
    st = os.stat(folder / "4.png")
    os.utime(folder / "4.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, newer mtime
    before = _tree(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no chunk recomputed, nothing to say
        _run(folder, out, data)
    assert _tree(out) == before
    _image(folder / "4.png", 123)
    with pytest.warns(UserWarning, match=r"recomputing 1 chunk\(s\) \(2\).*4\.png"):
        again = _run(folder, out, data).read("features_gap")
    assert not np.array_equal(again[4], first[4]) and np.array_equal(again[:4], first[:4])
    ref = tmp_path / "ref"
    _run(folder, ref, data)
    assert _tree(out) == _tree(ref)


def test_a_store_begun_without_image_digests_resumes_to_the_same_bytes(folder, tmp_path):
    """A partial store of an earlier posecal (no ``input_digests`` in its index) is taken as it is."""
    import json

    data = _data(6)
    ref = tmp_path / "ref"
    _run(folder, ref, data)
    old = tmp_path / "old"
    _run(folder, old, data)
    (old / "meta.json").unlink()
    idx = json.loads((old / "index.json").read_text())
    del idx["input_digests"]
    (old / "index.json").write_text(json.dumps(idx))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(folder, old, data)
    assert _tree(old) == _tree(ref)
