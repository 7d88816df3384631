"""Person detection over an image folder with a carded ONNX detector (NanoDet-m: GFL decoding), as COCO
detection results (``image_id``, ``category_id`` 1, ``bbox`` x, y, w, h in image px, ``score``).

Decoding (NanoDet's, per its README): per stride s, cell i = row·n + col has centre ((col + 0.5)·s,
(row + 0.5)·s) in input px; each side's distance is the expectation of a softmax over ``reg_max + 1`` bins
times s; boxes are scaled back to the image by W0/W_in, H0/H_in (the frame is resized without keeping the
aspect). Candidates above ``score_thr`` go through class-wise IoU NMS (0.6, NanoDet's test config) and the
best ``max_per_image`` are kept.

Image ids: with a COCO dataset, ``file_name -> id`` from it (images not in it are skipped), written as the
dataset writes them (integers, or strings when all its image ids are strings, as pycocotools accepts); without
one, the id is the integer in the file name's stem when every stem is a decimal number under 2**63 (COCO's
``000000000785.jpg`` -> 785), else the 1-based position in the sorted file list.

Checks before any image is read: the dataset (:func:`read_data`: unique image ids, all integers or all
strings, file names inside the image folder, well-formed annotations) and the card against the model
(:class:`NanoDetDetector`: the card's SHA-256, input name / dtype / layout / size, the decoder's tensors,
class index, ``reg_max`` and strides against one blank frame run through the model), each refused in one
line naming the file and field.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError
from posecal.models.nms import box_nms

__all__ = ["NanoDetDetector", "detect_folder", "image_ids", "read_data", "recall_at_iou"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class NanoDetDetector:
    """An ONNX detector run as its card says (``decoder.type == "nanodet-gfl"``).

    Opening it checks the card against the model (``card_file`` names the card in the errors; without it
    the model file is named): the card's ``sha256``, the input's name, dtype, layout and size against the
    model's input, the decoder's tensors in the graph, then one blank frame through the model for the
    output shapes (class index, ``reg_max``, cells per stride). Any mismatch is a :class:`PosecalInputError`.
    """

    def __init__(self, path: str | os.PathLike, card: dict[str, Any], num_threads: int | None = None, *,
                 card_file: str | os.PathLike | None = None):
        from posecal.models.adapters.card import open_session

        self.path, self.card = Path(path), card
        self._who = str(card_file) if card_file is not None else str(self.path)
        dec = card["decoder"]
        self.strides, self.reg_max, self.cls = list(dec["strides"]), int(dec["reg_max"]), int(dec["class"])
        self._fetch = list(dec["scores"]) + list(dec["boxes"])
        self.input_size = tuple(card["input"]["size"])
        self._check_sha256()
        self._check_tensor_names()
        self.session = open_session(self.path, self._fetch, num_threads)
        self._check_input()
        self._check_outputs(self._run(np.zeros((self.input_size[1], self.input_size[0], 3), np.uint8)))

    # -- the card against the model ---------------------------------------------------------------------
    def _bad(self, message: str, field: str) -> PosecalInputError:
        return PosecalInputError(message, file=self._who, field=field)

    def _check_sha256(self) -> None:
        from posecal.models.store import file_sha256

        want = self.card.get("sha256")
        if want is None:
            return
        have = file_sha256(self.path)
        if want.lower() != have:
            raise self._bad(f"the card describes another model file (its sha256 {want[:12]}… differs from "
                            f"{self.path.name}'s {have[:12]}…); fix it or set it to null", "sha256")

    def _check_tensor_names(self) -> None:
        import onnx

        try:
            g = onnx.load_model(str(self.path), load_external_data=False).graph
        except Exception as e:
            raise PosecalInputError(f"not an ONNX model: {e}", file=str(self.path), field="--model") from None
        if not g.node:  # an empty file parses as an empty ModelProto
            raise PosecalInputError("not an ONNX model (empty graph)", file=str(self.path), field="--model")
        values = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {o.name for o in g.output}
        for key in ("scores", "boxes"):
            for t in self.card["decoder"][key]:
                if t not in values:
                    raise self._bad(f"the model {self.path.name} has no tensor {t!r}", f"decoder.{key}")

    def _check_input(self) -> None:
        """The card's input against the model's declared input (name, element type, static dims)."""
        inp = self.card["input"]
        ins = self.session.get_inputs()
        names = [i.name for i in ins]
        if inp["name"] not in names:
            raise self._bad(f"{inp['name']!r} is not an input of the model (its inputs: "
                            f"{', '.join(map(repr, names))})", "input.name")
        if len(ins) > 1:
            raise self._bad(f"the model has {len(ins)} inputs ({', '.join(map(repr, names))}); a detector takes "
                            "one frame", "input.name")
        mi = ins[0]
        types = {"tensor(float)": "float32", "tensor(int32)": "int32", "tensor(uint8)": "uint8"}
        if types.get(mi.type, mi.type) != inp["dtype"]:
            raise self._bad(f"the model's input {mi.name!r} is {mi.type}, the card says {inp['dtype']}",
                            "input.dtype")
        if not mi.shape:  # rank not declared: the blank frame run checks it
            return
        shape = [d if isinstance(d, int) and d > 0 else None for d in mi.shape]
        shown = "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
        if len(shape) != 4:
            raise self._bad(f"the model's input {mi.name!r} has shape {shown}; a detector takes one "
                            "(1, 3, H, W) or (1, H, W, 3) frame", "input.name")
        nchw = inp["layout"] == "NCHW"
        c, h, w = (shape[1], shape[2], shape[3]) if nchw else (shape[3], shape[1], shape[2])
        if c not in (None, 3):
            raise self._bad(f"the model's input has shape {shown}: with layout {inp['layout']} it would have "
                            f"{c} colour channels, not 3", "input.layout")
        W, H = self.input_size
        if (w is not None and w != W) or (h is not None and h != H):
            raise self._bad(f"the model's input is {w or '?'}x{h or '?'} (W x H, shape {shown}), the card says "
                            f"{W}x{H}", "input.size")
        if shape[0] not in (None, 1):
            raise self._bad(f"the model's input has a fixed batch of {shape[0]}; the detector runs one frame",
                            "input.batch")

    def _check_outputs(self, outs: list[np.ndarray]) -> None:
        """The decoder's settings against the output shapes of one run (one (1, cells, classes) scores and one
        (1, cells, 4 (reg_max + 1)) boxes tensor per stride, cells = the stride's grid on the input)."""
        dec, n = self.card["decoder"], len(self.strides)
        W, H = self.input_size
        bins = 4 * (self.reg_max + 1)
        for s, sc, bx, sn, bn in zip(self.strides, outs[:n], outs[n:], dec["scores"], dec["boxes"], strict=True):
            for key, t, a in (("scores", sn, sc), ("boxes", bn, bx)):
                if a.ndim != 3 or a.shape[0] != 1:
                    raise self._bad(f"output {t!r} has shape {tuple(a.shape)}, expected (1, cells, values)",
                                    f"decoder.{key}")
            if bx.shape[2] != bins and sc.shape[2] == bins:
                raise self._bad(f"output {bn!r} has {bx.shape[2]} values per cell and {sn!r} has {sc.shape[2]}: "
                                "decoder.scores and decoder.boxes look swapped", "decoder.boxes")
            if bx.shape[2] != bins:
                fit = f" (reg_max {bx.shape[2] // 4 - 1} would fit)" if bx.shape[2] % 4 == 0 else ""
                raise self._bad(f"output {bn!r} has {bx.shape[2]} values per cell; reg_max {self.reg_max} needs "
                                f"4 x ({self.reg_max} + 1) = {bins}{fit}", "decoder.reg_max")
            if not self.cls < sc.shape[2]:
                raise self._bad(f"class {self.cls}, but output {sn!r} has {sc.shape[2]} classes", "decoder.class")
            cells = math.ceil(H / s) * math.ceil(W / s)
            if sc.shape[1] != cells or bx.shape[1] != cells:
                raise self._bad(f"outputs {sn!r} / {bn!r} have {sc.shape[1]} / {bx.shape[1]} cells; stride {s} "
                                f"on a {W}x{H} input gives {cells}", "decoder.strides")

    def _run(self, image: np.ndarray) -> list[np.ndarray]:
        """One (H_in, W_in, 3) uint8 RGB frame through the model; a runtime failure (the card does not fit
        the model) is a PosecalInputError naming the card (or the model)."""
        from posecal.models.adapters.card import prepare_input

        try:
            outs = self.session.run(self._fetch, {self.card["input"]["name"]: prepare_input(image[None],
                                                                                           self.card["input"])})
        except MemoryError:
            raise
        except Exception as e:  # onnxruntime's own exception classes (InvalidArgument, Fail, ...)
            msg = " ".join(str(e).split())
            raise self._bad(f"the model {self.path.name} does not run as the card describes: "
                            f"{msg[:300]}", "input") from None
        return [np.asarray(o) for o in outs]

    def __call__(self, image: np.ndarray, score_thr: float = 0.05, nms_thr: float = 0.6,
                 max_per_image: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """RGB (H, W, 3) uint8 -> boxes (D, 4) x, y, w, h image px and scores (D,), best first."""
        from PIL import Image

        W, H = self.input_size
        h0, w0 = image.shape[:2]
        outs = self._run(np.asarray(Image.fromarray(image).resize((W, H), Image.Resampling.BILINEAR)))
        n = len(self.strides)
        boxes, scores = [], []
        for s, sc, bx in zip(self.strides, outs[:n], outs[n:], strict=True):
            p = sc[0, :, self.cls]
            sel = np.flatnonzero(p > score_thr)
            if not sel.size:
                continue
            cols = math.ceil(W / s)  # the stride's grid (checked against the outputs)
            cy, cx = np.divmod(sel, cols)
            ctr = np.stack([(cx + 0.5) * s, (cy + 0.5) * s], axis=1)
            logits = bx[0, sel].reshape(-1, 4, self.reg_max + 1).astype(np.float64)
            e = np.exp(logits - logits.max(-1, keepdims=True))
            dist = (e / e.sum(-1, keepdims=True) * np.arange(self.reg_max + 1)).sum(-1) * s  # l, t, r, b
            x0 = np.clip(ctr[:, 0] - dist[:, 0], 0, W)
            y0 = np.clip(ctr[:, 1] - dist[:, 1], 0, H)
            x1 = np.clip(ctr[:, 0] + dist[:, 2], 0, W)
            y1 = np.clip(ctr[:, 1] + dist[:, 3], 0, H)
            boxes.append(np.stack([x0, y0, x1, y1], 1))
            scores.append(p[sel].astype(np.float64))
        if not boxes:
            return np.zeros((0, 4)), np.zeros(0)
        b, sc = np.concatenate(boxes), np.concatenate(scores)
        keep = box_nms(b, sc, nms_thr)[:max_per_image or None]  # 0: all
        b, sc = b[keep] * np.array([w0 / W, h0 / H, w0 / W, h0 / H]), sc[keep]
        xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
        ok = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        return xywh[ok], sc[ok]


def read_data(src: str | os.PathLike | dict[str, Any], *, file: str | None = None) -> dict[str, Any]:
    """Load and check the COCO JSON ``detect --data`` reads; returns the dict.

    ``images``: a list of objects with an integer ``id`` (unique; not a bool or fraction) — or every ``id`` a
    string, as pycocotools accepts — and a ``file_name`` inside the image folder
    (:func:`posecal.datasets.coco.safe_file_name`). ``annotations`` (optional, for the recall): a list of
    objects with an ``image_id`` of a listed image (of its ids' kind), integer
    ``category_id`` / number ``iscrowd`` when present, and a ``bbox`` of 4 finite numbers with w, h >= 0 when
    present. A bad record raises :class:`PosecalInputError` naming the file, record and field."""
    from posecal._util import read_json
    from posecal.datasets.coco import check_ref_kind, image_ref, number, numbers, show_id

    if isinstance(src, dict):
        d, file = src, file or "<dict>"
    else:
        file = file or str(src)
        d = read_json(src)
    if not isinstance(d, dict) or not isinstance(d.get("images"), list):
        raise PosecalInputError("expected a COCO dict with an images list", file=file, field="images")
    images = _image_records(d, file)
    _check_keypoint_category_id(d, file)
    ids = {iid for iid, _ in images}
    string_ids = bool(images) and isinstance(images[0][0], str)
    anns = d.get("annotations", [])
    if not isinstance(anns, list):
        raise PosecalInputError(f"expected a list, got {type(anns).__name__}", file=file, field="annotations")
    check_ref_kind(images, anns, file)
    for r, a in enumerate(anns):
        rec = f"annotations[{r}]"
        if not isinstance(a, dict):
            raise PosecalInputError("annotation is not an object", file=file, record=rec)
        if "image_id" not in a:
            raise PosecalInputError("missing", file=file, record=rec, field="image_id")
        iid = image_ref(a["image_id"], string_ids, file, rec)
        if iid not in ids:
            raise PosecalInputError(f"image_id {show_id(iid)} not in images", file=file, record=rec,
                                    field="image_id")
        if "category_id" in a:
            number(a["category_id"], file, rec, "category_id", integer=True)
        if "iscrowd" in a and not isinstance(a["iscrowd"], bool):  # true/false: read as 1/0, as pycocotools
            number(a["iscrowd"], file, rec, "iscrowd")
        if "bbox" in a:
            b = numbers(a["bbox"], 4, file, rec, "bbox")
            if b[2] < 0 or b[3] < 0:
                raise PosecalInputError("bbox must be [x, y, w, h] with w, h >= 0", file=file, record=rec,
                                        field="bbox")
    return d


def _check_keypoint_category_id(d: dict[str, Any], file: str | None) -> None:
    """The keypoint category's ``id`` (the ``category_id`` written on the boxes), when present: an integer
    (64-bit, as ``extract`` reads it)."""
    from posecal._util import keypoint_category_index
    from posecal.datasets.coco import number

    cats = d.get("categories")
    if not isinstance(cats, list) or not cats:
        return
    i = keypoint_category_index(cats)
    if isinstance(cats[i], dict) and "id" in cats[i]:
        number(cats[i]["id"], file, f"categories[{i}]", "id", integer=True)


def _image_records(data: dict[str, Any], file: str | None) -> list[tuple[int | str, str]]:
    """(id, file_name) of every ``images`` record, checked (:func:`posecal.datasets.coco.check_image_records`)."""
    from posecal.datasets.coco import check_image_records

    return check_image_records(data["images"], file)


def _warn_size_mismatch(data: dict[str, Any], img_dir: Path, data_file: str | None) -> None:
    """Images whose header size differs from the data's ``width``/``height`` (a wrong ``--images`` folder, or
    resized copies: the boxes are written in the pictures' own pixels, the gt boxes of the recall are not)."""
    from PIL import Image

    odd = []
    for r, im in enumerate(data["images"]):
        if "width" not in im or "height" not in im:
            continue
        try:
            with Image.open(img_dir / im["file_name"]) as f:
                wh = (int(f.size[0]), int(f.size[1]))
        except Exception:  # noqa: BLE001 - an unreadable image is named when it is read
            continue
        if wh != (int(im["width"]), int(im["height"])):
            odd.append((r, im["file_name"], wh, (int(im["width"]), int(im["height"]))))
    from posecal.models.crop import warn_image_sizes

    warn_image_sizes(odd, data_file, stacklevel=3)


def _listed_images(img_dir: Path) -> list[str]:
    """Sorted names of the image files in ``img_dir``; links named like images that lead to no file are
    skipped with one warning (not silently left out)."""
    named = [p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS]
    broken = sorted(p.name for p in named if p.is_symlink() and not p.is_file())
    if broken:
        import warnings

        from posecal.errors import PosecalWarning

        warnings.warn(f"{img_dir}: {len(broken)} link(s) named like images lead to no file and are skipped "
                      f"(first: {broken[0]})", PosecalWarning, stacklevel=3)
    return sorted(p.name for p in named if p.is_file())


def image_ids(images: str | os.PathLike, data: dict[str, Any] | None, *,
              data_file: str | None = None, skip_missing: bool = False) -> list[tuple[int | str, str]]:
    """(image_id, file_name) pairs to run on (see the module docstring for the id rule). ``data``'s image
    records are checked as :func:`read_data` does (``data_file`` names it in the errors). An image of ``data``
    missing from the folder is an error, or with ``skip_missing`` left out with one warning counting them."""
    img_dir = Path(images)
    if not img_dir.is_dir():
        raise PosecalInputError("not a folder" if img_dir.exists() else "image folder not found", file=str(img_dir),
                                field="--images")
    if data is not None:
        out = _image_records(data, data_file)
        if not out:
            raise PosecalInputError("no image records: nothing to detect on", file=data_file, field="images")
        missing = [f for _, f in out if not (img_dir / f).is_file()]
        if missing and (not skip_missing or len(missing) == len(out)):
            raise PosecalInputError(f"{len(missing)} image(s) of the dataset missing: {', '.join(missing[:5])}"
                                    + (" (all of them)" if skip_missing else " (--skip-missing leaves them out)"),
                                    file=str(img_dir), field="--images")
        if missing:
            import warnings

            from posecal.errors import PosecalWarning

            warnings.warn(f"{img_dir}: {len(missing)} of {len(out)} image(s) of the dataset missing, skipped "
                          f"(first: {missing[0]}); the recall counts the gt of the images detected on only",
                          PosecalWarning, stacklevel=2)
            gone = set(missing)
            out = [(i, f) for i, f in out if f not in gone]
        _warn_size_mismatch(data, img_dir, data_file)
        return out
    files = _listed_images(img_dir)
    if not files:
        raise PosecalInputError("no images (.jpg/.png/...) in the folder", file=str(img_dir), field="--images")
    stems = [Path(f).stem for f in files]
    if (all(re.fullmatch(r"\d+", s) for s in stems) and len({int(s) for s in stems}) == len(stems)
            and max(int(s) for s in stems) < 2**63):  # ids fit a 64-bit integer (JSON writers, the store)
        return [(int(s), f) for s, f in zip(stems, files, strict=True)]
    return [(i + 1, f) for i, f in enumerate(files)]


def detect_folder(detector: NanoDetDetector, pairs: list[tuple[int | str, str]], images: str | os.PathLike, *,
                  score_thr: float = 0.05, max_per_image: int = 100, skip_bad_images: bool = False,
                  show_progress: bool | None = None, category_id: int = 1, with_file_name: bool = False
                  ) -> list[dict[str, Any]]:
    """COCO detection results (person boxes, written with ``category_id``, COCO's person 1 by default) for
    every (image_id, file_name). ``with_file_name``: each record also carries its image's ``file_name`` (ids
    made up from the folder, without a data file: ``extract --boxes`` then checks they name the data file's
    images, not others that happen to share the ids).

    An image that cannot be decoded (empty, corrupt, truncated, too large) raises :class:`PosecalInputError`
    naming it, or with ``skip_bad_images`` gets no detection and one :class:`PosecalWarning` counts them all."""
    from posecal._util import progress
    from posecal.datasets.coco import show_id
    from posecal.errors import PosecalInputError, PosecalWarning
    from posecal.models.crop import load_image

    out: list[dict[str, Any]] = []
    bad: list[str] = []
    bar = progress(total=len(pairs), desc="detect", unit="img",
                   **({} if show_progress is None else {"disable": not show_progress}))
    for iid, f in pairs:
        try:
            image = load_image(Path(images) / f, record=f"image_id {show_id(iid)}")
        except PosecalInputError:
            if not skip_bad_images:
                raise
            bad.append(f)
            bar.update(1)
            continue
        b, s = detector(image, score_thr=score_thr, max_per_image=max_per_image)
        extra = {"file_name": f} if with_file_name else {}
        out.extend({"image_id": iid, "category_id": category_id, "bbox": [round(float(v), 3) for v in bb],
                    "score": round(float(sc), 5), **extra} for bb, sc in zip(b, s, strict=True))
        bar.update(1)
    bar.close()
    if bad:
        import warnings

        warnings.warn(f"{len(bad)} image(s) could not be decoded and got no detection (first: "
                      f"{Path(images) / bad[0]})", PosecalWarning, stacklevel=2)
    return out


def recall_at_iou(dets: list[dict[str, Any]], data: dict[str, Any], thr: float = 0.5, category_id: int = 1
                  ) -> tuple[float, int]:
    """Fraction of non-crowd gt boxes of ``category_id`` (annotations without one count as it) with a
    detection of IoU >= thr (any score), and their count. Image ids: integers, or strings (both files')."""
    from posecal.datasets.coco import image_key

    by_img: dict[int | str, list[np.ndarray]] = {}
    for d in dets:
        by_img.setdefault(image_key(d["image_id"]), []).append(np.asarray(d["bbox"], np.float64))
    hit = n = 0
    for a in data.get("annotations", []):
        if a.get("iscrowd", 0) or int(a.get("category_id", category_id)) != category_id or "bbox" not in a:
            continue
        n += 1
        g = np.asarray(a["bbox"], np.float64)
        ds = by_img.get(image_key(a["image_id"]))
        if not ds:
            continue
        D = np.stack(ds)
        w = np.maximum(0, np.minimum(D[:, 0] + D[:, 2], g[0] + g[2]) - np.maximum(D[:, 0], g[0]))
        h = np.maximum(0, np.minimum(D[:, 1] + D[:, 3], g[1] + g[3]) - np.maximum(D[:, 1], g[1]))
        inter = w * h
        iou = inter / (D[:, 2] * D[:, 3] + g[2] * g[3] - inter)
        hit += bool((iou >= thr).any())
    return (hit / n if n else float("nan")), n
