"""Small shared helpers: atomic writes, JSON, progress bars. Internal."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(obj: Any, indent: bool = False) -> bytes:
    """orjson dump that accepts numpy scalars/arrays. NaN/inf become null (orjson behaviour)."""
    opt = orjson.OPT_SERIALIZE_NUMPY | (orjson.OPT_INDENT_2 if indent else 0)
    return orjson.dumps(obj, default=_json_default, option=opt)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    Nothing half-written is ever left at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    umask = os.umask(0o022)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; the file honours the umask like open() would
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: bool = True) -> None:
    write_bytes_atomic(path, dumps_json(obj, indent=indent))


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", **kw: Any):
    """tqdm progress bar on stderr; silent when stderr is not a terminal unless POSECAL_PROGRESS=1."""
    from tqdm.auto import tqdm

    disable = kw.pop("disable", None)
    if disable is None:
        disable = not (sys.stderr.isatty() or os.environ.get("POSECAL_PROGRESS") == "1")
    return tqdm(iterable, total=total, desc=desc, disable=disable, file=sys.stderr, **kw)


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file with orjson; a missing file or bad JSON raises one-line ``PosecalInputError``."""
    from posecal.errors import PosecalInputError

    try:
        return orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise PosecalInputError("file not found", file=str(path)) from None
    except orjson.JSONDecodeError as e:
        raise PosecalInputError(f"not JSON: {e}", file=str(path)) from None
