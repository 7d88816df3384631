"""Strict JSON reading for COCO files, with a fast path for their big numeric ``"keypoints"`` arrays.

One entry point, :func:`read_json`. Every document is parsed by orjson (strict RFC 8259: no ``NaN``,
``+1``, ``.5``, ``01``, trailing commas...). For big files the ``"keypoints": [...]`` arrays are first cut
out of the text and read all at once into one float64 array — by orjson too, a chunk of arrays per call,
the numbers packed straight into the array — and the rest of the document is parsed by orjson. So the fast
path accepts exactly what the strict parser accepts, with the same values: arrays that are not all
numbers (a category's keypoint names, strings, booleans) stay in the JSON text for orjson (and the type
checks of :mod:`posecal.io.coco`), and anything unusual sends the whole document to the strict path.
Setting ``POSECAL_NO_FAST_JSON=1`` disables the fast path (for comparisons).

Documents that orjson refuses are read again by Python's :mod:`json` only to tell a ``NaN`` / ``Infinity``
number (named later by the field checks with record and field) from any other syntax error; Python's
parser is never the one that accepts a document's numbers."""

from __future__ import annotations

import itertools
import mmap
import os
import re
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from posecal.errors import PosecalInputError

__all__ = ["read_json", "FAST_MIN_BYTES"]

FAST_MIN_BYTES = 1 << 16  # below this the plain orjson path is as fast
_FAST_MIN_RECORDS = 64
_KP_ARRAY = re.compile(rb'"keypoints"\s*:\s*\[([^\]]*)\]')
_NUMBER_TEXT = b"0123456789.-+eE, \t\n\r"  # the bytes of JSON numbers and their separators
_OTHER = 0x40  # the class (translation) of every other byte
_CLS = bytes(0 if c in _NUMBER_TEXT else _OTHER for c in range(256))
_CHUNK_ROWS = 1024  # arrays parsed per orjson call: its Python floats stay in the CPU cache


def _read_rows(nums: list[bytes]) -> np.ndarray | None:
    """The arrays ``nums`` (the text between the brackets of each) as one (N, K) float64 array, or None
    unless every array holds the same number K > 0 of JSON numbers.

    The numbers are read by orjson itself, the strict parser of the whole document (identical values,
    identical acceptance: ``NaN``, ``+1``, ``.5``, ``01``, ``1e400`` are refused), ``_CHUNK_ROWS`` arrays
    per call, and packed straight into the array (``struct``: no list of lists for numpy to walk); the
    Python floats of one chunk are freed before the next, so memory stays at the array's."""
    n_rows = len(nums)
    chain = itertools.chain.from_iterable
    k = pack = mv = out = None
    for s in range(0, n_rows, _CHUNK_ROWS):
        e = min(n_rows, s + _CHUNK_ROWS)
        text = b"],[".join(nums[s:e])
        if b"t" in text or b"f" in text:  # true / false (a bool would pack as 1.0); other values fail below
            return None
        try:
            rows = orjson.loads(b"[[" + text + b"]]")
        except orjson.JSONDecodeError:
            return None
        if len(rows) != e - s:  # (an array holding "]" or "[" cannot give back as many)
            return None
        if k is None:
            k = len(rows[0])
            if k == 0:
                return None
            out = np.empty((n_rows, k), dtype=np.float64)
            mv = memoryview(out).cast("B")
            pack = struct.Struct(f"{_CHUNK_ROWS * k}d").pack_into
        if set(map(len, rows)) != {k}:
            return None
        try:
            if e - s == _CHUNK_ROWS:
                pack(mv, 8 * s * k, *chain(rows))
            else:
                struct.pack_into(f"{(e - s) * k}d", mv, 8 * s * k, *chain(rows))
        except (struct.error, OverflowError, TypeError):  # a string, null, an object, a huge integer
            return None
    return out


class _Cut:
    """The ``"keypoints"`` arrays cut out of a JSON text: ``parts`` as the regex split gives them
    (text, array contents, text, ...), the arrays left in the text (``as_text``: the keypoint names of a
    category...) and the others (``nums``), to be read as numbers."""

    __slots__ = ("parts", "nums_all", "as_text", "nums")

    def __init__(self, parts: list, nums_all: list, as_text: set, nums: list | None = None):
        self.parts, self.nums_all, self.as_text = parts, nums_all, as_text
        self.nums = nums if nums is not None else [c for i, c in enumerate(nums_all) if i not in as_text]


def _cut(data: bytes | mmap.mmap) -> _Cut | None:
    """Cut every ``"keypoints": [...]`` array out of the text (None when there are too few)."""
    parts = _KP_ARRAY.split(data)  # [text, array contents, text, array contents, ..., text]
    nums_all = parts[1::2]
    n = len(nums_all)
    if n < _FAST_MIN_RECORDS:
        return None
    # arrays that are not plain numbers (the keypoint names of a ground truth's category, strings...) stay in
    # the JSON text; the names usually come first or last, so look there before reading (others: _recut)
    other = bytes([_OTHER])
    lo = 1 if nums_all[0].translate(_CLS).find(other) >= 0 else 0
    hi = n - 1 if n - 1 > lo and nums_all[-1].translate(_CLS).find(other) >= 0 else n
    return _Cut(parts, nums_all, set(range(lo)) | set(range(hi, n)), nums_all[lo:hi])


