"""The adapter protocol and the heatmap decoding shared by the backends.

An adapter wraps one frozen top-down pose model. ``predict(crops)`` takes a batch of RGB crops
``(B, H, W, 3) uint8`` already warped to the model input (see :mod:`posecal.models.crop`) and returns a
:class:`ModelOutput` in **input pixels** (pixel centres at integers) and the model's own joint order.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from posecal.errors import PosecalInputError, PosecalWarning


@dataclass
class ModelOutput:
    """One batch of model outputs (J = model joints, C = feature channels).

    Attributes:
        coords: (B, J, 2) keypoints in input pixels.
        scores: (B, J) raw keypoint scores (model scale; heatmap maxima may exceed 1).
        features: (B, C, h, w) float32 penultimate activation (channels first, whatever the backend).
        heatmaps: (B, J, h', w') heatmaps in the model joint order, or None (regression models).
            Used for heatmap-weighted pooling (resized to the feature grid) and sigma estimation.
        sigma: (B, J) input-pixel spread reported by the model itself, or None.
    """

    coords: np.ndarray
    scores: np.ndarray
    features: np.ndarray
    heatmaps: np.ndarray | None = None
    sigma: np.ndarray | None = None


@runtime_checkable
class PoseAdapter(Protocol):
    """What ``posecal extract`` needs from a model backend."""

    kind: str  # e.g. "efficientpose", "blazepose", "onnx-heatmap", "torch-heatmap"
    input_size: tuple[int, int]  # (W, H) input pixels
    joint_names: tuple[str, ...]  # model joint order (J,)
    tensor_name: str  # the feature tensor read
    preprocessing: dict[str, Any]  # JSON-able description for meta.json

    def predict(self, crops: np.ndarray) -> ModelOutput: ...

    def feature_candidates(self) -> list[str]: ...


def decode_heatmaps(hm: np.ndarray, input_size: tuple[int, int], subpixel: bool = False,
                    channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (B, J, h, w) (or (B, h, w, J) with ``channels_last``) -> coords (B, J, 2) input px, maxima.

    The argmax is :func:`posecal.theory.heatmap.decode_argmax` (the one decoder), the codec scale
    :func:`posecal.theory.heatmap.heatmap_to_input`; this only composes the two for the adapters.
    """
    from posecal.theory.heatmap import decode_argmax, heatmap_to_input

    if channels_last:
        hm = np.moveaxis(hm, -1, 1)
    xy, mx = decode_argmax(hm, subpixel=subpixel)
    return heatmap_to_input(xy, (hm.shape[3], hm.shape[2]), input_size), mx


