"""MPII in MMPose's JSON form (list of {image, joints, joints_vis, center, scale}) -> COCO keypoints dict."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from posecal._util import read_json
from posecal.errors import PosecalInputError, PosecalWarning
from posecal.keypoints import MPII16

PIXEL_STD = 200.0


def _check_scale(scale: object, file: str, r: int) -> None:
    """``scale`` a number > 0 whose box (side ``scale·200`` px) and area stay finite."""
    from posecal.datasets.coco import number

    s = number(scale, file, r, "scale")
    if s <= 0:
        raise PosecalInputError("must be > 0", file=file, record=r, field="scale")
    if not np.isfinite(s * PIXEL_STD * s * PIXEL_STD):
        raise PosecalInputError(f"box of side {s:g} x {PIXEL_STD:g} px is not representable (its area overflows)",
                                file=file, record=r, field="scale")


def read_mpii(path: str | os.PathLike, images: str | os.PathLike | None = None) -> dict[str, Any]:
    """MMPose MPII annotations -> COCO keypoints dict in the MPII-16 set.

    As MMPose's ``MpiiDataset``: joints and centre are 1-based (MATLAB) and get −1; the person box is
    the square of side ``scale·200`` around ``center`` moved down by ``15·scale`` px. v = 2 where
    ``joints_vis`` is 1, else 0 (MPII marks unlabelled, not occluded, joints). area = box w·h.
    Image ids are 1.. in order of first appearance; annotation ids 1.. in file order. A ``joints_vis``
    flag other than 0/1 is an error; so is, with ``images`` given, a missing folder or image (their
    width/height are read from the image headers).
    """
    file = str(path)
    from posecal.datasets.lsp import _check_images_dir

    _check_images_dir(images)
    recs = read_json(path)
    if not isinstance(recs, list):
        raise PosecalInputError("expected a list of MPII records", file=file)
    img_ids: dict[str, int] = {}
    out_images, anns = [], []
    seen: dict[tuple, int] = {}
    dups: list[tuple[int, int]] = []  # (record, the earlier identical record)
    from posecal.datasets.coco import numbers, safe_file_name

    for r, a in enumerate(recs):
        if not isinstance(a, dict):
            raise PosecalInputError("record is not an object", file=file, record=r)
        for key in ("image", "joints", "joints_vis", "center", "scale"):
            if key not in a:
                raise PosecalInputError("missing", file=file, record=r, field=key)
        if not isinstance(a["joints"], list) or len(a["joints"]) != 16:
            raise PosecalInputError("expected 16 [x, y] pairs", file=file, record=r, field="joints")
        joints = np.stack([numbers(p, 2, file, r, "joints") for p in a["joints"]])
        vis = numbers(a["joints_vis"], 16, file, r, "joints_vis")
        if not np.isin(vis, (0, 1)).all():
            bad = vis[~np.isin(vis, (0, 1))][0]
            raise PosecalInputError(f"flag {bad:g}: expected 0 (not labelled) or 1 (labelled)", file=file,
                                    record=r, field="joints_vis")
        c_in = numbers(a["center"], 2, file, r, "center")
        _check_scale(a["scale"], file, r)
        key = (str(a["image"]), joints.tobytes(), vis.tobytes(), c_in.tobytes(), float(a["scale"]))
        if key in seen:
            dups.append((r, seen[key]))
        seen.setdefault(key, r)
        name = safe_file_name(a["image"], file, r, "image")
        if name not in img_ids:
            img_ids[name] = len(img_ids) + 1
            rec: dict[str, Any] = {"id": img_ids[name], "file_name": name}
            if images is not None:
                p = Path(images) / name
                if not p.is_file():
                    raise PosecalInputError("image missing", file=str(p), record=r, field="image")
                from posecal.datasets.coco import image_size

                rec["width"], rec["height"] = image_size(p, record=r)
            out_images.append(rec)
        s = float(a["scale"]) * PIXEL_STD
        c = c_in.copy()
        if c[0] != -1:
            c[1] += 15.0 * float(a["scale"])
        c -= 1.0
        kp = np.concatenate([joints - 1.0, np.where(vis > 0, 2, 0)[:, None]], axis=1)
        kp[vis <= 0, :2] = 0.0
        anns.append({
            "id": r + 1, "image_id": img_ids[name], "category_id": 1, "iscrowd": 0,
            "keypoints": [float(t) for t in kp.reshape(-1)], "num_keypoints": int((vis > 0).sum()),
            "bbox": [float(c[0] - s / 2), float(c[1] - s / 2), s, s], "area": s * s,
            "mpii_center": c.tolist(), "mpii_scale": float(a["scale"]),
        })
    if dups:
        warnings.warn(f"{file}: {len(dups)} record(s) repeat an earlier one exactly (first: record {dups[0][0]} = "
                      f"record {dups[0][1]}); each is written as a person of its own, so evaluation counts it "
                      "twice", PosecalWarning, stacklevel=2)
    return {
        "info": {"description": "MPII (MMPose JSON)", "source": os.path.basename(file)},
        "images": out_images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": list(MPII16.names)}],
    }
