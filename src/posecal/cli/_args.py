"""Shared CLI plumbing: parse-time flag validators (argparse ``type=``), the one-line argparse error, the
plain-text help formatter and the one-line message escaping. Used by every subcommand.

    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--device", type=device, default="cpu")
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable

__all__ = ["positive_int", "nonneg_int", "threads", "finite_float", "positive_float", "nonneg_float", "unit_float",
           "device", "one_line", "PosecalArgumentParser", "plain_help", "sigmas_arg",
           "sigma_tokens", "data_sigmas_arg"]


# -- validators --------------------------------------------------------------------------------------
def _int(text: str) -> int:
    try:
        return int(text, 10)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


INT_MAX = 2**31 - 1


def positive_int(text: str) -> int:
    """An integer in [1, 2³¹ − 1]."""
    v = _int(text)
    if not 1 <= v <= INT_MAX:
        raise argparse.ArgumentTypeError(f"must be in [1, {INT_MAX}], got {text!r}")
    return v


def nonneg_int(text: str) -> int:
    """An integer in [0, 2³¹ − 1]."""
    v = _int(text)
    if not 0 <= v <= INT_MAX:
        raise argparse.ArgumentTypeError(f"must be in [0, {INT_MAX}], got {text!r}")
    return v


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An ``argparse`` type: an integer in [lo, hi] (the bound shown with thousands separators)."""
    def check(text: str) -> int:
        v = _int(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo:,}, {hi:,}], got {text!r}")
        return v

    check.__name__ = f"integer in [{lo}, {hi}]"
    return check


def threads(text: str) -> int:
    """A thread count in [1, 1024]."""
    v = _int(text)
    if not 1 <= v <= 1024:
        raise argparse.ArgumentTypeError(f"must be in [1, 1024], got {text!r}")
    return v


def finite_float(text: str) -> float:
    """A finite float (no nan / inf)."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return v


def positive_float(text: str) -> float:
    """A finite float > 0."""
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return v


def nonneg_float(text: str) -> float:
    """A finite float >= 0."""
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return v


def unit_float(text: str) -> float:
    """A finite float in [0, 1]."""
    v = finite_float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return v


_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps")


def device(text: str) -> str:
    """A torch device name: cpu, cuda, cuda:N or mps (checked for syntax, not availability)."""
    if not isinstance(text, str) or not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N or mps")
    return text


# -- one-line messages -------------------------------------------------------------------------------
_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]")


def one_line(text: object) -> str:
    """``str(text)`` with control and line-break characters escaped (``\\n``, ``\\x1b``...), so a message
    naming a file whose name holds a newline stays one line; lone surrogates (a file name that is not UTF-8,
    as Python decodes it) are escaped too (``\\udcff``), so the line can be written to any UTF-8 stream."""
    return _BREAKS.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), str(text))


class PosecalArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``posecal CMD: error: ...``, exit 2; no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{one_line(self.prog)}: error: {one_line(message)} (see --help)\n")
        sys.exit(2)


# -- plain-text help ---------------------------------------------------------------------------------
_ROLE = re.compile(r":(?:func|mod|class|meth|data|attr|obj|exc|ref|doc):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain_text(text: str) -> str:
    """reST markup -> plain text: ``x`` -> x, :func:`a.b` -> a.b, a trailing ``::`` -> ``:``."""
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    text = re.sub(r"\*\*([^*\n]+)\*\*", r"\1", text)
    return re.sub(r"::(\s*\n)", r":\1", text)


class _PlainMixin:
    def format_help(self) -> str:
        return plain_text(super().format_help())  # type: ignore[misc]

    def _get_help_string(self, action: argparse.Action) -> str:
        """The help of an option that takes values ends with its default (``(default: 48 64)``) unless it
        already says one: the README promises that ``--help`` lists every flag with its default."""
        text = super()._get_help_string(action) or ""  # type: ignore[misc]
        d = action.default
        if (not action.option_strings or action.required or action.nargs == 0 or d is None
                or d is argparse.SUPPRESS or "default" in text.lower()):
            return text
        shown = " ".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)
        return f"{text} (default: {shown.replace('%', '%%')})" if text else f"default: {shown.replace('%', '%%')}"


def plain_help(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` (and its sub-parsers, recursively) render help as plain text and fail in one line."""
    cls = parser.formatter_class
    if not issubclass(cls, _PlainMixin):
        parser.formatter_class = type(f"Plain{cls.__name__}", (_PlainMixin, cls), {})
    if not isinstance(parser, PosecalArgumentParser):
        parser.error = PosecalArgumentParser.error.__get__(parser)  # type: ignore[method-assign]
    for act in parser._actions:
        if isinstance(act, argparse._SubParsersAction):
            for sp in act.choices.values():
                plain_help(sp)


