"""Property-based CLI fuzz suite: every command on generated hostile input, against the error contract.

The contract (docs/design.md, issue #12): for any input a user can give, ``posecal CMD ...`` exits 0 or 2;
on 2 it prints exactly ONE line on stderr, no traceback, and leaves the file tree exactly as it found it
(no new, changed or removed file); on 0 and 2 alike every input file is byte-identical afterwards.

The commands run in-process (``posecal.cli.main``, stdout/stderr captured, ``SystemExit`` caught) on a
small world built once per module: a tiny ONNX heatmap net (tests/_tinynet.py), 6 images, a COCO-17 data
file, a feature store extracted from them, a CCNet head fitted on it, a fitted isotonic calibrator, a tiny
LSP ``joints.mat`` and an MPII file. Each example copies the world to a fresh folder, damages one thing
(JSON values/structure, bytes of a model/image/chunk, a flag, an output path), runs one command and checks
the contract. A few cases go through the real entry point (``python -m posecal``) in a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from _tinynet import tiny_heatmap_net  # noqa: E402
from posecal.cli import main  # noqa: E402
from posecal.keypoints import COCO17  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
FUZZ = settings(max_examples=int(os.environ.get("POSECAL_FUZZ_EXAMPLES", "25")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                derandomize=True)
N_IMG = 6


# -- the world -----------------------------------------------------------------------------------------
def _quiet_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse: --help (0) and usage errors (2)
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from PIL import Image
    from scipy.io import savemat

    d = tmp_path_factory.mktemp("fuzzworld")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_heatmap_net(), (torch.zeros(1, 3, 64, 48),), str(d / "model.onnx"), dynamo=False,
                          input_names=["input"], output_names=["heatmaps"],
                          dynamic_axes={"input": {0: "b"}, "heatmaps": {0: "b"}})
    rng = np.random.default_rng(0)
    (d / "img").mkdir()
    images, anns, dets = [], [], []
    for i in range(N_IMG):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(d / "img" / f"{i}.png")
        x0, y0, w, h = rng.uniform(2, 20), rng.uniform(2, 10), rng.uniform(30, 50), rng.uniform(35, 45)
        kp = np.zeros((17, 3))
        kp[:, 0], kp[:, 1] = rng.uniform(x0, x0 + w, 17), rng.uniform(y0, y0 + h, 17)
        kp[:, 2] = np.where(rng.random(17) < 0.2, 1, 2)
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 80, "height": 60})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": w * h * 0.6,
                     "bbox": [x0, y0, w, h], "keypoints": np.round(kp, 2).ravel().tolist(), "num_keypoints": 17})
        dets.append({"image_id": i + 1, "category_id": 1, "bbox": [x0, y0, w, h], "score": 0.9})
    cats = [{"id": 1, "name": "person", "keypoints": list(COCO17.names), "skeleton": []}]
    (d / "data.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (d / "dets.json").write_text(json.dumps(dets))
    j = np.zeros((3, 14, 5))
    j[0], j[1] = rng.uniform(10, 70, (14, 5)), rng.uniform(10, 50, (14, 5))
    j[2] = rng.integers(0, 2, (14, 5))
    savemat(d / "joints.mat", {"joints": j})
    (d / "mpii.json").write_text(json.dumps([
        {"image": f"{i}.png", "joints": rng.uniform(10, 50, (16, 2)).tolist(), "joints_vis": [1] * 16,
         "center": [40.0, 30.0], "scale": 0.3} for i in range(3)]))
    steps = [
        ["extract", "--model", d / "model.onnx", "--data", d / "data.json", "--images", d / "img", "--out",
         d / "store", "--chunk-size", "4", "--pooling", "gap"],
        ["fit", "--store", d / "store", "--out", d / "head", "--steps", "3", "--batch-size", "4"],
        ["rescore", "--pred", d / "store/predictions.json", "--method", "isotonic", "--fit-gt",
         d / "store/gt.json", "--fit-pred", d / "store/predictions.json", "--save-calibrator", d / "cal.json",
         "--out", d / "iso.json"],
    ]
    for argv in steps:
        rc, _, err = _quiet_main(argv)
        assert rc == 0, err
    shutil.copy(d / "store/predictions.json", d / "pred.json")
    shutil.copy(d / "store/gt.json", d / "gt.json")
    (d / "iso.json").unlink()
    return d


_COUNTER = [0]


def fresh(world: Path, tmp_path_factory) -> Path:
    """A private copy of the world (so damage never leaks between examples)."""
    _COUNTER[0] += 1
    d = tmp_path_factory.mktemp(f"ex{_COUNTER[0]}", numbered=True) / "w"
    shutil.copytree(world, d, symlinks=True)
    return d


def _snapshot(root: Path) -> dict[str, bytes | None]:
    snap: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            snap[os.path.relpath(os.path.join(dirpath, n), root)] = None
        for n in filenames:
            p = os.path.join(dirpath, n)
            snap[os.path.relpath(p, root)] = b"<link>" if os.path.islink(p) else Path(p).read_bytes()
    return snap


def check_contract(argv: list, root: Path, inputs: list[str] | None = None) -> tuple[int, str]:
    """Run ``argv`` in-process and assert the contract; returns (exit code, stderr)."""
    before = _snapshot(root)
    rc, _, err = _quiet_main(argv)
    shown = f"argv={[str(a) for a in argv]!r}\nstderr={err!r}"
    assert "Traceback" not in err, shown
    assert rc in (0, 2), shown
    after = _snapshot(root)
    if rc == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].strip(), shown
        added = sorted(set(after) - set(before))
        assert not added, f"new files on exit 2: {added}\n{shown}"
        changed = sorted(k for k in before if after.get(k, b"<gone>") != before[k])
        assert not changed, f"files changed/removed on exit 2: {changed}\n{shown}"
    for rel in inputs or []:
        for k in before:
            if k == rel or k.startswith(rel + os.sep):
                assert after.get(k, b"<gone>") == before[k], f"input {k} changed\n{shown}"
    return rc, err


# -- damage ------------------------------------------------------------------------------------------
HOSTILE_VALUES = st.sampled_from(["1", "abc", "", True, False, None, -1, 0, 1e308, -1e308, [], {}, [[[]]],
                                  "NaN", 10**30, 0.5, ["1", "2"], {"a": 1}, "../../etc/passwd", "/abs.png",
                                  "x\ny.png"])


def _paths(obj, prefix=(), out=None, limit=4000):
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    out.append(prefix)
    if isinstance(obj, dict):
        for k, v in obj.items():
            _paths(v, (*prefix, k), out, limit)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            _paths(v, (*prefix, i), out, limit)
    return out


def _set(obj, path, value, delete=False):
    if not path:
        return value
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


@st.composite
def json_damage(draw):
    kind = draw(st.sampled_from(["set", "set", "set", "delete", "truncate", "empty", "garbage", "deep", "nan",
                                 "dup", "bom"]))
    return (kind, draw(st.integers(0, 10**6)), draw(HOSTILE_VALUES), draw(st.binary(min_size=1, max_size=40)))


def damage_json(path: Path, dmg) -> None:
    kind, n, value, junk = dmg
    raw = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(raw[: n % max(len(raw), 1)])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(junk)
    elif kind == "deep":
        path.write_bytes(b"[" * 100000 + b"]" * 100000)
    elif kind == "bom":
        path.write_bytes(b"\xef\xbb\xbf" + raw)
    elif kind == "nan":
        path.write_bytes(raw.replace(b"1", b"NaN", 1) if b"1" in raw else b"NaN")
    elif kind == "dup":
        path.write_bytes(raw + raw)
    else:
        obj = json.loads(raw)
        paths = [p for p in _paths(obj) if p] or [()]
        target = paths[n % len(paths)]
        obj = _set(obj, target, value, delete=(kind == "delete" and bool(target)))
        path.write_text(json.dumps(obj))


@st.composite
def byte_damage(draw):
    return (draw(st.sampled_from(["truncate", "empty", "flip", "garbage", "append"])), draw(st.integers(0, 10**6)),
            draw(st.binary(min_size=1, max_size=64)))


def damage_bytes(path: Path, dmg) -> None:
    kind, n, junk = dmg
    raw = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(raw[: n % max(len(raw), 1)])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(junk)
    elif kind == "append":
        path.write_bytes(raw + junk)
    else:
        b = bytearray(raw)
        for i, x in enumerate(junk[:8]):
            if b:
                b[(n + 977 * i) % len(b)] ^= x or 1
        path.write_bytes(bytes(b))


BAD_INTS = st.sampled_from(["0", "-1", "-100", "abc", "", "1.5", "nan", "1e3", " ", "0x10", "99999999999999999999"])
BAD_FLOATS = st.sampled_from(["nan", "inf", "-inf", "abc", "", "1e999", "-1", "0", "--"])


def bad_outputs(d: Path, inputs: list[Path]) -> st.SearchStrategy:
    """Output paths a careless user or a script may give."""
    (d / "afile").write_text("x")
    (d / "link").symlink_to(inputs[0])
    (d / "dangling").symlink_to(d / "nowhere")
    return st.sampled_from([*inputs, d / "link", d / "dangling", Path("/dev/null"), d / "img", d / "store",
                            d / "store" / "x.json", d / "afile" / "sub.json",
                            d / "nodir" / "deeper" / "afile" / "x", d, Path("/proc/posecal-nope/out.json"),
                            d / "new\nline.json", d / ("n" * 300 + ".json")])


# -- per-command cases ----------------------------------------------------------------------------------
def _cmd(d: Path, name: str) -> tuple[list, list[str]]:
    """A valid invocation of ``name`` in world ``d`` and its input paths (relative)."""
    cmds = {
        "evaluate": (["evaluate", "--gt", d / "gt.json", "--pred", d / "pred.json"], ["gt.json", "pred.json"]),
        "rescore": (["rescore", "--pred", d / "pred.json", "--gt", d / "gt.json", "--method", "closed-form",
                     "--out", d / "out.json"], ["pred.json", "gt.json"]),
        "rescore-cal": (["rescore", "--pred", d / "pred.json", "--method", "isotonic", "--calibrator",
                         d / "cal.json", "--out", d / "out.json"], ["pred.json", "cal.json"]),
        "rescore-fit": (["rescore", "--pred", d / "pred.json", "--method", "loglog", "--fit-gt", d / "gt.json",
                         "--fit-pred", d / "pred.json", "--save-calibrator", d / "c2.json", "--out",
                         d / "out.json"], ["pred.json", "gt.json"]),
        "convert-lsp": (["convert", "lsp", d / "joints.mat", "--out", d / "out.json"], ["joints.mat"]),
        "convert-mpii": (["convert", "mpii", d / "mpii.json", "--images", d / "img", "--out", d / "out.json"],
                         ["mpii.json", "img"]),
        "extract": (["extract", "--model", d / "model.onnx", "--data", d / "data.json", "--images", d / "img",
                     "--out", d / "st2", "--chunk-size", "4"], ["model.onnx", "data.json", "img"]),
        "extract-dets": (["extract", "--model", d / "model.onnx", "--data", d / "data.json", "--images",
                          d / "img", "--boxes", d / "dets.json", "--out", d / "st2"],
                         ["model.onnx", "data.json", "img", "dets.json"]),
        "apply": (["apply", "--store", d / "store", "--head", d / "head", "--out", d / "out.json"],
                  ["store", "head"]),
        "fit": (["fit", "--store", d / "store", "--out", d / "head2", "--steps", "2", "--batch-size", "4"],
                ["store"]),
        "export": (["export", "--model", d / "model.onnx", "--head", d / "head", "--out", d / "out.onnx"],
                   ["model.onnx", "head"]),
        "study": (["study", "visibility", "--store", d / "store", "--out", d / "vis"], ["store"]),
    }
    return cmds[name]


def _replace(argv: list, flag: str, value) -> list:
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


JSON_TARGETS = [
    ("rescore", "pred.json"), ("rescore", "gt.json"), ("rescore-cal", "cal.json"), ("rescore-fit", "gt.json"),
    ("convert-mpii", "mpii.json"), ("extract", "data.json"), ("extract-dets", "dets.json"),
    ("apply", "store/meta.json"), ("apply", "store/index.json"), ("apply", "store/predictions.json"),
    ("apply", "head/head.json"), ("fit", "store/index.json"), ("fit", "store/gt.json"),
    ("fit", "store/meta.json"), ("export", "head/head.json"), ("study", "store/meta.json"),
]


@FUZZ
@given(target=st.sampled_from(JSON_TARGETS), dmg=json_damage())
def test_damaged_json(world, tmp_path_factory, target, dmg):
    d = fresh(world, tmp_path_factory)
    name, rel = target
    argv, inputs = _cmd(d, name)
    damage_json(d / rel, dmg)
    check_contract(argv, d, inputs)


BYTE_TARGETS = [
    ("extract", "model.onnx"), ("extract", "img/0.png"), ("extract", "img/3.png"), ("convert-mpii", "img/1.png"),
    ("convert-lsp", "joints.mat"), ("apply", "store/arrays/features_gap/000000.npy"),
    ("fit", "store/arrays/keypoints/000001.npy"), ("apply", "head/head.safetensors"),
    ("export", "model.onnx"), ("export", "head/head.safetensors"), ("study", "store/arrays/scores/000000.npy"),
]


@FUZZ
@given(target=st.sampled_from(BYTE_TARGETS), dmg=byte_damage())
def test_damaged_bytes(world, tmp_path_factory, target, dmg):
    d = fresh(world, tmp_path_factory)
    name, rel = target
    argv, inputs = _cmd(d, name)
    damage_bytes(d / rel, dmg)
    check_contract(argv, d, inputs)


FLAG_CASES = [
    ("extract", "--batch-size", BAD_INTS), ("extract", "--threads", BAD_INTS), ("extract", "--chunk-size", BAD_INTS),
    ("extract", "--augment", BAD_INTS), ("extract", "--target-sigma", BAD_FLOATS), ("extract", "--shard", BAD_INTS),
    ("extract", "--pooling", st.sampled_from(["", "max", "GAP"])),
    ("fit", "--steps", BAD_INTS), ("fit", "--batch-size", BAD_INTS), ("fit", "--lr", BAD_FLOATS),
    ("fit", "--lam", BAD_FLOATS), ("fit", "--threads", BAD_INTS),
    ("fit", "--device", st.sampled_from(["gpu", "cuda:x", "", "tpu", "cpu0"])),
    ("fit", "--head", st.sampled_from(["conv_gap", "kpt", "nope"])),
    ("rescore", "--heatmap-size", BAD_INTS), ("rescore", "--target-sigma", BAD_FLOATS),
    ("rescore", "--padding", BAD_FLOATS), ("rescore", "--keypoint-score-thr", BAD_FLOATS),
    ("rescore", "--method", st.sampled_from(["", "isotonic", "loglog", "nope"])),
    ("convert-lsp", "--split", st.sampled_from(["test", "train", "x"])),
    ("study", "--tau", BAD_FLOATS),
]


@FUZZ
@given(case=st.sampled_from(FLAG_CASES), data=st.data())
def test_bad_flags(world, tmp_path_factory, case, data):
    d = fresh(world, tmp_path_factory)
    name, flag, values = case
    argv, inputs = _cmd(d, name)
    check_contract(_replace(argv, flag, data.draw(values)), d, inputs)


OUT_CASES = [("rescore", "--out"), ("rescore-fit", "--save-calibrator"), ("convert-lsp", "--out"),
             ("convert-mpii", "--out"), ("extract", "--out"), ("apply", "--out"), ("fit", "--out"),
             ("export", "--out"), ("study", "--out")]


@FUZZ
@given(case=st.sampled_from(OUT_CASES), data=st.data())
def test_outputs_never_clobber_inputs(world, tmp_path_factory, case, data):
    d = fresh(world, tmp_path_factory)
    name, flag = case
    argv, inputs = _cmd(d, name)
    ins = [d / i for i in inputs]
    out = data.draw(bad_outputs(d, ins))
    check_contract(_replace(argv, flag, out), d, inputs + ["afile", "model.onnx", "store", "head", "img"])


@FUZZ
@given(what=st.sampled_from(["store/index.json", "store/arrays/scores/000001.npy",
                             "store/arrays/features_gap/000000.npy", "store/arrays/keypoints/000000.npy"]),
       jdmg=json_damage(), bdmg=byte_damage(), finished=st.booleans())
def test_resume_damaged_store(world, tmp_path_factory, what, jdmg, bdmg, finished):
    """Any damage to a store being resumed: one error line, or a store bit-identical to the clean one."""
    d = fresh(world, tmp_path_factory)
    if not finished:
        (d / "store/meta.json").unlink()
    if what.endswith(".json"):
        damage_json(d / what, jdmg)
    else:
        damage_bytes(d / what, bdmg)
    argv = ["extract", "--model", world / "model.onnx", "--data", world / "data.json", "--images", world / "img",
            "--out", d / "store", "--chunk-size", "4", "--pooling", "gap"]
    rc, err = check_contract(argv, d, [])
    if rc == 0:
        assert _snapshot(d / "store") == _snapshot(world / "store"), err


# -- targeted cases ------------------------------------------------------------------------------------
def test_store_tampering_is_named_and_resume_recomputes(world, tmp_path_factory):
    d = fresh(world, tmp_path_factory)
    chunk = d / "store/arrays/keypoints/000001.npy"
    good = chunk.read_bytes()
    b = bytearray(good)
    b[-1] ^= 0xFF
    chunk.write_bytes(bytes(b))
    for name in ("apply", "fit", "study"):
        argv, inputs = _cmd(d, name)
        rc, err = check_contract(argv, d, inputs)
        assert rc == 2 and "chunk 1" in err and "keypoints" in err and "store" in err, err
    # extract's resume recomputes the damaged chunk and finishes the store bit-identical (same inputs)
    (d / "store/meta.json").unlink()
    argv = ["extract", "--model", world / "model.onnx", "--data", world / "data.json", "--images", world / "img",
            "--out", d / "store", "--chunk-size", "4", "--pooling", "gap"]
    rc, _, err = _quiet_main(argv)
    assert rc == 0, err
    assert chunk.read_bytes() == good
    assert _snapshot(d / "store") == _snapshot(world / "store")


def test_missing_and_reshaped_chunks(world, tmp_path_factory):
    d = fresh(world, tmp_path_factory)
    (d / "store/arrays/scores/000000.npy").unlink()
    rc, err = check_contract(_cmd(d, "apply")[0], d, ["store", "head"])
    assert rc == 2 and "missing" in err
    d = fresh(world, tmp_path_factory)
    np.save(d / "store/arrays/features_gap/000000.npy", np.zeros((3, 5), np.float32))
    rc, err = check_contract(_cmd(d, "fit")[0], d, ["store"])
    assert rc == 2 and "chunk 0" in err


def test_second_writer_is_refused(world, tmp_path_factory):
    from posecal.models.store import StoreWriter

    d = fresh(world, tmp_path_factory)
    w = StoreWriter(d / "st2", num_instances=4, chunk_size=2, settings={"a": 1})
    try:
        rc, err = check_contract(["extract", "--model", d / "model.onnx", "--data", d / "data.json", "--images",
                                  d / "img", "--out", d / "st2"], d, ["st2"])
        assert rc == 2 and "another process" in err
    finally:
        w.release()


def test_rescore_save_calibrator_failure_leaves_no_out(world, tmp_path_factory):
    d = fresh(world, tmp_path_factory)
    (d / "afile").write_text("x")
    argv = _replace(_cmd(d, "rescore-fit")[0], "--save-calibrator", d / "afile" / "c.json")
    rc, _ = check_contract(argv, d, ["pred.json", "gt.json"])
    assert rc == 2 and not (d / "out.json").exists()


def test_skip_bad_images_recorded(world, tmp_path_factory):
    d = fresh(world, tmp_path_factory)
    (d / "img/2.png").write_bytes(b"")
    (d / "img/4.png").write_bytes((world / "img/4.png").read_bytes()[:200])  # truncated
    argv, inputs = _cmd(d, "extract")
    rc, err = check_contract(argv, d, inputs)
    assert rc == 2 and "2.png" in err and "record" in err
    rc, err = check_contract([*argv, "--skip-bad-images"], d, inputs)
    assert rc == 0, err
    meta = json.loads((d / "st2/meta.json").read_text())
    assert meta["skipped_bad_images"] == ["2.png", "4.png"] and meta["num_instances"] == N_IMG - 2


def test_convert_output_is_accepted_by_evaluate(world, tmp_path_factory):
    d = fresh(world, tmp_path_factory)
    for argv in (_cmd(d, "convert-lsp")[0], _cmd(d, "convert-mpii")[0]):
        rc, err = check_contract(argv, d, [])
        assert rc == 0, err
        rc, err = check_contract(["evaluate", "--gt", d / "out.json", "--pred", d / "pred.json"], d, ["out.json"])
        assert rc in (0, 2) and "Traceback" not in err
        from posecal.io.coco import load_gt

        load_gt(d / "out.json")  # the strict reader accepts what convert wrote


def test_convert_refuses_nan_flags_and_empty_split(world, tmp_path_factory):
    from scipy.io import savemat

    d = fresh(world, tmp_path_factory)
    j = np.zeros((3, 14, 5))
    j[2, 3, 1] = 2  # unknown flag
    savemat(d / "joints.mat", {"joints": j})
    rc, err = check_contract(_cmd(d, "convert-lsp")[0], d, ["joints.mat"])
    assert rc == 2 and "record 2" in err and "flag" in err
    j[2, 3, 1] = 0
    j[0, 5, 4] = np.nan
    savemat(d / "joints.mat", {"joints": j})
    rc, err = check_contract(_cmd(d, "convert-lsp")[0], d, ["joints.mat"])
    assert rc == 2 and "record 5" in err
    rc, err = check_contract([*_cmd(d, "convert-lsp")[0], "--split", "test"], d, ["joints.mat"])
    assert rc == 2 and "empty" in err


def test_newline_in_file_name_stays_one_line(world, tmp_path_factory):
    d = fresh(world, tmp_path_factory)
    bad = d / "bad\nname.json"
    bad.write_text("{")
    rc, err = check_contract(["rescore", "--pred", bad, "--method", "mmpose-keypoint", "--out", d / "o.json"], d,
                             [bad.name])
    assert rc == 2 and err.count("\n") == 1 and "\\n" in err


def test_outputs_honour_umask(world, tmp_path_factory):
    d = fresh(world, tmp_path_factory)
    old = os.umask(0o022)
    try:
        rc, err = check_contract(_cmd(d, "rescore")[0], d, ["pred.json"])
        assert rc == 0, err
        assert (d / "out.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


@pytest.mark.parametrize("argv", [
    ["extract", "--batch-size", "0", "--out", "x"],
    ["fit", "--store", "nope", "--out", "h", "--lr", "nan"],
    ["rescore", "--pred", "nope.json", "--method", "mmpose-bbox", "--out", "o.json"],
    ["convert", "lsp", "nope.mat", "--out", "o.json"],
])
def test_entry_point_one_line(tmp_path, argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "posecal", *argv], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


@FUZZ
@given(target=st.sampled_from(["gt.json", "pred.json"]), dmg=json_damage())
def test_evaluate_damaged_json(world, tmp_path_factory, target, dmg):
    """evaluate's parser belongs to the evaluator work (io/coco.py); the contract is the same."""
    d = fresh(world, tmp_path_factory)
    argv, inputs = _cmd(d, "evaluate")
    damage_json(d / target, dmg)
    check_contract([*argv, "--json", d / "ev.json"], d, inputs)


