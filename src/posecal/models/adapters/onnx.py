"""ONNX backend (onnxruntime): a heatmap model ``input (B, 3, H, W) -> heatmaps (B, J, h, w)``.

The feature tensor is exposed as an **extra graph output** (added with the ``onnx`` package), so it costs
one more output copy and nothing else. Default feature: the input of the last 1×1 ``Conv`` (or ``Gemm`` /
``MatMul``) producing the heatmap output, walking back through element-wise ops.
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

PASS_THROUGH = {"Add", "Relu", "Sigmoid", "Identity", "Mul", "Reshape", "BatchNormalization", "Clip"}


def _graph_maps(graph):
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    return producer, inits


def head_node(graph, output: str):
    """The last 1×1 Conv / Gemm / MatMul node producing ``output`` (through element-wise ops), or None."""
    producer, inits = _graph_maps(graph)
    t = output
    for _ in range(16):
        n = producer.get(t)
        if n is None:
            return None
        if n.op_type == "Conv":
            w = inits.get(n.input[1])
            if w is not None and len(w.dims) == 4 and tuple(w.dims[2:]) == (1, 1):
                return n
            return None
        if n.op_type in ("Gemm", "MatMul"):
            return n
        if n.op_type not in PASS_THROUGH:
            return None
        t = next((i for i in n.input if i not in inits), n.input[0])
    return None


def feature_candidates(graph) -> list[str]:
    """Inputs of 1×1 Conv / Gemm / MatMul nodes that are activations (not weights)."""
    _, inits = _graph_maps(graph)
    graph_in = {i.name for i in graph.input}
    out = []
    for n in graph.node:
        if n.op_type == "Conv":
            w = inits.get(n.input[1])
            if w is None or tuple(w.dims[2:]) != (1, 1):
                continue
        elif n.op_type not in ("Gemm", "MatMul"):
            continue
        if n.input[0] not in inits and n.input[0] not in graph_in:
            out.append(n.input[0])
    return list(dict.fromkeys(out))


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def _image_input(session: Any, path: Path) -> tuple[str, tuple[int, int]]:
    """Name and (W, H) of the model's one image input, which must be float (B, 3, H, W) with a fixed H×W."""
    ins = session.get_inputs()
    if len(ins) != 1:
        raise PosecalInputError(f"expected one image input, the model has {len(ins)}", file=str(path),
                                field="--model")
    inp = ins[0]
    shp = list(inp.shape)
    if len(shp) != 4 or "float" not in str(inp.type):
        raise PosecalInputError(f"input {inp.name!r} is {inp.type} {shp}; expected a float (B, 3, H, W) image "
                                "(NCHW)", file=str(path), field="--model")
    if shp[1] != 3:
        layout = " (channels last: NHWC models are not supported)" if shp[3] == 3 else ""
        raise PosecalInputError(f"input {inp.name!r} has shape {shp}: {shp[1]} channels, expected 3 "
                                f"(B, 3, H, W){layout}", file=str(path), field="--model")
    h, w = shp[2], shp[3]
    if not (isinstance(h, int) and isinstance(w, int)) or h < 1 or w < 1:
        raise PosecalInputError("model input needs a fixed H×W", file=str(path))
    return inp.name, (int(w), int(h))


def _fixed_batch(session: Any) -> int | None:
    """The batch size the image input is fixed to (e.g. 1), or None when it is dynamic."""
    b = session.get_inputs()[0].shape[0]
    return int(b) if isinstance(b, int) and b >= 1 else None