def find_model_kind(path: str | os.PathLike) -> str:
    """'tflite', 'onnx' or 'torch' (a zip archive: TorchScript / torch.export) from the file's content (not
    its name); PosecalInputError otherwise."""
    p = Path(path)
    if not p.is_file():
        raise PosecalInputError("model file not found", file=str(p), field="--model")
    with open(p, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if p.suffix.lower() == ".onnx" or head[:1] == b"\x08":
        return "onnx"
    raise PosecalInputError("not a model: neither a TFLite flatbuffer (TFL3), an ONNX protobuf nor a PyTorch "
                            "archive (TorchScript .pt, torch.export .pt2)", file=str(p), field="--model")


def load_adapter(path: str | os.PathLike, *, tensor: str | None = None, model_kind: str | None = None,
                 num_threads: int | None = None, input_size: Any = None,
                 model_card: str | os.PathLike | dict | None = None, **kw: Any) -> PoseAdapter:
    """Open a model file with the right backend. ``tensor`` overrides the feature tensor; ``input_size``
    (W, H) is needed by TorchScript models only (or their card's ``input.size``).

    The model card (:mod:`posecal.models.cards`: ``model_card`` given, else the built-in card with the file's
    SHA-256) decides how the model is run, for ONNX, TFLite and PyTorch files alike (a card naming another
    file's SHA-256 is refused; what a PyTorch model reads from its card:
    :func:`posecal.models.adapters.torch.card_settings`). An ONNX or PyTorch model without a card falls back to
    the generic heatmap adapter (input ``(B, 3, H, W)``, ImageNet normalisation, 1×1-conv head discovery) with
    a :class:`PosecalWarning` naming the file and these assumptions (none when ``mean``, ``std`` and
    ``joint_names`` are all given).
    """
    from posecal.models.cards import card_for_model

    fmt = find_model_kind(path)
    card = card_for_model(path, model_card, task="pose")
    card_file = str(model_card) if model_card is not None and not isinstance(model_card, dict) else None
    if card is not None and model_card is not None and card.get("sha256"):
        from posecal.models.store import file_sha256

        if file_sha256(path) != card["sha256"]:
            raise PosecalInputError(f"the card describes another model file (its sha256 {card['sha256'][:12]}… "
                                    f"differs from {Path(path).name}'s); fix it or set it to null",
                                    file=card_file or str(path), field="sha256")
    guessed = card is None and not {"mean", "std", "joint_names"} <= kw.keys()  # what the caller gives is not a guess
    if fmt == "torch":
        from posecal.models.adapters.torch import load_torch_model

        given = {k: kw[k] for k in ("joint_names", "mean", "std") if k in kw}
        adapter = load_torch_model(path, tensor=tensor, num_threads=num_threads, input_size=input_size,
                                   model_kind=model_kind, card=card, card_file=card_file, **given)
        if guessed:
            warnings.warn(generic_onnx_warning(path, adapter, tensor_given=tensor is not None), PosecalWarning,
                          stacklevel=2)
        return adapter
    if fmt == "onnx":
        ignored = [f for f, v in (("--input-size", input_size), ("--model-kind", model_kind)) if v is not None]
        if ignored:
            warnings.warn(f"{', '.join(ignored)}: ignored for an ONNX model (its input size and decoding come "
                          "from the graph or its model card)", PosecalWarning, stacklevel=2)
    if fmt == "tflite":
        return _tflite_adapter(path, card, card_file if model_card is not None else False, tensor=tensor,
                               model_kind=model_kind, num_threads=num_threads, **kw)
    if card is not None:
        from posecal.models.adapters.card import CardAdapter

        return CardAdapter(path, card, tensor=tensor, num_threads=num_threads)
    from posecal.models.adapters.onnx import OnnxAdapter

    try:
        adapter = OnnxAdapter(path, tensor=tensor, num_threads=num_threads, **kw)
    except PosecalInputError as e:  # an ambiguous joint count: say how to tell the joint order
        m = re.match(r"model has (\d+) heatmap channels", e.message)
        if e.field == "joint_names" and "joint_names" not in kw and m:
            raise joint_order_error(path, int(m.group(1))) from None
        raise
    if guessed:
        warnings.warn(generic_onnx_warning(path, adapter, tensor_given=tensor is not None), PosecalWarning,
                      stacklevel=2)
    return adapter


def _tflite_adapter(path: str | os.PathLike, card: dict | None, user_card: str | None | bool, *,
                    tensor: str | None, model_kind: str | None, num_threads: int | None, **kw: Any) -> PoseAdapter:
    """A TFLite model, run by posecal's EfficientPose / BlazePose decoder (kind: ``model_kind``, else the card's
    ``backend_kind``, else recognised from the graph). ``user_card`` (the card file's name, or None for a dict;
    False when no card was given): a user's card warns which of its fields the decoder does not follow, where they
    differ from the file's built-in card."""
    from posecal.models.adapters.tflite import TFLiteAdapter
    from posecal.models.cards import card_for_model

    if model_kind is None and card is not None:
        model_kind = card.get("backend_kind")
    adapter = TFLiteAdapter(path, tensor=tensor, model_kind=model_kind, num_threads=num_threads, **kw)
    if user_card is not False and card is not None:
        ref = card_for_model(path, None, task="pose") or {}  # the built-in card of this file, if any
        ignored = [f for f in ("input", "output", "heatmaps", "features", "keypoints")
                   if card.get(f) is not None and card.get(f) != ref.get(f)]
        if ignored:
            warnings.warn(f"{user_card or 'the model card'}: {', '.join(ignored)} not read for a TFLite model: "
                          f"posecal runs {Path(path).name} with its {adapter.kind} decoder (its own input, "
                          f"outputs and joint order); the card's backend_kind, sha256, crop, target_sigma and "
                          "ccnet are followed", PosecalWarning, stacklevel=3)
    if card is not None:  # what extract / study read from it: crop, target_sigma, ccnet (the decoder does the rest)
        adapter.card = card
    return adapter


def keypoint_sets_with(num_joints: int) -> list[str]:
    """Names of the known keypoint sets with ``num_joints`` keypoints."""
    from posecal.keypoints import KEYPOINT_SETS

    return [s.name for s in KEYPOINT_SETS.values() if s.num_keypoints == num_joints]


def joint_order_error(path: str | os.PathLike, num_joints: int) -> PosecalInputError:
    """The error for a model file whose joint order cannot be told from its heatmap count: which file, which
    keypoint sets match, and how to say it (a model card's ``keypoints``)."""
    sets = keypoint_sets_with(num_joints)
    which = (f"{len(sets)} known keypoint sets have {num_joints} joints ({', '.join(sets)})" if sets
             else f"no known keypoint set has {num_joints} joints")
    return PosecalInputError(f"the model has {num_joints} heatmap channels and {which}, so its joint order is "
                             "unknown; describe it with --model-card CARD.json whose 'keypoints' is the set's "
                             "name (e.g. " + repr(sets[0] if sets else "lsp14") + ") or the list of joint names "
                             "in channel order (docs/model-cards.md)", file=str(path), field="--model-card")


def generic_onnx_warning(path: str | os.PathLike, adapter: Any, *, tensor_given: bool = False) -> str:
    """The one-line warning for an ONNX model that no model card describes: which file, and the settings the
    generic adapter guessed (input layout, normalisation, joints, feature tensor)."""
    from posecal.models.adapters.generic import IMAGENET_MEAN, IMAGENET_STD

    pre = getattr(adapter, "preprocessing", {}) or {}
    mean, std = pre.get("mean"), pre.get("std")
    imagenet = (tuple(mean or ()), tuple(std or ())) == (IMAGENET_MEAN, IMAGENET_STD)
    norm = "ImageNet mean/std normalisation" if imagenet else f"normalisation mean {mean} std {std}"
    feature = "" if tensor_given else " (the input of the 1×1 conv head)"
    W, H = adapter.input_size
    return (f"{path}: no model card matched this model (its SHA-256 is not a built-in card's and no "
            f"--model-card was given); running it as a generic heatmap model with assumed settings: RGB input "
            f"(B, 3, {H}, {W}) scaled to [0, 1] with {norm}, {len(adapter.joint_names)} heatmaps read as "
            f"{_joint_set_name(adapter.joint_names)} joints, argmax decoding, feature tensor "
            f"{adapter.tensor_name!r}{feature}; if any of this is wrong, describe the model "
            "with --model-card CARD.json")


def _joint_set_name(names: Any) -> str:
    from posecal.keypoints import KEYPOINT_SETS

    return next((s.name for s in KEYPOINT_SETS.values() if tuple(s.names) == tuple(names)), "the given")

