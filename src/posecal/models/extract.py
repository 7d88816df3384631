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
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from posecal._util import dumps_json, progress
from posecal.errors import PosecalInputError, PosecalWarning
from posecal.models.adapters.pooling import POOLINGS, STORE_FIELD, pool_features

# training-target Gaussian width (heatmap px) assumed by the sigma-hat estimator. EfficientPose's is not
# published with the weights; 1.0 is inferred from the narrowest fitted widths on its 32×32 maps (LSP crops:
# 5th percentile 1.04 px). Others: the estimator's default (SBL/HRNet convention at 64×48).
DEFAULT_TARGET_SIGMA = {"efficientpose": 1.0}


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n); None -> from torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    if spec is None:
        ws = int(os.environ.get("WORLD_SIZE", "1") or 1)
        rank = int(os.environ.get("RANK", "0") or 0)
        return (rank, ws) if ws > 1 else (0, 1)
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise PosecalInputError(f"bad --shard {spec!r}: expected i/n with 0 <= i < n", field="--shard")
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


def _drop_images(insts: list, d: dict[str, Any], names: set[str]) -> tuple[list, dict[str, Any]]:
    """Instances and data without the images ``names``."""
    insts = [i for i in insts if i.file_name not in names]
    keep = {int(im["id"]) for im in d["images"] if im["file_name"] not in names}
    d = dict(d, images=[im for im in d["images"] if int(im["id"]) in keep],
             annotations=[a for a in d["annotations"] if int(a["image_id"]) in keep])
    return insts, d


def _usable_images(insts: list, d: dict[str, Any], img_dir: Path, *, skip_missing: bool,
                   skip_bad_images: bool) -> tuple[list, dict[str, Any], list[str], list]:
    """Refuse (or, with the skip flags, drop with a warning) instances whose image is missing or cannot be
    decoded, before anything is written. Returns (instances, data, missing names, bad (name, record, why))."""
    if not img_dir.is_dir():
        raise PosecalInputError("image folder not found", file=str(img_dir), field="--images")
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


