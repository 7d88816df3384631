"""`posecal demo` on the embedded SIMULATION: runs end to end, labels itself, improves AP, leaves AR alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from posecal.cli import main  # noqa: E402


def test_simulation_demo_improves_ap_and_keeps_ar(tmp_path, capsys):
    from posecal.io.coco import load_gt, load_results
    from posecal.metrics.cocoeval import evaluate
    from posecal.theory.simulate import simulate

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads((out / "demo.json").read_text())
    assert doc["simulation"] is True and "SIMULATION" in doc["label"]
    rows = {r["method"].split(" ")[0]: r for r in doc["table"]}
    before, cf, after = rows["raw"], rows["closed-form"], rows["CCNet"]
    assert after["AP"] > before["AP"] and cf["AP"] > before["AP"]
    assert after["AR"] == before["AR"] == cf["AR"]  # one person per image: AR does not depend on scores
    assert after["Pearson"] > before["Pearson"] and after["AUSE"] < before["AUSE"]
    # the "before" row is the evaluator's AP of the simulated model's own results (recomputed here)
    te = simulate(2000, seed=2)
    gt = load_gt(te.gt)
    ev = evaluate(gt, load_results(te.heatmap_results, gt), warn=False)
    assert before["AP"] == pytest.approx(ev.stats["AP"], abs=1e-12)
    assert before["AR"] == pytest.approx(ev.stats["AR"], abs=1e-12)
    assert np.isclose(before["gap"], before["AR"] - before["AP"])
    page = (out / "index.html").read_text()
    assert "SIMULATION" in page
    for sub in ("before", "closed_form", "ccnet"):
        assert (out / sub / "index.html").is_file() and (out / sub / "reliability.png").stat().st_size > 1000
        assert f"{sub}/index.html" in page
        assert "SIMULATION" in (out / sub / "index.html").read_text()


def test_demo_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "x"), "--model", "m.tflite"]) == 2
    assert main(["demo", "--out", str(tmp_path / "x"), "--lsp", str(tmp_path), "--model", "m.tflite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("posecal demo: error:") for e in err)
    assert not (tmp_path / "x" / "demo.json").exists()


def test_demo_default_output_folders_differ():
    from posecal.cli import build_parser
    from posecal.cli.demo import DEFAULT_OUT

    assert DEFAULT_OUT["simulation"] != DEFAULT_OUT["lsp"]
    args = build_parser("demo").parse_args(["demo", "--lsp", "X", "--model", "M"])
    assert args.out is None  # chosen per mode in run(): posecal-demo-lsp for --lsp
