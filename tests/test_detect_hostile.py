"""`posecal detect` on hostile input: every bad input is ONE error line naming the file, record and field, exit
code 2, found before the detector runs, and no output file is left behind."""

import copy
import json
import os

import pytest

from posecal.cli import main
from posecal.errors import PosecalInputError
from posecal.models.cards import BUILTIN_CARDS, validate_card

ND = ("models", "nanodet", "nanodet-m-416.onnx")
MINI = ("data", "coco-mini", "person_keypoints_train2017.json")
IMAGES = ("data", "coco-mini", "train2017")
CARD = BUILTIN_CARDS["nanodet-m-416"]


@pytest.fixture
def one(shared, tmp_path):
    """A one-image dataset (the first image with a person box) in tmp_path, the image linked into a folder."""
    d = json.loads(shared(*MINI).read_text())
    iid = next(a["image_id"] for a in d["annotations"] if a.get("bbox") and not a.get("iscrowd"))
    im = next(im for im in d["images"] if im["id"] == iid)
    img = tmp_path / "img"
    img.mkdir()
    os.symlink(shared(*IMAGES) / im["file_name"], img / im["file_name"])
    small = dict(d, images=[im], annotations=[a for a in d["annotations"] if a["image_id"] == iid])
    data = tmp_path / "one.json"
    data.write_text(json.dumps(small))
    return {"model": str(shared(*ND)), "images": img, "data": data, "dict": small, "out": tmp_path / "det.json"}


