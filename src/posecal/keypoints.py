"""Keypoint sets: names, OKS sigmas, flip pairs and parts — data, not code.

Each set is a frozen :class:`KeypointSet`. Sigmas are the per-keypoint OKS constants ``k`` of
COCO (``kappa`` in the paper, Sec. 3); the OKS falloff uses ``(2k)^2 * area`` (paper Eq. 7,
pycocotools convention). MPII-16 and LSP-14 have no official sigmas; they borrow COCO's as
documented per joint below.

>>> COCO17.num_keypoints, round(float(COCO17.sigmas[0]), 3)
(17, 0.026)
>>> find_keypoint_set(["nose"] + list(COCO17.names[1:])).name
'coco17'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "KeypointSet",
    "COCO17",
    "COCO_WHOLEBODY133",
    "MPII16",
    "LSP14",
    "CROWDPOSE14",
    "KEYPOINT_SETS",
    "JOINT_ALIASES",
    "find_keypoint_set",
    "get_keypoint_set",
    "CUSTOM",
    "custom_keypoint_set",
    "keypoint_set_from_meta",
    "mirror_name",
    "keypoint_names_problem",
    "oks_sigmas_problem",
]


@dataclass(frozen=True)
class KeypointSet:
    """A named keypoint definition.

    Attributes:
        name: short identifier (``"coco17"``).
        names: keypoint names, length K, in the dataset's order.
        sigmas: OKS per-keypoint constants k, shape (K,), float64.
        flip_pairs: index pairs (left, right) swapped by a horizontal flip.
        parts: part name -> keypoint indices (e.g. WholeBody ``body``/``foot``/``face``/...).
    """

    name: str
    names: tuple[str, ...]
    sigmas: np.ndarray
    flip_pairs: tuple[tuple[int, int], ...] = ()
    parts: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def flip_index(self) -> np.ndarray:
        """Permutation (K,) mapping each keypoint to its mirror partner (itself if unpaired)."""
        perm = np.arange(self.num_keypoints)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def part_sigmas(self, part: str) -> np.ndarray:
        return self.sigmas[list(self.parts[part])]


_SIDE_TOKENS = {"l": "r", "r": "l", "lt": "rt", "rt": "lt"}


def mirror_name(name: str) -> str:
    """The name of a keypoint's mirror partner, on a normalised name (lower case, ``_`` separated): ``left`` and
    ``right`` swapped wherever they occur (``left_ear``, ``ear_left``, ``leftear``, ``mouth_left``) and the side
    tokens ``l``/``r`` (``l_paw``, ``paw_r``: animal-pose style); the name itself when it has no side.

    >>> mirror_name("ear_left"), mirror_name("l_forepaw"), mirror_name("tail_base")
    ('ear_right', 'r_forepaw', 'tail_base')
    """
    swapped = name.replace("left", "\0").replace("right", "left").replace("\0", "right")
    return "_".join(_SIDE_TOKENS.get(t, t) for t in swapped.split("_"))


def _is_left(name: str) -> bool:
    return "left" in name or any(t in ("l", "lt") for t in name.split("_"))


def _pairs(names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Flip pairs (left, right) of names that are each other's :func:`mirror_name` (``left_eye`` /
    ``right_eye``, ``ear_l`` / ``ear_r``, ...)."""
    idx = {n: i for i, n in enumerate(names)}
    out = []
    for n, i in idx.items():
        m = mirror_name(n)
        if m != n and m in idx and _is_left(n):
            out.append((i, idx[m]))
    return tuple(sorted(out))


def _make(name: str, names: Sequence[str], sigmas: Sequence[float], parts=None) -> KeypointSet:
    names = tuple(names)
    s = np.asarray(sigmas, dtype=np.float64)
    if len(names) != len(s):
        raise ValueError(f"{name}: {len(names)} names but {len(s)} sigmas")
    s.setflags(write=False)
    return KeypointSet(name, names, s, _pairs(names), dict(parts or {"all": tuple(range(len(names)))}))


# --- COCO-17 -------------------------------------------------------------------------------
_COCO_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
_COCO_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
) / 10.0  # exactly pycocotools' expression
COCO17 = _make("coco17", _COCO_NAMES, _COCO_SIGMAS)

