"""COCO keypoint ground truth and results: JSON -> arrays, with validation.

Ground truth is the COCO keypoints format (``images``, ``annotations``, ``categories``); results are the
list of records MMPose, Detectron2 and Ultralytics write (``image_id``, ``category_id``, ``keypoints``
as a flat ``[x, y, s] * K`` list in image pixels, ``score``, optional ``bbox``). COCO-WholeBody files
(``foot_kpts``, ``face_kpts``, ``lefthand_kpts``, ``righthand_kpts`` beside the 17 body ``keypoints``)
are concatenated to K = 133 in the order of :data:`posecal.keypoints.COCO_WHOLEBODY133`; part scores
(``foot_score``, ``face_score``, ...) are kept in :attr:`CocoResults.part_scores`.

Every validation failure raises :class:`~posecal.errors.PosecalInputError` naming file, record and
field. Scores above 1 or below 0 are legal (heatmap maxima exceed 1): a :class:`PosecalWarning` is
issued, values are never clipped.
"""

from __future__ import annotations

import contextlib
import gc
import math
import mmap
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from posecal.errors import PosecalInputError, PosecalWarning
from posecal.keypoints import COCO_WHOLEBODY133, KeypointSet, find_keypoint_set

__all__ = ["CocoGroundTruth", "CocoResults", "load_gt", "load_results", "save_results", "WHOLEBODY_FIELDS"]

#: the extra keypoint fields of COCO-WholeBody, in the order they follow the 17 body keypoints
WHOLEBODY_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("foot", "foot_kpts", 6),
    ("face", "face_kpts", 68),
    ("lefthand", "lefthand_kpts", 21),
    ("righthand", "righthand_kpts", 21),
)
_PART_SCORE_KEYS = ("body", "foot", "face", "lefthand", "righthand", "wholebody")


@dataclass(eq=False)  # holds arrays: identity comparison
class CocoGroundTruth:
    """COCO keypoint ground truth as arrays over G annotations (file order) and I images.

    Attributes:
        ann_id: (G,) int64 annotation ids.
        image_id: (G,) int64.
        category_id: (G,) int64.
        keypoints: (G, K, 3) float64 — x, y in image pixels and the label flag v (0 unlabelled,
            1 labelled/occluded, 2 visible).
        area: (G,) float64 segment area in image pixels² (NaN where the file has no ``area``).
        bbox: (G, 4) float64 x, y, w, h in image pixels.
        iscrowd: (G,) bool.
        num_keypoints: (G,) int64 — the ``num_keypoints`` FIELD as written (pycocotools uses it for
            ignoring); where absent, the count of v > 0 of the body ``keypoints``.
        image_ids: (I,) int64 sorted ids of all listed images.
        images: image id -> image record.
        categories: the category records.
        keypoint_set: the matched keypoint set (by ``categories[0].keypoints`` names, or WholeBody
            when the part fields are present), else None.
        has_area: whether every annotation had an ``area`` field.
        path: source file (None for a dict).
    """

    ann_id: np.ndarray
    image_id: np.ndarray
    category_id: np.ndarray
    keypoints: np.ndarray
    area: np.ndarray
    bbox: np.ndarray
    iscrowd: np.ndarray
    num_keypoints: np.ndarray
    image_ids: np.ndarray
    images: dict[int, dict]
    categories: list[dict]
    keypoint_set: KeypointSet | None = None
    has_area: bool = True
    path: str | None = None

    def __len__(self) -> int:
        return int(self.ann_id.shape[0])

    @property
    def num_joints(self) -> int:
        """K, the number of keypoints per instance."""
        return int(self.keypoints.shape[1])

    @property
    def category_ids(self) -> np.ndarray:
        """(C,) int64 sorted category ids (pycocotools' default ``catIds``)."""
        return _unique(np.array([c["id"] for c in self.categories], dtype=np.int64))


