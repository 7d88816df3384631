"""``extract --boxes`` sharded (``--shard i/n`` + ``--merge``) gives the store an unsharded run writes: OKS-NMS
and ``--max-per-image`` applied to the merged rows, the data's keypoint category on the results; and
``--max-per-image`` still holds with ``--oks-nms 1`` (OKS-NMS off)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from test_hostile_inputs import SP_MODEL, _run, _write


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def _boxes_with_duplicates(det: Path) -> list[dict]:
    """The gt boxes (score 0.9) and a 1-px shifted copy of each (score 0.5): OKS-NMS 0.9 drops most copies."""
    b = json.loads(det.read_text())
    return b + [{**x, "bbox": [x["bbox"][0] + 1, *x["bbox"][1:]], "score": 0.5} for x in b]


def _extract(shared, data, img, boxes, out, *extra):
    rc, _, err = _run(["extract", "--model", shared(*SP_MODEL), "--data", data, "--images", img,
                       "--boxes", boxes, "--out", out, "--threads", "1", *extra])
    assert rc == 0, err


def test_sharded_detection_store_merges_to_the_unsharded_store(shared, mini, tmp_path):
    data, img, det = mini
    d = json.loads(data.read_text())
    d["categories"][0]["id"] = 7  # the merged results carry the data's keypoint category, not COCO's 1
    for a in d["annotations"]:
        a["category_id"] = 7
    data = _write(tmp_path / "d7.json", d)
    boxes = _write(tmp_path / "dup.json", [{**x, "category_id": 7} for x in _boxes_with_duplicates(det)])
    extra = ("--max-per-image", "3", "--chunk-size", "4")
    _extract(shared, data, img, boxes, tmp_path / "ref", *extra)
    for s in ("0/2", "1/2"):
        _extract(shared, data, img, boxes, tmp_path / "m", *extra, "--shard", s)
    rc, _, err = _run(["extract", "--merge", "--out", tmp_path / "m"])
    assert rc == 0, err
    assert not (tmp_path / "m.all").exists()
    ref = _files(tmp_path / "ref")
    assert _files(tmp_path / "m") == ref
    pred = json.loads(ref["predictions.json"])
    n_det = len(json.loads(boxes.read_text()))
    per_image = collections.Counter(p["image_id"] for p in pred)
    assert len(pred) < n_det and max(per_image.values()) <= 3 and {p["category_id"] for p in pred} == {7}


def test_merged_gt_box_store_carries_the_datas_keypoint_category(shared, mini, tmp_path):
    data, img, _ = mini
    d = json.loads(data.read_text())
    d["categories"][0]["id"] = 7
    for a in d["annotations"]:
        a["category_id"] = 7
    data = _write(tmp_path / "d7.json", d)
    for s in ("0/2", "1/2"):
        rc, _, err = _run(["extract", "--model", shared(*SP_MODEL), "--data", data, "--images", img,
                           "--out", tmp_path / "m", "--chunk-size", "4", "--threads", "1", "--shard", s])
        assert rc == 0, err
    rc, _, err = _run(["extract", "--merge", "--out", tmp_path / "m"])
    assert rc == 0, err
    pred = json.loads((tmp_path / "m" / "predictions.json").read_text())
    assert pred and {p["category_id"] for p in pred} == {7}


def test_max_per_image_holds_with_oks_nms_off(shared, mini, tmp_path):
    data, img, det = mini
    boxes = _write(tmp_path / "dup.json", _boxes_with_duplicates(det))
    n = collections.Counter(b["image_id"] for b in json.loads(boxes.read_text()))
    _extract(shared, data, img, boxes, tmp_path / "top1", "--oks-nms", "1", "--max-per-image", "1")
    _extract(shared, data, img, boxes, tmp_path / "all", "--oks-nms", "1", "--max-per-image", "0")
    top1 = collections.Counter(p["image_id"] for p in json.loads((tmp_path / "top1" / "predictions.json").read_text()))
    every = collections.Counter(p["image_id"] for p in json.loads((tmp_path / "all" / "predictions.json").read_text()))
    assert every == n  # OKS-NMS off and no cut: every box
    assert top1 == {i: min(1, c) for i, c in n.items()} and max(n.values()) > 1
