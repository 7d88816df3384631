"""COCO keypoint ground truth and results: JSON -> arrays, with validation.

Ground truth is the COCO keypoints format (``images``, ``annotations``, ``categories``); results are the
list of records MMPose, Detectron2 and Ultralytics write (``image_id``, ``category_id``, ``keypoints``
as a flat ``[x, y, s] * K`` list in image pixels, ``score``, optional ``bbox``). COCO-WholeBody files
(``foot_kpts``, ``face_kpts``, ``lefthand_kpts``, ``righthand_kpts`` beside the 17 body ``keypoints``)
are concatenated to K = 133 in the order of :data:`posecal.keypoints.COCO_WHOLEBODY133`; part scores
(``foot_score``, ``face_score``, ...) are kept in :attr:`CocoResults.part_scores`.

JSON is read strictly (:mod:`posecal.io.fastjson`): numbers must be JSON numbers — a string, a boolean,
``NaN`` or ``+1`` where a number belongs is refused. Every validation failure raises
:class:`~posecal.errors.PosecalInputError` naming file, record and
field. Scores above 1 or below 0 are legal (heatmap maxima exceed 1): a :class:`PosecalWarning` is
issued, values are never clipped.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError, PosecalWarning
from posecal.io.fastjson import read_json
from posecal.keypoints import COCO17, COCO_WHOLEBODY133, KeypointSet, find_keypoint_set

__all__ = ["CocoGroundTruth", "CocoResults", "load_gt", "load_results", "save_results", "WHOLEBODY_FIELDS",
           "keypoint_set_for_count", "keypoint_extent"]

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
            ignoring); when any annotation lacks it, the count of v > 0 of the body ``keypoints`` of every
            annotation (as xtcocotools counts).
        image_ids: (I,) int64 sorted ids of all listed images.
        images: image id -> image record.
        image_id_strings, category_id_strings: None for integer ids; for a file whose image (category) ids
            are strings, the sorted distinct strings, and the int64 ids above are their positions in this
            list (pycocotools sorts the ids, strings as text, so the order is the same).
        categories: the category records.
        keypoint_set: the matched keypoint set (by ``categories[0].keypoints`` names, or WholeBody
            when the part fields are present, or by the annotations' keypoint count when the names do
            not fit it), else None.
        has_area: whether every annotation had an ``area`` field.
        wholebody: whether the annotations carry COCO-WholeBody's part fields (``foot_kpts``...).
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
    wholebody: bool = False
    path: str | None = None
    image_id_strings: list[str] | None = None
    category_id_strings: list[str] | None = None

    def __len__(self) -> int:
        return int(self.ann_id.shape[0])

    @property
    def num_joints(self) -> int:
        """K, the number of keypoints per instance."""
        return int(self.keypoints.shape[1])

    @property
    def category_ids(self) -> np.ndarray:
        """(C,) int64 sorted category ids (pycocotools' default ``catIds``)."""
        if self.category_id_strings is not None:
            return np.arange(len(self.category_id_strings), dtype=np.int64)
        return _unique(np.array([c["id"] for c in self.categories], dtype=np.int64))

    @property
    def crowd_index(self) -> np.ndarray | None:
        """(I,) float64 CrowdPose ``crowdIndex`` of each image (in :attr:`image_ids` order), or None when
        any image lacks a numeric one."""
        vals = [self.images[i].get("crowdIndex") for i in self.image_ids.tolist()]
        if not vals or not all(_num(v) for v in vals):
            return None
        out = np.array(vals, dtype=np.float64)
        return out if np.isfinite(out).all() else None


class _LazyRecords:
    """The ``records`` field of :class:`CocoResults`: the parsed dicts, whose ``"keypoints"`` lists (cut out
    by the fast JSON path, which leaves ``[]``) are put back from the array on first access."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = "_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return None  # the dataclass default: no records
        recs = obj.__dict__.get(self._slot, [])
        pending = obj.__dict__.pop("_pending_keypoints", None)
        if pending is not None:
            for r, row in zip(recs, pending.tolist(), strict=True):
                r["keypoints"] = row
        return recs

    def __set__(self, obj: Any, value: list[dict] | None) -> None:
        obj.__dict__.pop("_pending_keypoints", None)
        obj.__dict__[self._slot] = [] if value is None else value


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
        records: the parsed dicts (file order), for round-tripping extra fields.
        path: source file (None for a list).
        body_only: the records carry only the 17 body ``keypoints`` while the ground truth is COCO-WholeBody
            (K = 133): keypoints 17.. are (0, 0, 0) padding, and only the body can be evaluated.
        image_id_strings: None, except for results loaded WITHOUT ground truth whose image ids are all
            strings: then ``image_id`` holds their positions in this sorted distinct list (the coding
            :func:`load_gt` uses), and ``records`` keep the strings. With ground truth the codes are the gt's.
    """

    image_id: np.ndarray
    category_id: np.ndarray
    keypoints: np.ndarray
    score: np.ndarray
    bbox: np.ndarray | None
    visibility: np.ndarray | None
    det_area: np.ndarray
    part_scores: dict[str, np.ndarray] = field(default_factory=dict)
    records: list[dict] = _LazyRecords()  # type: ignore[assignment]
    path: str | None = None
    body_only: bool = False
    image_id_strings: list[str] | None = None

    def __len__(self) -> int:
        return int(self.image_id.shape[0])

    def _defer_keypoints(self, rows: np.ndarray) -> None:
        """The records' ``"keypoints"`` lists are ``[]``: fill them from ``rows`` (D, 3K) when first read."""
        self.__dict__["_pending_keypoints"] = rows


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (restored afterwards).

    Parsing creates hundreds of thousands of dicts and lists; with them alive every automatic collection
    rescans them all, which can double the time of loading and evaluating a large file. Nothing here
    creates reference cycles, so pausing is safe. Measured with and without in docs/benchmarks.md
    (``POSECAL_PROCESS_TWEAKS=-gc`` turns it off).
    """
    was = gc.isenabled()
    if "-gc" not in os.environ.get("POSECAL_PROCESS_TWEAKS", "").split(","):  # (off for benchmarks)
        gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def keypoint_extent(kps: np.ndarray, labelled: np.ndarray | None = None, block: int = 4096) -> np.ndarray:
    """The box of each instance's keypoints: (4, N) float64 rows x0, x1, y0, y1 (min / max over the K
    keypoints of ``kps`` (N, K, >=2), image px; with ``labelled`` (N, K) bool over those only, +inf / -inf
    where there is none).

    Rows are taken ``block`` at a time and transposed to (K, block) there: reducing over the first axis is
    vectorised, and the block stays in the CPU cache (a transposed copy of the whole array reads it once
    per keypoint; reducing each short strided row is slow). min / max are exact in any order."""
    n = kps.shape[0]
    out = np.empty((4, n))
    for s in range(0, n, block):
        e = min(n, s + block)
        lab = None if labelled is None else np.ascontiguousarray(labelled[s:e].T)
        for c in (0, 1):  # x: rows 0, 1 of out; y: rows 2, 3
            v = np.ascontiguousarray(kps[s:e, :, c].T)
            np.min(v if lab is None else np.where(lab, v, np.inf), axis=0, out=out[2 * c, s:e])
            np.max(v if lab is None else np.where(lab, v, -np.inf), axis=0, out=out[2 * c + 1, s:e])
    return out


def _unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` of a 1-D array, without the ``numpy.ma`` import (~5 ms) that a plain
    ``np.unique`` triggers on first use."""
    s = np.sort(a)
    return s[np.r_[True, s[1:] != s[:-1]]] if s.size else s


