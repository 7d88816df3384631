"""The docstring examples run and print what they say (a wrong example is a wrong document)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import posecal


def _modules_with_examples() -> list[str]:
    out = []
    for m in pkgutil.walk_packages(posecal.__path__, "posecal."):
        spec = importlib.util.find_spec(m.name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        with open(spec.origin, encoding="utf-8") as f:
            if ">>> " in f.read():
                out.append(m.name)
    return out


MODULES = _modules_with_examples()


def test_examples_are_found():
    assert {"posecal.keypoints", "posecal.rescore.aggregate", "posecal.ccnet.heads"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.attempted > 0 and res.failed == 0, f"{name}: {res.failed} of {res.attempted} examples failed"
