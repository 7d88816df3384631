"""Extraction speed vs the bare model (not a test; numbers go to docs/benchmarks.md, "Extraction").

For each TFLite model, ms per crop (batch 1, real LSP crops, median of R runs after warm-up):
  bare      the original model file, default interpreter (XNNPACK delegate), set input + invoke + read outputs
  extract   TFLiteAdapter.predict: rewritten graph with the feature as an extra output, XNNPACK,
            incl. preprocessing, decoding and the feature copy
  preserve  experimental_preserve_all_tensors + BUILTIN_WITHOUT_DEFAULT_DELEGATES (the slow safe way)
Optionally (--full-lsp) times `posecal extract` over all 2000 LSP images (gt boxes, EfficientPose-I, gap).

    PYTHONPATH=src nice python3 benchmarks/bench_extract.py --threads 2 [--full-lsp] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSECAL_SHARED", ROOT.parent / "shared"))
MODELS = {
    "EfficientPose-RT": "efficientpose/EfficientPoseRT.tflite",
    "EfficientPose-I": "efficientpose/EfficientPoseI.tflite",
    "EfficientPose-II": "efficientpose/EfficientPoseII.tflite",
    "BlazePose-lite": "mediapipe/pose_landmark_lite.tflite",
    "BlazePose-full": "mediapipe/pose_landmark_full.tflite",
}


def lsp_crops(size, n=8):
    from posecal.datasets import read_lsp
    from posecal.models.crop import crop_matrix, load_image, warp
    from posecal.theory.heatmap import topdown_crop_box

    d = read_lsp(SHARED / "data/lsp/joints.mat", split="test")
    out = []
    for a in d["annotations"][:n]:
        img = load_image(SHARED / "data/lsp/images" / f"im{a['image_id']:04d}.jpg")
        b = topdown_crop_box(a["bbox"], size)[0]
        out.append(warp(img, crop_matrix(b[:2], b[2:], size), size))
    return np.stack(out)


def timeit(fn, crops, reps, warm=3):
    for i in range(warm):
        fn(crops[i % len(crops)][None])
    ts = []
    for i in range(reps):
        t = time.perf_counter()
        fn(crops[i % len(crops)][None])
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def timeit_pair(f, g, crops, reps, warm=3):
    """Interleaved timing of two functions (fair under varying machine load): medians in ms."""
    for i in range(warm):
        f(crops[i % len(crops)][None])
        g(crops[i % len(crops)][None])
    tf, tg = [], []
    for i in range(reps):
        c = crops[i % len(crops)][None]
        t = time.perf_counter()
        f(c)
        tf.append(time.perf_counter() - t)
        t = time.perf_counter()
        g(c)
        tg.append(time.perf_counter() - t)
    return 1000 * statistics.median(tf), 1000 * statistics.median(tg)


def bench_model(name, rel, threads, reps):
    from ai_edge_litert.interpreter import Interpreter

    from posecal.models.adapters.tflite import TFLiteAdapter

    path = SHARED / "models" / rel
    ad = TFLiteAdapter(path, num_threads=threads)
    crops = lsp_crops(ad.input_size)


    bare = Interpreter(model_path=str(path), num_threads=threads)
    bare.allocate_tensors()
    inp = bare.get_input_details()[0]["index"]
    outs = [d["index"] for d in bare.get_output_details()]

    def run_bare(c):
        bare.set_tensor(inp, ad.preprocess(c))
        bare.invoke()
        return [bare.get_tensor(o) for o in outs]

    slow = TFLiteAdapter(path, num_threads=threads, delegate="none")
    r = {
        "model": name,
        "input": list(ad.input_size),
        "tensor": ad.tensor_name,
        **dict(zip(("bare_ms", "extract_ms"), timeit_pair(run_bare, ad.predict, crops, reps), strict=True)),
        "preserve_ms": timeit(slow.predict, crops, max(reps // 2, 5)),
    }
    r["extract_over_bare"] = r["extract_ms"] / r["bare_ms"]
    r["preserve_over_bare"] = r["preserve_ms"] / r["bare_ms"]
    return r


def full_lsp(threads):
    from posecal.cli import main

    with tempfile.TemporaryDirectory() as td:
        data = Path(td) / "lsp.json"
        assert main(["convert", "lsp", str(SHARED / "data/lsp/joints.mat"), "--images",
                     str(SHARED / "data/lsp/images"), "--split", "all", "--out", str(data)]) == 0
        t = time.perf_counter()
        rc = main(["extract", "--model", str(SHARED / "models/efficientpose/EfficientPoseI.tflite"), "--data",
                   str(data), "--images", str(SHARED / "data/lsp/images"), "--out", str(Path(td) / "store"),
                   "--threads", str(threads), "--json"])
        wall = time.perf_counter() - t
        assert rc == 0
        size = sum(p.stat().st_size for p in (Path(td) / "store").rglob("*") if p.is_file())
    return {"crops": 2000, "wall_s": wall, "ms_per_crop": 1000 * wall / 2000, "store_bytes": size}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--full-lsp", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = [bench_model(m, MODELS[m], a.threads, a.reps) for m in a.models]
    print(f"threads={a.threads}  (ms per crop, batch 1, median of {a.reps})")
    print("| model | input | bare (XNNPACK) | extraction (feature as output, XNNPACK) | ratio "
          "| preserve-all-tensors | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['input'][0]}² | {r['bare_ms']:.1f} | {r['extract_ms']:.1f} | "
              f"{r['extract_over_bare']:.2f}× | {r['preserve_ms']:.1f} | {r['preserve_over_bare']:.2f}× |")
    res = {"threads": a.threads, "models": rows}
    if a.full_lsp:
        res["full_lsp"] = full_lsp(a.threads)
        f = res["full_lsp"]
        print(f"full LSP extraction (EfficientPose-I, 2000 crops, gap): {f['wall_s']:.1f} s, "
              f"{f['ms_per_crop']:.1f} ms/crop end to end, store {f['store_bytes'] / 1e6:.1f} MB")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
