"""Added latency of a CCNet head grafted onto the real SimplePose / MoveNet ONNX graphs (not a test; numbers go
to docs/benchmarks.md, "Export onto the real COCO-17 models").

For each ``--model M --head H`` pair (a head fitted with ``posecal fit`` on a store of that model), the
original model and the grafted one (``posecal.ccnet.export.export_calibrated``) run interleaved on the same
real crop (onnxruntime CPU, batch 1, ``--threads`` intra-op threads, order rotating), ``--reps`` times after
a warm-up; median and minimum per model and the added time in ms and in % of the model's.

``--profile N`` also runs every session N more times (interleaved) with onnxruntime's profiler
(``SessionOptions.enable_profiling``) and sums its per-node kernel times (each node's median over the runs):
the model's total, the graft's own nodes (``posecal_ccnet/`` names) and the change in the layout reorders
onnxruntime inserts (``Reorder*`` nodes); added = graft nodes + reorder change, in % of the model's total,
and the difference of the two totals (all nodes: the one to quote when the graft widens one of the model's
own nodes, ``fit --filter-rank``, whose node then counts as the graft's).
On a shared machine this is steadier than the difference of two wall-clock medians. ``--baseline F``
(one per ``--model``) times another grafted file of that model in the same rotation, e.g. one written by an
older posecal (``git stash; posecal export ...``), for a same-run before/after comparison.

    PYTHONPATH=src nice python3 benchmarks/bench_export_cards.py --threads 2 --reps 200 \\
        --model ../shared/models/simplepose/ultralight-nano-simplepose.onnx --head HEAD_SP \\
        --model ../shared/models/movenet/movenet-thunder.onnx --head HEAD_MN [--profile 100] [--json out.json] \\
        [--baseline SP_OLD.onnx --baseline MN_OLD.onnx]
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
    machine) of each profiling session, the sessions run interleaved (order rotating)."""
    keys = list(sessions)
    for i in range(runs):
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:
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


def _graft_kernel(kt: dict[str, dict[str, float]], k: str, runs: int) -> dict:
    """Added kernel time of graft ``k`` against ``kt["model"]``: its own nodes + the change in reorders."""
    tot = sum(kt["model"].values()) / 1e3
    graft = sum(v for n, v in kt[k].items() if n.startswith("posecal_ccnet/")) / 1e3
    reorder = {m: sum(t for n, t in kt[m].items() if n.startswith("Reorder")) / 1e3 for m in ("model", k)}
    added = graft + reorder[k] - reorder["model"]
    cal = sum(kt[k].values()) / 1e3
    top = sorted(((v, n) for n, v in kt[k].items() if n.startswith(("posecal_ccnet/", "Reorder"))), reverse=True)
    return {"model": tot, "calibrated": cal, "graft_nodes": graft,
            "reorders_model": reorder["model"], "reorders_calibrated": reorder[k], "added": added,
            "added_pct": 100 * added / tot, "added_total": cal - tot, "added_total_pct": 100 * (cal / tot - 1),
            "runs": runs, "top_nodes_us": {n: round(v, 1) for v, n in top[:8]}}


def _session(ort, path: str, threads: int, profile: bool = False):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"prof_{Path(path).stem}")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def bench(model: str, head: str, threads: int, reps: int, profile: int = 0, baseline: str | None = None) -> dict:
    """Model, grafted model [and ``baseline``, another grafted file of the same model, e.g. written by an
    older posecal] timed interleaved on one real crop."""
    import onnx
    import onnxruntime as ort

    from posecal.ccnet.export import export_calibrated
    from posecal.models.adapters.base import load_adapter
    from posecal.models.adapters.card import prepare_input

    ad = load_adapter(model)
    x = prepare_input(crop_for(ad)[None], ad.card["input"])
    name = ad.card["input"]["name"]
    files = {"model": model}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cal.onnx"
        summary = export_calibrated(model, head, out)
        files["calibrated"] = str(out)
        if baseline:
            files["baseline"] = baseline
        sess = {k: _session(ort, f, threads) for k, f in files.items()}
        prof = {k: _session(ort, f, threads, True) for k, f in files.items()} if profile else {}
        nodes = {k: sum(n.name.startswith("posecal_ccnet/") for n in onnx.load_model(f).graph.node)
                 for k, f in files.items() if k != "model"}
    feeds = {k: {name: x, **({"box_score": np.ones(1, np.float32)}
                             if any(i.name == "box_score" for i in s.get_inputs()) else {})} for k, s in sess.items()}
    t: dict[str, list[float]] = {k: [] for k in sess}
    for _ in range(10):
        for k, s in sess.items():
            s.run(None, feeds[k])
    keys = list(sess)
    for i in range(reps):
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:  # rotating order
            t0 = time.perf_counter()
            sess[k].run(None, feeds[k])
            t[k].append(1e3 * (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in t.items()}
    mn = {k: min(v) for k, v in t.items()}
    res = {"model": Path(model).name, "head": summary["head"], "added_nodes": summary["added_nodes"],
           "graft_nodes": nodes, "median_ms": med, "min_ms": mn, "reps": reps, "threads": threads,
           "load_avg_1min": os.getloadavg()[0]}
    for k in nodes:
        res[k] = {"added_ms_median": med[k] - med["model"], "added_pct_median": 100 * (med[k] / med["model"] - 1),
                  "added_pct_min": 100 * (mn[k] / mn["model"] - 1)}
    if profile:
        kt = kernel_times({k: (prof[k], feeds[k]) for k in prof}, profile)
        for k in nodes:
            res[k]["kernel_ms"] = _graft_kernel(kt, k, profile)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--head", action="append", required=True)
    ap.add_argument("--baseline", action="append", default=None,
                    help="per --model: another grafted ONNX of it to time alongside (e.g. from an older posecal)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--profile", type=int, default=0, help="runs with onnxruntime's per-node profiler (0: none)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    base = a.baseline or [None] * len(a.model)
    res = [bench(m, h, a.threads, a.reps, a.profile, b) for m, h, b in zip(a.model, a.head, base, strict=True)]
    for r in res:
        print(f"{r['model']} ({r['head']}, {r['reps']} reps, {r['threads']} threads, load {r['load_avg_1min']:.1f}): "
              f"model {r['median_ms']['model']:.2f} ms median")
        for k, n in r["graft_nodes"].items():
            print(f"  {k:<10} {n:3d} nodes {r['median_ms'][k]:8.2f} ms median: added {r[k]['added_ms_median']:+.3f} ms "
                  f"({r[k]['added_pct_median']:+.2f} % median, {r[k]['added_pct_min']:+.2f} % of the minima)")
            if "kernel_ms" in r[k]:
                q = r[k]["kernel_ms"]
                print(f"  {'':<10} kernel time (each node's median over {q['runs']} runs): model {q['model']:.2f} ms, "
                      f"graft nodes {q['graft_nodes']:.3f} ms, reorders {q['reorders_model']:.3f} -> "
                      f"{q['reorders_calibrated']:.3f} ms: added {q['added']:.3f} ms = {q['added_pct']:.2f} %; "
                      f"all nodes {q['calibrated']:.2f} ms: {q['added_total']:+.3f} ms = {q['added_total_pct']:+.2f} %")
                print(f"  {'':<10} largest graft/reorder nodes (us): {q['top_nodes_us']}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