# --- COCO-WholeBody-133 (sigmas as in xtcocotools' demo_coco_wholebody.py) ------------------
_WB_FOOT = ("left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel")
_WB_FACE = tuple(f"face-{i}" for i in range(68))
_FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")


def _hand(side: str) -> tuple[str, ...]:
    return (f"{side}_hand_root",) + tuple(f"{side}_{f}{j}" for f in _FINGERS for j in range(1, 5))


_S_BODY = [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
           0.087, 0.087, 0.089, 0.089]  # fmt: skip
_S_FOOT = [0.068, 0.066, 0.066, 0.092, 0.094, 0.094]
_S_FACE = [0.042, 0.043, 0.044, 0.043, 0.040, 0.035, 0.031, 0.025, 0.020, 0.023, 0.029, 0.032, 0.037, 0.038,
           0.043, 0.041, 0.045, 0.013, 0.012, 0.011, 0.011, 0.012, 0.012, 0.011, 0.011, 0.013, 0.015, 0.009,
           0.007, 0.007, 0.007, 0.012, 0.009, 0.008, 0.016, 0.010, 0.017, 0.011, 0.009, 0.011, 0.009, 0.007,
           0.013, 0.008, 0.011, 0.012, 0.010, 0.034, 0.008, 0.008, 0.009, 0.008, 0.008, 0.007, 0.010, 0.008,
           0.009, 0.009, 0.009, 0.007, 0.007, 0.008, 0.011, 0.008, 0.008, 0.008, 0.01, 0.008]  # fmt: skip
_S_HAND = [0.029, 0.022, 0.035, 0.037, 0.047, 0.026, 0.025, 0.024, 0.035, 0.018, 0.024, 0.022, 0.026, 0.017,
           0.021, 0.021, 0.032, 0.02, 0.019, 0.022, 0.031]  # fmt: skip
_WB_NAMES = _COCO_NAMES + _WB_FOOT + _WB_FACE + _hand("left") + _hand("right")
_WB_PARTS = {
    "body": tuple(range(0, 17)),
    "foot": tuple(range(17, 23)),
    "face": tuple(range(23, 91)),
    "lefthand": tuple(range(91, 112)),
    "righthand": tuple(range(112, 133)),
    "wholebody": tuple(range(133)),
}
COCO_WHOLEBODY133 = _make(
    "coco_wholebody133", _WB_NAMES, _S_BODY + _S_FOOT + _S_FACE + _S_HAND + _S_HAND, _WB_PARTS
)

# --- MPII-16 (MMPose order); the sigmas of MMPose's mpii / mhp metainfo ------------------------------
# (configs/_base_/datasets/mpii.py, mhp.py: MHP, the one COCO-AP evaluation of these joints, uses them; note
# its 0.026 for pelvis, thorax and upper neck and 0.179 for the shoulders). Until 2026-12-03 posecal borrowed
# COCO's sigmas instead (hip->pelvis .107, shoulder->thorax and upper neck .079, nose->head top .026), which
# made `posecal evaluate` on an MHP-style file differ from MMPose's numbers.
_MPII = (
    ("right_ankle", 0.089), ("right_knee", 0.083), ("right_hip", 0.107), ("left_hip", 0.107),
    ("left_knee", 0.083), ("left_ankle", 0.089), ("pelvis", 0.026), ("thorax", 0.026),
    ("upper_neck", 0.026), ("head_top", 0.026), ("right_wrist", 0.062), ("right_elbow", 0.072),
    ("right_shoulder", 0.179), ("left_shoulder", 0.179), ("left_elbow", 0.072), ("left_wrist", 0.062),
)  # fmt: skip
MPII16 = _make("mpii16", [n for n, _ in _MPII], [s for _, s in _MPII])

# --- LSP-14; COCO sigmas borrowed (neck .079, head top .026) ----------------------------------
_LSP = (
    ("right_ankle", 0.089), ("right_knee", 0.087), ("right_hip", 0.107), ("left_hip", 0.107),
    ("left_knee", 0.087), ("left_ankle", 0.089), ("right_wrist", 0.062), ("right_elbow", 0.072),
    ("right_shoulder", 0.079), ("left_shoulder", 0.079), ("left_elbow", 0.072), ("left_wrist", 0.062),
    ("neck", 0.079), ("head_top", 0.026),
)  # fmt: skip
LSP14 = _make("lsp14", [n for n, _ in _LSP], [s for _, s in _LSP])

