"""``posecal evaluate``: summary text and JSON equal pycocotools'; bad input → exit 2, one line, no file."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _cocogen import make_coco_set, perturb_gt
from posecal.cli import main
from posecal.metrics.cocoeval import CROWD_STAT_NAMES, STAT_NAMES

SRC = Path(__file__).resolve().parents[1] / "src"


def _pycocotools_summary(gt: dict, res: list, sigmas=None) -> tuple[list[str], np.ndarray]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        cd = cg.loadRes(copy.deepcopy(res))
        ev = COCOeval(cg, cd, "keypoints")
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.summarize()
    return buf.getvalue().splitlines(), np.asarray(ev.stats)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_fixture_summary_and_json_equal_pycocotools(shared, tmp_path):
    pytest.importorskip("pycocotools")
    gt_path = shared("data", "mmpose-fixtures", "coco", "test_coco.json")
    gt = json.loads(gt_path.read_text())
    res = perturb_gt(gt, 5)
    pred = _write(tmp_path / "pred.json", res)
    out = tmp_path / "sub" / "out.json"
    rc, stdout, err = _run(["evaluate", "--gt", str(gt_path), "--pred", str(pred), "--json", str(out)])
    assert rc == 0, err
    ref_lines, ref_stats = _pycocotools_summary(gt, res)
    assert stdout.splitlines() == ref_lines
    doc = json.loads(out.read_text())
    assert list(doc["coco"]) == list(STAT_NAMES)
    np.testing.assert_array_equal([doc["coco"][k] for k in STAT_NAMES], ref_stats)


def test_custom_keypoints_need_sigmas(tmp_path):
    pytest.importorskip("pycocotools")
    gt, res = make_coco_set(11, n_images=6, max_gts=4, max_dets=6, K=5)
    g, p = _write(tmp_path / "gt.json", gt), _write(tmp_path / "pred.json", res)
    out = tmp_path / "o.json"
    rc, _, err = _run(["evaluate", "--gt", str(g), "--pred", str(p), "--json", str(out)])
    assert rc == 2 and "--sigmas" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    sig = [0.05, 0.06, 0.07, 0.08, 0.09]
    rc, stdout, err = _run(["evaluate", "--gt", str(g), "--pred", str(p), "--sigmas", "0.05,0.06", "0.07",
                            "0.08", "0.09", "--json", str(out)])
    assert rc == 0, err
    ref_lines, ref_stats = _pycocotools_summary(gt, res, sigmas=sig)
    assert stdout.splitlines() == ref_lines
    np.testing.assert_array_equal([json.loads(out.read_text())["coco"][k] for k in STAT_NAMES], ref_stats)
    rc, _, err = _run(["evaluate", "--gt", str(g), "--pred", str(p), "--sigmas", "0.05", "0.06"])
    assert rc == 2 and "sigmas" in err


def test_crowdpose_without_area(shared, tmp_path):
    gt_path = shared("data", "mmpose-fixtures", "crowdpose", "test_crowdpose.json")
    pred = _write(tmp_path / "pred.json", perturb_gt(json.loads(gt_path.read_text()), 1))
    out = tmp_path / "o.json"
    argv = ["evaluate", "--gt", str(gt_path), "--pred", str(pred), "--json", str(out)]
    rc, _, err = _run(argv + ["--use-area"])
    assert rc == 2 and "area" in err and not out.exists()
    rc, stdout, err = _run(argv + ["--flavor", "pycocotools"])
    assert rc == 0 and "0.53" in err and len(stdout.splitlines()) == 10
    assert json.loads(out.read_text())["use_area"] is False


def test_crowdpose_file_reports_crowd_levels(shared, tmp_path):
    """A CrowdPose file (crowdIndex on every image) is evaluated as crowdposetools: 9 named stats."""
    gt_path = shared("data", "mmpose-fixtures", "crowdpose", "test_crowdpose.json")
    pred = _write(tmp_path / "pred.json", perturb_gt(json.loads(gt_path.read_text()), 1))
    out = tmp_path / "o.json"
    argv = ["evaluate", "--gt", str(gt_path), "--pred", str(pred), "--json", str(out)]
    rc, stdout, err = _run(argv)
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert list(doc["coco"]) == list(CROWD_STAT_NAMES) and doc["flavor"] == "crowdpose"
    assert len(stdout.splitlines()) == 9 and "type=  easy" in stdout
    rc2, stdout2, _ = _run(argv[:-2] + ["--flavor", "crowdpose", "--json", "-"])
    assert rc2 == 0 and json.loads(stdout2)["coco"] == doc["coco"]
    rc3, stdout3, err3 = _run(argv[:-2] + ["--flavor", "xtcocotools", "--no-use-area", "--json", "-"])
    assert rc3 == 0 and list(json.loads(stdout3)["coco"]) == list(CROWD_STAT_NAMES), err3


def test_wholebody_reports_parts(shared, tmp_path):
    pytest.importorskip("pycocotools")
    gt_path = shared("data", "mmpose-fixtures", "coco", "test_coco_wholebody.json")
    gt = json.loads(gt_path.read_text())
    res = perturb_gt(gt, 2, parts=True)
    pred = _write(tmp_path / "pred.json", res)
    out = tmp_path / "o.json"
    rc, stdout, err = _run(["evaluate", "--gt", str(gt_path), "--pred", str(pred), "--json", str(out)])
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert set(doc["wholebody"]) == {"body", "foot", "face", "lefthand", "righthand", "wholebody"}
    assert "foot" in stdout
    # "coco" is what pycocotools reports for the file (body keypoints)
    _, ref_stats = _pycocotools_summary(gt, res)
    np.testing.assert_array_equal([doc["coco"][k] for k in STAT_NAMES], ref_stats)


def _bad_cases(gt: dict, res: list):
    """(name, gt, res or raw text) for every validation failure the issue lists."""
    yield "bad json", gt, "[{"
    r = copy.deepcopy(res)
    r[0]["keypoints"] = r[0]["keypoints"][:-3]
    yield "keypoint count", gt, r
    r = copy.deepcopy(res)
    r[1]["keypoints"][0] = math.nan
    yield "nan", gt, json.dumps(r)
    r = copy.deepcopy(res)
    r[1]["score"] = math.inf
    yield "inf", gt, json.dumps(r)
    r = copy.deepcopy(res)
    r[0]["image_id"] = 987654321
    yield "unknown image", gt, r
    g = copy.deepcopy(gt)
    g["annotations"][0]["area"] = -5
    yield "negative area", g, res
    g = copy.deepcopy(gt)
    g["annotations"][0]["bbox"][3] = -5
    yield "negative box", g, res
    g = copy.deepcopy(gt)
    g["annotations"][1]["id"] = g["annotations"][0]["id"]
    yield "duplicate ids", g, res
    yield "not a list", gt, {"x": 1}


def test_results_of_another_category_are_left_out_as_pycocotools_does(tmp_path):
    """A result whose category_id the gt lacks is not an error: pycocotools evaluates params.catIds only."""
    pytest.importorskip("pycocotools")
    gt, res = make_coco_set(22, n_images=4, max_gts=4, max_dets=5)
    r = copy.deepcopy(res)
    for i in (0, len(r) // 2):
        r[i]["category_id"] = 77
    r.append({**copy.deepcopy(r[1]), "category_id": 5, "score": 0.999})
    _, want = _pycocotools_summary(gt, r)
    out = tmp_path / "out.json"
    rc, _, err = _run(["evaluate", "--gt", str(_write(tmp_path / "gt.json", gt)), "--pred",
                       str(_write(tmp_path / "pred.json", r)), "--json", str(out)])
    assert rc == 0, err
    assert "3 results have a category_id that is not in the ground truth" in err
    got = json.loads(out.read_text())["coco"]
    np.testing.assert_array_equal([got[k] for k in STAT_NAMES], want)


def test_bad_inputs_exit_2_one_line_no_file(tmp_path):
    gt, res = make_coco_set(21, n_images=4, max_gts=4, max_dets=5)
    assert len(gt["annotations"]) >= 2 and len(res) >= 2
    names = []
    for i, (name, g, r) in enumerate(_bad_cases(gt, res)):
        gp = _write(tmp_path / f"gt{i}.json", g)
        rp = tmp_path / f"pred{i}.json"
        rp.write_text(r if isinstance(r, str) else json.dumps(r))
        out = tmp_path / f"out{i}.json"
        rc, stdout, err = _run(["evaluate", "--gt", str(gp), "--pred", str(rp), "--json", str(out)])
        assert rc == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("posecal evaluate: error: "), (name, err)
        assert str(gp) in lines[0] or str(rp) in lines[0], name
        assert not out.exists() and stdout == "", name
        assert not list(tmp_path.glob(f".out{i}.json*")), name  # no temp file left either
        names.append(name)
    assert len(names) == 9
    rc, _, err = _run(["evaluate", "--gt", str(tmp_path / "nope.json"), "--pred", str(rp)])
    assert rc == 2 and len(err.strip().splitlines()) == 1


def test_cli_imports_stay_light(shared, tmp_path):
    gt_path = shared("data", "mmpose-fixtures", "coco", "test_coco.json")
    pred = _write(tmp_path / "pred.json", perturb_gt(json.loads(gt_path.read_text()), 3))
    code = ("import sys; from posecal.cli import main; rc = main(['evaluate', '--gt', sys.argv[1], '--pred', "
            "sys.argv[2]]); heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'matplotlib', 'h5py', "
            "'scipy', 'pycocotools', 'tqdm') if m in sys.modules]; print('HEAVY', heavy); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, str(gt_path), str(pred)], capture_output=True, text=True,
                       env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout


def _small_files(tmp_path):
    gt, res = make_coco_set(31, n_images=4, max_gts=4, max_dets=5)
    return _write(tmp_path / "gt.json", gt), _write(tmp_path / "pred.json", res)


def test_json_to_stdout(tmp_path):
    g, p = _small_files(tmp_path)
    rc, stdout, err = _run(["evaluate", "--gt", str(g), "--pred", str(p), "--json", "-"])
    assert rc == 0, err
    doc = json.loads(stdout)  # stdout holds only the JSON; the summary went to stderr
    assert list(doc["coco"]) == list(STAT_NAMES) and "Average Precision" in err
    # a bare --json (as in every other command) means the same, last or before another option
    for argv in (["--json"], ["--json", "--random-seeds", "3"]):
        rc2, stdout2, err2 = _run(["evaluate", "--gt", str(g), "--pred", str(p), *argv])
        assert rc2 == 0, err2
        assert json.loads(stdout2) == doc and not (tmp_path / "-").exists()
    # the OKS constants actually used are recorded, not only where they came from
    K = len(json.loads(g.read_text())["categories"][0]["keypoints"])
    assert doc["sigmas"] != "--sigmas" and len(doc["sigma_values"]) == K
    sig = [round(0.05 + 0.01 * k, 3) for k in range(K)]
    rc3, stdout3, err3 = _run(["evaluate", "--gt", str(g), "--pred", str(p), "--json", "--sigmas", *map(str, sig)])
    assert rc3 == 0, err3
    doc3 = json.loads(stdout3)
    assert doc3["sigmas"] == "--sigmas" and doc3["sigma_values"] == sig


def test_output_equal_to_an_input_is_refused(tmp_path):
    g, p = _small_files(tmp_path)
    before = g.read_bytes(), p.read_bytes()
    link = tmp_path / "link.json"
    link.symlink_to(p)
    for out in (g, p, link, tmp_path / "." / "gt.json"):
        rc, stdout, err = _run(["evaluate", "--gt", str(g), "--pred", str(p), "--json", str(out)])
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "input" in err and stdout == "", out
    assert (g.read_bytes(), p.read_bytes()) == before


def test_unwritable_output_fails_before_work(tmp_path):
    g, p = _small_files(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (tmp_path, blocker / "o.json"):
        rc, stdout, err = _run(["evaluate", "--gt", str(g), "--pred", str(p), "--json", str(out)])
        assert rc == 2 and len(err.strip().splitlines()) == 1 and stdout == "", out


def test_outputs_honour_umask(tmp_path):
    import os

    g, p = _small_files(tmp_path)
    out = tmp_path / "o.json"
    old = os.umask(0o022)
    try:
        rc, _, err = _run(["evaluate", "--gt", str(g), "--pred", str(p), "--json", str(out)])
    finally:
        os.umask(old)
    assert rc == 0, err
    assert out.stat().st_mode & 0o777 == 0o644


def test_newline_in_file_name_gives_one_line(tmp_path):
    g, _ = _small_files(tmp_path)
    bad = tmp_path / "bad\nname.json"
    bad.write_text("[{")
    rc, _, err = _run(["evaluate", "--gt", str(g), "--pred", str(bad)])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "\\n" in err


def test_usage_error_is_one_line():
    p = subprocess.run([sys.executable, "-m", "posecal", "evaluate", "--gt", "x.json", "--flavor", "nope"],
                       capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
                       timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_deeply_nested_json_is_one_line(tmp_path):
    g, _ = _small_files(tmp_path)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    rc, _, err = _run(["evaluate", "--gt", str(g), "--pred", str(deep)])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "nested" in err


@pytest.mark.parametrize("argv", [["evaluate", "--gt", "g.json", "--pred", "p.json", "--bogus", "1"],
                                  ["rescore", "--pred", "p.json", "--method", "isotonic", "--out", "o.json", "--x"],
                                  ["study", "visibility", "--store", "S", "--out", "D", "--nope"]])
def test_unrecognized_arguments_are_named_by_the_subcommand(argv, capsys):
    """An unknown flag is one error line from the subcommand's parser (its name, exit 2), like its other
    argument errors — not the top-level 'posecal: error:'."""
    from posecal.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    name = " ".join(argv[:2]) if argv[0] == "study" else argv[0]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(f"posecal {name}: error: unrecognized")