@FUZZ
@given(out=st.sampled_from(["gt.json", "pred.json", "afile/x.json", "img", "nodir/x.json"]))
def test_evaluate_outputs(world, tmp_path_factory, out):
    d = fresh(world, tmp_path_factory)
    (d / "afile").write_text("x")
    argv, inputs = _cmd(d, "evaluate")
    check_contract([*argv, "--json", d / out], d, [*inputs, "afile"])


@pytest.mark.parametrize("layout", ["gray", "nhwc"])
def test_onnx_input_layout_refused(world, tmp_path_factory, layout):
    d = fresh(world, tmp_path_factory)
    net = tiny_heatmap_net()
    if layout == "gray":
        net.backbone[0] = torch.nn.Conv2d(1, 8, 3, stride=2, padding=1)
        x = torch.zeros(1, 1, 64, 48)
    else:
        class NHWC(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x.permute(0, 3, 1, 2))

        net, x = NHWC(net), torch.zeros(1, 64, 48, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), str(d / "bad.onnx"), dynamo=False, input_names=["input"],
                          output_names=["heatmaps"])
    for name in ("extract", "export"):
        argv, inputs = _cmd(d, name)
        rc, err = check_contract(_replace(argv, "--model", d / "bad.onnx"), d, inputs)
        assert rc == 2 and (name == "export" or "channels" in err), err  # export may stop at the head first
