"""Top-down extraction: a frozen pose model over a dataset into a feature store (:mod:`posecal.models.store`).

:func:`extract` crops every instance (gt or detector box, padding 1.25, the model's aspect; optional flip
test and jittered copies for CCNet training), runs any :class:`posecal.models.adapters.base.PoseAdapter`, maps the
model's joints to the dataset keypoint set, estimates heatmap σ̂ (:func:`posecal.theory.heatmap.estimate_sigma`),
pools the penultimate features (:mod:`posecal.models.adapters.pooling`) and writes chunk by chunk; a re-run with
the same settings resumes a partial store and finishes bit-identical. The CLI is ``posecal extract``.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from posecal._util import dumps_json, progress
from posecal.errors import PosecalInputError, PosecalWarning
from posecal.keypoints import CUSTOM
from posecal.models.adapters.pooling import POOLINGS, STORE_FIELD, pool_features
from posecal.models.cards import crop_aspect

# training-target Gaussian width (heatmap px) assumed by the sigma-hat estimator. EfficientPose's is not
# published with the weights; 1.0 is inferred from the narrowest fitted widths on its 32×32 maps (LSP crops:
# 5th percentile 1.04 px). Others: the estimator's default (SBL/HRNet convention at 64×48).
DEFAULT_TARGET_SIGMA = {"efficientpose": 1.0}
OKS_NMS_THR = 0.9  # MMPose CocoMetric nms_thr
MAX_PER_IMAGE = 20  # COCOeval keypoint maxDets


MAX_SHARDS = 2**31 - 1  # the shard numbers are stored in the store's JSON (64-bit integers there)


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n); None -> from torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    if spec is None:
        env = {}
        for key, default in (("WORLD_SIZE", "1"), ("RANK", "0")):
            raw = os.environ.get(key, default) or default
            if not re.fullmatch(r"\s*-?\d{1,18}\s*", raw):
                raise PosecalInputError(f"expected an integer (torchrun's), got {raw[:40]!r}; or give --shard i/n",
                                        field=key)
            env[key] = int(raw)
        ws, rank = env["WORLD_SIZE"], env["RANK"]
        if ws > MAX_SHARDS:
            raise PosecalInputError(f"{ws} shards; at most {MAX_SHARDS:,}", field="WORLD_SIZE")
        if ws > 1 and not 0 <= rank < ws:  # refused here, before the model runs, naming the variable
            raise PosecalInputError(f"rank {rank} is not one of 0..{ws - 1} (WORLD_SIZE {ws}); or give --shard i/n",
                                    field="RANK")
        return (rank, ws) if ws > 1 else (0, 1)
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise PosecalInputError(f"bad --shard {spec!r}: expected i/n with 0 <= i < n", field="--shard")
    if int(m.group(2)) > MAX_SHARDS:
        raise PosecalInputError(f"bad --shard {spec!r}: at most {MAX_SHARDS:,} shards", field="--shard")
    return int(m.group(1)), int(m.group(2))


def shard_dir(out: str | os.PathLike, i: int, n: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.shard-{i}-of-{n}")


def _augment_params(rng: np.random.Generator) -> dict[str, Any]:
    """Jitter for one augmented copy (drawn in a fixed order so the stream is reproducible)."""
    p = {
        "flip": bool(rng.random() < 0.5),
        "scale": float(np.exp(rng.uniform(-0.25, 0.25))),
        "rot": float(rng.uniform(-30, 30)) if rng.random() < 0.6 else 0.0,
        "shift": rng.uniform(-0.08, 0.08, 2),
    }
    n_occ = int(rng.integers(0, 3)) if rng.random() < 0.5 else 0
    p["occluders"] = [(rng.uniform(0.1, 0.9, 2), rng.uniform(0.1, 0.3, 2), rng.integers(0, 256, 3))
                      for _ in range(n_occ)]
    return p


def _paint_occluders(crop: np.ndarray, occ, size: tuple[int, int]) -> list[tuple[float, float, float, float]]:
    """Fill rectangles (centre, half-size as fractions of the crop) in place; return them in input px."""
    W, H = size
    rects = []
    for c, hs, col in occ:
        x0, x1 = int(round((c[0] - hs[0]) * W)), int(round((c[0] + hs[0]) * W))
        y0, y1 = int(round((c[1] - hs[1]) * H)), int(round((c[1] + hs[1]) * H))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
        crop[y0:y1, x0:x1] = np.asarray(col, dtype=np.uint8)
        rects.append((x0 - 0.5, y0 - 0.5, x1 - 0.5, y1 - 0.5))
    return rects


# --------------------------------------------------------------------------------------------------
# stage 1: inputs (dataset, boxes, images)
def _read_boxes(boxes: str | os.PathLike | list | None) -> tuple[list | None, Any]:
    """Detections (or None for gt boxes) and the store's record of where they came from."""
    from posecal.models.store import file_sha256

    if boxes is None or (isinstance(boxes, str) and boxes == "gt"):
        return None, "gt"
    if isinstance(boxes, list):
        return boxes, "<list>"
    try:
        det = orjson.loads(Path(boxes).read_bytes())
    except (FileNotFoundError, IsADirectoryError, orjson.JSONDecodeError) as e:
        raise PosecalInputError(f"cannot read detections: {e}", file=str(boxes), field="--boxes") from None
    if not isinstance(det, list):
        raise PosecalInputError("expected a list of detections", file=str(boxes), field="--boxes")
    if not det:
        raise PosecalInputError("no detections (an empty list): nothing to crop", file=str(boxes), field="--boxes")
    return det, {"file": os.path.basename(str(boxes)), "sha256": file_sha256(boxes)}


