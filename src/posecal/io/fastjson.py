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

import contextlib
import io
import mmap
import os
import re
import signal
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from posecal.errors import PosecalInputError

__all__ = ["read_json", "prefetch", "Prefetch", "fork_enabled", "FAST_MIN_BYTES"]

FAST_MIN_BYTES = 1 << 16  # below this the plain orjson path is as fast
_FAST_MIN_RECORDS = 64
_KP_ARRAY = re.compile(rb'"keypoints"\s*:\s*\[([^\]]*)\]')
_SEP = b"\x01"  # joins the cut-out arrays; never valid inside JSON text
_NUMBER_TEXT = b"0123456789.-eE, \t\n\r"  # the bytes of JSON numbers and their separators, '+' aside
_OTHER = 0x40  # the class (translation) of every other byte
_CLS = bytes(0 if c in _NUMBER_TEXT else _OTHER for c in range(256))
_NL_TO_SPACE = bytes.maketrans(b"\n\r", b"  ")
_BLOCK = 1 << 18  # bytes checked at a time (the work arrays stay in the CPU cache)


def _scan(joined: bytes) -> int:
    """Classify the arrays' text: 2 when it holds a byte that is not part of a number (a string, ``true``,
    ``+``...), 1 when a number is one that numpy's reader would accept but JSON refuses — a '.' not between
    two digits (``.5``, ``1.``, ``1.e5``), a leading zero (``01``, ``-01``) or the integer ``-0`` (a Python
    int 0 for orjson, -0.0 for numpy) — else 0. The rest (``1-2``, ``1e``, empty fields...) numpy refuses
    itself.

    One deleting ``translate`` finds other bytes; the rest is byte-wise numpy comparisons over blocks of
    the text, each with two bytes of context before and one after (separators at the ends)."""
    if joined.translate(None, _NUMBER_TEXT):
        return 2
    n = len(joined)
    text = np.frombuffer(joined, dtype=np.uint8)
    for s in range(0, n, _BLOCK):
        e = min(n, s + _BLOCK)
        lo, hi = max(0, s - 2), min(n, e + 1)
        a = text[lo:hi]
        if s - lo < 2 or hi - e < 1:  # at an end of the text: pad with spaces
            a = np.concatenate([np.full(2 - (s - lo), 32, np.uint8), a, np.full(1 - (hi - e), 32, np.uint8)])
        m = e - s  # a[2:m + 2] is the block; a[1:], a[0:] the bytes before, a[3:] the bytes after
        sep = a <= 44  # ',' and whitespace (the only bytes below '-' left)
        dig = (a - 48) < 10  # (uint8 wrap-around)
        cur, prev, prev2, nxt = slice(2, m + 2), slice(1, m + 1), slice(0, m), slice(3, m + 3)
        bad = a[cur] == 46  # a '.' needs a digit on both sides
        bad &= ~(dig[prev] & dig[nxt])
        if bad.any():
            return 1
        zero = a[cur] == 48
        if not zero.any():
            continue
        minus = a[prev] == 45
        minus &= sep[prev2]  # a number's own sign (not an exponent's)
        bad = sep[prev] | minus  # the 0 starts a number...
        bad &= dig[nxt]  # ... and a digit follows: 01, -01
        minus &= sep[nxt]  # the integer -0
        bad |= minus
        bad &= zero
        if bad.any():
            return 1
    return 0


def _rows(nums: list[bytes], breaks: bool = True) -> bytes:
    """The arrays' text, one per line (a line break inside an array reads as a space); ``breaks=False``:
    the document has no line break at all (nothing to look for)."""
    joined = b"\n".join(nums)
    if breaks and (joined.count(b"\n") != len(nums) - 1 or joined.find(b"\r") >= 0):
        joined = _SEP.join(nums).translate(_NL_TO_SPACE).replace(_SEP, b"\n")
    return joined


class _Cut:
    """The numeric ``"keypoints"`` arrays cut out of a JSON text (the first half of the fast path)."""

    __slots__ = ("parts", "nums_all", "as_text", "lo", "nums", "joined")

    def __init__(self, parts: list, nums_all: list, as_text: set, lo: int, nums: list, joined: bytes):
        self.parts, self.nums_all, self.as_text, self.lo = parts, nums_all, as_text, lo
        self.nums, self.joined = nums, joined


def _cut(data: bytes | mmap.mmap) -> _Cut | None:
    """Cut every ``"keypoints": [...]`` array out of the text; their contents joined one per line."""
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
    nums = nums_all[lo:hi]
    a, b = len(parts[0]), len(data) - len(parts[-1])  # the span of the arrays (memchr: cheaper than counting)
    breaks = data.find(b"\n", a, b) >= 0 or data.find(b"\r", a, b) >= 0
    return _Cut(parts, nums_all, set(range(lo)) | set(range(hi, n)), lo, nums, _rows(nums, breaks))


