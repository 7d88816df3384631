"""Occlusion study (paper Sec. 6.5, Fig. 3): occlude one joint more and more; does confidence follow OKS?

For every instance whose chosen joint is labelled visible (gt v = 2), the top-down crop (as ``posecal
extract`` makes it) gets, centred on the joint, either a filled circle (**occluder**, colour ``fill``) or a
Gaussian blur (σ = ``blur_sigma`` input px) inside a circle (**blur**), of radius r for each r in ``radii``
(input pixels of the model crop; r = 0 is the untouched crop). The model is re-run on each perturbed crop
and, averaged over instances, the study reports per radius:

* ``joint_oks``: keypoint OKS of the chosen joint (one term of Eq. 7, gt area, the keypoint set's κ);
* ``instance_oks``: mean keypoint OKS over the labelled keypoints (Eq. 7);
* ``raw_confidence``: the model's own keypoint score of the joint (heatmap maximum; may exceed 1);
* ``ccnet_confidence`` / ``ccnet_visibility``: the CCNet head's ŝ and v̂ of the joint (with a head).

A calibrated confidence drops with ``joint_oks``; an uncalibrated one stays high (the paper's Fig. 3).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from posecal.errors import PosecalInputError
from posecal.keypoints import CUSTOM, KeypointSet

if TYPE_CHECKING:
    from posecal.ccnet.heads import CCNetHead
    from posecal.datasets.coco import Instance
    from posecal.keypoints import KeypointSet
    from posecal.models.adapters.base import PoseAdapter

__all__ = ["DEFAULT_RADII", "MODES", "StudyInstances", "StudyModel", "occlusion_study", "open_model",
           "paste_blur", "paste_occluder", "pearson_vs_joint_oks", "perturb", "plot_occlusion",
           "radius_summary", "run_model", "select_instances"]

DEFAULT_RADII = (0, 8, 16, 24, 32, 48, 64)
MODES = ("occluder", "blur")
MAX_BLUR_SIGMA = 1e6  # input px; PIL's GaussianBlur refuses radii past ~1e11


def _disc(shape: tuple[int, int], center: np.ndarray, r: float) -> np.ndarray:
    """Boolean (H, W) mask of pixel centres within ``r`` input px of ``center`` (x, y)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (xx - center[0]) ** 2 + (yy - center[1]) ** 2 <= r * r


def paste_occluder(crop: np.ndarray, center: np.ndarray, r: float,
                   fill: tuple[int, int, int] = (128, 128, 128)) -> np.ndarray:
    """A copy of ``crop (H, W, 3) uint8`` with a filled disc of radius ``r`` (input px) at ``center``."""
    out = crop.copy()
    if r > 0:
        out[_disc(crop.shape[:2], center, r)] = np.asarray(fill, np.uint8)
    return out


def paste_blur(crop: np.ndarray, center: np.ndarray, r: float, sigma: float = 6.0) -> np.ndarray:
    """A copy of ``crop`` whose disc of radius ``r`` at ``center`` is Gaussian-blurred (σ input px)."""
    out = crop.copy()
    if r > 0:
        from PIL import Image, ImageFilter

        blurred = np.asarray(Image.fromarray(crop).filter(ImageFilter.GaussianBlur(radius=sigma)))
        m = _disc(crop.shape[:2], center, r)
        out[m] = blurred[m]
    return out


@dataclass
class StudyInstances:
    """The instances of a study: ``insts`` (gt boxes with ``joint`` visible, file order), the keypoint set
    ``ks``, the joint index ``j`` in it, the data file name and the radii (input px)."""

    insts: list[Instance]
    ks: KeypointSet
    j: int
    file: str
    radii: list[float]


@dataclass
class StudyModel:
    """The pose model, its joint map to the dataset keypoints ``(K,)`` (−1 where missing) and, with a
    CCNet head, the head, its feature pooling and its own joint map."""

    adapter: PoseAdapter
    jmap: np.ndarray
    head: CCNetHead | None = None
    pooling: str | None = None
    head_jmap: np.ndarray | None = None
    head_meta: dict[str, object] | None = None  # its evidence columns are computed per crop (head_evidence)
    sigmas: np.ndarray | None = None  # the keypoint set's OKS sigmas (closed-form / pose evidence)