def _drop_images(insts: list, d: dict[str, Any], names: set[str]) -> tuple[list, dict[str, Any]]:
    """Instances and data without the images ``names``."""
    from posecal.datasets.coco import image_key

    insts = [i for i in insts if i.file_name not in names]
    keep = {image_key(im["id"]) for im in d["images"] if im["file_name"] not in names}
    d = dict(d, images=[im for im in d["images"] if image_key(im["id"]) in keep],
             annotations=[a for a in d["annotations"] if image_key(a["image_id"]) in keep])
    return insts, d


def _usable_images(insts: list, d: dict[str, Any], img_dir: Path, *, skip_missing: bool,
                   skip_bad_images: bool) -> tuple[list, dict[str, Any], list[str], list]:
    """Refuse (or, with the skip flags, drop with a warning) instances whose image is missing or cannot be
    decoded, before anything is written. Returns (instances, data, missing names, bad (name, record, why))."""
    if not img_dir.is_dir():
        raise PosecalInputError("not a folder" if img_dir.exists() else "image folder not found", file=str(img_dir),
                                field="--images")
    missing = sorted({i.file_name for i in insts if not (img_dir / i.file_name).is_file()})
    if missing:
        if not skip_missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise PosecalInputError(f"{len(missing)} image(s) missing: {shown} (--skip-missing skips them)",
                                    file=str(img_dir), field="--images")
        warnings.warn(f"skipping {len(missing)} missing image(s): {', '.join(missing[:5])}"
                      + (" ..." if len(missing) > 5 else ""), PosecalWarning, stacklevel=3)
        insts, d = _drop_images(insts, d, set(missing))
    bad = _bad_images(insts, img_dir, full=skip_bad_images)
    if bad:
        name, rec, why = bad[0]
        if not skip_bad_images:
            raise PosecalInputError(f"cannot read image: {why} ({len(bad)} bad image(s); --skip-bad-images "
                                    "skips them)", file=str(img_dir / name), record=rec, field="file_name")
        warnings.warn(f"skipping {len(bad)} unreadable image(s): {', '.join(b[0] for b in bad[:5])}"
                      + (" ..." if len(bad) > 5 else ""), PosecalWarning, stacklevel=3)
        insts, d = _drop_images(insts, d, {b[0] for b in bad})
    return insts, d, missing, bad


def _bad_images(insts: list, img_dir: Path, *, full: bool) -> list[tuple[str, int, str]]:
    """(file_name, record, reason) of each image that cannot be read: its header (size, format) always,
    its whole pixel data too when ``full`` (truncated files). Record = the first annotation id using it."""
    from PIL import Image

    from posecal.models.crop import load_image

    first: dict[str, int] = {}
    for r, i in enumerate(insts):
        first.setdefault(i.file_name, i.ann_id if i.ann_id >= 0 else r)
    bad = []
    for name, rec in first.items():
        p = img_dir / name
        if not p.is_file():
            continue  # missing images are handled by --skip-missing
        try:
            if full:
                load_image(p)
            else:
                with Image.open(p) as im:
                    if im.size[0] < 1 or im.size[1] < 1:
                        raise ValueError(f"size {im.size}")
        except PosecalInputError as e:
            bad.append((name, rec, e.message))
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            bad.append((name, rec, f"{type(e).__name__}: {e}"))
    return bad


