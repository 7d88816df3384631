"""`posecal fit` / `posecal apply` on a small synthetic feature store (written with posecal.models.store)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

torch = pytest.importorskip("torch")

from posecal.cli import main  # noqa: E402
from posecal.io.coco import load_gt, load_results  # noqa: E402
from posecal.keypoints import LSP14  # noqa: E402
from posecal.metrics.cocoeval import evaluate  # noqa: E402
from posecal.models.store import StoreWriter  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
K = LSP14.num_keypoints


def make_store(path: Path, *, N: int = 160, C: int = 6, seed: int = 0, sha: str = "abc") -> Path:
    """N one-person images; prediction error scale e_i per instance; features carry log e_i + noise."""
    rng = np.random.default_rng(seed)
    gt_kp = np.zeros((N, K, 3))
    gt_kp[..., :2] = rng.uniform(20, 120, (N, K, 2))
    gt_kp[..., 2] = np.where(rng.random((N, K)) < 0.15, 1, 2)
    gt_kp[rng.random((N, K)) < 0.05, 2] = 0  # a few unlabelled keypoints
    gt_kp[gt_kp[..., 2] == 0, :2] = 0
    area = rng.uniform(3000, 9000, N)
    err = np.exp(rng.normal(1.0, 0.8, (N, K)))  # pixels
    pred = gt_kp[..., :2] + rng.normal(size=(N, K, 2)) * err[..., None]
    feats = np.concatenate(
        [np.log(err)[..., None] + 0.3 * rng.normal(size=(N, K, 1)), rng.normal(size=(N, K, C - 1))], -1
    ).astype(np.float32)
    raw = rng.uniform(0.2, 1.0, (N, K))  # uninformative raw scores
    images = [{"id": i + 1, "file_name": f"{i + 1}.jpg", "width": 200, "height": 200} for i in range(N)]
    anns = [
        {
            "id": i + 1,
            "image_id": i + 1,
            "category_id": 1,
            "iscrowd": 0,
            "area": float(area[i]),
            "bbox": [0.0, 0.0, 150.0, 150.0],
            "keypoints": gt_kp[i].reshape(-1).tolist(),
            "num_keypoints": int((gt_kp[i, :, 2] > 0).sum()),
        }
        for i in range(N)
    ]
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "person", "keypoints": list(LSP14.names), "skeleton": []}],
    }
    settings = {
        "model_sha256": sha,
        "tensor": "feat",
        "keypoint_set": "lsp14",
        "keypoint_names": list(LSP14.names),
        "pooling": "heatmap",
        "input_size": [200, 200],
    }
    w = StoreWriter(path, num_instances=N, chunk_size=64, settings=settings)
    for j in w.pending_chunks():
        a, b = w.chunk_rows(j)
        w.write_chunk(
            j,
            {
                "image_id": np.arange(a, b, dtype=np.int64) + 1,
                "ann_id": np.arange(a, b, dtype=np.int64) + 1,
                "bbox": np.tile([0.0, 0.0, 150.0, 150.0], (b - a, 1)),
                "box_score": np.ones(b - a),
                "crop_transform": np.tile(np.eye(2, 3), (b - a, 1, 1)),
                "keypoints": pred[a:b],
                "scores": raw[a:b],
                "sigma_hat": np.full((b - a, K), np.nan),
                "features_kpt": feats[a:b],
            },
        )
    w.finalize(gt=gt)
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("ccnet_cli")
    train, test = make_store(d / "train", seed=0), make_store(d / "test", seed=1)
    rc = main(
        [
            "fit",
            "--store",
            str(train),
            "--out",
            str(d / "head"),
            "--steps",
            "600",
            "--batch-size",
            "32",
            "--val-store",
            str(test),
            "--eval-every",
            "300",
            "--lr",
            "1e-2",
        ]
    )
    assert rc == 0
    return d


def test_fit_writes_head_with_metadata(fitted):
    meta = orjson.loads((fitted / "head" / "head.json").read_bytes())
    assert meta["keypoint_set"] == "lsp14" and meta["feature_tensor"] == "features_kpt"
    assert meta["feature_shape"] == [K, 6] and meta["pooling"] == "heatmap" and meta["head"] == "kpt"
    assert [h["step"] for h in meta["history"]] == [300, 600]
    assert meta["train"]["steps"] == 600 and meta["train"]["lam"] == 0.2
    assert (fitted / "head" / "head.safetensors").is_file()


def test_apply_keeps_coordinates_and_ar(fitted, capsys):
    out = fitted / "calibrated.json"
    assert (
        main(["apply", "--store", str(fitted / "test"), "--head", str(fitted / "head"), "--out", str(out)])
        == 0
    )
    before = orjson.loads((fitted / "test" / "predictions.json").read_bytes())
    after = orjson.loads(out.read_bytes())
    assert len(before) == len(after)
    for b, a in zip(before, after, strict=True):
        assert a["keypoints"][0::3] == b["keypoints"][0::3] and a["keypoints"][1::3] == b["keypoints"][1::3]
        assert len(a["visibility"]) == K and a["image_id"] == b["image_id"]
    gt = load_gt(fitted / "test" / "gt.json")
    ev_b = evaluate(gt, load_results(before, gt))
    ev_a = evaluate(gt, load_results(after, gt))
    assert ev_a.stats["AR"] == ev_b.stats["AR"]  # bit-identical: coordinates untouched
    # the features carry each keypoint's error scale, the raw scores do not: AP must rise
    assert ev_a.stats["AP"] > ev_b.stats["AP"] + 0.02


def test_apply_refuses_mismatched_store(fitted, tmp_path, capsys):
    other = make_store(tmp_path / "other", C=7, sha="def")
    out = tmp_path / "x.json"
    rc = main(["apply", "--store", str(other), "--head", str(fitted / "head"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "feature_shape: head [14, 6] vs store [14, 7]" in err and "model_sha256" in err


def test_fit_ddp_matches_single_process(tmp_path):
    store = make_store(tmp_path / "s", N=96)
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    args = [
        "-m",
        "posecal",
        "fit",
        "--store",
        str(store),
        "--steps",
        "150",
        "--batch-size",
        "16",
        "--seed",
        "2",
    ]
    for cmd in (
        [sys.executable, *args, "--out", str(tmp_path / "h1")],
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            *args,
            "--out",
            str(tmp_path / "h2"),
        ],
    ):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert p.returncode == 0, p.stdout + p.stderr
    from posecal.ccnet.checkpoint import load_head

    (h1, m1), (h2, m2) = load_head(tmp_path / "h1"), load_head(tmp_path / "h2")
    assert m1["train"]["world_size"] == 1 and m2["train"]["world_size"] == 2
    for k, v in h1.state_dict().items():
        np.testing.assert_allclose(v.numpy(), h2.state_dict()[k].numpy(), rtol=0, atol=1e-4, err_msg=k)
    # training moved the weights far beyond that tolerance (the comparison is not vacuous)
    assert main([*args[2:], "--steps", "1", "--out", str(tmp_path / "h0")]) == 0
    h0, _ = load_head(tmp_path / "h0")
    assert float((h1.weight - h0.weight).detach().abs().max()) > 1e-2


def test_fit_refuses_bad_input_with_exit_2(fitted, tmp_path, capsys):
    store = fitted / "train"
    rc = main(["fit", "--store", str(store), "--out", str(tmp_path / "h"), "--head", "fc"])
    assert rc == 2 and "head 'fc' reads features_gap, the store has features_kpt" in capsys.readouterr().err
    rc = main(["fit", "--store", str(tmp_path / "nope"), "--out", str(tmp_path / "h")])
    assert rc == 2 and "no meta.json" in capsys.readouterr().err
    other = make_store(tmp_path / "other", C=7)
    rc = main(["fit", "--store", str(store), "--store", str(other), "--out", str(tmp_path / "h")])
    assert rc == 2 and "feature_shape" in capsys.readouterr().err
    rc = main(["fit", "--store", str(store), "--out", str(tmp_path / "h"), "--head", "kpt_pose", "--evidence",
               "pose", "--filter-rank", "3", "--steps", "2"])
    assert rc == 2 and "filter_rank applies to 'kpt' / 'kpt_inst' heads" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["fit", "--store", str(store), "--out", str(tmp_path / "h"), "--filter-rank", "-1"])
    assert e.value.code == 2
    rc = main(["fit", "--store", str(store), "--val-store", f"{store}/.", "--out", str(tmp_path / "h")])
    err = capsys.readouterr().err
    assert rc == 2 and "'--val-store'" in err and "is also a training store" in err
    assert not (tmp_path / "h").exists()
    # fitting into an existing head's folder replaces it, and says so
    argv = ["fit", "--store", str(store), "--out", str(tmp_path / "h2"), "--steps", "3", "--batch-size", "32"]
    assert main(argv) == 0 and "replaced" not in capsys.readouterr().err
    assert main(argv) == 0 and "h2: replaced the head that was there" in capsys.readouterr().err


def test_fit_head_refuses_non_finite_features():
    from posecal.ccnet.train import TrainConfig, fit_head
    from posecal.errors import PosecalInputError

    X = np.ones((10, K, 3), np.float32)
    X[3, 2, 1] = np.nan
    with pytest.raises(PosecalInputError, match="NaN or infinite"):
        fit_head(X, np.full((10, K), 0.5), np.ones((10, K)), TrainConfig(steps=1), show_progress=False)
