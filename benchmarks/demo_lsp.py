"""The real LSP demo, timed (not a test; numbers go to docs/results.md, "Demo").

Runs ``posecal demo --lsp LSP_DIR --model EfficientPoseI.tflite`` as a fresh process (so the wall time is
what a user waits, Python start-up and imports included), then writes the demo's table, the per-stage
times and the total wall time to ``--json``.

    PYTHONPATH=src nice python3 benchmarks/demo_lsp.py --threads 2 --out /tmp/posecal-demo-lsp \
        --json benchmarks/results/demo_lsp.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSECAL_SHARED", ROOT.parent / "shared"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lsp", default=str(SHARED / "data/lsp"))
    ap.add_argument("--model", default=str(SHARED / "models/efficientpose/EfficientPoseI.tflite"))
    ap.add_argument("--out", default="/tmp/posecal-demo-lsp")
    ap.add_argument("--augment", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="reuse --out (stores resume)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists() and not a.keep:
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "posecal", "demo", "--lsp", a.lsp, "--model", a.model, "--out", str(out),
           "--threads", str(a.threads), "--augment", str(a.augment), "--json"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        return p.returncode
    doc = json.loads(p.stdout)
    from posecal.cli.demo import format_table

    print(format_table(doc["table"], doc["label"]))
    print(f"wall time {wall:.1f} s (stages: {doc['stage_seconds']})")
    if a.json:
        rec = {"command": " ".join(["posecal", *cmd[3:]]), "wall_seconds": round(wall, 1),
               "cpu_count": os.cpu_count(), "threads": a.threads,
               "machine": platform.processor() or platform.machine(),
               "load_avg_at_end": os.getloadavg(), **doc}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rec, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
