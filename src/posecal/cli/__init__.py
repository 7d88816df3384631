"""The ``posecal`` command: one entry point, one module per subcommand.

Each module in :data:`SUBCOMMANDS` defines ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int``. Modules are imported lazily so that ``posecal evaluate`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from posecal.errors import PosecalInputError

# name -> module; order is the order shown in --help
SUBCOMMANDS: dict[str, str] = {
    "evaluate": "posecal.cli.evaluate",
    "rescore": "posecal.cli.rescore",
    "convert": "posecal.cli.convert",
    "extract": "posecal.cli.extract",
    "fit": "posecal.cli.fit",
    "apply": "posecal.cli.apply",
    "export": "posecal.cli.export",
    "study": "posecal.cli.study",
    "demo": "posecal.cli.demo",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="posecal", description="Calibrated confidence for 2D pose estimation."
    )
    from posecal import __version__

    parser.add_argument("--version", action="version", version=f"posecal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
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
    return parser


def _single_thread_blas() -> None:
    """Before numpy is first imported: one OpenBLAS thread unless the user chose a number.

    ``posecal evaluate`` makes no BLAS call, but OpenBLAS starts a worker thread per core when numpy is
    imported, and on a 2-core machine those idle workers spin for ~0.1 s of CPU time during a 0.4 s run
    (measured in docs/benchmarks.md; ``POSECAL_PROCESS_TWEAKS=-blas`` turns it off).
    """
    if "numpy" not in sys.modules and "-blas" not in os.environ.get("POSECAL_PROCESS_TWEAKS", "").split(","):
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (``posecal CMD: error: ...``), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)}\n")


def _one_line(text: str) -> str:
    """A message on one line: line breaks (e.g. inside a file name) are escaped."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first == "evaluate":
        _single_thread_blas()
    parser = build_parser(first if first in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args._run(args) or 0)
    except PosecalInputError as e:
        print(f"posecal {args.command}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # an output that cannot be written, a disk that fills up...
        where = f"{e.filename!r}: " if e.filename else ""
        print(f"posecal {args.command}: error: {where}{_one_line(e.strerror or str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def console_main() -> None:
    """The process entry point (the ``posecal`` script and ``python -m posecal``): :func:`main`, then exit.

    When ``posecal evaluate`` (without ``--report``) has printed and written everything, the process ends
    at once (``os._exit``) instead of tearing the interpreter down: freeing the ~10⁵ objects of the parsed
    files and the modules costs ~20 ms of a 0.35 s run (quiet machine; measured again with and without in
    docs/benchmarks.md, ``POSECAL_PROCESS_TWEAKS=-exit`` turns it off), and nothing is left to flush or
    finalise.
    """
    rc = main()
    if rc == 0 and getattr(sys.modules.get("posecal.cli.evaluate"), "_finished_plain", False):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # e.g. a closed pipe: exit normally, which reports it
        else:
            os._exit(0)
    sys.exit(rc)
