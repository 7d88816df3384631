"""Leeds Sports Pose: ``joints.mat`` -> COCO keypoints dict in the LSP-14 keypoint set."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError, PosecalWarning
from posecal.keypoints import LSP14

SPLITS = {"train": (1, 1000), "test": (1001, 2000), "all": (1, 2000)}


def _load_joints(joints_mat: str | os.PathLike) -> np.ndarray:
    """The ``joints`` array of a MATLAB file, float64, any shape (errors name the file)."""
    from scipy.io import loadmat

    file = str(joints_mat)
    _check_mat_header(file)
    try:
        m = loadmat(joints_mat)
    except FileNotFoundError:
        raise PosecalInputError("file not found", file=file) from None
    except Exception as e:  # scipy raises several kinds for non-.mat input
        raise PosecalInputError(f"not a MATLAB file: {e}", file=file) from None
    if "joints" not in m:
        raise PosecalInputError("no 'joints' variable", file=file, field="joints")
    raw = m["joints"]
    if not isinstance(raw, np.ndarray):  # a MATLAB sparse matrix (scipy.sparse), or another object
        raise PosecalInputError(f"joints is a {type(raw).__name__} (a sparse matrix?); expected a full numeric "
                                "array", file=file, field="joints")
    kind = getattr(raw, "dtype", np.dtype(object)).kind
    if kind not in "iuf":  # bool and complex convert to float64 silently; cells/structs do not convert
        what = {"b": "logical", "c": "complex"}.get(kind, "not a numeric array")
        raise PosecalInputError(f"joints is {what} (dtype {raw.dtype}); expected real numbers", file=file,
                                field="joints")
    return np.asarray(raw, dtype=np.float64)


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _check_mat_header(file: str) -> None:
    """Refuse, in words, the files scipy's ``loadmat`` would reject with a puzzling message: an empty file and
    a MATLAB v7.3 file (HDF5; its signature at byte 0 or after MATLAB's 512-byte header)."""
    try:
        with open(file, "rb") as f:
            head = f.read(520)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return  # named by loadmat's own error below
    if not head:
        raise PosecalInputError("empty file (0 bytes); expected a MATLAB .mat file", file=file)
    if head.startswith(_HDF5_SIGNATURE) or head[512:520] == _HDF5_SIGNATURE:
        raise PosecalInputError("a MATLAB v7.3 (HDF5) file, which is not supported; re-save it in MATLAB with "
                                "save(FILE, 'joints', '-v7')", file=file)


def _check_images_dir(images: str | os.PathLike | None) -> Path | None:
    """The ``--images`` folder: None, or an existing folder (refused before any person is read)."""
    if images is None:
        return None
    if not Path(images).is_dir():
        what = "not a folder" if Path(images).exists() else "image folder not found"
        raise PosecalInputError(what, file=str(images), field="--images")
    return Path(images)


def _warn_flat_boxes(anns: list[dict[str, Any]], file: str) -> None:
    """People whose labelled joints span no area (one joint, or all on one point or line): their box has
    w or h = 0, which ``posecal extract`` refuses to crop and OKS cannot scale. Kept, and warned about."""
    flat = [a["id"] for a in anns if a["bbox"][2] <= 0 or a["bbox"][3] <= 0]
    if flat:
        warnings.warn(f"{file}: {len(flat)} person(s) whose labelled joints span a zero-width or zero-height box "
                      f"(first: record {flat[0]}, field 'joints'); written as they are, but posecal extract "
                      "cannot crop them", PosecalWarning, stacklevel=3)


def _warn_off_image(images: list[dict[str, Any]], anns: list[dict[str, Any]], file: str) -> None:
    """People whose box lies entirely outside their image (width/height read from ``--images``): no real LSP /
    LSPET person does; a wrong image folder (or joints file) does. Kept, and warned about."""
    off = [a["id"] for im, a in zip(images, anns, strict=True) if "width" in im
           and (a["bbox"][0] + a["bbox"][2] < 0 or a["bbox"][1] + a["bbox"][3] < 0
                or a["bbox"][0] >= im["width"] or a["bbox"][1] >= im["height"])]
    if off:
        warnings.warn(f"{file}: {len(off)} person(s) lie entirely outside their image (first: record {off[0]}, "
                      "field 'joints'); does --images hold this file's images?", PosecalWarning, stacklevel=3)


def _image_record(num: int, fname: str, img_dir: Path | None, image_sizes: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": num, "file_name": fname}
    if img_dir is not None and image_sizes:
        p = img_dir / fname
        if not p.is_file():
            raise PosecalInputError("image missing", file=str(p), record=num, field="file_name")
        from posecal.datasets.coco import image_size

        rec["width"], rec["height"] = image_size(p, record=num)
    return rec


def _annotation(num: int, x: np.ndarray, y: np.ndarray, v: np.ndarray) -> dict[str, Any]:
    """COCO annotation of one person: ``x, y (14,)`` image px, ``v (14,)`` COCO flags. The box is the tight
    box of the labelled joints (v > 0), area = w·h; unlabelled joints are written as (0, 0, 0)."""
    lab = v > 0
    x = np.where(lab, x, 0.0)
    y = np.where(lab, y, 0.0)
    x0, y0, x1, y1 = x[lab].min(), y[lab].min(), x[lab].max(), y[lab].max()
    w, h = x1 - x0, y1 - y0
    kp = np.stack([x, y, v], axis=1).reshape(-1)
    return {
        "id": num, "image_id": num, "category_id": 1, "iscrowd": 0,
        "keypoints": [float(t) if i % 3 != 2 else int(t) for i, t in enumerate(kp)],
        "num_keypoints": int(lab.sum()), "bbox": [float(x0), float(y0), float(w), float(h)],
        "area": float(w * h),
    }


def _check_joints(j: np.ndarray, flags: tuple[float, ...], file: str, lo: int) -> None:
    """Every flag known, every coordinate finite (records numbered from ``lo``)."""
    bad = ~np.isin(j[2], flags)
    if bad.any():
        k, n = np.argwhere(bad)[0]
        raise PosecalInputError(f"unknown flag {float(j[2, k, n]):g} at joint {k + 1}; expected one of "
                                f"{[int(f) for f in flags]}", file=file, record=lo + int(n), field="joints")
    bad = ~np.isfinite(j[:2]).all(axis=0)
    if bad.any():
        k, n = np.argwhere(bad)[0]
        raise PosecalInputError(f"non-finite coordinate at joint {k + 1}", file=file, record=lo + int(n),
                                field="joints")


def _coco_dict(description: str, file: str, images: list, anns: list) -> dict[str, Any]:
    return {
        "info": {"description": description, "source": os.path.basename(file)},
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": list(LSP14.names),
                        "skeleton": [[1, 2], [2, 3], [4, 5], [5, 6], [7, 8], [8, 9], [10, 11], [11, 12],
                                     [9, 13], [10, 13], [13, 14], [3, 9], [4, 10], [3, 4]]}],
    }


