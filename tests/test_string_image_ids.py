"""String image ids (all of a data file's image ids strings, as pycocotools and ``posecal evaluate`` accept)
through the whole chain: ``detect --data`` → ``extract`` (gt boxes and ``--boxes``) → store → ``fit`` →
``apply`` → ``evaluate``, on real coco-mini images with SimplePose and NanoDet.

Each chain runs twice, on the integer-id file and on the same file with string ids: the results must be the
same record for record except for the ids, which are the original strings; AP/AR identical. Ids that sort as
their numbers (file names ``000000000790.jpg``) run everything, the context stage's cross-fitting included
(its folds deal images in id order); ids that sort otherwise (``img_790`` after ``img_69468``) run the gt-box
chain, which does not depend on the order."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from posecal.cli import main
from posecal.models.store import FeatureStore

IMAGES = (790, 30752, 69468, 100667, 129648)  # 3, 5 and 6 digits: "img_<id>" sorts otherwise than the ids
SP = ("models", "simplepose", "ultralight-nano-simplepose.onnx")
ND = ("models", "nanodet", "nanodet-m-416.onnx")
MINI = ("data", "coco-mini", "person_keypoints_train2017.json")


def _ids(kind: str, d: dict) -> dict:
    """``{int id: id of this kind}``: ``int`` as they are, ``name`` the file name, ``img`` ``img_<id>``."""
    if kind == "int":
        return {im["id"]: im["id"] for im in d["images"]}
    if kind == "name":
        return {im["id"]: im["file_name"] for im in d["images"]}
    return {im["id"]: f"img_{im['id']}" for im in d["images"]}


def _recode(d: dict, m: dict) -> dict:
    d = json.loads(json.dumps(d))
    for im in d["images"]:
        im["id"] = m[im["id"]]
    for a in d["annotations"]:
        a["image_id"] = m[a["image_id"]]
    return d


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import shared_path

    src = json.loads(shared_path(*MINI).read_text())
    keep = set(IMAGES)
    d = {**src, "images": [im for im in src["images"] if im["id"] in keep],
         "annotations": [a for a in src["annotations"] if a["image_id"] in keep]}
    assert len(d["images"]) == len(IMAGES)
    root = tmp_path_factory.mktemp("sid")
    img = root / "images"
    img.mkdir()
    for im in d["images"]:
        shutil.copy(shared_path(*MINI).parent / "train2017" / im["file_name"], img / im["file_name"])
    files = {}
    for kind in ("int", "name", "img"):
        files[kind] = root / f"{kind}.json"
        files[kind].write_text(json.dumps(_recode(d, _ids(kind, d))))
    return {"root": root, "img": img, "data": d, "files": files, "model": shared_path(*SP),
            "detector": shared_path(*ND)}


@pytest.fixture(scope="module")
def chains(world):
    """Every command of the chain on the ``int`` and ``name`` files; on the ``img`` file, extract with gt boxes
    (its fit: :func:`test_fit_gt_store_alone_same_as_integer_ids`)."""
    return {kind: _chain(world, kind, full=kind != "img") for kind in ("int", "name", "img")}


def _main(*argv) -> str:
    import contextlib
    import io

    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    assert rc == 0, err.getvalue()
    return buf.getvalue()


def _coco(gt, pred) -> dict:
    return json.loads(_main("evaluate", "--gt", gt, "--pred", pred, "--json"))["coco"]


def _chain(world, kind: str, *, full: bool) -> dict:
    r = world["root"] / kind
    r.mkdir()
    data, img = world["files"][kind], world["img"]
    res: dict = {"data": data}
    gt_store = r / "gt_store"
    _main("extract", "--model", world["model"], "--data", data, "--images", img, "--out", gt_store)
    res["gt_store"] = gt_store
    res["gt_eval"] = _coco(data, gt_store / "predictions.json")
    stores = [gt_store]
    if full:
        det = r / "det.json"
        res["detect_out"] = _main("detect", "--model", world["detector"], "--images", img, "--data", data,
                                  "--out", det, "--score-thr", "0.2")  # fewer crops: a faster test
        res["det"] = json.loads(det.read_text())
        det_store = r / "det_store"
        _main("extract", "--model", world["model"], "--data", data, "--images", img, "--boxes", det,
              "--out", det_store)
        res["det_store"] = det_store
        res["det_eval"] = _coco(data, det_store / "predictions.json")
        stores.append(det_store)
    else:
        return res
    head = r / "head"  # one head on both stores: the context stage is fitted on the detection store
    _main("fit", *[a for s in stores for a in ("--store", s)], "--out", head, "--steps", "20")
    res["head"] = head
    for s in stores:
        applied = r / f"applied_{s.name}.json"
        _main("apply", "--store", s, "--head", head, "--out", applied)
        res[f"applied_{s.name}"] = json.loads(applied.read_text())
        res[f"applied_{s.name}_eval"] = _coco(data, applied)
    return res


def _same_but_ids(a: list[dict], b: list[dict], m: dict) -> None:
    """Records ``b`` are records ``a`` with every image_id mapped by ``m``."""
    assert len(a) == len(b) and a
    assert [m[x["image_id"]] for x in a] == [y["image_id"] for y in b]
    assert all(isinstance(y["image_id"], str) for y in b)
    assert [{**x, "image_id": 0} for x in a] == [{**y, "image_id": 0} for y in b]


@pytest.mark.parametrize("kind", ["name", "img"])
def test_extract_gt_boxes_same_as_integer_ids(world, chains, kind):
    m = _ids(kind, world["data"])
    a, b = FeatureStore.open(chains["int"]["gt_store"]), FeatureStore.open(chains[kind]["gt_store"])
    _same_but_ids(a.predictions, b.predictions, m)
    assert chains[kind]["gt_eval"] == chains["int"]["gt_eval"] and chains["int"]["gt_eval"]["AP"] > 0
    # the arrays hold each image's code: its position among the sorted ids, load_gt's id for it
    from posecal.io.coco import load_gt

    names = sorted(m.values())
    assert b.meta["image_id_strings"] == names == load_gt(b.gt_path).image_id_strings
    assert [names[c] for c in b.read("image_id")] == [m[i] for i in a.read("image_id")]
    for name in a.arrays:
        if name != "image_id":
            np.testing.assert_array_equal(a.read(name), b.read(name))
    # integer-id stores are written as before: no such key, ids in the arrays
    assert "image_id_strings" not in a.meta and a.image_id_strings is None


def test_detect_and_extract_boxes_with_string_ids(world, chains):
    m = _ids("name", world["data"])
    i, s = chains["int"], chains["name"]
    _same_but_ids(i["det"], s["det"], m)  # detect --data writes the data file's own (string) ids
    assert "recall at IoU 0.5" in s["detect_out"] and s["detect_out"].splitlines()[1] == \
        i["detect_out"].splitlines()[1]
    a, b = FeatureStore.open(i["det_store"]), FeatureStore.open(s["det_store"])
    assert b.meta["oks_nms"] == a.meta["oks_nms"]  # the same detections kept per image
    _same_but_ids(a.predictions, b.predictions, m)
    assert s["det_eval"] == i["det_eval"] and i["det_eval"]["AP"] > 0


def test_fit_apply_write_string_ids(world, chains):
    m = _ids("name", world["data"])
    i, s = chains["int"], chains["name"]
    assert json.loads((s["head"] / "head.json").read_text()).get("context")  # the context stage was fitted
    for st in ("gt_store", "det_store"):
        _same_but_ids(i[f"applied_{st}"], s[f"applied_{st}"], m)
        assert all("visibility" in r for r in s[f"applied_{st}"])
        assert s[f"applied_{st}_eval"] == i[f"applied_{st}_eval"] and i[f"applied_{st}_eval"]["AP"] > 0


def test_fit_cv_with_string_ids(world, chains, tmp_path):
    """--cv deals the images of the stores into folds and evaluates each fold on the stores' gts merged."""
    rows = {}
    for kind in ("int", "name"):
        st = chains[kind]
        meta = json.loads(_main("fit", "--store", st["gt_store"], "--store", st["det_store"], "--out",
                                tmp_path / kind, "--cv", "2", "--steps", "5", "--no-context", "--json"))
        rows[kind] = [(r["label"], r["fold_ap"], r["fold_base_ap"]) for r in meta["cv"]["rows"]]
    assert rows["name"] == rows["int"] and len(rows["int"]) > 1


