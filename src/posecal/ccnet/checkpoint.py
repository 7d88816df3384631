"""CCNet checkpoints: ``HEAD_DIR/head.safetensors`` (weights and normalisation buffers) and
``HEAD_DIR/head.json`` (metadata). Never pickle. Imports torch and safetensors.

Metadata keys: ``format`` (``"posecal-ccnet/1"``), ``head`` (kind), ``in_channels``, ``num_keypoints``,
``keypoint_set``, ``feature_tensor`` (store tensor name), ``feature_shape`` (per instance),
``pooling`` (the store's pooling), ``model_tensor`` (the pose model's tensor the features come from),
``model_sha256``, ``normalisation`` ({"mean", "std"} summary; the exact values are the
``feat_mean``/``feat_std`` tensors), ``train`` (config), ``metrics`` (validation), ``aggregation``, and
``context`` when the head carries the learned-NMS stage (:mod:`posecal.ccnet.context`), whose parameters
are ``HEAD_DIR/context.safetensors`` (float64 ``mean``, ``std``, ``coef``); ``weights_sha256`` (and
``context_sha256``): the SHA-256 of those files as saved.

:func:`load_head` refuses (:class:`PosecalInputError` naming ``head.json`` / ``head.safetensors`` /
``context.safetensors`` and the field or tensor) a head whose metadata has the wrong types, whose
``evidence`` does not fit its input width (``in_channels`` = ``feature_shape[-1]`` +
:func:`posecal.ccnet.targets.evidence_width`), whose ``context`` entry and ``context.safetensors`` disagree,
or whose tensors are not floating point, not finite, larger than :data:`MAX_ABS` in magnitude, or
(``feat_std``) below :data:`MIN_STD` — and then a sound weights file that is not the one saved with this
head.json (another head's file of the same shapes; heads saved before the hashes existed are not checked).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson

from posecal._util import atomic_path, current_umask, write_json_atomic
from posecal.ccnet import HEAD_KINDS
from posecal.ccnet.heads import CCNetHead
from posecal.errors import PosecalInputError

__all__ = ["FORMAT", "COMPARED_KEYS", "save_head", "load_head", "check_compatible"]

FORMAT = "posecal-ccnet/1"
WEIGHTS, META, CONTEXT = "head.safetensors", "head.json", "context.safetensors"
WEIGHTS_SHA, CONTEXT_SHA = "weights_sha256", "context_sha256"
"""head.json keys: the SHA-256 of ``head.safetensors`` / ``context.safetensors`` as saved (checked on load)."""
COMPARED_KEYS = ("keypoint_set", "feature_tensor", "feature_shape", "pooling", "model_tensor", "model_sha256",
                 "keypoint_names", "keypoint_sigmas")
"""Metadata that must agree between a head and the store (or model) it is applied to (the last two: a
``custom`` keypoint set's, see :data:`posecal.keypoints.CUSTOM`)."""

AGGREGATIONS = ("sum(v_hat*s_hat)/sum(v_hat)", "sum(v_hat*s_hat)/sum(v_hat) * box_score")
"""The ``aggregation`` values :func:`posecal.ccnet.fit.fit_from_stores` writes (the second with ``box_score``)."""

MAX_ABS = 1e30
"""Largest magnitude :func:`load_head` accepts in any head tensor. Trained heads stay many orders below it;
with at most 2**16 input channels a dot product of such weights with unit-scale normalised inputs stays below
7e34, far from float32's 3.4e38, so neither ``posecal apply`` nor an exported graph overflows on sane inputs."""

MIN_STD = 1e-7
"""Smallest ``feat_std`` value :func:`load_head` accepts: a tenth of the 1e-6 floor that
:meth:`posecal.ccnet.heads.CCNetHead.set_normalisation` applies (so every head the library writes passes,
float32 rounding included); 0 or a negative std would make the normalisation divide by zero or flip signs."""


def _canonical(blob: bytes) -> bytes:
    """``blob`` (a safetensors file) with its ``__metadata__`` keys sorted: safetensors writes them in hash-map
    order, which changes from call to call, so the same head would give different bytes. Same header length
    (the same characters, reordered); tensors untouched."""
    import json
    import struct

    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    if isinstance(header.get("__metadata__"), dict):
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # not the compact form safetensors writes: keep its bytes
        return blob
    return blob[:8] + text.ljust(n, b" ") + blob[8 + n:]


def save_head(head_dir: str | os.PathLike, head: CCNetHead, meta: dict[str, object]) -> None:
    """Write weights and metadata atomically (weights first, then the JSON that names them); a head with a
    ``context_stage`` (:class:`posecal.ccnet.context.ContextStage`) also writes ``context.safetensors``. The
    same head gives the same bytes (safetensors metadata keys sorted, :func:`_canonical`)."""
    from safetensors.torch import save

    from posecal._outputs import atomic_dir

    full = {
        **meta,
        "format": FORMAT,
        "head": head.kind,
        "in_channels": head.in_channels,
        "num_keypoints": head.num_keypoints,
        "normalisation": {
            "mean": head.feat_mean.double().reshape(-1).tolist(),
            "std": head.feat_std.double().reshape(-1).tolist(),
            "shape": list(head.feat_mean.shape),
        },
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    weights = _canonical(save(tensors, metadata={"format": FORMAT, "head": head.kind}))
    full[WEIGHTS_SHA] = hashlib.sha256(weights).hexdigest()  # load_head refuses another head's weights file
    full.pop(CONTEXT_SHA, None)
    # both files or neither; an earlier head's context stage, left in the same folder, is removed with the move
    with atomic_dir(head_dir, stale=(CONTEXT,)) as d:
        with atomic_path(d / WEIGHTS) as tmp:
            Path(tmp).write_bytes(weights)
            os.chmod(tmp, 0o666 & ~current_umask())  # a head is meant to be shared
        stage = getattr(head, "context_stage", None)
        if stage is not None:
            from safetensors.numpy import save as save_np

            blob = _canonical(save_np(stage.arrays(), metadata={"format": FORMAT}))
            full[CONTEXT_SHA] = hashlib.sha256(blob).hexdigest()
            with atomic_path(d / CONTEXT) as tmp:
                Path(tmp).write_bytes(blob)
                os.chmod(tmp, 0o666 & ~current_umask())
        else:
            full.pop("context", None)
        write_json_atomic(d / META, full)


def _check_sha(meta: dict[str, Any], key: str, blob: bytes, path: Path, mpath: Path) -> None:
    """``path``'s bytes against ``meta[key]`` (a head saved before the key existed has none: not checked)."""
    want = meta.get(key)
    if want is None:
        return
    if not isinstance(want, str):
        raise PosecalInputError(f"expected a SHA-256 hex string, got {str(want)[:60]!r}", file=str(mpath), field=key)
    if hashlib.sha256(blob).hexdigest() != want.lower():
        raise PosecalInputError(f"the file does not match head.json's {key} (another head's file, or edited? "
                                f"restore the head's own file, or remove {key} from head.json to use this one)",
                                file=str(path), field=key)


def load_head(head_dir: str | os.PathLike) -> tuple[CCNetHead, dict[str, object]]:
    """Load a head saved by :func:`save_head`; raise :class:`PosecalInputError` on anything malformed
    (see the module docstring for what is checked)."""
    from safetensors.torch import load

    d = Path(head_dir)
    mpath, wpath = d / META, d / WEIGHTS
    for p in (mpath, wpath):
        if not p.is_file():
            raise PosecalInputError("missing file (not a posecal CCNet head directory?)", file=str(p))
    try:
        meta = orjson.loads(mpath.read_bytes())
    except orjson.JSONDecodeError as e:
        raise PosecalInputError(f"invalid JSON: {e}", file=str(mpath)) from None
    _check_meta(meta, mpath)
    has_context = (d / CONTEXT).exists()
    if meta.get("context") is None and has_context:
        raise PosecalInputError(f"{CONTEXT} is present but head.json names no context stage (a file left by an "
                                "earlier head? remove it, or restore the 'context' entry)", file=str(mpath),
                                field="context")
    try:
        head = CCNetHead(meta["head"], int(meta["in_channels"]), int(meta["num_keypoints"]))
    except PosecalInputError as e:  # e.g. kpt_pose / kpt_inst with too few channels
        raise PosecalInputError(e.message, file=str(mpath), field="in_channels") from None
    blob = wpath.read_bytes()  # not load_file(path): safetensors refuses a path that is not valid UTF-8
    try:
        state = dict(sorted(load(blob).items()))  # in name order, as load_file gives them
    except Exception as e:  # safetensors raises its own error types
        raise PosecalInputError(f"unreadable safetensors: {e}", file=str(wpath)) from None
    _check_state(state, head.state_dict(), meta["head"], wpath)
    _check_sha(meta, WEIGHTS_SHA, blob, wpath, mpath)  # a sound file, but is it this head's? (after the checks
    head.load_state_dict(state)                        # that name what is wrong inside a damaged one)
    head.eval()
    if meta.get("context") is not None:
        head.context_stage = _load_context(d / CONTEXT)
        _check_sha(meta, CONTEXT_SHA, (d / CONTEXT).read_bytes(), d / CONTEXT, mpath)
    return head, meta


def _check_meta(meta: Any, mpath: Path) -> None:
    """Refuse head.json metadata of the wrong type or inconsistent with itself (types, evidence vs input width,
    aggregation vs box_score)."""
    def bad(message: str, field: str) -> PosecalInputError:
        return PosecalInputError(message, file=str(mpath), field=field)

    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad(f"expected format {FORMAT!r}", "format")
    for key in ("head", "in_channels", "num_keypoints"):
        if key not in meta:
            raise bad("missing", key)
    for key, top in (("in_channels", 1 << 16), ("num_keypoints", 1 << 10)):
        v = meta[key]
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top:
            raise bad(f"expected an integer in [1, {top}], got {v!r}", key)
    kind = meta["head"]
    if not isinstance(kind, str) or kind not in HEAD_KINDS:
        raise bad(f"unknown head kind {kind!r}; choose one of {sorted(HEAD_KINDS)}", "head")
    _check_meta_types(meta, kind, bad)
    _check_custom_set(meta, bad)
    ev = _check_evidence(meta, kind, bad)
    _check_width(meta, kind, ev, bad)


def _check_custom_set(meta: dict[str, Any], bad: Any) -> None:
    """A head fitted on a ``custom`` keypoint set (``extract --sigmas``) carries its names and OKS sigmas, one per
    keypoint, as :func:`posecal.keypoints.keypoint_set_from_meta` reads them (a missing one is not skipped by
    :func:`check_compatible`'s comparison)."""
    from posecal.keypoints import CUSTOM, keypoint_names_problem, keypoint_set_from_meta

    if meta.get("keypoint_set") != CUSTOM:
        return
    try:
        ks = keypoint_set_from_meta(meta)
    except KeyError as e:
        names = meta.get("keypoint_names")
        named = isinstance(names, list) and names and keypoint_names_problem(names) is None
        raise bad(str(e.args[0]) if e.args else str(e), "keypoint_sigmas" if named else "keypoint_names") from None
    if ks.num_keypoints != meta["num_keypoints"]:
        raise bad(f"{ks.num_keypoints} keypoint names for num_keypoints {meta['num_keypoints']}", "keypoint_names")


def _check_meta_types(meta: dict[str, Any], kind: str, bad: Any) -> None:
    """Strings, objects and booleans where head.json has them; aggregation agreeing with box_score."""
    for key in ("keypoint_set", "feature_tensor", "pooling", "model_tensor", "model_sha256"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(f"expected a string, got {meta[key]!r}", key)
    if meta.get("feature_tensor") is not None and meta["feature_tensor"] != HEAD_KINDS[kind]:
        raise bad(f"head {kind!r} reads {HEAD_KINDS[kind]}, not {meta['feature_tensor']!r}", "feature_tensor")
    for key in ("train", "recipe", "normalisation"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise bad(f"expected an object, got {type(meta[key]).__name__}", key)
    store = (meta.get("train") or {}).get("store")
    if store is not None and not isinstance(store, str):
        raise bad(f"expected a path string, got {store!r}", "train.store")
    box = meta.get("box_score")
    if box is not None and not isinstance(box, bool):
        raise bad(f"expected true or false, got {box!r}", "box_score")
    agg = meta.get("aggregation")
    if agg is not None:
        if agg not in AGGREGATIONS:
            raise bad(f"unsupported aggregation {agg!r}; expected one of {list(AGGREGATIONS)}", "aggregation")
        if agg.endswith("box_score") != bool(box):
            raise bad(f"aggregation {agg!r} disagrees with box_score {box!r}", "aggregation")
    ctx = meta.get("context")
    if ctx is not None and not isinstance(ctx, dict):
        raise bad(f"expected an object describing the context stage (or null), got {ctx!r}", "context")


def _check_evidence(meta: dict[str, Any], kind: str, bad: Any) -> list[str]:
    """The evidence list: known names, once each, only where the head kind reads them (``pose`` last)."""
    from posecal.ccnet.targets import EVIDENCE

    ev = meta.get("evidence")
    if ev is None:  # heads written before the key existed read no evidence columns
        ev = []
    if not isinstance(ev, list) or not all(isinstance(x, str) for x in ev):
        raise bad(f"expected a list of evidence names, got {ev!r}", "evidence")
    unknown = [x for x in ev if x not in EVIDENCE]
    if unknown:
        raise bad(f"unknown evidence {unknown[0]!r}; choose from {', '.join(EVIDENCE)}", "evidence")
    if len(set(ev)) != len(ev):
        raise bad(f"evidence {ev} names a column twice", "evidence")
    if ev and kind not in ("kpt", "kpt_pose"):
        raise bad(f"head {kind!r} takes no evidence columns, got {ev}", "evidence")
    if kind == "kpt_pose" and (not ev or ev[-1] != "pose"):
        raise bad(f"head 'kpt_pose' reads the 'pose' evidence as its last columns, got {ev}", "evidence")
    return ev


def _check_width(meta: dict[str, Any], kind: str, ev: list[str], bad: Any) -> None:
    """``feature_shape`` (when present) + the evidence columns must give the head's ``in_channels``."""
    from posecal.ccnet.heads import feature_shape_ok
    from posecal.ccnet.targets import evidence_width

    C, K = meta["in_channels"], meta["num_keypoints"]
    fs = meta.get("feature_shape")
    if fs is None:
        return
    if not (isinstance(fs, list) and fs and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1
                                                for x in fs)):
        raise bad(f"expected a list of positive sizes, got {fs!r}", "feature_shape")
    per_keypoint = kind in ("kpt", "kpt_inst", "kpt_pose")
    E = evidence_width(ev, K)
    shape = (*fs[:-1], fs[-1] + E) if per_keypoint else tuple(fs)  # the head's input, evidence appended
    why = feature_shape_ok(kind, shape, K)
    if why:
        raise bad(why, "feature_shape")
    width = shape[-1] if per_keypoint else shape[0]
    if width != C:
        if per_keypoint:
            raise bad(f"the head reads {C} input channels, but feature_shape {fs} and evidence {ev} give "
                      f"{fs[-1]} + {E} = {width}", "evidence")
        raise bad(f"the head reads {C} input channels, feature_shape {fs} gives {width}", "feature_shape")


def _check_state(state: dict[str, Any], want: dict[str, Any], kind: str, wpath: Path) -> None:
    """Refuse head tensors that are missing, extra, misshapen, not floating point, non-finite, beyond
    :data:`MAX_ABS` or (``feat_std``) below :data:`MIN_STD`."""
    if set(state) != set(want):
        raise PosecalInputError(f"tensors {sorted(state)} do not match head {kind!r} ({sorted(want)})",
                                file=str(wpath))
    for k, v in state.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise PosecalInputError(f"shape {tuple(v.shape)} != expected {tuple(want[k].shape)}",
                                    file=str(wpath), field=k)
        if not v.dtype.is_floating_point:
            raise PosecalInputError(f"dtype {str(v.dtype).removeprefix('torch.')} is not floating point",
                                    file=str(wpath), field=k)
        x = v.double()
        if not bool(x.isfinite().all()):
            raise PosecalInputError("non-finite weights", file=str(wpath), field=k)
        if x.numel() and float(x.abs().max()) > MAX_ABS:
            raise PosecalInputError(f"values up to {float(x.abs().max()):.3g} in magnitude, above the bound "
                                    f"{MAX_ABS:g} (a corrupted or hand-edited head?)", file=str(wpath), field=k)
        if k == "feat_std" and x.numel() and float(x.min()) < MIN_STD:
            raise PosecalInputError(f"feature std must be >= {MIN_STD:g}, got {float(x.min()):.3g}",
                                    file=str(wpath), field=k)


def _load_context(path: Path) -> object:
    import numpy as np
    from safetensors.numpy import load

    from posecal.ccnet.context import ContextStage

    if not path.is_file():
        raise PosecalInputError("missing file (head.json names a context stage)", file=str(path))
    blob = path.read_bytes()  # bytes, not a path: safetensors refuses a path that is not valid UTF-8
    try:
        arrs = dict(sorted(load(blob).items()))  # in name order, as load_file gives them
    except Exception as e:  # safetensors raises its own error types
        raise PosecalInputError(f"unreadable safetensors: {e}", file=str(path)) from None
    for k, a in arrs.items():
        if not np.issubdtype(a.dtype, np.floating):
            raise PosecalInputError(f"dtype {a.dtype} is not floating point", file=str(path), field=k)
    try:
        return ContextStage.from_arrays(arrs)
    except ValueError as e:
        raise PosecalInputError(str(e), file=str(path)) from None


def check_compatible(
    head_meta: dict[str, object], store_meta: dict[str, object], *, file: str | None = None
) -> None:
    """Refuse a head whose metadata differs from the store's (or model's), naming every difference.

    Keys in :data:`COMPARED_KEYS` are compared when present on both sides (``feature_shape`` as lists);
    ``keypoint_set``, ``feature_tensor`` and ``feature_shape`` must be present on both.
    """
    diffs = []
    for key in COMPARED_KEYS:
        a, b = head_meta.get(key), store_meta.get(key)
        if a is None or b is None:
            custom = head_meta.get("keypoint_set") == store_meta.get("keypoint_set") == "custom"
            if (key in ("keypoint_set", "feature_tensor", "feature_shape") or custom) and a != b:
                diffs.append(f"{key}: head {a!r} vs store {b!r}")
            continue
        if key == "feature_shape":
            a, b = [int(x) for x in a], [int(x) for x in b]
        if a != b:
            diffs.append(f"{key}: head {a!r} vs store {b!r}")
    if diffs:
        raise PosecalInputError("head does not fit this store: " + "; ".join(diffs), file=file)
