"""DistributedDataParallel (gloo, 2 CPU processes) matches single-process training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from posecal.ccnet.checkpoint import load_head  # noqa: E402

WORKER = Path(__file__).with_name("_ccnet_ddp_worker.py")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(args: list[str], tmp: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    p = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300, cwd=tmp)
    assert p.returncode == 0, p.stdout + p.stderr


def test_ddp_two_processes_match_single_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _run([str(WORKER), str(single)], tmp_path)
    _run(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), str(ddp)],
        tmp_path,
    )
    h1, m1 = load_head(single)
    h2, m2 = load_head(ddp)
    assert m1["world_size"] == 1 and m2["world_size"] == 2
    s1, s2 = h1.state_dict(), h2.state_dict()
    for k in s1:
        np.testing.assert_allclose(s1[k].numpy(), s2[k].numpy(), rtol=0, atol=1e-4, err_msg=k)
    # and training moved the weights far more than the tolerance (the comparison is not vacuous)
    torch.manual_seed(3)
    from posecal.ccnet.heads import CCNetHead

    init = CCNetHead("kpt", 12, 5).state_dict()
    assert float((s1["weight"] - init["weight"]).abs().max()) > 1e-2
