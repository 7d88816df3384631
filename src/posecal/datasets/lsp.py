"""Leeds Sports Pose: ``joints.mat`` -> COCO keypoints dict in the LSP-14 keypoint set.

Coordinates are written as stored, with no MATLAB 1-based -> 0-based shift: checked against a model, a
horizontal flip test (MoveNet Thunder on every LSP image and 3000 LSPET images, each prediction averaged with
the one on the mirrored image, which cancels the model's and the crop's own offsets) leaves a median x offset
gt − prediction of +0.34 px on LSP and +0.13 px on LSPET, where stored 1-based coordinates would show +1.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError, PosecalWarning
from posecal.keypoints import LSP14

SPLITS = {"train": (1, 1000), "test": (1001, 2000), "all": (1, 2000)}


def _load_joints(joints_mat: str | os.PathLike) -> np.ndarray:
    """The ``joints`` array of a MATLAB file, float64, any shape (errors name the file; a file with MATLAB's
    text header that scipy cannot read is called truncated or corrupt, not "not a MATLAB file")."""
    from scipy.io import loadmat

    file = str(joints_mat)
    head = _check_mat_header(file)
    try:
        m = loadmat(joints_mat)
    except FileNotFoundError:
        raise PosecalInputError("file not found", file=file) from None
    except Exception as e:  # scipy raises several kinds for non-.mat input
        what = "truncated or corrupt MATLAB file" if head.startswith(b"MATLAB") else "not a MATLAB file"
        raise PosecalInputError(f"{what}: {e}", file=file) from None
    if "joints" not in m:
        names = [k for k in m if not k.startswith("__")]
        held = f"the file holds {', '.join(map(repr, names[:5]))}" if names else "the file holds none (truncated?)"
        raise PosecalInputError(f"no 'joints' variable; {held}", file=file, field="joints")
    raw = m["joints"]
    if not isinstance(raw, np.ndarray):  # a MATLAB sparse matrix (scipy.sparse), or another object
        raise PosecalInputError(f"joints is a {type(raw).__name__} (a sparse matrix?); expected a full numeric "
                                "array", file=file, field="joints")
    kind = getattr(raw, "dtype", np.dtype(object)).kind
    if raw.dtype == np.uint8 and _is_logical(file):  # loadmat reads a MATLAB logical array as uint8
        kind = "b"
    if kind not in "iuf":  # bool and complex convert to float64 silently; cells/structs do not convert
        what = {"b": "logical", "c": "complex"}.get(kind, "not a numeric array")
        shown = "MATLAB class logical" if raw.dtype == np.uint8 else f"dtype {raw.dtype}"
        raise PosecalInputError(f"joints is {what} ({shown}); expected real numbers", file=file,
                                field="joints")
    return np.asarray(raw, dtype=np.float64)


def _is_logical(file: str) -> bool:
    """Whether the file's ``joints`` is a MATLAB logical array (its class, which loadmat's uint8 hides)."""
    from scipy.io import whosmat

    try:
        return any(name == "joints" and cls == "logical" for name, _, cls in whosmat(file))
    except Exception:  # noqa: BLE001 - loadmat read it already; the class is a hint, not a requirement
        return False


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _check_mat_header(file: str) -> bytes:
    """The file's first 520 bytes. Refuses, in words, the files scipy's ``loadmat`` would reject with a
    puzzling message: a folder, an empty file and a MATLAB v7.3 file (HDF5; its signature at byte 0 or after
    MATLAB's 512-byte header)."""
    if os.path.isdir(file):
        raise PosecalInputError("is a folder, expected a MATLAB .mat file", file=file)
    try:
        with open(file, "rb") as f:
            head = f.read(520)
    except (FileNotFoundError, NotADirectoryError):
        return b""  # named by loadmat's own error below
    if not head:
        raise PosecalInputError("empty file (0 bytes); expected a MATLAB .mat file", file=file)
    if head.startswith(_HDF5_SIGNATURE) or head[512:520] == _HDF5_SIGNATURE:
        raise PosecalInputError("a MATLAB v7.3 (HDF5) file, which is not supported; re-save it in MATLAB with "
                                "save(FILE, 'joints', '-v7')", file=file)
    return head


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


_IMAGE_NAME = re.compile(r"im(\d+)\.jpg")


def _image_numbers(img_dir: Path, width: int) -> list[int]:
    """Numbers of the folder's images named as the dataset names them (``im0001.jpg``: ``width`` 4)."""
    out = []
    for name in os.listdir(img_dir):
        m = _IMAGE_NAME.fullmatch(name)
        if m and name == f"im{int(m[1]):0{width}d}.jpg":
            out.append(int(m[1]))
    return out


def _warn_extra_images(img_dir: Path | None, n: int, width: int, file: str) -> None:
    """An image folder holding more of the dataset's images (``im2001.jpg`` ...) than the joints file has
    people: the images and the joints may come from different releases. Converted as it is, and warned about."""
    if img_dir is None:
        return
    extra = sorted(k for k in _image_numbers(img_dir, width) if k > n)
    if extra:
        warnings.warn(f"{img_dir}: the image folder holds {len(extra)} image(s) beyond the {n} people of {file} "
                      f"(first: im{extra[0]:0{width}d}.jpg); are the joints and the images from the same "
                      "release?", PosecalWarning, stacklevel=3)


def _image_record(num: int, fname: str, img_dir: Path | None, image_sizes: bool, n: int = 0) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": num, "file_name": fname}
    if img_dir is not None and image_sizes:
        p = img_dir / fname
        if p.exists() and not p.is_file():
            raise PosecalInputError("not an image file (a folder?)", file=str(p), record=num, field="file_name")
        if not p.is_file():
            width = len(fname) - len("im.jpg")
            have = len(_image_numbers(img_dir, width))
            hint = (f" (the folder holds no image named as the dataset's, im{1:0{width}d}.jpg …: the wrong "
                    "--images folder?)" if have == 0 else
                    f" (the folder holds {have} of the dataset's images; the joints file has {n} people)" if n
                    else "")
            raise PosecalInputError(f"image missing{hint}", file=str(p), record=num, field="file_name")
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
    """Every flag known, every coordinate finite (records numbered from ``lo``; joints named 1.. and by name).
    The first bad person is named (then its first bad joint)."""
    bad = ~np.isin(j[2], flags)
    if bad.any():
        n, k = np.argwhere(bad.T)[0]
        raise PosecalInputError(f"unknown flag {float(j[2, k, n]):g} at joint {k + 1}; expected one of "
                                f"{[int(f) for f in flags]} (joint {k + 1} = {LSP14.names[k]})", file=file,
                                record=lo + int(n), field="joints")
    bad = ~np.isfinite(j[:2])
    if bad.any():
        n, k, c = np.argwhere(bad.transpose(2, 1, 0))[0]
        raise PosecalInputError(f"non-finite coordinate at joint {k + 1} ({LSP14.names[k]}): "
                                f"{'xy'[c]} = {float(j[c, k, n]):g}", file=file, record=lo + int(n), field="joints")


def _one_person(j: np.ndarray, want: tuple[int, int]) -> np.ndarray:
    """``joints`` of one person as MATLAB saves it: ``want`` (3, 14) or (14, 3) with no third axis (MATLAB drops
    a trailing singleton dimension, so a 3×14×1 array is stored as 3×14) -> (…, 1)."""
    return j[:, :, None] if j.ndim == 2 and j.shape == want else j


def _shape_hint(shape: tuple[int, ...], want: tuple[int, int], other: tuple[int, int], other_cmd: str) -> str:
    """Why a ``joints`` shape is wrong, when it can tell: the other LSP format's axes, or 3 and 14 in
    another order (e.g. a (N, 14, 3) array written from Python)."""
    if len(shape) in (2, 3) and shape[:2] == other:
        return f" (an {'LSP-extended' if other_cmd == 'lspet' else 'LSP'} file? use 'posecal convert {other_cmd}')"
    if len(shape) == 3 and 3 in shape and 14 in shape:
        axes = ("x/y/flag", "joint") if want == (3, 14) else ("joint", "x/y/flag")
        return f" (axes in another order? expected {axes[0]} × {axes[1]} × person)"
    return ""


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
    """LSP ``joints.mat`` (key ``joints``, (3, 14, N): x, y, flag; one person as MATLAB saves it: (3, 14)) -> COCO
    keypoints dict.

    flag 0 = visible -> v = 2, flag 1 = occluded -> v = 1 (LSP's flag is inverted w.r.t. COCO);
    coordinates are kept as stored (image pixels, no 1-based shift: see the module docstring). bbox = tight
    box of the 14 joints, area = w·h. Image ids = image numbers (``im0001.jpg`` -> 1); annotation id = image
    id. ``split``: train (1–1000), test (1001–2000) or all. With ``images`` given and ``image_sizes``,
    width/height come from the image headers (missing images are an error). Unknown flags, non-finite
    coordinates, a file without people and an empty split are errors (naming the person as the record and
    the joint by number and name). Warned about, and converted: most joints flagged 1 (an LSPET file in
    LSP's axis order?), and an image folder holding more of the dataset's images than the file has people.
    """
    file = str(joints_mat)
    if split not in SPLITS:
        raise PosecalInputError(f"unknown split {split!r}; choose {', '.join(SPLITS)}", field="split")
    img_dir = _check_images_dir(images)
    j = _one_person(_load_joints(joints_mat), (3, 14))
    if j.ndim != 3 or j.shape[:2] != (3, 14):
        raise PosecalInputError(f"joints has shape {j.shape}, expected (3, 14, N)"
                                f"{_shape_hint(j.shape, (3, 14), (14, 3), 'lspet')}", file=file, field="joints")
    n = j.shape[2]
    if n == 0:
        raise PosecalInputError("no people in the file (shape (3, 14, 0))", file=file, field="joints")
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
    occluded = float((j[2, :, lo - 1:hi] == 1).mean())
    if occluded > 0.5:
        warnings.warn(f"{file}: {occluded:.0%} of the joints carry flag 1, which LSP reads as occluded (v = 1; "
                      "7% in the LSP release); an LSP Extended file (flag 1 = annotated) in LSP's axis order? "
                      "Converted as LSP", PosecalWarning, stacklevel=2)
    out_images, anns = [], []
    for num in range(lo, hi + 1):
        x, y, flag = j[0, :, num - 1], j[1, :, num - 1], j[2, :, num - 1]
        out_images.append(_image_record(num, f"im{num:04d}.jpg", img_dir, image_sizes, n))
        anns.append(_annotation(num, x, y, np.where(flag == 0, 2, 1)))
    _warn_flat_boxes(anns, file)
    _warn_off_image(out_images, anns, file)
    if image_sizes:
        _warn_extra_images(img_dir, n, 4, file)
    return _coco_dict(f"Leeds Sports Pose, split {split}", file, out_images, anns)


def read_lspet(joints_mat: str | os.PathLike, images: str | os.PathLike | None = None, *,
               image_sizes: bool = True) -> dict[str, Any]:
    """LSP Extended ``joints.mat`` (key ``joints``, **(14, 3, N)**: x, y, flag; one person: (14, 3)) -> COCO
    keypoints dict.

    flag 1 = annotated -> v = 2 (LSPET has no occlusion flag), flag 0 = not annotated -> v = 0, written as
    (0, 0, 0) (LSPET stores coordinates <= 0 there: the joint lies outside the frame). Annotated coordinates
    are kept as stored (image px, the same convention as :func:`read_lsp`). bbox = tight box of the annotated
    joints, area = w·h. Image ids = image numbers (``im00001.jpg`` -> 1); annotation id = image id. A person
    with no annotated joint, an unknown flag or a non-finite annotated coordinate is an error. Warned about,
    and converted: fewer than half the joints annotated (an LSP file in LSPET's axis order?), and an image
    folder holding more of the dataset's images than the file has people.
    """
    file = str(joints_mat)
    img_dir = _check_images_dir(images)
    j = _one_person(_load_joints(joints_mat), (14, 3))
    if j.ndim != 3 or j.shape[:2] != (14, 3):
        raise PosecalInputError(f"joints has shape {j.shape}, expected (14, 3, N)"
                                f"{_shape_hint(j.shape, (14, 3), (3, 14), 'lsp')}", file=file, field="joints")
    j = np.transpose(j, (1, 0, 2))  # -> (3, 14, N)
    n = j.shape[2]
    if n == 0:
        raise PosecalInputError("no people in the file", file=file, field="joints")
    lab = j[2] == 1
    j = j.copy()
    j[:2] = np.where(lab[None], j[:2], 0.0)  # unannotated coordinates carry no information
    _check_joints(j, (0.0, 1.0), file, 1)
    annotated = float(lab.mean())
    odd = (f"only {annotated:.0%} of the joints carry flag 1, which LSPET reads as annotated (88% in the LSPET "
           "release); an LSP file (flag 0 = visible) in LSPET's axis order?") if annotated < 0.5 else ""
    empty = np.flatnonzero(~lab.any(axis=0))
    if empty.size:
        raise PosecalInputError(f"no annotated joint{'; ' + odd if odd else ''}", file=file,
                                record=int(empty[0]) + 1, field="joints")
    if odd:
        warnings.warn(f"{file}: {odd} Converted as LSPET", PosecalWarning, stacklevel=2)
    out_images, anns = [], []
    for num in range(1, n + 1):
        x, y, flag = j[0, :, num - 1], j[1, :, num - 1], j[2, :, num - 1]
        out_images.append(_image_record(num, f"im{num:05d}.jpg", img_dir, image_sizes, n))
        anns.append(_annotation(num, x, y, np.where(flag == 1, 2, 0)))
    _warn_flat_boxes(anns, file)
    _warn_off_image(out_images, anns, file)
    if image_sizes:
        _warn_extra_images(img_dir, n, 5, file)
    return _coco_dict("LSP Extended", file, out_images, anns)
