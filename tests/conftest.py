"""Shared fixtures. Real data lives in ../shared (never copied into the repo).

Under CI (CI=true) a test that needs ../shared fails loudly if it is missing; elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the property tests with a fixed example sequence (reproducible failures, no flakiness from a new
# random draw); local runs keep exploring new examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSECAL_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared; fail under CI, skip elsewhere, when it does not exist."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"shared data missing: {p}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI=true: tests that need ../shared must not skip)")
        pytest.skip(msg)
    return p


@pytest.fixture
def shared():
    """The shared-data resolver: ``shared('data', 'lsp', 'joints.mat')``."""
    return shared_path


@pytest.fixture
def mini(shared, tmp_path):
    """Two coco-mini images with their people (copied to tmp_path/img): the data JSON, the image folder and a
    det.json of their gt boxes (scores 0.9)."""
    src = shared("data", "coco-mini", "person_keypoints_train2017.json")
    d = json.loads(src.read_text())
    keep = [im for im in d["images"] if any(a["image_id"] == im["id"] and a["num_keypoints"] > 0
                                            for a in d["annotations"])][:2]
    ids = {im["id"] for im in keep}
    d = {**d, "images": keep, "annotations": [a for a in d["annotations"] if a["image_id"] in ids]}
    img = tmp_path / "img"
    img.mkdir()
    for im in keep:
        shutil.copy(src.parent / "train2017" / im["file_name"], img / im["file_name"])
    det = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
           for a in d["annotations"] if not a["iscrowd"]]
    (tmp_path / "data.json").write_text(json.dumps(d))
    (tmp_path / "det.json").write_text(json.dumps(det))
    return tmp_path / "data.json", img, tmp_path / "det.json"
