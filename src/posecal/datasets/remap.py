"""Keypoint-set remapping for datasets with partial skeletons (as MMPose's ``CombinedDataset`` mapping).

``remap_keypoint_set(d, "coco17")`` rewrites a COCO keypoints dict from its own keypoint set (LSP-14,
MPII-16...) into another one by joint **name**: joints both sets share are copied; joints of the target set
that the source does not annotate get ``(0, 0, 0)`` in every annotation **and** are left out of
``categories[0]["annotated_keypoints"]``, the list of target keypoint names the dataset annotates at all.

That list is the dataset-level marker "not annotated by this dataset", distinct from "not visible" (v = 0
on one person): the COCO evaluator ignores both alike (v = 0 adds nothing to OKS), while CCNet training
(:mod:`posecal.ccnet.targets`) leaves unannotated joints out of **both** losses instead of teaching the
visibility head that, say, an LSP person has no nose. A dataset without the key annotates every keypoint.

LSP-14 -> COCO-17 shares the 12 body joints; ``neck`` and ``head_top`` have no COCO counterpart and are
dropped; the 5 face points (nose, eyes, ears) are not annotated. Names that differ between conventions for
the same joint (:data:`posecal.keypoints.JOINT_ALIASES`) count as shared: LSP ``neck`` -> MPII
``upper_neck``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError
from posecal.keypoints import JOINT_ALIASES, KeypointSet, get_keypoint_set

__all__ = ["ANNOTATED_KEY", "annotated_mask", "remap_keypoint_set", "source_index"]

ANNOTATED_KEY = "annotated_keypoints"


def source_index(src: KeypointSet, dst: KeypointSet) -> np.ndarray:
    """(K_dst,) int: index in ``src`` of each ``dst`` keypoint (same name, else an alias of
    :data:`posecal.keypoints.JOINT_ALIASES`: LSP ``neck`` = MPII ``upper_neck``), -1 where ``src`` lacks it."""
    pos = {n: i for i, n in enumerate(src.names)}
    out = []
    for n in dst.names:
        hit = next((pos[c] for c in (n, *JOINT_ALIASES.get(n, ())) if c in pos), -1)
        out.append(hit)
    return np.array(out, dtype=np.int64)


def annotated_mask(d: dict[str, Any], ks: KeypointSet) -> np.ndarray:
    """(K,) bool: the keypoints ``d`` annotates (``categories[0]["annotated_keypoints"]``; all if absent)."""
    from posecal._util import keypoint_category_record

    c0 = keypoint_category_record(d)
    names = c0.get(ANNOTATED_KEY) if c0 is not None else None
    if names is None:
        return np.ones(ks.num_keypoints, dtype=bool)
    if not isinstance(names, list) or any(n not in ks.names for n in names):
        raise PosecalInputError(f"must list names of the {ks.name} keypoints",
                                field=f"categories[0].{ANNOTATED_KEY}")
    return np.array([n in names for n in ks.names], dtype=bool)


def remap_keypoint_set(d: dict[str, Any], target: str | KeypointSet) -> dict[str, Any]:
    """A copy of COCO dict ``d`` in keypoint set ``target`` (see the module docstring). ``d`` is unchanged.

    ``keypoints`` (3·K_src) -> (3·K_dst) per annotation, ``num_keypoints`` recounted; boxes, areas, ids and
    images are kept as they are. Raises PosecalInputError when the sets share no joint.
    """
    from posecal.datasets.coco import keypoint_set

    src = keypoint_set(d)
    dst = target if isinstance(target, KeypointSet) else _get(target)
    if src.name == dst.name:
        return d
    idx = source_index(src, dst)
    if not (idx >= 0).any():
        raise PosecalInputError(f"keypoint sets {src.name} and {dst.name} share no joint name",
                                field="--keypoint-set")
    have = idx >= 0
    src_annot = annotated_mask(d, src)
    annot = have & np.where(have, src_annot[np.maximum(idx, 0)], False)
    out = dict(d)
    anns = []
    for r, a in enumerate(d["annotations"]):
        a2 = copy.copy(a)
        kp = a.get("keypoints")
        if kp:
            k = np.asarray(kp, dtype=np.float64).reshape(-1, 3)
            if k.shape[0] != src.num_keypoints:
                raise PosecalInputError(f"{k.shape[0]} keypoints, expected {src.num_keypoints}", record=r,
                                        field="keypoints")
            new = np.where(have[:, None], k[np.maximum(idx, 0)], 0.0)
            vis = new[:, 2].astype(int)
            a2["keypoints"] = [v for x, y, c in zip(new[:, 0], new[:, 1], vis, strict=True)
                               for v in (float(x), float(y), int(c))]
            a2["num_keypoints"] = int((vis > 0).sum())
        anns.append(a2)
    out["annotations"] = anns
    cat = dict(d["categories"][0]) if d.get("categories") else {"id": 1, "name": "person"}
    cat["keypoints"] = list(dst.names)
    cat["skeleton"] = [list(e) for e in _COCO_SKELETON] if dst.name == "coco17" else []
    cat[ANNOTATED_KEY] = [n for n, a in zip(dst.names, annot, strict=True) if a]
    out["categories"] = [cat] + list(d["categories"][1:])
    info = dict(d.get("info") or {})
    info["keypoint_set"] = (f"{dst.name} (remapped from {src.name}; "
                            f"{int((~annot).sum())} keypoints not annotated)")
    out["info"] = info
    return out


def _get(name: str) -> KeypointSet:
    try:
        return get_keypoint_set(name)
    except KeyError as e:  # str(KeyError) is the repr of its message: quoted
        raise PosecalInputError(str(e.args[0]) if e.args else str(e), field="--keypoint-set") from None


_COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                  [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]

