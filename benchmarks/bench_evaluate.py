#!/usr/bin/env python3
"""Benchmark: whole-process ``posecal evaluate`` vs pycocotools vs faster-coco-eval (COCO keypoints).

Generates seeded COCO-format keypoint sets (ground truth + detector-like results: one perturbed detection for
most people, plus false positives), then runs each evaluator as a fresh subprocess that loads both JSON files,
evaluates and prints the 10 stats. Reports wall time (best of ``--repeats``) and peak RSS of that child
(``os.wait4``), checks the three agree on the 10 stats, and writes a table to docs/benchmarks.md
(section "COCO evaluation") with ``--write-doc``.

    nice python3 benchmarks/bench_evaluate.py --write-doc          # both sizes
    python3 benchmarks/bench_evaluate.py --sizes small --repeats 1  # quick look
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {"small": (5_000, 2.2), "large": (50_000, 2.28)}  # images, mean people per image
FP_PER_IMAGE = 6.0  # mean false-positive detections per image (a person detector's low-score boxes)

NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
         "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
         "right_knee", "left_ankle", "right_ankle"]


def generate(n_images: int, per_image: float, seed: int, out_dir: Path) -> tuple[Path, Path, int, int]:
    """Write gt.json and pred.json; return their paths and the gt / detection counts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_per = rng.poisson(per_image, n_images)
    G = int(n_per.sum())
    img_of = np.repeat(np.arange(1, n_images + 1), n_per)
    s = np.exp(rng.uniform(np.log(20), np.log(400), G))  # person scale, pixels
    cx, cy = rng.uniform(0, 640, G), rng.uniform(0, 480, G)
    kp = np.empty((G, 17, 3))
    kp[:, :, 0] = cx[:, None] + rng.normal(0, 1, (G, 17)) * s[:, None] / 4
    kp[:, :, 1] = cy[:, None] + rng.normal(0, 1, (G, 17)) * s[:, None] / 3
    vis = rng.choice([0, 1, 2], size=(G, 17), p=[0.25, 0.15, 0.6])
    vis[rng.uniform(size=G) < 0.08] = 0  # people without labelled keypoints
    kp[:, :, 2] = vis
    kp[vis == 0, :2] = 0
    kp = np.round(kp, 2)
    area = np.round(s * s * rng.uniform(0.3, 0.7, G), 2)
    bbox = np.round(np.stack([cx - s / 2, cy - s / 2, s * 0.8, s], axis=1), 2)
    crowd = rng.uniform(size=G) < 0.01
    nk = np.count_nonzero(vis > 0, axis=1)
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480}
              for i in range(1, n_images + 1)]
    anns = [{"id": j + 1, "image_id": int(img_of[j]), "category_id": 1, "iscrowd": int(crowd[j]),
             "num_keypoints": int(nk[j]), "area": float(area[j]), "bbox": bbox[j].tolist(),
             "keypoints": kp[j].ravel().tolist()} for j in range(G)]
    gt = {"info": {"description": f"posecal benchmark seed {seed}"}, "images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "person", "supercategory": "person", "keypoints": NAMES,
                          "skeleton": []}]}
    # detections: 92 % of people found (scale-relative error), plus FP_PER_IMAGE false positives per image
    det_of = np.flatnonzero(rng.uniform(size=G) < 0.92)
    err = np.exp(rng.normal(np.log(0.05), 0.8, det_of.size))
    d_kp = np.empty((det_of.size, 17, 3))
    base = kp[det_of, :, :2].copy()
    lab = vis[det_of] > 0
    base[~lab] = np.stack([cx[det_of], cy[det_of]], axis=1)[:, None, :].repeat(17, 1)[~lab]
    d_kp[:, :, :2] = base + rng.normal(0, 1, (det_of.size, 17, 2)) * (err * s[det_of])[:, None, None]
    d_kp[:, :, 2] = rng.uniform(0.05, 1.0, (det_of.size, 17))
    d_score = np.clip(1.0 - err + rng.normal(0, 0.1, det_of.size), 0.01, 1.0)
    n_fp = rng.poisson(FP_PER_IMAGE, n_images)
    F = int(n_fp.sum())
    f_img = np.repeat(np.arange(1, n_images + 1), n_fp)
    f_kp = np.empty((F, 17, 3))
    f_kp[:, :, 0] = rng.uniform(0, 640, F)[:, None] + rng.normal(0, 30, (F, 17))
    f_kp[:, :, 1] = rng.uniform(0, 480, F)[:, None] + rng.normal(0, 40, (F, 17))
    f_kp[:, :, 2] = rng.uniform(0.0, 0.6, (F, 17))
    f_score = rng.uniform(0.01, 0.95, F)
    all_img = np.concatenate([img_of[det_of], f_img])
    all_kp = np.round(np.concatenate([d_kp, f_kp]), 3)
    all_score = np.round(np.concatenate([d_score, f_score]), 4)
    order = np.argsort(all_img, kind="stable")
    res = [{"image_id": int(all_img[i]), "category_id": 1, "keypoints": all_kp[i].ravel().tolist(),
            "score": float(all_score[i])} for i in order]
    out_dir.mkdir(parents=True, exist_ok=True)
    gp, pp = out_dir / "gt.json", out_dir / "pred.json"
    gp.write_text(json.dumps(gt))
    pp.write_text(json.dumps(res))
    return gp, pp, G, len(res)


