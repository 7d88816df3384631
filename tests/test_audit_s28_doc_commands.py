"""Every command line in the docs parses with the current CLI.

The ``posecal …`` commands (and ``python3 -m posecal …``, ``torchrun … -m posecal …``) and the
``benchmarks/*.py …`` invocations are taken, at test time, from README.md, docs/*.md, the module docstrings of
benchmarks/*.py and of src/posecal/cli/*.py, and the help strings of the posecal parser; each is checked against
the argparse parser of its (sub)command: the subcommand exists, every flag is accepted, each flag gets the number
of values it takes, and concrete values pass its ``choices`` and ``type``. Placeholders (``STORE``, ``X.json``,
``…``) pass. A failure names the file, line and flag, so a renamed flag or a stale doc is caught here.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from posecal.cli import SUBCOMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
ELIDED = ("...", "…")
_STARTERS = re.compile(r"^(?:\$\s*)?(?:posecal|PYTHONPATH=|nice|python3?|torchrun|OMP_NUM_THREADS=|CI=|benchmarks/)")


@dataclass
class Cmd:
    where: str  # "FILE:LINE"
    text: str  # the command's words after the program (subcommand first for posecal)
    prog: str  # "posecal" or the benchmark script's name
    strict: bool  # a code line (every flag gets its values) or an inline mention (a trailing flag may stand alone)


# -- extraction ----------------------------------------------------------------------------------------
def _join_continued(lines: list[tuple[int, str]], fenced: bool) -> list[tuple[int, str]]:
    """Join ``\\``-continued lines (and, in a fenced synopsis, indented lines that continue a command). A
    trailing ``# comment`` is kept apart (its own entry, prefixed ``#``), so that a joined synopsis holds no
    prose; a whole-line comment is joined with its own ``#``-continuations."""
    out: list[tuple[int, str]] = []
    comments: list[tuple[int, str]] = []
    cont = False
    for no, line in lines:
        s = line.strip()
        is_comment = s.startswith("#")
        if not is_comment:
            s, comment = _strip_comment(s)
            s = s.rstrip()
            if comment.strip():
                comments.append((no, "#" + comment))
        target = comments if is_comment or (cont and comments and comments[-1][0] == no - 1 and not out) else out
        if cont and target:
            target[-1] = (target[-1][0], target[-1][1] + " " + (s.lstrip("#").strip() if is_comment else s))
        elif (fenced and out and not is_comment and line[:1].isspace() and s and not _STARTERS.match(s)
              and (s.startswith(("[", "--", "{")) or out[-1][1].count("{") > out[-1][1].count("}"))):
            out[-1] = (out[-1][0], out[-1][1] + "  " + s)
        else:
            target.append((no, s))
        cont = bool(target) and target[-1][1].endswith("\\")
        if cont:
            target[-1] = (target[-1][0], target[-1][1][:-1].rstrip())
    return sorted(out + comments)


def _spans(text: str, first_line: int) -> list[tuple[int, str]]:
    """Inline code spans (markdown `x` and reST ``x``) with their line numbers; a span may wrap."""
    out = []
    for m in re.finditer(r"(``?)(?!`)(.+?)(?<!`)\1(?!`)", text, flags=re.S):
        out.append((first_line + text.count("\n", 0, m.start()), " ".join(m.group(2).split())))
    return out