@dataclass(eq=False)  # holds arrays: identity comparison
class CocoResults:
    """COCO keypoint results as arrays over D detections (file order).

    Attributes:
        image_id: (D,) int64.
        category_id: (D,) int64.
        keypoints: (D, K, 3) float64 — x, y in image pixels and the keypoint score.
        score: (D,) float64 instance score (raw, never clipped).
        bbox: (D, 4) float64 x, y, w, h, or None when the records carry no box.
        visibility: (D, K) float64 from an optional ``"visibility"`` list per record, else None.
        det_area: (D,) float64 the detection area pycocotools' ``loadRes`` assigns: w·h of ``bbox``
            when the FIRST record has a non-empty ``bbox``, else the extent of the record's own
            ``keypoints`` points (including (0, 0) placeholders).
        part_scores: WholeBody part name -> (D,) scores from ``<part>_score`` fields (when every record
            has that field).
        records: the parsed dicts, for round-tripping extra fields.
        path: source file (None for a list).
    """

    image_id: np.ndarray
    category_id: np.ndarray
    keypoints: np.ndarray
    score: np.ndarray
    bbox: np.ndarray | None
    visibility: np.ndarray | None
    det_area: np.ndarray
    part_scores: dict[str, np.ndarray] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    path: str | None = None

    def __len__(self) -> int:
        return int(self.image_id.shape[0])


def _get_records(self: CocoResults) -> list[dict]:
    recs = self.__dict__["_records"]
    pending = self.__dict__.pop("_restore_kp", None)
    if pending is not None:
        for r, row in zip(recs, pending.tolist(), strict=True):
            r["keypoints"] = row
    return recs


def _set_records(self: CocoResults, value: list[dict]) -> None:
    self.__dict__.pop("_restore_kp", None)
    self.__dict__["_records"] = value


