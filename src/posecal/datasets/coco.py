"""COCO keypoints JSON + image folder: validation and per-instance iteration for top-down extraction."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from posecal._util import read_json
from posecal.errors import PosecalInputError
from posecal.keypoints import KeypointSet, find_keypoint_set


@dataclass(frozen=True)
class Instance:
    """One person to crop.

    Attributes:
        image_id: COCO image id.
        ann_id: gt annotation id (-1 for a detection box without gt).
        file_name: image file name relative to the image folder.
        bbox: (4,) float64 x, y, w, h in image pixels.
        box_score: detector score (1.0 for gt boxes).
        keypoints: (K, 3) float64 gt x, y, v in image pixels, or None (detections).
        area: gt area (image px²) or NaN.
    """

    image_id: int
    ann_id: int
    file_name: str
    bbox: np.ndarray
    box_score: float
    keypoints: np.ndarray | None
    area: float


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the image header (PIL, lazy)."""
    from PIL import Image

    with Image.open(path) as im:
        return int(im.size[0]), int(im.size[1])


def read_coco(src: str | os.PathLike | dict[str, Any], *, file: str | None = None) -> dict[str, Any]:
    """Load and validate a COCO keypoints file; returns the dict.

    Checks: ``images``/``annotations``/``categories`` present, ``categories[0].keypoints`` names a known
    keypoint set or every annotation's keypoint count matches one (else error), keypoints length 3K.
    """
    if isinstance(src, dict):
        d, file = src, file or "<dict>"
    else:
        file = file or str(src)
        d = read_json(src)
    if not isinstance(d, dict):
        raise PosecalInputError("expected a COCO dict with images/annotations/categories", file=file)
    for key in ("images", "annotations", "categories"):
        if not isinstance(d.get(key), list):
            raise PosecalInputError("missing or not a list", file=file, field=key)
    keypoint_set(d, file=file)
    return d


def keypoint_set(d: dict[str, Any], *, file: str | None = None) -> KeypointSet:
    """Keypoint set of a COCO dict: by ``categories[0].keypoints`` names, else by keypoint count.

    A count that matches no known set, or two sets (e.g. 14: LSP14 and CrowdPose14) without names, raises.
    """
    from posecal.keypoints import KEYPOINT_SETS

    cats = d.get("categories") or []
    names = cats[0].get("keypoints") if cats and isinstance(cats[0], dict) else None
    if names:
        ks = find_keypoint_set(names)
        if ks is not None:
            return ks
    anns = [a for a in d.get("annotations", []) if a.get("keypoints")]
    if not anns:
        raise PosecalInputError("no keypoint names in categories[0] and no annotations with keypoints",
                                file=file, field="categories")
    n3 = len(anns[0]["keypoints"])
    k = n3 // 3
    sets = [s for s in KEYPOINT_SETS.values() if s.num_keypoints == k] if n3 % 3 == 0 else []
    if len(sets) == 1:
        return sets[0]
    if not sets:
        raise PosecalInputError(f"{n3} keypoint values ({n3 / 3:g} keypoints) match no keypoint set",
                                file=file, record=0, field="keypoints")
    raise PosecalInputError(f"{k} keypoints fit {', '.join(s.name for s in sets)}; name them in "
                            "categories[0].keypoints", file=file, field="categories")


def instances(d: dict[str, Any], *, boxes: list[dict[str, Any]] | None = None, file: str | None = None,
              min_keypoints: int = 1) -> list[Instance]:
    """Instances to crop, in a stable order (annotation file order, or detection file order).

    With ``boxes=None`` every non-crowd gt annotation with at least ``min_keypoints`` labelled keypoints
    (and a positive box) is one instance. With ``boxes`` (COCO detection results: image_id, bbox, score)
    each detection of an image present in ``d`` is one instance, ``ann_id = -1``.
    """
    ks = keypoint_set(d, file=file)
    k = ks.num_keypoints
    imgs = {int(im["id"]): im for im in d["images"]}
    out: list[Instance] = []
    if boxes is None:
        for r, a in enumerate(d["annotations"]):
            if a.get("iscrowd", 0):
                continue
            kp = a.get("keypoints")
            if not kp:
                continue
            if len(kp) != 3 * k:
                raise PosecalInputError(f"{len(kp)} keypoint values, expected {3 * k} ({ks.name})",
                                        file=file, record=r, field="keypoints")
            kpa = np.asarray(kp, dtype=np.float64).reshape(k, 3)
            if int((kpa[:, 2] > 0).sum()) < min_keypoints:
                continue
            bbox = np.asarray(a.get("bbox", [0, 0, 0, 0]), dtype=np.float64)
            if bbox.shape != (4,) or bbox[2] <= 0 or bbox[3] <= 0:
                raise PosecalInputError("bbox must be [x, y, w, h] with w, h > 0", file=file, record=r,
                                        field="bbox")
            iid = int(a["image_id"])
            if iid not in imgs:
                raise PosecalInputError(f"image_id {iid} not in images", file=file, record=r,
                                        field="image_id")
            out.append(Instance(iid, int(a.get("id", r)), imgs[iid]["file_name"], bbox, 1.0, kpa,
                                float(a.get("area", bbox[2] * bbox[3]))))
    else:
        for r, b in enumerate(boxes):
            try:
                iid = int(b["image_id"])
                bbox = np.asarray(b["bbox"], dtype=np.float64)
                score = float(b.get("score", 1.0))
            except (KeyError, TypeError, ValueError) as e:
                raise PosecalInputError(f"bad detection record: {e}", record=r, field="bbox") from None
            if bbox.shape != (4,) or bbox[2] <= 0 or bbox[3] <= 0:
                raise PosecalInputError("bbox must be [x, y, w, h] with w, h > 0", record=r, field="bbox")
            if iid not in imgs or int(b.get("category_id", 1)) != 1:
                continue
            out.append(Instance(iid, -1, imgs[iid]["file_name"], bbox, score, None, float("nan")))
    return out
