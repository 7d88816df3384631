"""Model cards: a small, validated JSON description of a pose model or a person detector.

A card says everything the pipeline needs to run a model file without per-model code: how to feed it
(input name, layout, dtype, size, colour order, normalisation, the crop's aspect and padding), what comes
out (heatmaps, or coordinates + scores and their normalisation), the keypoint order, the feature tensor
CCNet reads and the heatmap training-target width that σ̂ assumes. ``posecal extract`` / ``posecal detect``
find the card of a model file by its **SHA-256** among the built-in cards (:data:`BUILTIN_CARDS`: every model
in ``../shared/models``); any other model takes ``--model-card CARD.json``.

Pose card (``"task": "pose"``)::

    {"format": "posecal-model-card/1", "task": "pose", "name": "...", "sha256": "<hex or null>",
     "input": {"name": "data", "layout": "NCHW"|"NHWC", "dtype": "float32"|"int32"|"uint8",
               "size": [W, H], "batch": 1|null, "color": "RGB"|"BGR",
               "scale": 1/255, "mean": [3], "std": [3]},          # x = (pixel * scale - mean) / std
     "crop": {"padding": 1.25, "aspect": "input"|"square"},
     "keypoints": "coco17" | [names...],                          # model joint order
     "output": {"type": "heatmaps", "name": ..., "layout": "NCHW"|"NHWC", "subpixel": true|false}
             | {"type": "coordinates", "name": ..., "order": "yxs"|"xys", "normalised": true|false},
     "heatmaps": {"name": ..., "layout": ...} | null,            # for σ̂ / pooling when output is coordinates
     "features": {"name": ..., "layout": "NCHW"|"NHWC"},
     "target_sigma": 2.0,                                         # heatmap px, the training-target Gaussian σ
     "ccnet": {"pooling": "heatmap", "evidence": true}}           # optional: extract's default pooling;
                                                                  # CCNet reads the instance evidence too

Detector card (``"task": "detector"``): ``input`` as above (whole frame, resized without keeping the
aspect), ``"decoder": {"type": "nanodet-gfl", "strides": [8, 16, 32], "reg_max": 10, "scores": [names],
"boxes": [names], "class": 0}``.

Coordinates: every adapter returns keypoints in **input pixels** with pixel centres at integers.
"""

from __future__ import annotations

import os
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError

__all__ = ["BUILTIN_CARDS", "CARD_FORMAT", "card_for_model", "crop_aspect", "load_card", "validate_card"]