# the fast JSON path leaves ``"keypoints": []`` in the record dicts; restore them lazily on access
CocoResults.records = property(_get_records, _set_records, doc="the parsed result dicts (file order)")


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (restored afterwards).

    Parsing creates hundreds of thousands of dicts and lists; with them alive every automatic collection
    rescans them all, which can double the time of loading and evaluating a large file. Nothing here
    creates reference cycles, so pausing is safe.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` of a 1-D array, without the ``numpy.ma`` import (~5 ms) that a plain
    ``np.unique`` triggers on first use."""
    s = np.sort(a)
    return s[np.r_[True, s[1:] != s[:-1]]] if s.size else s


# ----------------------------------------------------------------------------------------------
_KP_ARRAY = re.compile(rb'"keypoints"\s*:\s*\[([^\]]*)\]')
_NUM_CHARS = b"0123456789-+.eE, \t\n\r\x01"
_NL_TO_SPACE = bytes.maketrans(b"\n\r", b"  ")
_FAST_MIN_BYTES = 1 << 16  # below this the plain orjson path is as fast
_FAST_MIN_RECORDS = 64


def _fast_keypoints(data: bytes | mmap.mmap) -> tuple[bytes, np.ndarray] | None:
    """Fast path for big files: cut every numeric ``"keypoints": [...]`` array out of the JSON text and
    parse them all at once with numpy's C reader (no Python float objects); returns the remaining JSON text
    (with ``"keypoints": []``) and the (N, 3K) array, or None when anything is unusual (the caller then
    parses normally, so errors are reported exactly as on the normal path)."""
    parts = _KP_ARRAY.split(data)  # [text, array contents, text, array contents, ..., text]
    nums = parts[1::2]
    if len(nums) < _FAST_MIN_RECORDS:  # (an empty array makes numpy's reader warn: None below)
        return None
    joined = b"\x01".join(nums)
    line_breaks = joined.find(b"\n") >= 0 or joined.find(b"\r") >= 0
    if joined.translate(None, _NUM_CHARS):
        # some "keypoints" arrays are not numbers (the names in categories, nested lists): keep them as text.
        # Find them from the positions of the non-numeric bytes (few arrays, usually one).
        lut = np.ones(256, dtype=bool)
        lut[np.frombuffer(_NUM_CHARS, dtype=np.uint8)] = False
        bad_pos = np.flatnonzero(lut[np.frombuffer(joined, dtype=np.uint8)])
        ends = np.cumsum(np.fromiter(map(len, nums), dtype=np.int64, count=len(nums)) + 1)
        bad = set(np.searchsorted(ends, bad_pos, side="right").tolist())
        parts[1::2] = [b'"keypoints":[]'] * len(nums)
        for i in bad:
            parts[2 * i + 1] = b'"keypoints":[' + nums[i] + b"]"
        nums = [c for i, c in enumerate(nums) if i not in bad]
        if len(nums) < _FAST_MIN_RECORDS:
            return None
    else:
        parts[1::2] = [b'"keypoints":[]'] * len(nums)
    del joined  # freed before the array is made, which then reuses its memory (fewer page faults)
    if line_breaks:  # a line break inside an array reads as a space
        nums = [c.translate(_NL_TO_SPACE) for c in nums]
    # one list item = one row (no line breaks inside); max_rows lets the reader size the array once
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            arr = np.loadtxt(nums, delimiter=",", dtype=np.float64, ndmin=2, comments=None,
                             max_rows=len(nums))
    except (ValueError, UserWarning):
        return None
    if arr.shape[0] != len(nums):
        return None
    del nums
    return b"".join(parts), arr


def _read_file(path: str, mapped: bool) -> bytes | mmap.mmap:
    """The file's bytes; a big regular file memory-mapped read-only when ``mapped`` (no copy: its pages come
    from the page cache, so parsing touches less fresh memory)."""
    with open(path, "rb") as fh:
        if mapped and not os.environ.get("POSECAL_NO_FAST_JSON"):
            try:
                if os.fstat(fh.fileno()).st_size >= _FAST_MIN_BYTES:
                    return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                pass
        return fh.read()


def _read_json(src: Any, file: str | None, locate=None) -> tuple[Any, str | None, np.ndarray | None]:
    """Parse ``src`` (path, bytes or already-parsed object). orjson first; NaN/Infinity (written by
    Python's json) fall back to the stdlib parser so validation can name the record and field.

    With ``locate`` (parsed object -> list of records), big inputs take :func:`_fast_keypoints`; the
    third value is then the (N, 3K) keypoint array of those records (their dicts hold ``[]``)."""
    if isinstance(src, (str, os.PathLike)):
        path = str(src)
        file = file or path
        try:
            data = _read_file(path, mapped=locate is not None)
        except OSError as e:
            raise PosecalInputError(f"cannot read file: {e.strerror or e}", file) from None
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    else:
        return src, file, None
    if locate is not None and len(data) >= _FAST_MIN_BYTES and not os.environ.get("POSECAL_NO_FAST_JSON"):
        fast = _fast_keypoints(data)
        if fast is not None:
            try:
                obj = orjson.loads(fast[0])
                recs = locate(obj)
                # every record a dict whose "keypoints" were cut out (only dicts take a str index)
                ok = (isinstance(recs, list) and len(recs) == fast[1].shape[0]
                      and [r["keypoints"] for r in recs].count([]) == len(recs))
            except (orjson.JSONDecodeError, TypeError, AttributeError, KeyError):
                ok = False
            if ok:
                return obj, file, fast[1]
    if not isinstance(data, bytes):
        data = data[:]  # mmap -> bytes
    try:
        return orjson.loads(data), file, None
    except orjson.JSONDecodeError as e:
        import json

        try:  # Python's json accepts NaN / Infinity; let the field check report them precisely
            return json.loads(data), file, None
        except (ValueError, UnicodeDecodeError):
            pass
        raise PosecalInputError(f"invalid JSON: {e}", file) from None


def _require_finite(arr: np.ndarray, file, fld: str, rec_ids=None) -> np.ndarray:
    """``arr`` (N, k3) unchanged, or a PosecalInputError naming the first record with NaN / inf."""
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.argmin(finite.all(axis=1)))
        rid = rec_ids[i] if rec_ids is not None else i
        raise PosecalInputError("NaN or infinite value", file, rid, fld)
    return arr


def _checked_rows(arr: np.ndarray, k3: int, file, fld: str, rec_ids=None) -> np.ndarray:
    """Validate an (N, k3') array from the fast path as :func:`_flat_array` validates lists."""
    if arr.shape[1] != k3:
        rid = rec_ids[0] if rec_ids is not None else 0
        raise PosecalInputError(f"expected {k3} numbers ({k3 // 3} x 3), got a list of {arr.shape[1]} "
                                "numbers", file, rid, fld)
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(arr, axis=None)
    if np.isfinite(total):  # a finite sum: no NaN / inf anywhere (fast check; an overflow checks fully)
        return arr
    return _require_finite(arr, file, fld, rec_ids)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_int(value: Any, file, record, fld) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or (
        isinstance(value, float) and (not math.isfinite(value) or not value.is_integer())
    ):
        raise PosecalInputError(f"expected an integer, got {value!r:.40}", file, record, fld)
    if not -(2**63) <= value < 2**63:
        raise PosecalInputError(f"integer out of range: {value!r:.40}", file, record, fld)
    return int(value)


def _flat_array(rows: list, k3: int, file, fld: str, rec_ids: Sequence | None = None,
                key: str = "keypoints") -> np.ndarray:
    """Stack a list of flat numeric lists of length k3 into (N, k3) float64, validating each."""
    n = len(rows)
    if n == 0:
        return np.zeros((0, k3), dtype=np.float64)
    bad = None
    for i, r in enumerate(rows):
        if not isinstance(r, list) or len(r) != k3:
            bad = i
            break
    if bad is not None:
        r = rows[bad]
        got = f"a list of {len(r)} numbers" if isinstance(r, list) else f"{type(r).__name__}"
        rid = rec_ids[bad] if rec_ids is not None else bad
        shape = f" ({k3 // 3} x 3)" if key.endswith("kpts") or key == "keypoints" else ""
        raise PosecalInputError(f"expected {k3} numbers{shape}, got {got}", file, rid, fld)
    try:
        arr = np.array(rows, dtype=np.float64)
    except (TypeError, ValueError):
        for i, r in enumerate(rows):
            if not all(_num(v) for v in r):
                rid = rec_ids[i] if rec_ids is not None else i
                raise PosecalInputError("non-numeric value", file, rid, fld) from None
        raise
    if arr.shape != (n, k3):  # nested lists etc.
        raise PosecalInputError(f"expected {k3} numbers per record", file, None, fld)
    return _require_finite(arr, file, fld, rec_ids)


def _column(recs: list[dict], key: str, file, what: str, default: Any = KeyError) -> list:
    try:
        return list(map(itemgetter(key), recs))
    except (KeyError, TypeError):
        for i, r in enumerate(recs):
            if not isinstance(r, dict):
                raise PosecalInputError(f"{what} must be a JSON object", file, i, None) from None
            if key not in r:
                if default is KeyError:
                    rid = r.get("id", i) if what == "annotation" else i
                    raise PosecalInputError("missing field", file, rid, key) from None
        return [r.get(key, default) for r in recs]


def _ints(values: list, file, key: str, rec_ids=None) -> np.ndarray:
    try:
        arr = np.array(values)
    except (TypeError, ValueError):
        arr = np.array([], dtype=object)
    if arr.dtype.kind in "iu" and arr.ndim == 1:
        return arr.astype(np.int64, copy=False)
    for i, v in enumerate(values):
        rid = rec_ids[i] if rec_ids is not None else i
        _check_int(v, file, rid, key)
    return np.array([int(v) for v in values], dtype=np.int64)


def _floats(values: list, file, key: str, rec_ids=None) -> np.ndarray:
    arr = None
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    if arr is None or arr.ndim != 1 or any(isinstance(v, bool) for v in values[:1]):
        for i, v in enumerate(values):
            if not _num(v):
                rid = rec_ids[i] if rec_ids is not None else i
                raise PosecalInputError(f"expected a number, got {v!r:.40}", file, rid, key)
        arr = np.array(values, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        rid = rec_ids[i] if rec_ids is not None else i
        raise PosecalInputError("NaN or infinite value", file, rid, key)
    return arr


def _first_dup(ids: np.ndarray) -> int | None:
    if ids.size < 2:
        return None
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    d = np.flatnonzero(s[1:] == s[:-1])
    return None if d.size == 0 else int(s[d[0]])


# ----------------------------------------------------------------------------------------------
def load_gt(src: str | os.PathLike | dict | bytes, *, file: str | None = None) -> CocoGroundTruth:
    """Load and validate COCO keypoint ground truth.

    Args:
        src: a path, raw JSON bytes, or an already-parsed dict (not modified).
        file: name used in error messages (defaults to the path).

    Returns:
        :class:`CocoGroundTruth` with arrays in annotation file order; keypoints (G, K, 3) in image pixels.

    Raises:
        PosecalInputError: bad JSON, missing/ill-typed field, wrong keypoint count, NaN/inf, unknown
            image_id or category_id, negative area or box size, duplicate image/category/annotation ids.
    """
    with no_gc():
        return _load_gt(src, file=file)


def _load_gt(src: str | os.PathLike | dict | bytes, *, file: str | None = None) -> CocoGroundTruth:
    # body of load_gt (run with the garbage collector paused)
    d, file, fast_kp = _read_json(src, file, _gt_annotations)
    if not isinstance(d, dict):
        raise PosecalInputError("ground truth must be a JSON object with images/annotations/categories", file)
    for key in ("images", "annotations", "categories"):
        if key not in d:
            raise PosecalInputError("missing top-level field", file, None, key)
        if not isinstance(d[key], list):
            raise PosecalInputError("must be a list", file, None, key)
    images_l, anns, cats = d["images"], d["annotations"], d["categories"]
    if not cats:
        raise PosecalInputError("no categories", file, None, "categories")

    img_ids = _ints(_column(images_l, "id", file, "image"), file, "id")
    dup = _first_dup(img_ids)
    if dup is not None:
        raise PosecalInputError(f"duplicate image id {dup}", file, "images", "id")
    cat_ids = _ints(_column(cats, "id", file, "category"), file, "id")
    dup = _first_dup(cat_ids)
    if dup is not None:
        raise PosecalInputError(f"duplicate category id {dup}", file, "categories", "id")

    names = cats[0].get("keypoints") if isinstance(cats[0], dict) else None
    names = names if isinstance(names, list) and all(isinstance(n, str) for n in names) and names else None

    G = len(anns)
    ann_id = _ints(_column(anns, "id", file, "annotation"), file, "id")
    rec_ids = ann_id.tolist()
    dup = _first_dup(ann_id)
    if dup is not None:
        raise PosecalInputError("duplicate annotation id", file, dup, "id")
    image_id = _ints(_column(anns, "image_id", file, "annotation"), file, "image_id", rec_ids)
    category_id = _ints(_column(anns, "category_id", file, "annotation"), file, "category_id", rec_ids)
    known = np.isin(image_id, img_ids)
    if not known.all():
        i = int(np.argmin(known))
        raise PosecalInputError(f"unknown image_id {int(image_id[i])} (not in images)", file, rec_ids[i],
                                "image_id")
    known = np.isin(category_id, cat_ids)
    if not known.all():
        i = int(np.argmin(known))
        raise PosecalInputError(f"unknown category_id {int(category_id[i])}", file, rec_ids[i], "category_id")

    kp_rows = fast_kp if fast_kp is not None else _column(anns, "keypoints", file, "annotation")
    if names is not None:
        K = len(names)
    elif fast_kp is not None:
        K = fast_kp.shape[1] // 3
    elif G:
        K = len(kp_rows[0]) // 3 if isinstance(kp_rows[0], list) else 0
        if K == 0:
            raise PosecalInputError("empty keypoints", file, rec_ids[0], "keypoints")
    else:
        K = 17
    if fast_kp is not None:
        kps = _checked_rows(fast_kp, 3 * K, file, "keypoints", rec_ids).reshape(G, K, 3)
    else:
        kps = _flat_array(kp_rows, 3 * K, file, "keypoints", rec_ids).reshape(G, K, 3)

    wholebody = G > 0 and isinstance(anns[0], dict) and all(f in anns[0] for _, f, _ in WHOLEBODY_FIELDS)
    kset: KeypointSet | None = None
    if wholebody and K == 17:
        parts = [kps]
        for _, fld, k in WHOLEBODY_FIELDS:
            parts.append(_flat_array(_column(anns, fld, file, "annotation"), 3 * k, file, fld,
                                     rec_ids, key=fld).reshape(G, k, 3))
        kps = np.concatenate(parts, axis=1)
        kset = COCO_WHOLEBODY133
    elif names is not None:
        kset = find_keypoint_set(names)
    else:
        kset = find_keypoint_set(None, K)

    has_area = all("area" in a for a in anns)
    if has_area:
        area = _floats(_column(anns, "area", file, "annotation"), file, "area", rec_ids)
    else:
        area = np.array([a.get("area", math.nan) for a in anns], dtype=np.float64)
        present = np.array(["area" in a for a in anns], dtype=bool)
        if present.any():
            ids_present = [r for r, p in zip(rec_ids, present, strict=True) if p]
            _floats(area[present].tolist(), file, "area", ids_present)
    neg = area < 0
    if neg.any():
        i = int(np.argmax(neg))
        raise PosecalInputError(f"negative area {area[i]}", file, rec_ids[i], "area")
    bbox = _flat_array(_column(anns, "bbox", file, "annotation"), 4, file, "bbox", rec_ids, key="bbox")
    neg = (bbox[:, 2] < 0) | (bbox[:, 3] < 0)
    if neg.any():
        i = int(np.argmax(neg))
        raise PosecalInputError("negative box width or height", file, rec_ids[i], "bbox")
    iscrowd = _ints(_column(anns, "iscrowd", file, "annotation"), file, "iscrowd", rec_ids) != 0
    nk_vals = [a.get("num_keypoints") if isinstance(a, dict) else None for a in anns]
    if G and all(v is not None for v in nk_vals):
        num_kp = _ints(nk_vals, file, "num_keypoints", rec_ids)
    else:
        count = np.count_nonzero(kps[:, :17 if kset is COCO_WHOLEBODY133 else K, 2] > 0, axis=1)
        num_kp = np.array([count[i] if v is None else _check_int(v, file, rec_ids[i], "num_keypoints")
                           for i, v in enumerate(nk_vals)], dtype=np.int64)

    images = {int(i): im for i, im in zip(img_ids.tolist(), images_l, strict=True)}
    out = CocoGroundTruth(
        ann_id=ann_id, image_id=image_id, category_id=category_id, keypoints=kps, area=area, bbox=bbox,
        iscrowd=iscrowd, num_keypoints=num_kp, image_ids=np.sort(img_ids), images=images,
        categories=list(cats), keypoint_set=kset, has_area=has_area, path=file,
    )
    out._fast = fast_kp is not None
    return out


def load_results(src: str | os.PathLike | list | bytes, gt: CocoGroundTruth | None = None, *,
                 file: str | None = None) -> CocoResults:
    """Load and validate COCO keypoint results (a JSON list of detection records).

    Args:
        src: a path, raw JSON bytes, or an already-parsed list of dicts (not modified).
        gt: when given, K is taken from it and ``image_id``/``category_id`` are checked against it.
        file: name used in error messages (defaults to the path).

    Returns:
        :class:`CocoResults`; keypoints (D, K, 3) in image pixels with the raw keypoint scores.

    Raises:
        PosecalInputError: bad JSON, not a list, missing field, wrong keypoint count, NaN/inf, unknown
            image_id or category_id, negative box size, duplicate ``id`` (when records carry ids).

    Warns:
        PosecalWarning: instance or keypoint scores above 1 or below 0 (kept as they are).
    """
    with no_gc():
        return _load_results(src, gt, file=file)


def _load_results(src: str | os.PathLike | list | bytes, gt: CocoGroundTruth | None = None, *,
                 file: str | None = None) -> CocoResults:
    # body of load_results (run with the garbage collector paused)
    recs, file, fast_kp = _read_json(src, file, _result_records)
    if isinstance(recs, dict) and isinstance(recs.get("annotations"), list):
        recs = recs["annotations"]
    if not isinstance(recs, list):
        raise PosecalInputError("results must be a JSON list of detection records", file)
    D = len(recs)
    image_id = _ints(_column(recs, "image_id", file, "result"), file, "image_id")
    single_cat = gt is not None and len(gt.categories) == 1
    if D and isinstance(recs[0], dict) and "category_id" not in recs[0] and single_cat:
        category_id = np.full(D, int(gt.categories[0]["id"]), dtype=np.int64)
    else:
        category_id = _ints(_column(recs, "category_id", file, "result"), file, "category_id")
    score = _floats(_column(recs, "score", file, "result"), file, "score")

    kp_rows = fast_kp if fast_kp is not None else _column(recs, "keypoints", file, "result")
    wholebody = D > 0 and all(f in recs[0] for _, f, _ in WHOLEBODY_FIELDS)
    if gt is not None:
        K_total = gt.num_joints
    elif fast_kp is not None:
        K_total = fast_kp.shape[1] // 3 + (sum(k for *_, k in WHOLEBODY_FIELDS) if wholebody else 0)
    elif D:
        K_total = (len(kp_rows[0]) // 3 if isinstance(kp_rows[0], list) else 0) + (
            sum(k for *_, k in WHOLEBODY_FIELDS) if wholebody else 0)
    else:
        K_total = 17
    if wholebody and K_total == 133:
        body = (_checked_rows(kp_rows, 51, file, "keypoints") if fast_kp is not None
                else _flat_array(kp_rows, 51, file, "keypoints")).reshape(D, 17, 3)
        parts = [body]
        for _, fld, k in WHOLEBODY_FIELDS:
            rows = _column(recs, fld, file, "result")
            parts.append(_flat_array(rows, 3 * k, file, fld, key=fld).reshape(D, k, 3))
        kps = np.concatenate(parts, axis=1)
        own = body
    else:
        if K_total <= 0:
            raise PosecalInputError("empty keypoints", file, 0, "keypoints")
        kps = (_checked_rows(kp_rows, 3 * K_total, file, "keypoints") if fast_kp is not None
               else _flat_array(kp_rows, 3 * K_total, file, "keypoints")).reshape(D, K_total, 3)
        own = kps

    # detection area as pycocotools' loadRes assigns it
    bbox = None
    has_box = D > 0 and isinstance(recs[0].get("bbox"), list) and len(recs[0]["bbox"]) > 0
    if has_box:
        bbox = _flat_array(_column(recs, "bbox", file, "result"), 4, file, "bbox", key="bbox")
        det_area = bbox[:, 2] * bbox[:, 3]
    else:
        if D:
            # (K, D) contiguous copies: reducing over the first axis is vectorised, and exact in any order
            x, y = np.ascontiguousarray(own[:, :, 0].T), np.ascontiguousarray(own[:, :, 1].T)
            det_area = (x.max(0) - x.min(0)) * (y.max(0) - y.min(0))
        else:
            det_area = np.zeros(0)
        if D and any("bbox" in r for r in recs):
            box_rows = [r.get("bbox") for r in recs]
            if all(isinstance(b, list) and len(b) == 4 for b in box_rows):
                bbox = _flat_array(box_rows, 4, file, "bbox", key="bbox")
    if bbox is not None:
        neg = (bbox[:, 2] < 0) | (bbox[:, 3] < 0)
        if neg.any():
            raise PosecalInputError("negative box width or height", file, int(np.argmax(neg)), "bbox")

    visibility = None
    if D and "visibility" in recs[0]:
        visibility = _flat_array(_column(recs, "visibility", file, "result"), K_total, file, "visibility",
                                 key="visibility")

    part_scores: dict[str, np.ndarray] = {}
    for part in _PART_SCORE_KEYS:
        key = f"{part}_score"
        if D and key in recs[0] and all(key in r for r in recs):
            part_scores[part] = _floats([r[key] for r in recs], file, key)

    if gt is not None and D:
        known = np.isin(image_id, gt.image_ids)
        if not known.all():
            i = int(np.argmin(known))
            raise PosecalInputError(f"unknown image_id {int(image_id[i])} (not in the ground truth images)",
                                    file, i, "image_id")
        known = np.isin(category_id, gt.category_ids)
        if not known.all():
            i = int(np.argmin(known))
            raise PosecalInputError(f"unknown category_id {int(category_id[i])}", file, i, "category_id")
    if D and "id" in recs[0]:
        ids = [r.get("id") for r in recs]
        if all(isinstance(v, int) for v in ids):
            dup = _first_dup(np.array(ids, dtype=np.int64))
            if dup is not None:
                second = [i for i, v in enumerate(ids) if v == dup][1]
                raise PosecalInputError(f"duplicate id {dup}", file, second, "id")

    if D:
        out = (score > 1) | (score < 0)
        if out.any():
            warnings.warn(f"{file or 'results'}: {int(out.sum())} instance scores outside [0, 1] "
                          f"(range {score.min():.4g}..{score.max():.4g}); kept as they are",
                          PosecalWarning, stacklevel=3)
        ks = kps[:, :, 2]
        if ks.max() > 1 or ks.min() < 0:
            out = (ks > 1) | (ks < 0)
            warnings.warn(f"{file or 'results'}: {int(out.sum())} keypoint scores outside [0, 1]; "
                          "kept as they are",
                          PosecalWarning, stacklevel=3)
    out = CocoResults(image_id=image_id, category_id=category_id, keypoints=kps, score=score, bbox=bbox,
                      visibility=visibility, det_area=det_area, part_scores=part_scores, records=recs,
                      path=file)
    if fast_kp is not None:  # the record dicts get their keypoints lists back on first access
        out.__dict__["_restore_kp"] = fast_kp
    out._fast = fast_kp is not None
    return out


def _gt_annotations(d: Any) -> Any:
    return d.get("annotations") if isinstance(d, dict) else None


def _result_records(d: Any) -> Any:
    return d


def results_to_records(res: CocoResults) -> list[dict]:
    """COCO result records from arrays (image_id, category_id, flat keypoints, score, bbox when present)."""
    out = []
    kp = res.keypoints.reshape(len(res), res.keypoints.shape[1] * 3).tolist()
    cols = zip(res.image_id.tolist(), res.category_id.tolist(), res.score.tolist(), strict=True)
    for i, (im, c, s) in enumerate(cols):
        r = {"image_id": im, "category_id": c, "keypoints": kp[i], "score": s}
        if res.bbox is not None:
            r["bbox"] = res.bbox[i].tolist()
        out.append(r)
    return out


def save_results(path: str | os.PathLike, results_or_records: CocoResults | list[dict]) -> None:
    """Write COCO results JSON atomically (nothing half-written on failure).

    ``results_or_records`` is a :class:`CocoResults` (its ``records`` are written when present, so
    extra fields round-trip) or a list of record dicts (numpy values allowed).
    """
    from posecal._util import write_json_atomic

    if isinstance(results_or_records, CocoResults):
        recs = results_or_records.records or results_to_records(results_or_records)
    else:
        recs = list(results_or_records)
    write_json_atomic(path, recs, indent=False)