def _markdown(path: Path) -> list[tuple[int, str, bool]]:
    """(line, text, is_code) of a markdown file: code lines (fenced or indented) and inline spans of prose."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[tuple[int, str, bool]] = []
    block: list[tuple[int, str]] = []
    para: list[tuple[int, str]] = []
    fence = False

    def flush_para() -> None:
        if para:
            out.extend((n, s, False) for n, s in _spans("\n".join(t for _, t in para), para[0][0]))
            para.clear()

    for no, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            if fence:
                out.extend((n, s, True) for n, s in _join_continued(block, fenced=True))
                block = []
            else:
                flush_para()
            fence = not fence
            continue
        if fence:
            block.append((no, line))
        elif line.startswith("    ") and (_STARTERS.match(line.strip()) or line.strip().startswith("#")
                                         or (block and block[-1][1].rstrip().endswith("\\"))):
            flush_para()
            block.append((no, line))
        else:
            if block:
                out.extend((n, s, True) for n, s in _join_continued(block, fenced=False))
                block = []
            if line.strip():
                para.append((no, line))
            else:
                flush_para()
    out.extend((n, s, True) for n, s in _join_continued(block, fenced=False))
    flush_para()
    return out


def _python(path: Path) -> list[tuple[int, str, bool]]:
    """Code lines and inline spans of a module's docstring and of the ``help=``/``description=``/``epilog=``
    strings given to its parser."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    texts: list[tuple[int, str]] = []
    doc = tree.body[0] if tree.body and isinstance(tree.body[0], ast.Expr) else None
    if doc is not None and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
        texts.append((doc.lineno, doc.value.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg in ("help", "description", "epilog"):
                    parts = [c.value for c in ast.walk(kw.value)
                             if isinstance(c, ast.Constant) and isinstance(c.value, str)]
                    if parts:
                        texts.append((kw.value.lineno, "".join(parts)))
    out: list[tuple[int, str, bool]] = []
    for first, text in texts:
        lines = [(first + i, line) for i, line in enumerate(text.splitlines())]
        code = [(n, line) for n, line in lines if _STARTERS.match(line.strip())
                or (line.startswith(" ") and line.strip().startswith("["))]
        out.extend((n, s, True) for n, s in _join_continued(_with_continuations(lines, code), fenced=True))
        out.extend((n, s, False) for n, s in _spans(text, first))
    return out


def _with_continuations(lines: list[tuple[int, str]], code: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """``code`` plus the indented lines that follow a code line (a wrapped synopsis)."""
    keep = {n for n, _ in code}
    out = []
    for n, line in lines:
        if n in keep or (out and out[-1][0] == n - 1 and line[:1].isspace() and line.strip()
                         and (out[-1][1].rstrip().endswith("\\") or line.strip().startswith(("[", "--")))):
            out.append((n, line))
    return out


_POSECAL = re.compile(r"(?:^|(?<=[\s`(=]))posecal\s+([a-z][\w-]*)")
_BENCH = re.compile(r"(?:^|(?<=[\s`(/]))(?:benchmarks/)?(\w+)\.py\b")
_BARE = re.compile(rf"({'|'.join(SUBCOMMANDS)})\s+-")


def _strip_comment(text: str) -> tuple[str, str]:
    m = re.search(r"(?:^|\s)#", text)
    return (text, "") if m is None else (text[:m.start()], text[m.end():])


def _commands_in(where_file: str, line: int, text: str, code: bool) -> list[Cmd]:
    comment = text.lstrip().startswith("#")  # a command quoted in a comment ("# = posecal demo --lsp ...")
    body = text.lstrip().lstrip("#") if comment else text
    cmds: list[Cmd] = []
    for part in re.split(r"&&|;", body):
        part = re.split(r"\s\|\s(?=[a-z])|\s\d?>>?\s", part)[0]  # a shell pipe or a redirection ends it
        m = _POSECAL.search(part)
        b = next((b for b in _BENCH.finditer(part) if (BENCH / f"{b.group(1)}.py").exists()), None)
        if b is not None and (m is None or b.start() < m.start()):
            cmds.append(Cmd(f"{where_file}:{line}", part[b.end():], b.group(1), code and not comment))
        elif m is not None and (not comment or m.group(1) in SUBCOMMANDS):
            cmds.append(Cmd(f"{where_file}:{line}", part[m.start(1):], "posecal", code and not comment))
        elif not code and _BARE.match(part.strip()):  # a span naming a subcommand's flag: `apply --reorder`
            cmds.append(Cmd(f"{where_file}:{line}", part.strip(), "posecal", False))
    return cmds


def _sources() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(BENCH.glob("*.py")),
            *sorted((REPO / "src" / "posecal" / "cli").glob("*.py"))]


def collect() -> list[Cmd]:
    cmds: list[Cmd] = []
    for path in _sources():
        rel = path.relative_to(REPO).as_posix()
        entries = _markdown(path) if path.suffix == ".md" else _python(path)
        for line, text, code in entries:
            cmds.extend(_commands_in(rel, line, text, code))
    return cmds


# -- parsers -------------------------------------------------------------------------------------------
def _literal(node: ast.AST) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


_TYPES = {"int": int, "float": float, "str": str}


def bench_parser(name: str) -> argparse.ArgumentParser:
    """The benchmark script's argparse parser, rebuilt from its ``add_argument`` calls (the scripts import heavy
    modules; literal keywords are kept, others dropped)."""
    p = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", add_help=True)
    tree = ast.parse((BENCH / f"{name}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            names = [_literal(a) for a in node.args]
            kw = {}
            for k in node.keywords:
                if k.arg == "type" and isinstance(k.value, ast.Name):
                    if k.value.id in _TYPES:
                        kw["type"] = _TYPES[k.value.id]
                elif k.arg in ("nargs", "action", "choices", "required"):
                    v = _literal(k.value)
                    if v is not None:
                        kw[k.arg] = v
            if all(isinstance(n, str) for n in names):
                p.add_argument(*names, **kw)
    return p


_PARSERS: dict[str, argparse.ArgumentParser] = {}


def parser_for(prog: str) -> argparse.ArgumentParser:
    if prog not in _PARSERS:
        _PARSERS[prog] = build_parser() if prog == "posecal" else bench_parser(prog)
    return _PARSERS[prog]


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


# -- checking ------------------------------------------------------------------------------------------
def _tokens(text: str) -> list[str]:
    text = text.replace("`", " ")
    try:
        toks = shlex.split(text, posix=True)
    except ValueError:
        toks = text.split()
    out: list[str] = []
    for t in toks:  # a {a,b,...} list wrapped over lines is one token
        if out and out[-1].startswith("{") and "}" not in out[-1]:
            out[-1] += t
        else:
            out.append(t)
    clean = []
    for t in out:
        t = t.strip("[]()")
        if t.endswith((",", ":")) and not t.startswith("-"):
            t = t[:-1]
        if t and t != "|":
            clean.append(t)
    return clean


def _is_flag(tok: str) -> bool:
    return tok.startswith("-") and tok != "-" and not re.match(r"^-\d", tok)


def _placeholder(v: str) -> bool:
    return (bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", v)) or any(c in v for c in "{}<>*$…")
            or "..." in v or v in ("N", "K", "R", "S", "B", "W", "H", "X", "M"))


def _alternatives(v: str) -> list[str]:
    v = v.strip("{}")
    return [a for a in re.split(r"[|,]", v) if a]


def _check_value(where: str, flag: str, action: argparse.Action, value: str) -> list[str]:
    if _placeholder(value) or value in ELIDED:
        return []
    errs: list[str] = []
    alts = _alternatives(value) if action.choices is not None else [value]
    for alt in alts:
        if action.choices is not None and alt not in action.choices:
            errs.append(f"{where}: {flag}: {alt!r} is not one of {sorted(map(str, action.choices))}")
        elif action.type is not None and not _placeholder(alt) and action.choices is None and "|" not in value:
            try:
                action.type(alt)
            except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
                errs.append(f"{where}: {flag}: value {alt!r} rejected ({e})")
    return errs


def _arity(action: argparse.Action) -> tuple[int, int | None]:
    n = action.nargs
    if n is None:
        return 1, 1
    if isinstance(n, int):
        return n, n
    return {"?": (0, 1), "*": (0, None), "+": (1, None)}.get(n, (0, None))


def _target(cmd: Cmd, where: str, toks: list[str]) -> tuple[argparse.ArgumentParser | None, list[str], list[str]]:
    """The (sub)subcommand parser a command names, its remaining words, and the errors naming it."""
    parser = parser_for(cmd.prog)
    if cmd.prog == "posecal":
        if not toks or toks[0] not in SUBCOMMANDS:
            return None, [], [f"{where}: no such posecal subcommand {toks[:1]}"]
        parser, toks = _subparsers(parser)[toks[0]], toks[1:]
    subs = _subparsers(parser)
    if not subs:
        return parser, toks, []
    first = next((t for t in toks if not _is_flag(t)), None)
    if first is None or first in ELIDED or _placeholder(first):
        return None, [], []  # `posecal study` alone: nothing more to check
    errs = [f"{where}: no such subcommand {alt!r} (one of {sorted(subs)})"
            for alt in _alternatives(first) if alt not in subs]
    if errs:
        return None, [], errs
    return subs[_alternatives(first)[0]], [t for t in toks if t != first], []


def _flag_values(cmd: Cmd, where: str, action: argparse.Action, tok: str, toks: list[str],
                 i: int) -> tuple[int, list[str]]:
    """Consume the values of flag ``tok`` from ``toks[i:]``: the next index and the errors."""
    flag, _, inline = tok.partition("=")
    lo, hi = _arity(action)
    values = [inline] if inline else []
    while not inline and i < len(toks) and not _is_flag(toks[i]) and toks[i] not in ELIDED \
            and (hi is None or len(values) < hi):
        values.append(toks[i])
        i += 1
    elided = i < len(toks) and toks[i] in ELIDED
    errs = []
    if len(values) < lo and not elided and (cmd.strict or i < len(toks)):
        errs.append(f"{where}: {flag} takes {lo} value(s), got {values}")
    for v in values:
        errs += _check_value(where, flag, action, v)
    return i, errs


def check(cmd: Cmd) -> list[str]:
    """The errors of one command line against its parser (empty: it parses)."""
    where = f"{cmd.where} [{cmd.prog} {cmd.text.strip()[:60]}]"
    parser, toks, errs = _target(cmd, where, _tokens(cmd.text))
    if parser is None:
        return errs
    positionals = [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    i, lenient = 0, False
    while i < len(toks):
        tok = toks[i]
        i += 1
        if tok in ELIDED:
            lenient = True
        elif not _is_flag(tok):
            if positionals:
                errs += _check_value(where, positionals[0].dest, positionals[0], tok)
                if _arity(positionals[0])[1] == 1:
                    positionals.pop(0)
            elif not lenient and cmd.strict:
                errs.append(f"{where}: unexpected argument {tok!r}")
        else:
            lenient = False
            action = parser._option_string_actions.get(tok.partition("=")[0])
            if action is None:
                errs.append(f"{where}: {tok.partition('=')[0]} is not a flag of {parser.prog!r}")
                continue
            i, more = _flag_values(cmd, where, action, tok, toks, i)
            errs += more
    return errs


COMMANDS = collect()


def test_the_docs_hold_commands_to_check() -> None:
    """The extraction finds the commands it is meant to check (a regex gone blind would pass everything)."""
    progs = {c.prog for c in COMMANDS}
    subs = {c.text.split()[0] for c in COMMANDS if c.prog == "posecal" and c.text.split()}
    files = {c.where.split(":")[0] for c in COMMANDS}
    assert len(COMMANDS) > 100, len(COMMANDS)
    assert set(SUBCOMMANDS) <= subs, set(SUBCOMMANDS) - subs
    assert {"bench_table1", "demo_lsp", "coco17_cv"} <= progs, progs
    assert {"README.md", "docs/results.md", "docs/benchmarks.md", "src/posecal/cli/rescore.py"} <= files, files


def test_every_documented_command_parses() -> None:
    errs = [e for c in COMMANDS for e in check(c)]
    assert not errs, "doc commands the CLI does not accept:\n" + "\n".join(errs)


EXTERNAL_FLAGS = {"--nproc_per_node"}  # flags of other programs the docs quote (torchrun)


def _known_flags() -> set[str]:
    flags = set(EXTERNAL_FLAGS)
    for sub in _subparsers(parser_for("posecal")).values():
        for p in [sub, *_subparsers(sub).values()]:
            flags |= set(p._option_string_actions)
    for script in BENCH.glob("*.py"):
        flags |= set(parser_for(script.stem)._option_string_actions)
    return flags


def test_every_flag_the_docs_name_exists() -> None:
    """A flag named in an inline span of prose (`--reorder`, ``--oks-nms THR``) is a flag of some posecal subcommand or
    benchmark script (a renamed flag leaves such mentions behind)."""
    known = _known_flags()
    errs = []
    for path in _sources():
        rel = path.relative_to(REPO).as_posix()
        for line, text, code in (_markdown(path) if path.suffix == ".md" else _python(path)):
            if code:  # code lines: their commands are checked above (the others run programs not ours)
                continue
            for m in re.finditer(r"(?<![\w-])--[a-z][\w-]*(?![\w*-])", text):
                if m.group(0) not in known:
                    errs.append(f"{rel}:{line}: {m.group(0)} is no flag of posecal or of benchmarks/*.py")
    assert not errs, "\n".join(errs)


@pytest.mark.parametrize("text, fragment", [
    ("fit --store S --out H --no-such-flag", "--no-such-flag is not a flag"),
    ("rescore --method closed-forms --out X.json", "'closed-forms' is not one of"),
    ("fit --store S --out H --steps many", "value 'many' rejected"),
    ("export --model M.onnx --head H --out O.onnx --input-size 256", "--input-size takes 2 value(s)"),
    ("studies visibility --store S", "no such posecal subcommand"),
    ("study visibilty --store S --out D", "no such subcommand 'visibilty'"),
])
def test_the_checker_catches_a_stale_line(text: str, fragment: str) -> None:
    errs = check(Cmd("X.md:1", text, "posecal", True))
    assert any(fragment in e and e.startswith("X.md:1 ") for e in errs), errs


def test_the_checker_passes_synopses_and_placeholders() -> None:
    for text in ("rescore [--pred PRED.json] --method {closed-form,isotonic} [--area gt|pred|mean] --out NEW.json",
                 "fit --store STORE [--store MORE ...] --out HEAD_DIR [--steps N]",
                 "convert lsp|lspet JOINTS.mat --images DIR --out X.json",
                 "study visibility --store STORE --out DIR [--tau 0.2]"):
        assert check(Cmd("X.md:1", text, "posecal", True)) == [], text


def test_synopsis_defaults_are_the_parsers() -> None:
    """An optional flag shown with a number in a synopsis (``[--tau 0.2]``, ``[--resamples 1000]``) shows its
    default: the parser's, where the parser has one (a flag whose default is the recipe's or none is skipped)."""
    errs = []
    for c in COMMANDS:
        if c.prog != "posecal" or not c.text.split() or c.text.split()[0] not in SUBCOMMANDS:
            continue
        parser = _subparsers(parser_for("posecal"))[c.text.split()[0]]
        subs = _subparsers(parser)
        if subs:
            name = next((t for t in c.text.split()[1:] if t in subs), None)
            if name is None:
                continue
            parser = subs[name]
        for m in re.finditer(r"\[(--[\w-]+) (-?\d+(?:\.\d+)?(?:e-?\d+)?)\]", c.text):
            action = parser._option_string_actions.get(m.group(1))
            if action is None or not isinstance(action.default, (int, float)) or isinstance(action.default, bool):
                continue
            if float(m.group(2)) != float(action.default):
                errs.append(f"{c.where}: [{m.group(1)} {m.group(2)}] but the default is {action.default!r}")
    assert not errs, "\n".join(errs)


_DEFAULT = re.compile(r"default[s]?[:=]?\s+(-?\d+(?:\.\d+)?(?:e-?\d+)?)\b")


def test_help_strings_state_the_parsers_defaults() -> None:
    """A help text that says ``default N`` says the default argparse applies."""
    errs = []
    parser = build_parser()
    for name, sub in _subparsers(parser).items():
        for p in [sub, *_subparsers(sub).values()]:
            for a in p._actions:
                m = _DEFAULT.search(a.help or "") if isinstance(a.help, str) else None
                if m is None or isinstance(a.default, (list, tuple)) or a.default is None:
                    continue
                if isinstance(a.default, (int, float)) and float(m.group(1)) != float(a.default):
                    errs.append(f"posecal {name} {a.option_strings}: help says default {m.group(1)}, "
                                f"argparse default {a.default!r}")
    assert not errs, "\n".join(errs)


def test_model_card_examples_validate() -> None:
    """The JSON cards of docs/model-cards.md load as written."""
    import json

    from posecal.models.cards import validate_card

    text = (REPO / "docs" / "model-cards.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    tasks = {validate_card(json.loads(b), "docs/model-cards.md")["task"] for b in blocks}
    assert tasks == {"pose", "detector"}