def _check_custom_head(hmeta: dict, ks: KeypointSet, head: str | os.PathLike) -> None:
    """A head fitted on a keypoint set posecal does not know must have been fitted on these names and sigmas."""
    if ks.name != CUSTOM:
        return
    if [str(n) for n in hmeta.get("keypoint_names") or []] != list(ks.names):
        raise PosecalInputError(f"head keypoints {hmeta.get('keypoint_names')!r} != data {list(ks.names)!r}",
                                file=str(head), field="keypoint_names")
    if hmeta.get("keypoint_sigmas") != [float(x) for x in ks.sigmas]:
        raise PosecalInputError(f"head OKS sigmas {hmeta.get('keypoint_sigmas')!r} != --sigmas "
                                f"{[float(x) for x in ks.sigmas]!r}", file=str(head), field="keypoint_sigmas")


def select_instances(data: str | os.PathLike | dict, joint: str, radii: Sequence[float],
                     limit: int | None, sigmas: Sequence[float] | None = None) -> StudyInstances:
    """Read ``data`` and keep its instances with ``joint`` labelled visible (v = 2), at most ``limit``.
    ``sigmas``: the OKS sigmas of a keypoint set posecal does not know (:func:`posecal.datasets.coco.keypoint_set`).

    Raises :class:`PosecalInputError` for an unknown joint, a negative or empty ``radii`` or no instance.
    """
    from posecal.datasets.coco import instances, keypoint_set, read_coco

    file = str(data) if not isinstance(data, dict) else "<dict>"
    d = read_coco(data, file=file, sigmas=sigmas)
    ks = keypoint_set(d, file=file, sigmas=sigmas)
    if joint not in ks.names:
        raise PosecalInputError(f"unknown joint {joint!r}; {ks.name} has {', '.join(ks.names)}", file=file,
                                field="--joint")
    j = ks.names.index(joint)
    radii = [float(r) for r in radii]
    if not radii or min(radii) < 0:
        raise PosecalInputError("radii must be >= 0", field="--radii")
    if not np.isfinite(max(radii) * max(radii)):  # the disc test squares r (and the plot's axis overflows)
        raise PosecalInputError(f"radius {max(radii):g} input px is too large (its square overflows; a radius "
                                "beyond the crop's diagonal already covers the whole crop)", field="--radii")
    insts = [i for i in instances(d, file=file, sigmas=sigmas) if i.keypoints[j, 2] == 2]
    if limit is not None:
        insts = insts[:limit]
    if not insts:
        raise PosecalInputError(f"no instance has {joint} visible (v = 2)", file=file, field="--joint")
    return StudyInstances(insts, ks, j, file, radii)


def open_model(model: str | os.PathLike, head: str | os.PathLike | None, sel: StudyInstances,
               threads: int | None, model_card: str | os.PathLike | dict | None = None,
               input_size: Sequence[int] | None = None) -> StudyModel:
    """Load the model (and the CCNet head, checked against the model and the keypoint set). ``model_card``
    describes a model without a built-in card, ``input_size`` (W, H) is a TorchScript model's
    (:func:`posecal.models.adapters.base.load_adapter`)."""
    from posecal.models.adapters.base import load_adapter
    from posecal.models.adapters.joints import joint_map
    from posecal.studies._common import open_head

    adapter = load_adapter(model, num_threads=threads, model_card=model_card, input_size=input_size)
    out = StudyModel(adapter, np.zeros(0, np.int64))
    if head is not None:
        hd, hmeta, out.pooling, out.head_jmap = open_head(head, model, adapter)
        out.head, out.head_meta, out.sigmas = hd, hmeta, np.asarray(sel.ks.sigmas, np.float64)
        if hmeta.get("keypoint_set") != sel.ks.name:
            raise PosecalInputError(f"head keypoint set {hmeta.get('keypoint_set')!r} != data {sel.ks.name!r}",
                                    file=str(head), field="keypoint_set")
        _check_custom_head(hmeta, sel.ks, head)
        if hmeta.get("model_tensor") and hmeta["model_tensor"] != adapter.tensor_name:
            out.adapter = load_adapter(model, tensor=hmeta["model_tensor"], num_threads=threads,
                                       model_card=model_card, input_size=input_size)
    out.jmap = joint_map(out.adapter.joint_names, sel.ks.names, allow_missing=True)
    if out.jmap[sel.j] < 0:
        raise PosecalInputError(f"the model has no joint for {sel.ks.names[sel.j]!r}", field="--joint")
    return out