def read_lsp(joints_mat: str | os.PathLike, images: str | os.PathLike | None = None,
             split: str = "all", *, image_sizes: bool = True) -> dict[str, Any]:
    """LSP ``joints.mat`` (key ``joints``, (3, 14, N): x, y, flag) -> COCO keypoints dict.

    flag 0 = visible -> v = 2, flag 1 = occluded -> v = 1 (LSP's flag is inverted w.r.t. COCO);
    coordinates are kept as stored (image pixels). bbox = tight box of the 14 joints, area = w·h.
    Image ids = image numbers (``im0001.jpg`` -> 1); annotation id = image id. ``split``: train
    (1–1000), test (1001–2000) or all. With ``images`` given and ``image_sizes``, width/height come
    from the image headers (missing images are an error). Unknown flags, non-finite coordinates and an
    empty split are errors.
    """
    file = str(joints_mat)
    if split not in SPLITS:
        raise PosecalInputError(f"unknown split {split!r}; choose {', '.join(SPLITS)}", field="split")
    img_dir = _check_images_dir(images)
    j = _load_joints(joints_mat)
    if j.ndim != 3:
        raise PosecalInputError(f"joints has shape {j.shape}, expected (3, 14, N)", file=file, field="joints")
    if j.shape[:2] != (3, 14):
        hint = " (an LSP-extended file? use 'posecal convert lspet')" if j.shape[:2] == (14, 3) else ""
        raise PosecalInputError(f"joints has shape {j.shape}, expected (3, 14, N){hint}", file=file,
                                field="joints")
    n = j.shape[2]
    lo, hi = SPLITS[split]
    hi = n if split == "all" else min(hi, n)
    if hi < lo:
        raise PosecalInputError(f"split {split!r} (people {lo}–{SPLITS[split][1]}) is empty: the file holds "
                                f"{n} people", file=file, field="split")
    if split != "all" and n != SPLITS["all"][1]:
        warnings.warn(f"{file}: the LSP splits (train 1–1000, test 1001–2000) are those of the 2000-person "
                      f"LSP file; this one holds {n} people, so split {split!r} takes people {lo}–{hi}",
                      PosecalWarning, stacklevel=2)
    _check_joints(j[:, :, lo - 1:hi], (0.0, 1.0), file, lo)
    out_images, anns = [], []
    for num in range(lo, hi + 1):
        x, y, flag = j[0, :, num - 1], j[1, :, num - 1], j[2, :, num - 1]
        out_images.append(_image_record(num, f"im{num:04d}.jpg", img_dir, image_sizes))
        anns.append(_annotation(num, x, y, np.where(flag == 0, 2, 1)))
    _warn_flat_boxes(anns, file)
    _warn_off_image(out_images, anns, file)
    return _coco_dict(f"Leeds Sports Pose, split {split}", file, out_images, anns)