# --------------------------------------------------------------------------------------------------
def extract(adapter, data: str | os.PathLike | dict, images: str | os.PathLike, out: str | os.PathLike, *,
            pooling: str = "gap", boxes: str | os.PathLike | list | None = None, flip: bool = False,
            augment: int = 0, seed: int = 0, shard: tuple[int, int] = (0, 1), skip_missing: bool = False,
            skip_bad_images: bool = False,
            allow_missing_joints: bool = False, chunk_size: int = 64, batch_size: int = 16,
            model_sha256: str | None = None, data_file: str | None = None, show_progress: bool | None = None,
            target_sigma: float | None = None, sigma_method: str = "fit"):
    """Top-down extraction into a store (see :mod:`posecal.models.store`). Returns the FeatureStore (or the shard
    writer's path for n > 1). Resumes a partial store with the same settings."""
    from posecal.datasets.coco import instances, keypoint_set, read_coco
    from posecal.models.adapters.joints import flip_index, joint_map
    from posecal.models.crop import (
        apply_affine,
        box_to_center_size,
        crop_matrix,
        invert_affine,
        load_image,
        warp,
    )
    from posecal.models.store import StoreWriter, file_sha256
    from posecal.theory.heatmap import estimate_sigma

    if pooling not in POOLINGS:
        raise PosecalInputError(f"unknown pooling {pooling!r}", field="--pooling")
    if augment < 0:
        raise PosecalInputError("--augment must be >= 0", field="--augment")
    data_file = data_file or (str(data) if not isinstance(data, dict) else "<dict>")
    d = read_coco(data, file=data_file)
    ks = keypoint_set(d, file=data_file)
    det = None
    boxes_src = "gt"
    if boxes is not None and not (isinstance(boxes, str) and boxes == "gt"):
        if isinstance(boxes, list):
            det, boxes_src = boxes, "<list>"
        else:
            try:
                det = orjson.loads(Path(boxes).read_bytes())
            except (FileNotFoundError, orjson.JSONDecodeError) as e:
                raise PosecalInputError(f"cannot read detections: {e}", file=str(boxes),
                                        field="--boxes") from None
            if not isinstance(det, list):
                raise PosecalInputError("expected a list of detections", file=str(boxes), field="--boxes")
            boxes_src = {"file": os.path.basename(str(boxes)), "sha256": file_sha256(boxes)}
    insts = instances(d, boxes=det, file=data_file, boxes_file=str(boxes) if det is not None else None)
    img_dir = Path(images)
    insts, d, missing, bad = _usable_images(insts, d, img_dir, skip_missing=skip_missing,
                                            skip_bad_images=skip_bad_images)
    if not insts:
        raise PosecalInputError("no instance to crop (no non-crowd annotation with a labelled keypoint and a box"
                                + (", no detection of category 1 on these images" if det is not None else "")
                                + ")", file=data_file, field="annotations")
    jmap = joint_map(adapter.joint_names, ks.names, allow_missing=allow_missing_joints,
                     model=getattr(adapter, "kind", "model"))
    mflip = flip_index(adapter.joint_names)
    W, H = adapter.input_size
    n_copies = max(augment, 1)
    N = len(insts) * n_copies
    K = ks.num_keypoints
    if target_sigma is None:
        target_sigma = DEFAULT_TARGET_SIGMA.get(getattr(adapter, "kind", ""), 2.0)
    settings = {
        "model_file": os.path.basename(str(getattr(adapter, "path", "<module>"))),
        "model_sha256": model_sha256 or (file_sha256(adapter.path) if hasattr(adapter, "path") else None),
        "model_kind": getattr(adapter, "kind", None),
        "backend": getattr(adapter, "info", {}).get("backend"),
        "tensor": adapter.tensor_name,
        "keypoint_set": ks.name,
        "keypoint_names": list(ks.names),
        "model_joints": list(adapter.joint_names),
        "joint_map": jmap.tolist(),
        "input_size": list(adapter.input_size),
        "preprocessing": adapter.preprocessing,
        "crop": {"padding": 1.25, "aspect": W / H, "warp": "PIL bilinear",
                 "coords": "pixel centres at integers"},
        "pooling": pooling,
        "flip_test": bool(flip),
        "augment": {"copies": int(augment), "seed": int(seed)} if augment else None,
        "boxes": boxes_src,
        "data_file": os.path.basename(data_file),
        "data_sha256": file_sha256(data) if not isinstance(data, dict) else None,
        "images": str(img_dir),
        "skipped_missing_images": missing,
        **({"skipped_bad_images": sorted(b[0] for b in bad)} if skip_bad_images else {}),
        "sigma_hat": {"estimator": "posecal.theory.heatmap.estimate_sigma", "method": sigma_method,
                      "target_sigma_heatmap_px": float(target_sigma), "units": "image px"},
        "score": "bbox_keypoint: box score x mean of keypoint scores > 0.2",
    }
    writer = StoreWriter(out, num_instances=N, chunk_size=chunk_size, settings=settings, shard=shard)
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
        start, stop = writer.chunk_rows(j)
        rows = range(start, stop)
        n = stop - start
        Ms = np.zeros((n, 2, 3))
        flips = np.zeros(n, dtype=bool)
        crops = np.zeros((n, H, W, 3), dtype=np.uint8)
        gt_kp = np.zeros((n, K, 3)) if augment else None
        for r, row in enumerate(rows):
            inst = insts[row // n_copies]
            center, size = box_to_center_size(inst.bbox, W / H)
            rot, fl = 0.0, False
            occ = []
            if augment:
                p = _augment_params(np.random.default_rng([seed, row]))
                center = center + p["shift"] * size
                size = size * p["scale"]
                rot, fl, occ = p["rot"], p["flip"], p["occluders"]
            M = crop_matrix(center, size, (W, H), rot=rot, flip=fl)
            crops[r] = warp(image(inst.file_name, inst.ann_id if inst.ann_id >= 0 else row), M, (W, H))
            rects = _paint_occluders(crops[r], occ, (W, H)) if occ else []
            Ms[r], flips[r] = M, fl
            if gt_kp is not None:
                g = inst.keypoints.copy() if inst.keypoints is not None else np.zeros((K, 3))
                uv = apply_affine(M, g[:, :2])
                for x0, y0, x1, y1 in rects:
                    inside = (uv[:, 0] >= x0) & (uv[:, 0] <= x1) & (uv[:, 1] >= y0) & (uv[:, 1] <= y1)
                    g[inside & (g[:, 2] > 0), 2] = 1
                gt_kp[r] = g
        # model passes (crop as is; mirrored for the flip test)
        passes = [(crops, Ms, flips)]
        if flip:
            Fm = np.array([[-1.0, 0.0, W - 1.0], [0.0, 1.0, 0.0], [0, 0, 1]])
            Ms3 = np.concatenate([Ms, np.tile([[[0, 0, 1.0]]], (n, 1, 1))], 1)
            Ms_f = np.einsum("ij,njk->nik", Fm, Ms3)[:, :2]
            passes.append((crops[:, :, ::-1].copy(), Ms_f, ~flips))
        acc = None
        for cr, Mp, fp in passes:
            outs = [adapter.predict(cr[b:b + batch_size]) for b in range(0, n, batch_size)]
            coords = np.concatenate([o.coords for o in outs])
            scores = np.concatenate([o.scores for o in outs]).astype(np.float64)
            feats = np.concatenate([o.features for o in outs])
            hms = np.concatenate([o.heatmaps for o in outs]) if outs[0].heatmaps is not None else None
            # back to image px, then undo the mirror: swap partner joints, un-flip spatial maps
            img_xy = apply_affine(invert_affine(Mp), coords)
            for r in np.flatnonzero(fp):
                img_xy[r] = img_xy[r][mflip]
                scores[r] = scores[r][mflip]
                feats[r] = feats[r][:, :, ::-1]
                if hms is not None:
                    hms[r] = hms[r][mflip][:, :, ::-1]
            cur = [img_xy, scores, feats.astype(np.float64), None if hms is None else hms.astype(np.float64)]
            if acc is None:
                acc = cur
            else:
                acc = [a + c if a is not None else None for a, c in zip(acc, cur, strict=True)]
        img_xy, scores, feats, hms = (None if a is None else a / len(passes) for a in acc)
        if not (np.isfinite(img_xy).all() and np.isfinite(scores).all() and np.isfinite(feats).all()):
            raise PosecalInputError(f"the model produced non-finite outputs on rows {start}-{stop - 1}",
                                    file=str(getattr(adapter, "path", "<model>")), field="--model")
        feats = feats.astype(np.float32)
        # model joints -> dataset keypoints
        have = jmap >= 0
        src = np.where(have, jmap, 0)
        kp = np.where(have[None, :, None], img_xy[:, src], 0.0)
        sc = np.where(have[None], scores[:, src], 0.0)
        sig = np.full((n, K), np.nan)
        if hms is not None:
            # image px per heatmap px = image px per input px (crop scale) × input px per heatmap px
            scale = np.sqrt(np.abs(np.linalg.det(invert_affine(Ms)[:, :, :2]))) * (W / hms.shape[3])
            s_img = estimate_sigma(hms, method=sigma_method, target_sigma=target_sigma, scale=scale)
            s_img = np.asarray(s_img, dtype=np.float64)  # (n, J) image px
            sig = np.where(have[None], s_img[:, src], np.nan)
        arrays: dict[str, np.ndarray] = {
            "image_id": np.array([insts[r // n_copies].image_id for r in rows], dtype=np.int64),
            "ann_id": np.array([insts[r // n_copies].ann_id for r in rows], dtype=np.int64),
            "bbox": np.stack([insts[r // n_copies].bbox for r in rows]).astype(np.float64),
            "box_score": np.array([insts[r // n_copies].box_score for r in rows], dtype=np.float64),
            "crop_transform": Ms,
            "keypoints": kp.astype(np.float64),
            "scores": sc.astype(np.float64),
            "sigma_hat": sig,
        }
        if gt_kp is not None:
            arrays["gt_keypoints"] = gt_kp
        if pooling == "heatmap" and hms is None:
            raise PosecalInputError("--pooling heatmap needs a heatmap model", field="--pooling")
        arrays[STORE_FIELD[pooling]] = pool_features(feats, hms, pooling, jmap)
        writer.write_chunk(j, arrays)
        bar.update(n)
    bar.close()
    gt_bytes = dumps_json(d)
    cat_id = int(d["categories"][0].get("id", 1)) if d["categories"] else 1
    return writer.finalize(gt=gt_bytes, category_id=cat_id)