def _refused(capsys, argv, out, *needles):
    """main(argv) exits 2 with one stderr line holding every needle, and ``out`` does not exist."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("posecal detect: error: ") and "Traceback" not in err[0]
    for n in needles:
        assert n in err[0], (n, err[0])
    assert not os.path.lexists(out)
    return err[0]


@pytest.fixture
def no_detector(monkeypatch):
    """Fail loudly if the detector is opened: the input must be refused before any detection work."""
    import posecal.models.detect as det

    def boom(*a, **k):
        raise AssertionError("the detector was opened before the input was checked")

    monkeypatch.setattr(det.NanoDetDetector, "__init__", boom)


# ---- 1, 7: the output -----------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["model", "data", "image", "image_link", "card"])
def test_out_may_not_be_an_input(one, tmp_path, capsys, no_detector, which):
    """--out naming the model (here through a link), the data, the card, or an image of --images (a file, or
    a link to an image elsewhere) is refused before anything is read, and the input stays as it was."""
    model = tmp_path / "nd.onnx"
    os.symlink(one["model"], model)
    card = tmp_path / "card.json"
    card.write_text(json.dumps(CARD))
    link = next(one["images"].iterdir())
    image = one["images"] / "000000000001.jpg"
    image.write_bytes(link.read_bytes())
    out = {"model": model, "data": one["data"], "image": image, "image_link": link, "card": card}[which]
    before, was_link = out.read_bytes(), out.is_symlink()
    argv = ["detect", "--model", model, "--images", one["images"], "--data", one["data"], "--out", out]
    if which == "card":
        argv += ["--model-card", card]
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out}: field '--out'" in err[0], err
    flag = {"card": "--model-card"}.get(which, f"--{which}")
    assert ("inside the input --images" if which.startswith("image") else f"is the input {flag}") in err[0]
    assert out.read_bytes() == before and out.is_symlink() == was_link
    assert not list(tmp_path.rglob(".*.tmp"))


def test_out_folder_refused_before_work(one, tmp_path, capsys, no_detector):
    base = ["detect", "--model", one["model"], "--images", one["images"], "--data", one["data"], "--out"]
    (tmp_path / "existing").mkdir()
    err = _refused(capsys, [*base, tmp_path / "existing"], tmp_path / "existing" / "nothing", "field '--out'",
                   "is a folder")
    assert str(tmp_path / "existing") in err
    _refused(capsys, [*base, f"{tmp_path / 'newdir'}/"], tmp_path / "newdir", "field '--out'", "folder")


# ---- 6: threads -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", ["0", "-1", "100000", "two"])
def test_threads_use_the_extract_validator(tmp_path, capsys, n):
    with pytest.raises(SystemExit) as e:
        main(["detect", "--model", "m.onnx", "--images", str(tmp_path), "--out", str(tmp_path / "d.json"),
              "--threads", n])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threads" in err[0] and (n == "two" or "[1, 1024]" in err[0])


# ---- 2, 3: the dataset ----------------------------------------------------------------------------------
def _set(path, value):
    def f(d):
        o = d
        for k in path[:-1]:
            o = o[k]
        o[path[-1]] = value
        return d
    return f


BAD_DATA = {
    "id_str": (_set(["images", 0, "id"], "abc"), "images[0]", "id"),
    "id_numstr": (_set(["images", 0, "id"], "12"), "images[0]", "id"),
    "id_null": (_set(["images", 0, "id"], None), "images[0]", "id"),
    "id_frac": (_set(["images", 0, "id"], 1.5), "images[0]", "id"),
    "id_bool": (_set(["images", 0, "id"], True), "images[0]", "id"),
    "id_dup": (lambda d: dict(d, images=d["images"] + [dict(d["images"][0], file_name="x.jpg")]), "images[1]",
               "id"),
    "fn_up": (_set(["images", 0, "file_name"], "../one.json"), "images[0]", "file_name"),
    "fn_abs": (_set(["images", 0, "file_name"], "/etc/passwd"), "images[0]", "file_name"),
    "fn_num": (_set(["images", 0, "file_name"], 7), "images[0]", "file_name"),
    "anns_dict": (_set(["annotations"], {"a": 1}), None, "annotations"),
    "anns_str": (_set(["annotations"], "abc"), None, "annotations"),
    "ann_int": (_set(["annotations", 0], 5), "annotations[0]", None),
    "bbox_short": (_set(["annotations", 0, "bbox"], [1, 2]), "annotations[0]", "bbox"),
    "bbox_str": (_set(["annotations", 0, "bbox"], "x"), "annotations[0]", "bbox"),
    "bbox_null": (_set(["annotations", 0, "bbox"], None), "annotations[0]", "bbox"),
    "bbox_strs": (_set(["annotations", 0, "bbox"], ["1", 2, 3, 4]), "annotations[0]", "bbox"),
    "bbox_neg": (_set(["annotations", 0, "bbox"], [1, 2, -3, 4]), "annotations[0]", "bbox"),
    "ann_image_str": (_set(["annotations", 0, "image_id"], "abc"), "annotations[0]", "image_id"),
    "ann_image_other": (_set(["annotations", 0, "image_id"], 10**12), "annotations[0]", "image_id"),
    "ann_cat_str": (_set(["annotations", 0, "category_id"], "person"), "annotations[0]", "category_id"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_refused_before_detection(one, capsys, no_detector, case):
    mut, record, field = BAD_DATA[case]
    one["data"].write_text(json.dumps(mut(copy.deepcopy(one["dict"]))))
    needles = [str(one["data"])] + ([f"record {record}"] if record else []) + ([f"field '{field}'"] if field else [])
    _refused(capsys, ["detect", "--model", one["model"], "--images", one["images"], "--data", one["data"],
                      "--out", one["out"]], one["out"], *needles)


# ---- 4, 5: the model card -------------------------------------------------------------------------------
def _card(path, value):
    def f(c):
        o = c
        for k in path[:-1]:
            o = o[k]
        if value is KeyError:
            del o[path[-1]]
        else:
            o[path[-1]] = value
        return c
    return f


def _swap(c):
    c["decoder"]["scores"], c["decoder"]["boxes"] = c["decoder"]["boxes"], c["decoder"]["scores"]
    return c


# static: refused when the card is read, before the model is opened
STATIC_CARDS = {
    "no_reg_max": (_card(["decoder", "reg_max"], KeyError), "decoder.reg_max"),
    "reg_max_str": (_card(["decoder", "reg_max"], "10"), "decoder.reg_max"),
    "reg_max_bool": (_card(["decoder", "reg_max"], True), "decoder.reg_max"),
    "no_class": (_card(["decoder", "class"], KeyError), "decoder.class"),
    "class_neg": (_card(["decoder", "class"], -1), "decoder.class"),
    "no_strides": (_card(["decoder", "strides"], KeyError), "decoder.strides"),
    "stride_0": (_card(["decoder", "strides"], [0, 16, 32]), "decoder.strides"),
    "stride_str": (_card(["decoder", "strides"], ["8", 16, 32]), "decoder.strides"),
    "stride_float": (_card(["decoder", "strides"], [8.0, 16, 32]), "decoder.strides"),
    "scores_short": (_card(["decoder", "scores"], ["Identity:0"]), "decoder.scores"),
    "boxes_str": (_card(["decoder", "boxes"], "Identity_3:0"), "decoder.boxes"),
    "boxes_are_scores": (_card(["decoder", "boxes"], CARD["decoder"]["scores"]), "decoder.boxes"),
}


@pytest.mark.parametrize("case", sorted(STATIC_CARDS))
def test_decoder_block_validated_statically(case):
    mut, field = STATIC_CARDS[case]
    with pytest.raises(PosecalInputError) as e:
        validate_card(mut(copy.deepcopy(CARD)), file="card.json")
    assert e.value.field == field and e.value.file == "card.json"


# against the model: names in the graph, declared input, output shapes of one blank frame, SHA-256
MODEL_CARDS = {
    "input_name": (_card(["input", "name"], "images"), "input.name"),
    "input_size": (_card(["input", "size"], [320, 320]), "input.size"),
    "input_size_nonsquare": (_card(["input", "size"], [416, 320]), "input.size"),
    "input_dtype": (_card(["input", "dtype"], "int32"), "input.dtype"),
    "input_layout": (_card(["input", "layout"], "NHWC"), "input.layout"),
    "reg_max_wrong": (_card(["decoder", "reg_max"], 7), "decoder.reg_max"),
    "class_beyond": (_card(["decoder", "class"], 80), "decoder.class"),
    "strides_reversed": (_card(["decoder", "strides"], [32, 16, 8]), "decoder.strides"),
    "scores_absent": (_card(["decoder", "scores"], ["x", "y", "z"]), "decoder.scores"),
    "swapped": (_swap, "decoder.boxes"),
    "sha256": (_card(["sha256"], "0" * 64), "sha256"),
}


@pytest.mark.parametrize("case", sorted(set(STATIC_CARDS) | set(MODEL_CARDS)))
def test_bad_card_is_one_line_naming_card_and_field(one, tmp_path, capsys, case):
    mut, field = {**STATIC_CARDS, **MODEL_CARDS}[case]
    card = tmp_path / "card.json"
    card.write_text(json.dumps(mut(copy.deepcopy(CARD))))
    _refused(capsys, ["detect", "--model", one["model"], "--model-card", card, "--images", one["images"],
                      "--data", one["data"], "--out", one["out"]], one["out"], f"{card}: field '{field}'")


def test_runtime_failure_names_the_card(one, tmp_path, monkeypatch):
    """What the static checks miss surfaces at the first (blank) frame as a PosecalInputError naming the card,
    not as an onnxruntime exception."""
    from posecal.models.detect import NanoDetDetector

    monkeypatch.setattr(NanoDetDetector, "_check_input", lambda self: None)
    card = copy.deepcopy(CARD)
    card["input"]["dtype"] = "int32"
    with pytest.raises(PosecalInputError) as e:
        NanoDetDetector(one["model"], validate_card(card), card_file=str(tmp_path / "c.json"))
    assert e.value.file == str(tmp_path / "c.json") and e.value.field == "input"
    assert "does not run as the card describes" in str(e.value) and "\n" not in str(e.value)


def test_valid_card_file_matches_builtin(one, tmp_path, capsys):
    """The built-in card written to a file passes every check and gives the built-in's detections."""
    card = tmp_path / "card.json"
    card.write_text(json.dumps(CARD))
    base = ["detect", "--model", one["model"], "--images", str(one["images"]), "--data", str(one["data"])]
    assert main([*base, "--model-card", str(card), "--out", str(tmp_path / "a.json"), "--threads", "1"]) == 0
    assert main([*base, "--out", str(tmp_path / "b.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert a and a == json.loads((tmp_path / "b.json").read_text())


def _linked(src, names, folder):
    """``folder`` holding symlinks to the images ``names`` of ``src``."""
    folder.mkdir()
    for n in names:
        os.symlink(src / n, folder / n)
    return folder


def test_detections_without_data_checked_against_the_data_files_images(shared, tmp_path, capsys):
    """``detect`` without ``--data`` makes up ids from the file names and writes each box's ``file_name``;
    ``extract --boxes`` crops them when the data file's images carry those ids, and refuses (one line, exit 2,
    nothing written) a data file that gives the ids to other images — the boxes would be cropped from the
    wrong pictures."""
    d = json.loads(shared(*MINI).read_text())
    ims = d["images"][:2]
    img = _linked(shared(*IMAGES), [im["file_name"] for im in ims], tmp_path / "img")
    det = tmp_path / "det.json"
    assert main(["detect", "--model", str(shared(*ND)), "--images", str(img), "--out", str(det),
                 "--score-thr", "0.3"]) == 0
    boxes = json.loads(det.read_text())
    names = {im["id"]: im["file_name"] for im in ims}
    assert boxes and all(b["file_name"] == names[b["image_id"]] for b in boxes)  # COCO names: the ids agree
    ids = [im["id"] for im in ims]
    keep = set(ids)
    small = dict(d, images=ims, annotations=[a for a in d["annotations"] if a["image_id"] in keep])
    good = tmp_path / "good.json"
    good.write_text(json.dumps(small))
    sp = str(shared("models", "simplepose", "ultralight-nano-simplepose.onnx"))
    assert main(["extract", "--model", sp, "--data", str(good), "--images", str(img), "--boxes", str(det),
                 "--out", str(tmp_path / "S")]) == 0
    swap = {ids[0]: ids[1], ids[1]: ids[0]}  # the same images, their ids exchanged
    perm = json.loads(json.dumps(small))
    for im in perm["images"]:
        im["id"] = swap[im["id"]]
    for a in perm["annotations"]:
        a["image_id"] = swap[a["image_id"]]
    bad = tmp_path / "perm.json"
    bad.write_text(json.dumps(perm))
    capsys.readouterr()
    assert main(["extract", "--model", sp, "--data", str(bad), "--images", str(img), "--boxes", str(det),
                 "--out", str(tmp_path / "S2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "det.json: record 0: field 'file_name'" in err[0] and "--data" in err[0], err
    assert not (tmp_path / "S2").exists()


def test_max_per_image_zero_keeps_every_box(mini, shared, tmp_path):
    """Before: 'field --max-per-image: must be >= 1' while extract's --max-per-image 0 means 'all'. Now 0 keeps
    every box after NMS: the same boxes as a limit no image reaches, and more than a limit of 1."""
    data, img = tmp_path / "data.json", tmp_path / "img"
    model = str(shared(*ND))

    def run(n: int) -> list:
        out = tmp_path / f"det{n}.json"
        assert main(["detect", "--model", model, "--images", str(img), "--data", str(data), "--out", str(out),
                     "--max-per-image", str(n)]) == 0
        return json.loads(out.read_text())

    every, huge, one = run(0), run(10**6), run(1)
    assert every == huge and len(every) > len(one) == 2
    assert main(["detect", "--model", model, "--images", str(img), "--out", str(tmp_path / "x.json"),
                 "--max-per-image", "-1"]) == 2
    assert not (tmp_path / "x.json").exists()
