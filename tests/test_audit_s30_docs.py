"""What the docs promise about ``--help`` (audit s30, a user who reads only the docs).

README: "``posecal CMD --help`` lists every flag with its default (e.g. rescore's closed-form settings ``--model``,
``--target-sigma``, ``--heatmap-size``, ...; extract's ... ``--chunk-size``, ``--batch-size``; fit's ``--box-score``,
``--cv-seed``, ...; the study and demo sizes)". Before this audit none of those named flags showed a default.
"""

from __future__ import annotations

import argparse
import re

import pytest

from posecal.cli import build_parser


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    out: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(name: str, p: argparse.ArgumentParser) -> None:
        out.append((name, p))
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for n, sp in a.choices.items():
                    walk(f"{name} {n}".strip(), sp)

    walk("", build_parser())
    return [(n, p) for n, p in out if n]


def _help_of(p: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text of ``action`` as ``--help`` renders it (the plain-text formatter, %(default)s expanded)."""
    return p._get_formatter()._expand_help(action) if action.help else ""


def test_every_value_flag_with_a_default_shows_it_in_help() -> None:
    errs = []
    for name, p in _commands():
        for a in p._actions:
            if not a.option_strings or a.required or a.nargs == 0 or a.default in (None, argparse.SUPPRESS):
                continue
            if "default" not in _help_of(p, a).lower():
                errs.append(f"posecal {name} {'/'.join(a.option_strings)}: default {a.default!r} not in --help")
    assert not errs, "\n".join(errs)


@pytest.mark.parametrize("cmd,flag,shown", [
    ("rescore", "--heatmap-size", "default: 48 64"), ("rescore", "--input-size", "default: 192 256"),
    ("rescore", "--target-sigma", "default: 2.0"), ("rescore", "--keypoint-score-thr", "default: 0.2"),
    ("rescore", "--aggregate", "default: bbox_keypoint"), ("rescore", "--model", "default: heatmap"),
    ("extract", "--chunk-size", "default: 64"), ("extract", "--batch-size", "default: 16"),
    ("extract", "--sigma-method", "default: fit"), ("fit", "--cv-seed", "default: 0"),
    ("demo", "--n-train", "default: 4000"), ("study occlusion", "--limit", "default: 100"),
    ("study visibility", "--tau", "default: 0.2"), ("convert", "--split", "default: all"),
])
def test_the_readme_examples_show_their_defaults(cmd: str, flag: str, shown: str) -> None:
    p = dict(_commands())[cmd]
    a = next(a for a in p._actions if flag in a.option_strings)
    assert shown in _help_of(p, a)


def test_fit_help_quotes_the_recipes_values() -> None:
    """fit's options default to the recipe's; where the help quotes the recipe's value, every default recipe
    (the per-model table and the generic one) has it."""
    from posecal.ccnet.fit import DEFAULT_RECIPES, Recipe

    recipes = [Recipe(), *DEFAULT_RECIPES.values()]
    p = dict(_commands())["fit"]
    quoted = 0
    for a in p._actions:
        m = re.search(r"the recipe's, (\w[\w.]*)", _help_of(p, a))
        if m is None:
            continue
        quoted += 1
        want = {"off": False, "on": True}.get(m.group(1), m.group(1))
        for r in recipes:
            got = getattr(r, a.dest)
            assert (got == want) if isinstance(want, bool) else str(got) == want, (a.dest, r, want)
    assert quoted >= 5  # lam, conf-loss, seed, eval-every, box-score


def test_private_names_the_docs_cite_exist() -> None:
    """docs/design.md names extract's stages and export's helpers by their function names (``_read_boxes``, ...);
    each backticked ``_name`` in the README and docs is a function, class, variable or module of posecal
    (design.md named ``_drop_missing``, a stage renamed ``_usable_images``)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    pkg = repo / "src" / "posecal"
    src = "\n".join(p.read_text(encoding="utf-8") for p in pkg.rglob("*.py"))
    modules = {p.stem for p in pkg.rglob("*.py")}
    errs = []
    for doc in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        for m in re.finditer(r"`(_[a-z]\w*)(?:\(\))?`", doc.read_text(encoding="utf-8")):
            name = m.group(1)
            if name not in modules and not re.search(rf"^\s*(?:def|class) {name}\b|^\s*{name}\s*[:=]", src, re.M):
                errs.append(f"{doc.name}: `{name}` is not defined in src/posecal")
    assert not errs, "\n".join(errs)
