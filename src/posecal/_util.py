"""Small shared helpers: atomic writes, JSON, progress bars. Internal."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson

if TYPE_CHECKING:
    from tqdm.auto import tqdm

#: A JSON document as orjson reads it.
JSON: TypeAlias = "dict[str, JSON] | list[JSON] | str | int | float | bool | None"


def _json_default(obj: object) -> object:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(obj: object, indent: bool = False) -> bytes:
    """orjson dump that accepts numpy scalars/arrays. NaN/inf become null (orjson behaviour)."""
    opt = orjson.OPT_SERIALIZE_NUMPY | (orjson.OPT_INDENT_2 if indent else 0)
    try:
        return orjson.dumps(obj, default=_json_default, option=opt)
    except TypeError as e:
        if "surrogates" not in str(e):
            raise
        # a file name that is not valid UTF-8 (undecodable bytes from argv): written as \udcXX escapes
        return orjson.dumps(_no_surrogates(obj), default=_json_default, option=opt)


def _no_surrogates(obj: object) -> object:
    if isinstance(obj, str):
        return obj.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(obj, dict):
        return {_no_surrogates(k): _no_surrogates(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_surrogates(v) for v in obj]
    return obj


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    old = os.umask(0o022)
    os.umask(old)
    return old


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    Nothing half-written is ever left at ``path``. The file gets the usual ``0666 & ~umask`` mode.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # never rename over a device, a pipe or a folder
        from posecal.errors import PosecalInputError

        raise PosecalInputError("exists and is not a regular file", file=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp creates 0600; files honour the umask (0644 under 022)
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        if e.filename is None:  # a failed write (no space, quota) names no file: the error line names `path`
            e.filename = str(path)
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: object, indent: bool = True) -> None:
    write_bytes_atomic(path, dumps_json(obj, indent=indent))


class _LogLines:
    """A file for tqdm that turns its carriage-return redraws into whole lines (for log files)."""

    def __init__(self, f: Any) -> None:
        self.f, self.last = f, ""

    def write(self, s: str) -> None:
        line = s.replace("\r", "").strip()
        if line and line != self.last:  # tqdm redraws the final state on close
            self.f.write(line + "\n")
            self.f.flush()
            self.last = line

    def flush(self) -> None:
        self.f.flush()


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", **kw: object) -> tqdm:
    """tqdm progress bar on stderr; silent when stderr is not a terminal, unless ``POSECAL_PROGRESS=1`` (the bar
    anyway) or ``POSECAL_PROGRESS=log``: plain lines for log files (``desc: n/total (p %), elapsed, left``), the
    first and last and one every ``POSECAL_PROGRESS_INTERVAL`` seconds (default 30) in between."""
    from tqdm.auto import tqdm

    mode = os.environ.get("POSECAL_PROGRESS")
    disable = kw.pop("disable", None)
    if disable is None:
        disable = not (sys.stderr.isatty() or mode in ("1", "log"))
    if mode == "log" and not disable:
        try:
            every = max(float(os.environ.get("POSECAL_PROGRESS_INTERVAL", "30")), 0.0)
        except ValueError:
            every = 30.0
        kw = {**kw, "mininterval": every, "maxinterval": max(every, 10.0), "miniters": 1, "dynamic_ncols": False,
              "bar_format": "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f} %), {elapsed} elapsed, {remaining} left"
              if total is not None or iterable is not None and hasattr(iterable, "__len__")
              else "{desc}: {n_fmt}, {elapsed} elapsed"}
        return tqdm(iterable, total=total, desc=desc, file=_LogLines(sys.stderr), **kw)
    return tqdm(iterable, total=total, desc=desc, disable=disable, file=sys.stderr, **kw)


def read_json(path: str | os.PathLike) -> JSON:
    """Parse a JSON file with orjson; a missing file or bad JSON raises one-line ``PosecalInputError``."""
    from posecal.errors import PosecalInputError

    try:
        return orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise PosecalInputError("file not found", file=str(path)) from None
    except orjson.JSONDecodeError as e:
        raise PosecalInputError(f"not JSON: {e}", file=str(path)) from None


def keypoint_category_index(cats: Any) -> int:
    """Index in a COCO file's ``categories`` of its keypoint category: the first one with a non-empty
    ``keypoints`` list of names, else 0 (COCO's own files hold the person category alone; a file exported
    with other, box-only categories ahead of it names the keypoint one by its ``keypoints``)."""
    if isinstance(cats, list):
        for i, c in enumerate(cats):
            if isinstance(c, dict) and isinstance(c.get("keypoints"), list) and c["keypoints"]:
                return i
    return 0


def keypoint_category_record(d: Any) -> dict | None:
    """The keypoint category's record of a COCO dict ``d`` (``d["categories"][keypoint_category_index]``), or
    None when it has no categories."""
    cats = d.get("categories") if isinstance(d, dict) else None
    if not isinstance(cats, list) or not cats:
        return None
    c = cats[keypoint_category_index(cats)]
    return c if isinstance(c, dict) else None
