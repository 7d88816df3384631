"""Person detection over an image folder with a carded ONNX detector (NanoDet-m: GFL decoding), as COCO
detection results (``image_id``, ``category_id`` 1, ``bbox`` x, y, w, h in image px, ``score``).

Decoding (NanoDet's, per its README): per stride s, cell i = row·n + col has centre ((col + 0.5)·s,
(row + 0.5)·s) in input px; each side's distance is the expectation of a softmax over ``reg_max + 1`` bins
times s; boxes are scaled back to the image by W0/W_in, H0/H_in (the frame is resized without keeping the
aspect). Candidates above ``score_thr`` go through class-wise IoU NMS (0.6, NanoDet's test config) and the
best ``max_per_image`` are kept.

Image ids: with a COCO dataset, ``file_name -> id`` from it (images not in it are skipped); without one, the
id is the integer in the file name's stem when every stem is a decimal number (COCO's ``000000000785.jpg``
-> 785), else the 1-based position in the sorted file list.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError
from posecal.models.nms import box_nms

__all__ = ["NanoDetDetector", "detect_folder", "image_ids", "recall_at_iou"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class NanoDetDetector:
    """An ONNX detector run as its card says (``decoder.type == "nanodet-gfl"``)."""

    def __init__(self, path: str | os.PathLike, card: dict[str, Any], num_threads: int | None = None):
        from posecal.models.adapters.card import open_session

        self.path, self.card = Path(path), card
        dec = card["decoder"]
        self.strides, self.reg_max, self.cls = list(dec["strides"]), int(dec["reg_max"]), int(dec["class"])
        self._fetch = list(dec["scores"]) + list(dec["boxes"])
        self.session = open_session(self.path, self._fetch, num_threads)
        self.input_size = tuple(card["input"]["size"])

    def __call__(self, image: np.ndarray, score_thr: float = 0.05, nms_thr: float = 0.6,
                 max_per_image: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """RGB (H, W, 3) uint8 -> boxes (D, 4) x, y, w, h image px and scores (D,), best first."""
        from PIL import Image

        from posecal.models.adapters.card import prepare_input

        W, H = self.input_size
        h0, w0 = image.shape[:2]
        im = np.asarray(Image.fromarray(image).resize((W, H), Image.Resampling.BILINEAR))
        outs = self.session.run(self._fetch, {self.card["input"]["name"]: prepare_input(im[None], self.card["input"])})
        n = len(self.strides)
        boxes, scores = [], []
        for s, sc, bx in zip(self.strides, outs[:n], outs[n:], strict=True):
            p = sc[0, :, self.cls]
            sel = np.flatnonzero(p > score_thr)
            if not sel.size:
                continue
            cols = int(round(W / s))
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
        keep = box_nms(b, sc, nms_thr)[:max_per_image]
        b, sc = b[keep] * np.array([w0 / W, h0 / H, w0 / W, h0 / H]), sc[keep]
        xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
        ok = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        return xywh[ok], sc[ok]


def image_ids(images: str | os.PathLike, data: dict[str, Any] | None) -> list[tuple[int, str]]:
    """(image_id, file_name) pairs to run on (see the module docstring for the id rule)."""
    img_dir = Path(images)
    if not img_dir.is_dir():
        raise PosecalInputError("image folder not found", file=str(img_dir), field="--images")
    if data is not None:
        out = [(int(im["id"]), str(im["file_name"])) for im in data["images"]]
        missing = [f for _, f in out if not (img_dir / f).is_file()]
        if missing:
            raise PosecalInputError(f"{len(missing)} image(s) of the dataset missing: {', '.join(missing[:5])}",
                                    file=str(img_dir), field="--images")
        return out
    files = sorted(p.name for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise PosecalInputError("no images (.jpg/.png/...) in the folder", file=str(img_dir), field="--images")
    stems = [Path(f).stem for f in files]
    if all(re.fullmatch(r"\d+", s) for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [(int(s), f) for s, f in zip(stems, files, strict=True)]
    return [(i + 1, f) for i, f in enumerate(files)]


def detect_folder(detector: NanoDetDetector, pairs: list[tuple[int, str]], images: str | os.PathLike, *,
                  score_thr: float = 0.05, max_per_image: int = 100, skip_bad_images: bool = False,
                  show_progress: bool | None = None) -> list[dict[str, Any]]:
    """COCO detection results (person, category_id 1) for every (image_id, file_name).

    An image that cannot be decoded (empty, corrupt, truncated, too large) raises :class:`PosecalInputError`
    naming it, or with ``skip_bad_images`` gets no detection and one :class:`PosecalWarning` counts them all."""
    from posecal._util import progress
    from posecal.errors import PosecalInputError, PosecalWarning
    from posecal.models.crop import load_image

    out: list[dict[str, Any]] = []
    bad: list[str] = []
    bar = progress(total=len(pairs), desc="detect", unit="img",
                   **({} if show_progress is None else {"disable": not show_progress}))
    for iid, f in pairs:
        try:
            image = load_image(Path(images) / f)
        except PosecalInputError:
            if not skip_bad_images:
                raise
            bad.append(f)
            bar.update(1)
            continue
        b, s = detector(image, score_thr=score_thr, max_per_image=max_per_image)
        out.extend({"image_id": iid, "category_id": 1, "bbox": [round(float(v), 3) for v in bb],
                    "score": round(float(sc), 5)} for bb, sc in zip(b, s, strict=True))
        bar.update(1)
    bar.close()
    if bad:
        import warnings

        warnings.warn(f"{len(bad)} image(s) could not be decoded and got no detection (first: "
                      f"{Path(images) / bad[0]})", PosecalWarning, stacklevel=2)
    return out


def recall_at_iou(dets: list[dict[str, Any]], data: dict[str, Any], thr: float = 0.5) -> tuple[float, int]:
    """Fraction of non-crowd gt person boxes with a detection of IoU >= thr (any score), and their count."""
    by_img: dict[int, list[np.ndarray]] = {}
    for d in dets:
        by_img.setdefault(int(d["image_id"]), []).append(np.asarray(d["bbox"], np.float64))
    hit = n = 0
    for a in data.get("annotations", []):
        if a.get("iscrowd", 0) or int(a.get("category_id", 1)) != 1 or "bbox" not in a:
            continue
        n += 1
        g = np.asarray(a["bbox"], np.float64)
        ds = by_img.get(int(a["image_id"]))
        if not ds:
            continue
        D = np.stack(ds)
        w = np.maximum(0, np.minimum(D[:, 0] + D[:, 2], g[0] + g[2]) - np.maximum(D[:, 0], g[0]))
        h = np.maximum(0, np.minimum(D[:, 1] + D[:, 3], g[1] + g[3]) - np.maximum(D[:, 1], g[1]))
        inter = w * h
        iou = inter / (D[:, 2] * D[:, 3] + g[2] * g[3] - inter)
        hit += bool((iou >= thr).any())
    return (hit / n if n else float("nan")), n
