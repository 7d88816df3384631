"""The ``posecal`` command: one entry point, one module per subcommand.

Each module in :data:`SUBCOMMANDS` defines ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int``. Modules are imported lazily so that ``posecal evaluate`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from posecal.errors import PosecalInputError, PosecalWarning

# name -> module; order is the order shown in --help
SUBCOMMANDS: dict[str, str] = {
    "evaluate": "posecal.cli.evaluate",
    "rescore": "posecal.cli.rescore",
    "convert": "posecal.cli.convert",
    "extract": "posecal.cli.extract",
    "detect": "posecal.cli.detect",
    "fit": "posecal.cli.fit",
    "apply": "posecal.cli.apply",
    "export": "posecal.cli.export",
    "compare": "posecal.cli.compare",
    "study": "posecal.cli.study",
    "demo": "posecal.cli.demo",
}


# optional dependency (top-level module) -> (its PyPI name, the posecal extra that installs it)
OPTIONAL_EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "torch"), "safetensors": ("safetensors", "torch"), "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"), "ai_edge_litert": ("ai-edge-litert", "tflite"),
    "h5py": ("h5py", "store"), "matplotlib": ("matplotlib", "report"), "PIL": ("pillow", "images"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    from posecal.cli._args import PosecalArgumentParser, plain_help

    parser = PosecalArgumentParser(
        prog="posecal", description="Calibrated confidence for 2D pose estimation."
    )
    from posecal import __version__

    parser.add_argument("--version", action="version", version=f"posecal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in SUBCOMMANDS.items():
        if only is not None and name != only:
            # cheap placeholder so --help lists every command without importing it
            sub.add_parser(name, add_help=False)
            continue
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue  # subcommand not built yet
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
        plain_help(p)  # plain-text help (no reST markup), one-line argparse errors
    return parser


def _single_thread_blas() -> None:
    """Before numpy is first imported: one OpenBLAS thread unless the user chose a number.

    ``posecal evaluate`` makes no BLAS call, but OpenBLAS starts a worker thread per core when numpy is
    imported, and on a 2-core machine those idle workers spin for ~0.1 s of CPU time during a 0.4 s run
    (measured in docs/benchmarks.md; ``POSECAL_PROCESS_TWEAKS=-blas`` turns it off).
    """
    if "numpy" not in sys.modules and "-blas" not in os.environ.get("POSECAL_PROCESS_TWEAKS", "").split(","):
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first == "evaluate":
        _single_thread_blas()
    parser = build_parser(first if first in SUBCOMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand's parser ("posecal fit: error: ..."), as its other errors are
        _deepest_parser(parser, argv).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    _lenient_stdout()
    if sys.stdout is None:  # started with stdout closed (`>&-`): tables go nowhere (as print() drops them)...
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process's stdout from here on
        args._stdout_closed = True  # ... and results asked for on stdout are refused (_run_command)
    return _run_command(args)


def _lenient_stdout() -> None:
    """A file name that is not valid UTF-8 (``b"bad\\xff.json"``, which Python holds as ``"bad\\udcff.json"``)
    printed in a table crashed under a UTF-8 locale, whose stdout encodes strictly: print it backslash-escaped,
    as stderr does (the C locale's ``surrogateescape`` is kept: it gives the name's own bytes back)."""
    out = sys.stdout
    if out is not None and getattr(out, "errors", None) == "strict" and hasattr(out, "reconfigure"):
        try:
            out.reconfigure(errors="backslashreplace")
        except (ValueError, OSError):  # e.g. a closed stream
            pass


def _deepest_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)subcommand parser that ``argv`` selects (``study visibility``), else ``parser``."""
    for tok in argv:
        sub = next((a.choices[tok] for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction) and tok in a.choices), None)
        if sub is not None:
            parser = sub
    return parser


def _error(command: str, message: object) -> int:
    from posecal.cli._args import one_line

    sys.stderr.write(f"posecal {command}: error: {one_line(message)}\n")
    return 2


def _os_error(e: OSError) -> str:
    """One line for an OSError on a user path: ``FILE: reason``."""
    what = e.strerror or str(e) or type(e).__name__
    names = [n for n in (e.filename, e.filename2) if n is not None]
    return ": ".join([*(os.fsdecode(n) if isinstance(n, bytes) else str(n) for n in names), what])


# positional paths (command, argparse dest) -> the name an error gives them (their metavar)
POSITIONAL_PATHS: dict[tuple[str, str], str] = {("compare", "a"): "A.json", ("compare", "b"): "B.json",
                                                ("convert", "src"): "src"}


def _empty_path(args: argparse.Namespace) -> PosecalInputError | None:
    """The error for a path given as '' (``Path("")`` is ".": an empty path would silently mean the cwd),
    one of several (``fit --store A --store ''``) or a positional one included; None when there is none."""
    for flag in ("out", "report", "json", "gt", "pred", "store", "head", "model", "data", "images", "boxes"):
        value = getattr(args, flag, None)
        if value == "" or (isinstance(value, list) and "" in value):
            return PosecalInputError("empty path", field=f"--{flag}")
    for (cmd, dest), name in POSITIONAL_PATHS.items():
        if args.command == cmd and getattr(args, dest, None) == "":
            return PosecalInputError("empty path", field=name)
    return None


