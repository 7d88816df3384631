"""CCNet checkpoints: ``HEAD_DIR/head.safetensors`` (weights and normalisation buffers) and
``HEAD_DIR/head.json`` (metadata). Never pickle. Imports torch and safetensors.

Metadata keys: ``format`` (``"posecal-ccnet/1"``), ``head`` (kind), ``in_channels``, ``num_keypoints``,
``keypoint_set``, ``feature_tensor`` (store tensor name), ``feature_shape`` (per instance),
``pooling`` (the store's pooling), ``model_tensor`` (the pose model's tensor the features come from),
``model_sha256``, ``normalisation`` ({"mean", "std"} summary; the exact values are the
``feat_mean``/``feat_std`` tensors), ``train`` (config), ``metrics`` (validation), ``aggregation``, and
``context`` when the head carries the learned-NMS stage (:mod:`posecal.ccnet.context`), whose parameters
are ``HEAD_DIR/context.safetensors`` (float64 ``mean``, ``std``, ``coef``).
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from posecal._util import atomic_path, write_json_atomic
from posecal.ccnet import HEAD_KINDS
from posecal.ccnet.heads import CCNetHead
from posecal.errors import PosecalInputError

__all__ = ["FORMAT", "COMPARED_KEYS", "save_head", "load_head", "check_compatible"]

FORMAT = "posecal-ccnet/1"
WEIGHTS, META, CONTEXT = "head.safetensors", "head.json", "context.safetensors"
COMPARED_KEYS = ("keypoint_set", "feature_tensor", "feature_shape", "pooling", "model_tensor", "model_sha256")
"""Metadata that must agree between a head and the store (or model) it is applied to."""


def save_head(head_dir: str | os.PathLike, head: CCNetHead, meta: dict[str, object]) -> None:
    """Write weights and metadata atomically (weights first, then the JSON that names them); a head with a
    ``context_stage`` (:class:`posecal.ccnet.context.ContextStage`) also writes ``context.safetensors``."""
    from safetensors.torch import save_file

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
    with atomic_dir(head_dir) as d:  # both files or neither
        with atomic_path(d / WEIGHTS) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "head": head.kind})
        stage = getattr(head, "context_stage", None)
        if stage is not None:
            from safetensors.numpy import save_file as save_np

            with atomic_path(d / CONTEXT) as tmp:
                save_np(stage.arrays(), str(tmp), metadata={"format": FORMAT})
        else:
            full.pop("context", None)
        write_json_atomic(d / META, full)


def load_head(head_dir: str | os.PathLike) -> tuple[CCNetHead, dict[str, object]]:
    """Load a head saved by :func:`save_head`; raise :class:`PosecalInputError` on anything malformed."""
    from safetensors.torch import load_file

    d = Path(head_dir)
    mpath, wpath = d / META, d / WEIGHTS
    for p in (mpath, wpath):
        if not p.is_file():
            raise PosecalInputError("missing file (not a posecal CCNet head directory?)", file=str(p))
    try:
        meta = orjson.loads(mpath.read_bytes())
    except orjson.JSONDecodeError as e:
        raise PosecalInputError(f"invalid JSON: {e}", file=str(mpath)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PosecalInputError(f"expected format {FORMAT!r}", file=str(mpath), field="format")
    for key in ("head", "in_channels", "num_keypoints"):
        if key not in meta:
            raise PosecalInputError("missing", file=str(mpath), field=key)
    for key, top in (("in_channels", 1 << 16), ("num_keypoints", 1 << 10)):
        v = meta[key]
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top:
            raise PosecalInputError(f"expected an integer in [1, {top}], got {v!r}", file=str(mpath), field=key)
    if not isinstance(meta["head"], str) or meta["head"] not in HEAD_KINDS:
        raise PosecalInputError(
            f"unknown head kind {meta['head']!r}; choose one of {sorted(HEAD_KINDS)}", file=str(mpath), field="head"
        )
    for key in ("keypoint_set", "feature_tensor", "pooling", "model_tensor", "model_sha256"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise PosecalInputError(f"expected a string, got {meta[key]!r}", file=str(mpath), field=key)
    fs = meta.get("feature_shape")
    if fs is not None and not (isinstance(fs, list) and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in fs)):
        raise PosecalInputError(f"expected a list of sizes, got {fs!r}", file=str(mpath), field="feature_shape")
    head = CCNetHead(meta["head"], int(meta["in_channels"]), int(meta["num_keypoints"]))
    try:
        state = load_file(str(wpath))
    except Exception as e:  # safetensors raises its own error types
        raise PosecalInputError(f"unreadable safetensors: {e}", file=str(wpath)) from None
    want = head.state_dict()
    if set(state) != set(want):
        raise PosecalInputError(
            f"tensors {sorted(state)} do not match head {meta['head']!r} ({sorted(want)})", file=str(wpath)
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise PosecalInputError(
                f"shape {tuple(v.shape)} != expected {tuple(want[k].shape)}", file=str(wpath), field=k
            )
        if v.dtype.is_floating_point and not bool(v.isfinite().all()):
            raise PosecalInputError("non-finite weights", file=str(wpath), field=k)
    head.load_state_dict(state)
    head.eval()
    if meta.get("context") is not None:
        head.context_stage = _load_context(d / CONTEXT)
    return head, meta


def _load_context(path: Path) -> object:
    from safetensors.numpy import load_file

    from posecal.ccnet.context import ContextStage

    if not path.is_file():
        raise PosecalInputError("missing file (head.json names a context stage)", file=str(path))
    try:
        arrs = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise PosecalInputError(f"unreadable safetensors: {e}", file=str(path)) from None
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
            if key in ("keypoint_set", "feature_tensor", "feature_shape") and a != b:
                diffs.append(f"{key}: head {a!r} vs store {b!r}")
            continue
        if key == "feature_shape":
            a, b = [int(x) for x in a], [int(x) for x in b]
        if a != b:
            diffs.append(f"{key}: head {a!r} vs store {b!r}")
    if diffs:
        raise PosecalInputError("head does not fit this store: " + "; ".join(diffs), file=file)
