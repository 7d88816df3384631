"""The two demo pipelines behind ``posecal demo`` (the CLI only parses and prints).

:func:`run_simulation`: SIMULATION (synthetic data generated under the paper's assumptions,
:mod:`posecal.theory.simulate`) — evaluate, closed form, fit a CCNet ``kpt`` head, re-evaluate.
:func:`run_lsp`: real data — convert LSP, extract train (1–1000) and test (1001–2000) with heatmap pooling,
evaluate the model's own scores (MMPose ``bbox_keypoint``), closed form (Eq. 12), fit CCNet with the
default recipe of :mod:`posecal.ccnet.fit`, apply, re-evaluate. Each writes a calibration report per row;
:func:`write_outputs` writes ``demo.json`` and ``index.html``.
"""

from __future__ import annotations

import contextlib
import html
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError, PosecalWarning

__all__ = ["SIM_BANNER", "COLUMNS", "Stages", "format_table", "write_outputs", "run_simulation", "run_lsp"]

SIM_BANNER = "SIMULATION — synthetic data from posecal.theory.simulate, not a real model"
COLUMNS = (("AP", "mAP"), ("AR", "mAR"), ("gap", "gap"), ("Pearson", "pearson_instance"),
           ("AUSE", "ause_instance"))


class Stages:
    """One progress bar per stage (``[i/n] name``) on stderr, with the stage's wall time recorded."""

    def __init__(self, names: list[str], show: bool | None = None):
        self.names, self.show, self.times = names, show, {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        from posecal._util import progress

        i = self.names.index(name) + 1
        kw = {} if self.show is None else {"disable": not self.show}
        bar = progress(total=1, desc=f"[{i}/{len(self.names)}] {name}", unit="stage", leave=True, **kw)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = round(time.perf_counter() - t0, 2)
            bar.update(1)
            bar.close()


def _audit_row(name: str, gt: Any, records: list[dict], report_dir: Path, title: str) -> dict[str, Any]:
    """Audit ``records`` against ``gt`` (posecal.calibration) and write its report; the table row."""
    from posecal.calibration.audit import run_audit
    from posecal.calibration.report import write_report
    from posecal.io.coco import load_results

    res = load_results(records, gt)
    a = run_audit(gt, res, n_random=2)
    write_report(a, report_dir, title=title)
    row = {"method": name, "report": f"{report_dir.name}/index.html"}
    for col, key in COLUMNS:
        v = a.metrics.get(key)
        row[col] = None if v is None else float(v)
    return row


def format_table(rows: list[dict[str, Any]], label: str) -> str:
    """Readable before/after table (AP/AR/gap in %, Pearson and AUSE as fractions)."""
    w = max(len(r["method"]) for r in rows)
    lines = [label, f"{'method':<{w}}  {'AP':>6}  {'AR':>6}  {'gap':>6}  {'Pearson':>7}  {'AUSE':>7}"]
    def f(r: dict[str, Any], k: str, pct: bool, width: int) -> str:
        v = r.get(k)
        if v is None:
            return f"{'n/a':>{width}}"
        return f"{100 * v:>{width}.2f}" if pct else f"{v:>{width}.4f}"

    for r in rows:
        lines.append(f"{r['method']:<{w}}  {f(r, 'AP', True, 6)}  {f(r, 'AR', True, 6)}  "
                     f"{f(r, 'gap', True, 6)}  {f(r, 'Pearson', False, 7)}  {f(r, 'AUSE', False, 7)}")
    return "\n".join(lines)


def _write_index(out: Path, doc: dict[str, Any]) -> None:
    from posecal._util import write_bytes_atomic

    label = doc["label"]
    head = "".join(f"<th>{c}</th>" for c in ("method", "AP %", "AR %", "gap %", "Pearson", "AUSE", "report"))
    body = []
    for r in doc["table"]:
        cells = [html.escape(r["method"])]
        for k, pct in (("AP", True), ("AR", True), ("gap", True), ("Pearson", False), ("AUSE", False)):
            v = r.get(k)
            cells.append("n/a" if v is None else (f"{100 * v:.2f}" if pct else f"{v:.4f}"))
        cells.append(f'<a href="{html.escape(r["report"])}">calibration report</a>')
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    banner = (f'<p style="background:#fd0;padding:.5em;font-weight:bold">{html.escape(SIM_BANNER)}</p>'
              if doc["simulation"] else "")
    prov = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
                   for k, v in doc["provenance"].items())
    figs = "".join(f'<figure><img src="{html.escape(r["report"].rsplit("/", 1)[0])}/reliability.png" '
                   f'style="max-width:32%"><figcaption>{html.escape(r["method"])}: reliability</figcaption>'
                   "</figure>" for r in doc["table"])
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="generator" content="posecal">
<title>posecal demo — {html.escape(label)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:1em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px}}figure{{display:inline-block;width:32%;margin:0}}
figure img{{max-width:100%!important}}</style></head>
<body><h1>posecal demo — {html.escape(label)}</h1>{banner}
<p>AP/AR: COCO keypoint AP/AR (OKS .50:.95); gap = AR − AP; Pearson: instance confidence vs OKS with the
matched gt; AUSE: area under the sparsification error (1 − OKS) minus the oracle's. Coordinates are never
changed: only the confidences differ between rows. <a href="demo.json">demo.json</a></p>
<table><tr>{head}</tr>{"".join(body)}</table>
<h2>Provenance</h2><ul>{prov}</ul><h2>Reliability diagrams</h2>{figs}
</body></html>
"""
    write_bytes_atomic(out / "index.html", page.encode(errors="backslashreplace"))


def write_outputs(out: Path, doc: dict[str, Any]) -> None:
    """Write ``demo.json`` and ``index.html`` (readable by colleagues: umask permissions)."""
    from posecal._util import write_json_atomic
    from posecal.ccnet.export import make_shareable

    write_json_atomic(out / "demo.json", doc)
    _write_index(out, doc)
    make_shareable(out / "demo.json", out / "index.html")


def run_simulation(out: Path, *, n_train: int = 4000, n_test: int = 2000, seed: int = 0, steps: int = 2000,
                   threads: int | None = None, show_progress: bool | None = None) -> dict[str, Any]:
    """SIMULATION demo (see the module docstring); returns the JSON document (``table`` rows)."""
    import torch

    from posecal.ccnet.apply import rescore_records
    from posecal.ccnet.train import TrainConfig, fit_head, predict
    from posecal.io.coco import load_gt, load_results
    from posecal.keypoints import COCO17
    from posecal.metrics.oks import keypoint_oks
    from posecal.rescore import ClosedFormRescorer
    from posecal.theory.simulate import simulate

    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    st = Stages(["simulate", "evaluate before", "closed-form", "fit CCNet", "apply CCNet", "evaluate after"],
                show_progress)
    with st("simulate"):
        # train and test are independent draws; the feature projection is shared (feature_seed)
        tr, te = simulate(n_train, seed=2 * seed + 1), simulate(n_test, seed=2 * seed + 2)
        gt = load_gt(te.gt)
    label = f"SIMULATION: heatmap model, {n_test} test / {n_train} train simulated instances"
    rows = []
    with st("evaluate before"):
        rows.append(_audit_row("raw (heatmap max, MMPose bbox_keypoint)", gt, te.heatmap_results,
                               out / "before", f"{SIM_BANNER}: raw scores"))
    with st("closed-form"):
        with warnings.catch_warnings():  # the same records as "evaluate before": warned there already
            warnings.simplefilter("ignore", PosecalWarning)
            pred = load_results(te.heatmap_results, gt)
        cf = ClosedFormRescorer(area="pred").transform(pred, gt)
        rows.append(_audit_row("closed-form (Eq. 12, predicted area)", gt, cf.to_records(pred),
                               out / "closed_form", f"{SIM_BANNER}: closed-form"))
    with st("fit CCNet"):
        g = np.concatenate([tr.gt_xy, tr.visibility[..., None]], -1)
        oks = keypoint_oks(tr.pred_heatmap, g, tr.area, COCO17.sigmas)
        cfg = TrainConfig(head="kpt", steps=steps, lr=3e-3, seed=seed)
        fit = fit_head(tr.features_kpt, oks, tr.visibility > 0, cfg, show_progress=show_progress is not False)
    with st("apply CCNet"):
        s, v = predict(fit.head, te.features_kpt)
        recs = rescore_records(te.heatmap_results, s, v)
    with st("evaluate after"):
        rows.append(_audit_row("CCNet (kpt head)", gt, recs, out / "ccnet", f"{SIM_BANNER}: CCNet"))
    return {"label": label, "simulation": True, "table": rows, "seconds": round(time.perf_counter() - t0, 1),
            "stage_seconds": st.times,
            "provenance": {"data": "posecal.theory.simulate (SIMULATION)", "train": f"simulate({n_train}, seed="
                           f"{2 * seed + 1})", "test": f"simulate({n_test}, seed={2 * seed + 2})",
                           "ccnet": cfg.to_dict(), "closed_form": "ClosedFormRescorer(area='pred')"}}


def _check_lsp_joints(adapter: Any, model: Path) -> None:
    """The model predicts every LSP-14 joint (by name: MPII-16 models such as EfficientPose do; COCO-17 models lack
    head top and neck), else one line naming ``--model`` and the missing joints, before anything is written."""
    from posecal.keypoints import LSP14
    from posecal.models.adapters.joints import joint_map

    missing = [n for n, j in zip(LSP14.names, joint_map(adapter.joint_names, LSP14.names, allow_missing=True),
                                 strict=True) if j < 0]
    if missing:
        raise PosecalInputError(f"{model.name} has no joint for LSP's {', '.join(missing)}: demo --lsp needs a model "
                                "that predicts LSP's 14 joints (an MPII-16 model such as EfficientPose); for other "
                                "models run convert / extract / fit / apply (README)", file=str(model), field="--model")


def run_lsp(lsp: Path, model: Path, out: Path, *, augment: int = 0, steps: int | None = None, seed: int = 0,
            threads: int | None = None, show_progress: bool | None = None) -> dict[str, Any]:
    """Real LSP demo (see the module docstring); returns the JSON document (``table`` rows).
    ``steps``: CCNet training steps (default: the recipe's)."""
    from dataclasses import replace

    import torch

    from posecal._util import write_json_atomic
    from posecal.ccnet.apply import rescore_records
    from posecal.ccnet.checkpoint import save_head
    from posecal.ccnet.fit import default_recipe, fit_from_stores, predict_store
    from posecal.ccnet.targets import load_store
    from posecal.datasets.lsp import read_lsp
    from posecal.io.coco import load_results
    from posecal.models.adapters.base import load_adapter
    from posecal.models.extract import DEFAULT_TARGET_SIGMA, extract
    from posecal.models.store import FeatureStore, file_sha256
    from posecal.rescore import ClosedFormRescorer

    t0 = time.perf_counter()
    joints, images = lsp / "joints.mat", lsp / "images"
    for p in (joints, images):
        if not p.exists():
            raise PosecalInputError("missing (expected LSP_DIR/joints.mat and LSP_DIR/images/)", file=str(p),
                                    field="--lsp")
    if threads:
        torch.set_num_threads(threads)
    adapter = load_adapter(model, num_threads=threads)  # a bad model fails before anything is written
    _check_lsp_joints(adapter, model)
    work = out / "work"
    st = Stages(["convert LSP", "extract train", "extract test", "evaluate before", "closed-form",
                 "fit CCNet", "apply CCNet", "evaluate after"], show_progress)
    with st("convert LSP"):
        for split in ("train", "test"):
            write_json_atomic(work / f"lsp_{split}.json", read_lsp(joints, images, split), indent=False)
    sha = file_sha256(model)
    pb = None if show_progress is None else bool(show_progress)
    with st("extract train"):
        extract(adapter, work / "lsp_train.json", images, work / "store_train", pooling="heatmap",
                augment=augment, seed=seed, model_sha256=sha, show_progress=pb)
    with st("extract test"):
        extract(adapter, work / "lsp_test.json", images, work / "store_test", pooling="heatmap",
                model_sha256=sha, show_progress=pb)
    test = load_store(str(work / "store_test"))
    gt = test.gt
    label = f"EfficientPose on LSP: test 1001–2000 ({len(test.records)}), train 1–1000" + \
        (f" ×{augment} augmented" if augment else "")
    if adapter.kind != "efficientpose":
        label = f"{model.name} on LSP: test 1001–2000, train 1–1000"
    rows = []
    with st("evaluate before"):
        rows.append(_audit_row("raw (heatmap max, MMPose bbox_keypoint)", gt, test.records, out / "before",
                               f"{label}: raw scores"))
    with st("closed-form"):
        with warnings.catch_warnings():  # the same records as "evaluate before": warned there already
            warnings.simplefilter("ignore", PosecalWarning)
            pred = load_results(test.records, gt)
        fs = FeatureStore.open(work / "store_test")
        cf = ClosedFormRescorer(area="pred", target_sigma=DEFAULT_TARGET_SIGMA.get(adapter.kind, 2.0),
                                input_size=tuple(adapter.input_size)).transform(pred, gt,
                                                                               sigma=fs.read("sigma_hat"))
        rows.append(_audit_row("closed-form (Eq. 12, σ̂ Gaussian fit, predicted area)", gt,
                               cf.to_records(pred), out / "closed_form", f"{label}: closed-form"))
    with st("fit CCNet"):
        train = load_store(str(work / "store_train"))
        recipe = default_recipe(train.meta, train.head_meta["feature_tensor"])
        recipe = replace(recipe, seed=seed, **({"steps": steps} if steps else {}))
        head, meta = fit_from_stores([train], recipe, show_progress=show_progress is not False)
        save_head(out / "head", head, meta)
    with st("apply CCNet"):
        s, v, _ = predict_store(head, test, recipe.evidence)
        recs = rescore_records(test.records, s, v)
    with st("evaluate after"):
        rows.append(_audit_row(f"CCNet ({recipe.head} head)", gt, recs, out / "ccnet", f"{label}: CCNet"))
    return {"label": label, "simulation": False, "table": rows, "seconds": round(time.perf_counter() - t0, 1),
            "stage_seconds": st.times,
            "provenance": {"model": f"{model.name} (sha256 {sha[:12]}…)", "data": str(lsp),
                           "train": f"LSP 1–1000, {len(train.records)} rows (augment {augment})",
                           "test": "LSP 1001–2000, gt boxes", "pooling": "heatmap", "ccnet": recipe.to_dict(),
                           "head": str(out / "head"), "threads": threads or os.cpu_count()}}