# ---- field checks: every value a JSON number of the right kind, finite ----------------------------------
def _num(v: Any) -> bool:
    return type(v) is float or type(v) is int


def _numbers_only(values: Any) -> bool:
    """Whether every item is a JSON number (int or float; not bool, not str, not a list)."""
    return set(map(type, values)) <= _NUMBER_TYPES


_NUMBER_TYPES = frozenset((int, float))


def _rid(rec_ids: Sequence | None, i: int) -> Any:
    return rec_ids[i] if rec_ids is not None else i


def _require_finite(arr: np.ndarray, file, fld: str, rec_ids=None) -> np.ndarray:
    """``arr`` (N, k3) unchanged, or a PosecalInputError naming the first record with NaN / inf."""
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.argmin(finite.all(axis=1)))
        raise PosecalInputError("NaN or infinite value", file, _rid(rec_ids, i), fld)
    return arr


def _checked_rows(arr: np.ndarray, k3: int, file, fld: str, rec_ids=None) -> np.ndarray:
    """Validate an (N, k3') array from the fast path as :func:`_flat_array` validates lists."""
    if arr.shape[1] != k3:
        raise PosecalInputError(f"expected {k3} numbers ({k3 // 3} x 3), got a list of {arr.shape[1]} "
                                "numbers", file, _rid(rec_ids, 0), fld)
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(arr, axis=None)
    if np.isfinite(total):  # a finite sum: no NaN / inf anywhere (fast check; an overflow checks fully)
        return arr
    return _require_finite(arr, file, fld, rec_ids)


def _check_int(value: Any, file, record, fld) -> int:
    if not _num(value) or (type(value) is float and (not math.isfinite(value) or not value.is_integer())):
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
    bad = next((i for i, r in enumerate(rows) if type(r) is not list or len(r) != k3), None)
    if bad is not None:
        r = rows[bad]
        got = f"a list of {len(r)} values" if isinstance(r, list) else f"{type(r).__name__}"
        shape = f" ({k3 // 3} x 3)" if key.endswith("kpts") or key == "keypoints" else ""
        raise PosecalInputError(f"expected {k3} numbers{shape}, got {got}", file, _rid(rec_ids, bad), fld)
    if not _numbers_only(itertools.chain.from_iterable(rows)):
        i = next(i for i, r in enumerate(rows) if not _numbers_only(r))
        v = next(v for v in rows[i] if not _num(v))
        raise PosecalInputError(f"expected a number, got {v!r:.40}", file, _rid(rec_ids, i), fld)
    try:
        arr = np.array(rows, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        raise PosecalInputError("number out of range", file, None, fld) from None
    return _require_finite(arr, file, fld, rec_ids)


def _box_rows(rows: list) -> list:
    """``bbox`` lists as pycocotools reads them: only ``bb[0:4]`` are used, so a longer list (a detector's
    ``[x, y, w, h, score]``) is its first four values; shorter ones and non-lists are left for
    :func:`_flat_array` to refuse."""
    if not any(type(b) is list and len(b) > 4 for b in rows):
        return rows
    return [b[:4] if type(b) is list and len(b) > 4 else b for b in rows]


def _column(recs: list[dict], key: str, file, what: str, default: Any = KeyError) -> list:
    try:
        return list(map(itemgetter(key), recs))
    except (KeyError, TypeError):
        for i, r in enumerate(recs):
            if type(r) is not dict:
                raise PosecalInputError(f"{what} must be a JSON object", file, i, None) from None
            if key not in r and default is KeyError:
                # "record 0" alone could be an annotation: name the list of an image or category record
                lists = {"image": "images", "category": "categories"}
                rid = r.get("id", i) if what == "annotation" else f"{lists[what]}[{i}]" if what in lists else i
                raise PosecalInputError("missing field", file, rid, key) from None
        return [r.get(key, default) for r in recs]


def _ints(values: list, file, key: str, rec_ids=None) -> np.ndarray:
    """(N,) int64 of JSON integers (an integral float such as 3.0 is accepted, as pycocotools does)."""
    types = set(map(type, values))
    if types <= {int}:
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:
            pass
    for i, v in enumerate(values):
        _check_int(v, file, _rid(rec_ids, i), key)
    return np.array([int(v) for v in values], dtype=np.int64)


def _floats(values: list, file, key: str, rec_ids=None) -> np.ndarray:
    """(N,) float64 of JSON numbers, finite."""
    if not _numbers_only(values):
        i = next(i for i, v in enumerate(values) if not _num(v))
        raise PosecalInputError(f"expected a number, got {values[i]!r:.40}", file, _rid(rec_ids, i), key)
    try:
        arr = np.array(values, dtype=np.float64)
    except OverflowError:
        raise PosecalInputError("number out of range", file, None, key) from None
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise PosecalInputError("NaN or infinite value", file, _rid(rec_ids, i), key)
    return arr


def _first_dup(ids: np.ndarray) -> int | None:
    if ids.size < 2:
        return None
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    d = np.flatnonzero(s[1:] == s[:-1])
    return None if d.size == 0 else int(s[d[0]])


def _first_unknown(values: np.ndarray, known: np.ndarray) -> int | None:
    ok = np.isin(values, known)
    return None if ok.all() else int(np.argmin(ok))


def _id_codes(values: list, file, key: str, what: str) -> tuple[np.ndarray, list[str] | None]:
    """The ids of the images (categories): int64 ids, or — when every id is a string, which pycocotools
    accepts — the positions of the ids in their sorted distinct list, and that list."""
    strs = [type(v) is str for v in values]
    if not any(strs):
        return _ints(values, file, key), None
    if not all(strs):
        i, j = strs.index(False), strs.index(True)
        raise PosecalInputError(f"{what} ids mix strings ({values[j]!r:.40}) and numbers ({values[i]!r:.40}); "
                                "pycocotools cannot sort them", file, i, key)
    names = sorted(set(values))
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[v] for v in values], dtype=np.int64), names


