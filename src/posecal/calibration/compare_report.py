"""``posecal compare --report DIR``: one HTML page deciding whether B's confidence beats A's.

Top: the deltas table (Δ = B − A with bootstrap intervals, :func:`posecal.calibration.compare.compare`);
below, A and B overlaid: PR curves at OKS 0.50 and 0.75, reliability diagrams (instance confidence vs OKS)
and sparsification curves (error 1 − OKS, with each file's oracle). Imports matplotlib (the ``report``
extra) through :mod:`posecal.calibration.report`. The page is built in a temporary folder next to ``DIR``
and renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from posecal._outputs import replace_dir
from posecal._util import write_bytes_atomic, write_json_atomic
from posecal.calibration.compare import METRICS, CompareResult, PerImageEval, accumulate_images, level_label
from posecal.calibration.metrics import calibration_error, sparsification
from posecal.calibration.report import _file_mode, _no_data, _placeholder, _plt, _save
from posecal.errors import PosecalInputError, PosecalWarning
from posecal.metrics.cocoeval import REC_THRS

__all__ = ["write_compare_report"]

_MEANING = {
    "AP": "COCO keypoint AP (OKS 0.50:0.95): how well the confidence ranks correct poses first",
    "AR": "COCO keypoint AR: the poses themselves (rescoring leaves it unchanged)",
    "pearson": "instance Pearson(confidence, OKS): higher = confidence tracks accuracy",
    "ause": "instance AUSE (error 1 − OKS): lower = better ranking of errors",
}


def _fig_pr(plt, pes: dict[str, PerImageEval], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, t in zip(axes, (0, 5), strict=True):
        for i, (name, pe) in enumerate(pes.items()):
            prec, _ = accumulate_images(pe, np.arange(pe.image_ids.size))
            p = np.where(prec[t] > -1, prec[t], np.nan)
            if not np.isfinite(p).any():
                continue
            curve = np.nanmean(p, axis=1)
            ax.plot(REC_THRS, curve, color=f"C{i}", label=f"{name}: AP@{0.5 + 0.05 * t:.2f} "
                    f"{np.nanmean(curve):.3f}")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=f"OKS {0.5 + 0.05 * t:.2f}")
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _fig_reliability(plt, pes: dict[str, PerImageEval], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    drawn = False
    lo, hi = 0.0, 1.0  # confidences outside [0, 1] are legal (heatmap maxima): the axis grows to show them
    for i, (name, pe) in enumerate(pes.items()):
        if pe.inst_conf.size == 0:
            continue
        r = calibration_error(pe.inst_conf, pe.inst_oks)
        lo, hi = min(lo, float(r.edges[0])), max(hi, float(r.edges[-1]))
        ok = r.count > 0
        ax.plot(r.mean_confidence[ok], r.mean_target[ok], "o-", color=f"C{i}", ms=4,
                label=f"{name}: ECE {r.ece:.3f}")
        drawn = True
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="perfect calibration")
    if not drawn:
        _no_data(ax)
    ax.set(xlabel="mean instance confidence in bin", ylabel="mean OKS in bin", xlim=(lo, hi),
           ylim=(min(0.0, lo), max(1.0, hi)), title="reliability (15 equal-width bins)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _fig_sparsification(plt, pes: dict[str, PerImageEval], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    drawn = False
    for i, (name, pe) in enumerate(pes.items()):
        if pe.inst_conf.size < 2:
            continue
        s = sparsification(pe.inst_conf, 1.0 - pe.inst_oks)
        ax.plot(s.fraction, s.curve, color=f"C{i}", label=f"{name}: AUSE {s.ause:.4f}")
        ax.plot(s.fraction, s.oracle, color=f"C{i}", ls=":", lw=1, label=f"{name}: oracle")
        drawn = True
    if not drawn:
        _no_data(ax)
    ax.set(xlabel="fraction removed (least confident first)", ylabel="mean 1 − OKS of the rest", xlim=(0, 1),
           title="sparsification")
    if drawn:  # no curve: no legend (matplotlib would warn "No artists with labels")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _draw(plt, fn, pes: dict[str, PerImageEval], path: Path) -> None:
    """Draw one figure; one that cannot be drawn (e.g. scores near ±1e308: no axis spans them) becomes a
    placeholder saying why, with a warning, so the page and its links stay whole."""
    try:
        with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Tight layout not applied")
            fn(plt, pes, path)
    except (ValueError, OverflowError) as e:
        plt.close("all")
        _placeholder(plt, path, f"not drawn: {e}")
        warnings.warn(f"{path.name}: not drawn ({e}); the numbers are in compare.json", PosecalWarning,
                      stacklevel=2)


FIGURES = {"pr_curves.png": _fig_pr, "reliability.png": _fig_reliability, "sparsification.png": _fig_sparsification}


def _cell(v: float | None, signed: bool = False) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    if abs(v) >= 1e6:  # a keypoint threshold can be any legal score, up to ±1.8e308: not 309 digits
        return f"{v:+.4g}" if signed else f"{v:.4g}"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def _kept_cell(d: dict) -> str:
    """One file's share kept and its threshold; none reaches the target: kept 0 and no threshold to show."""
    if d.get("threshold") is None:
        return "n/a" if d.get("kept") is None else f"{_cell(d['kept'])} (no threshold reaches it)"
    return f"{_cell(d['kept'])} (&ge; {_cell(d['threshold'])})"


