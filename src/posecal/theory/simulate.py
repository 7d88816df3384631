"""SIMULATION: a seeded COCO-format dataset with a heatmap model's and an RLE model's outputs.

Everything this module produces is synthetic and is labelled ``"simulation"`` (``SimulatedDataset.label``,
``gt["info"]["description"]``, each result record's ``"source"``). It implements the generative
assumptions of Sec. 4.1 and App. A of the paper:

1. one person per image (so COCO matching never depends on scores and AR is score-independent), COCO-17;
   gt segment area log-uniform, bbox = area / fill with a per-instance fill ratio (segment/box);
2. true keypoint locations ``mu`` from a jittered template pose in the box;
3. per-image, per-keypoint ambiguity ``sigma = gamma * k * sqrt(area)`` (image pixels), ``log gamma``
   normal with a per-image difficulty offset, larger for occluded (v=1) and unlabelled (v=0) keypoints;
4. the annotation ``p ~ N(mu, sigma^2 I)`` (Sec. 4.1); v=0 keypoints are written as ``0, 0, 0``;
5. imperfect prediction ``p_hat = mu + delta``, ``delta ~ N(0, (rho sigma)^2 I)`` plus rare gross errors;
6. the heatmap model's keypoint score is the MSE-optimal peak of its imperfect heatmap, Eq. 87 with the
   width of Eq. 109 (``theory.heatmap_peak_imperfect``), computed in heatmap pixels of a 64x48 map with
   target ``l~ = 2``, times log-normal noise (so maxima can exceed 1); instance score as MMPose
   ``bbox_keypoint`` (mean of keypoint scores > 0.2, times the box score 1);
7. the RLE model's ``sigma_hat^2 = sigma^2 + Delta^2/2`` (Eq. 62), normalised per axis by the crop size as
   MMPose's RLE head does, score ``1 - mean(sigma_hat_x, sigma_hat_y)`` (Eq. 63) times noise; instance score
   as MMPose ``bbox_rle`` (box score + mean + max of keypoint scores).

The true expected per-keypoint OKS of each model's prediction is Eq. 11 with the gt area.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from posecal import theory
from posecal.keypoints import COCO17
from posecal.theory.heatmap import image_px_per_heatmap_px, topdown_crop_box

__all__ = ["SimulatedDataset", "simulate", "LABEL"]

LABEL = "simulation"

# COCO-17 template pose in box-normalised coordinates (x right, y down), person facing the camera.
_TEMPLATE = np.array(
    [
        [0.50, 0.08], [0.54, 0.06], [0.46, 0.06], [0.58, 0.08], [0.42, 0.08],
        [0.68, 0.22], [0.32, 0.22], [0.78, 0.38], [0.22, 0.38], [0.82, 0.52], [0.18, 0.52],
        [0.62, 0.55], [0.38, 0.55], [0.62, 0.76], [0.38, 0.76], [0.62, 0.96], [0.38, 0.96],
    ]
)  # fmt: skip


@dataclass
class SimulatedDataset:
    """Output of :func:`simulate` (SIMULATION). N instances (one per image), K = 17 (COCO-17).

    Attributes:
        gt: COCO keypoints ground-truth dict (``images``, ``annotations``, ``categories`` COCO-17).
        heatmap_results: COCO results list of the simulated heatmap model (records carry ``bbox``,
            ``bbox_score``, ``source``); row i is instance i.
        rle_results: same for the simulated RLE model.
        image_id: ``(N,)`` int64; ``ann_id``: ``(N,)`` int64.
        area: ``(N,)`` gt segment area, image px^2.   ``bbox``: ``(N, 4)`` gt box ``x, y, w, h``.
        crop: ``(N, 4)`` top-down crop ``cx, cy, cw, ch`` (image px) both models see.
        visibility: ``(N, K)`` gt flag in {0, 1, 2}.
        mu: ``(N, K, 2)`` true locations, image px.  ``gt_xy``: ``(N, K, 2)`` annotated locations.
        sigma: ``(N, K)`` ambiguity sigma, image px.
        pred_heatmap / pred_rle: ``(N, K, 2)`` predictions, image px.
        score_heatmap / score_rle: ``(N, K)`` raw keypoint scores as the models output them.
        sigma_hat_rle: ``(N, K)`` RLE sigma-hat in image px (Eq. 62, before normalisation and noise).
        expected_oks: ``(N, K)`` true expected OKS (Eq. 11) of the heatmap model's prediction, for every
            keypoint (COCO only counts v > 0).   expected_oks_rle: same for the RLE model.
        expected_instance_oks: ``(N,)`` mean of ``expected_oks`` over v > 0 (the expected instance OKS).
        features: ``(N, C)`` synthetic penultimate features: a fixed random projection (``feature_seed``) of
            per-keypoint ``log(sigma / l)``, ``log(Delta / l + 0.01)`` (``l = 2 k sqrt(area)``), visibility
            flags and ``log area / 10``, plus Gaussian noise; a learned head recovers ``expected_oks``.
        features_kpt: ``(N, K, Ck)`` per-keypoint form of the same (projection of the keypoint's own
            descriptors and a keypoint embedding).
        features_spatial: ``(N, Ck, H, W)`` float32 spatial form, or None unless ``spatial_size`` is given:
            per-keypoint projected descriptors as unit-width Gaussian blobs at the predicted keypoint's
            position in the crop (cells), summed over keypoints, plus noise.
        heatmaps: ``(N, K, H, W)`` float32 rendered maps ``o* exp(-||m - p_hat||^2 / (2 w*^2))``
            (heatmap pixels), or None unless ``render_heatmaps=True``.
        heatmap_size: ``(W, H)``; input_size: ``(W, H)``; target_sigma: ``l~`` (heatmap px).
        label: always ``"simulation"``.
    """

    gt: dict
    heatmap_results: list[dict]
    rle_results: list[dict]
    image_id: np.ndarray
    ann_id: np.ndarray
    area: np.ndarray
    bbox: np.ndarray
    crop: np.ndarray
    visibility: np.ndarray
    mu: np.ndarray
    gt_xy: np.ndarray
    sigma: np.ndarray
    pred_heatmap: np.ndarray
    pred_rle: np.ndarray
    score_heatmap: np.ndarray
    score_rle: np.ndarray
    sigma_hat_rle: np.ndarray
    expected_oks: np.ndarray
    expected_oks_rle: np.ndarray
    expected_instance_oks: np.ndarray
    features: np.ndarray
    features_kpt: np.ndarray
    features_spatial: np.ndarray | None = None
    heatmaps: np.ndarray | None = None
    heatmap_size: tuple[int, int] = (48, 64)
    input_size: tuple[int, int] = (192, 256)
    target_sigma: float = 2.0
    label: str = field(default=LABEL)


def _records(image_id, pred, score, inst_score, bbox, model):
    n, k = score.shape
    kp = np.concatenate([pred, score[..., None]], -1).reshape(n, 3 * k)
    return [
        {
            "image_id": int(image_id[i]),
            "category_id": 1,
            "keypoints": kp[i].tolist(),
            "score": float(inst_score[i]),
            "bbox": bbox[i].tolist(),
            "bbox_score": 1.0,
            "source": f"{LABEL}:{model}",
        }
        for i in range(n)
    ]


def _check_simulation_args(n: int, gamma_median: float, p_occluded: float, p_unlabelled: float,
                           **non_negative: float) -> None:
    """``ValueError`` for arguments of :func:`simulate` outside their domain (API misuse)."""
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, not {n!r}")
    if not gamma_median > 0:
        raise ValueError(f"gamma_median must be > 0, not {gamma_median!r}")
    for name, v in non_negative.items():
        if not v >= 0:
            raise ValueError(f"{name} must be >= 0, not {v!r}")
    if not (0 <= p_occluded <= 1 and 0 <= p_unlabelled <= 1 and p_occluded + p_unlabelled <= 1):
        raise ValueError(f"p_occluded={p_occluded!r} and p_unlabelled={p_unlabelled!r} must be probabilities "
                         "with a sum <= 1")


def simulate(
    n: int = 1000,
    seed: int = 0,
    *,
    feature_dim: int = 128,
    feature_kpt_dim: int = 16,
    feature_noise: float = 0.05,
    feature_seed: int = 0,
    heatmap_size: tuple[int, int] = (48, 64),
    input_size: tuple[int, int] = (192, 256),
    target_sigma: float = 2.0,
    padding: float = 1.25,
    gamma_median: float = 0.5,
    gamma_spread: float = 0.5,
    image_difficulty: float = 0.3,
    pred_error: float = 0.6,
    gross_error_rate: float = 0.03,
    score_noise: float = 0.05,
    p_occluded: float = 0.15,
    p_unlabelled: float = 0.08,
    render_heatmaps: bool = False,
    spatial_size: tuple[int, int] | None = None,
) -> SimulatedDataset:
    """Generate a SIMULATION dataset (see the module docstring for the generative model).

    Args:
        n: number of instances (= images).
        seed: all data randomness derives from ``np.random.default_rng(seed)``.
        feature_dim / feature_kpt_dim: C and Ck of ``features`` / ``features_kpt``.
        feature_noise: std of the Gaussian noise added to the features.
        feature_seed: fixes the random feature projection (the simulated "network"); it does not depend on
            ``seed``, so splits drawn with different seeds share one feature space.
        heatmap_size, input_size, target_sigma, padding: the simulated top-down heatmap model
            (64x48 maps, 256x192 input, l~ = 2 heatmap px, crop padding 1.25 — SBL/MMPose defaults).
        gamma_median, gamma_spread, image_difficulty: ``sigma = gamma k sqrt(area)`` with
            ``log gamma ~ N(log gamma_median + image offset, gamma_spread^2)``, image offset
            ``~ N(0, image_difficulty^2)``.
        pred_error: ``rho`` of the prediction error ``delta ~ N(0, (rho sigma)^2 I)``.
        gross_error_rate: fraction of keypoints with an extra error ``~ N(0, (4 sigma)^2 I)``.
        score_noise: std of the log-normal multiplicative noise on keypoint scores.
        p_occluded, p_unlabelled: probabilities of v=1 and v=0 per keypoint.
        render_heatmaps: also render ``heatmaps (N, K, H, W)`` float32 (memory: N*K*H*W*4 bytes).
        spatial_size: ``(W, H)``: also build ``features_spatial (N, Ck, H, W)`` float32.

    Raises ``ValueError`` for a negative ``n``, a spread or noise below 0, ``gamma_median <= 0``, or
    visibility probabilities outside [0, 1] (or summing above 1).
    """
    _check_simulation_args(n, gamma_median, p_occluded, p_unlabelled, gamma_spread=gamma_spread,
                           image_difficulty=image_difficulty, pred_error=pred_error, score_noise=score_noise,
                           feature_noise=feature_noise, gross_error_rate=gross_error_rate)
    rng = np.random.default_rng(seed)
    K = COCO17.num_keypoints
    k = COCO17.sigmas
    # 1. areas, boxes, images
    side = np.exp(rng.uniform(np.log(36.0), np.log(320.0), n))
    area = side**2
    fill = rng.uniform(0.4, 0.7, n)  # segment area / box area
    aspect = rng.uniform(1.6, 2.8, n)  # box h / w
    bw = np.sqrt(area / fill / aspect)
    bh = bw * aspect
    W_img = np.ceil(bw * 1.6 + 40).astype(int)
    H_img = np.ceil(bh * 1.4 + 40).astype(int)
    bx = rng.uniform(10, W_img - bw - 10)
    by = rng.uniform(10, H_img - bh - 10)
    bbox = np.stack([bx, by, bw, bh], 1)
    # 2. true locations
    tmpl = _TEMPLATE[None] + rng.normal(0, 0.035, (n, K, 2))
    mu = np.stack([bx[:, None] + tmpl[..., 0] * bw[:, None], by[:, None] + tmpl[..., 1] * bh[:, None]], -1)
    # visibility flags
    u = rng.uniform(size=(n, K))
    vis = np.where(u < p_unlabelled, 0, np.where(u < p_unlabelled + p_occluded, 1, 2))
    none = (vis == 0).all(1)
    vis[none, 0] = 2
    # 3. ambiguity
    log_gamma = (
        np.log(gamma_median)
        + rng.normal(0, image_difficulty, (n, 1))
        + rng.normal(0, gamma_spread, (n, K))
        + np.where(vis == 1, np.log(2.0), 0.0)
        + np.where(vis == 0, np.log(3.0), 0.0)
    )
    sigma = np.exp(log_gamma) * k[None] * np.sqrt(area)[:, None]
    # 4. annotation
    gt_xy = mu + sigma[..., None] * rng.standard_normal((n, K, 2))

    # 5. predictions (two independent models)
    def _pred():
        d = pred_error * sigma[..., None] * rng.standard_normal((n, K, 2))
        gross = rng.uniform(size=(n, K)) < gross_error_rate
        d += np.where(gross[..., None], 4.0 * sigma[..., None] * rng.standard_normal((n, K, 2)), 0.0)
        return mu + d, (d**2).sum(-1)

    pred_hm, delta2_hm = _pred()
    pred_rle, delta2_rle = _pred()
    # crops and units
    det_box = bbox.copy()
    crop = topdown_crop_box(det_box, input_size, padding)
    scale = image_px_per_heatmap_px(crop, heatmap_size)  # image px per heatmap px
    # 6. heatmap model scores (Eq. 87 with Eq. 109 width), in heatmap pixels
    s2_hm = (sigma / scale[:, None]) ** 2
    d2_hm = delta2_hm / scale[:, None] ** 2
    lt2 = target_sigma**2
    score_hm = theory.heatmap_peak_imperfect(s2_hm, d2_hm, lt2) * np.exp(rng.normal(0, score_noise, (n, K)))
    width2_hm = theory.heatmap_optimal_width2(s2_hm, d2_hm, lt2)
    # 7. RLE scores (Eq. 62-63), per-axis normalisation by the crop size
    sig_hat = theory.rle_sigma_hat(sigma**2, delta2_rle)
    norm = 0.5 * (1.0 / crop[:, 2] + 1.0 / crop[:, 3])
    score_rle = 1.0 - sig_hat * norm[:, None] * np.exp(rng.normal(0, score_noise, (n, K)))
    # instance scores as MMPose would compute them
    thr = score_hm > 0.2
    inst_hm = np.where(thr.any(1), (score_hm * thr).sum(1) / np.maximum(thr.sum(1), 1), 0.0) * 1.0
    inst_rle = 1.0 + score_rle.mean(1) + score_rle.max(1)
    # true expected OKS (Eq. 11), gt area
    l2 = theory.oks_l2(k[None], area[:, None])
    eoks = theory.expected_oks(sigma**2, l2, delta2_hm)
    eoks_rle = theory.expected_oks(sigma**2, l2, delta2_rle)
    lab = vis > 0
    inst_eoks = (eoks * lab).sum(1) / lab.sum(1)
    # features
    frng = np.random.default_rng([feature_seed, 7919])  # the 'network': fixed across data seeds
    sq = 2.0 * k[None] * np.sqrt(area)[:, None]  # l: descriptors in OKS units
    desc = np.concatenate(
        [
            np.log(sigma / sq),
            np.log(np.sqrt(delta2_hm) / sq + 1e-2),
            (vis == 2).astype(float),
            (vis == 1).astype(float),
            np.log(area)[:, None] / 10.0,
        ],
        1,
    )
    proj = frng.normal(0, 1.0 / np.sqrt(desc.shape[1]), (desc.shape[1], feature_dim))
    features = desc @ proj + feature_noise * rng.standard_normal((n, feature_dim))
    kdesc = np.stack(
        [
            np.log(sigma / sq),
            np.log(np.sqrt(delta2_hm) / sq + 1e-2),
            (vis == 2).astype(float),
            (vis == 1).astype(float),
            np.broadcast_to(np.log(area)[:, None] / 10.0, (n, K)),
        ],
        -1,
    )
    kemb = frng.normal(0, 0.5, (K, 3))
    kdesc = np.concatenate([kdesc, np.broadcast_to(kemb[None], (n, K, 3))], -1)
    kproj = frng.normal(0, 1.0 / np.sqrt(kdesc.shape[-1]), (kdesc.shape[-1], feature_kpt_dim))
    features_kpt = kdesc @ kproj + feature_noise * rng.standard_normal((n, K, feature_kpt_dim))
    features_spatial = None
    if spatial_size is not None:
        # per-keypoint vectors (a second fixed projection of the keypoint descriptors) placed as unit-width
        # Gaussian blobs at the predicted keypoint's position in the crop, summed over keypoints
        Ws, Hs = spatial_size
        sproj = frng.normal(0, 1.0 / np.sqrt(kdesc.shape[-1]), (kdesc.shape[-1], feature_kpt_dim))
        fk = kdesc @ sproj  # (N, K, Cs)
        u = (pred_hm[..., 0] - (crop[:, 0] - 0.5 * crop[:, 2])[:, None]) / crop[:, 2][:, None] * Ws - 0.5
        v = (pred_hm[..., 1] - (crop[:, 1] - 0.5 * crop[:, 3])[:, None]) / crop[:, 3][:, None] * Hs - 0.5
        bx = np.exp(-0.5 * (np.arange(Ws)[None, None] - u[..., None]) ** 2)  # (N, K, Ws)
        by = np.exp(-0.5 * (np.arange(Hs)[None, None] - v[..., None]) ** 2)  # (N, K, Hs)
        features_spatial = np.einsum("nkh,nkw,nkc->nchw", by, bx, fk, optimize=True)
        features_spatial += feature_noise * rng.standard_normal(features_spatial.shape)
        features_spatial = features_spatial.astype(np.float32)
    heatmaps = None
    if render_heatmaps:
        Wh, Hh = heatmap_size
        x0 = crop[:, 0] - 0.5 * crop[:, 2]
        y0 = crop[:, 1] - 0.5 * crop[:, 3]
        cx = (pred_hm[..., 0] - x0[:, None]) / (crop[:, 2] / Wh)[:, None] - 0.5
        cy = (pred_hm[..., 1] - y0[:, None]) / (crop[:, 3] / Hh)[:, None] - 0.5
        gx = np.arange(Wh, dtype=np.float32)
        gy = np.arange(Hh, dtype=np.float32)
        ex = np.exp(-((gx[None, None] - cx[..., None]) ** 2) / (2 * width2_hm[..., None])).astype(np.float32)
        ey = np.exp(-((gy[None, None] - cy[..., None]) ** 2) / (2 * width2_hm[..., None])).astype(np.float32)
        heatmaps = (score_hm[..., None, None].astype(np.float32) * ey[..., :, None]) * ex[..., None, :]
    # COCO gt
    image_id = np.arange(1, n + 1, dtype=np.int64)
    ann_id = np.arange(1, n + 1, dtype=np.int64)
    kp_gt = np.concatenate([np.where(lab[..., None], gt_xy, 0.0), vis[..., None].astype(float)], -1)
    gt = {
        "info": {"description": f"posecal {LABEL} (synthetic data, seed {seed})"},
        "images": [
            {
                "id": int(image_id[i]),
                "width": int(W_img[i]),
                "height": int(H_img[i]),
                "file_name": f"sim_{i:06d}",
            }
            for i in range(n)
        ],
        "annotations": [
            {
                "id": int(ann_id[i]),
                "image_id": int(image_id[i]),
                "category_id": 1,
                "iscrowd": 0,
                "area": float(area[i]),
                "bbox": bbox[i].tolist(),
                "num_keypoints": int(lab[i].sum()),
                "keypoints": kp_gt[i].reshape(-1).tolist(),
            }
            for i in range(n)
        ],
        "categories": [
            {
                "id": 1,
                "name": "person",
                "supercategory": "person",
                "keypoints": list(COCO17.names),
                "skeleton": [],
            }
        ],
    }
    return SimulatedDataset(
        gt=gt,
        heatmap_results=_records(image_id, pred_hm, score_hm, inst_hm, det_box, "heatmap"),
        rle_results=_records(image_id, pred_rle, score_rle, inst_rle, det_box, "rle"),
        image_id=image_id,
        ann_id=ann_id,
        area=area,
        bbox=bbox,
        crop=crop,
        visibility=vis,
        mu=mu,
        gt_xy=gt_xy,
        sigma=sigma,
        pred_heatmap=pred_hm,
        pred_rle=pred_rle,
        score_heatmap=score_hm,
        score_rle=score_rle,
        sigma_hat_rle=sig_hat,
        expected_oks=eoks,
        expected_oks_rle=eoks_rle,
        expected_instance_oks=inst_eoks,
        features=features,
        features_kpt=features_kpt,
        features_spatial=features_spatial,
        heatmaps=heatmaps,
        heatmap_size=tuple(heatmap_size),
        input_size=tuple(input_size),
        target_sigma=float(target_sigma),
    )