def _recut(cut: _Cut) -> _Cut | None:
    """After the arrays could not be read: the same cut with every array that holds a byte other than those
    of numbers left in the text too (None when there is none: the arrays are simply not numbers)."""
    other = bytes([_OTHER])
    bad = {i for i, c in enumerate(cut.nums_all) if i not in cut.as_text and c.translate(_CLS).find(other) >= 0}
    return _Cut(cut.parts, cut.nums_all, cut.as_text | bad) if bad else None


def _finish(cut: _Cut) -> tuple[bytes, int] | None:
    """The remaining JSON text, with ``"keypoints":[]`` in place of the arrays read (the others put back),
    and their number; None when too few were read (the caller then parses normally)."""
    parts, nums_all = cut.parts, cut.nums_all
    n_rows = len(cut.nums)
    cut.parts = cut.nums_all = cut.nums = None  # type: ignore[assignment]  # (used up)
    if n_rows < _FAST_MIN_RECORDS:
        return None
    parts[1::2] = [b'"keypoints":[]'] * len(nums_all)
    for i in cut.as_text:
        parts[2 * i + 1] = b'"keypoints":[' + nums_all[i] + b"]"
    return b"".join(parts), n_rows


def _fast_keypoints(data: bytes | mmap.mmap) -> tuple[bytes, np.ndarray] | None:
    """Cut every numeric ``"keypoints": [...]`` array out of the JSON text and read them all at once.

    Returns the remaining JSON text (with ``"keypoints":[]`` in their place) and the (N, 3K) float64
    array, or None when anything is unusual (the caller then parses normally, so errors are reported
    exactly as on the strict path)."""
    cut = _cut(data)
    if cut is None:
        return None
    arr = _read_rows(cut.nums)
    if arr is None:  # more arrays that are not numbers? leave them in the text
        cut = _recut(cut)
        arr = _read_rows(cut.nums) if cut is not None else None
        if arr is None:
            return None
    done = _finish(cut)
    return None if done is None else (done[0], arr)


def _read_file(path: str, mapped: bool) -> bytes | mmap.mmap:
    """The file's bytes; a big regular file memory-mapped read-only when ``mapped`` (no copy: its pages come
    from the page cache, so parsing touches less fresh memory)."""
    with open(path, "rb") as fh:
        if mapped and not os.environ.get("POSECAL_NO_FAST_JSON"):
            try:
                if os.fstat(fh.fileno()).st_size >= FAST_MIN_BYTES:
                    return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                pass
        return fh.read()


def _strict_loads(data: bytes, file: str | None) -> tuple[Any, bool]:
    """orjson, or one clean :class:`PosecalInputError` (never a RecursionError traceback).

    A document whose only fault is ``NaN`` / ``Infinity`` numbers (Python's json writes them) is returned as
    Python's json reads it, flagged (second value True), so that the field checks can name the record and
    field before the document is refused."""
    try:
        return orjson.loads(data), False
    except orjson.JSONDecodeError as e:
        err = e
    msg = str(err)
    if "recursion" in msg.lower() or "depth limit" in msg.lower():
        raise PosecalInputError("invalid JSON: nested too deeply", file) from None
    if re.search(rb"NaN|Infinity", data) and _only_nan_fault(data):
        import json

        try:
            return json.loads(data), True
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
    raise PosecalInputError(f"invalid JSON: {msg}", file) from None


def _only_nan_fault(data: bytes) -> bool:
    """Whether replacing every NaN / Infinity token by 0 makes ``data`` valid JSON for orjson."""
    try:
        orjson.loads(re.sub(rb"-?(?:NaN|Infinity)", b"0", data))
    except orjson.JSONDecodeError:
        return False
    return True


def read_json(src: Any, file: str | None, locate: Callable[[Any], Any] | None = None
              ) -> tuple[Any, str | None, np.ndarray | None, bool]:
    """Parse ``src`` (a path, bytes, or an already-parsed object, returned as it is).

    With ``locate`` (parsed object -> its list of records), big inputs take the fast path: the third value
    is then the (N, 3K) keypoint array of those records, whose ``"keypoints"`` hold ``[]``.

    Returns:
        ``(obj, file, keypoints or None, non_json)``; ``non_json`` is True when the text held NaN /
        Infinity (not JSON: the caller must refuse the document once its field checks have run).
    """
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        file = file or path
        try:
            data = _read_file(path, mapped=locate is not None)
        except OSError as e:
            raise PosecalInputError(f"cannot read file: {e.strerror or e}", file) from None
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    else:
        return src, file, None, False
    if locate is not None and len(data) >= FAST_MIN_BYTES and not os.environ.get("POSECAL_NO_FAST_JSON"):
        fast = _fast_keypoints(data)
        obj = _parse_rest(fast[0], locate, fast[1].shape[0]) if fast is not None else None
        if obj is not None:
            return obj, file, fast[1], False
    if not isinstance(data, bytes):
        data = data[:]  # mmap -> bytes
    obj, non_json = _strict_loads(data, file)
    return obj, file, None, non_json


def _parse_rest(rest: bytes, locate: Callable[[Any], Any], n_rows: int) -> Any:
    """The document without its keypoint arrays, when its records are exactly the ``n_rows`` ones whose
    ``"keypoints"`` were cut out (else None: the strict path then reads the file)."""
    try:
        obj = orjson.loads(rest)
        recs = locate(obj)
        # every record a dict whose "keypoints" were cut out (only dicts take a str index)
        ok = (isinstance(recs, list) and len(recs) == n_rows
              and [r["keypoints"] for r in recs].count([]) == len(recs))
    except (orjson.JSONDecodeError, TypeError, AttributeError, KeyError):
        ok = False
    return obj if ok else None
