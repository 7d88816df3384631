"""PyTorch backend: a heatmap ``nn.Module`` ``(B, 3, H, W) -> (B, J, h, w)``; features by forward hook.

Tensor names: ``"NAME"`` is the output of submodule NAME, ``"NAME:input"`` its (first) input (a forward
pre-hook). Default: the input of the last 1×1 ``Conv2d`` / ``Linear`` whose output is the model output
(found by tracing one forward pass); for MMPose top-down models ``head.final_layer:input``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
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

    if type(m).__name__ == "InterpreterModule":  # a layer of an unflattened torch.export program
        w = m._parameters.get("weight")
        return (not list(m.children()) and w is not None
                and (w.ndim == 2 or (w.ndim == 4 and tuple(w.shape[2:]) == (1, 1))))
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

    max_batch: int | None = None  # a program exported with a static batch size runs that many crops at a time

    def predict(self, crops: np.ndarray) -> ModelOutput:
        """crops (B, H, W, 3) uint8 -> ModelOutput (input px, model joint order)."""
        mb = self.max_batch
        if mb and len(crops) != mb:
            outs = [self._predict_padded(crops[i:i + mb], mb) for i in range(0, len(crops), mb)]
            return ModelOutput(*(np.concatenate([getattr(o, f) for o in outs])
                                 for f in ("coords", "scores", "features", "heatmaps")))
        if getattr(self, "path", None) is None:
            return self._predict(crops)
        try:  # a model loaded from a file is user input: a failure is one line
            return self._predict(crops)
        except Exception as e:
            raise PosecalInputError(f"the model fails to run: {_first_line(e)}", file=str(self.path),
                                    field="--model") from None

    def _predict_padded(self, crops: np.ndarray, mb: int) -> ModelOutput:
        n = len(crops)
        if n < mb:
            crops = np.concatenate([crops, np.zeros((mb - n, *crops.shape[1:]), crops.dtype)])
        o = self._predict_file(crops)
        return ModelOutput(o.coords[:n], o.scores[:n], o.features[:n], o.heatmaps[:n])

    def _predict_file(self, crops: np.ndarray) -> ModelOutput:
        try:
            return self._predict(crops)
        except Exception as e:
            raise PosecalInputError(f"the model fails to run: {_first_line(e)}", file=str(self.path),
                                    field="--model") from None

    def _predict(self, crops: np.ndarray) -> ModelOutput:
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


# -- model files -----------------------------------------------------------------------------------------
def torch_archive_kind(path: str | os.PathLike) -> str | None:
    """'export' (a ``torch.export.save`` program, .pt2), 'script' (a ``torch.jit.save`` TorchScript archive)
    or None, from the zip archive's member names (never by unpickling)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        return "export"
    if any("/code/__torch__/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "script"
    return None


def load_torch_model(path: str | os.PathLike, *, tensor: str | None = None, num_threads: int | None = None,
                     input_size: Sequence[int] | None = None) -> Any:
    """Open a PyTorch heatmap model file ``(B, 3, H, W) -> (B, J, h, w)``.

    * ``torch.export`` program (``torch.export.save``, .pt2): the input size comes from its example
      input; it is unflattened (``torch.export.unflatten``) so the feature is read by a forward hook, as
      :class:`TorchAdapter` does for an in-memory module.
    * TorchScript (``torch.jit.save``, .pt): ScriptModules take no hooks, so the module is converted in
      memory to ONNX (TorchScript exporter) and run by :class:`posecal.models.adapters.onnx.OnnxAdapter`
      (same feature discovery). A TorchScript archive records no input size: give ``input_size`` (W, H).

    A plain ``torch.save`` checkpoint (a pickle) is refused: posecal never unpickles.
    """
    import tempfile
    import warnings

    import torch

    p = Path(path)
    kind = torch_archive_kind(p)
    if kind is None:
        raise PosecalInputError("not a TorchScript archive (torch.jit.save) nor a torch.export program "
                                "(torch.export.save); pickled checkpoints are not loaded", file=str(p),
                                field="--model")
    if kind == "export":
        try:
            ep = torch.export.load(str(p))
            args = ep.example_inputs[0] if ep.example_inputs else ()
            module = torch.export.unflatten(ep)
        except Exception as e:  # torch raises many kinds on a damaged archive
            raise PosecalInputError(f"cannot load the torch.export program: {_first_line(e)}", file=str(p),
                                    field="--model") from None
        shape = tuple(args[0].shape) if args and hasattr(args[0], "shape") else ()
        if len(shape) != 4 or shape[1] != 3:
            raise PosecalInputError(f"example input has shape {shape}, expected (B, 3, H, W)", file=str(p),
                                    field="--model")
        try:
            ad = TorchAdapter(module, (int(shape[3]), int(shape[2])), tensor=tensor, num_threads=num_threads)
        except PosecalInputError:
            raise
        except Exception as e:
            raise PosecalInputError(f"the program fails to run: {_first_line(e)}", file=str(p),
                                    field="--model") from None
        ad.path = p
        ad.kind = "torch-export-heatmap"
        try:  # a batch of two runs unless the program was exported with a static batch size
            ad._predict(np.zeros((2, shape[2], shape[3], 3), np.uint8))
        except Exception:
            ad.max_batch = int(shape[0])
        return ad
    if input_size is None:
        raise PosecalInputError("a TorchScript model records no input size: give --input-size W H", file=str(p),
                                field="--input-size")
    W, H = (int(v) for v in input_size)
    from posecal.models.adapters.onnx import OnnxAdapter

    try:
        module = torch.jit.load(str(p), map_location="cpu").eval()
    except Exception as e:
        raise PosecalInputError(f"cannot load the TorchScript model: {_first_line(e)}", file=str(p),
                                field="--model") from None
    with tempfile.TemporaryDirectory(prefix="posecal-ts-") as tmp:
        onnx_path = Path(tmp) / (p.stem + ".onnx")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (torch.zeros(1, 3, H, W),), str(onnx_path), dynamo=False,
                                  input_names=["input"], output_names=["heatmaps"],
                                  dynamic_axes={"input": {0: "b"}, "heatmaps": {0: "b"}})
        except Exception as e:
            raise PosecalInputError(f"the TorchScript model fails on a (1, 3, {H}, {W}) input: {_first_line(e)}",
                                    file=str(p), field="--model") from None
        ad = OnnxAdapter(onnx_path, tensor=tensor, num_threads=num_threads)
    ad.path = p
    ad.kind = "torchscript-heatmap"
    return ad


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