def read_lspet(joints_mat: str | os.PathLike, images: str | os.PathLike | None = None, *,
               image_sizes: bool = True) -> dict[str, Any]:
    """LSP Extended ``joints.mat`` (key ``joints``, **(14, 3, N)**: x, y, flag) -> COCO keypoints dict.

    flag 1 = annotated -> v = 2 (LSPET has no occlusion flag), flag 0 = not annotated -> v = 0, written as
    (0, 0, 0) (LSPET stores coordinates <= 0 there: the joint lies outside the frame). Annotated coordinates
    are kept as stored (image px, the same convention as :func:`read_lsp`). bbox = tight box of the annotated
    joints, area = w·h. Image ids = image numbers (``im00001.jpg`` -> 1); annotation id = image id. A person
    with no annotated joint, an unknown flag or a non-finite annotated coordinate is an error.
    """
    file = str(joints_mat)
    img_dir = _check_images_dir(images)
    j = _load_joints(joints_mat)
    if j.ndim != 3 or j.shape[:2] != (14, 3):
        hint = " (an LSP file? use 'posecal convert lsp')" if j.shape[:2] == (3, 14) else ""
        raise PosecalInputError(f"joints has shape {j.shape}, expected (14, 3, N){hint}", file=file,
                                field="joints")
    j = np.transpose(j, (1, 0, 2))  # -> (3, 14, N)
    n = j.shape[2]
    if n == 0:
        raise PosecalInputError("no people in the file", file=file, field="joints")
    lab = j[2] == 1
    j = j.copy()
    j[:2] = np.where(lab[None], j[:2], 0.0)  # unannotated coordinates carry no information
    _check_joints(j, (0.0, 1.0), file, 1)
    empty = np.flatnonzero(~lab.any(axis=0))
    if empty.size:
        raise PosecalInputError("no annotated joint", file=file, record=int(empty[0]) + 1, field="joints")
    out_images, anns = [], []
    for num in range(1, n + 1):
        x, y, flag = j[0, :, num - 1], j[1, :, num - 1], j[2, :, num - 1]
        out_images.append(_image_record(num, f"im{num:05d}.jpg", img_dir, image_sizes))
        anns.append(_annotation(num, x, y, np.where(flag == 1, 2, 0)))
    _warn_flat_boxes(anns, file)
    _warn_off_image(out_images, anns, file)
    return _coco_dict("LSP Extended", file, out_images, anns)