PYCOCOTOOLS = """
import sys, json, contextlib, io
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1]); dt = gt.loadRes(sys.argv[2])
    ev = COCOeval(gt, dt, 'keypoints'); ev.evaluate(); ev.accumulate(); ev.summarize()
print('STATS', json.dumps([float(x) for x in ev.stats]))
"""

FASTER = """
import sys, json, contextlib, io
from faster_coco_eval import COCO, COCOeval_faster
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1]); dt = gt.loadRes(sys.argv[2])
    ev = COCOeval_faster(gt, dt, 'keypoints', print_function=lambda *a, **k: None)
    ev.evaluate(); ev.accumulate(); ev.summarize()
print('STATS', json.dumps([float(x) for x in ev.stats[:10]]))
"""


def run_child_wait4(cmd: list[str], env: dict) -> tuple[float, float, float, str]:
    """(wall s, CPU s = user + sys, peak RSS MiB, stdout) of one child, reaped with os.wait4 so the
    rusage is this child's own."""
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({p.returncode}): {err[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0, out


TWEAKS = ("blas", "malloc", "gc", "exit")  # posecal evaluate's process-level tweaks (POSECAL_PROCESS_TWEAKS)


def tools(gp: Path, pp: Path, out_json: Path, tweaks: bool, baseline: Path | None = None
          ) -> dict[str, tuple[list[str], dict]]:
    """tool name -> (command, extra environment)."""
    py = sys.executable
    pc = [py, "-m", "posecal", "evaluate", "--gt", str(gp), "--pred", str(pp), "--json", str(out_json)]
    out = {
        "posecal": (pc, {}),
        "pycocotools": ([py, "-c", PYCOCOTOOLS, str(gp), str(pp)], {}),
        "faster-coco-eval": ([py, "-c", FASTER, str(gp), str(pp)], {}),
    }
    if baseline is not None:  # another posecal source tree (e.g. main before a change), same files
        out["posecal (baseline)"] = (pc, {"PYTHONPATH": str(baseline)})
    if tweaks:  # each process-level tweak of posecal turned off alone
        for t in TWEAKS:
            out[f"posecal without {t}"] = (pc, {"POSECAL_PROCESS_TWEAKS": f"-{t}"})
    return out


@contextlib.contextmanager
def cpu_burner(on: bool):
    """With ``on``: another process keeps one core busy (a pure-Python spin loop) meanwhile."""
    if not on:
        yield
        return
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        p.kill()
        p.wait()


def bench_size(name: str, n_images: int, per_image: float, seed: int, repeats: int, work: Path,
               busy: bool = False, tweaks: bool = False, only: list[str] | None = None,
               baseline: Path | None = None) -> dict:
    d = work / name
    # generated in a child process: this parent stays small, so the children's peak RSS is their own
    # (Linux carries a forked parent's high-water mark into the child's ru_maxrss)
    out = subprocess.run([sys.executable, __file__, "--generate", str(n_images), str(per_image), str(seed),
                          str(d)], check=True, capture_output=True, text=True).stdout
    G, D = (int(v) for v in out.split())
    gp, pp = d / "gt.json", d / "pred.json"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    # byte-compile posecal as an install does (pycocotools and faster-coco-eval run from compiled
    # site-packages); with PYTHONDONTWRITEBYTECODE set, src/ would otherwise be recompiled on every run
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src" / "posecal")], check=True)
    out_json = d / "posecal_out.json"
    row = {"size": name, "images": n_images, "gts": G, "dets": D,
           "gt_mb": gp.stat().st_size / 2**20, "pred_mb": pp.stat().st_size / 2**20}
    stats = {}
    if baseline is not None:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(baseline / "posecal")], check=True)
    todo = tools(gp, pp, out_json, tweaks, baseline)
    if only:
        todo = {k: v for k, v in todo.items() if k in only}
    runs: dict[str, list] = {t: [] for t in todo}
    with cpu_burner(busy):
        for _ in range(repeats):  # round robin: every tool sees the same background load
            for tool, (cmd, extra) in todo.items():
                w, c, r, out = run_child_wait4(cmd, dict(env, **extra))
                runs[tool].append((w, c, r))
                if tool.startswith("posecal"):
                    doc = json.loads(out_json.read_text())
                    stats[tool] = [doc["coco"][k] for k in ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50",
                                                              "AR75", "ARm", "ARl")]
                else:
                    stats[tool] = json.loads(re.search(r"STATS (\[.*\])", out).group(1))
    for tool, rr in runs.items():
        walls, cpus, rsss = [x[0] for x in rr], [x[1] for x in rr], [x[2] for x in rr]
        row[tool] = {"wall_s": min(walls), "walls": walls, "cpu_s": min(cpus), "cpus": cpus,
                     "peak_rss_mib": max(rsss)}
        runs_s = ", ".join(f"{w:.2f}" for w in walls)
        print(f"  {name:5s} {tool:24s} best {min(walls):7.2f} s  (runs {runs_s})  CPU {min(cpus):7.2f} s"
              f"  peak RSS {max(rsss):7.0f} MiB", flush=True)
    row["tools"] = list(todo)
    row["stats"] = stats
    row["agree_pycocotools"] = stats.get("posecal") == stats.get("pycocotools")
    row["agree_faster"] = stats.get("posecal") == stats.get("faster-coco-eval")
    return row


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    return (f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}, "
            f"numpy {version('numpy')}, pycocotools {version('pycocotools')}, "
            f"faster-coco-eval {version('faster-coco-eval')}")


