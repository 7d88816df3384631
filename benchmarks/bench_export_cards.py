"""Added latency of a CCNet head grafted onto the real SimplePose / MoveNet ONNX graphs (not a test; numbers go
to docs/benchmarks.md, "Export onto the real COCO-17 models").

For each ``--model M --head H`` pair (a head fitted with ``posecal fit`` on a store of that model), the
original model and the grafted one (``posecal.ccnet.export.export_calibrated``) run interleaved on the same
real crop (onnxruntime CPU, batch 1, ``--threads`` intra-op threads, order alternating), ``--reps`` times after
a warm-up; median and minimum per model and the added time in ms and in % of the model's.

``--profile N`` also runs both models N more times each (interleaved) with onnxruntime's profiler
(``SessionOptions.enable_profiling``) and sums its per-node kernel times (each node's median over the runs):
the model's total, the graft's own nodes (``posecal_ccnet/`` names) and the change in the layout reorders
onnxruntime inserts (``Reorder*`` nodes); added = graft nodes + reorder change, in % of the model's total.
On a shared machine this is steadier than the difference of two wall-clock medians.

    PYTHONPATH=src nice python3 benchmarks/bench_export_cards.py --threads 2 --reps 200 \\
        --model ../shared/models/simplepose/ultralight-nano-simplepose.onnx --head HEAD_SP \\
        --model ../shared/models/movenet/movenet-thunder.onnx --head HEAD_MN [--profile 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def crop_for(adapter) -> np.ndarray:
    """A real crop: the largest labelled person of coco-mini, cut as posecal extract cuts it."""
    from posecal.models.crop import crop_matrix, load_image, warp
    from posecal.theory.heatmap import topdown_crop_box

    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco-mini"
    d = json.loads((root / "person_keypoints_train2017.json").read_text())
    a = max((a for a in d["annotations"] if not a["iscrowd"]), key=lambda a: a["area"])
    im = next(i for i in d["images"] if i["id"] == a["image_id"])
    W, H = adapter.input_size
    b = topdown_crop_box(a["bbox"], (W, H))[0]
    return warp(load_image(root / "train2017" / im["file_name"]), crop_matrix(b[:2], b[2:], (W, H)), (W, H))


def kernel_times(sessions: dict, runs: int) -> dict[str, dict[str, float]]:
    """Per-node kernel time (µs, the median over ``runs`` runs: robust to the preemptions of a shared
    machine) of each profiling session, the sessions run interleaved."""
    for i in range(runs):
        for k in (list(sessions) if i % 2 == 0 else list(sessions)[::-1]):
            s, f = sessions[k]
            s.run(None, f)
    out = {}
    for k, (s, _) in sessions.items():
        path = s.end_profiling()
        per_node: dict[str, list[float]] = collections.defaultdict(list)
        for e in json.loads(Path(path).read_text()):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                per_node[e["name"][: -len("_kernel_time")]].append(e["dur"])
        os.unlink(path)
        out[k] = {n: statistics.median(v) for n, v in per_node.items()}
    return out


def bench(model: str, head: str, threads: int, reps: int, profile: int = 0) -> dict:
    import onnxruntime as ort

    from posecal.ccnet.export import export_calibrated
    from posecal.models.adapters.base import load_adapter
    from posecal.models.adapters.card import prepare_input

    ad = load_adapter(model)
    x = prepare_input(crop_for(ad)[None], ad.card["input"])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cal.onnx"
        summary = export_calibrated(model, head, out)
        s_cal = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
        if profile:
            prof = {}
            for k, path in (("model", model), ("calibrated", str(out))):
                sp = ort.SessionOptions()
                sp.intra_op_num_threads, sp.inter_op_num_threads, sp.log_severity_level = threads, 1, 3
                sp.enable_profiling, sp.profile_file_prefix = True, str(Path(tempfile.gettempdir()) / f"prof_{k}")
                prof[k] = ort.InferenceSession(path, sp, providers=["CPUExecutionProvider"])
    s_orig = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    name = ad.card["input"]["name"]
    feeds_cal = {name: x, **({"box_score": np.ones(1, np.float32)} if "box_score" in summary["inputs"] else {})}
    runs = {"model": (s_orig, {name: x}), "calibrated": (s_cal, feeds_cal)}
    t: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(10):
        for s, f in runs.values():
            s.run(None, f)
    for i in range(reps):
        for k in (("model", "calibrated") if i % 2 == 0 else ("calibrated", "model")):
            s, f = runs[k]
            t0 = time.perf_counter()
            s.run(None, f)
            t[k].append(1e3 * (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in t.items()}
    mn = {k: min(v) for k, v in t.items()}
    res = {"model": Path(model).name, "head": summary["head"], "added_nodes": summary["added_nodes"],
           "median_ms": med, "min_ms": mn, "added_ms_median": med["calibrated"] - med["model"],
           "added_pct_median": 100 * (med["calibrated"] / med["model"] - 1),
           "added_pct_min": 100 * (mn["calibrated"] / mn["model"] - 1), "reps": reps, "threads": threads}
    if profile:
        kt = kernel_times({"model": (prof["model"], {name: x}), "calibrated": (prof["calibrated"], feeds_cal)}, profile)
        tot = {k: sum(v.values()) / 1e3 for k, v in kt.items()}
        graft = sum(v for n, v in kt["calibrated"].items() if n.startswith("posecal_ccnet/")) / 1e3
        reorder = {k: sum(t for n, t in v.items() if n.startswith("Reorder")) / 1e3 for k, v in kt.items()}
        added = graft + reorder["calibrated"] - reorder["model"]
        top = sorted(((v, n) for n, v in kt["calibrated"].items()
                      if n.startswith(("posecal_ccnet/", "Reorder"))), reverse=True)[:8]
        res["kernel_ms"] = {"model": tot["model"], "calibrated": tot["calibrated"], "graft_nodes": graft,
                            "reorders_model": reorder["model"], "reorders_calibrated": reorder["calibrated"],
                            "added": added, "added_pct": 100 * added / tot["model"], "runs": profile,
                            "top_nodes_us": {n: round(v, 1) for v, n in top}}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--head", action="append", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--profile", type=int, default=0, help="runs with onnxruntime's per-node profiler (0: none)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    res = [bench(m, h, a.threads, a.reps, a.profile) for m, h in zip(a.model, a.head, strict=True)]
    for r in res:
        print(f"{r['model']:<36} {r['head']:<9} model {r['median_ms']['model']:7.2f} ms  calibrated "
              f"{r['median_ms']['calibrated']:7.2f} ms  added {r['added_ms_median']:+.3f} ms "
              f"({r['added_pct_median']:+.2f} % median, {r['added_pct_min']:+.2f} % min), {r['added_nodes']} nodes")
        if "kernel_ms" in r:
            k = r["kernel_ms"]
            print(f"{'':<36} kernel time ({k['runs']} runs): model {k['model']:.2f} ms, graft nodes "
                  f"{k['graft_nodes']:.3f} ms, layout reorders {k['reorders_model']:.3f} -> "
                  f"{k['reorders_calibrated']:.3f} ms: added {k['added']:.3f} ms = {k['added_pct']:.2f} % of the model")
            print(f"{'':<36} largest graft/reorder nodes (us): {k['top_nodes_us']}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