def _run_command(args: argparse.Namespace) -> int:
    """Run a subcommand under the error contract: a failure on user input is ONE stderr line and exit 2
    (``PosecalInputError``; ``OSError`` on a user path: unreadable, unwritable, a folder, no space; input
    nested too deeply for the parser). Warnings are printed as one line each once the command succeeded
    (on failure the error line is the only output). Anything else is a bug: its traceback is shown (and with
    ``POSECAL_DEBUG=1`` also behind OSError / RecursionError / MemoryError)."""
    import warnings

    cmd = args.command
    empty = _empty_path(args)
    if empty is not None:
        return _error(cmd, empty)
    for flag in ("out", "json"):  # results on a closed stdout would be lost without a word
        value = getattr(args, flag, None)
        if getattr(args, "_stdout_closed", False) and (value == "-" or value is True):
            return _error(cmd, PosecalInputError("stdout is closed (started with >&-): nothing could be written "
                                                 "there; give a file name" if value == "-" else
                                                 "stdout is closed (started with >&-): the JSON has nowhere to go",
                                                 field=f"--{flag}"))
    refused = _dash_refused(args)
    if refused is not None:
        return _error(cmd, refused)
    with warnings.catch_warnings(record=True) as caught:
        try:
            rc = int(args._run(args) or 0)
        except PosecalInputError as e:
            return _error(cmd, e)
        except Exception as e:
            if not _caused_by_interrupt(e):
                rc = _other_error(cmd, e)
                if rc is None:
                    raise
                return rc
            return _interrupted(e)
        except KeyboardInterrupt as e:
            return _interrupted(e)
    return _flush_warnings(cmd, caught, rc)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM / SIGHUP (``kill``, a closed terminal, a batch system's time limit)
    while a command runs: a KeyboardInterrupt, so the clean-up that Ctrl-C gets runs too (temporary files and
    folders removed, resumable work kept), and the exit code is the shell's 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _in_chain(e: BaseException | None, cls: type[BaseException]) -> BaseException | None:
    """The first ``cls`` in ``e``'s chain of causes / contexts (``e`` itself first), or None."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, cls):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _interrupt_code(e: BaseException | None) -> int:
    """128 + the signal number for a :class:`Terminated` in ``e``'s chain, else 130 (Ctrl-C)."""
    t = _in_chain(e, Terminated)
    return 130 if t is None else 128 + t.signum  # type: ignore[attr-defined]


def _interrupt_message(code: int) -> str:
    return "interrupted" if code == 130 else f"terminated (signal {code - 128})"


def _interrupted(e: BaseException) -> int:
    code = _interrupt_code(e)
    print(_interrupt_message(code), file=sys.stderr)
    return code


def _terminate_as_interrupt() -> None:
    """SIGTERM / SIGHUP raise :class:`Terminated` (main thread, POSIX) instead of ending the process on the spot,
    which left temporary files and folders (``.OUT.xxxx.tmp``) behind. Signals the caller chose to ignore stay
    ignored; elsewhere a no-op."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated(signum)

    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, handler)


# outputs for which '-' is no stdout: (command, argparse dest) -> what must be named instead. Without this a
# file or folder literally called "-" was written (and the clobber checks, which skip '-', were bypassed);
# `apply --out -`, `rescore --out -` and `evaluate --json -` do write to stdout; fit and export refuse on their own
DASH_REFUSED: dict[tuple[str, str], str] = {
    ("convert", "out"): "file", ("detect", "out"): "file", ("rescore", "save_calibrator"): "file",
    ("extract", "out"): "folder", ("study", "out"): "folder", ("demo", "out"): "folder",
    ("evaluate", "report"): "folder", ("compare", "report"): "folder",
}


def _dash_refused(args: argparse.Namespace) -> PosecalInputError | None:
    """The error for an output given as '-' where the command cannot write to stdout (``./-`` names a file)."""
    for (cmd, dest), kind in DASH_REFUSED.items():
        if args.command == cmd and getattr(args, dest, None) == "-":
            flag = "--" + dest.replace("_", "-")
            return PosecalInputError(f"'-' (stdout) is not supported here: give a {kind} name (./- for one "
                                     "called '-')", field=flag)
    return None


def _caused_by_interrupt(e: BaseException) -> bool:
    """Whether ``e`` was raised because of a Ctrl-C: Python wraps a KeyboardInterrupt that lands in some places
    (``__set_name__`` while a class body runs, e.g. while torch lazily imports a module on first use) into a
    RuntimeError whose cause is the interrupt."""
    return _in_chain(e, KeyboardInterrupt) is not None


def _other_error(cmd: str, e: Exception) -> int | None:
    """The exit code for a failure that is not a bug (a missing optional extra, a file-system error, input too
    deep or too large), after its one error line; None for a bug (the caller re-raises it)."""
    if isinstance(e, ModuleNotFoundError):  # an optional extra this command needs is not installed
        top = (e.name or "").split(".")[0]
        if top not in OPTIONAL_EXTRAS or os.environ.get("POSECAL_DEBUG"):
            return None
        pkg, extra = OPTIONAL_EXTRAS[top]
        return _error(cmd, f"needs {pkg}, which is not installed: pip install 'posecal[{extra}]'")
    if not isinstance(e, (OSError, RecursionError, MemoryError)) or os.environ.get("POSECAL_DEBUG"):
        return None  # a bug, or a developer asking for the traceback behind the one line
    if isinstance(e, BrokenPipeError) and e.filename is None:  # stdout's reader exited (`| head -1`)
        _stdout_gone()
        return _error(cmd, f"stdout: {e.strerror or 'Broken pipe'}")
    if isinstance(e, OSError):
        return _error(cmd, _os_error(e))
    return _error(cmd, "input nested too deeply (RecursionError)" if isinstance(e, RecursionError)
                  else "out of memory (input too large?)")


def _flush_warnings(cmd: str, caught: list, rc: int) -> int:
    """Print posecal's own recorded warnings, one line each and once, after a successful command; returns rc."""
    from posecal.cli._args import one_line

    seen = set()
    own = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for w in caught:  # posecal's own warnings; third-party deprecation chatter stays off stderr
        if not (issubclass(w.category, PosecalWarning) or os.path.abspath(w.filename).startswith(own)):
            continue
        line = f"posecal {cmd}: warning: {one_line(w.message)}"
        if line not in seen:
            seen.add(line)
            sys.stderr.write(line + "\n")
    return rc


def _stdout_gone() -> None:
    """Point fd 1 at /dev/null once stdout's reader has gone (``| head -1``): what is still buffered then goes
    nowhere instead of failing again in the interpreter's last flush (Python's multi-line "Exception ignored
    ... BrokenPipeError" and exit 120)."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass


def _final_flush(rc: int) -> int:
    """Flush stdout before the interpreter does, so that a failure there (its reader exited, a full disk) is
    the usual one error line naming stdout and exit 2, not Python's "Exception ignored" message and exit 120."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError) as e:
        _stdout_gone()
        first = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
        name = f"posecal {first}" if first in SUBCOMMANDS else "posecal"
        what = getattr(e, "strerror", None) or str(e) or type(e).__name__
        sys.stderr.write(f"{name}: error: stdout: {what}\n")
        return rc or 2
    return rc


def _exit_interrupted(code: int) -> None:
    """End the process with ``code`` after an interrupt that posecal handled (its clean-up has run).

    ``os._exit`` after flushing stdout / stderr, not ``sys.exit``: CPython (3.11) remembers a KeyboardInterrupt
    that surfaced inside code run through ``PyRun_String`` (as extension modules run some of their Python) even
    when posecal then caught it, and at exit kills the process with SIGINT instead of returning ``code``: the
    shell saw 130 in most runs and -2 (killed by SIGINT) in about one in ten (Ctrl-C 1.5 s or 4.5 s into a
    ``posecal fit`` on two busy cores)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def console_main() -> None:
    """The process entry point (the ``posecal`` script and ``python -m posecal``): :func:`main`, then exit.

    When ``posecal evaluate`` (without ``--report``) has printed and written everything, the process ends
    at once (``os._exit``) instead of tearing the interpreter down: freeing the ~10⁵ objects of the parsed
    files and the modules costs ~20 ms of a 0.35 s run (quiet machine; measured again with and without in
    docs/benchmarks.md, ``POSECAL_PROCESS_TWEAKS=-exit`` turns it off), and nothing is left to flush or
    finalise.
    """
    import warnings

    from posecal.cli._args import one_line

    # a warning that escapes the per-command handler is still one line, without source paths or code lines
    warnings.formatwarning = lambda message, category, filename, lineno, line=None: (  # type: ignore[assignment]
        f"posecal: warning: {one_line(message)}\n")
    _terminate_as_interrupt()
    try:
        rc = main()
    except KeyboardInterrupt as e:  # Ctrl-C before main's own handler is in place (while modules load)
        code = _interrupt_code(e)
        sys.stderr.write(f"posecal: {_interrupt_message(code)}\n")
        _exit_interrupted(code)
    except Exception as e:
        if not _caused_by_interrupt(e):
            raise
        code = _interrupt_code(e)  # SIGTERM wrapped like a Ctrl-C: "terminated", as its exit code says
        sys.stderr.write(f"posecal: {_interrupt_message(code)}\n")
        _exit_interrupted(code)
    if rc >= 128:  # main handled a Ctrl-C / SIGTERM / SIGHUP (130, 128 + n) and has cleaned up
        _exit_interrupted(rc)
    rc = _final_flush(rc)
    if rc == 0 and getattr(sys.modules.get("posecal.cli.evaluate"), "_finished_plain", False):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # e.g. a closed pipe: exit normally, which reports it
        else:
            os._exit(0)
    sys.exit(rc)