def section_title(busy: bool) -> str:
    return "## COCO evaluation, one core kept busy" if busy else "## COCO evaluation"


def markdown(rows: list[dict], repeats: dict, note: str, busy: bool = False, command: str = "") -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        section_title(busy),
        "",
        "<!-- written by benchmarks/bench_evaluate.py --write-doc; do not edit by hand -->",
        f"Measured {now} on {machine()}.",
        "",
        "Whole process (interpreter start, imports, JSON parsing, evaluation, summary) of each evaluator "
        "as a fresh subprocess on the same seeded COCO-keypoint files, the tools' runs interleaved (round "
        "robin); wall and CPU (user + sys) time are the best of the runs, peak memory the child's max RSS "
        "(`os.wait4`)"
        + (", while another process keeps one core busy (a Python spin loop, `--busy`)" if busy else "")
        + f". Command: `{command or 'nice python3 benchmarks/bench_evaluate.py --write-doc'}`.",
        "",
        "| set | images | gts | dets | tool | wall (s) | CPU (s) | peak RSS (MiB) "
        "| pycocotools / tool (wall) | stats = pycocotools |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = r["pycocotools"]["wall_s"]
        for tool in r["tools"]:
            t = r[tool]
            same = "yes" if r["stats"][tool] == r["stats"]["pycocotools"] else "NO"
            lines.append(f"| {r['size']} | {r['images']} | {r['gts']} | {r['dets']} | {tool} "
                         f"| {t['wall_s']:.2f} | {t['cpu_s']:.2f} | {t['peak_rss_mib']:.0f} "
                         f"| {ref / t['wall_s']:.1f}× | {same} |")
    lines.append("")
    for r in rows:
        p, c, f = r["posecal"], r["pycocotools"], r["faster-coco-eval"]
        target = 10 if r["images"] < 20000 else 15
        lines.append(
            f"- {r['size']} ({r['images']} images, {r['gts']} gts, {r['dets']} detections; files "
            f"{r['gt_mb']:.0f} + {r['pred_mb']:.0f} MB; {repeats[r['size']]} runs each): wall time posecal "
            f"is "
            f"**{c['wall_s'] / p['wall_s']:.1f}×** pycocotools (target ≥ {target}×) and "
            f"**{f['wall_s'] / p['wall_s']:.1f}×** faster-coco-eval (target ≥ 3×); CPU time "
            f"{c['cpu_s'] / p['cpu_s']:.1f}× and {f['cpu_s'] / p['cpu_s']:.1f}×; peak memory "
            f"{p['peak_rss_mib']:.0f} MiB vs pycocotools {c['peak_rss_mib']:.0f} MiB (target ≤)."
            + (f" The baseline source tree, same run: {c['wall_s'] / r['posecal (baseline)']['wall_s']:.1f}× "
               f"pycocotools (wall), {c['cpu_s'] / r['posecal (baseline)']['cpu_s']:.1f}× (CPU)."
               if "posecal (baseline)" in r else ""))
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_doc(section: str, busy: bool = False) -> Path:
    path = REPO / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# posecal benchmarks\n\n"
    pat = re.compile(re.escape(section_title(busy)) + r"\n.*?(?=\n## |\Z)", re.S)
    text = pat.sub(lambda _: section.rstrip("\n") + "\n", text) if pat.search(text) else \
        text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    return path


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--generate":
        _, _, n, per, seed, out = sys.argv
        _, _, G, D = generate(int(n), float(per), int(seed), Path(out))
        print(G, D)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["small", "large"], choices=list(SIZES))
    ap.add_argument("--repeats", type=int, default=None, help="runs per tool (default: 3 small, 2 large)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--workdir", type=Path, default=None, help="where the generated JSON goes (default: tmp)")
    ap.add_argument("--write-doc", action="store_true", help="write the table into docs/benchmarks.md")
    ap.add_argument("--note", default="", help="a remark appended to the doc section")
    ap.add_argument("--busy", action="store_true", help="keep one core busy with another process meanwhile")
    ap.add_argument("--tweaks", action="store_true",
                    help="also run posecal with each process-level tweak turned off (POSECAL_PROCESS_TWEAKS)")
    ap.add_argument("--baseline-src", type=Path, default=None, metavar="SRC",
                    help="also run posecal from this source tree ('posecal (baseline)', e.g. main's src)")
    ap.add_argument("--only", nargs="+", default=None, metavar="TOOL",
                    help="run only these tools (e.g. 'posecal' 'posecal without gc'); prints, writes no doc")
    args = ap.parse_args()
    rows, reps = [], {}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="posecal-bench-") as tmp:
        work = args.workdir or Path(tmp)
        for name in args.sizes:
            n_images, per = SIZES[name]
            reps[name] = args.repeats or (3 if name == "small" else 2)
            print(f"{name}: generating {n_images} images ...", flush=True)
            rows.append(bench_size(name, n_images, per, args.seed, reps[name], work, args.busy, args.tweaks,
                                   args.only, args.baseline_src))
    if args.only:
        for r in rows:
            for t in r["tools"]:
                w, c = sorted(r[t]["walls"]), sorted(r[t]["cpus"])
                print(f"{r['size']} {t:24s} wall best {w[0]:.3f} median {w[len(w) // 2]:.3f}   CPU best "
                      f"{c[0]:.3f} median {c[len(c) // 2]:.3f}  peak RSS {r[t]['peak_rss_mib']:.0f} MiB")
        return 0
    load = (f"Load average (1 min) at start / end: {load0:.1f} / {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} cores — the machine is shared, so wall times include waiting for a core; "
            "the CPU column is less affected.")
    cmd = "nice python3 benchmarks/bench_evaluate.py " + " ".join(sys.argv[1:])
    md = markdown(rows, reps, "\n\n".join(x for x in (load, args.note) if x), args.busy, cmd)
    print(md)
    if args.write_doc:
        print(f"wrote {write_doc(md, args.busy)}")
    ok = all(r["stats"][t] == r["stats"]["pycocotools"] for r in rows for t in r["tools"]
             if t.startswith("posecal"))
    if not ok:
        print("MISMATCH: posecal stats differ from pycocotools", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