def sigma_tokens(sigmas: list[str]) -> list[str]:
    """The numbers of ``--sigmas`` values: space and/or comma separated, a list in brackets allowed (as MMPose's
    metainfo writes ``sigmas=[0.026, 0.025, ...]``)."""
    return [t for s in sigmas for t in s.replace(",", " ").replace("[", " ").replace("]", " ").split()]


def _brackets_ok(sigmas: list[str]) -> bool:
    """``--sigmas`` values hold no bracket, or one list: ``[`` first and ``]`` last (``[[0.1]]``, ``]0.1[`` or
    ``[0.1],[0.2]`` are refused rather than read as numbers)."""
    text = " ".join(sigmas).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return "[" not in text and "]" not in text


def sigmas_arg(sigmas: list[str] | None, keypoint_set: str | None, K: int, what: str):
    """``--sigmas S ...`` (space and/or comma separated) or ``--keypoint-set NAME`` as OKS constants ``(K,)``
    float64 for ``what`` ("the ground truth", "the predictions") with K keypoints; ``(None, None)`` when
    neither is given, else ``(sigmas, source)`` with source ``"--sigmas"`` or the set's name. One
    PosecalInputError naming the flag otherwise (not numbers, not K of them, not finite > 0, unknown set)."""
    import numpy as np

    from posecal.errors import PosecalInputError

    if sigmas:
        if not _brackets_ok(sigmas):
            raise PosecalInputError(f"malformed brackets in {' '.join(sigmas)!r}: give the numbers space or comma "
                                    "separated, or as one list [S, S, ...]", None, None, "--sigmas")
        toks = sigma_tokens(sigmas)
        try:
            vals = np.array([float(t) for t in toks], dtype=np.float64)
        except ValueError:
            raise PosecalInputError(f"not a number in {' '.join(toks)!r}", None, None, "--sigmas") from None
        if len(vals) != K or not (np.isfinite(vals) & (vals > 0)).all():
            raise PosecalInputError(f"expected {K} finite OKS sigmas > 0 (one per keypoint of {what}), got "
                                    f"{' '.join(toks)!r}", None, None, "--sigmas")
        from posecal.keypoints import oks_sigmas_problem

        problem = oks_sigmas_problem(vals)  # (2σ)² over- or underflowing: every OKS 1, or 0/0
        if problem is not None:
            raise PosecalInputError(problem, None, None, "--sigmas")
        return vals, "--sigmas"
    if keypoint_set:
        from posecal.keypoints import get_keypoint_set

        try:
            kset = get_keypoint_set(keypoint_set)
        except KeyError as e:
            raise PosecalInputError(str(e.args[0]), None, None, "--keypoint-set") from None
        if kset.num_keypoints != K:
            raise PosecalInputError(f"keypoint set {kset.name} has {kset.num_keypoints} keypoints, {what} {K}",
                                    None, None, "--keypoint-set")
        return kset.sigmas, kset.name
    return None, None


def data_sigmas_arg(sigmas: list[str] | None) -> list[float] | None:
    """``--sigmas`` of ``extract`` and ``study occlusion`` (DATA's own skeleton) as numbers, checked as
    :func:`sigmas_arg` checks them (finite, > 0); their count is checked against DATA's keypoints later."""
    if not sigmas:
        return None
    n = len(sigma_tokens(sigmas))
    return [float(x) for x in sigmas_arg(sigmas, None, n, "DATA")[0]]
