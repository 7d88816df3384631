"""The adapter protocol and the heatmap decoding shared by the backends.

An adapter wraps one frozen top-down pose model. ``predict(crops)`` takes a batch of RGB crops
``(B, H, W, 3) uint8`` already warped to the model input (see :mod:`posecal.models.crop`) and returns a
:class:`ModelOutput` in **input pixels** (pixel centres at integers) and the model's own joint order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from posecal.errors import PosecalInputError


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


def decode_heatmaps(hm: np.ndarray, input_size: tuple[int, int], subpixel: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Argmax decoding of heatmaps (B, J, h, w) -> coords (B, J, 2) input px, maxima (B, J).

    Heatmap pixel i covers input pixels [i·W/w, (i+1)·W/w); its centre is input px ``(i + 0.5)·W/w − 0.5``.
    ``subpixel`` adds MMPose's quarter-pixel shift towards the higher neighbour.
    """
    B, J, h, w = hm.shape
    flat = hm.reshape(B, J, -1)
    am = flat.argmax(-1)
    mx = np.take_along_axis(flat, am[..., None], -1)[..., 0]
    y, x = np.divmod(am, w)
    xy = np.stack([x, y], axis=-1).astype(np.float64)
    if subpixel:
        bi, ji = np.meshgrid(np.arange(B), np.arange(J), indexing="ij")
        xr, xl = np.minimum(x + 1, w - 1), np.maximum(x - 1, 0)
        yd, yu = np.minimum(y + 1, h - 1), np.maximum(y - 1, 0)
        dx = hm[bi, ji, y, xr] - hm[bi, ji, y, xl]
        dy = hm[bi, ji, yd, x] - hm[bi, ji, yu, x]
        xy += 0.25 * np.stack([np.sign(dx), np.sign(dy)], axis=-1)
    W, H = input_size
    coords = (xy + 0.5) * np.array([W / w, H / h]) - 0.5
    return coords, mx.astype(np.float64)


def decode_heatmaps_nhwc(hm: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`decode_heatmaps` (argmax, no subpixel) for channels-last maps (B, h, w, J), no transpose."""
    B, h, w, J = hm.shape
    flat = hm.reshape(B, h * w, J)
    am = flat.argmax(axis=1)  # (B, J)
    mx = np.take_along_axis(flat, am[:, None, :], axis=1)[:, 0]
    y, x = np.divmod(am, w)
    xy = np.stack([x, y], axis=-1).astype(np.float64)
    W, H = input_size
    return (xy + 0.5) * np.array([W / w, H / h]) - 0.5, mx.astype(np.float64)


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
                 num_threads: int | None = None, input_size: Any = None, **kw: Any) -> PoseAdapter:
    """Open a model file with the right backend. ``tensor`` overrides the discovered feature tensor;
    ``input_size`` (W, H) is needed by TorchScript models only."""
    fmt = find_model_kind(path)
    if fmt == "torch":
        from posecal.models.adapters.torch import load_torch_model

        return load_torch_model(path, tensor=tensor, num_threads=num_threads, input_size=input_size)
    if fmt == "tflite":
        from posecal.models.adapters.tflite import TFLiteAdapter

        return TFLiteAdapter(path, tensor=tensor, model_kind=model_kind, num_threads=num_threads, **kw)
    from posecal.models.adapters.onnx import OnnxAdapter

    return OnnxAdapter(path, tensor=tensor, num_threads=num_threads, **kw)