def _ann_ids(values: list, file) -> np.ndarray:
    """Annotation ids: JSON integers, or strings holding one (pycocotools stores ids as floats, so ``"12"``
    evaluates as 12; a string that is no number makes it fail)."""
    if str in set(map(type, values)):
        values = [_numeric_string(v, file, i) if type(v) is str else v for i, v in enumerate(values)]
    return _ints(values, file, "id")


def _numeric_string(v: str, file, i: int) -> Any:
    try:
        return float(v) if v.strip().lower().lstrip("+-") not in ("nan", "inf", "infinity") else v
    except ValueError:
        raise PosecalInputError(f"expected an integer, got {v!r:.40} (a string id must hold a number: "
                                "pycocotools fails on it)", file, i, "id") from None


def _id_refs(values: list, names: list[str] | None, file, key: str, rec_ids=None, *, listed_in: str
             ) -> np.ndarray:
    """References to image (category) ids: int64 ids, or the codes of :func:`_id_codes` when the ids are
    strings (``names``); a reference to an id not ``listed_in`` is an error."""
    if names is None:
        return _ints(values, file, key, rec_ids)
    index = {n: i for i, n in enumerate(names)}
    codes = [index.get(v, -1) if type(v) is str else -1 for v in values]
    if -1 in codes:
        i = codes.index(-1)
        raise PosecalInputError(f"unknown {key} {values[i]!r:.40} (not in {listed_in})", file,
                                _rid(rec_ids, i), key)
    return np.array(codes, dtype=np.int64)


def _result_category_ids(values: list, gt: CocoGroundTruth | None, file) -> np.ndarray:
    """Results' ``category_id``: int64 ids, or, where the gt's category ids are strings, their codes. A
    string that names no category of the gt (or, against string ids, a number) is not an error: pycocotools
    leaves such results out, and so do the evaluators here (it gets an id below every known one; the
    warning of :func:`_check_against_gt`)."""
    names = None if gt is None else gt.category_id_strings
    if names is None:
        if gt is None or str not in set(map(type, values)):
            return _ints(values, file, "category_id")
        # integer categories, a string id among the results: it names no category (pycocotools compares ids
        # by equality, "1" is not 1) and is left out like any unknown id, with the warning of
        # _check_against_gt; its code lies below every gt id
        low = min(int(gt.category_ids.min()) if gt.category_ids.size else 0, 0) - 1
        if low - len(values) < -(2**63):
            return _ints(values, file, "category_id")
        return _ints([low - i if type(v) is str else v for i, v in enumerate(values)], file, "category_id")
    index = {n: i for i, n in enumerate(names)}
    codes = []
    for i, v in enumerate(values):
        if type(v) is not str:
            if not _num(v):
                raise PosecalInputError(f"expected a string id (the ground truth's category ids are strings), "
                                        f"got {v!r:.40}", file, i, "category_id")
            _check_int(v, file, i, "category_id")  # a number names no string category: left out (warned)
        codes.append(index.get(v, -1 - i) if type(v) is str else -1 - i)
    return np.array(codes, dtype=np.int64)


def _id_label(code: int, names: list[str] | None) -> Any:
    return code if names is None or not 0 <= code < len(names) else names[code]


