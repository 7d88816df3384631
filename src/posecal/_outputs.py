"""Output safety shared by every command: outputs never clobber inputs, outputs are creatable before any
long work starts, multi-file outputs appear all at once or not at all. Internal.

Every check raises :class:`posecal.errors.PosecalInputError` (one line, exit 2 in the CLI)::

    refuse_clobber({"--pred": args.pred}, {"--out": args.out})   # before reading anything
    check_creatable(args.out, "file")                             # before fitting / extracting
    with atomic_dir(args.out) as tmp:                            # several files, all or nothing
        (tmp / "a.json").write_bytes(...)

Single files are written with :func:`posecal._util.atomic_path` (temporary sibling + rename, umask mode).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from posecal.errors import PosecalInputError

__all__ = ["refuse_clobber", "check_creatable", "atomic_dir", "real", "replace_dir", "signals_deferred"]

PathLike = str | os.PathLike


def real(path: PathLike) -> Path:
    """Absolute path with every link resolved (the path need not exist)."""
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path)))))


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:  # hard links and bind mounts: same inode
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _items(paths: Mapping[str, PathLike | None | list]) -> list[tuple[str, Path, str]]:
    out = []
    for flag, p in paths.items():
        for q in p if isinstance(p, (list, tuple)) else [p]:
            if q is None or os.fspath(q) in ("", "-"):
                continue
            out.append((flag, real(q), os.fspath(q)))
    return out


def refuse_clobber(inputs: Mapping[str, PathLike | None | list], outputs: Mapping[str, PathLike | None | list],
                   *, dir_outputs: Mapping[str, list[str]] | None = None) -> None:
    """Refuse (PosecalInputError) an output that is, or resolves to, an input, or lies inside an input folder.

    ``inputs``/``outputs`` map a flag name (for the message) to a path, a list of paths or None (ignored;
    ``-`` means stdin/stdout and is ignored too). ``dir_outputs`` maps an output flag that names a folder to
    the file names written inside it, so ``fit --out DIR`` is refused when ``DIR/head.json`` is an input.
    Two outputs naming the same path are refused as well.
    """
    ins = _items(inputs)
    outs = _items(outputs)
    for oflag, o, oraw in outs:
        targets = [o] + [o / f for f in (dir_outputs or {}).get(oflag, [])]
        for iflag, i, _ in ins:
            for t in targets:
                if _same(t, i):
                    raise PosecalInputError(f"output is the input {iflag} ({t}); choose another path",
                                            file=oraw, field=oflag)
                if _inside(t, i):
                    raise PosecalInputError(f"output lies inside the input {iflag} ({i}); choose another path",
                                            file=oraw, field=oflag)
    for a in range(len(outs)):
        for b in range(a + 1, len(outs)):
            if _same(outs[a][1], outs[b][1]):
                raise PosecalInputError(f"{outs[a][0]} and {outs[b][0]} name the same file", file=outs[b][2],
                                        field=outs[b][0])


REPORT_SUFFIXES = (".html", ".json", ".png")
REPORT_FILES = frozenset({"index.html", "metrics.json", "compare.json", "pr_curves.png", "reliability.png",
                          "sparsification.png", "visibility_scores.png"})
"""Every name an ``evaluate`` / ``compare`` report has ever written: any other file in a report folder is the
user's (e.g. ``evaluate --json REP/baseline.json``, a prediction file kept with its report), and replacing the
folder would delete it."""
PROBE_PREFIX = ".posecal-probe."
"""Name prefix of the empty file :func:`_probe_writable` creates and removes at once."""


def check_report_folder(path: PathLike, inputs: Mapping[str, PathLike | None | list], *,
                        field: str = "--report") -> None:
    """Refuse a report folder that replacing would lose data: ``path`` may be new, empty, or a previous
    posecal report (an ``index.html`` and only files of :data:`REPORT_FILES`), and must not hold an
    input. Report writers replace the folder as a whole, so anything else in it would be deleted."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise PosecalInputError("exists and is not a folder", file=str(d), field=field)
    for iflag, i, _ in _items(inputs):
        if _inside(i, real(d)) or _same(i, real(d)):
            raise PosecalInputError(f"holds the input {iflag}; it would be replaced", file=str(d), field=field)
    if not d.is_dir():
        return
    # another posecal run's writability probe (:func:`_probe_writable`), there for an instant, is not foreign
    entries = sorted(e for e in d.iterdir() if not e.name.startswith(PROBE_PREFIX))
    if not entries:
        return
    foreign = [e.name for e in entries if e.is_dir() or e.name not in REPORT_FILES]
    if foreign or not (d / "index.html").is_file() or not _posecal_page(d / "index.html"):
        what = (f"holds {foreign[0]!r}" if foreign else "is not empty and holds no index.html"
                if not (d / "index.html").is_file() else "holds an index.html that posecal did not write")
        raise PosecalInputError(f"{what}: not a posecal report folder, and the report replaces the folder "
                                "as a whole; choose a new or empty folder", file=str(d), field=field)