def test_fit_gt_store_alone_same_as_integer_ids(world, chains, tmp_path):
    """The gt-box head does not depend on the order of the ids: ``img_<id>`` ids give the same head."""
    m = _ids("img", world["data"])
    out = {}
    for kind in ("int", "img"):
        head = tmp_path / f"head_{kind}"
        _main("fit", "--store", chains[kind]["gt_store"], "--out", head, "--steps", "20")
        _main("apply", "--store", chains[kind]["gt_store"], "--head", head, "--out", tmp_path / f"{kind}.json")
        out[kind] = json.loads((tmp_path / f"{kind}.json").read_text())
    _same_but_ids(out["int"], out["img"], m)
    assert _coco(world["files"]["img"], tmp_path / "img.json") == _coco(world["files"]["int"], tmp_path / "int.json")


def test_rescore_store_with_string_ids(chains, tmp_path):
    s = chains["name"]["gt_store"]
    _main("rescore", "--store", s, "--pred", s / "predictions.json", "--method", "closed-form",
          "--out", tmp_path / "r.json")
    recs = json.loads((tmp_path / "r.json").read_text())
    assert [r["image_id"] for r in recs] == [r["image_id"] for r in FeatureStore.open(s).predictions]


def test_rescore_results_with_string_ids_without_gt(world, chains, tmp_path):
    """A results file with string image ids and no ground truth (``--pred`` alone, a third-party file): the
    ids are written back as they were, and the rescoring (OKS-NMS per image included) equals that of the
    integer-id file record for record."""
    outs = {}
    for kind in ("int", "name"):
        outs[kind] = tmp_path / f"{kind}.json"
        _main("rescore", "--pred", chains[kind]["det_store"] / "predictions.json", "--method", "closed-form",
              "--area", "pred", "--keypoint-set", "coco17", "--oks-nms", "0.5", "--out", outs[kind])
    a, b = (json.loads(outs[k].read_text()) for k in ("int", "name"))
    assert len(b) < len(chains["name"]["det"])  # OKS-NMS grouped the detections by image and removed some
    _same_but_ids(a, b, _ids("name", world["data"]))