def _finish(cut: _Cut) -> tuple[bytes, bytes, int] | None:
    """Check the cut-out text (strict JSON numbers: :func:`_scan`) and put the rest of the document
    together.

    Returns the remaining JSON text (with ``"keypoints":[]`` in place of the arrays), the joined arrays for
    numpy's reader and their number, or None when anything is unusual (the caller then parses normally, so
    errors are reported exactly as on the strict path)."""
    nums_all, nums, joined, lo = cut.nums_all, cut.nums, cut.joined, cut.lo
    as_text = cut.as_text
    n = len(nums_all)
    verdict = _scan(joined)
    if verdict == 2:  # more of them: find them from the positions of the other bytes
        bad_pos = np.flatnonzero(np.frombuffer(joined.translate(_CLS), dtype=np.uint8) == _OTHER)
        ends = np.cumsum(np.fromiter(map(len, nums), dtype=np.int64, count=len(nums)) + 1)
        as_text |= {lo + i for i in np.searchsorted(ends, bad_pos, side="right").tolist()}
        nums = [c for i, c in enumerate(nums_all) if i not in as_text]
        joined = _rows(nums)
        verdict = _scan(joined)
    parts = cut.parts
    cut.parts = cut.nums_all = cut.nums = cut.joined = None  # type: ignore[assignment]  # (used up)
    parts[1::2] = [b'"keypoints":[]'] * n
    for i in as_text:
        parts[2 * i + 1] = b'"keypoints":[' + nums_all[i] + b"]"
    if len(nums) < _FAST_MIN_RECORDS or verdict != 0:
        return None
    return b"".join(parts), joined, len(nums)


def _read_rows(joined: bytes, n_rows: int) -> np.ndarray | None:
    """numpy's C reader on the joined arrays (one per line): (n_rows, 3K) float64, or None when it refuses
    the text, finds another number of rows or reads a number beyond float64 (inf)."""
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
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(arr, axis=None)
    # a number beyond float64 (1e400) reads as inf here but is refused by orjson: the strict path reports it
    return arr if np.isfinite(total) or np.isfinite(arr).all() else None


def _fast_keypoints(data: bytes | mmap.mmap) -> tuple[bytes, np.ndarray] | None:
    """Cut every numeric ``"keypoints": [...]`` array out of the JSON text and parse them all at once.

    Returns the remaining JSON text (with ``"keypoints":[]`` in their place) and the (N, 3K) float64
    array, or None when anything is unusual (the caller then parses normally, so errors are reported
    exactly as on the strict path)."""
    cut = _cut(data)
    fast = _fast_from(cut) if cut is not None else None
    arr = fast[1]() if fast is not None else None
    return None if arr is None else (fast[0], arr)


# ---- the keypoint numbers parsed in a forked child while the caller does other work ---------------------
def fork_enabled() -> bool:
    """Whether :func:`prefetch` may fork: Linux (fork is safe there for this pure-numpy child), and not
    turned off by ``POSECAL_PROCESS_TWEAKS=-fork`` or ``POSECAL_NO_FAST_JSON``."""
    return (hasattr(os, "fork") and sys.platform.startswith("linux")
            and not os.environ.get("POSECAL_NO_FAST_JSON")
            and "-fork" not in os.environ.get("POSECAL_PROCESS_TWEAKS", "").split(","))


class _Child:
    """A forked child reading the joined arrays with numpy's reader (:func:`_read_rows`) into shared
    memory, while the parent checks the same text (:func:`_scan`) and parses the rest.

    Its result is used only where the parent would read that very text itself, and is only ever what
    :func:`_read_rows` gives here: on anything else (another shape, a refused text, a crash) the parent
    reads the text itself, so errors are reported exactly as without the child. The child is always
    reaped (:meth:`result` or :meth:`close`) and dies with its parent (``PR_SET_PDEATHSIG``)."""

    def __init__(self, joined: bytes, n_rows: int, k: int):
        self.pid: int | None = None
        self.shape = (n_rows, k)
        self.shm = mmap.mmap(-1, 8 + 8 * n_rows * k)  # anonymous, shared with the child
        parent = os.getpid()
        with warnings.catch_warnings():  # Python >= 3.12 warns when forking a multi-threaded process
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: read, copy into the shared memory, set the flag, leave without cleanup
            try:
                _die_with_parent(parent)
                arr = _read_rows(joined, n_rows)
                if arr is not None and arr.shape == self.shape:
                    np.frombuffer(self.shm, dtype=np.float64, count=n_rows * k, offset=8).reshape(
                        self.shape)[...] = arr
                    self.shm[0] = 1
            finally:
                os._exit(0)
        self.pid = pid

    def result(self) -> np.ndarray | None:
        """Wait for the child: its (N, 3K) array, or None when it did not produce one."""
        if self.pid is None:
            return None
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        if status != 0 or self.shm[0] != 1:
            return None
        return np.frombuffer(self.shm, dtype=np.float64, count=self.shape[0] * self.shape[1],
                             offset=8).reshape(self.shape)

    def close(self) -> None:
        """Stop and reap the child if it is still there."""
        if self.pid is not None:
            pid, self.pid = self.pid, None
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    __del__ = close


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent is already gone
        os._exit(0)