def _posecal_page(index: Path) -> bool:
    """Whether ``index`` is a page posecal wrote: its ``<meta name="generator" content="posecal">`` (or, from
    before that marker, a ``<title>`` beginning "posecal"), in its first 4 KiB."""
    try:
        with open(index, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'<meta name="generator" content="posecal"' in head or b"<title>posecal" in head


def _nearest_existing(p: Path) -> Path:
    q = p
    while not q.exists() and not q.is_symlink():
        if q.parent == q:
            break
        q = q.parent
    return q


def check_creatable(path: PathLike, kind: str = "file", *, field: str = "--out",
                    allow_existing_dir: bool = True, sibling: bool = False) -> None:
    """Check, before any long work, that ``path`` can be written as a ``kind`` ('file' or 'dir').

    file: ``path`` must not be a folder; its nearest existing ancestor must be a writable folder (missing
    parents are created at write time). dir: ``path`` must not be a file and (if it exists) be a writable
    folder, or its nearest existing ancestor must be a writable folder. ``sibling``: the folder is built in a
    temporary sibling (:func:`atomic_dir`, :func:`replace_dir`), so an existing ``path``'s parent must be
    writable too.
    """
    raw = os.fspath(path)
    if raw == "":
        raise PosecalInputError("empty path", field=field)
    if "\x00" in raw:
        raise PosecalInputError("path contains a NUL byte", file=repr(raw), field=field)
    p = Path(os.path.abspath(os.path.expanduser(raw)))
    if p.is_symlink() and not p.exists():
        raise PosecalInputError("output is a dangling link", file=raw, field=field)
    if kind == "file":
        if p.is_dir():
            raise PosecalInputError("is a folder, expected a file path", file=raw, field=field)
        if p.exists() and not p.is_file():
            raise PosecalInputError("exists and is not a regular file (a device or a pipe?)", file=raw,
                                    field=field)
        if raw.endswith(("/", os.sep)):
            raise PosecalInputError("names a folder (trailing '/'), expected a file path", file=raw, field=field)
    elif kind == "dir":
        if p.exists() and not p.is_dir():
            raise PosecalInputError("exists and is not a folder", file=raw, field=field)
        if p.is_dir():
            if not allow_existing_dir:
                raise PosecalInputError("folder exists", file=raw, field=field)
            _probe_writable(p, raw, field)
            if sibling:
                _probe_writable(p.parent, raw, field, " (the output is built next to it, then moved in)")
            return
    else:  # pragma: no cover - programming error
        raise ValueError(kind)
    anc = _nearest_existing(p.parent)
    if not anc.is_dir():
        raise PosecalInputError(f"cannot create: {anc} is not a folder", file=raw, field=field)
    _probe_writable(anc, raw, field)
    if len(p.name.encode(errors="surrogateescape")) > 255 - 24:  # room for the temporary name
        raise PosecalInputError("file name too long", file=raw, field=field)


def _probe_writable(folder: Path, raw: str, field: str, why: str = "") -> None:
    """Create and remove a temporary file in ``folder`` (``os.access`` says yes to root even on read-only or
    virtual file systems); PosecalInputError if that fails (``why`` ends its message)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PosecalInputError(f"cannot create: folder {folder} is not writable{why}", file=raw, field=field)
    try:
        fd, tmp = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
    except OSError as e:
        raise PosecalInputError(f"cannot create files in {folder}: {e.strerror or e}{why}", file=raw,
                                field=field) from None
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):  # a concurrent run replaced the (report) folder meanwhile
        os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: PathLike, flag: str = "--out", *, stale: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success its files move into ``path`` (created if needed).

    A new ``path`` appears in one rename; into an existing folder each file is renamed in (files only,
    one level), and the names in ``stale`` that the new files do not include are removed (an earlier
    output's optional file). The move holds an exclusive lock on ``path``'s parent folder, and Ctrl-C /
    SIGTERM are held back meanwhile, so two runs writing the same ``path`` at once leave one run's files,
    never a mix. On failure the temporary folder and everything in it are removed, and ``path`` is left
    as it was.
    """
    from posecal._util import current_umask

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        with _folder_lock(path.parent), signals_deferred():
            _move_in(tmp, path, flag, stale)
    except OSError as e:
        if e.filename is None:  # a failed write (no space, quota) names no file: the error line names `path`
            e.filename = str(path)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _move_in(tmp: Path, path: Path, flag: str, stale: tuple[str, ...]) -> None:
    """:func:`atomic_dir`'s commit: ``tmp`` becomes ``path``, or its files move into the existing ``path``."""
    if not path.exists():
        os.replace(tmp, path)
        return
    files = sorted(tmp.iterdir())
    for f in files:  # every clash first: a file moved in before a failing one would stay replaced
        t = path / f.name
        if t.is_dir() or (t.exists() and not t.is_file()):
            raise PosecalInputError(f"{t} exists and is not a file; nothing was written", file=str(path),
                                    field=flag)
    for f in files:
        os.replace(f, path / f.name)
    written = {f.name for f in files}
    for name in stale:
        old = path / name
        if name not in written and old.is_file():
            old.unlink()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` itself (blocking: the holder only renames a few files), where the
    platform and file system offer one; otherwise no lock."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # e.g. ENOLCK on some network file systems: go on unlocked
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM / SIGHUP back (main thread, POSIX) for a few renames that must happen together;
    a signal that arrives meanwhile is delivered when the block ends. Elsewhere: no-op.

    The signals' Python handlers are swapped for one that only records them, then restored, and a recorded
    signal is raised again. (A signal mask would not do: it blocks the main thread only, and the kernel hands a
    process-directed signal — Ctrl-C, ``kill`` — to any thread that does not block it, e.g. a thread of
    onnxruntime's or torch's pools; Python then runs its handler in the main thread at once.)"""
    import signal
    import threading

    names = ("SIGINT", "SIGTERM", "SIGHUP")
    sigs = [getattr(signal, n) for n in names if hasattr(signal, n)]
    if not hasattr(signal, "raise_signal") or threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {}
    try:
        for sig in sigs:
            old[sig] = signal.signal(sig, lambda signum, frame: got.append(signum))
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in dict.fromkeys(got):
            signal.raise_signal(sig)


def replace_dir(tmp: PathLike, final: PathLike) -> None:
    """Move the finished folder ``tmp`` to ``final`` (a sibling), replacing a previous ``final`` as a whole.

    The old folder is first renamed aside (a fresh hidden sibling), then ``tmp`` renamed into place, with
    Ctrl-C held back between the two renames, so ``final`` is always either the old or the new folder;
    the old one is deleted afterwards."""
    tmp, final = Path(tmp), Path(final)
    if not os.path.lexists(final):
        os.replace(tmp, final)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
    with signals_deferred():
        os.replace(final, aside / "x")
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(aside / "x", final)  # put the old folder back
            raise
    shutil.rmtree(aside, ignore_errors=True)
