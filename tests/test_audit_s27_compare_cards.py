"""Audit s27: ``posecal compare`` and model cards under hostile inputs.

compare: the report of two files without a scored pair draws its sparsification panel without matplotlib's
"No artists with labels" chatter; Pearson of scores a few ulps apart is exact and silent (scipy's
NearConstantInputWarning was printed, and r was off in the 4th digit); a metric undefined on the data (a file
with one detection: no AUSE) has no interval and no P(B better) either (resamples that drew its one pair twice
gave "B better" with probability 1); a level just below 1 is not labelled "100 %".

model cards: what the card validator let through and the pipeline then misread or crashed on is one error line
naming the card file and the field: a missing ``name`` (traceback), ``"blazepose33"`` on an ONNX model
(traceback), strings "false" for the booleans ``output.subpixel`` / ``output.normalised`` /
``ccnet.evidence`` (read as true), a ``ccnet`` block that is not an object or names an unknown pooling (the
error named ``--pooling`` and no card), ``heatmap`` pooling on a card without heatmaps, an unknown
``backend_kind``, repeated joint names (reported against the data file), ``true`` where a number belongs
(size 1×1, scale 1, ...), a normalisation that overflows float32 or an integer input, a non-hex
``sha256``. An upper-case ``sha256`` of the right file is accepted (it was called "another model file").
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest

from _cocogen import make_coco_set
from posecal.calibration.compare import compare, level_label
from posecal.calibration.metrics import pearson
from posecal.errors import PosecalInputError
from posecal.keypoints import COCO17
from posecal.models.cards import BUILTIN_CARDS, validate_card
from test_detect_hostile import _card
from test_hostile_inputs import _one_error, _run, _write

SP_MODEL = ("models", "simplepose", "ultralight-nano-simplepose.onnx")
SP = BUILTIN_CARDS["ultralight-nano-simplepose"]
MN = BUILTIN_CARDS["movenet-thunder"]


def _cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posecal", *map(str, argv)], capture_output=True, text=True,
                          timeout=300)


# --- compare --------------------------------------------------------------------------------------------------
def test_report_of_two_files_without_pairs_has_no_matplotlib_chatter(tmp_path):
    pytest.importorskip("matplotlib")
    gt, _ = make_coco_set(6, n_images=8, max_dets=5)
    g, e = _write(tmp_path / "g.json", gt), _write(tmp_path / "e.json", [])
    p = _cli("compare", "--gt", g, e, e, "--resamples", "5", "--report", tmp_path / "rep")
    assert p.returncode == 0, p.stderr
    assert "No artists" not in p.stderr and "legend" not in p.stderr, p.stderr
    assert all(ln.startswith("posecal compare: ") for ln in p.stderr.strip().splitlines()), p.stderr
    assert (tmp_path / "rep" / "sparsification.png").stat().st_size > 0


def _exact_r(x, y) -> float:
    X, Y = [Fraction(float(v)) for v in x], [Fraction(float(v)) for v in y]
    mx, my = sum(X) / len(X), sum(Y) / len(Y)
    num = sum((a - mx) * (b - my) for a, b in zip(X, Y, strict=True))
    dx, dy = sum((a - mx) ** 2 for a in X), sum((b - my) ** 2 for b in Y)
    return float(num) / float(np.sqrt(float(dx) * float(dy)))


def test_pearson_of_scores_ulps_apart_is_exact_and_silent():
    x = 0.5 + 1e-16 * (np.arange(86) % 3)  # three distinct doubles next to 0.5
    y = np.random.default_rng(0).uniform(0, 1, 86)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = pearson(x, y)
    assert not w, [str(m.message) for m in w]
    assert r == pytest.approx(_exact_r(x, y), rel=1e-9)  # before: 1e-4 off, with NearConstantInputWarning
    # unchanged where scipy was fine; scores spanning the float range give their r (before: 0.0 and overflow
    # RuntimeWarnings), subnormal ones too
    z = np.random.default_rng(1).uniform(0, 1, 86)
    assert pearson(z, y) == pytest.approx(np.corrcoef(z, y)[0, 1], rel=1e-12)
    big = z.copy()
    big[:2] = 1.7e308, -1.7e308
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert pearson(big, y) == pytest.approx(np.corrcoef(big / 1e308, y)[0, 1], rel=1e-9)
        assert pearson(z * 1e-310, y) == pytest.approx(np.corrcoef(z, y)[0, 1], rel=1e-6)
    assert not w, [str(m.message) for m in w]


def test_compare_cli_near_constant_scores_print_no_scipy_warning(tmp_path):
    gt, res = make_coco_set(5, n_images=12, max_dets=4, p_crowd=0.0)
    b = copy.deepcopy(res)
    for i, r in enumerate(b):
        r["score"] = 0.5 + 1e-16 * (i % 3)
    g, a, bb = _write(tmp_path / "g.json", gt), _write(tmp_path / "a.json", res), _write(tmp_path / "b.json", b)
    p = _cli("compare", "--gt", g, a, bb, "--resamples", "20")
    assert p.returncode == 0, p.stderr
    assert "nearly constant" not in p.stderr, p.stderr


def test_metric_undefined_on_the_data_has_no_interval(tmp_path):
    gt, res = make_coco_set(5, n_images=12, max_dets=4, p_crowd=0.0)
    one = [max(res, key=lambda r: r["score"])]  # B: a single detection: no Pearson, no AUSE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compare(gt, res, one, resamples=200, seed=0)
    d = out.to_dict()["metrics"]
    for m in ("pearson", "ause"):
        assert d[m]["delta"] is None and d[m]["b_reason"]
        # before: ause interval from resamples that drew the one pair twice (AUSE 0): P(B better) = 1.0
        assert d[m]["interval"] == [None, None] and d[m]["p_better"] is None and d[m]["resamples_used"] == 0
    assert d["AP"]["interval"][0] is not None and d["AP"]["resamples_used"] > 0
    g, a, b = _write(tmp_path / "g.json", gt), _write(tmp_path / "a.json", res), _write(tmp_path / "b.json", one)
    rc, text, _ = _run(["compare", "--gt", g, a, b, "--resamples", "50"])
    row = next(ln for ln in text.splitlines() if ln.startswith("ause"))
    assert rc == 0 and "[n/a, n/a]" in row and "1.0000" not in row, row


@pytest.mark.parametrize("level, label", [(0.99999999999, "99.999999999"), (0.9999999999999999, "99.99999999999999"),
                                          (0.95, "95"), (0.999, "99.9")])
def test_level_just_below_one_is_not_labelled_100(level, label):
    assert level_label(level) == label


# --- model cards: static checks -----------------------------------------------------------------------------
def _mut(card: dict, path: tuple, value) -> dict:
    """A deep copy of ``card`` with the field at ``path`` set to ``value`` (KeyError: removed)."""
    return _card(path, value)(copy.deepcopy(card))


_COORD_NO_HM = {**copy.deepcopy(MN), "heatmaps": None}
BAD = {
    "name_missing": (SP, ("name",), KeyError, "name"),
    "name_list": (SP, ("name",), ["x"], "name"),
    "name_blank": (SP, ("name",), " ", "name"),
    "input_name_empty": (SP, ("input", "name"), "", "input.name"),
    "subpixel_str": (SP, ("output", "subpixel"), "false", "output.subpixel"),
    "normalised_str": (MN, ("output", "normalised"), "no", "output.normalised"),
    "ccnet_list": (SP, ("ccnet",), [], "ccnet"),
    "ccnet_pooling": (SP, ("ccnet", "pooling"), "max", "ccnet.pooling"),
    "ccnet_evidence_str": (SP, ("ccnet", "evidence"), "false", "ccnet.evidence"),
    "heatmap_pooling_without_heatmaps": (_COORD_NO_HM, ("ccnet", "pooling"), "heatmap", "ccnet.pooling"),
    "backend_kind": (SP, ("backend_kind",), "foo", "backend_kind"),
    "keypoints_repeat": (SP, ("keypoints",), ["nose"] * 17, "keypoints"),
    "keypoints_empty_name": (SP, ("keypoints",), ["nose", ""], "keypoints"),
    "size_bool": (SP, ("input", "size"), [True, True], "input.size"),
    "size_huge": (SP, ("input", "size"), [100000, 100000], "input.size"),
    "mean_bool": (SP, ("input", "mean"), [True, 0.4, 0.4], "input.mean"),
    "scale_bool": (SP, ("input", "scale"), True, "input.scale"),
    "batch_bool": (SP, ("input", "batch"), True, "input.batch"),
    "std_tiny": (SP, ("input", "std"), [1e-320, 0.2, 0.2], "input.std"),
    "mean_huge": (SP, ("input", "mean"), [1e308, 0.4, 0.4], "input.mean"),
    "mean_huge_int": (SP, ("input", "mean"), [10**400, 0.4, 0.4], "input.mean"),
    "uint8_normalised": (SP, ("input", "dtype"), "uint8", "input.dtype"),
    "sha_not_hex": (SP, ("sha256",), "z" * 64, "sha256"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_card_field_is_named(case):
    card, path, value, field = BAD[case]
    with pytest.raises(PosecalInputError) as e:
        validate_card(_mut(card, path, value), file="card.json")
    assert e.value.field == field and e.value.file == "card.json", (e.value.field, str(e.value))
    assert "\n" not in str(e.value)


def test_good_cards_still_pass():
    for c in BUILTIN_CARDS.values():
        validate_card(copy.deepcopy(c), file="card.json")
    ok = _mut(SP, ("input", "mean"), [128, 128, 128])
    ok = _mut(_mut(ok, ("input", "std"), [1, 1, 1]), ("input", "scale"), 1)
    validate_card(_mut(ok, ("input", "dtype"), "int32"), file="card.json")  # x − 128 fits int32
    validate_card(_mut(SP, ("ccnet",), None))
    validate_card(_mut(SP, ("ccnet",), {"pooling": "gap"}))
    validate_card(_mut(SP, ("input", "std"), [-0.229, 0.224, 0.225]))
    up = validate_card(_mut(SP, ("sha256",), SP["sha256"].upper()))
    assert up["sha256"] == SP["sha256"]


# --- model cards: the CLI on the real model ------------------------------------------------------------------
@pytest.fixture
def sp_run(shared, mini, tmp_path):
    data, img, _ = mini
    model = shared(*SP_MODEL)
    out = tmp_path / "store"

    def run(card: dict):
        cp = _write(tmp_path / "card.json", card)
        rc, _, err = _run(["extract", "--model", model, "--model-card", cp, "--data", data, "--images", img,
                           "--out", out])
        return rc, err, cp, out

    return run


@pytest.mark.parametrize("path, value, field", [(("name",), KeyError, "'name'"),
                                                (("keypoints",), "blazepose33", "keypoints"),
                                                (("ccnet", "pooling"), "max", "'ccnet.pooling'"),
                                                (("input", "std"), [1e-320, 0.2, 0.2], "'input.std'")])
def test_extract_with_a_bad_card_is_one_line_and_writes_nothing(sp_run, path, value, field):
    rc, err, cp, out = sp_run(_mut(SP, path, value))
    _one_error(rc, err, field)  # before: tracebacks (name, blazepose33), '--pooling' without the card, NaN rows
    assert not out.exists() and not list(out.parent.glob(".store*")) and not list(out.parent.glob("store.*"))
    if path != ("keypoints",):  # blazepose33 is a valid set name: the card/model mismatch names the model
        assert str(cp) in err


def test_extract_accepts_the_models_sha256_in_upper_case(sp_run):
    rc, err, _, out = sp_run(_mut(SP, ("sha256",), SP["sha256"].upper()))
    assert rc == 0, err  # before: "the card describes another model file"
    assert (out / "meta.json").is_file()


@pytest.mark.parametrize("task", ["pose", "detector"])
def test_empty_onnx_file_with_a_card_is_named_as_not_onnx(tmp_path, capsys, task):
    """Before: an empty .onnx given with --model-card was reported as a card field naming a missing tensor
    (an empty file parses as an empty ModelProto); without a card it already said 'not an ONNX model'."""
    from posecal.cli import main as cli_main
    from posecal.models.cards import BUILTIN_CARDS

    name = "nanodet-m-416" if task == "detector" else next(k for k in BUILTIN_CARDS if "simplepose" in k)
    card = dict(BUILTIN_CARDS[name], sha256=None, name="mine")
    (tmp_path / "card.json").write_text(json.dumps(card))
    (tmp_path / "m.onnx").write_bytes(b"")
    img = tmp_path / "img"
    img.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 48)).save(img / "1.jpg")
    data = {"images": [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 48}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 30, 30], "area": 900,
                             "iscrowd": 0, "num_keypoints": 1, "keypoints": [10, 10, 2] + [0] * 48}],
            "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.names), "skeleton": []}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    argv = (["detect", "--model", str(tmp_path / "m.onnx"), "--model-card", str(tmp_path / "card.json"),
             "--images", str(img), "--out", str(tmp_path / "o.json")] if task == "detector" else
            ["extract", "--model", str(tmp_path / "m.onnx"), "--model-card", str(tmp_path / "card.json"),
             "--data", str(tmp_path / "d.json"), "--images", str(img), "--out", str(tmp_path / "S")])
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.onnx: field '--model': not an ONNX model (empty graph)" in err[0], err
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "S").exists()


def test_compare_warns_what_evaluate_warns_about_its_files(tmp_path, capsys):
    """Before: a gt annotation with id 0 that a detection matches (pycocotools counts it as a false positive,
    `posecal evaluate` says so) went unmentioned by compare: its per-image evaluation ran with warn=False and
    its JSON `warnings` list stayed empty. Now the evaluator's warnings appear once, naming the file."""
    from posecal.cli import main as cli_main

    gt, res = make_coco_set(4, n_images=4, max_gts=3, max_dets=6, gt_id_zero=True)  # a seed whose id 0 matches
    g, r = tmp_path / "gt.json", tmp_path / "r.json"
    g.write_text(json.dumps(gt))
    r.write_text(json.dumps(res))
    rc = cli_main(["evaluate", "--gt", str(g), "--pred", str(r)])
    ev_err = capsys.readouterr().err
    assert rc == 0 and "id 0 was matched" in ev_err, ev_err
    rc = cli_main(["compare", "--gt", str(g), str(r), str(r), "--resamples", "20", "--json"])
    out = capsys.readouterr()
    assert rc == 0
    doc = json.loads(out.out)
    said = [w for w in doc["warnings"] if "id 0 was matched" in w]
    assert [w[:2] for w in said] == ["A ", "B "] and all(str(r) in w for w in said), doc["warnings"]  # once each