def perturb(crops: np.ndarray, centers: np.ndarray, mode: str, r: float,
            fill: tuple[int, int, int] = (128, 128, 128), blur_sigma: float = 6.0) -> np.ndarray:
    """``crops (N, H, W, 3) uint8`` with an occluder (``mode="occluder"``) or a blur (``"blur"``) of radius
    ``r`` input px at ``centers (N, 2)`` (input px); ``(N, H, W, 3) uint8``."""
    pairs = zip(crops, centers, strict=True)
    if mode == "occluder":
        return np.stack([paste_occluder(c, p, r, fill) for c, p in pairs])
    if mode == "blur":
        return np.stack([paste_blur(c, p, r, blur_sigma) for c, p in pairs])
    raise ValueError(f"mode must be one of {MODES}, not {mode!r}")


def run_model(m: StudyModel, crops: np.ndarray, Ms: np.ndarray, batch_size: int,
              on_batch: Callable[[int], object] | None = None, boxes: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The model (and head) on ``crops (N, H, W, 3)`` whose image → input affines are ``Ms (N, 2, 3)``.

    Returns keypoints ``(N, K, 2)`` image px and raw scores ``(N, K)`` in the dataset keypoint set, and the
    head's ŝ, v̂ ``(N, K)`` (``None`` without a head). ``on_batch(n)`` is called after each batch of n. A head
    that reads evidence columns (e.g. the default ``kpt_pose``) needs the crops' gt ``boxes (N, 4)`` image px.
    """
    from posecal.ccnet.targets import instance_evidence, uses_evidence
    from posecal.ccnet.train import predict
    from posecal.models.extract import DEFAULT_TARGET_SIGMA
    from posecal.studies._common import head_evidence, pooled_features, to_dataset

    evidence = bool(m.head is not None and (m.head_meta or {}).get("evidence"))
    inst_ev = bool(m.head is not None and uses_evidence(m.head_meta or {}))  # e.g. SimplePose's kpt_inst
    if evidence and boxes is None:
        raise ValueError("this head reads evidence columns: give the crops' boxes")
    card = getattr(m.adapter, "card", None) or {}
    target_sigma = float(card.get("target_sigma") or DEFAULT_TARGET_SIGMA.get(getattr(m.adapter, "kind", ""), 2.0))

    N = crops.shape[0]
    kp_l, sc_l, s_l, v_l = [], [], [], []
    for b in range(0, N, batch_size):
        out = m.adapter.predict(crops[b:b + batch_size])
        kp, sc = to_dataset(out, Ms[b:b + batch_size], m.jmap)
        kp_l.append(kp)
        sc_l.append(sc)
        if m.head is not None:
            x = pooled_features(out, m.pooling, m.head_jmap)
            if inst_ev and x.ndim in (2, 3):  # the model card's instance evidence, as store_features appends it
                ie = instance_evidence(sc, np.ones(len(sc)), per_keypoint=x.ndim == 3)
                x = np.concatenate([np.asarray(x, np.float32), ie], axis=-1)
            if evidence:
                ev = head_evidence(m.head_meta, out, Ms[b:b + batch_size], boxes[b:b + batch_size], m.jmap, kp, sc,
                                   m.sigmas, tuple(m.adapter.input_size), target_sigma)
                x = np.concatenate([np.asarray(x, np.float32), ev], axis=-1)
            s, v = predict(m.head, x)
            s_l.append(s)
            v_l.append(v)
        if on_batch is not None:
            on_batch(min(batch_size, N - b))
    if m.head is None:
        return np.concatenate(kp_l), np.concatenate(sc_l), None, None
    return np.concatenate(kp_l), np.concatenate(sc_l), np.concatenate(s_l), np.concatenate(v_l)


def radius_summary(r: float, j: int, oks: np.ndarray, sc: np.ndarray, s: np.ndarray | None,
                   v: np.ndarray | None) -> tuple[dict[str, float | None], dict[str, object]]:
    """One radius: the curve points (means over instances) and the per-instance row.

    ``oks (N, K)`` keypoint OKS (NaN where unlabelled), ``sc (N, K)`` raw scores, ``s, v (N, K)`` the head's
    ŝ and v̂ or ``None``; ``j`` the studied joint.
    """
    point: dict[str, float | None] = {
        "joint_oks": float(np.mean(oks[:, j])),
        "instance_oks": float(np.mean(np.nanmean(oks, axis=1))),
        "raw_confidence": float(np.mean(sc[:, j])),
        "ccnet_confidence": None,
        "ccnet_visibility": None,
    }
    row: dict[str, object] = {"radius": r, "joint_oks": oks[:, j].tolist(), "raw_confidence": sc[:, j].tolist()}
    if s is not None and v is not None:
        point["ccnet_confidence"] = float(np.mean(s[:, j]))
        point["ccnet_visibility"] = float(np.mean(v[:, j]))
        row["ccnet_confidence"] = s[:, j].tolist()
    return point, row


def pearson_vs_joint_oks(per_instance: dict[str, list[dict[str, object]]]) -> dict[str, float | None]:
    """Per mode, Pearson correlation of each confidence with the joint's OKS over all perturbed crops
    (``None`` for a constant confidence)."""
    corr = {}
    for mode in MODES:
        o = np.concatenate([np.asarray(r["joint_oks"]) for r in per_instance[mode]])
        for key in ("raw_confidence", "ccnet_confidence"):
            if key in per_instance[mode][0]:
                c = np.concatenate([np.asarray(r[key]) for r in per_instance[mode]])
                corr[f"{mode}_{key}_pearson"] = float(np.corrcoef(c, o)[0, 1]) if c.std() > 0 else None
    return corr


def occlusion_study(model: str | os.PathLike, data: str | os.PathLike | dict, images: str | os.PathLike,
                    joint: str, *, head: str | os.PathLike | None = None,
                    radii: Sequence[float] = DEFAULT_RADII, limit: int | None = 100,
                    fill: tuple[int, int, int] = (128, 128, 128), blur_sigma: float = 6.0, batch_size: int = 16,
                    threads: int | None = None, show_progress: bool | None = None,
                    model_card: str | os.PathLike | dict | None = None,
                    input_size: Sequence[int] | None = None,
                    sigmas: Sequence[float] | None = None) -> dict[str, object]:
    """Run the study (see the module docstring); returns the JSON-ready result. ``sigmas``: the OKS sigmas
    of ``data``'s own keypoints when posecal does not know its set (as ``posecal extract --sigmas``).

    ``data``: COCO keypoints JSON (e.g. ``posecal convert lsp``); instances are its gt boxes, in file order,
    those with ``joint`` visible (v = 2), at most ``limit``. ``radii`` in input px of the model crop.
    ``model_card``: the card (JSON path or dict) of a model without a built-in one, as ``posecal extract
    --model-card`` takes it. ``input_size`` (W, H): a TorchScript model's input size, as ``posecal extract
    --input-size`` takes it (or its card's ``input.size``).

    Stages: :func:`select_instances`, :func:`open_model`, the crops
    (:func:`posecal.studies._common.crop_instances`), then per mode and radius :func:`perturb`,
    :func:`run_model`, :func:`radius_summary`; finally :func:`pearson_vs_joint_oks`.
    """
    from posecal._util import progress
    from posecal.datasets.coco import image_key
    from posecal.metrics.oks import keypoint_oks
    from posecal.models.crop import apply_affine
    from posecal.studies._common import crop_instances

    if not (0 <= blur_sigma <= MAX_BLUR_SIGMA):  # PIL's Gaussian blur fails beyond ~1e11 px
        raise PosecalInputError(f"must be in [0, {MAX_BLUR_SIGMA:g}] input px (a blur much wider than the crop "
                                f"already averages it whole), got {blur_sigma:g}", field="--blur-sigma")
    sel = select_instances(data, joint, radii, limit, sigmas)
    m = open_model(model, head, sel, threads, model_card=model_card, input_size=input_size)
    insts, j, ks = sel.insts, sel.j, sel.ks
    crops, Ms = crop_instances(insts, images, m.adapter.input_size, getattr(m.adapter, "card", None))
    gt = np.stack([i.keypoints for i in insts])
    area = np.array([i.area for i in insts])
    boxes = np.stack([i.bbox for i in insts]).astype(np.float64)
    centers = apply_affine(Ms, gt[:, j:j + 1, :2])[:, 0]  # the joint in input px
    N = len(insts)
    res: dict[str, dict[str, list[float | None]]] = {}
    bar = progress(total=len(MODES) * len(sel.radii) * N, desc="occlusion study", unit="crop",
                   **({} if show_progress is None else {"disable": not show_progress}))
    per_instance: dict[str, list[dict[str, object]]] = {}
    for mode in MODES:
        keys = ("joint_oks", "instance_oks", "raw_confidence", "ccnet_confidence", "ccnet_visibility")
        curves: dict[str, list[float | None]] = {k: [] for k in keys}
        inst_rows = []
        for r in sel.radii:
            pert = perturb(crops, centers, mode, r, fill, blur_sigma)
            kp, sc, s, v = run_model(m, pert, Ms, batch_size, bar.update, boxes=boxes)
            oks = keypoint_oks(kp, gt, area, ks.sigmas)  # (N, K), NaN where unlabelled
            point, row = radius_summary(r, j, oks, sc, s, v)
            for k in keys:
                curves[k].append(point[k])
            inst_rows.append(row)
        res[mode] = curves
        per_instance[mode] = inst_rows
    bar.close()
    return {
        "study": "occlusion", "joint": joint, "keypoint_set": ks.name, "radii_input_px": sel.radii,
        "input_size": list(m.adapter.input_size), "model": os.path.basename(str(model)),
        "model_tensor": m.adapter.tensor_name, "head": None if head is None else str(head),
        "instances": N, "image_ids": [image_key(i.image_id) for i in insts],
        "ann_ids": [int(i.ann_id) for i in insts], "fill": list(fill),
        "blur_sigma_input_px": blur_sigma, "curves": res, "pearson_vs_joint_oks": pearson_vs_joint_oks(per_instance),
        "per_instance": per_instance,
    }


def plot_occlusion(result: dict[str, object], path: str | os.PathLike) -> None:
    """Fig. 3: per mode, mean joint OKS, raw and CCNet confidence against the radius (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posecal._util import atomic_path

    r = result["radii_input_px"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, mode in zip(axes, MODES, strict=True):
        c = result["curves"][mode]
        ax.plot(r, c["joint_oks"], "k-o", label=f"OKS of {result['joint']}")
        ax.plot(r, c["instance_oks"], "k:", label="instance OKS")
        ax.plot(r, c["raw_confidence"], "C1-s", label="raw confidence")
        if c["ccnet_confidence"][0] is not None:
            ax.plot(r, c["ccnet_confidence"], "C0-^", label="CCNet confidence")
            ax.plot(r, c["ccnet_visibility"], "C0--", alpha=0.6, label="CCNet visibility")
        ax.set_title(f"{mode} at {result['joint']} ({result['instances']} crops)")
        ax.set_xlabel(f"radius (input px of the {result['input_size'][0]}×{result['input_size'][1]} crop)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean over crops")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Occlusion study: {result['model']}")
    fig.tight_layout()
    p = Path(path)
    with atomic_path(p, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