def _plain_python(obj: Any) -> Any:
    """A copy of an already-parsed document with numpy scalars (``np.float32(0.9)``, ``np.int64(3)``) as
    Python numbers and numpy arrays and tuples as lists; None when ``obj`` is not a parsed list / dict or
    holds none of them (nothing to retry). The input is not modified.

    Tried only after the strict checks refused the document (no cost on the usual path); values the checks
    refuse anyway (a numpy bool, NaN) are refused again, as in a file."""
    if not isinstance(obj, (list, dict)):
        return None
    changed = False

    def conv(v: Any) -> Any:
        nonlocal changed
        t = type(v)
        if t is list:
            return [conv(x) for x in v]
        if t is dict:
            return {k: conv(x) for k, x in v.items()}
        if t is tuple or isinstance(v, np.ndarray):
            changed = True
            return [conv(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
        if isinstance(v, np.generic):
            changed = True
            return v.item()
        return v

    try:
        out = conv(obj)
    except RecursionError:  # absurdly nested: keep the first error
        return None
    return out if changed else None


# ---- ground truth --------------------------------------------------------------------------------------
def load_gt(src: str | os.PathLike | dict | bytes, *, file: str | None = None) -> CocoGroundTruth:
    """Load and validate COCO keypoint ground truth.

    Stages: read (strict JSON) → document shape → ids → keypoints (and the keypoint set) → boxes/areas →
    ``num_keypoints``.

    Args:
        src: a path, raw JSON bytes, or an already-parsed dict (not modified).
        file: name used in error messages (defaults to the path).

    Returns:
        :class:`CocoGroundTruth` with arrays in annotation file order; keypoints (G, K, 3) in image pixels.

    Third-party conventions, as the reference evaluators read such files: a missing ``iscrowd`` is 0
    (xtcocotools), image / category ids may all be strings (coded by their sorted order, as pycocotools
    sorts them), a string annotation id holding an integer is that integer, ``"keypoints": []`` is K
    unlabelled keypoints, and without ``num_keypoints`` on every annotation the labelled keypoints are
    counted for all (xtcocotools), and a ``bbox`` of more than four numbers is its first four (pycocotools
    reads ``bb[0:4]`` only).

    Raises:
        PosecalInputError: bad JSON, missing/ill-typed field, annotations whose keypoint counts disagree,
            NaN/inf, unknown image_id or category_id, negative area or box size, duplicate
            image/category/annotation ids, string and number ids mixed.

    An already-parsed ``src`` may hold numpy scalars / arrays and tuples where JSON has numbers and lists
    (pycocotools takes them): they are read as the equal Python values (:func:`_plain_python`).

    Warns:
        PosecalWarning: ``categories[0].keypoints`` names a different number of keypoints than the
            annotations carry (MMPose's KeypointPartitionMetric writes such files): K is taken from the
            annotations and the keypoint set (sigmas) matched by that count.
    """
    try:
        return _load_gt(src, file)
    except PosecalInputError:
        plain = _plain_python(src)
        if plain is None:
            raise
        return _load_gt(plain, file)


def _load_gt(src: Any, file: str | None) -> CocoGroundTruth:
    with no_gc():
        d, file, fast_kp, non_json = read_json(src, file, _gt_annotations)
        images_l, anns, cats = _gt_document(d, file)
        ids = _gt_ids(images_l, anns, cats, file)
        kps, kset, wholebody = _gt_keypoints(anns, cats, fast_kp, file, ids.rec_ids)
        area, has_area, bbox, iscrowd = _gt_geometry(anns, file, ids.rec_ids)
        num_kp = _gt_num_keypoints(anns, kps, kset, file, ids.rec_ids)
        if non_json:
            _refuse_non_json(file)
        _warn_zero_area(area, iscrowd, num_kp, file, ids.rec_ids)
    return CocoGroundTruth(
        ann_id=ids.ann_id, image_id=ids.image_id, category_id=ids.category_id, keypoints=kps, area=area,
        bbox=bbox, iscrowd=iscrowd, num_keypoints=num_kp, image_ids=np.sort(ids.img_ids),
        images={int(i): im for i, im in zip(ids.img_ids.tolist(), images_l, strict=True)},
        categories=list(cats), keypoint_set=kset, has_area=has_area, wholebody=wholebody, path=file,
        image_id_strings=ids.img_names, category_id_strings=ids.cat_names,
    )


def _refuse_non_json(file: str | None) -> None:
    raise PosecalInputError("invalid JSON: NaN / Infinity are not JSON numbers", file)


def _gt_annotations(d: Any) -> Any:
    return d.get("annotations") if type(d) is dict else None


def _gt_document(d: Any, file: str | None) -> tuple[list, list, list]:
    if type(d) is not dict:
        raise PosecalInputError("ground truth must be a JSON object with images/annotations/categories", file)
    for key in ("images", "annotations", "categories"):
        if key not in d:
            raise PosecalInputError("missing top-level field", file, None, key)
        if type(d[key]) is not list:
            raise PosecalInputError("must be a list", file, None, key)
    if not d["categories"]:
        raise PosecalInputError("no categories", file, None, "categories")
    return d["images"], d["annotations"], d["categories"]


@dataclass
class _GtIds:
    img_ids: np.ndarray
    ann_id: np.ndarray
    image_id: np.ndarray
    category_id: np.ndarray
    rec_ids: list
    img_names: list[str] | None = None
    cat_names: list[str] | None = None


def _gt_ids(images_l: list, anns: list, cats: list, file: str | None) -> _GtIds:
    img_ids, img_names = _id_codes(_column(images_l, "id", file, "image"), file, "id", "image")
    dup = _first_dup(img_ids)
    if dup is not None:
        raise PosecalInputError(f"duplicate image id {_id_label(dup, img_names)}", file, "images", "id")
    cat_ids, cat_names = _id_codes(_column(cats, "id", file, "category"), file, "id", "category")
    dup = _first_dup(cat_ids)
    if dup is not None:
        raise PosecalInputError(f"duplicate category id {_id_label(dup, cat_names)}", file, "categories", "id")
    ann_id = _ann_ids(_column(anns, "id", file, "annotation"), file)
    rec_ids = ann_id.tolist()
    dup = _first_dup(ann_id)
    if dup is not None:
        raise PosecalInputError("duplicate annotation id", file, dup, "id")
    image_id = _id_refs(_column(anns, "image_id", file, "annotation"), img_names, file, "image_id", rec_ids,
                        listed_in="images")
    category_id = _id_refs(_column(anns, "category_id", file, "annotation"), cat_names, file, "category_id",
                           rec_ids, listed_in="categories")
    i = _first_unknown(image_id, img_ids)
    if i is not None:
        raise PosecalInputError(f"unknown image_id {int(image_id[i])} (not in images)", file, rec_ids[i],
                                "image_id")
    i = _first_unknown(category_id, cat_ids)
    if i is not None:
        raise PosecalInputError(f"unknown category_id {int(category_id[i])}", file, rec_ids[i], "category_id")
    return _GtIds(img_ids, ann_id, image_id, category_id, rec_ids, img_names, cat_names)


def _category_names(cats: list) -> list[str] | None:
    """The keypoint names of the keypoint category (``categories[0]``, or the first category naming keypoints:
    :func:`posecal._util.keypoint_category_index`)."""
    from posecal._util import keypoint_category_index

    c0 = cats[keypoint_category_index(cats)]
    names = c0.get("keypoints") if type(c0) is dict else None
    ok = type(names) is list and names and all(type(n) is str for n in names)
    return names if ok else None


def _annotation_k(anns: list, kp_rows: Any, fast_kp: np.ndarray | None) -> int | None:
    """K of the annotations when they all carry the same multiple of 3 values (empty lists aside), else
    None."""
    if fast_kp is not None:
        return fast_kp.shape[1] // 3 if fast_kp.shape[1] % 3 == 0 and fast_kp.shape[1] else None
    lengths = {len(r) if type(r) is list else -1 for r in kp_rows if not _empty_list(r)}
    if len(lengths) != 1:
        return None
    n = lengths.pop()
    return n // 3 if n > 0 and n % 3 == 0 else None


def _gt_keypoints(anns: list, cats: list, fast_kp: np.ndarray | None, file: str | None, rec_ids: list
                  ) -> tuple[np.ndarray, KeypointSet | None, bool]:
    """(G, K, 3) keypoints, the keypoint set and whether the file is COCO-WholeBody."""
    G = len(anns)
    names = _category_names(cats)
    # no "keypoints" field (a category without keypoints, a crowd region): no labelled keypoint, as ``[]`` —
    # pycocotools reads the field only to compute OKS against detections, and evaluates such files
    kp_rows = fast_kp if fast_kp is not None else _column(anns, "keypoints", file, "annotation", default=[])
    k_ann = _annotation_k(anns, kp_rows, fast_kp) if G else None
    partition = names is not None and k_ann is not None and k_ann != len(names)
    if partition:
        warnings.warn(f"{file or 'ground truth'}: categories[0] names {len(names)} keypoints, the "
                      f"annotations carry {k_ann}: K = {k_ann} from the annotations, keypoint set "
                      "matched by that count",
                      PosecalWarning, stacklevel=3)
        K = k_ann
    elif names is not None:
        K = len(names)
    elif G:
        K = k_ann or _first_row_k(kp_rows, fast_kp)
        if K == 0:
            raise PosecalInputError("empty keypoints", file, rec_ids[0], "keypoints")
    else:
        K = 17
    if fast_kp is not None:
        kps = _checked_rows(fast_kp, 3 * K, file, "keypoints", rec_ids).reshape(G, K, 3)
    else:
        kps = _flat_array(_fill_empty(kp_rows, K), 3 * K, file, "keypoints", rec_ids).reshape(G, K, 3)

    wholebody = G > 0 and type(anns[0]) is dict and all(f in anns[0] for _, f, _ in WHOLEBODY_FIELDS)
    if wholebody and K == 17:
        parts = [kps]
        for _, fld, k in WHOLEBODY_FIELDS:
            parts.append(_flat_array(_column(anns, fld, file, "annotation"), 3 * k, file, fld,
                                     rec_ids, key=fld).reshape(G, k, 3))
        return np.concatenate(parts, axis=1), COCO_WHOLEBODY133, True
    if partition:
        return kps, keypoint_set_for_count(K), False
    if names is None:
        return kps, keypoint_set_for_count(K) or _unnamed_mmpose_set(K, file), False
    return kps, _named_set(names, file), False


def _unnamed_mmpose_set(K: int, file: str | None) -> KeypointSet | None:
    """No keypoint names (Halpe's ``"keypoints": []``): the MMPose dataset with that many keypoints, when only
    one has it (136: Halpe-FullBody), with a warning."""
    from posecal.keypoints import HALPE136

    if K != HALPE136.num_keypoints:
        return None
    warnings.warn(f"{file or 'ground truth'}: categories[0] names no keypoints; 136 keypoints: Halpe-FullBody, "
                  "OKS sigmas of MMPose's halpe metainfo (give --sigmas otherwise)", PosecalWarning, stacklevel=5)
    return HALPE136


def _named_set(names: list[str], file: str | None) -> KeypointSet | None:
    """The keypoint set of ``categories[0].keypoints``; 17 names of no known set: COCO-17 (pycocotools' and
    xtcocotools' default sigmas are COCO's whatever the names), with a warning."""
    kset = find_keypoint_set(names)
    if kset is None:
        from posecal.keypoints import AIC14

        if [n.strip().lower().replace(" ", "_").replace("-", "_") for n in names] == list(AIC14.names):
            warnings.warn(f"{file or 'ground truth'}: AI Challenger keypoints: OKS sigmas of MMPose's aic metainfo "
                          "(give --sigmas otherwise)", PosecalWarning, stacklevel=4)
            return AIC14
    if kset is None and len(names) == 17:
        warnings.warn(f"{file or 'ground truth'}: the keypoint names of categories[0] match no known keypoint "
                      "set; 17 keypoints: COCO-17 sigmas, as pycocotools uses (give --sigmas otherwise)",
                      PosecalWarning, stacklevel=4)
        kset = COCO17
    return kset


def _first_row_k(kp_rows: Any, fast_kp: np.ndarray | None) -> int:
    """K of the first annotation with a non-empty keypoint list (0 when none is a list)."""
    if fast_kp is not None:
        return 0
    first = next((r for r in kp_rows if not _empty_list(r)), kp_rows[0])
    return len(first) // 3 if type(first) is list else 0


def _empty_list(r: Any) -> bool:
    return type(r) is list and not r


def _fill_empty(rows: list, K: int) -> list:
    """``"keypoints": []`` (a person with no keypoint, e.g. a crowd region) as K unlabelled (0, 0, 0):
    pycocotools and xtcocotools evaluate such a gt as one without labelled keypoints (box-distance OKS,
    ignored)."""
    if not any(map(_empty_list, rows)):
        return rows
    return [[0] * (3 * K) if _empty_list(r) else r for r in rows]


_PART_SETS: dict[int, KeypointSet] = {}


def keypoint_set_for_count(k: int) -> KeypointSet | None:
    """The keypoint set with ``k`` keypoints, when the count identifies one: a named set (coco17 for 17,
    coco_wholebody133 for 133...) or a COCO-WholeBody part (6 foot, 68 face, 21 hand — both hands have the
    same sigmas), as in the files MMPose's KeypointPartitionMetric writes; None when ambiguous (14:
    lsp14 or crowdpose14) or unknown."""
    named = find_keypoint_set(None, k)
    if named is not None:
        return named
    if k in _PART_SETS:
        return _PART_SETS[k]
    wb = COCO_WHOLEBODY133
    hits = {}
    for part, idx in wb.parts.items():
        if len(idx) == k:
            hits.setdefault(tuple(wb.sigmas[list(idx)].tolist()), (part, idx))
    if len(hits) != 1:
        return None
    part, idx = next(iter(hits.values()))
    kset = KeypointSet(f"{wb.name}:{part}", tuple(wb.names[i] for i in idx), wb.sigmas[list(idx)].copy())
    _PART_SETS[k] = kset
    return kset


def _warn_zero_area(area: np.ndarray, iscrowd: np.ndarray, num_kp: np.ndarray, file: str | None,
                    rec_ids: list) -> None:
    """Warn about labelled people (``num_keypoints`` > 0, not crowd) whose ``area`` is 0: pycocotools scales
    OKS by the area, so their OKS is 0 whatever the prediction — they can never be matched (a forgotten area?)."""
    zero = (area == 0) & ~iscrowd & (num_kp > 0)
    if zero.any():
        i = int(np.argmax(zero))
        n = int(zero.sum())
        warnings.warn(f"{file or 'ground truth'}: {n} labelled {'person has' if n == 1 else 'people have'} area 0 "
                      f"(first: record "
                      f"{rec_ids[i]}, field 'area'): OKS scales by the area, so their OKS is 0 and no prediction "
                      "can match them (as pycocotools scores them); give the segment area, or 0.53·w·h of the "
                      "box, or leave 'area' out", PosecalWarning, stacklevel=4)


def _gt_geometry(anns: list, file: str | None, rec_ids: list
                 ) -> tuple[np.ndarray, bool, np.ndarray, np.ndarray]:
    """area (NaN where absent), whether every annotation has one, bbox (G, 4), iscrowd (G,) bool."""
    has_area = all("area" in a for a in anns)
    if has_area:
        area = _floats(_column(anns, "area", file, "annotation"), file, "area", rec_ids)
    else:
        present = [i for i, a in enumerate(anns) if "area" in a]
        area = np.full(len(anns), math.nan)
        if present:
            area[present] = _floats([anns[i]["area"] for i in present], file, "area",
                                    [rec_ids[i] for i in present])
    neg = area < 0
    if neg.any():
        i = int(np.argmax(neg))
        raise PosecalInputError(f"negative area {area[i]}", file, rec_ids[i], "area")
    bbox = _flat_array(_box_rows(_column(anns, "bbox", file, "annotation")), 4, file, "bbox", rec_ids,
                       key="bbox")
    neg = (bbox[:, 2] < 0) | (bbox[:, 3] < 0)
    if neg.any():
        i = int(np.argmax(neg))
        raise PosecalInputError("negative box width or height", file, rec_ids[i], "bbox")
    # absent ``iscrowd``: 0, as xtcocotools' COCO(file) sets it (pycocotools raises KeyError)
    crowd = _column(anns, "iscrowd", file, "annotation", default=0)
    if bool in set(map(type, crowd)):  # JSON true/false: pycocotools reads them as 1/0
        crowd = [int(v) if type(v) is bool else v for v in crowd]
    iscrowd = _ints(crowd, file, "iscrowd", rec_ids) != 0
    return area, has_area, bbox, iscrowd


def _gt_num_keypoints(anns: list, kps: np.ndarray, kset: KeypointSet | None, file: str | None,
                      rec_ids: list) -> np.ndarray:
    """The ``num_keypoints`` field; when any annotation lacks it, the count of labelled body keypoints of
    every annotation (pycocotools then fails with KeyError; xtcocotools, the one reference that runs,
    always counts)."""
    nk_vals = [a.get("num_keypoints") for a in anns]
    if float in set(map(type, nk_vals)):  # pycocotools only asks num_keypoints == 0: 2.5 is "some", as 3 is
        nk_vals = [(math.ceil(v) if v > 0 else math.floor(v)) if type(v) is float and math.isfinite(v) else v
                   for v in nk_vals]
    if anns and None not in nk_vals:
        return _ints(nk_vals, file, "num_keypoints", rec_ids)
    for i, v in enumerate(nk_vals):  # the fields present are still checked
        if v is not None:
            _check_int(v, file, rec_ids[i], "num_keypoints")
    return np.count_nonzero(kps[:, :17 if kset is COCO_WHOLEBODY133 else kps.shape[1], 2] > 0,
                            axis=1).astype(np.int64)


# ---- results -------------------------------------------------------------------------------------------
def load_results(src: str | os.PathLike | list | bytes, gt: CocoGroundTruth | None = None, *,
                 file: str | None = None) -> CocoResults:
    """Load and validate COCO keypoint results (a JSON list of detection records).

    Stages: read (strict JSON) → ids and scores → keypoints → boxes and detection area → optional
    fields → checks against ``gt`` → score range warnings.

    An already-parsed ``src`` may hold numpy scalars / arrays and tuples where JSON has numbers and lists,
    as results built in memory often do (pycocotools' ``loadRes`` takes them): they are read as the equal
    Python values (:func:`_plain_python`; float32 values exactly, as float64).

    Args:
        src: a path, raw JSON bytes, or an already-parsed list of dicts (not modified).
        gt: when given, K is taken from it and ``image_id``/``category_id`` are checked against it (a
            category the gt lacks is a warning: pycocotools leaves such results out of the evaluation).
        file: name used in error messages (defaults to the path).

    Returns:
        :class:`CocoResults`; keypoints (D, K, 3) in image pixels with the raw keypoint scores.

    Raises:
        PosecalInputError: bad JSON, not a list, missing field, wrong keypoint count, a value that is not a
            JSON number, NaN/inf, unknown image_id, negative box size, ``category_id`` on some records
            only. A record's ``id`` is ignored (pycocotools' ``loadRes`` renumbers them).

    Warns:
        PosecalWarning: instance or keypoint scores above 1 or below 0 (kept as they are).
    """
    try:
        return _load_results(src, gt, file)
    except PosecalInputError:
        plain = _plain_python(src)
        if plain is None:
            raise
        return _load_results(plain, gt, file)


def _load_results(src: Any, gt: CocoGroundTruth | None, file: str | None) -> CocoResults:
    with no_gc():
        recs, file, fast_kp, non_json = read_json(src, file, _result_records)
        if type(recs) is dict and type(recs.get("annotations")) is list:
            recs = recs["annotations"]
        if type(recs) is not list:
            raise PosecalInputError("results must be a JSON list of detection records", file)
        image_id, category_id, score, id_names = _result_ids(recs, gt, file)
        kps, own, body_only = _result_keypoints(recs, gt, fast_kp, file)
        bbox, det_area = _result_boxes(recs, own, file)
        visibility, part_scores = _result_extras(recs, kps.shape[1], file)
        if gt is not None:
            _check_against_gt(image_id, category_id, gt, file, recs)
        if non_json:
            _refuse_non_json(file)
        _warn_score_range(score, kps, file)
    out = CocoResults(image_id=image_id, category_id=category_id, keypoints=kps, score=score, bbox=bbox,
                      visibility=visibility, det_area=det_area, part_scores=part_scores, records=recs,
                      path=file, body_only=body_only)
    if fast_kp is not None:
        out._defer_keypoints(fast_kp)
    return out


def _result_records(d: Any) -> Any:
    return d


def _result_ids(recs: list, gt: CocoGroundTruth | None, file: str | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    """``image_id`` (D,), ``category_id`` (D,), ``score`` (D,) and, for string image ids read without ground
    truth, their sorted distinct list (``image_id`` then holds positions in it, as :func:`load_gt` codes)."""
    D = len(recs)
    id_names = None
    if gt is None:  # nothing to check the ids against: strings kept (coded locally), numbers as integers
        image_id, id_names = _id_codes(_column(recs, "image_id", file, "result"), file, "image_id", "image")
    else:
        image_id = _id_refs(_column(recs, "image_id", file, "result"), gt.image_id_strings, file, "image_id",
                            listed_in="the ground truth images")
    single_cat = gt is not None and len(gt.categories) == 1
    if D and single_cat and all(type(r) is dict and "category_id" not in r for r in recs):
        # no record names a category and the gt has one: that one (some records naming it is an error below)
        category_id = np.full(D, int(gt.category_ids[0]), dtype=np.int64)
    else:
        category_id = _result_category_ids(_column(recs, "category_id", file, "result"), gt, file)
    score = _floats(_column(recs, "score", file, "result"), file, "score")
    return image_id, category_id, score, id_names


_WB_EXTRA = sum(k for *_, k in WHOLEBODY_FIELDS)


def _result_keypoints(recs: list, gt: CocoGroundTruth | None, fast_kp: np.ndarray | None, file: str | None
                      ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(D, K, 3) keypoints (WholeBody parts concatenated), the records' own ``keypoints`` part, and whether
    the results are body-only against COCO-WholeBody ground truth.

    Body-only results (17-keypoint ``keypoints`` and no part fields, e.g. a COCO body model's file) against
    COCO-WholeBody ground truth are what pycocotools evaluates from such a file (it reads the gt's and the
    results' ``keypoints`` only): the parts are padded with unlabelled (0, 0, 0) keypoints to K = 133, and
    the evaluators refuse to score anything but the body of them (:attr:`CocoResults.body_only`)."""
    D = len(recs)
    kp_rows = fast_kp if fast_kp is not None else _column(recs, "keypoints", file, "result")
    wholebody = D > 0 and all(f in recs[0] for _, f, _ in WHOLEBODY_FIELDS)
    if gt is not None:
        K_total = gt.num_joints
    elif fast_kp is not None:
        K_total = fast_kp.shape[1] // 3 + (_WB_EXTRA if wholebody else 0)
    elif D:
        K_total = (len(kp_rows[0]) // 3 if type(kp_rows[0]) is list else 0) + (_WB_EXTRA if wholebody else 0)
    else:
        K_total = 17

    def rows(r: Any, k3: int, fld: str) -> np.ndarray:
        if fast_kp is not None and fld == "keypoints":
            return _checked_rows(r, k3, file, fld)
        return _flat_array(r, k3, file, fld, key=fld)

    if wholebody and K_total == 133:
        body = rows(kp_rows, 51, "keypoints").reshape(D, 17, 3)
        parts = [body] + [rows(_column(recs, fld, file, "result"), 3 * k, fld).reshape(D, k, 3)
                          for _, fld, k in WHOLEBODY_FIELDS]
        return np.concatenate(parts, axis=1), body, False
    if gt is not None and gt.wholebody and K_total == 133 and D and _first_row_len(kp_rows, fast_kp) == 51:
        body = rows(kp_rows, 51, "keypoints").reshape(D, 17, 3)
        return np.concatenate([body, np.zeros((D, K_total - 17, 3))], axis=1), body, True
    if K_total <= 0:
        raise PosecalInputError("empty keypoints", file, 0, "keypoints")
    kps = rows(kp_rows, 3 * K_total, "keypoints").reshape(D, K_total, 3)
    return kps, kps, False


def _first_row_len(kp_rows: Any, fast_kp: np.ndarray | None) -> int | None:
    if fast_kp is not None:
        return int(fast_kp.shape[1])
    return len(kp_rows[0]) if type(kp_rows[0]) is list else None


def _result_boxes(recs: list, own: np.ndarray, file: str | None) -> tuple[np.ndarray | None, np.ndarray]:
    """``bbox`` (D, 4) or None, and the detection area as pycocotools' ``loadRes`` assigns it. A ``bbox``
    longer than 4 (``[x, y, w, h, score]``) is read by its first four values, as ``loadRes`` reads it."""
    D = len(recs)
    bbox = None
    first = recs[0].get("bbox") if D else None
    if type(first) is list and len(first) > 0:
        bbox = _flat_array(_box_rows(_column(recs, "bbox", file, "result")), 4, file, "bbox", key="bbox")
        with np.errstate(over="ignore"):  # a box of 1e200 px: inf area, as pycocotools computes it
            det_area = bbox[:, 2] * bbox[:, 3]
    else:
        if D:
            x0, x1, y0, y1 = keypoint_extent(own)
            with np.errstate(over="ignore"):
                det_area = (x1 - x0) * (y1 - y0)
        else:
            det_area = np.zeros(0)
        if D and any("bbox" in r for r in recs):
            box_rows = [r.get("bbox") for r in recs]
            if all(type(b) is list and len(b) >= 4 for b in box_rows):
                bbox = _flat_array(_box_rows(box_rows), 4, file, "bbox", key="bbox")
    if bbox is not None:
        neg = (bbox[:, 2] < 0) | (bbox[:, 3] < 0)
        if neg.any():
            raise PosecalInputError("negative box width or height", file, int(np.argmax(neg)), "bbox")
    return bbox, det_area


def _result_extras(recs: list, K: int, file: str | None
                   ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Optional ``visibility`` (D, K) and WholeBody ``<part>_score`` columns."""
    D = len(recs)
    visibility = None
    if D and "visibility" in recs[0]:
        visibility = _flat_array(_column(recs, "visibility", file, "result"), K, file, "visibility",
                                 key="visibility")
    part_scores: dict[str, np.ndarray] = {}
    for part in _PART_SCORE_KEYS:
        key = f"{part}_score"
        if D and key in recs[0] and all(key in r for r in recs):
            part_scores[part] = _floats([r[key] for r in recs], file, key)
    return visibility, part_scores


def _check_against_gt(image_id: np.ndarray, category_id: np.ndarray, gt: CocoGroundTruth,
                      file: str | None, recs: list) -> None:
    i = _first_unknown(image_id, gt.image_ids)
    if i is not None:
        raise PosecalInputError(f"unknown image_id {int(image_id[i])} (not in the ground truth images)", file,
                                i, "image_id")
    unknown = ~np.isin(category_id, gt.category_ids)
    if unknown.any():  # pycocotools evaluates only the gt's categories (params.catIds) and drops the rest
        i = int(np.argmax(unknown))
        warnings.warn(f"{file}: {int(unknown.sum())} results have a category_id that is not in the ground "
                      f"truth (first: record {i}, category_id {recs[i]['category_id']!r:.40}); they are not "
                      "evaluated, as in pycocotools", PosecalWarning, stacklevel=3)


def _warn_score_range(score: np.ndarray, kps: np.ndarray, file: str | None) -> None:
    if not score.size:
        return
    out = (score > 1) | (score < 0)
    if out.any():
        warnings.warn(f"{file or 'results'}: {int(out.sum())} instance scores outside [0, 1] "
                      f"(range {score.min():.4g}..{score.max():.4g}); kept as they are",
                      PosecalWarning, stacklevel=4)
    ks = kps[:, :, 2]
    if ks.max() > 1 or ks.min() < 0:
        bad = (ks > 1) | (ks < 0)
        n, first = int(np.count_nonzero(bad)), int(np.argmax(bad.any(axis=1)))
        warnings.warn(f"{file or 'results'}: {n} keypoint scores outside [0, 1] (range {ks.min():.4g}.."
                      f"{ks.max():.4g}; first: record {first}); kept as they are", PosecalWarning, stacklevel=4)


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
