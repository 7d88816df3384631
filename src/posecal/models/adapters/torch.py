"""PyTorch backend: a heatmap ``nn.Module`` ``(B, 3, H, W) -> (B, J, h, w)``; features by forward hook.

Tensor names: ``"NAME"`` is the output of submodule NAME, ``"NAME:input"`` its (first) input (a forward
pre-hook). Default: the input of the last 1×1 ``Conv2d`` / ``Linear`` whose output is the model output
(found by tracing one forward pass); for MMPose top-down models ``head.final_layer:input``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError
from posecal.models.adapters.base import ModelOutput, decode_heatmaps
from posecal.models.adapters.generic import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    default_joint_names,
    preprocess_nchw,
    preprocessing_info,
)

MMPOSE_DEFAULT_TENSOR = "head.final_layer:input"


def _is_head_layer(m) -> bool:
    import torch.nn as nn

    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1))


class TorchAdapter:
    """Wrap a frozen heatmap ``nn.Module`` (eval mode, CPU).

    Args:
        module: the model; ``forward(x)`` returns heatmaps (B, J, h, w) (or a tuple/list whose first
            element is).
        input_size: (W, H) input pixels.
        tensor: feature name (see module docstring); default discovered.
        joint_names, mean, std: as :class:`posecal.models.adapters.onnx.OnnxAdapter`.
    """

    def __init__(self, module, input_size: tuple[int, int], *, tensor: str | None = None,
                 joint_names: Sequence[str] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, num_threads: int | None = None):
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        self.module = module.eval()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean, self.std = tuple(mean), tuple(std)
        self.preprocessing = preprocessing_info(self.mean, self.std)
        self.kind = "torch-heatmap"
        mods = dict(module.named_modules())
        self._cands = [f"{n}:input" for n, m in mods.items() if n and _is_head_layer(m)]
        if tensor is None:
            tensor = MMPOSE_DEFAULT_TENSOR if "head.final_layer" in mods else self._discover()
        name, _, which = tensor.partition(":")
        if name not in mods or which not in ("", "input"):
            raise PosecalInputError(f"unknown tensor {tensor!r}; candidates: " + ", ".join(self._cands)
                                    + " (or any module name, optionally with ':input')", field="--tensor")
        self.tensor_name = tensor
        self._feat: list[Any] = []
        target = mods[name]
        if which == "input":
            self._hook = target.register_forward_pre_hook(lambda m, args: self._feat.append(args[0].detach()))
        else:
            self._hook = target.register_forward_hook(lambda m, args, out: self._feat.append(out.detach()))
        with torch.no_grad():
            hm = self._forward(torch.zeros(1, 3, self.input_size[1], self.input_size[0]))
        self._feat.clear()
        self.joint_names = default_joint_names(int(hm.shape[1]), joint_names)

    def _forward(self, x):
        out = self.module(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    def _discover(self) -> str:
        import torch

        seen: list[tuple[str, Any]] = []
        hooks = [m.register_forward_hook(lambda mod, a, o, n=n: seen.append((n, o)))
                 for n, m in self.module.named_modules() if n and _is_head_layer(m)]
        try:
            with torch.no_grad():
                out = self._forward(torch.zeros(1, 3, self.input_size[1], self.input_size[0]))
        finally:
            for h in hooks:
                h.remove()
        for n, o in reversed(seen):
            if o is out:
                return f"{n}:input"
        if seen:  # e.g. a final activation after the head: take the last head layer run
            return f"{seen[-1][0]}:input"
        raise PosecalInputError("no 1×1 Conv2d/Linear head found; name the feature with --tensor",
                                field="--tensor")

    def feature_candidates(self) -> list[str]:
        return list(self._cands)

    def predict(self, crops: np.ndarray) -> ModelOutput:
        """crops (B, H, W, 3) uint8 -> ModelOutput (input px, model joint order)."""
        import torch

        x = torch.from_numpy(preprocess_nchw(crops, self.mean, self.std))
        self._feat.clear()
        with torch.no_grad():
            hm = self._forward(x).float().numpy()
        feat = self._feat[-1].float().numpy()
        self._feat.clear()
        if feat.ndim == 2:
            feat = feat[:, :, None, None]
        coords, scores = decode_heatmaps(hm, self.input_size)
        return ModelOutput(coords=coords, scores=scores, features=np.ascontiguousarray(feat, np.float32),
                           heatmaps=hm)

    @property
    def info(self) -> dict[str, Any]:
        return {"backend": "torch", "kind": self.kind}
