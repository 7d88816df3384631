"""Strict JSON reading for COCO files, with a fast path for their big numeric ``"keypoints"`` arrays.

One entry point, :func:`read_json`. Every document is parsed by orjson (strict RFC 8259: no ``NaN``,
``+1``, ``.5``, ``01``, trailing commas...). For big files the numeric ``"keypoints": [...]`` arrays are
first cut out of the text and parsed all at once by numpy's C reader (no Python float objects); the rest
is parsed by orjson. The fast path accepts exactly what the strict parser accepts: an array is cut out only
when its text is JSON numbers (digits, ``-``, ``.``, ``e``/``E`` and JSON whitespace, no ``+``), every
``.`` lies between digits and no number has a leading zero; anything else stays in the JSON text for orjson
(and the type checks of :mod:`posecal.io.coco`). Setting ``POSECAL_NO_FAST_JSON=1`` disables the fast
path (for comparisons).

Documents that orjson refuses are read again by Python's :mod:`json` only to tell a ``NaN`` / ``Infinity``
number (named later by the field checks with record and field) from any other syntax error; Python's
parser is never the one that accepts a document's numbers.
"""

from __future__ import annotations

import io
import mmap
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from posecal.errors import PosecalInputError

__all__ = ["read_json", "FAST_MIN_BYTES"]

FAST_MIN_BYTES = 1 << 16  # below this the plain orjson path is as fast
_FAST_MIN_RECORDS = 64
_KP_ARRAY = re.compile(rb'"keypoints"\s*:\s*\[([^\]]*)\]')
_SEP = b"\x01"  # joins the cut-out arrays; never valid inside JSON text
# byte classes for the syntax check, one bit each so that 8 bytes are checked at once in a uint64 word
_DIG, _ZERO, _SEPC, _DOT, _MINUS, _EXP, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
_CLS = bytearray([_OTHER] * 256)
for _c in b"123456789":
    _CLS[_c] = _DIG
_CLS[ord("0")] = _DIG | _ZERO
for _c in b", \t\n\r\x01":
    _CLS[_c] = _SEPC
_CLS[ord(".")], _CLS[ord("-")], _CLS[ord("e")], _CLS[ord("E")] = _DOT, _MINUS, _EXP, _EXP
_CLS = bytes(_CLS)
_NL_TO_SPACE = bytes.maketrans(b"\n\r", b"  ")
_LANES = np.uint64(0x0101010101010101)
_SEP8 = bytes([_SEPC]) * 8


_CHUNK = 1 << 15  # words per step: the work arrays stay in the CPU cache


def _swar_any_bad(cur: np.ndarray, prev_w: np.ndarray, next_w: np.ndarray) -> bool:
    """Over words of 8 class bytes (``cur``, with the words before and after each): is any byte a '.'
    without a digit on both sides, a leading zero (a token-initial 0 followed by a digit) or the integer
    ``-0``? Lanes are little-endian bytes; done in cache-sized steps with in-place operations on four work
    arrays."""
    n = cur.shape[0]
    size = min(n, _CHUNK)
    work = [np.empty(size, dtype=np.uint64) for _ in range(4)]
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        if _swar_step(cur[s:e], prev_w[s:e], next_w[s:e], [w[: e - s] for w in work]):
            return True
    return False


def _swar_step(cur: np.ndarray, prev_w: np.ndarray, next_w: np.ndarray, work: list[np.ndarray]) -> bool:
    u1, u2, u3, u4, u8, u56 = _SHIFTS
    prev, nxt, t, z = work
    np.left_shift(cur, u8, out=prev)
    np.right_shift(prev_w, u56, out=t)
    prev |= t  # byte i-1 in lane i
    np.right_shift(cur, u8, out=nxt)
    np.left_shift(next_w, u56, out=t)
    nxt |= t  # byte i+1 in lane i
    # DOT(cur) & ~(DIG(prev) & DIG(next)): a '.' needs a digit on both sides
    np.bitwise_and(prev, nxt, out=t)
    np.invert(t, out=t)
    np.right_shift(cur, u3, out=z)
    t &= z
    t &= _LANES
    if t.any():
        return True
    np.right_shift(cur, u1, out=z)
    z &= _LANES  # ZERO(cur)
    if not z.any():
        return False
    np.right_shift(prev, u4, out=t)
    t &= _LANES  # MINUS(prev)
    prev >>= u2
    prev &= _LANES  # SEP(prev)
    prev |= t
    prev &= nxt
    prev &= z  # ZERO(cur) & (SEP | MINUS)(prev) & DIG(next): 01, -01
    if prev.any():
        return True
    nxt >>= u2
    nxt &= t
    nxt &= z  # ZERO(cur) & MINUS(prev) & SEP(next): -0
    return bool(nxt.any())


_SHIFTS = tuple(np.uint64(v) for v in (1, 2, 3, 4, 8, 56))


_BLOCK = 1 << 20  # bytes of text classified at a time (a multiple of 8)


