#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$PY -m pip install -q torch==2.13.0
# xtcocotools' PyPI wheel is built against NumPy 1.x; build it from source (a reference in tests).
$PY -m pip install -q numpy wheel cython setuptools
$PY -c "import xtcocotools.cocoeval" 2>/dev/null || \
  $PY -m pip install -q --no-binary xtcocotools --no-build-isolation xtcocotools
$PY -m pip install -q -e ".[test]"
$PY -m ruff check src tests benchmarks
$PY -m pytest -q -p no:cacheprovider "$@"
