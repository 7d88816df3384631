"""Shared pieces of the studies: top-down crops, store-identical feature pooling, the CCNet head."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from posecal.ccnet.heads import CCNetHead
    from posecal.datasets.coco import Instance
    from posecal.models.adapters.base import ModelOutput, PoseAdapter

__all__ = ["crop_instances", "pooled_features", "open_head", "to_dataset"]


def crop_instances(insts: list[Instance], images: str | os.PathLike, input_size: tuple[int, int],
                   card: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Crops ``(N, H, W, 3) uint8`` and their image → input affines ``(N, 2, 3)``, exactly as
    ``posecal extract`` makes them (gt box; the model ``card``'s crop padding and aspect, default 1.25 and the
    input's)."""
    from pathlib import Path

    from posecal.models.cards import crop_aspect
    from posecal.models.crop import crop_matrix, load_image, warp
    from posecal.theory.heatmap import topdown_crop_box

    W, H = input_size
    padding = float(((card or {}).get("crop") or {}).get("padding", 1.25))
    aspect = crop_aspect(card, (W, H))
    crops = np.zeros((len(insts), H, W, 3), np.uint8)
    Ms = np.zeros((len(insts), 2, 3))
    for i, inst in enumerate(insts):
        b = topdown_crop_box(inst.bbox, aspect, padding)[0]
        Ms[i] = crop_matrix(b[:2], b[2:], (W, H))
        crops[i] = warp(load_image(Path(images) / inst.file_name, record=inst.ann_id), Ms[i], (W, H))
    return crops, Ms


def pooled_features(out: ModelOutput, pooling: str, jmap: np.ndarray) -> np.ndarray:
    """The feature-store tensor for one model batch (:class:`posecal.models.adapters.base.ModelOutput`), pooled
    as ``posecal extract`` pools it (:func:`posecal.models.adapters.pooling.pool_features`)."""
    from posecal.models.adapters.pooling import pool_features

    return pool_features(out.features, out.heatmaps, pooling, jmap)


def to_dataset(out: ModelOutput, Ms: np.ndarray, jmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model output (input px, model joints) → keypoints ``(N, K, 2)`` image px and raw scores ``(N, K)``
    in the dataset keypoint set (0 where the model lacks the joint)."""
    from posecal.models.crop import apply_affine, invert_affine

    xy = apply_affine(invert_affine(Ms), np.asarray(out.coords, np.float64))
    have = jmap >= 0
    src = np.where(have, jmap, 0)
    kp = np.where(have[None, :, None], xy[:, src], 0.0)
    sc = np.where(have[None], np.asarray(out.scores, np.float64)[:, src], 0.0)
    return kp, sc


def open_head(head_dir: str | os.PathLike, model: str | os.PathLike, adapter: PoseAdapter
              ) -> tuple[CCNetHead, dict[str, object], str, np.ndarray]:
    """Load a CCNet head and check it against the model: (head, meta, pooling, joint map)."""
    from posecal.ccnet.checkpoint import load_head
    from posecal.ccnet.export import check_head_against_model

    head, meta = load_head(head_dir)
    W, H = adapter.input_size
    probe = adapter.predict(np.zeros((1, H, W, 3), np.uint8))
    pooling, jmap = check_head_against_model(meta, head_dir, adapter, model, probe.features, allow_evidence=True)
    return head, meta, pooling, jmap


def head_evidence(meta: dict[str, object], out: ModelOutput, Ms: np.ndarray, boxes: np.ndarray, jmap: np.ndarray,
                  kp: np.ndarray, sc: np.ndarray, sigmas: np.ndarray, input_size: tuple[int, int],
                  target_sigma: float) -> np.ndarray:
    """The head's evidence columns ``(N, K, E)`` for crops made in memory, computed as ``posecal extract``
    stores their inputs and :func:`posecal.ccnet.targets.evidence_columns` reads them: keypoints ``kp (N, K, 2)``
    image px and raw scores ``sc (N, K)`` (dataset order, :func:`to_dataset` with the model → dataset joint
    map ``jmap``), σ̂ fitted to the heatmaps (extract's default estimator, ``target_sigma`` heatmap px) in
    image px, the gt ``boxes (N, 4)`` image px, the crop transforms ``Ms (N, 2, 3)`` and the input size (W, H)."""
    from posecal.ccnet.targets import evidence_from_arrays
    from posecal.models.crop import invert_affine
    from posecal.theory.heatmap import estimate_sigma

    N, K = sc.shape
    sig = np.full((N, K), np.nan)
    if out.heatmaps is not None:
        hms = np.asarray(out.heatmaps)
        # image px per heatmap px = image px per input px (crop scale) × input px per heatmap px
        scale = np.sqrt(np.abs(np.linalg.det(invert_affine(Ms)[:, :, :2]))) * (input_size[0] / hms.shape[3])
        s_img = np.asarray(estimate_sigma(hms, method="fit", target_sigma=target_sigma, scale=scale), np.float64)
        have = jmap >= 0
        sig = np.where(have[None], s_img[:, np.where(have, jmap, 0)], np.nan)
    arrays = {"scores": sc, "sigma_hat": sig, "bbox": boxes, "keypoints": kp, "crop_transform": Ms}
    return evidence_from_arrays(list(meta.get("evidence") or []), sigmas, arrays, input_size)