# --- CrowdPose-14 (names as the CrowdPose JSON; sigmas as xtcocotools' crowdpose demo) --------
_CROWD_NAMES = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck",
)  # fmt: skip
_CROWD_SIGMAS = (
    np.array([0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89, 0.79, 0.79]) / 10.0
)
CROWDPOSE14 = _make("crowdpose14", _CROWD_NAMES, _CROWD_SIGMAS)

KEYPOINT_SETS: dict[str, KeypointSet] = {
    s.name: s for s in (COCO17, COCO_WHOLEBODY133, MPII16, LSP14, CROWDPOSE14)
}

# --- COCO-style evaluation sets of MMPose's dataset metainfo (configs/_base_/datasets/*.py) ----------------
# Used by the COCO keypoint evaluator only (not in KEYPOINT_SETS: joint mapping, extraction and the keypoint
# count lookup are unchanged). MMPose evaluates these datasets with xtcocotools' COCOeval and these sigmas.
_AIC_NAMES = (
    "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck",
)  # fmt: skip
_AIC_SIGMAS = [0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144, 0.03909642, 0.03686941,
               0.01981803, 0.03843971, 0.03412318, 0.02415081, 0.01291456, 0.01236173]  # fmt: skip
#: AI Challenger (MMPose aic.py; its AIC configs evaluate with use_area=False)
AIC14 = _make("aic14", _AIC_NAMES, _AIC_SIGMAS)
_HALPE_NAMES = (_COCO_NAMES + ("head", "neck", "hip", "left_big_toe", "right_big_toe", "left_small_toe",
                               "right_small_toe", "left_heel", "right_heel") + _WB_FACE
                + tuple(f"left_{n}" for n in ("hand_root",) + tuple(f"{f}{j}" for f in
                        ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger") for j in range(1, 5)))
                + tuple(f"right_{n}" for n in ("hand_root",) + tuple(f"{f}{j}" for f in
                        ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger") for j in range(1, 5))))
#: Halpe-FullBody 136 (MMPose halpe.py, from halpecocotools)
HALPE136 = _make("halpe136", _HALPE_NAMES, _S_BODY + [0.08, 0.08, 0.08] + [0.089] * 6 + [0.015] * 110)
#: MMPose's evaluation sets, by name
MMPOSE_EVAL_SETS: dict[str, KeypointSet] = {s.name: s for s in (AIC14, HALPE136)}

_ALIASES = {"coco": "coco17", "wholebody": "coco_wholebody133", "coco_wholebody": "coco_wholebody133",
            "mpii": "mpii16", "lsp": "lsp14", "crowdpose": "crowdpose14", "aic": "aic14", "halpe": "halpe136",
            "mhp": "mpii16"}  # fmt: skip


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def get_keypoint_set(name: str) -> KeypointSet:
    """Look a set up by name or alias (``"coco"``, ``"lsp14"``...). Raises KeyError listing known names."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key in MMPOSE_EVAL_SETS:
        return MMPOSE_EVAL_SETS[key]
    if key not in KEYPOINT_SETS:
        known = sorted(KEYPOINT_SETS) + sorted(MMPOSE_EVAL_SETS)
        raise KeyError(f"unknown keypoint set {name!r}; known: {', '.join(known)}")
    return KEYPOINT_SETS[key]


JOINT_ALIASES = {"neck": ("upper_neck", "neck"), "upper_neck": ("upper_neck", "neck")}
"""Joint names that denote the same joint in different conventions (LSP's ``neck`` is MPII's ``upper_neck``),
in the order tried: model-to-dataset joint maps and dataset remapping both use it."""


def find_keypoint_set(names: Sequence[str] | None, num_keypoints: int | None = None) -> KeypointSet | None:
    """The set whose keypoint names equal ``names`` (case, space and dash insensitive), else None.

    If ``names`` is None, a set is returned only when ``num_keypoints`` identifies exactly one set.
    """
    if names is not None:
        want = tuple(_norm(n) for n in names)
        for s in KEYPOINT_SETS.values():
            if tuple(_norm(n) for n in s.names) == want:
                return s
        return None
    if num_keypoints is not None:
        hits = [s for s in KEYPOINT_SETS.values() if s.num_keypoints == num_keypoints]
        return hits[0] if len(hits) == 1 else None
    return None


CUSTOM = "custom"
"""``keypoint_set`` of a store (``meta.json``) or head (``head.json``) whose keypoints are the data file's own
names with OKS sigmas given to ``posecal extract --sigmas``; both files then carry ``keypoint_names`` and
``keypoint_sigmas``."""


def custom_keypoint_set(names: Sequence[str], sigmas: Sequence[float]) -> KeypointSet:
    """A keypoint set posecal does not know: the data's ``names`` (flip pairs from left/right prefixes, case,
    space and dash insensitive) with the user's OKS ``sigmas``. Raises ValueError when the lengths differ."""
    ks = _make(CUSTOM, [str(n) for n in names], [float(s) for s in sigmas])
    return KeypointSet(ks.name, ks.names, ks.sigmas, _pairs([_norm(n) for n in ks.names]), ks.parts)


def keypoint_set_from_meta(meta: dict) -> KeypointSet:
    """The keypoint set a store's ``meta.json`` or a head's ``head.json`` names: a known set by its name, or
    (``keypoint_set`` = :data:`CUSTOM`) the set its ``keypoint_names`` and ``keypoint_sigmas`` spell. Raises
    KeyError (with a message) when neither is there."""
    name = str(meta.get("keypoint_set"))
    if name != CUSTOM:
        return get_keypoint_set(name)
    names, sigmas = meta.get("keypoint_names"), meta.get("keypoint_sigmas")
    ok = (isinstance(names, list) and isinstance(sigmas, list) and len(names) == len(sigmas) > 0
          and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in sigmas))
    if not ok:
        raise KeyError("keypoint_set 'custom' needs keypoint_names and keypoint_sigmas (finite, > 0), one per "
                       "keypoint (edited?)")
    problem = keypoint_names_problem(names) or oks_sigmas_problem(sigmas)
    if problem is not None:
        raise KeyError(f"keypoint_set 'custom': {problem} (edited?)")
    return custom_keypoint_set(names, sigmas)


def keypoint_names_problem(names: Sequence[object]) -> str | None:
    """Why ``names`` cannot name a custom keypoint set (not non-empty strings, or one twice as compared case,
    space and dash insensitively), or None."""
    if not all(isinstance(n, str) and n.strip() for n in names):
        bad = next(n for n in names if not (isinstance(n, str) and n.strip()))
        return f"keypoint_names must be non-empty strings, got {bad!r}"
    seen: set[str] = set()
    for n in names:
        if _norm(str(n)) in seen:
            return f"keypoint name {n!r} appears twice (names are compared case, space and dash insensitively)"
        seen.add(_norm(str(n)))
    return None


def oks_sigmas_problem(sigmas: Sequence[float]) -> str | None:
    """Why ``sigmas`` cannot be OKS sigmas, or None: each must be finite and > 0 with ``(2σ)²`` a normal float
    (the OKS falloff divides by it: an overflow makes every OKS 1, an underflow 0/0), as
    :func:`posecal.metrics.cocoeval.evaluate` requires."""
    try:
        s = np.asarray([float(x) for x in sigmas], dtype=np.float64)
    except (OverflowError, TypeError, ValueError):
        return f"OKS sigmas must be finite numbers > 0, got {list(sigmas)[:8]!r}"
    if not (np.isfinite(s) & (s > 0)).all():
        return f"OKS sigmas must be finite and > 0, got {next(x for x in s if not (np.isfinite(x) and x > 0)):g}"
    with np.errstate(over="ignore", under="ignore"):
        var = (2 * s) ** 2
    bad = ~((var >= np.finfo(np.float64).tiny) & np.isfinite(var))
    if bad.any():
        return (f"OKS sigma {s[bad][0]:g} out of range: (2σ)² must be a positive finite float (1e-150 < σ < 1e150 "
                "is safe)")
    return None
