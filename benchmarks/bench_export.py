"""Added latency of a grafted CCNet head (not a test; numbers go to docs/benchmarks.md, "Export").

ONNX: a SimpleBaseline-style top-down model (ResNet-18 backbone, three 4×4 deconvolutions to 256×64×48, a 1×1
conv to 17 COCO heatmaps; 256×192 input; random weights — latency does not depend on their values) is
exported with torch, then each head kind is grafted with ``posecal.ccnet.export.export_calibrated``. onnxruntime
CPU, batch 1, ``--threads`` intra-op threads; model alone, calibrated model and the head subgraph alone
(the head-only ONNX on the model's own penultimate tensor): model alone and calibrated run interleaved
(same load, order alternating), the head subgraph in its own warm loop; median and minimum of ``--reps``
are reported, the added time in ms and in % of the model's. On a loaded machine the difference of two
~100 ms medians is noisier than the head's cost: the head-subgraph time is the precise figure.

TFLite (two-stage): ``TFLiteAdapter.predict`` of EfficientPose-I vs the head-only ONNX run on its output.

    PYTHONPATH=src nice python3 benchmarks/bench_export.py --threads 2 --reps 30 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSECAL_SHARED", ROOT.parent / "shared"))


def sbl_resnet18():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    for _ in range(3):
        layers += [nn.ConvTranspose2d(cin, 256, 4, 2, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU()]
        cin = 256
    net = nn.Sequential(*layers, nn.Conv2d(256, 17, 1))
    torch.manual_seed(0)
    return net.eval()


def _time(fns, reps):
    """Interleaved timing, the order reversed every other round (no first-in-round bias):
    (median ms per fn, minimum ms per fn)."""
    for f in fns:
        f()
        f()
    ts = [[] for _ in fns]
    for r in range(reps):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            ts[i].append(1000 * (time.perf_counter() - t0))
    return [statistics.median(t) for t in ts], [min(t) for t in ts]


def _save_random_head(head_dir, kind, feature_shape, K, meta):
    import torch

    from posecal.ccnet.checkpoint import save_head
    from posecal.ccnet.heads import build_head

    torch.manual_seed(1)
    head = build_head(kind, feature_shape, K)
    save_head(head_dir, head, meta)


def main() -> int:
    import onnxruntime as ort
    import torch

    from posecal.ccnet.export import export_calibrated, export_head_only
    from posecal.models.adapters.onnx import OnnxAdapter
    from posecal.models.store import file_sha256

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
    out: dict = {"threads": a.threads, "reps": a.reps, "onnx": [], "tflite": []}
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        model = td / "sbl_r18.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(sbl_resnet18(), (torch.zeros(1, 3, 256, 192),), str(model), dynamo=False,
                              input_names=["input"], output_names=["heatmaps"], opset_version=17)
        ad = OnnxAdapter(model)
        sha = file_sha256(model)
        x = np.random.default_rng(0).normal(size=(1, 3, 256, 192)).astype(np.float32)
        base = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        probe = ad.session.run([ad.output_name, ad.tensor_name], {"input": x})
        hm, feat = probe[0], probe[1]
        for pooling, kind, shape in (("gap", "fc", (256,)), ("heatmap", "kpt", (17, 256)),
                                     ("spatial", "conv_sigmoid_gap", (256, 64, 48)),
                                     ("spatial", "conv_gap", (256, 64, 48))):
            hd = td / f"head_{kind}"
            tname = {"gap": "features_gap", "heatmap": "features_kpt", "spatial": "features_spatial"}[pooling]
            meta = {"keypoint_set": "coco17", "feature_tensor": tname, "feature_shape": list(shape),
                    "pooling": pooling, "model_tensor": ad.tensor_name, "model_sha256": sha}
            _save_random_head(hd, kind, shape, 17, meta)
            cal_path = td / f"cal_{kind}.onnx"
            export_calibrated(model, hd, cal_path)
            cal = ort.InferenceSession(str(cal_path), so, providers=["CPUExecutionProvider"])
            ho_path = td / f"ho_{kind}.onnx"
            export_head_only(model, hd, ho_path)
            ho = ort.InferenceSession(str(ho_path), so, providers=["CPUExecutionProvider"])
            feeds = {"features": feat}
            if pooling == "heatmap":
                feeds["heatmaps"] = hm
            (t_base, t_cal), (m_base, m_cal) = _time(
                [lambda: base.run(None, {"input": x}), lambda cal=cal: cal.run(None, {"input": x})], a.reps)
            (t_ho,), _ = _time([lambda ho=ho, feeds=feeds: ho.run(None, feeds)], a.reps)  # warm, alone
            row = {"model": "SimpleBaseline-R18 256x192 (random weights)", "pooling": pooling, "head": kind,
                   "model_ms": round(t_base, 2), "calibrated_ms": round(t_cal, 2),
                   "added_ms": round(t_cal - t_base, 3),
                   "added_pct": round(100 * (t_cal - t_base) / t_base, 2), "model_min_ms": round(m_base, 2),
                   "calibrated_min_ms": round(m_cal, 2),
                   "added_min_pct": round(100 * (m_cal - m_base) / m_base, 2),
                   "head_subgraph_ms": round(t_ho, 3), "head_subgraph_pct": round(100 * t_ho / t_base, 2)}
            out["onnx"].append(row)
            print(row, flush=True)
        tfl = SHARED / "models/efficientpose/EfficientPoseI.tflite"
        if tfl.is_file():
            from posecal.ccnet.export import run_two_stage  # noqa: F401  (the two-stage helper being timed)
            from posecal.models.adapters.base import load_adapter

            tad = load_adapter(tfl, num_threads=a.threads)
            W, H = tad.input_size
            crop = np.random.default_rng(0).integers(0, 256, (1, H, W, 3), dtype=np.uint8)
            o = tad.predict(crop)
            for pooling, kind, shape in (("gap", "fc", (o.features.shape[1],)),
                                         ("heatmap", "kpt", (14, o.features.shape[1]))):
                hd = td / f"ep_head_{kind}"
                meta = {"keypoint_set": "lsp14", "feature_tensor": "features_gap" if pooling == "gap" else
                        "features_kpt", "feature_shape": list(shape), "pooling": pooling,
                        "model_tensor": tad.tensor_name, "model_sha256": file_sha256(tfl)}
                _save_random_head(hd, kind, shape, 14, meta)
                hp = td / f"ep_{kind}.onnx"
                export_head_only(tfl, hd, hp)
                sess = ort.InferenceSession(str(hp), so, providers=["CPUExecutionProvider"])
                feeds = {"features": o.features}
                if pooling == "heatmap":
                    feeds["heatmaps"] = o.heatmaps
                (t_model, t_head), _ = _time([lambda: tad.predict(crop),
                                         lambda sess=sess, feeds=feeds: sess.run(None, feeds)], a.reps)
                row = {"model": "EfficientPose-I TFLite (adapter.predict)", "pooling": pooling, "head": kind,
                       "model_ms": round(t_model, 2), "head_only_ms": round(t_head, 3),
                       "added_pct": round(100 * t_head / t_model, 2)}
                out["tflite"].append(row)
                print(row, flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