def _scan(joined: bytes) -> int:
    """Classify the arrays' text block by block (little memory, cache-friendly): 2 when it holds a byte
    that is not part of a number (a string, ``true``, ``+``...), 1 when a number is one that numpy's reader
    would accept but JSON refuses — a '.' not between two digits (``.5``, ``1.``, ``1.e5``), a leading zero
    (``01``, ``-01``) or the integer ``-0`` (a Python int 0 for orjson, -0.0 for numpy) — else 0. The rest
    (``1-2``, ``1e``, empty fields...) numpy refuses itself."""
    other, em, ee = bytes([_OTHER]), bytes([_EXP, _MINUS]), bytes([_EXP, _EXP])
    n = len(joined)
    bad = False
    for s in range(0, max(n, 1), _BLOCK):
        e = min(n, s + _BLOCK)
        seg = joined[max(0, s - 8): e + 8].translate(_CLS)  # the region with 8 bytes of context each side
        if seg.find(other) >= 0:
            return 2
        if bad:
            continue
        if seg.find(em) >= 0:
            seg = seg.replace(em, ee)  # an exponent's sign is not a number's (1e-05 is valid)
        head = _SEP8 if s == 0 else b""
        tail = _SEP8[: 8 - min(8, n - e)] if e < n else _SEP8[: (-(e - s)) % 8] + _SEP8
        w = np.frombuffer(head + seg + tail, dtype=np.uint64)
        k = (e - s + 7) // 8  # words of the region; w[0] and w[k + 1] are its context
        bad = _swar_any_bad(w[1:k + 1], w[0:k], w[2:k + 2])
    return 1 if bad else 0


def _rows(nums: list[bytes]) -> bytes:
    """The arrays' text, one per line (a line break inside an array reads as a space)."""
    joined = b"\n".join(nums)
    if joined.count(b"\n") != len(nums) - 1 or joined.find(b"\r") >= 0:
        joined = _SEP.join(nums).translate(_NL_TO_SPACE).replace(_SEP, b"\n")
    return joined


def _fast_keypoints(data: bytes | mmap.mmap) -> tuple[bytes, np.ndarray] | None:
    """Cut every numeric ``"keypoints": [...]`` array out of the JSON text and parse them all at once.

    Returns the remaining JSON text (with ``"keypoints":[]`` in their place) and the (N, 3K) float64
    array, or None when anything is unusual (the caller then parses normally, so errors are reported
    exactly as on the strict path)."""
    if data.find(_SEP) >= 0:
        return None
    parts = _KP_ARRAY.split(data)  # [text, array contents, text, array contents, ..., text]
    nums_all = parts[1::2]
    n = len(nums_all)
    if n < _FAST_MIN_RECORDS:  # (an empty array makes numpy's reader warn: None below)
        return None
    other = bytes([_OTHER])
    # arrays that are not plain numbers (the keypoint names of a ground truth's category, strings, '+'...)
    # stay in the JSON text; the names usually come first or last, so look there before joining
    lo = 1 if nums_all[0].translate(_CLS).find(other) >= 0 else 0
    hi = n - 1 if n - 1 > lo and nums_all[-1].translate(_CLS).find(other) >= 0 else n
    as_text = set(range(lo)) | set(range(hi, n))
    nums = nums_all[lo:hi]
    joined = _rows(nums)
    verdict = _scan(joined)
    if verdict == 2:  # more of them: find them from the positions of the other bytes
        bad_pos = np.flatnonzero(np.frombuffer(joined.translate(_CLS), dtype=np.uint8) == _OTHER)
        ends = np.cumsum(np.fromiter(map(len, nums), dtype=np.int64, count=len(nums)) + 1)
        as_text |= {lo + i for i in np.searchsorted(ends, bad_pos, side="right").tolist()}
        nums = [c for i, c in enumerate(nums_all) if i not in as_text]
        joined = _rows(nums)
        verdict = _scan(joined)
    parts[1::2] = [b'"keypoints":[]'] * n
    for i in as_text:
        parts[2 * i + 1] = b'"keypoints":[' + nums_all[i] + b"]"
    del nums_all
    if len(nums) < _FAST_MIN_RECORDS or verdict != 0:
        return None
    n_rows = len(nums)
    del nums  # freed before the array is made, which then reuses their memory
    # one line = one row; max_rows lets the reader size the array once; a file-like object is read in
    # blocks (faster than a list of lines)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            arr = np.loadtxt(io.BytesIO(joined), delimiter=",", dtype=np.float64, ndmin=2, comments=None,
                             max_rows=n_rows)
    except (ValueError, UserWarning):
        return None
    if arr.shape[0] != n_rows:
        return None
    return b"".join(parts), arr


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
                return obj, file, fast[1], False
    if not isinstance(data, bytes):
        data = data[:]  # mmap -> bytes
    obj, non_json = _strict_loads(data, file)
    return obj, file, None, non_json
