"""Shared fixtures. Real data lives in ../shared (never copied into the repo).

Under CI (CI=true) a test that needs ../shared fails loudly if it is missing; elsewhere it skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the property tests with a fixed example sequence (reproducible failures, no flakiness from a new
# random draw); local runs keep exploring new examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSECAL_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared; fail under CI, skip elsewhere, when it does not exist."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"shared data missing: {p}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI=true: tests that need ../shared must not skip)")
        pytest.skip(msg)
    return p


@pytest.fixture
def shared():
    """The shared-data resolver: ``shared('data', 'lsp', 'joints.mat')``."""
    return shared_path