CARD_FORMAT = "posecal-model-card/1"
_IMAGENET = {"color": "RGB", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

BUILTIN_CARDS: dict[str, dict[str, Any]] = {
    "ultralight-nano-simplepose": {
        "format": CARD_FORMAT, "task": "pose", "name": "ultralight-nano-simplepose",
        "sha256": "401b3204f5998970c17678f8acc53d798ec79ce5c7b02167067c5b71c954a786",
        "input": {"name": "data", "layout": "NCHW", "dtype": "float32", "size": [192, 256], "batch": 1,
                  **_IMAGENET},
        "crop": {"padding": 1.25, "aspect": "input"},
        "keypoints": "coco17",
        "output": {"type": "heatmaps", "name": "hybridsequential0_conv7_fwd", "layout": "NCHW",
                   "subpixel": True},
        "heatmaps": None,
        "features": {"name": "hybridsequential0_relu6_fwd", "layout": "NCHW"},
        # SimpleBaseline (and MMPose's td-hm_res50 configs) train 64×48 heatmaps with σ = 2 heatmap px;
        # the author's Gluon recipe is SimpleBaseline's, so σ = 2 is the width σ̂ subtracts. Measured: the
        # fitted widths of its heatmaps on 40 coco-mini gt crops have 5th percentile 2.06, median 2.40 px.
        "target_sigma": 2.0,
        "ccnet": {"pooling": "heatmap", "evidence": True},
    },
    "movenet-thunder": {
        "format": CARD_FORMAT, "task": "pose", "name": "movenet-thunder",
        "sha256": "862e084de84a9f2d89213de7e8a45e290bd4a8f8665c3dcf5e2034434480bcc4",
        "input": {"name": "input:0", "layout": "NHWC", "dtype": "int32", "size": [256, 256], "batch": 1,
                  "color": "RGB", "scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        "crop": {"padding": 1.25, "aspect": "input"},
        "keypoints": "coco17",
        "output": {"type": "coordinates", "name": "Identity:0", "order": "yxs", "normalised": True},
        "heatmaps": {"name": "kpt_heatmap", "layout": "NHWC"},
        "features": {"name": "backbone_features", "layout": "NHWC"},
        # CenterNet-style sigmoid keypoint heatmaps at stride 4 (64×64), trained with a focal loss on Gaussian
        # splats; MoveNet publishes no width. Measured fitted widths on 40 coco-mini gt crops: 5th percentile
        # 0.65, 25th 1.02, median 1.50 heatmap px; 1.0 is used (σ̂ and the closed form are approximate here:
        # the map is not an MSE-trained Gaussian).
        "target_sigma": 1.0,
        "ccnet": {"pooling": "heatmap", "evidence": True},
    },
    "nanodet-m-416": {
        "format": CARD_FORMAT, "task": "detector", "name": "nanodet-m-416",
        "sha256": "213e445cee287f36f27fc895036c338da58f97a9ff8e3ab929f81acfee79fb9c",
        "input": {"name": "input_1:0", "layout": "NCHW", "dtype": "float32", "size": [416, 416], "batch": 1,
                  "color": "BGR", "scale": 1.0, "mean": [103.53, 116.28, 123.675],
                  "std": [57.375, 57.12, 58.395]},
        "decoder": {"type": "nanodet-gfl", "strides": [8, 16, 32], "reg_max": 10,
                    "scores": ["Identity:0", "Identity_1:0", "Identity_2:0"],
                    "boxes": ["Identity_3:0", "Identity_4:0", "Identity_5:0"], "class": 0},
    },
    # TFLite models: run by the TFLite adapter (kind recognised from the card); cards describe them
    **{n: {"format": CARD_FORMAT, "task": "pose", "name": n, "sha256": h, "backend_kind": "efficientpose",
           "input": {"name": "input_res1", "layout": "NHWC", "dtype": "float32", "size": [s, s], "batch": 1,
                     **_IMAGENET},
           "crop": {"padding": 1.25, "aspect": "input"}, "keypoints": "mpii16",
           "output": {"type": "heatmaps", "name": "pass3_detection2_confs/BiasAdd", "layout": "NHWC",
                      "subpixel": False},
           "heatmaps": None, "features": None, "target_sigma": s / 256}
       # target width: 1.0 heatmap px for I's 32×32 maps (the narrowest fitted widths on LSP crops), scaled with
       # the map size, 0.875 for RT's 28×28 and 1.4375 for II's 46×46: the fitted widths' 5th percentiles on 40
       # LSP train crops (every 25th) are 0.91 / 1.04 / 1.53 px (40 LSP test crops: 0.91 / 1.04 / 1.54). One width
       # for all three left half of RT's σ̂ at 0 (measured, not selected, on 300 LSP test people: RT's closed form
       # −0.05 → +0.6 AP against raw, II's −2.4 → −0.4)
       for n, h, s in (
           ("EfficientPoseRT", "baf3da751c55517b7072a13f37ad5ce89d2dee813a7f0038ce90a7c8776d63b7", 224),
           ("EfficientPoseI", "fc5aac01a3b10b00f110acf862ff241cfa687f66a54ed022784c946218d5d54b", 256),
           ("EfficientPoseII", "0659b687e8c0d33f63855c2b196d355b317490a586275609e20787861a305ac3", 368))},
    **{n: {"format": CARD_FORMAT, "task": "pose", "name": n, "sha256": h, "backend_kind": "blazepose",
           "input": {"name": "input_1", "layout": "NHWC", "dtype": "float32", "size": [256, 256], "batch": 1,
                     "color": "RGB", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
           "crop": {"padding": 1.25, "aspect": "input"}, "keypoints": "blazepose33",
           "output": {"type": "coordinates", "name": "Identity", "order": "xys", "normalised": False},
           "heatmaps": {"name": "Identity_3", "layout": "NHWC"}, "features": None, "target_sigma": 2.0}
       for n, h in (("pose_landmark_full", "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"),
                    ("pose_landmark_lite", "f17bfbecadb61c3be1baa8b8d851cc6619c870a87167b32848ad20db306b9d61"))},
}

_LAYOUTS = ("NCHW", "NHWC")
_DTYPES = ("float32", "int32", "uint8")
_MAX_SIDE = 16384  # px per input side: far above any pose model; a blank crop of it is already ~3 GiB float32
_BACKEND_KINDS = ("efficientpose", "blazepose")  # posecal.models.adapters.tflite.KINDS
_POOLINGS = ("gap", "heatmap", "spatial")  # posecal.models.adapters.pooling.POOLINGS


def _is_num(v: Any) -> bool:
    """A JSON number (``true``/``false`` are not: Python reads them as 1/0)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _need(card: dict, key: str, types: type | tuple[type, ...], file: str | None, where: str = "") -> Any:
    v = card.get(key)
    if not isinstance(v, types):
        raise PosecalInputError("missing or of the wrong type", file=file, field=f"{where}{key}")
    return v


def _check_input(inp: dict, file: str | None, detector: bool) -> None:
    if not _need(inp, "name", str, file, "input."):
        raise PosecalInputError("must be the model's input tensor name, not empty", file=file, field="input.name")
    if inp.get("layout") not in _LAYOUTS:
        raise PosecalInputError(f"must be one of {_LAYOUTS}", file=file, field="input.layout")
    if inp.get("dtype") not in _DTYPES:
        raise PosecalInputError(f"must be one of {_DTYPES}", file=file, field="input.dtype")
    size = inp.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and 0 < v <= _MAX_SIDE for v in size)):
        raise PosecalInputError(f"must be [W, H], positive integers (at most {_MAX_SIDE}), got {size!r:.60}",
                                file=file, field="input.size")
    if inp.get("color") not in ("RGB", "BGR"):
        raise PosecalInputError("must be RGB or BGR", file=file, field="input.color")
    for key in ("mean", "std"):
        v = inp.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(_is_num(t) for t in v)):
            raise PosecalInputError(f"must be 3 numbers, got {v!r:.60}", file=file, field=f"input.{key}")
    if any(t == 0 for t in inp["std"]):
        raise PosecalInputError("std must be non-zero", file=file, field="input.std")
    if not _is_num(inp.get("scale", 1.0)):
        raise PosecalInputError("must be a number", file=file, field="input.scale")
    batch = inp.get("batch")
    if batch is not None and not (_is_int(batch) and batch > 0):
        raise PosecalInputError("must be a positive integer or null", file=file, field="input.batch")
    _check_normalisation(inp, file)


def _f(x: Any) -> float:
    """``x`` as a float; a JSON integer too large for one (``1e400`` written out) as ±inf."""
    try:
        return float(x)
    except OverflowError:
        return float("inf") if x > 0 else float("-inf")


def _check_normalisation(inp: dict, file: str | None) -> None:
    """``(pixel · scale − mean) / std`` of pixels 0 and 255 must be finite in the input dtype (float32 overflows
    past ~3.4e38: the model would then see inf/NaN), and an integer input must hold them (the cast wraps)."""
    scale, mean, std = _f(inp.get("scale", 1.0)), [_f(t) for t in inp["mean"]], [_f(t) for t in inp["std"]]
    if inp["dtype"] != "float32" and scale == 1.0 and not any(mean) and all(t == 1 for t in std):
        return  # raw pixels, cast as they are
    lim = {"float32": (-3.4e38, 3.4e38), "int32": (-2.0**31, 2.0**31 - 1), "uint8": (0.0, 255.0)}[inp["dtype"]]
    with np.errstate(all="ignore"):
        for c in range(3):
            for px in (0.0, 255.0):
                v = float((np.float64(px) * scale - mean[c]) / np.float64(std[c]))
                if np.isfinite(v) and lim[0] <= v <= lim[1]:
                    continue
                if inp["dtype"] != "float32":
                    field = "input.dtype"
                elif not np.isfinite(px * scale):
                    field = "input.scale"
                else:
                    m = float(np.float64(mean[c]) / np.float64(std[c]))
                    field = "input.mean" if abs(mean[c]) > 1 and not abs(m) <= lim[1] else "input.std"
                raise PosecalInputError(f"pixel {px:g} of channel {c} normalises to {v:.4g}, outside what the "
                                        f"input dtype {inp['dtype']} holds ([{lim[0]:.4g}, {lim[1]:.4g}]); fix "
                                        "scale, mean or std", file=file, field=field)


def _check_pose(card: dict, file: str | None) -> None:
    """A pose card's fields after ``input``: keypoints, output, tensors, crop, target sigma, backend kind, ccnet."""
    _check_keypoints(card.get("keypoints"), file)
    out = _check_output(card, file)
    _check_tensors_and_crop(card, file)
    _check_ccnet(card, out, file)


def _check_keypoints(kp: Any, file: str | None) -> None:
    """``keypoints``: a known set's name (or ``blazepose33``), or a list of distinct joint names."""
    from posecal.keypoints import get_keypoint_set

    if isinstance(kp, str):
        if kp != "blazepose33":
            try:
                get_keypoint_set(kp)
            except KeyError as e:
                raise PosecalInputError(str(e), file=file, field="keypoints") from None
        return
    if not (isinstance(kp, list) and kp and all(isinstance(n, str) and n for n in kp)):
        raise PosecalInputError("must be a keypoint-set name or a list of joint names", file=file,
                                field="keypoints")
    dup = next((n for i, n in enumerate(kp) if n in kp[:i]), None)
    if dup is not None:
        raise PosecalInputError(f"joint name {dup!r:.40} is listed twice: one name per output channel",
                                file=file, field="keypoints")


def _check_output(card: dict, file: str | None) -> dict:
    """``output``: heatmaps (with a layout) or coordinates (with an order); boolean flags are booleans."""
    out = _need(card, "output", dict, file)
    if out.get("type") not in ("heatmaps", "coordinates"):
        raise PosecalInputError("must be 'heatmaps' or 'coordinates'", file=file, field="output.type")
    _need(out, "name", str, file, "output.")
    if out["type"] == "heatmaps" and out.get("layout") not in _LAYOUTS:
        raise PosecalInputError(f"must be one of {_LAYOUTS}", file=file, field="output.layout")
    if out["type"] == "coordinates" and out.get("order") not in ("yxs", "xys"):
        raise PosecalInputError("must be 'yxs' or 'xys'", file=file, field="output.order")
    for key in ("subpixel", "normalised"):  # a string "false" would read as true
        if key in out and not isinstance(out[key], bool):
            raise PosecalInputError(f"must be true or false, got {out[key]!r:.40}", file=file, field=f"output.{key}")
    return out


def _check_tensors_and_crop(card: dict, file: str | None) -> None:
    """``heatmaps`` / ``features`` (null or a named tensor with a layout), ``crop``, ``target_sigma`` and
    ``backend_kind``."""
    for key in ("heatmaps", "features"):
        t = card.get(key)
        if t is None:
            continue
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or t.get("layout") not in _LAYOUTS:
            raise PosecalInputError("must be null or {name, layout: NCHW|NHWC}", file=file, field=key)
    crop = card.get("crop", {"padding": 1.25, "aspect": "input"})
    pad = crop.get("padding", 1.25) if isinstance(crop, dict) else None
    if not (isinstance(crop, dict) and isinstance(pad, (int, float)) and not isinstance(pad, bool)
            and 0 < pad <= 100 and crop.get("aspect", "input") in ("input", "square")):
        raise PosecalInputError("must be {padding in (0, 100], aspect: input|square}", file=file, field="crop")
    ts = card.get("target_sigma", 2.0)
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not 0 < ts <= 1000:
        raise PosecalInputError("must be a number in (0, 1000] (heatmap px)", file=file, field="target_sigma")
    bk = card.get("backend_kind")
    if bk is not None and bk not in _BACKEND_KINDS:
        raise PosecalInputError(f"must be one of {_BACKEND_KINDS} (a TFLite model's kind) or absent, got {bk!r:.40}",
                                file=file, field="backend_kind")


def _check_ccnet(card: dict, out: dict, file: str | None) -> None:
    """``ccnet``: null or {pooling: gap|heatmap|spatial, evidence: true|false}; heatmap pooling needs heatmaps."""
    cc = card.get("ccnet")
    if cc is None:
        return
    if not isinstance(cc, dict):
        raise PosecalInputError("must be null or {pooling: gap|heatmap|spatial, evidence: true|false}", file=file,
                                field="ccnet")
    if "pooling" in cc and cc["pooling"] not in _POOLINGS:
        raise PosecalInputError(f"must be one of {_POOLINGS}, got {cc['pooling']!r:.40}", file=file,
                                field="ccnet.pooling")
    if cc.get("pooling") == "heatmap" and out["type"] != "heatmaps" and card.get("heatmaps") is None:
        raise PosecalInputError("'heatmap' pooling needs heatmaps: the output is coordinates and 'heatmaps' is "
                                "null; name the heatmap tensor or choose gap/spatial", file=file,
                                field="ccnet.pooling")
    if "evidence" in cc and not isinstance(cc["evidence"], bool):
        raise PosecalInputError(f"must be true or false, got {cc['evidence']!r:.40}", file=file,
                                field="ccnet.evidence")


def crop_aspect(card: dict[str, Any] | None, input_size: tuple[int, int]) -> tuple[float, float]:
    """The (W, H) whose ratio the crop box is widened to before padding (:func:`posecal.theory.heatmap.
    topdown_crop_box`): the model input's ``input_size`` for the card's ``crop.aspect`` ``"input"`` (the default,
    MMPose's rule), ``(1, 1)`` for ``"square"`` (a square region, then resized to the input)."""
    crop = (card or {}).get("crop") or {}
    if isinstance(crop, dict) and crop.get("aspect") == "square":
        return 1.0, 1.0
    return float(input_size[0]), float(input_size[1])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_decoder(dec: dict, file: str | None) -> None:
    """A detector card's ``decoder``: types and ranges. What needs the model file (tensor names, the class
    count, ``reg_max`` and strides against the output shapes) is checked when the detector is opened
    (:class:`posecal.models.detect.NanoDetDetector`)."""
    if dec.get("type") != "nanodet-gfl":
        raise PosecalInputError("only 'nanodet-gfl' is known", file=file, field="decoder.type")
    strides = dec.get("strides")
    if not (isinstance(strides, list) and strides and all(_is_int(s) and s > 0 for s in strides)):
        raise PosecalInputError(f"must be a non-empty list of positive integers, got {strides!r:.60}", file=file,
                                field="decoder.strides")
    reg_max = dec.get("reg_max")
    if not (_is_int(reg_max) and reg_max >= 1):
        raise PosecalInputError(f"must be an integer >= 1 (GFL bins - 1), got {reg_max!r:.60}", file=file,
                                field="decoder.reg_max")
    cls = dec.get("class")
    if not (_is_int(cls) and cls >= 0):
        raise PosecalInputError(f"must be an integer >= 0 (the person class index), got {cls!r:.60}", file=file,
                                field="decoder.class")
    for key in ("scores", "boxes"):
        names = dec.get(key)
        if not (isinstance(names, list) and all(isinstance(t, str) and t for t in names)):
            raise PosecalInputError("must be a list of output tensor names", file=file, field=f"decoder.{key}")
        if len(names) != len(strides):
            raise PosecalInputError(f"{len(names)} names for {len(strides)} strides: one per stride", file=file,
                                    field=f"decoder.{key}")
    both = [t for t in dec["boxes"] if t in dec["scores"]]
    if both or len(set(dec["scores"])) != len(strides) or len(set(dec["boxes"])) != len(strides):
        what = f"{both[0]!r} is named in decoder.scores too" if both else "a tensor name repeats"
        raise PosecalInputError(f"{what}; every stride has its own scores and boxes tensor", file=file,
                                field="decoder.boxes" if both else "decoder")


_FREE_TEXT = ("description", "licence", "license", "notes", "source", "comment")
_KEYS: dict[str, tuple[str, ...]] = {
    "": ("format", "task", "name", "sha256", "input", "crop", "keypoints", "output", "heatmaps", "features",
         "target_sigma", "ccnet", "backend_kind", "decoder", *_FREE_TEXT),
    "input": ("name", "layout", "dtype", "size", "batch", "color", "scale", "mean", "std"),
    "crop": ("padding", "aspect"),
    "output": ("type", "name", "layout", "subpixel", "order", "normalised"),
    "heatmaps": ("name", "layout"),
    "features": ("name", "layout"),
    "ccnet": ("pooling", "evidence"),
    "decoder": ("type", "strides", "reg_max", "scores", "boxes", "class"),
}


def _check_keys(card: dict, file: str | None) -> None:
    """Every key is one the pipeline reads (or free text): a misspelt one (``"pading"``) would otherwise be
    ignored and its default used without a word."""
    import difflib

    for where, known in _KEYS.items():
        obj = card if not where else card.get(where)
        if not isinstance(obj, dict):
            continue
        for k in obj:
            if k not in known:
                close = difflib.get_close_matches(str(k), known, n=1)
                raise PosecalInputError(f"unknown key{f' (did you mean {close[0]!r}?)' if close else ''}; "
                                        f"known: {', '.join(known)}", file=file,
                                        field=f"{where}.{k}" if where else str(k))


def validate_card(card: Any, file: str | None = None) -> dict[str, Any]:
    """Check a card dict (see the module docstring); returns it. PosecalInputError names the bad field; an
    unknown (e.g. misspelt) key is refused too."""
    if not isinstance(card, dict):
        raise PosecalInputError("a model card is a JSON object", file=file)
    _check_keys(card, file)
    if card.get("format") != CARD_FORMAT:
        raise PosecalInputError(f"expected {CARD_FORMAT!r}", file=file, field="format")
    if card.get("task") not in ("pose", "detector"):
        raise PosecalInputError("must be 'pose' or 'detector'", file=file, field="task")
    if not _need(card, "name", str, file).strip():
        raise PosecalInputError("must be a label, not empty", file=file, field="name")
    sha = card.get("sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                and all(ch in "0123456789abcdef" for ch in sha.lower())):
        raise PosecalInputError(f"must be 64 hex digits or null, got {sha!r:.70}", file=file, field="sha256")
    if sha is not None:
        card["sha256"] = sha.lower()  # the file's digest is compared in lower case
    _check_input(_need(card, "input", dict, file), file, card["task"] == "detector")
    if card["task"] == "pose":
        _check_pose(card, file)
    else:
        _check_decoder(_need(card, "decoder", dict, file), file)
    return card


def load_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a card JSON file."""
    from posecal._util import read_json

    p = Path(path)
    if not p.is_file():
        raise PosecalInputError("model card not found", file=str(p), field="--model-card")
    return validate_card(read_json(p), file=str(p))


def card_for_model(model: str | os.PathLike, card: str | os.PathLike | dict | None = None, *,
                   sha256: str | None = None, task: str | None = None) -> dict[str, Any] | None:
    """The card of ``model``: ``card`` if given (path or dict), else the built-in card with the file's SHA-256,
    else None. ``task`` ('pose'/'detector'), when given, must match."""
    if card is not None:
        c = validate_card(deepcopy(card)) if isinstance(card, dict) else load_card(card)
    else:
        from posecal.models.store import file_sha256

        h = sha256 or file_sha256(model)
        c = next((deepcopy(v) for v in BUILTIN_CARDS.values() if v["sha256"] == h), None)
    if c is not None and task is not None and c["task"] != task:
        raise PosecalInputError(f"the model card describes a {c['task']} model, this command needs a {task}",
                                file=str(model), field="--model-card" if card is not None else "--model")
    return c