def _threshold_table(kt: dict, pct: str) -> str:
    """The keypoint-threshold rows (:attr:`CompareResult.keypoint_thresholds`) as an HTML section."""
    e = html.escape
    if not kt:
        return ""
    head = ("<h2>Keypoint thresholds</h2><p>For a user who drops keypoints below a confidence threshold: the share "
            "of keypoints one threshold on each file's keypoint confidence keeps while at least the required share "
            f"of the kept ones is correct ({e(str(kt.get('correct')))}; pairs: {e(str(kt.get('pairs')))}). Higher "
            "is better; the same image resamples as above.</p>")
    rows = []
    for r in kt.get("targets", []):
        lo, hi = (v if v is not None else float("nan") for v in r["interval"])
        excl = np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0)
        rows.append(f"<tr><td>{100 * r['target']:g} %</td>"
                    + "".join(f"<td>{_kept_cell(r[w])}</td>" for w in ("a", "b"))
                    + f"<td><b>{_cell(r['delta'], True)}</b></td><td>[{_cell(lo, True)}, {_cell(hi, True)}]"
                    f"{' *' if excl else ''}</td><td>{_cell(r['p_better'])}</td></tr>")
    return (head + f"<table><tr><th>required share correct</th><th>A kept (threshold)</th><th>B kept (threshold)"
            f"</th><th>Δ = B − A</th><th>{pct} % interval</th><th>P(B better)</th></tr>{''.join(rows)}</table>")


def _html(res: CompareResult, names: dict[str, str]) -> str:
    e = html.escape
    rows = []
    for m in METRICS:
        lo, hi = res.interval[m]
        excl = np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0)
        rows.append(f"<tr><td><b>{m}</b></td><td>{_cell(res.a[m])}</td><td>{_cell(res.b[m])}</td>"
                    f"<td><b>{_cell(res.delta[m], True)}</b></td><td>[{_cell(lo, True)}, {_cell(hi, True)}]"
                    f"{' *' if excl else ''}</td><td>{_cell(res.p_better[m])}{' (all tied)' if res.all_tied(m) else ''}"
                    f"</td><td>{e(_MEANING[m])}{f' <i>(n/a: {e(res.reason(m))})</i>' if res.reason(m) else ''}"
                    "</td></tr>")
    left = [f"{m} {res.resamples - res.used(m)}" for m in METRICS if 0 < res.used(m) < res.resamples]
    left_p = (f"<p>Resamples left out (Δ undefined there: no person drawn, or fewer than 2 pairs): "
              f"{e(', '.join(left))}.</p>") if left else ""
    warn_p = ("<p><b>Warnings:</b></p><ul>" + "".join(f"<li>{e(w)}</li>" for w in res.warnings) + "</ul>"
              if res.warnings else "")
    pct = level_label(res.level)
    lo_q, hi_q = (1 - res.level) / 2 * 100, (1 + res.level) / 2 * 100
    evaluator = (f"{res.flavor}{'' if res.use_area else ', OKS on 0.53·w·h of the gt box'}"
                 f"{', the 17 body keypoints of COCO-WholeBody' if res.keypoints == 'body' else ''}")
    figs = "".join(f'<h2>{e(f[:-4].replace("_", " "))}</h2><img src="{f}" alt="{e(f)}">' for f in FIGURES)
    return f"""<!doctype html><html><head><meta charset="utf-8"><meta name="generator" content="posecal">
<title>posecal compare</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:4px 10px;
border-bottom:1px solid #ddd;text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>posecal compare: B − A</h1>
<p>A = <code>{e(names['A'])}</code><br>B = <code>{e(names['B'])}</code><br>
ground truth = <code>{e(names['gt'])}</code></p>
<table><tr><th>metric</th><th>A</th><th>B</th><th>Δ = B − A</th><th>{pct} % interval</th>
<th>P(B better)</th><th>meaning</th></tr>{''.join(rows)}</table>{warn_p}
<p>Paired bootstrap over the {res.images} images: {res.resamples} resamples (images drawn with replacement,
the same draws for A and B), seed {res.seed}; AP/AR recomputed exactly per resample ({e(evaluator)}).
Interval: {pct} % percentile interval (the {lo_q:.10g}th and {hi_q:.10g}th percentiles of the resampled Δ,
linear interpolation). * = the interval excludes 0. P(B better): fraction of resamples where B beats A,
ties (Δ exactly 0) counted as half; "all tied": B equals A on every resample.</p>{left_p}
{_threshold_table(res.keypoint_thresholds, pct)}
{figs}</body></html>"""


def write_compare_report(res: CompareResult, pes: dict[str, PerImageEval], out_dir: str | os.PathLike,
                         names: dict[str, str]) -> dict[str, Path]:
    """Write ``index.html``, ``compare.json`` and the figures into ``out_dir`` (replaced as a whole).

    ``pes``: ``{"A": PerImageEval, "B": PerImageEval}``; ``names``: ``{"A", "B", "gt"}`` file names shown."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PosecalInputError("exists and is not a folder", file=str(out), field="--report")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as err:
        raise PosecalInputError(f"cannot create the report folder: {err.strerror or err}", file=str(out),
                                field="--report") from None
    try:
        plt = _plt()
        for name, fn in FIGURES.items():
            _draw(plt, fn, pes, tmp / name)
        write_json_atomic(tmp / "compare.json", {**res.to_dict(), "files": names})
        write_bytes_atomic(tmp / "index.html", _html(res, names).encode(errors="backslashreplace"))
        mode = _file_mode()
        for p in tmp.iterdir():
            os.chmod(p, mode)
        os.chmod(tmp, mode | ((mode & 0o444) >> 2))  # a folder: x wherever r (mkdtemp makes it 0700)
        replace_dir(tmp, out)  # the old report or the new one, never neither (Ctrl-C held back meanwhile)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {p.name: p for p in out.iterdir()}
