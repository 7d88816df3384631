"""``posecal demo``: the whole story in one command — evaluate, closed form, fit CCNet, re-evaluate.

    posecal demo [--out DIR] [--json]       # SIMULATION, out: posecal-demo/ (posecal.theory.simulate), ~1 min
    posecal demo --lsp LSP_DIR --model EfficientPoseI.tflite [--out DIR] [--augment N] [--json]
        # real data, out: posecal-demo-lsp/

Without ``--lsp`` every number comes from the embedded **SIMULATION** (synthetic data generated under the
paper's assumptions, :mod:`posecal.theory.simulate`), and says so in the table, the JSON and the report. With
``--lsp DIR`` (``DIR/joints.mat``, ``DIR/images/``) and ``--model`` the real pipeline runs: convert LSP →
extract the train split (images 1–1000, optionally ``--augment N`` jittered copies) and the test split
(1001–2000) with heatmap-weighted pooling → evaluate the model's own scores (heatmap maximum, MMPose
``bbox_keypoint``) → closed-form rescoring (Eq. 12, σ̂ from the store's Gaussian fit, area of the predicted
box) → fit a CCNet head (the default recipe of ``posecal fit``) on the train split → apply it to the test
split → evaluate after.

The final table has one row per stage: AP and AR (COCO, OKS .50:.95), gap = AR − AP, Pearson correlation
of instance confidence with OKS, AUSE (instance, 1 − OKS); the HTML report (``DIR/index.html``) links a full
calibration report (:mod:`posecal.calibration.report`) per row. ``--json`` prints the table as JSON (it is
always written to ``DIR/demo.json``).

``DIR`` is built in a hidden sibling and moved into place whole, replacing a previous demo folder; a folder
holding anything else is refused. Ctrl-C leaves ``DIR`` as it was (with ``--lsp`` the work so far stays in
``.DIR.partial`` and the next run resumes it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from posecal.cli._args import nonneg_int, positive_int, threads
from posecal.errors import PosecalInputError

DEFAULT_OUT = {"simulation": "posecal-demo", "lsp": "posecal-demo-lsp"}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="end-to-end demo: evaluate, closed form, CCNet (simulation or LSP)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None,
                   help="output directory (report, table, head); default posecal-demo (simulation) or "
                   "posecal-demo-lsp (--lsp)")
    p.add_argument("--lsp", default=None, help="LSP directory (joints.mat, images/): run on real data")
    p.add_argument("--model", default=None, help="pose model for --lsp (EfficientPoseI.tflite)")
    p.add_argument("--augment", type=nonneg_int, default=0, help="--lsp: jittered copies per train instance")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="CCNet training steps (default: 2000 simulation; LSP: the default fit recipe's)")
    p.add_argument("--n-train", type=positive_int, default=4000, help="simulation: train instances")
    p.add_argument("--n-test", type=positive_int, default=2000, help="simulation: test instances")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="simulation: data (train 2·seed+1, test 2·seed+2) and CCNet seed; --lsp: augmentation and "
                   "CCNet seed")
    p.add_argument("--threads", type=threads, default=None, help="model / torch threads")
    p.add_argument("--json", action="store_true", help="print the before/after table as JSON on stdout")
    return p


DEMO_ENTRIES = ("before", "closed_form", "ccnet", "head", "work", "demo.json", "index.html")


def check_demo_folder(out: Path) -> None:
    """``--out`` may be new, empty or a previous demo's folder (it is replaced as a whole): refuse anything
    else before any work, so nothing of the user's is lost."""
    if not out.is_dir():
        return
    names = sorted(e.name for e in out.iterdir())
    foreign = [n for n in names if n not in DEMO_ENTRIES]
    if names and (foreign or "demo.json" not in names):
        what = f"holds {foreign[0]!r}" if foreign else "is not empty and holds no demo.json"
        raise PosecalInputError(f"{what}: not a posecal demo folder, and the demo replaces the folder as a "
                                "whole; choose a new or empty folder", file=str(out), field="--out")


def _publish(stage: Path, out: Path, doc: dict) -> None:
    """Write demo.json and index.html into the finished ``stage`` and move it to ``out`` in one rename."""
    from posecal._outputs import replace_dir
    from posecal._util import current_umask
    from posecal.demo import write_outputs

    write_outputs(stage, doc)
    os.chmod(stage, 0o777 & ~current_umask())  # mkdtemp makes it 0700; the report is meant to be shared
    replace_dir(stage, out)


def run(args: argparse.Namespace) -> int:
    from posecal._util import dumps_json
    from posecal.demo import SIM_BANNER, format_table, run_lsp, run_simulation

    if args.lsp is not None and not args.lsp.strip():  # else LSP_DIR '' is the current folder
        raise PosecalInputError("empty path", field="--lsp")
    if args.lsp is None and args.model is not None:
        raise PosecalInputError("--model needs --lsp DIR (without both: the simulation demo)", field="--lsp")
    from posecal._outputs import check_creatable, refuse_clobber

    out = Path(args.out or DEFAULT_OUT["lsp" if args.lsp is not None else "simulation"])
    refuse_clobber({"--lsp": args.lsp, "--model": args.model}, {"--out": out})
    check_creatable(out, "dir")
    check_demo_folder(out)
    if args.lsp is not None and args.model is None:
        raise PosecalInputError("--lsp needs --model (e.g. EfficientPoseI.tflite)", field="--model")
    # built in a hidden sibling and moved into place whole: OUT is never half-written
    if args.lsp is not None:
        stage = out.parent / f".{out.name}.partial"  # kept on Ctrl-C: the next run resumes its extraction
        fresh = not stage.exists()
        stage.mkdir(parents=True, exist_ok=True)
        try:
            doc = run_lsp(Path(args.lsp), Path(args.model), stage, augment=args.augment, steps=args.steps,
                          seed=args.seed, threads=args.threads)
            doc["provenance"]["head"] = str(out / "head")
            _publish(stage, out, doc)
        except KeyboardInterrupt:
            if stage.is_dir():
                print(f"posecal demo: the work so far is kept in {stage} (the next run resumes it); {out} was "
                      "not touched", file=sys.stderr)
            raise
        except BaseException:  # a failed real-data demo leaves nothing it made
            if fresh:
                shutil.rmtree(stage, ignore_errors=True)
            raise
    else:
        print(SIM_BANNER, file=sys.stderr)
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            doc = run_simulation(stage, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                                 steps=args.steps or 2000, threads=args.threads)
            _publish(stage, out, doc)
        finally:
            shutil.rmtree(stage, ignore_errors=True)  # gone already when published
    if args.json:
        sys.stdout.write(dumps_json(doc, indent=True).decode() + "\n")
    else:
        print(format_table(doc["table"], doc["label"]))
        print(f"report: {out / 'index.html'}  ({doc['seconds']:.0f} s)")
    return 0
