"""TFLite backend (ai-edge-litert): EfficientPose RT/I/II and BlazePose full/lite.

The feature tensor is read **as an extra subgraph output**: the flatbuffer is rewritten with the object API
that ai-edge-litert ships (``schema_py_generated``: ``ModelT.InitFromObj`` ... ``Pack``), so the model runs
with its fastest setup (default XNNPACK delegate) and the feature comes back like any output.

Why not ``experimental_preserve_all_tensors``: with the default XNNPACK delegate, intermediate tensors
read back through ``get_tensor`` are wrong (stale/unowned buffers) while outputs stay right; without the
delegate every op runs on the reference kernels (EfficientPose-I: 183 vs 68 ms/crop on 2 threads).
The adapter never reads a non-output tensor from a delegated interpreter; tests compare the feature with
a recomputation of the final 1×1 conv and with the delegate-free preserved-tensor read.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError
from posecal.models.adapters.base import ModelOutput, decode_heatmaps
from posecal.models.adapters.joints import BLAZEPOSE33, EFFICIENTPOSE16

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _schema():
    from ai_edge_litert import schema_py_generated as S

    return S


def read_model(data: bytes, file: str = "<bytes>"):
    """Parse a TFLite flatbuffer into the mutable object API (``ModelT``)."""
    S = _schema()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise PosecalInputError("not a TFLite model (no TFL3 identifier)", file=file, field="--model")
    try:
        return S.ModelT.InitFromObj(S.Model.GetRootAsModel(data, 0))
    except Exception as e:
        raise PosecalInputError(f"not a readable TFLite model: {e}", file=file, field="--model") from None


def pack_model(model) -> bytes:
    """Serialise a ``ModelT`` back to flatbuffer bytes (file identifier TFL3)."""
    import flatbuffers

    b = flatbuffers.Builder(1 << 20)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


class Graph:
    """Read-only view of subgraph 0: tensor names, producers, op names, constants."""

    def __init__(self, model):
        S = _schema()
        self.model = model
        self.g = model.subgraphs[0]
        self.names = [t.name.decode() if isinstance(t.name, bytes) else t.name for t in self.g.tensors]
        self.index = {n: i for i, n in enumerate(self.names)}
        self.producer = {o: k for k, op in enumerate(self.g.operators) for o in op.outputs}
        self._opname = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}

    def op_name(self, k: int) -> str:
        code = self.model.operatorCodes[self.g.operators[k].opcodeIndex]
        return self._opname.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")

    def shape(self, t: int) -> tuple[int, ...]:
        s = self.g.tensors[t].shape
        return tuple(int(v) for v in (s if s is not None else ()))

    def is_constant(self, t: int) -> bool:
        if t in self.producer:
            k = self.producer[t]
            return self.op_name(k) == "DEQUANTIZE" and self.is_constant(self.g.operators[k].inputs[0])
        buf = self.model.buffers[self.g.tensors[t].buffer]
        return buf.data is not None and len(buf.data) > 0

    def constant(self, t: int) -> np.ndarray:
        """Value of a constant tensor (following a DEQUANTIZE of fp16 weights), float32 or native."""
        if t in self.producer:
            k = self.producer[t]
            if self.op_name(k) != "DEQUANTIZE":
                raise ValueError(f"tensor {self.names[t]} is not constant")
            return self.constant(self.g.operators[k].inputs[0]).astype(np.float32)
        S = _schema()
        ten = self.g.tensors[t]
        T = S.TensorType
        dt = {T.FLOAT32: np.float32, T.FLOAT16: np.float16, T.INT8: np.int8, T.INT32: np.int32,
              T.UINT8: np.uint8}[ten.type]
        raw = np.asarray(self.model.buffers[ten.buffer].data, dtype=np.uint8).tobytes()
        return np.frombuffer(raw, dtype=dt).reshape(self.shape(t))

    def head_conv(self, out: int) -> int | None:
        """Operator index of the last 1×1 CONV_2D / FULLY_CONNECTED producing ``out`` (walking back through
        element-wise/reshape ops on input 0), or None."""
        t, seen = out, 0
        while t in self.producer and seen < 16:
            k = self.producer[t]
            name = self.op_name(k)
            op = self.g.operators[k]
            if name == "FULLY_CONNECTED":
                return k
            if name == "CONV_2D":
                w = self.shape(op.inputs[1])
                return k if len(w) == 4 and w[1] == 1 and w[2] == 1 else None
            if name not in ("ADD", "MUL", "RESHAPE", "LOGISTIC", "RELU", "DEQUANTIZE", "QUANTIZE"):
                return None
            t, seen = op.inputs[0], seen + 1
        return None

    def feature_candidates(self) -> list[str]:
        """Tensors feeding a 1×1 conv or FC (plausible penultimate features), graph order."""
        out = []
        for k, op in enumerate(self.g.operators):
            name = self.op_name(k)
            if name == "FULLY_CONNECTED" or (name == "CONV_2D" and self.shape(op.inputs[1])[1:3] == (1, 1)):
                if not self.is_constant(op.inputs[0]):
                    out.append(self.names[op.inputs[0]])
        return list(dict.fromkeys(out))


KINDS = {
    # kind: (joint names, heatmap output used for decoding, heatmap output at the feature grid)
    "efficientpose": (EFFICIENTPOSE16, "upscaled_confs/BiasAdd", "pass3_detection2_confs/BiasAdd"),
    "blazepose": (BLAZEPOSE33, "Identity", "Identity_3"),
}


def detect_kind(graph: Graph) -> str | None:
    outs = {graph.names[t] for t in graph.g.outputs}
    if {"upscaled_confs/BiasAdd", "pass3_detection2_confs/BiasAdd"} <= outs:
        return "efficientpose"
    if {"Identity", "Identity_3"} <= outs:
        ident = graph.shape(graph.index["Identity"])
        hm = graph.shape(graph.index["Identity_3"])
        if ident[-1] == 195 and len(hm) == 4 and hm[-1] == 39:
            return "blazepose"
    return None


@contextlib.contextmanager
def quiet_stderr_fd():
    """Point file descriptor 2 at /dev/null for the block (native libraries' log lines), then restore it."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): nothing to silence
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class TFLiteAdapter:
    """EfficientPose / BlazePose TFLite model with the penultimate feature as an extra output.

    Args:
        path: .tflite file.
        tensor: feature tensor name (default: the input of the last 1×1 conv producing the heatmap).
        model_kind: 'efficientpose' or 'blazepose' (default: recognised from the tensor signature).
        num_threads: interpreter threads.
        delegate: 'xnnpack' (default; the rewritten graph) or 'none' (reference kernels, preserve-all-tensors
            mode, the slow way kept for cross-checks).
    """

    def __init__(self, path: str | os.PathLike, *, tensor: str | None = None, model_kind: str | None = None,
                 num_threads: int | None = None, delegate: str = "xnnpack"):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.path = Path(path)
        data = self.path.read_bytes()
        model = read_model(data, str(self.path))
        self.graph = g = Graph(model)
        kind = model_kind or detect_kind(g)
        if kind not in KINDS:
            raise PosecalInputError(
                f"unrecognised TFLite pose model (outputs: {', '.join(g.names[t] for t in g.g.outputs)}); "
                f"pass --model-kind {{{','.join(KINDS)}}}", file=str(self.path), field="--model-kind")
        self.kind = kind
        self.joint_names, self._decode_out, self._pool_out = KINDS[kind]
        for n in (self._decode_out, self._pool_out):
            if n not in g.index:
                raise PosecalInputError(f"{kind} output {n!r} not in the graph", file=str(self.path))
        head = g.head_conv(g.index[self._pool_out])
        self.head_op = head
        if tensor is None:
            if head is None:
                raise PosecalInputError("no 1×1 conv head found; name the feature with --tensor; candidates: "
                                        + ", ".join(g.feature_candidates()), file=str(self.path),
                                        field="--tensor")
            tensor = g.names[g.g.operators[head].inputs[0]]
        if tensor not in g.index or g.is_constant(g.index[tensor]):
            raise PosecalInputError(f"unknown tensor {tensor!r}; candidates: "
                                    + ", ".join(g.feature_candidates()), file=str(self.path),
                                    field="--tensor")
        self.tensor_name = tensor
        self._feat_idx = g.index[tensor]
        inp = g.g.inputs[0]
        _, H, W, _ = g.shape(inp)
        self.input_size = (int(W), int(H))
        self.delegate = delegate
        if kind == "efficientpose":
            self.preprocessing = {"color": "RGB", "layout": "NHWC", "scale": 1 / 255,
                                  "mean": IMAGENET_MEAN.tolist(), "std": IMAGENET_STD.tolist()}
        else:
            self.preprocessing = {"color": "RGB", "layout": "NHWC", "scale": 1 / 255, "mean": [0, 0, 0],
                                  "std": [1, 1, 1]}
        if delegate not in ("xnnpack", "none"):
            raise ValueError(f"delegate must be 'xnnpack' or 'none', not {delegate!r}")
        # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on fd 2: keep it off stderr
        with quiet_stderr_fd():
            try:
                if delegate == "xnnpack":
                    if self._feat_idx not in list(g.g.outputs):
                        model.subgraphs[0].outputs = np.append(np.asarray(g.g.outputs, dtype=np.int32),
                                                               np.int32(self._feat_idx))
                    content = pack_model(model)
                    self.interp = Interpreter(model_content=content, num_threads=num_threads)
                else:
                    self.interp = Interpreter(
                        model_content=data, num_threads=num_threads,
                        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                        experimental_preserve_all_tensors=True)
                self.interp.allocate_tensors()
            except (RuntimeError, ValueError) as e:
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise PosecalInputError(f"cannot load the TFLite model: {msg}", file=str(self.path),
                                        field="--model") from None
        self._in = self.interp.get_input_details()[0]["index"]
        by_name = {d["name"]: d["index"] for d in self.interp.get_tensor_details()}
        outs = {d["name"]: d["index"] for d in self.interp.get_output_details()}
        self._t_decode = outs[self._decode_out]
        self._t_pool = outs[self._pool_out]
        # with the delegate the feature is an output; without, the preserved intermediate
        self._t_feat = outs.get(tensor, by_name.get(tensor)) if delegate == "xnnpack" else by_name[tensor]

    def feature_candidates(self) -> list[str]:
        return self.graph.feature_candidates()

    def head_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight (O, C), bias (O,)) of the 1×1 conv that maps the default feature to the pooled heatmap."""
        op = self.graph.g.operators[self.head_op]
        w = self.graph.constant(op.inputs[1])
        has_b = len(op.inputs) > 2 and op.inputs[2] >= 0
        b = self.graph.constant(op.inputs[2]) if has_b else np.zeros(w.shape[0])
        return w.reshape(w.shape[0], -1).astype(np.float32), b.astype(np.float32)

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        x = crops.astype(np.float32) / 255.0
        if self.kind == "efficientpose":
            x = (x - IMAGENET_MEAN) / IMAGENET_STD
        return x

    def run_raw(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One preprocessed crop (1, H, W, 3) -> {'decode', 'pool', 'feature'} raw NHWC arrays."""
        self.interp.set_tensor(self._in, x)
        self.interp.invoke()
        # get_tensor returns a copy (never a view into the interpreter's arena)
        return {"decode": self.interp.get_tensor(self._t_decode),
                "pool": self.interp.get_tensor(self._t_pool),
                "feature": self.interp.get_tensor(self._t_feat)}

    def predict(self, crops: np.ndarray) -> ModelOutput:
        """crops (B, H, W, 3) uint8 RGB at the input size -> ModelOutput (input px, model joint order)."""
        x = self.preprocess(np.asarray(crops))
        dec, pool, feat = [], [], []
        for i in range(x.shape[0]):
            r = self.run_raw(x[i:i + 1])
            dec.append(r["decode"])
            pool.append(r["pool"])
            feat.append(r["feature"])
        dec_a, pool_a, feat_a = (np.concatenate(a, axis=0) for a in (dec, pool, feat))
        J = len(self.joint_names)
        hm = np.transpose(pool_a[..., :J], (0, 3, 1, 2)).astype(np.float32)
        features = np.transpose(feat_a, (0, 3, 1, 2)) if feat_a.ndim == 4 else feat_a[:, :, None, None]
        if self.kind == "efficientpose":
            coords, scores = decode_heatmaps(dec_a, self.input_size, channels_last=True)
        else:  # blazepose: 39 × (x, y, z, visibility logit, presence logit), x/y in input px (edges at 0)
            lm = dec_a.reshape(dec_a.shape[0], -1, 5)[:, :J]
            coords = lm[..., :2].astype(np.float64) - 0.5
            scores = 1.0 / (1.0 + np.exp(-lm[..., 3].astype(np.float64)))
        return ModelOutput(coords=coords, scores=scores, features=np.ascontiguousarray(features, np.float32),
                           heatmaps=hm)

    @property
    def info(self) -> dict[str, Any]:
        return {"backend": "tflite", "kind": self.kind, "delegate": self.delegate}