class OnnxAdapter:
    """ONNX heatmap model with the penultimate feature as an extra output.

    Args:
        path: .onnx file.
        tensor: feature tensor (value) name; default discovered (see module docstring).
        output: heatmap output name (default: the first 4-D output).
        joint_names: model joint order (default: the unique keypoint set with J keypoints).
        mean, std: input normalisation of ``rgb/255`` (default ImageNet, as MMPose).
    """

    def __init__(self, path: str | os.PathLike, *, tensor: str | None = None, output: str | None = None,
                 joint_names: Sequence[str] | None = None, num_threads: int | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        import onnx
        import onnxruntime as ort

        self.path = Path(path)
        try:
            model = onnx.load_model(str(self.path))
        except Exception as e:
            raise PosecalInputError(f"not an ONNX model: {e}", file=str(self.path), field="--model") from None
        graph = model.graph
        if not graph.node:
            raise PosecalInputError("not an ONNX model (empty graph)", file=str(self.path), field="--model")
        outs = [o for o in graph.output]
        if output is None:
            four = [o for o in outs if len(o.type.tensor_type.shape.dim) == 4]
            if not four:
                raise PosecalInputError("no 4-D heatmap output; outputs: " + ", ".join(o.name for o in outs),
                                        file=str(self.path))
            output = four[0].name
        elif output not in {o.name for o in outs}:
            raise PosecalInputError(f"no output {output!r}", file=str(self.path), field="output")
        self.output_name = output
        cands = feature_candidates(graph)
        if tensor is None:
            head = head_node(graph, output)
            if head is None:
                raise PosecalInputError("no 1×1 conv head found; name the feature with --tensor; candidates: "
                                        + ", ".join(cands), file=str(self.path), field="--tensor")
            tensor = head.input[0]
        values = {o for n in graph.node for o in n.output}
        if tensor not in values:
            raise PosecalInputError(f"unknown tensor {tensor!r}; candidates: " + ", ".join(cands),
                                    file=str(self.path), field="--tensor")
        self.tensor_name = tensor
        self._cands = cands
        if tensor not in {o.name for o in outs}:
            graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
        so = ort.SessionOptions()
        so.log_severity_level = 4  # failures become one PosecalInputError line, not C++ log lines on stderr
        if num_threads:
            so.intra_op_num_threads = num_threads
            so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), so,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own error types (InvalidGraph, Fail, ...), bad strings
            raise PosecalInputError(f"cannot load the ONNX model: {_first_line(e)}", file=str(self.path),
                                    field="--model") from None
        self._input_name, self.input_size = _image_input(self.session, self.path)
        self.max_batch = _fixed_batch(self.session)
        out_shape = next(o for o in self.session.get_outputs() if o.name == output).shape
        if not isinstance(out_shape[1], int) or out_shape[1] < 1:
            raise PosecalInputError(f"heatmap output {output!r} has shape {out_shape}: no fixed joint count",
                                    file=str(self.path), field="--model")
        self.joint_names = default_joint_names(int(out_shape[1]), joint_names)
        self.kind = "onnx-heatmap"
        self.mean, self.std = tuple(mean), tuple(std)
        self.preprocessing = preprocessing_info(self.mean, self.std)
        self.predict(np.zeros((1, self.input_size[1], self.input_size[0], 3), np.uint8))  # fails here, not later

    def feature_candidates(self) -> list[str]:
        return list(self._cands)

    def predict(self, crops: np.ndarray) -> ModelOutput:
        """crops (B, H, W, 3) uint8 -> ModelOutput; coords decoded from the heatmap argmax (input px).
        A model exported with a fixed batch size b runs b crops at a time (the last group zero-padded)."""
        mb = self.max_batch
        if mb and len(crops) != mb:
            outs = []
            for i in range(0, len(crops), mb):
                part = crops[i:i + mb]
                n = len(part)
                if n < mb:
                    part = np.concatenate([part, np.zeros((mb - n, *part.shape[1:]), part.dtype)])
                o = self._run(part)
                outs.append([o.coords[:n], o.scores[:n], o.features[:n], o.heatmaps[:n]])
            return ModelOutput(*(np.concatenate(a) for a in zip(*outs, strict=True)))
        return self._run(crops)

    def _run(self, crops: np.ndarray) -> ModelOutput:
        x = preprocess_nchw(crops, self.mean, self.std)
        try:
            hm, feat = self.session.run([self.output_name, self.tensor_name], {self._input_name: x})
        except Exception as e:  # a damaged model that loads but cannot run
            raise PosecalInputError(f"the model fails to run: {_first_line(e)}", file=str(self.path),
                                    field="--model") from None
        if hm.ndim != 4 or hm.shape[0] != x.shape[0] or feat.ndim not in (2, 4) or feat.shape[0] != x.shape[0]:
            raise PosecalInputError(f"unexpected output shapes: heatmaps {hm.shape}, feature {feat.shape}",
                                    file=str(self.path), field="--model")
        coords, scores = decode_heatmaps(hm, self.input_size)
        if feat.ndim == 2:
            feat = feat[:, :, None, None]
        return ModelOutput(coords=coords, scores=scores, features=np.asarray(feat, np.float32),
                           heatmaps=np.asarray(hm, np.float32))

    @property
    def info(self) -> dict[str, Any]:
        return {"backend": "onnx", "kind": self.kind, "output": self.output_name}