class Prefetch:
    """A JSON file read and cut while its keypoint numbers are parsed by a forked child (:func:`prefetch`);
    pass it to :func:`read_json` (or :func:`posecal.io.coco.load_results`) in place of the path."""

    def __init__(self, path: str, data: bytes | mmap.mmap | None, cut: _Cut | None, child: _Child | None):
        self.path, self.data, self.cut, self.child = path, data, cut, child

    def close(self) -> None:
        if self.child is not None:
            self.child.close()


_PREFETCH_MIN_BYTES = 4 << 20


def prefetch(path: str | os.PathLike) -> Prefetch:
    """Start reading a big COCO file's keypoint arrays in a forked child (where :func:`fork_enabled`);
    never raises for bad input (the later :func:`read_json` reports it as usual). Always :meth:`close` it
    (``read_json`` does) so that the child is reaped."""
    path = os.fspath(path)
    try:
        if not fork_enabled() or os.stat(path).st_size < _PREFETCH_MIN_BYTES:
            return Prefetch(path, None, None, None)
        data = _read_file(path, mapped=True)
    except (OSError, ValueError):
        return Prefetch(path, None, None, None)
    cut = _cut(data)
    child = None
    if cut is not None and cut.nums:
        k = cut.nums[0].count(b",") + 1
        if 8 * len(cut.nums) * k <= 4 * len(cut.joined) + 64:  # else the shape cannot be right
            try:
                child = _Child(cut.joined, len(cut.nums), k)
            except (OSError, ValueError):
                child = None
    return Prefetch(path, data, cut, child)


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
    """Parse ``src`` (a path, bytes, a :class:`Prefetch` of a path, or an already-parsed object, returned
    as it is).

    With ``locate`` (parsed object -> its list of records), big inputs take the fast path: the third value
    is then the (N, 3K) keypoint array of those records, whose ``"keypoints"`` hold ``[]``.

    Returns:
        ``(obj, file, keypoints or None, non_json)``; ``non_json`` is True when the text held NaN /
        Infinity (not JSON: the caller must refuse the document once its field checks have run).
    """
    pre = src if isinstance(src, Prefetch) else None
    try:
        return _read_json(src if pre is None else pre.path, file, locate, pre)
    finally:
        if pre is not None:
            pre.close()


def _read_json(src: Any, file: str | None, locate: Callable[[Any], Any] | None, pre: Prefetch | None
               ) -> tuple[Any, str | None, np.ndarray | None, bool]:
    cut: _Cut | None = None
    prepared = pre is not None and pre.data is not None
    if prepared:
        data, file, cut = pre.data, file or pre.path, pre.cut
    elif isinstance(src, (str, os.PathLike)):
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
        if prepared:  # cut by prefetch(); a child may be reading the numbers meanwhile
            done = _fast_from(cut, pre.child) if cut is not None else None
            obj = _parse_rest(done[0], locate, done[2]) if done is not None else None
            arr = done[1]() if obj is not None else None
            if arr is not None:
                return obj, file, arr, False
        else:
            fast = _fast_keypoints(data)
            obj = _parse_rest(fast[0], locate, fast[1].shape[0]) if fast is not None else None
            if obj is not None:
                return obj, file, fast[1], False
    return _strict(data, file)


def _fast_from(cut: _Cut, child: _Child | None = None
               ) -> tuple[bytes, Callable[[], np.ndarray | None], int] | None:
    """:func:`_finish`, then the remaining text, a function giving the (N, 3K) array (or None when numpy's
    reader refuses the text) and N. The array comes from ``child`` when it read the same text (a child
    started on the joined arrays by :func:`prefetch`), else from numpy's reader here."""
    joined0 = cut.joined
    done = _finish(cut)
    if done is None:
        return None
    rest, joined, n_rows = done
    if child is None or joined is not joined0:  # (other arrays were put back in the text: not the child's)
        return rest, lambda: _read_rows(joined, n_rows), n_rows

    def array() -> np.ndarray | None:
        arr = child.result()
        return arr if arr is not None else _read_rows(joined, n_rows)

    return rest, array, n_rows


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


def _strict(data: bytes | mmap.mmap, file: str | None) -> tuple[Any, str | None, None, bool]:
    if not isinstance(data, bytes):
        data = data[:]  # mmap -> bytes
    obj, non_json = _strict_loads(data, file)
    return obj, file, None, non_json