# stage 2: crops
def _crop_chunk(plan: _Plan, rows: range, image) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Crops (n, H, W, 3) uint8, affines (n, 2, 3), flip flags (n,), jittered gt (n, K, 3) or None."""
    from posecal.models.crop import apply_affine, crop_matrix, warp
    from posecal.theory.heatmap import topdown_crop_box

    W, H = plan.input_size
    n = len(rows)
    Ms, flips = np.zeros((n, 2, 3)), np.zeros(n, dtype=bool)
    crops = np.zeros((n, H, W, 3), dtype=np.uint8)
    gt_kp = np.zeros((n, plan.K, 3)) if plan.augment else None
    for r, row in enumerate(rows):
        inst = plan.insts[row // plan.n_copies]
        box = topdown_crop_box(inst.bbox, plan.aspect, plan.padding)[0]
        center, size = box[:2], box[2:]
        rot, fl, occ = 0.0, False, []
        if plan.augment:
            p = _augment_params(np.random.default_rng([plan.seed, row]))
            center, size = center + p["shift"] * size, size * p["scale"]
            rot, fl, occ = p["rot"], p["flip"], p["occluders"]
        M = crop_matrix(center, size, (W, H), rot=rot, flip=fl)
        crops[r] = warp(image(inst.file_name, inst.ann_id if inst.ann_id >= 0 else row), M, (W, H))
        rects = _paint_occluders(crops[r], occ, (W, H)) if occ else []
        Ms[r], flips[r] = M, fl
        if gt_kp is not None:
            g = inst.keypoints.copy() if inst.keypoints is not None else np.zeros((plan.K, 3))
            uv = apply_affine(M, g[:, :2])
            for x0, y0, x1, y1 in rects:
                inside = (uv[:, 0] >= x0) & (uv[:, 0] <= x1) & (uv[:, 1] >= y0) & (uv[:, 1] <= y1)
                g[inside & (g[:, 2] > 0), 2] = 1
            gt_kp[r] = g
    return crops, Ms, flips, gt_kp


# stage 3: the model (plain and mirrored passes, averaged in image px)
def _model_passes(adapter, plan: _Plan, crops: np.ndarray, Ms: np.ndarray, flips: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """img_xy (n, J, 2) image px, scores (n, J), features (n, C, h, w) float32, heatmaps (n, J, h', w')|None."""
    from posecal.models.crop import apply_affine, invert_affine

    W, _ = plan.input_size
    n = crops.shape[0]
    passes = [(crops, Ms, flips)]
    if plan.flip:
        Fm = np.array([[-1.0, 0.0, W - 1.0], [0.0, 1.0, 0.0], [0, 0, 1]])
        Ms3 = np.concatenate([Ms, np.tile([[[0, 0, 1.0]]], (n, 1, 1))], 1)
        passes.append((crops[:, :, ::-1].copy(), np.einsum("ij,njk->nik", Fm, Ms3)[:, :2], ~flips))
    acc = None
    bs = plan.batch_size
    for cr, Mp, fp in passes:
        outs = [adapter.predict(cr[b:b + bs]) for b in range(0, n, bs)]
        coords = np.concatenate([o.coords for o in outs])
        scores = np.concatenate([o.scores for o in outs]).astype(np.float64)
        feats = np.concatenate([o.features for o in outs])
        hms = np.concatenate([o.heatmaps for o in outs]) if outs[0].heatmaps is not None else None
        # back to image px, then undo the mirror: swap partner joints, un-flip spatial maps
        img_xy = apply_affine(invert_affine(Mp), coords)
        for r in np.flatnonzero(fp):
            img_xy[r], scores[r] = img_xy[r][plan.mflip], scores[r][plan.mflip]
            feats[r] = feats[r][:, :, ::-1]
            if hms is not None:
                hms[r] = hms[r][plan.mflip][:, :, ::-1]
        # features, the largest array, are averaged in float64 only when there are two passes (--flip)
        cur = [img_xy, scores, feats if len(passes) == 1 else feats.astype(np.float64),
               None if hms is None else hms.astype(np.float64)]
        acc = cur if acc is None else [a + c if a is not None else None for a, c in zip(acc, cur, strict=True)]
    if len(passes) > 1:
        acc = [None if a is None else a / len(passes) for a in acc]
    img_xy, scores, feats, hms = acc
    return img_xy, scores, feats.astype(np.float32, copy=False), hms


# stage 4: model joints -> dataset keypoints, sigma-hat, pooling
def _chunk_arrays(plan: _Plan, rows: range, Ms: np.ndarray, img_xy, scores, feats, hms) -> dict[str, np.ndarray]:
    from posecal.models.crop import invert_affine
    from posecal.theory.heatmap import estimate_sigma

    W, _ = plan.input_size
    n = len(rows)
    have = plan.jmap >= 0
    src = np.where(have, plan.jmap, 0)
    kp = np.where(have[None, :, None], img_xy[:, src], 0.0)
    sc = np.where(have[None], scores[:, src], 0.0)
    sig = np.full((n, plan.K), np.nan)
    if hms is not None:
        # image px per heatmap px = image px per input px (crop scale) × input px per heatmap px
        scale = np.sqrt(np.abs(np.linalg.det(invert_affine(Ms)[:, :, :2]))) * (W / hms.shape[3])
        s_img = estimate_sigma(hms, method=plan.sigma_method, target_sigma=plan.target_sigma, scale=scale)
        sig = np.where(have[None], np.asarray(s_img, dtype=np.float64)[:, src], np.nan)
    insts = [plan.insts[r // plan.n_copies] for r in rows]
    codes = plan.image_codes  # string image ids: the store holds their codes (meta image_id_strings)
    arrays: dict[str, np.ndarray] = {
        "image_id": np.array([i.image_id if codes is None else codes[i.image_id] for i in insts], dtype=np.int64),
        "ann_id": np.array([i.ann_id for i in insts], dtype=np.int64),
        "bbox": np.stack([i.bbox for i in insts]).astype(np.float64),
        "box_score": np.array([i.box_score for i in insts], dtype=np.float64),
        "crop_transform": Ms,
        "keypoints": kp.astype(np.float64),
        "scores": sc.astype(np.float64),
        "sigma_hat": sig,
    }
    if plan.pooling == "heatmap" and hms is None:
        raise PosecalInputError("--pooling heatmap needs a heatmap model", field="--pooling")
    arrays[STORE_FIELD[plan.pooling]] = pool_features(feats, hms, plan.pooling, plan.jmap)
    return arrays


@dataclass
class _Plan:
    """Everything the per-chunk stages need (instances and settings fixed before the first crop)."""

    insts: list
    K: int
    jmap: np.ndarray
    mflip: np.ndarray
    input_size: tuple[int, int]
    padding: float
    aspect: tuple[float, float]  # the crop box's W:H before padding: the input's, or (1, 1) for a card's "square"
    pooling: str
    flip: bool
    augment: int
    seed: int
    batch_size: int
    target_sigma: float
    sigma_method: str
    image_codes: dict[str, int] | None = None  # string image ids -> their codes (image_id_codes); None: ints

    @property
    def n_copies(self) -> int:
        return max(self.augment, 1)


def _card_ccnet(card: dict[str, Any] | None) -> dict[str, Any]:
    """``{"model_card_ccnet": card["ccnet"]}`` for a user card with a ``ccnet`` block (CCNet reads the store's
    settings, :func:`posecal.ccnet.targets.uses_evidence`), else nothing: a built-in card is found again by the
    model's SHA-256, and the settings (the store's fingerprint) of its stores stay as they were."""
    from posecal.ccnet.targets import CARD_CCNET
    from posecal.models.cards import BUILTIN_CARDS

    if not card or not isinstance(card.get("ccnet"), dict) or any(card == c for c in BUILTIN_CARDS.values()):
        return {}
    return {CARD_CCNET: dict(card["ccnet"])}


def _settings(adapter, plan: _Plan, ks, d_info: dict[str, Any]) -> dict[str, Any]:
    W, H = plan.input_size
    card = getattr(adapter, "card", None)
    return {
        "model_file": os.path.basename(str(getattr(adapter, "path", "<module>"))),
        "model_sha256": d_info["model_sha256"],
        "model_kind": getattr(adapter, "kind", None),
        **({"model_card": card["name"]} if card else {}),
        **_card_ccnet(card),
        "backend": getattr(adapter, "info", {}).get("backend"),
        "tensor": adapter.tensor_name,
        "keypoint_set": ks.name,
        "keypoint_names": list(ks.names),
        **({"keypoint_sigmas": [float(x) for x in ks.sigmas]} if ks.name == CUSTOM else {}),
        "model_joints": list(adapter.joint_names),
        "joint_map": plan.jmap.tolist(),
        "input_size": list(adapter.input_size),
        "preprocessing": adapter.preprocessing,
        "crop": {"padding": plan.padding, "aspect": plan.aspect[0] / plan.aspect[1], "warp": "PIL bilinear",
                 "coords": "pixel centres at integers"},
        "pooling": plan.pooling,
        "flip_test": bool(plan.flip),
        "augment": {"copies": int(plan.augment), "seed": int(plan.seed)} if plan.augment else None,
        "boxes": d_info["boxes_src"],
        "data_file": os.path.basename(d_info["data_file"]),
        "data_sha256": d_info["data_sha256"],
        "images": d_info["images"],
        **({"image_id_strings": d_info["image_id_strings"]} if d_info.get("image_id_strings") else {}),
        "skipped_missing_images": d_info["missing"],
        **({"skipped_bad_images": d_info["bad"]} if d_info.get("bad") is not None else {}),
        "sigma_hat": {"estimator": "posecal.theory.heatmap.estimate_sigma", "method": plan.sigma_method,
                      "target_sigma_heatmap_px": float(plan.target_sigma), "units": "image px"},
        "score": "bbox_keypoint: box score x mean of keypoint scores > 0.2",
    }


def _image_digest(plan: _Plan, img_dir: Path) -> Callable[[range], str]:
    """``rows -> digest``: SHA-256 over the names and SHA-256s of the image files the rows are cropped from
    (each distinct file once, in row order), recorded with every chunk in the store's index."""
    import hashlib
    from functools import cache

    from posecal.models.store import file_sha256

    sha = cache(lambda name: file_sha256(img_dir / name))

    def digest(rows: range) -> str:
        names = dict.fromkeys(plan.insts[r // plan.n_copies].file_name for r in rows)
        return hashlib.sha256("".join(f"{n}\t{sha(n)}\n" for n in names).encode()).hexdigest()

    return digest


def _redo_replaced_images(plan: _Plan, writer, digest: Callable[[range], str]) -> None:
    """A resumed store's finished chunks whose images were replaced since (another file under the same name:
    the recorded digest differs) are recomputed, with a warning naming them; what a run from scratch on the
    current files writes. A chunk without a digest (a store begun by an earlier posecal) is taken as it is, with
    the digest of the current files."""
    changed: list[int] = []
    names: dict[str, None] = {}  # the changed chunks' images, in order
    for j in writer.finished_chunks():
        rows = range(*writer.chunk_rows(j))
        was, now = writer.input_digest(j), digest(rows)
        if was is None:
            writer.set_input_digest(j, now)
        elif was != now:
            changed.append(j)
            names.update(dict.fromkeys(plan.insts[r // plan.n_copies].file_name for r in rows))
    if changed:
        shown = ", ".join(list(names)[:3]) + (", ..." if len(names) > 3 else "")
        writer.redo_chunks(changed, f"an image they were cropped from was replaced since they were written "
                                    f"({'one of ' if len(names) > 1 else ''}{shown})")


def _write_chunks(adapter, plan: _Plan, writer, img_dir: Path, show_progress: bool | None) -> None:
    from posecal.models.crop import load_image

    digest = _image_digest(plan, img_dir)
    _redo_replaced_images(plan, writer, digest)
    pending = writer.pending_chunks()
    total_rows = sum(writer.chunk_rows(j)[1] - writer.chunk_rows(j)[0] for j in pending)
    bar = progress(total=total_rows, desc="extract", unit="crop",
                   **({} if show_progress is None else {"disable": not show_progress}))
    cache: dict[str, np.ndarray] = {}

    def image(name: str, record: int) -> np.ndarray:
        if name not in cache:
            cache.clear()
            cache[name] = load_image(img_dir / name, record=record)
        return cache[name]

    for j in pending:
        rows = range(*writer.chunk_rows(j))
        crops, Ms, flips, gt_kp = _crop_chunk(plan, rows, image)
        outs = _model_passes(adapter, plan, crops, Ms, flips)
        if not all(np.isfinite(o).all() for o in outs[:3]):
            raise PosecalInputError(f"the model produced non-finite outputs on rows {rows.start}-{rows.stop - 1}",
                                    file=str(getattr(adapter, "path", "<model>")), field="--model")
        arrays = _chunk_arrays(plan, rows, Ms, *outs)
        if gt_kp is not None:
            arrays["gt_keypoints"] = gt_kp
        writer.set_input_digest(j, digest(rows))
        writer.write_chunk(j, arrays)
        bar.update(len(rows))
    bar.close()


# stage 5 (detections only): MMPose's OKS-NMS, once, so that rescoring never changes which detections exist
def top_per_image(image_id: np.ndarray, score: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Subset of ``rows`` in their given order: the ``k`` best by ``score`` in each image (ties: the one earlier
    in ``rows`` first, as COCOeval's stable sort ranks a file written in that order)."""
    rows = np.asarray(rows, dtype=np.int64)
    chosen = np.zeros(len(image_id), dtype=bool)
    for i in np.unique(image_id[rows]):
        r = rows[image_id[rows] == i]
        chosen[r[np.argsort(-score[r], kind="stable")[:k]]] = True
    return rows[chosen[rows]]


def oks_nms_store(src, out: str | os.PathLike, *, thr: float | None = OKS_NMS_THR, chunk_size: int = 64,
                  gt: bytes | None = None, category_id: int = 1, max_per_image: int | None = MAX_PER_IMAGE):
    """Copy of store ``src`` with only the rows MMPose's OKS-NMS keeps (per image, on the ``bbox_keypoint``
    score, :func:`posecal.models.nms.oks_nms_per_image`), then the ``max_per_image`` best of each image
    (COCO's keypoint ``maxDets`` = 20: the evaluator never looks further, so a rescoring cannot swap
    detections in or out of the evaluated set). ``thr`` None: no OKS-NMS (``--oks-nms 1``), the cut only.
    Rows stay in ``src``'s order, except that an image's rows of equal score take MMPose's OKS-NMS keep order
    (:func:`posecal.models.nms.ties_as_kept`): COCOeval's stable sort then ranks, and cuts at 20, the
    ``predictions.json`` as it does MMPose CocoMetric's file of the same detections.
    Returns the new FeatureStore."""
    from posecal.keypoints import keypoint_set_from_meta
    from posecal.models.nms import crop_box_area, oks_nms_per_image, ties_as_kept
    from posecal.models.store import StoreWriter
    from posecal.rescore.aggregate import instance_score

    ks = keypoint_set_from_meta(src.meta)
    kp, sc = src.read("keypoints"), src.read("scores")
    score = instance_score(sc, "bbox_keypoint", src.read("box_score"))
    iid = src.read("image_id")
    # MMPose's CocoMetric gives a top-down prediction the area of its crop box, prod(bbox_scales)
    crop = src.meta.get("crop") or {}
    W, H = src.meta["input_size"]
    area = crop_box_area(src.read("bbox"), (float(crop.get("aspect", W / H)), 1.0), float(crop.get("padding", 1.25)))
    keep = (np.arange(src.num_instances) if thr is None  # --oks-nms 1: every box, then the top per image
            else oks_nms_per_image(iid, kp, sc, score, ks.sigmas, thr, areas=area, kept_order=True))
    if thr is not None:  # row order, but an image's equal scores in MMPose's keep order (COCOeval ranks them so)
        keep = ties_as_kept(keep, iid, score)
    if max_per_image:
        keep = top_per_image(iid, score, keep, max_per_image)
    settings = {k: src.meta[k] for k in src.meta if k not in _META_BOOKKEEPING and k != MERGE_POST}
    settings["oks_nms"] = {"thr": thr, "kept": int(keep.size), "of": src.num_instances,
                           "max_per_image": max_per_image,
                           "score": "bbox_keypoint",
                           "area": "crop box: the detection box at the model aspect x padding (MMPose CocoMetric "
                                   "top-down: prod(bbox_scales))"}
    writer = StoreWriter(out, num_instances=int(keep.size), chunk_size=chunk_size, settings=settings)
    for j in writer.pending_chunks():
        a, b = writer.chunk_rows(j)
        writer.write_chunk(j, {name: src.read(name, keep[a:b]) for name in src.arrays})
    return writer.finalize(gt=gt, category_id=category_id)


MERGE_POST = "merge_oks_nms"
"""Setting of a shard of a detection store (``extract --boxes --shard i/n``): the OKS-NMS threshold (None: off)
and ``max_per_image`` that :func:`merge_shards` applies to the merged rows, as an unsharded run applies them."""


def merge_shards(shards: list[Path], out: str | os.PathLike) -> Any:
    """``extract --merge``: the shards merged into ``out`` (:func:`posecal.models.store.merge_stores`); shards
    of a detection store are merged into ``OUT.all`` and reduced into ``out`` by :func:`oks_nms_store` with
    the settings they record (:data:`MERGE_POST`), giving the store an unsharded run writes."""
    from posecal.models.store import merge_stores

    out = Path(out)
    try:
        post = orjson.loads((shards[0] / "index.json").read_bytes())["settings"].get(MERGE_POST)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        post = None  # merge_stores names what is wrong with the shard
    if not isinstance(post, dict):
        return merge_stores(shards, out)
    stage = out.with_name(out.name + ".all")
    store = merge_stores(shards, stage)
    gt = (stage / "gt.json").read_bytes() if (stage / "gt.json").is_file() else None
    cat = store.predictions[0].get("category_id", 1) if store.predictions else 1
    final = oks_nms_store(store, out, thr=post.get("thr"), chunk_size=int(store.meta["chunk_size"]), gt=gt,
                          category_id=cat, max_per_image=post.get("max_per_image"))
    shutil.rmtree(stage)
    return final


_META_BOOKKEEPING = ("format", "num_instances", "chunk_size", "arrays", "feature_array", "fingerprint", "files")


def _header_size(img_dir: Path) -> Callable[[str], tuple[int, int] | None]:
    """``file_name -> (W, H)`` from the image header (cached; None when missing or unreadable: those images
    are refused or skipped later, by :func:`_usable_images`)."""
    from functools import cache

    from PIL import Image

    @cache
    def size(name: str) -> tuple[int, int] | None:
        try:
            with Image.open(img_dir / name) as im:
                return int(im.size[0]), int(im.size[1])
        except Exception:  # noqa: BLE001 - any unreadable image is reported by _usable_images
            return None

    return size


def _warn_size_mismatch(insts: list, d: dict[str, Any], data_file: str,
                        header_size: Callable[[str], tuple[int, int] | None]) -> None:
    """Images whose header size differs from the data's ``width``/``height``: the annotations (and boxes) were
    made on other pictures — a wrong ``--images`` folder, or resized copies. Cropped as they are, warned about."""
    used = {i.file_name for i in insts}
    odd = []
    for r, im in enumerate(d["images"]):
        if im["file_name"] not in used or "width" not in im or "height" not in im:
            continue
        wh = header_size(im["file_name"])
        if wh is not None and wh != (int(im["width"]), int(im["height"])):
            odd.append((r, im["file_name"], wh, (int(im["width"]), int(im["height"]))))
    from posecal.models.crop import warn_image_sizes

    warn_image_sizes(odd, data_file, stacklevel=3)


def _joint_map(adapter: Any, ks: Any, d: dict[str, Any], data_file: str, allow_missing: bool) -> np.ndarray:
    """(K,) model joint per dataset keypoint (:func:`~posecal.models.adapters.joints.joint_map`). Keypoints the
    model lacks are refused unless ``allow_missing`` (``--allow-missing-joints``) — or unless the data file says
    it does not annotate them at all (``categories[0].annotated_keypoints``, what ``posecal convert
    --keypoint-set`` writes, e.g. LSPET as COCO-17 has no face points): then nothing is lost and they are left
    out the same way (joint map −1, score 0), with a warning naming them."""
    from posecal.datasets.remap import annotated_mask
    from posecal.models.adapters.joints import joint_map

    model = getattr(adapter, "kind", "model")
    jmap = joint_map(adapter.joint_names, ks.names, allow_missing=True, model=model, file=data_file)
    lacking = jmap < 0
    if lacking.all():  # --allow-missing-joints would store scores of 0 everywhere: nothing to calibrate
        raise PosecalInputError(f"{model} has no joint for any of its {len(ks.names)} keypoints (model joints: "
                                f"{', '.join(list(adapter.joint_names)[:6])}"
                                f"{', …' if len(adapter.joint_names) > 6 else ''}): wrong model or data?",
                                data_file, None, "categories[0].keypoints")
    if lacking.any() and not allow_missing:
        annotated = annotated_mask(d, ks)
        if (lacking & annotated).any():
            joint_map(adapter.joint_names, ks.names, model=model, file=data_file)  # raises, naming them
        warnings.warn(f"{data_file}: {model} has no joint for {', '.join(np.asarray(ks.names)[lacking])}, which "
                      "the data file does not annotate (categories[0].annotated_keypoints): stored with score 0, "
                      "left out of training and of the instance score", PosecalWarning, stacklevel=2)
    return jmap


def _check_as_fit_reads(d: dict[str, Any], data_file: str) -> None:
    """The data read as ``fit`` and ``evaluate`` will read the store's gt.json (a copy of it): what they refuse
    (an annotation without ``category_id``, a category without ``id``, ...) is refused here, naming the data
    file, before the model runs — not by ``fit`` after the extraction, naming the store's gt.json. Areas on
    only some annotations are warned about (``fit`` refuses such a store; ``evaluate`` needs --no-use-area)."""
    from posecal.io.coco import load_gt
    from posecal.metrics.cocoeval import oks_area

    with warnings.catch_warnings():  # load_gt's own warnings repeat read_coco's
        warnings.simplefilter("ignore")
        gt = load_gt(d, file=data_file)
    try:
        oks_area(gt)
    except PosecalInputError as e:
        warnings.warn(f"{e}; `posecal fit` refuses a store of this data", PosecalWarning, stacklevel=3)


def _read_inputs(data: str | os.PathLike | dict, data_file: str, boxes: str | os.PathLike | list | None,
                 img_dir: Path, skip_missing: bool, skip_bad_images: bool,
                 sigmas: Sequence[float] | None = None) -> tuple:
    """Stage 1 as a whole: (data, keypoint set, detections | None, boxes' provenance, instances to crop,
    missing image names, bad images) — refused in one line when nothing is left to crop."""
    from posecal.datasets.coco import image_key, instances, keypoint_category, keypoint_set, read_coco, show_id

    d = read_coco(data, file=data_file, sigmas=sigmas)
    _check_as_fit_reads(d, data_file)
    listed = {image_key(im["id"]) for im in d["images"]}
    ks = keypoint_set(d, file=data_file, sigmas=sigmas)
    det, boxes_src = _read_boxes(boxes)
    header_size = _header_size(img_dir)
    insts = instances(d, boxes=det, file=data_file, boxes_file=str(boxes) if det is not None else None,
                      sigmas=sigmas,
                      image_size=header_size)
    insts, d, missing, bad = _usable_images(insts, d, img_dir, skip_missing=skip_missing,
                                            skip_bad_images=skip_bad_images)
    _warn_size_mismatch(insts, d, data_file, header_size)
    cat = keypoint_category(d)
    if not insts and det and not any(image_key(b["image_id"]) in listed for b in det):
        # every box is on an image the data file does not list (each was warned about, but a failing run
        # prints no warning): say so, rather than that no box is a person
        ids = sorted({image_key(b["image_id"]) for b in det}, key=str)
        raise PosecalInputError(f"none of its {len(det)} detections is on an image of {data_file} (its image ids: "
                                f"{', '.join(map(show_id, ids[:3]))}{', ...' if len(ids) > 3 else ''}): boxes of "
                                "another dataset, or of `posecal detect` run without --data (run it with --data "
                                f"{data_file})", file="<list>" if isinstance(boxes, list) else str(boxes),
                                field="image_id")
    if not insts and det:
        cats = sorted({b.get("category_id", cat) for b in det if isinstance(b, dict)}, key=str)
        if cat not in cats:  # e.g. an Ultralytics-style file with person = class 0
            raise PosecalInputError(f"none of its {len(det)} detections has the data's keypoint category "
                                    f"(category_id {cat}; found {', '.join(map(str, cats[:5]))})",
                                    file=str(boxes), field="category_id")
    if not insts:
        raise PosecalInputError("no instance to crop (no non-crowd annotation with a labelled keypoint and a box"
                                + (f", no detection of category {cat} on these images" if det is not None else "")
                                + ")", file=data_file, field="annotations")
    return d, ks, det, boxes_src, insts, missing, bad


def _card_padding(card: dict[str, Any] | None) -> float:
    """The crop padding a model card states (``crop.padding``), MMPose's 1.25 without one."""
    return float(((card or {}).get("crop") or {}).get("padding", 1.25))


def _finished_store(out: str | os.PathLike, settings: dict[str, Any], post: dict[str, Any] | None = None) -> Any:
    """A detection store finished earlier (its OKS-NMS done) with the same ``settings``, verified; a store
    written with other settings is refused, naming what differs. ``post``: the OKS-NMS threshold, the
    ``max_per_image`` cut and the chunk size of this run, which the store must have been reduced and written
    with too (``oks_nms.thr``, ``oks_nms.max_per_image``, ``chunk_size``)."""
    from posecal.models.store import FeatureStore, describe_settings_diff, settings_diff

    done = FeatureStore.open(out)
    same = {k: v for k, v in done.meta.items() if k not in _META_BOOKKEEPING and k != "oks_nms"}
    mine = orjson.loads(dumps_json(settings))
    if post is not None:  # what OKS-NMS kept is fixed by its threshold and cut: compare them too
        nms = done.meta.get("oks_nms") if isinstance(done.meta.get("oks_nms"), dict) else {}
        same.update({"oks_nms.thr": nms.get("thr"), "oks_nms.max_per_image": nms.get("max_per_image"),
                     "chunk_size": done.meta.get("chunk_size")})
        mine.update(orjson.loads(dumps_json(post)))
    keys = settings_diff(same, mine)  # the images folder compared by real path, not by spelling
    if keys:
        raise PosecalInputError("existing store was written with different settings ("
                                f"{describe_settings_diff(same, mine, keys)}); use another --out or delete it",
                                file=str(out), field=keys[0] if len(keys) == 1 else "settings")
    done.verify()  # damage names the chunk and says to delete the store (its rows cannot be recomputed alone)
    return done


def default_pooling(adapter: Any) -> str:
    """``heatmap`` when ``adapter`` returns heatmaps (one probe run on a blank crop), else ``gap`` (also for a
    stand-in model that cannot run a blank crop: its real crops then tell nothing before the store is planned)."""
    W, H = adapter.input_size
    try:
        probe = adapter.predict(np.zeros((1, int(H), int(W), 3), np.uint8))
    except Exception:  # noqa: BLE001 - a model that fails on a blank crop fails (and is named) on the real ones
        return "gap"
    return "heatmap" if getattr(probe, "heatmaps", None) is not None else "gap"


def extract(adapter, data: str | os.PathLike | dict, images: str | os.PathLike, out: str | os.PathLike, *,
            pooling: str | None = None, boxes: str | os.PathLike | list | None = None, flip: bool = False,
            augment: int = 0, seed: int = 0, shard: tuple[int, int] = (0, 1), skip_missing: bool = False,
            skip_bad_images: bool = False, allow_missing_joints: bool = False, chunk_size: int = 64,
            batch_size: int = 16,
            model_sha256: str | None = None, data_file: str | None = None, show_progress: bool | None = None,
            target_sigma: float | None = None, sigma_method: str = "fit", oks_nms_thr: float | None = OKS_NMS_THR,
            max_per_image: int | None = MAX_PER_IMAGE, sigmas: Sequence[float] | None = None):
    """Top-down extraction into a store (see :mod:`posecal.models.store`). Returns the FeatureStore (or None
    for a shard n > 1). Resumes a partial store with the same settings.

    ``pooling`` (``heatmap``, ``gap`` or ``spatial``): default the model card's ``ccnet.pooling``, else ``heatmap``
    for a model with heatmap outputs (what ``fit``'s default recipe reads) and ``gap`` for one without (a
    coordinate-regression model; :func:`default_pooling` probes it), as ``posecal extract``.

    ``sigmas`` (OKS sigmas, one per keypoint): the data's keypoints are its own set, whatever their names
    (``--sigmas``; :func:`posecal.datasets.coco.keypoint_set`), and the store carries them.

    With detection ``boxes`` each box is cropped like a gt box (the model's aspect, padding from its card or
    1.25), the box score is folded into the instance score (``bbox_keypoint``) and MMPose's OKS-NMS
    (``oks_nms_thr``, 0.9; None = off) followed by the ``max_per_image`` (20, COCO's maxDets) best per image
    keeps the final rows — the crops of all boxes go to ``OUT.all`` (resumable), the kept rows to ``OUT``.
    """
    from posecal.datasets.coco import image_id_codes, keypoint_category
    from posecal.models.adapters.joints import flip_index
    from posecal.models.store import StoreWriter, file_sha256

    card = getattr(adapter, "card", None)
    pooling = pooling or ((card or {}).get("ccnet") or {}).get("pooling") or default_pooling(adapter)
    if pooling not in POOLINGS:
        raise PosecalInputError(f"unknown pooling {pooling!r}", field="--pooling")
    if augment < 0:
        raise PosecalInputError("--augment must be >= 0", field="--augment")
    data_file = data_file or (str(data) if not isinstance(data, dict) else "<dict>")
    img_dir = Path(images)
    d, ks, det, boxes_src, insts, missing, bad = _read_inputs(data, data_file, boxes, img_dir, skip_missing,
                                                              skip_bad_images, sigmas)
    # string image ids (all or none, checked by read_coco): the arrays hold each image's code, its position in
    # the sorted ids of the images the store's gt.json lists (load_gt's coding of that file), and meta.json the
    # ids themselves (image_id_strings), which predictions.json and every result written from the store carry
    codes = image_id_codes(im["id"] for im in d["images"])
    if target_sigma is None:
        target_sigma = (card or {}).get("target_sigma") or DEFAULT_TARGET_SIGMA.get(getattr(adapter, "kind", ""),
                                                                                    2.0)
    plan = _Plan(insts=insts, K=ks.num_keypoints,
                 jmap=_joint_map(adapter, ks, d, data_file, allow_missing_joints),
                 mflip=flip_index(adapter.joint_names), input_size=tuple(adapter.input_size),
                 padding=_card_padding(card), aspect=crop_aspect(card, adapter.input_size), pooling=pooling,
                 flip=flip, augment=augment, seed=seed, batch_size=batch_size, target_sigma=float(target_sigma),
                 sigma_method=sigma_method, image_codes=codes)
    info = {"model_sha256": model_sha256 or (file_sha256(adapter.path) if hasattr(adapter, "path") else None),
            "boxes_src": boxes_src, "data_file": data_file,
            "data_sha256": file_sha256(data) if not isinstance(data, dict) else None, "images": str(img_dir),
            "missing": missing, "bad": sorted(b[0] for b in bad) if skip_bad_images else None,
            "image_id_strings": sorted(codes) if codes else None}
    settings = _settings(adapter, plan, ks, info)
    # detections: OKS-NMS, then the max_per_image best of each image (either may be off); shards keep every
    # crop and record what `--merge` applies to their union (MERGE_POST), as the unsharded run does here
    post = det is not None and (oks_nms_thr is not None or bool(max_per_image))
    if post and shard[1] > 1:
        settings[MERGE_POST] = {"thr": oks_nms_thr, "max_per_image": max_per_image}
    nms = post and shard[1] == 1
    if nms and (Path(out) / "meta.json").is_file():  # finished earlier: the same settings return it as it is
        return _finished_store(out, settings, {
            "oks_nms.thr": None if oks_nms_thr is None else float(oks_nms_thr),
            "oks_nms.max_per_image": max_per_image, "chunk_size": int(chunk_size)})
    stage = Path(out).with_name(Path(out).name + ".all") if nms else out
    writer = StoreWriter(stage, num_instances=len(insts) * plan.n_copies, chunk_size=chunk_size,
                         settings=settings, shard=shard)
    _write_chunks(adapter, plan, writer, img_dir, show_progress)
    gt_bytes = dumps_json(d)
    cat_id = keypoint_category(d)
    store = writer.finalize(gt=gt_bytes, category_id=cat_id)
    if not nms:
        return store
    final = oks_nms_store(store, out, thr=None if oks_nms_thr is None else float(oks_nms_thr),
                          chunk_size=chunk_size, gt=gt_bytes,
                          category_id=cat_id, max_per_image=max_per_image)
    shutil.rmtree(stage)
    return final
