"""Leeds Sports Pose: ``joints.mat`` -> COCO keypoints dict in the LSP-14 keypoint set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError
from posecal.keypoints import LSP14

SPLITS = {"train": (1, 1000), "test": (1001, 2000), "all": (1, 2000)}


def read_lsp(joints_mat: str | os.PathLike, images: str | os.PathLike | None = None,
             split: str = "all", *, image_sizes: bool = True) -> dict[str, Any]:
    """LSP ``joints.mat`` (key ``joints``, (3, 14, N): x, y, flag) -> COCO keypoints dict.

    flag 0 = visible -> v = 2, flag 1 = occluded -> v = 1 (LSP's flag is inverted w.r.t. COCO);
    coordinates are kept as stored (image pixels). bbox = tight box of the 14 joints, area = w·h.
    Image ids = image numbers (``im0001.jpg`` -> 1); annotation id = image id. ``split``: train
    (1–1000), test (1001–2000) or all. With ``images`` given and ``image_sizes``, width/height come
    from the image headers (missing images are an error).
    """
    from scipy.io import loadmat

    file = str(joints_mat)
    if split not in SPLITS:
        raise PosecalInputError(f"unknown split {split!r}; choose {', '.join(SPLITS)}", field="split")
    try:
        m = loadmat(joints_mat)
    except FileNotFoundError:
        raise PosecalInputError("file not found", file=file) from None
    except Exception as e:  # scipy raises several kinds for non-.mat input
        raise PosecalInputError(f"not a MATLAB file: {e}", file=file) from None
    if "joints" not in m:
        raise PosecalInputError("no 'joints' variable", file=file, field="joints")
    try:
        j = np.asarray(m["joints"], dtype=np.float64)
    except (TypeError, ValueError):
        raise PosecalInputError("'joints' is not a numeric array", file=file, field="joints") from None
    if j.ndim != 3:
        raise PosecalInputError(f"joints has shape {j.shape}, expected (3, 14, N)", file=file, field="joints")
    if j.shape[0] != 3 and j.shape[-1] == 3:  # LSP-extended stores (N, 14, 3)-like (14, 3, N)
        j = np.transpose(j, (2, 0, 1)) if j.shape[1] == 14 else j
    if j.shape[:2] != (3, 14):
        raise PosecalInputError(f"joints has shape {j.shape}, expected (3, 14, N)", file=file, field="joints")
    n = j.shape[2]
    lo, hi = SPLITS[split]
    hi = min(hi, n)
    if hi < lo:
        raise PosecalInputError(f"split {split!r} (people {lo}–{SPLITS[split][1]}) is empty: the file holds "
                                f"{n} people", file=file, field="split")
    for num in range(lo, hi + 1):  # refuse what evaluate would refuse: NaN joints, unknown flags
        col = j[:, :, num - 1]
        bad = np.flatnonzero(~np.isfinite(col).all(axis=0))
        if bad.size:
            raise PosecalInputError(f"non-finite value at joint {int(bad[0]) + 1}", file=file, record=num,
                                    field="joints")
        bad = np.flatnonzero(~np.isin(col[2], (0, 1)))
        if bad.size:
            raise PosecalInputError(f"flag {col[2, bad[0]]:g} at joint {int(bad[0]) + 1} (expected 0 visible "
                                    "or 1 occluded)", file=file, record=num, field="joints")
    img_dir = Path(images) if images is not None else None
    out_images, anns = [], []
    for num in range(lo, hi + 1):
        x, y, flag = j[0, :, num - 1], j[1, :, num - 1], j[2, :, num - 1]
        v = np.where(flag == 0, 2, 1)
        fname = f"im{num:04d}.jpg"
        rec: dict[str, Any] = {"id": num, "file_name": fname}
        if img_dir is not None and image_sizes:
            p = img_dir / fname
            if not p.is_file():
                raise PosecalInputError("image missing", file=str(p), record=num, field="file_name")
            from posecal.datasets.coco import image_size

            rec["width"], rec["height"] = image_size(p, record=num)
        out_images.append(rec)
        x0, y0, x1, y1 = x.min(), y.min(), x.max(), y.max()
        w, h = x1 - x0, y1 - y0
        kp = np.stack([x, y, v], axis=1).reshape(-1)
        anns.append({
            "id": num, "image_id": num, "category_id": 1, "iscrowd": 0,
            "keypoints": [float(t) if i % 3 != 2 else int(t) for i, t in enumerate(kp)],
            "num_keypoints": 14, "bbox": [float(x0), float(y0), float(w), float(h)], "area": float(w * h),
        })
    return {
        "info": {"description": f"Leeds Sports Pose, split {split}", "source": os.path.basename(file)},
        "images": out_images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": list(LSP14.names),
                        "skeleton": [[1, 2], [2, 3], [4, 5], [5, 6], [7, 8], [8, 9], [10, 11], [11, 12],
                                     [9, 13], [10, 13], [13, 14], [3, 9], [4, 10], [3, 4]]}],
    }