def test_results_mixing_id_kinds_refused_without_gt(chains, capsys, tmp_path):
    recs = json.loads((chains["name"]["det_store"] / "predictions.json").read_text())
    recs[3]["image_id"] = 790
    bad = tmp_path / "mixed.json"
    bad.write_text(json.dumps(recs))
    _refused(capsys, ["rescore", "--pred", bad, "--method", "mmpose-bbox_keypoint", "--keypoint-set", "coco17",
                      "--out", tmp_path / "o.json"], tmp_path / "o.json", str(bad), "record 3", "field 'image_id'",
             "mix strings")


def _refused(capsys, argv, out, *needles) -> None:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    for n in needles:
        assert n in err[0], (n, err[0])
    assert not out.exists()


def test_mixed_ids_refused(world, capsys, tmp_path):
    d = _recode(world["data"], _ids("img", world["data"]))
    d["images"][2]["id"] = 69468  # a number among strings: pycocotools cannot sort them
    bad = tmp_path / "mixed.json"
    bad.write_text(json.dumps(d))
    for cmd in (["extract", "--model", world["model"], "--out", tmp_path / "S"],
                ["detect", "--model", world["detector"], "--out", tmp_path / "det.json"]):
        _refused(capsys, [*cmd, "--data", bad, "--images", world["img"]], tmp_path / cmd[-1].name,
                 str(bad), "record images[2]", "field 'id'", "mix strings and numbers")


def test_mismatched_id_kinds_refused(world, chains, capsys, tmp_path):
    # an annotation referring to its image by number while the images' ids are strings
    d = _recode(world["data"], _ids("img", world["data"]))
    d["annotations"][1]["image_id"] = 30752
    bad = tmp_path / "ann.json"
    bad.write_text(json.dumps(d))
    _refused(capsys, ["extract", "--model", world["model"], "--data", bad, "--images", world["img"],
                      "--out", tmp_path / "S"], tmp_path / "S", str(bad), "record 1", "field 'image_id'",
             "expected a string id")
    # integer detections on a string-id data file, and string detections on an integer-id one
    for data, det in (("name", "int"), ("int", "name")):
        _refused(capsys, ["extract", "--model", world["model"], "--data", world["files"][data], "--images",
                          world["img"], "--boxes", world["root"] / det / "det.json", "--out", tmp_path / "S"],
                 tmp_path / "S", "det.json", "record 0", "field 'image_id'")
