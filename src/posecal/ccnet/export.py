"""Calibrated ONNX export: graft a trained CCNet head onto a pose model's ONNX graph.

``export_calibrated(model.onnx, head_dir, out.onnx)`` writes a model whose single onnxruntime session
returns the original outputs (same names, same nodes: bit-identical values) plus

* ``keypoint_confidence (B, K)``: ŝ_k, the expected keypoint OKS (paper Eq. 19 target),
* ``keypoint_visibility (B, K)``: v̂_k, the probability that keypoint k is labelled (Eq. 20),
* ``instance_confidence (B,)``: ĉ = Σ v̂ŝ / Σ v̂ (the OKS form of Eq. 7; plain mean of ŝ where Σ v̂ = 0).
  A head fitted with ``--box-score`` wants ĉ × the detector score: multiply outside the graph.

K and the keypoint order are the head's **dataset** keypoint set (e.g. LSP-14), as in the feature store
and in ``posecal apply``'s records: model joints are mapped by name
(:func:`posecal.models.adapters.joints.joint_map`).

The graft starts at the head's penultimate tensor (``model_tensor`` in ``head.json``) and reproduces the
feature store's pooling in the graph, so the head sees exactly what it was trained on:

* ``gap``: global average pooling of the (B, C, h, w) tensor (in float64, as ``posecal extract``);
* ``spatial``: a float16 round trip (the store keeps spatial features as float16);
* ``heatmap``: per model joint, the positive part of the heatmap output resampled to the feature grid
  (nearest centre) and normalised to sum 1 (uniform if no positive value) weights the features
  (float32 in the graph, float64 for channels-last maps and in the store), then the joints are mapped to the
  dataset keypoints (missing ones get zero features). The ``kpt`` heads that read these features are linear in
  them, so the graph applies the head's weights first, as a 1×1 Conv on the feature map in the layout the runtime
  already holds it in (a MatMul for channels-last maps), and pools the 2K head channels
  (:func:`_heatmap_kpt`): the feature map is never transposed or reordered (a channels-last one is cast to
  float64 once, for the pooling).

Keypoints the model lacks (``extract --allow-missing-joints``: joint map −1) get ŝ = v̂ = 0 in every mode, as
``posecal apply`` gives them (:func:`posecal.ccnet.apply.mask_missing`), so they take no part in ĉ.

Flip-test averaging is not reproduced: a head fitted on a ``--flip`` store sees single-pass features
(a warning says so).

TFLite source models cannot be grafted (no ONNX graph). :func:`export_head_only` then writes a small
ONNX with inputs ``features (B, C, h, w)`` float32 channels-first (the penultimate tensor as
:class:`posecal.models.adapters.base.ModelOutput` holds it) and, for heatmap pooling, ``heatmaps (B, J, h', w')``
(model joint order), and the three outputs above. Two-stage use (see :func:`run_two_stage`)::

    out = adapter.predict(crops)                     # posecal.models.adapters.load_adapter("EfficientPoseI.tflite")
    s, v, c = session.run(None, {"features": out.features, "heatmaps": out.heatmaps})

The head is written as plain ONNX operators (Conv / MatMul / Gemm / Sigmoid / GlobalAveragePool), from
the safetensors weights of :func:`posecal.ccnet.checkpoint.load_head`; the default-domain opset must be
≥ 13. Imports onnx, onnxruntime and torch (to read the head) inside the functions.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError, PosecalWarning

__all__ = ["OUTPUTS", "export_calibrated", "export_head_only", "run_two_stage", "head_arrays",
           "check_head_against_model"]

OUTPUTS = ("keypoint_confidence", "keypoint_visibility", "instance_confidence")
PREFIX = "posecal_ccnet/"
HEAD_ONLY_OPSET = 17


def make_shareable(*paths: str | os.PathLike) -> None:
    """Give files written through a temporary file (mode 0600) the usual ``0666 & ~umask`` mode."""
    old = os.umask(0o022)
    os.umask(old)
    for p in paths:
        os.chmod(p, 0o666 & ~old)


def head_arrays(head_dir: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The head's weights as float32 numpy arrays (``feat_mean``, ``feat_std``, ``weight``/``bias`` or
    ``linear.*``/``conv.*``) and its ``head.json`` metadata."""
    from posecal.ccnet.checkpoint import load_head

    head, meta = load_head(head_dir)
    arrs = {k: v.detach().cpu().float().numpy() for k, v in head.state_dict().items()}
    return arrs, meta


class _Builder:
    """Collects ONNX nodes and initialisers under a name prefix."""

    def __init__(self, prefix: str):
        import onnx

        self.onnx = onnx
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0
        self.heatmap_max: dict[str, str] = {}  # heatmap tensor -> its per-map maxima, (B, J, 1, 1) [NCHW]

    def name(self, base: str) -> str:
        self._n += 1
        return f"{self.prefix}{base}_{self._n}"

    def const(self, base: str, value: np.ndarray) -> str:
        n = self.name(base)
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value), n))
        return n

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        out = out or self.name(op_type.lower())
        node = self.onnx.helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs)
        self.nodes.append(node)
        return out


def _pool(b: _Builder, feat: str, pooling: str, feat_hw: tuple[int, int], feat_ndim: int, C: int) -> str:
    """``gap`` / ``spatial`` pooling subgraph: penultimate (B, C, h, w) -> store feature. (``heatmap``
    pooling is fused with the ``kpt`` heads' weights: :func:`_heatmap_kpt`.)"""
    TP = b.onnx.TensorProto
    if feat_ndim == 2:
        feat = b.op("Reshape", [feat, b.const("shape", np.array([0, C, 1, 1], np.int64))])
    P = feat_hw[0] * feat_hw[1]
    if pooling == "gap":  # mean over h·w in float64 (a MatMul: GlobalAveragePool has no double kernel)
        x = b.op("Cast", [feat], to=TP.DOUBLE)
        x = b.op("Reshape", [x, b.const("shape", np.array([0, C, P], np.int64))])
        x = b.op("MatMul", [x, b.const("meanP", np.full((P, 1), 1.0 / P))])
        x = b.op("Reshape", [x, b.const("shape", np.array([0, C], np.int64))])
        return b.op("Cast", [x], to=TP.FLOAT)  # (B, C)
    if pooling == "spatial":
        x = b.op("Cast", [feat], to=TP.FLOAT16)
        return b.op("Cast", [x], to=TP.FLOAT)  # (B, C, h, w)
    raise PosecalInputError(f"unknown pooling {pooling!r}", field="pooling")


def _heatmap_weights(b: _Builder, hm: str, layout: str, hm_hw: tuple[int, int], feat_hw: tuple[int, int],
                     jsel: np.ndarray, J: int, opset: int, shape: list[int], unnormalised: bool = False
                     ) -> Any:
    """Normalised heatmap pooling weights on the feature grid, (B, K, P) reshaped to ``shape``, P = h·w.

    ``hm`` (B, J, h', w') [``layout`` NCHW] or (B, h', w', J) [NHWC]; row k is the positive part of the
    heatmap of model joint ``jsel[k]``, resampled to the feature grid (nearest centre, as
    :func:`posecal.models.adapters.pooling.resample_to`), divided by its sum; a map with no positive value
    (after the resampling) gets the uniform 1 / P (the store's rule). The positive part and the uniform case
    are one Max: max(x, 1) = 1 where the map's maximum is ≤ 0, else max(x, 0). Without resampling NCHW maps
    are used as they are (their maxima shared with :func:`_keypoint_scores` when all joints are used in
    order), NHWC maps transposed, and the joint selection is a Gather of whole maps; with resampling,
    selection, resampling and layout are one element-wise Gather on the flattened maps. Every reduction runs
    over trailing, contiguous axes. With ``unnormalised`` the weights are returned before the division, in
    ``shape`` (B, K, P), with their sums (B, K, 1): the caller divides the pooled (K, r) result instead of
    the (K, P) weights."""
    (hh, ww), (h, w) = hm_hw, feat_hw
    K, P = len(jsel), h * w
    f32 = b.onnx.TensorProto.FLOAT
    same = K == J and (jsel == np.arange(J)).all()
    if (hh, ww) == (h, w):
        if layout == "NCHW":
            x, axes, hmax = hm, [2, 3], b.heatmap_max.get(hm) if same else None
        else:  # the Reshape keeps onnxruntime from moving the Transpose past the reductions (strided axes)
            x = b.op("Transpose", [hm], perm=[0, 3, 1, 2])
            x, axes, hmax = b.op("Reshape", [x, b.const("shape", np.array([0, J, P], np.int64))]), [2], None
        if not same:  # whole maps: block copies
            x = b.op("Gather", [x, b.const("joint_map", jsel)], axis=1)
    else:  # one element-wise Gather
        yi = np.minimum(((np.arange(h) + 0.5) * hh / h).astype(np.int64), hh - 1)
        xi = np.minimum(((np.arange(w) + 0.5) * ww / w).astype(np.int64), ww - 1)
        pix = (yi[:, None] * ww + xi[None, :]).reshape(-1)  # (P,) index into the h'·w' heatmap pixels
        idx = jsel[:, None] * (hh * ww) + pix[None, :] if layout == "NCHW" else pix[None, :] * J + jsel[:, None]
        x = b.op("Reshape", [hm, b.const("shape", np.array([0, -1], np.int64))])
        x, axes, hmax = b.op("Gather", [x, b.const("pix", idx)], axis=1), [2], None  # (B, K, P)
    if hmax is None:
        hmax = _reduce(b, "ReduceMax", x, axes, 1, opset)
    x = b.op("Max", [x, b.op("Cast", [b.op("LessOrEqual", [hmax, b.const("zero", np.zeros((), np.float32))])],
                              to=f32)])
    if unnormalised:
        if not (axes == [2] and shape == [0, K, P]):
            x = b.op("Reshape", [x, b.const("shape", np.array(shape, np.int64))])
        return x, _reduce(b, "ReduceSum", x, [2], 1, opset)
    x = b.op("Div", [x, _reduce(b, "ReduceSum", x, axes, 1, opset)])
    if axes == [2] and shape == [0, K, P]:
        return x
    return b.op("Reshape", [x, b.const("shape", np.array(shape, np.int64))])


def _heatmap_kpt(b: _Builder, feat: str, feat_layout: str, hm: str, hm_layout: str, feat_hw: tuple[int, int],
                 hm_hw: tuple[int, int], jmap: np.ndarray, J: int, W: np.ndarray, bias: np.ndarray, opset: int,
                 rank: int = 0, fuse: Callable[[np.ndarray], str | None] | None = None) -> tuple[str, bool]:
    """Heatmap pooling fused with a ``kpt`` head's linear map (exact algebra, float32).

    The head is linear in the pooled feature, pooled_kc = Σ_p f_cp w_kp (w: :func:`_heatmap_weights`, Σ_p w_kp = 1),
    so z_kj = Σ_c W_kjc pooled_kc + b_kj = Σ_p w_kp g_kjp with g = the 1×1 convolution of the feature map with the
    weights W (K, 2, C) as 2K filters and the bias b (K, 2), then for each k a (2, P) @ (P, 1) product: a
    channels-first map is read once, by a Conv that onnxruntime runs on its own blocked layout, never reordered,
    transposed or copied — the model's own last Conv when ``fuse(W)`` can widen it with the 2K filters
    (:func:`_fuse_into_conv`; the bias is then left to the caller), else one of the graft's. A channels-last map (B,
    h, w, C) already is a (P, C) matrix per instance: it is pooled directly, (K, P) @ (P, C), then each keypoint's
    (1, C) @ (C, 2), both in float64 (one cast copy; the bias is left to the caller). Keypoints the model lacks
    (``jmap`` −1) get zero filters: pooled feature 0, z = b, as in the store. ``feat`` (B, C, h, w) [NCHW] or
    (B, h, w, C) [NHWC]; ``hm`` in its own layout, model joint order (J maps). Returns t (B, 2K) in (k, j) order
    and whether it includes b.

    A channels-first map with a head of filter rank ``rank`` (:func:`posecal.ccnet.heads.project_filter_rank`, 0 <
    rank < 2K) is read through the factorisation (2K, C) = A (2K, r) · B (r, C): r maps g = B f per pixel, pooled
    per keypoint, (K, P) @ (P, r), then z = A · pooled + b. ``fuse(B)`` may compute those r maps inside the model's
    own last convolution and return their tensor (B, r, h, w) (:func:`_fuse_into_conv`); else (None) a Conv with r
    filters computes them."""
    have = jmap >= 0
    K, C = len(jmap), W.shape[2]
    P = feat_hw[0] * feat_hw[1]
    Wk = np.where(have[:, None, None], W, 0).astype(np.float32)  # (K, 2, C)
    jsel = np.where(have, jmap, 0)
    if feat_layout == "NCHW" and 0 < rank < min(2 * K, C):
        A, Bm = _factor(Wk.reshape(2 * K, C), rank)  # A (2K, r) float64, fitted to the float32 B
        err = np.linalg.norm(A @ Bm - Wk.reshape(2 * K, C)) / max(np.linalg.norm(Wk), 1e-30)
        if err > 1e-4:  # the graph would not compute what posecal apply computes
            raise PosecalInputError(f"the head's weights are not of rank {rank} (relative residual {err:.2g}) as its "
                                    "metadata says", field="train.filter_rank")
        g = fuse(Bm) if fuse is not None else None
        if g is None:
            g = b.op("Conv", [feat, b.const("proj_weight", Bm.reshape(rank, C, 1, 1))])  # (B, r, h, w)
        wts, tot = _heatmap_weights(b, hm, hm_layout, hm_hw, feat_hw, jsel, J, opset, [0, K, P], unnormalised=True)
        g = b.op("Transpose", [b.op("Reshape", [g, b.const("shape", np.array([0, rank, P], np.int64))])],
                 perm=[0, 2, 1])  # (B, P, r)
        # pooling and A in float64: the r maps of a head with large weights (features near-constant in training,
        # σ at its floor) cancel in A·g, and float32 there differs from the head by > 1e-5
        f64 = b.onnx.TensorProto.DOUBLE
        x = b.op("MatMul", [b.op("Cast", [wts], to=f64), b.op("Cast", [g], to=f64)])
        x = b.op("Div", [x, b.op("Cast", [tot], to=f64)])  # (B, K, r): the pooled r maps
        x = b.op("Reshape", [x, b.const("shape", np.array([0, K * rank], np.int64))])
        Ab = np.zeros((K * rank, 2 * K))  # block diagonal: keypoint k's (r, 2) block A_k^T
        for k in range(K):
            Ab[k * rank:(k + 1) * rank, 2 * k:2 * k + 2] = A[2 * k:2 * k + 2].T
        z = b.op("Gemm", [x, b.const("proj_head", Ab), b.const("bias", bias.reshape(-1).astype(np.float64))])
        return b.op("Cast", [z], to=b.onnx.TensorProto.FLOAT), True
    flat = b.const("shape", np.array([0, 2 * K], np.int64))
    if feat_layout == "NCHW":
        wts = _heatmap_weights(b, hm, hm_layout, hm_hw, feat_hw, jsel, J, opset, [0, K, P, 1])
        g = fuse(Wk.reshape(2 * K, C)) if fuse is not None else None  # the 2K filters in the model's Conv
        with_bias = g is None
        if g is None:
            g = b.op("Conv", [feat, b.const("conv_weight", Wk.reshape(2 * K, C, 1, 1)),
                              b.const("conv_bias", bias.reshape(-1).astype(np.float32))])  # (B, 2K, h, w)
        g = b.op("Reshape", [g, b.const("shape", np.array([0, K, 2, P], np.int64))])
        return b.op("Reshape", [b.op("MatMul", [g, wts]), flat]), with_bias  # (B, K, 2, 1) -> (B, 2K)
    wts = _heatmap_weights(b, hm, hm_layout, hm_hw, feat_hw, jsel, J, opset, [0, K, P])
    f = b.op("Reshape", [feat, b.const("shape", np.array([0, P, C], np.int64))])
    # pooled and weighted in float64, as the store pools: a float32 sum over MoveNet's 64×64 pixels, times folded
    # weights of a few hundred, put ŝ 1.2e-5 from posecal apply on a coco-mini crop (2e-6 in float64)
    f64 = b.onnx.TensorProto.DOUBLE
    x = b.op("MatMul", [b.op("Cast", [wts], to=f64), b.op("Cast", [f], to=f64)])  # (B, K, C): the pooled features
    x = b.op("Reshape", [x, b.const("shape", np.array([0, K, 1, C], np.int64))])
    Wt = np.ascontiguousarray(Wk.transpose(0, 2, 1)).astype(np.float64)  # (K, C, 2)
    z = b.op("MatMul", [x, b.const("weight", Wt)])  # (B, K, 1, 2)
    return b.op("Reshape", [b.op("Cast", [z], to=b.onnx.TensorProto.FLOAT), flat]), False  # -> (B, 2K)


def _factor(M: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``M (F, C) ≈ A (F, r) · B (r, C)`` by truncated SVD (float64; exact for a rank-r ``M`` up to
    rounding), B with orthonormal rows, float32 (it runs in a float32 Conv); A float64, the least-squares fit of
    ``M`` on the float32 B (so B's rounding is not multiplied into the large weights of A)."""
    M = np.asarray(M, np.float64)
    _, _, Vt = np.linalg.svd(M, full_matrices=False)
    B = np.ascontiguousarray(Vt[:rank]).astype(np.float32)
    A = np.linalg.lstsq(B.astype(np.float64).T, M.T, rcond=None)[0].T
    return np.ascontiguousarray(A), B


def _plain_1x1_conv(m: Any, feat: str, hm: str, C: int) -> tuple[int, dict[str, Any], np.ndarray, Any] | None:
    """The node index, attributes, weights (J, C, 1, 1) and bias (J,) or None of the one Conv from ``feat`` to
    ``hm`` in ``m`` when it is a plain 1×1 convolution (group 1, stride 1, dilation 1, no padding, constant
    float32 weights over C channels); None otherwise."""
    from onnx import helper, numpy_helper

    hits = [i for i, n in enumerate(m.graph.node) if n.op_type == "Conv" and list(n.output) == [hm]
            and n.input[0] == feat]
    if len(hits) != 1:
        return None
    n = m.graph.node[hits[0]]
    at = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    plain = (at.get("group", 1) == 1 and all(v == 1 for v in (*at.get("strides", []), *at.get("dilations", [])))
             and not any(at.get("pads", [])) and at.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"))
    inits = {t.name: t for t in m.graph.initializer}
    ins = [x for x in n.input[1:] if x]
    if not plain or not ins or any(x not in inits for x in ins):
        return None
    W0 = numpy_helper.to_array(inits[n.input[1]])
    if W0.dtype != np.float32 or W0.ndim != 4 or W0.shape[1:] != (C, 1, 1):
        return None
    return hits[0], at, W0, numpy_helper.to_array(inits[ins[1]]) if len(ins) > 1 else None


def _fuse_into_conv(m: Any, feat: str, hm: str, Bm: np.ndarray, prefix: str) -> str | None:
    """Append the r filters ``Bm (r, C)`` (a rank-r head's shared maps, or a full head's 2K filters) to the model's own
    last layer when that layer is a 1×1 Conv (group 1, stride 1, no padding, constant float32 weights) from the
    feature tensor ``feat`` to the heatmaps ``hm``: one Conv computes both and a Split right after it restores
    ``hm`` (each output channel's sum over the C inputs is computed alike; :func:`export_calibrated` checks the
    bytes and falls back otherwise). SimplePose's 17 heatmaps use 32 output lanes of a 16-wide vector layout, so up
    to 15 more filters are nearly free, and 34 more cost 32 lanes instead of a second Conv's 48 plus a second read
    of the map. Edits ``m`` in place; returns the name of the (B, r, h, w) maps, or None (nothing changed) when the
    layer is not such a Conv."""
    from onnx import helper, numpy_helper

    found = _plain_1x1_conv(m, feat, hm, Bm.shape[1])
    if found is None:
        return None
    i, at, W0, b0 = found
    nodes = list(m.graph.node)
    n = nodes[i]
    r, C = Bm.shape
    J = W0.shape[0]
    extra = [numpy_helper.from_array(np.concatenate([W0, Bm.reshape(r, C, 1, 1).astype(np.float32)]),
                                     f"{prefix}fused_conv_weight")]
    if b0 is not None:
        extra.append(numpy_helper.from_array(np.concatenate([b0, np.zeros(r, b0.dtype)]), f"{prefix}fused_conv_bias"))
    extra.append(numpy_helper.from_array(np.array([J, r], np.int64), f"{prefix}fused_split"))
    fused, proj = f"{prefix}fused_conv", f"{prefix}proj_maps"
    conv = helper.make_node("Conv", [n.input[0], *(t.name for t in extra[:-1])], [fused], name=n.name, **at)
    split = helper.make_node("Split", [fused, extra[-1].name], [hm, proj], name=f"{prefix}Split_fused", axis=1)
    nodes[i:i + 1] = [conv, split]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    used = {x for nd in nodes for x in nd.input}
    old = {x for x in n.input[1:] if x and x not in used}  # the replaced weights, unless shared
    keep = [t for t in m.graph.initializer if t.name not in old]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep + extra)
    return proj


def filter_rank(meta: dict[str, Any], head_dir: str | os.PathLike | None = None) -> int:
    """The head's filter rank (``fit --filter-rank``; 0: full) from its metadata (``head.json`` in
    ``head_dir``, named in the error)."""
    r = (meta.get("train") or {}).get("filter_rank", (meta.get("recipe") or {}).get("filter_rank", 0))
    if not isinstance(r, int) or isinstance(r, bool) or r < 0:
        raise PosecalInputError(f"filter_rank must be an integer >= 0, got {r!r}",
                                file=None if head_dir is None else str(Path(head_dir) / "head.json"),
                                field="train.filter_rank")
    return r


def _same_outputs(original: Any, grafted: Any) -> bool:
    """Whether ``grafted`` reproduces every output of ``original`` (ONNX ModelProtos) bit for bit on one seeded
    random input (onnxruntime CPU, default optimisations); extra graft inputs (``box_score``) get ones."""
    import onnxruntime as ort
    from onnx.helper import tensor_dtype_to_np_dtype

    def session(m: Any) -> Any:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    consts = {t.name for t in original.graph.initializer}
    feeds = {}
    for i in original.graph.input:
        if i.name in consts:
            continue
        tt = i.type.tensor_type
        try:
            dt = tensor_dtype_to_np_dtype(tt.elem_type)
        except (KeyError, ValueError):
            return False
        shape = [d.dim_value or 1 for d in tt.shape.dim]
        x = rng.normal(0, 1, shape) if np.issubdtype(dt, np.floating) else rng.integers(0, 128, shape)
        feeds[i.name] = x.astype(dt)
    names = [o.name for o in original.graph.output]
    a = session(original).run(names, feeds)
    s = session(grafted)
    extra = {i.name: np.ones([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
             for i in s.get_inputs() if i.name not in feeds}
    b = s.run(names, {**feeds, **extra})
    return all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
               for x, y in zip(a, b, strict=True))


def _reduce(b: _Builder, op: str, x: str, axes: list[int], keepdims: int, opset: int) -> str:
    """ReduceMax/ReduceMean/ReduceSum with ``axes`` as attribute or input, as the opset wants."""
    if op == "ReduceSum" and opset >= 13 or opset >= 18:
        return b.op(op, [x, b.const("axes", np.array(axes, np.int64))], keepdims=keepdims)
    return b.op(op, [x], axes=axes, keepdims=keepdims)


def _evidence(b: _Builder, scores: str, box: str, opset: int) -> str:
    """Instance evidence in folded form (B, K + 4) = [s_1..s_K, max s, count of s > 0.2, box score,
    bbox_keypoint score] from keypoint scores (B, K) and box scores (B,). The head was trained on
    :func:`posecal.ccnet.targets.instance_evidence` (``per_keypoint=True``: [s_k, mean s, max s, fraction
    of s > 0.2, box score, bbox_keypoint score] per keypoint); mean = Σ s / K and fraction = count / K are
    linear in these and folded into the head's weights (:func:`_fold_kpt`)."""
    f32 = b.onnx.TensorProto.FLOAT
    mx = _reduce(b, "ReduceMax", scores, [1], 1, opset)  # (B, 1)
    m = b.op("Cast", [b.op("Greater", [scores, b.const("thr", np.array(0.2, np.float32))])], to=f32)
    cnt = _reduce(b, "ReduceSum", m, [1], 1, opset)
    num = _reduce(b, "ReduceSum", b.op("Mul", [scores, m]), [1], 1, opset)
    bx = b.op("Reshape", [box, b.const("shape", np.array([-1, 1], np.int64))])
    # num = 0 where cnt = 0: num / max(cnt, 1) is 0 there (MMPose's bbox_keypoint rule)
    bkp = b.op("Mul", [bx, b.op("Div", [num, b.op("Max", [cnt, b.const("one", np.ones((), np.float32))])])])
    return b.op("Concat", [scores, mx, cnt, bx, bkp], axis=1)


def _evidence_flat(b: _Builder, scores: str, box: str, opset: int) -> str:
    """Instance evidence (B, K + 5) = [s_1..s_K, mean s, max s, fraction of s > 0.2, box score, bbox_keypoint
    score] from keypoint scores (B, K) and box scores (B,), as :func:`posecal.ccnet.targets.instance_evidence`
    (``per_keypoint=False``) appends it to ``gap`` features for an ``fc`` head."""
    f32 = b.onnx.TensorProto.FLOAT
    mean = _reduce(b, "ReduceMean", scores, [1], 1, opset)
    mx = _reduce(b, "ReduceMax", scores, [1], 1, opset)
    m = b.op("Cast", [b.op("Greater", [scores, b.const("thr", np.array(0.2, np.float32))])], to=f32)
    cnt = _reduce(b, "ReduceSum", m, [1], 1, opset)
    frac = _reduce(b, "ReduceMean", m, [1], 1, opset)
    num = _reduce(b, "ReduceSum", b.op("Mul", [scores, m]), [1], 1, opset)
    bx = b.op("Reshape", [box, b.const("shape", np.array([-1, 1], np.int64))])
    bkp = b.op("Mul", [bx, b.op("Div", [num, b.op("Max", [cnt, b.const("one", np.ones((), np.float32))])])])
    return b.op("Concat", [scores, mean, mx, frac, bx, bkp], axis=1)


def _fold_kpt(arrs: dict[str, np.ndarray], K: int, evidence: bool) -> dict[str, np.ndarray]:
    """The ``kpt``/``kpt_inst`` head with its normalisation folded into the weights, float64 -> float32.

    z_kj = Σ_c W_kjc (x_kc − μ_kc)/σ_kc + b_kj = Σ_c W'_kjc x_kc + b'_kj: ``W`` (K, 2, C) and ``b`` (K, 2).
    With ``evidence`` the last 6 input channels (s_k and the 5 instance values) become one matrix ``E``
    (K + 4, 2K), columns in (k, j) order, applied to the folded evidence vector of :func:`_evidence`
    (mean = Σ s / K and fraction = count / K folded into the rows of s_k and of the count), and for
    ``kpt_inst`` ``Eg`` (K + 4, 1) and ``g0`` (1,): the gate's logit, the keypoint mean of its inputs.

    The evidence is applied centred, ``E·(e − c0)``, with ``c0`` (K + 4,) its training means (returned as ``c0``,
    float32) and ``E·c0`` moved into ``b`` / ``g0`` in float64: an evidence value that was constant in training
    (the box score 1 of gt boxes) has σ at the 1e-6 floor, so E holds ~1e5 weights on it, whose products
    folded into a float32 bias would cancel to a few 1e-3 instead of 0 (as ``(x − μ)/σ`` = 0 in the head)."""
    W = arrs["weight"].astype(np.float64)
    mu, sd = arrs["feat_mean"].astype(np.float64), arrs["feat_std"].astype(np.float64)
    Wn = W / sd[:, None, :]
    b64 = arrs["bias"].astype(np.float64) - np.einsum("kjc,kc->kj", Wn, mu)
    out = {"b": b64.astype(np.float32)}
    if not evidence:
        out["W"] = Wn.astype(np.float32)
        return out
    from posecal.ccnet.heads import GATE_INPUTS

    C = W.shape[2] - GATE_INPUTS
    out["W"] = Wn[:, :, :C].astype(np.float32)
    gate = "gate.weight" in arrs
    E = np.zeros((K + 5, 2 * K + int(gate)))  # rows: s_1..s_K, mean, max, fraction, box, bbox_keypoint
    for k in range(K):
        E[k, 2 * k:2 * k + 2] = Wn[k, :, C]
        E[K:, 2 * k:2 * k + 2] = Wn[k, :, C + 1:].T
    g0 = 0.0
    if gate:
        u = arrs["gate.weight"].astype(np.float64).reshape(-1)  # (6,)
        E[:K, -1] = u[0] / (K * sd[:, C])
        E[K:, -1] = (u[1:][None] / (K * sd[:, C + 1:])).sum(0)
        g0 = arrs["gate.bias"][0] - (u[None] * mu[:, C:] / (K * sd[:, C:])).sum()
    Ef = np.concatenate([E[:K] + E[K] / K, E[K + 1:K + 2], E[K + 2:K + 3] / K, E[K + 3:]])  # (K + 4, ·)
    # the centre in the folded evidence's terms: s_k, max, count = K · fraction, box, bbox_keypoint
    c0 = np.concatenate([mu[:, C], [mu[:, C + 2].mean(), K * mu[:, C + 3].mean(), mu[:, C + 4].mean(),
                                    mu[:, C + 5].mean()]]).astype(np.float32)
    shift = c0.astype(np.float64) @ Ef  # what E·(e − c0) leaves out, added to the biases in float64
    out["c0"] = c0
    out["b"] = (b64 + shift[:2 * K].reshape(K, 2)).astype(np.float32)
    out["E"] = Ef[:, :2 * K].astype(np.float32)
    if gate:
        out["Eg"] = Ef[:, 2 * K:].astype(np.float32)
        out["g0"] = np.array([g0 + shift[2 * K]], np.float32)
    return out


def _kpt_logits(b: _Builder, t: str, has_bias: bool, kind: str, f: dict[str, np.ndarray],
                evidence: str | None) -> tuple[str, str | None]:
    """``kpt``/``kpt_inst`` logits (B, 2K) from the fused term ``t`` of :func:`_heatmap_kpt` (with the bias
    b' when ``has_bias``) and the folded head ``f`` of :func:`_fold_kpt`: z = t [+ b'] [+ E·(evidence − c0)], and
    for ``kpt_inst`` the gate σ(Eg·(evidence − c0) + g0) (B, 1)."""
    b_flat = f["b"].reshape(-1)
    if evidence is None:
        if kind == "kpt_inst":
            raise PosecalInputError("a 'kpt_inst' head needs the instance evidence", field="head")
        return (t if has_bias else b.op("Add", [t, b.const("bias", b_flat)])), None
    if "c0" in f:  # centred (see _fold_kpt): E·(e − c0), E·c0 is in the biases
        evidence = b.op("Sub", [evidence, b.const("evidence_centre", f["c0"])])
    ew = b.const("evidence_w", f["E"])
    z = b.op("Gemm", [evidence, ew, t]) if has_bias else \
        b.op("Add", [t, b.op("Gemm", [evidence, ew, b.const("bias", b_flat)])])
    gate = None
    if kind == "kpt_inst":
        gate = b.op("Sigmoid", [b.op("Gemm", [evidence, b.const("gate_w", f["Eg"]), b.const("gate_b", f["g0"])])])
    return z, gate


def _head(b: _Builder, x: str, kind: str, arrs: dict[str, np.ndarray], K: int) -> str:
    """``fc`` / ``conv_gap`` / ``conv_sigmoid_gap`` head subgraph (as
    :meth:`posecal.ccnet.heads.CCNetHead.forward`) on the pooled store feature -> logits (or, for
    ``conv_sigmoid_gap``, probabilities) (B, 2K) in (k, j) order."""
    if kind == "fc":
        x = b.op("Div", [b.op("Sub", [x, b.const("feat_mean", arrs["feat_mean"])]),
                         b.const("feat_std", arrs["feat_std"])])
        z = b.op("MatMul", [x, b.const("weight_t", np.ascontiguousarray(arrs["linear.weight"].T))])
        return b.op("Add", [z, b.const("bias", arrs["linear.bias"])])
    if kind in ("conv_gap", "conv_sigmoid_gap"):
        x = b.op("Div", [b.op("Sub", [x, b.const("feat_mean", arrs["feat_mean"])]),
                         b.const("feat_std", arrs["feat_std"])])
        cw, cb = b.const("conv_weight", arrs["conv.weight"]), b.const("conv_bias", arrs["conv.bias"])
        z = b.op("Conv", [x, cw, cb])
        if kind == "conv_sigmoid_gap":
            z = b.op("Sigmoid", [z])
        return b.op("Reshape", [b.op("GlobalAveragePool", [z]), b.const("shape", np.array([0, 2 * K], np.int64))])
    if kind in ("kpt", "kpt_inst"):
        raise PosecalInputError(f"head {kind!r} needs heatmap pooling", field="head")
    raise PosecalInputError(f"unknown head kind {kind!r}", field="head")


def _outputs(b: _Builder, z: str, K: int, probabilities: bool, gate: str | None,
             have: np.ndarray | None = None) -> list[str]:
    """Logits (B, 2K) in (k, j) order [and a gate (B, 1)] -> the three :data:`OUTPUTS`. Keypoints the model
    lacks (``have`` (K,) False) get ŝ = v̂ = 0, as ``posecal apply`` gives them
    (:func:`posecal.ccnet.apply.mask_missing`), and so take no part in ĉ; with all present nothing is added."""
    mask = None if have is None or np.asarray(have, bool).all() else \
        b.const("have", np.asarray(have, bool).astype(np.float32))
    p = z if probabilities else b.op("Sigmoid", [z])
    last = gate is None and mask is None
    s = b.op("Gather", [p, b.const("i0", np.arange(0, 2 * K, 2))], OUTPUTS[0] if last else None, axis=1)
    if gate is not None:
        s = b.op("Mul", [s, gate], OUTPUTS[0] if mask is None else None)
    if mask is not None:
        s = b.op("Mul", [s, mask], OUTPUTS[0])
    v = b.op("Gather", [p, b.const("i1", np.arange(1, 2 * K, 2))], OUTPUTS[1] if mask is None else None, axis=1)
    if mask is not None:
        v = b.op("Mul", [v, mask], OUTPUTS[1])
    # ĉ = Σ v̂ŝ / Σ v̂, 0 where Σ v̂ = 0 (posecal.rescore.aggregate.instance_score, mode "visibility"); the
    # 0 / 0 there is discarded by the Where
    axes = b.const("axes", np.array([1], np.int64))
    num = b.op("ReduceSum", [b.op("Mul", [v, s]), axes], keepdims=0)
    den = b.op("ReduceSum", [v, axes], keepdims=0)
    pos = b.op("Greater", [den, b.const("zero", np.zeros((), np.float32))])
    c = b.op("Where", [pos, b.op("Div", [num, den]), b.const("zero", np.zeros((), np.float32))], OUTPUTS[2])
    return [s, v, c]


def _graft(b: _Builder, kind: str, arrs: dict[str, np.ndarray], K: int, pooling: str, jmap: np.ndarray,
           feat: str, feat_layout: str, feat_hw: tuple[int, int], feat_ndim: int, C: int,
           hm: str | None = None, hm_layout: str = "NCHW", hm_hw: tuple[int, int] | None = None, J: int = 0,
           evidence: str | None = None, opset: int = 13, rank: int = 0,
           fuse: Callable[[np.ndarray], str | None] | None = None, have: np.ndarray | None = None) -> list[str]:
    """Pooling + head + aggregation: the model's penultimate ``feat`` (C channels on an ``feat_hw`` grid, in
    ``feat_layout``) [and heatmaps ``hm`` (J maps on ``hm_hw``)] -> the three :data:`OUTPUTS`. ``have`` (K,) bool:
    the keypoints the model has (``jmap`` ≥ 0); the others get ŝ = v̂ = 0, as in ``posecal apply`` (None: the
    head's outputs as they are)."""
    if pooling == "heatmap":
        if hm is None or hm_hw is None:
            raise PosecalInputError("heatmap pooling needs the model's heatmap output", field="pooling")
        if kind not in ("kpt", "kpt_inst"):
            raise PosecalInputError(f"head {kind!r} cannot read heatmap-pooled features", field="head")
        if feat_ndim == 2:
            feat = b.op("Reshape", [feat, b.const("shape", np.array([0, C, 1, 1], np.int64))])
            feat_layout = "NCHW"
        f = _fold_kpt(arrs, K, evidence is not None)
        t, has_bias = _heatmap_kpt(b, feat, feat_layout, hm, hm_layout, feat_hw, hm_hw, jmap, J, f["W"], f["b"], opset,
                                   rank, fuse)
        z, gate = _kpt_logits(b, t, has_bias, kind, f, evidence)
        return _outputs(b, z, K, False, gate, have)
    if feat_layout != "NCHW":
        feat = b.op("Transpose", [feat], perm=[0, 3, 1, 2])
    x = _pool(b, feat, pooling, feat_hw, feat_ndim, C)
    if evidence is not None:  # gap features + the instance evidence (fc head)
        if pooling != "gap":
            raise PosecalInputError(f"the instance evidence is appended to gap or heatmap features, not {pooling!r}",
                                    field="pooling")
        x = b.op("Concat", [x, evidence], axis=1)
    z = _head(b, x, kind, arrs, K)
    return _outputs(b, z, K, kind == "conv_sigmoid_gap", None, have)


def _output_infos(K: int, batch: Any = "batch") -> list[Any]:
    import onnx

    TP = onnx.TensorProto
    return [onnx.helper.make_tensor_value_info(OUTPUTS[0], TP.FLOAT, [batch, K]),
            onnx.helper.make_tensor_value_info(OUTPUTS[1], TP.FLOAT, [batch, K]),
            onnx.helper.make_tensor_value_info(OUTPUTS[2], TP.FLOAT, [batch])]


def check_head_against_model(meta: dict[str, Any], head_dir: str | os.PathLike, adapter: Any,
                             model: str | os.PathLike, probe_features: np.ndarray, *,
                             allow_evidence: bool = False) -> tuple[str, np.ndarray]:
    """Compare a head's metadata with a model (adapter, file, probe features (1, C, h, w)); refuse a
    mismatch with :class:`PosecalInputError`. Returns (pooling, joint map model → head keypoint set).
    ``allow_evidence``: the caller computes the head's evidence columns itself (the studies do; a model
    graph cannot)."""
    from posecal.keypoints import keypoint_set_from_meta
    from posecal.models.adapters.joints import joint_map
    from posecal.models.store import file_sha256

    hfile = str(Path(head_dir) / "head.json")
    if meta.get("pooling") not in ("gap", "heatmap", "spatial"):
        raise PosecalInputError(f"pooling must be 'gap', 'heatmap' or 'spatial', got {meta.get('pooling')!r} (edited?)",
                                file=hfile, field="pooling")
    if meta.get("evidence") and not allow_evidence:
        raise PosecalInputError(f"the head also reads store evidence columns {list(meta['evidence'])}, which a "
                                "model graph does not compute; fit a features-only head (--head kpt --evidence none)",
                                file=hfile, field="evidence")
    diffs = []
    if meta.get("model_tensor") not in (None, adapter.tensor_name):
        diffs.append(f"model_tensor: head {meta.get('model_tensor')!r} vs model {adapter.tensor_name!r}")
    sha = file_sha256(model)
    if meta.get("model_sha256") not in (None, sha):
        diffs.append(f"model_sha256: head {meta.get('model_sha256')!r} vs model {sha!r}")
    from posecal.ccnet.targets import uses_evidence

    C = int(probe_features.shape[1])
    if uses_evidence(meta) and meta.get("pooling") == "heatmap":
        C += 6  # the instance evidence appended to the pooled features
    elif uses_evidence(meta) and meta.get("pooling") == "gap":
        C += int(meta["num_keypoints"]) + 5  # [s_1..s_K, mean, max, fraction, box, bbox_keypoint]
    if allow_evidence and meta.get("evidence"):
        from posecal.ccnet.targets import evidence_width

        C += evidence_width(list(meta["evidence"]), int(meta["num_keypoints"]))
    if int(meta.get("in_channels", -1)) != C:
        diffs.append(f"in_channels: head {meta.get('in_channels')} vs model tensor {C}")
    pooling = meta.get("pooling")
    if pooling == "spatial" and list(meta.get("feature_shape", []))[1:] != list(probe_features.shape[2:]):
        diffs.append(f"feature_shape: head {meta.get('feature_shape')} vs model "
                     f"{list(probe_features.shape[1:])}")
    if diffs:
        raise PosecalInputError("head does not fit this model: " + "; ".join(diffs), file=hfile)
    try:
        ks = keypoint_set_from_meta(meta)
    except KeyError as e:
        raise PosecalInputError(str(e.args[0]) if e.args else str(e), file=hfile, field="keypoint_set") from None
    if ks.num_keypoints != int(meta["num_keypoints"]):
        raise PosecalInputError("num_keypoints differs from the keypoint set", file=hfile,
                                field="num_keypoints")
    jmap = joint_map(adapter.joint_names, ks.names, allow_missing=True)
    _check_training_stores(meta, hfile, adapter, jmap)
    return str(pooling), jmap


def _check_training_stores(meta: dict[str, Any], hfile: str, adapter: Any, jmap: np.ndarray) -> None:
    """Cross-check a head with the stores it was fitted on (``train.stores``, as ``fit`` writes it; older heads:
    ``train.store``), where they are still readable: a flip-test store (also ``train.flip_test``) warns once, a
    store of another feature tensor or joint map is refused."""
    import orjson

    train = meta.get("train") if isinstance(meta.get("train"), dict) else {}
    stores = train.get("stores") if isinstance(train.get("stores"), list) else [train.get("store")]
    flip = isinstance(train.get("flip_test"), list) and True in train["flip_test"]
    for train_store in stores:
        if not isinstance(train_store, str) or not train_store or not Path(train_store, "meta.json").is_file():
            continue
        try:  # a cross-check only: the training store may since have been replaced, damaged or edited
            smeta = orjson.loads(Path(train_store, "meta.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            smeta = None
        if not isinstance(smeta, dict):
            smeta = {}
        flip = flip or bool(smeta.get("flip_test"))
        if smeta.get("model_sha256") == meta.get("model_sha256") and isinstance(smeta.get("tensor"), str) \
                and smeta["tensor"] != adapter.tensor_name:
            raise PosecalInputError(f"the head's training store {train_store} holds features of tensor "
                                    f"{smeta['tensor']!r}, not of {adapter.tensor_name!r} (edited?)", file=hfile,
                                    field="model_tensor")
        if isinstance(smeta.get("joint_map"), list) and smeta["joint_map"] != jmap.tolist():
            raise PosecalInputError(f"joint map of the training store {smeta['joint_map']} differs from the "
                                    f"model's {jmap.tolist()}", file=hfile)
    if flip:
        warnings.warn("the head was fitted on flip-test features; the exported graph computes "
                      "single-pass features", PosecalWarning, stacklevel=4)


def _graft_sources(adapter: Any) -> dict[str, Any]:
    """Where the graft reads: feature / heatmap tensors and their layouts, the input, keypoint scores."""
    card = getattr(adapter, "card", None)
    if card is None:  # generic ONNX heatmap model (posecal.models.adapters.onnx.OnnxAdapter)
        return {"feat": adapter.tensor_name, "feat_layout": "NCHW", "hm": adapter.output_name,
                "hm_layout": "NCHW", "input": adapter._input_name, "coords": None}
    out = card["output"]
    hm = card.get("heatmaps") or ({"name": out["name"], "layout": out["layout"]}
                                  if out["type"] == "heatmaps" else None)
    return {"feat": adapter.tensor_name,
            "feat_layout": adapter.feature_layout,  # another tensor (--tensor): its layout as the adapter read it
            "hm": hm["name"] if hm else None, "hm_layout": hm["layout"] if hm else "NCHW",
            "input": card["input"]["name"],
            "coords": out if out["type"] == "coordinates" else None}


def _keypoint_scores(b: _Builder, src: dict[str, Any], hm: str | None, jmap: np.ndarray, J: int,
                     opset: int) -> str:
    """The model's keypoint scores (B, K) in the dataset order, as the store's ``scores`` (0 for keypoints
    the model lacks): the score column of the coordinates output, or the heatmap maxima."""
    have = jmap >= 0
    jsel = np.where(have, jmap, 0).astype(np.int64)
    if src["coords"] is not None:  # (B, J·3) [x, y, score] per joint: one Gather picks and orders the scores
        v = b.op("Reshape", [src["coords"]["name"], b.const("shape", np.array([-1, J * 3], np.int64))])
        s = b.op("Gather", [v, b.const("score_idx", 3 * jsel + 2)], axis=1)
    elif src["hm_layout"] == "NCHW":  # the maxima (B, J, 1, 1) are shared with the pooling weights
        b.heatmap_max[hm] = _reduce(b, "ReduceMax", hm, [2, 3], 1, opset)
        s = b.op("Reshape", [b.heatmap_max[hm], b.const("shape", np.array([0, J], np.int64))])
    else:
        s = _reduce(b, "ReduceMax", hm, [1, 2], 0, opset)
    if src["coords"] is None and (len(jsel) != J or (jsel != np.arange(J)).any()):
        s = b.op("Gather", [s, b.const("joint_map", jsel)], axis=1)
    return b.op("Mul", [s, b.const("have", have.astype(np.float32))]) if not have.all() else s


def _to_opset13(m: Any, model: str | os.PathLike) -> Any:
    import onnx

    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= 13:
        return m
    # old exports (MXNet) write BatchNormalization spatial=0 with per-channel (C,) statistics, which
    # onnxruntime runs per channel; the converter insists on spatial=1, which means exactly that
    inits = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "BatchNormalization" and len(n.input) > 3 and len(getattr(inits.get(n.input[3]), "dims",
                                                                                  [0, 0])) == 1:
            keep = [a for a in n.attribute if a.name != "spatial"]
            del n.attribute[:]
            n.attribute.extend(keep)
    try:
        m = onnx.version_converter.convert_version(m, 13)
    except Exception as e:
        raise PosecalInputError(f"default-domain opset {opset} < 13 and the conversion failed ({e}): re-export "
                                "the model with opset >= 13", file=str(model), field="opset_import") from None
    # opset 13 needs IR >= 7, where weights still listed as graph inputs stop being constants (no Conv+BN
    # fusion: other numerics); IR 3 treats them as constants, so drop them from the inputs to keep the
    # original outputs bit-identical
    m.ir_version = max(m.ir_version, 7)
    inits = {i.name for i in m.graph.initializer}
    keep = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    return m


def _same_model(meta: dict[str, Any], head_dir: str | os.PathLike, model: str | os.PathLike) -> None:
    """A head fitted on stores of another model file is refused up front (its tensor may not exist here)."""
    from posecal.models.store import file_sha256

    want = meta.get("model_sha256")
    if not Path(model).is_file():  # a missing model is named when it is opened, after the head's own problems
        return
    if isinstance(want, str) and len(want) == 64 and file_sha256(model) != want:
        _check_readable(model)  # a damaged (e.g. truncated) copy of the right model: say that, not "another model"
        raise PosecalInputError(f"the head was fitted on another model (sha256 {want[:12]}…, tensor "
                                f"{meta.get('model_tensor')!r}), not on {Path(model).name}",
                                file=str(Path(head_dir) / "head.json"), field="model_sha256")


def _check_readable(model: str | os.PathLike) -> None:
    """Parse ``model`` as the format its content announces; one error line naming the file if it cannot be."""
    import zipfile

    from posecal.models.adapters.base import find_model_kind

    kind = find_model_kind(model)
    if kind == "onnx":
        import onnx

        try:
            proto = onnx.load_model(str(model), load_external_data=False)
        except Exception as e:
            raise PosecalInputError(f"not an ONNX model: {e}", file=str(model), field="--model") from None
        if not proto.graph.node:
            raise PosecalInputError("not an ONNX model (empty graph)", file=str(model), field="--model")
    elif kind == "tflite":
        from posecal.models.adapters.tflite import read_model

        read_model(Path(model).read_bytes(), file=str(model))
    elif not zipfile.is_zipfile(model):
        raise PosecalInputError("not a readable PyTorch archive", file=str(model), field="--model")


def _load_adapter(model: str | os.PathLike, meta: dict[str, Any], head_dir: str | os.PathLike, **kw: Any) -> Any:
    """:func:`posecal.models.adapters.base.load_adapter` at the head's ``model_tensor``; a tensor the model lacks
    is named as the head's field (export has no ``--tensor`` flag: the head chose the tensor)."""
    from posecal.models.adapters.base import load_adapter

    try:
        return load_adapter(model, tensor=meta.get("model_tensor"), **kw)
    except PosecalInputError as e:
        if e.field != "--tensor":
            raise
        raise PosecalInputError(f"the head's feature tensor {meta.get('model_tensor')!r} is not in the model "
                                f"{Path(model).name}: {e.message}", file=str(Path(head_dir) / "head.json"),
                                field="model_tensor") from None


def export_calibrated(model: str | os.PathLike, head_dir: str | os.PathLike, out: str | os.PathLike, *,
                      heatmap_output: str | None = None, fuse: bool = True,
                      model_card: str | os.PathLike | dict | None = None, input_size: Any = None) -> dict[str, Any]:
    """Graft the CCNet head in ``head_dir`` onto the ONNX ``model`` and write ``out`` (atomically).

    ``heatmap_output`` names the heatmap output used for heatmap pooling (default: the model card's, else
    the first 4-D output). A model with a card (:mod:`posecal.models.cards`) is read as the card says
    (NHWC heatmaps are transposed, NHWC feature maps too except for heatmap pooling). A graph with opset < 13 is
    converted to 13 first (its outputs are checked unchanged by the tests). A head that reads the instance
    evidence gets one more graph input, ``box_score (B,)`` float32 (1 for a gt box). ``fuse``: let the head's
    filters widen the model's own last Conv when the heatmaps are a plain 1×1 Conv of the feature tensor
    (:func:`_fuse_into_conv`, kept only if the model's outputs stay byte-identical); False leaves every node
    of the model untouched. ``model_card`` (a path or dict, :mod:`posecal.models.cards`) describes a model without
    a built-in card, as for ``posecal extract --model-card`` (a card whose ``sha256`` names another file is
    refused); ``input_size`` is passed to the adapter loading too (ignored for ONNX, with its warning). Returns a
    summary dict."""
    import onnx

    from posecal._util import write_bytes_atomic
    from posecal.ccnet.targets import uses_evidence
    from posecal.models.adapters.base import find_model_kind
    from posecal.models.adapters.onnx import OnnxAdapter

    if find_model_kind(model) != "onnx":
        raise PosecalInputError("not an ONNX model: use export_head_only for TFLite models", file=str(model),
                                field="--model")
    arrs, meta = head_arrays(head_dir)
    _same_model(meta, head_dir, model)
    adapter = _load_adapter(model, meta, head_dir, model_card=model_card, input_size=input_size)
    if heatmap_output is not None or not hasattr(adapter, "card"):
        adapter = OnnxAdapter(model, tensor=meta.get("model_tensor"), output=heatmap_output)
    src = _graft_sources(adapter)
    W, H = adapter.input_size
    probe = adapter.predict(np.zeros((1, H, W, 3), np.uint8))
    pooling, jmap = check_head_against_model(meta, head_dir, adapter, model, probe.features)
    original = _to_opset13(onnx.load_model(str(model)), model)
    opset = next((o.version for o in original.opset_import if o.domain in ("", "ai.onnx")), 0)
    names = {o for n in original.graph.node for o in n.output} | {i.name for i in original.graph.input}
    clash = [o for o in (*OUTPUTS, "box_score") if o in names or o in {x.name for x in original.graph.output}]
    if clash:
        raise PosecalInputError(f"the model already has tensor(s) {', '.join(clash)}", file=str(model))
    feat_ndim = 4
    if not hasattr(adapter, "card"):
        raw = adapter.session.run([adapter.tensor_name], {adapter._input_name: np.zeros((1, 3, H, W), np.float32)})
        feat_ndim = raw[0].ndim
    if feat_ndim not in (2, 4):
        raise PosecalInputError(f"feature tensor {adapter.tensor_name!r} has {feat_ndim} axes (need 2 or 4)",
                                file=str(model), field="model_tensor")
    K = int(meta["num_keypoints"])
    hm = src["hm"]
    batch = original.graph.input[0].type.tensor_type.shape.dim[0]
    batch = batch.dim_param or batch.dim_value or "batch"
    rank = filter_rank(meta, head_dir)

    def build(fuse_ok: bool) -> tuple[Any, _Builder, bool]:
        m = onnx.ModelProto()
        m.CopyFrom(original)
        b = _Builder(PREFIX)
        fused: list[bool] = []

        def fuse(Bm: np.ndarray) -> str | None:
            g = _fuse_into_conv(m, src["feat"], hm, Bm, PREFIX) if fuse_ok and hm else None
            fused.append(g is not None)
            return g

        ev = None
        if uses_evidence(meta) and pooling in ("heatmap", "gap"):
            m.graph.input.append(onnx.helper.make_tensor_value_info("box_score", onnx.TensorProto.FLOAT, [batch]))
            sc = _keypoint_scores(b, src, hm, jmap, len(adapter.joint_names), opset)
            ev = (_evidence if pooling == "heatmap" else _evidence_flat)(b, sc, "box_score", opset)
        _graft(b, str(meta["head"]), arrs, K, pooling, jmap, src["feat"], src["feat_layout"],
               tuple(probe.features.shape[2:]), feat_ndim, int(probe.features.shape[1]), hm, src["hm_layout"],
               None if probe.heatmaps is None else tuple(probe.heatmaps.shape[2:]),
               0 if probe.heatmaps is None else int(probe.heatmaps.shape[1]), ev, opset, rank, fuse, have=jmap >= 0)
        m.graph.node.extend(b.nodes)
        m.graph.initializer.extend(b.inits)
        m.graph.output.extend(_output_infos(K, batch))
        return m, b, any(fused)

    try:
        m, b, fused = build(fuse)
    except PosecalInputError as e:  # the head's own arrays disagree with its metadata: name the head
        if e.file is not None:
            raise
        raise PosecalInputError(e.message, file=str(Path(head_dir) / "head.json"), record=e.record,
                                field=e.field) from None
    if fused and not _same_outputs(original, m):  # the widened Conv changed the model's own outputs: keep it
        m, b, fused = build(False)
    m.metadata_props.add(key="posecal_ccnet_head", value=str(meta["head"]))
    m.metadata_props.add(key="posecal_keypoint_set", value=str(meta.get("keypoint_set")))
    m.metadata_props.add(key="posecal_pooling", value=pooling)
    for k, v in _extra_meta(meta).items():
        m.metadata_props.add(key=k, value=v)
    if meta.get("context") is not None:
        m.metadata_props.add(key="posecal_context_stage", value=CONTEXT_NOTE)
    onnx.checker.check_model(m)
    write_bytes_atomic(out, m.SerializeToString())
    make_shareable(out)
    out_meta = {"out": str(out), "outputs": [o.name for o in m.graph.output], "K": K, "pooling": pooling,
                "head": meta["head"], "model_tensor": adapter.tensor_name, "added_nodes": len(b.nodes),
                "mode": "grafted", "inputs": [i.name for i in m.graph.input if i.name not in
                                              {t.name for t in m.graph.initializer}],
                "opset": opset, "filter_rank": rank, "fused_into_model_conv": fused,
                "keypoint_names": _keypoint_names(meta)}
    if meta.get("box_score") is True:
        out_meta["box_score_note"] = BOX_SCORE_NOTE
    if meta.get("context") is not None:
        out_meta["context_stage"] = CONTEXT_NOTE
    return out_meta


BOX_SCORE_NOTE = ("the head was fitted with --box-score: posecal apply multiplies instance_confidence by the "
                  "detector's box score, the graph does not; multiply it outside the graph to get apply's score")


def _extra_meta(meta: dict[str, Any]) -> dict[str, str]:
    """Metadata both exports record besides the head kind, keypoint set and pooling: the names of the K output
    keypoints in order (``posecal_keypoint_names``, comma-separated), their OKS sigmas in the same order
    (``posecal_keypoint_sigmas``, comma-separated ``repr`` floats: ŝ is an expected OKS under these, and a custom
    skeleton's are the user's ``--sigmas``) and, for a ``fit --box-score`` head, the rule that apply's instance
    score is ĉ × the box score (``posecal_box_score``)."""
    from posecal.keypoints import keypoint_set_from_meta

    extra = {"posecal_keypoint_names": ",".join(_keypoint_names(meta)),
             "posecal_keypoint_sigmas": ",".join(repr(float(v)) for v in keypoint_set_from_meta(meta).sigmas)}
    if meta.get("box_score") is True:
        extra["posecal_box_score"] = BOX_SCORE_NOTE
    return extra


def _keypoint_names(meta: dict[str, Any]) -> list[str]:
    """The head's K keypoint names, the order of its outputs (the head was checked against its set before)."""
    from posecal.keypoints import keypoint_set_from_meta

    return list(keypoint_set_from_meta(meta).names)


def _heatmap_source(adapter: Any) -> str:
    """The model tensor a head-only ONNX's ``heatmaps`` input comes from (for the summary and its metadata)."""
    tfl = getattr(adapter, "_pool_out", None)  # TFLite: the heatmap output at the feature grid
    if isinstance(tfl, str):
        return tfl
    if str(getattr(adapter, "kind", "")).startswith("torch"):  # PyTorch: the card's output.name is not read
        return "the model's (first) output"
    if hasattr(adapter, "card") or hasattr(adapter, "output_name"):
        return str(_graft_sources(adapter)["hm"])
    return "the model's heatmap output"


CONTEXT_NOTE = ("not in the graph: instance_confidence is the head's score of one crop; the head's context stage "
                "(learned NMS over all detections of an image, posecal.ccnet.context) runs after it, as posecal "
                "apply does: ContextStage.transform(instance_confidence, context_features(...)), then "
                "posecal.rescore.order.keep_image_order unless apply --reorder")


def export_head_only(model: str | os.PathLike, head_dir: str | os.PathLike, out: str | os.PathLike, *,
                     model_card: str | os.PathLike | dict | None = None, input_size: Any = None) -> dict[str, Any]:
    """Head-only ONNX for a model that cannot be grafted (TFLite): inputs ``features (B, C, h, w)``
    float32 channels-first [and ``heatmaps (B, J, h', w')`` for heatmap pooling], outputs :data:`OUTPUTS`.
    ``model`` is opened once (:func:`posecal.models.adapters.base.load_adapter` with ``model_card`` and, for a
    TorchScript ``.pt``, ``input_size`` (W, H)) to check the head against it and to read the joint order and
    grid sizes."""
    import onnx

    from posecal._util import write_bytes_atomic
    from posecal.ccnet.targets import uses_evidence
    from posecal.models.adapters.base import find_model_kind

    arrs, meta = head_arrays(head_dir)
    _same_model(meta, head_dir, model)  # another model's head: say that first
    evidence = uses_evidence(meta) and meta.get("pooling") in ("heatmap", "gap")
    if meta.get("head") == "kpt_inst" or evidence:
        hfile = str(Path(head_dir) / "head.json")
        try:
            kind = find_model_kind(model)
        except PosecalInputError:  # a missing model is named when it is opened, after the head's own problems
            kind = None
        if kind != "onnx":  # nothing to graft onto: name what can be exported
            what = ("also reads the instance evidence (keypoint-score statistics and the box score)" if evidence else
                    "has an instance gate (fitted for the instance evidence)")
            raise PosecalInputError(f"this {meta.get('head')!r} head {what}, which a head-only ONNX does not take, "
                                    f"and {Path(model).name} cannot be grafted: fit a --head kpt (or --head fc on a "
                                    "gap store) head to export it", file=hfile, field="head")
        raise PosecalInputError(f"this {meta.get('head')!r} head also reads the instance evidence (keypoint-score "
                                "statistics and the box score; its model card asks for it), which a head-only "
                                "ONNX does not take: graft it onto the ONNX model (posecal export without "
                                "--head-only); --head-only is for models that cannot be grafted (TFLite)",
                                file=hfile, field="head")
    adapter = _load_adapter(model, meta, head_dir, model_card=model_card, input_size=input_size)
    probe = adapter.predict(np.zeros((1, adapter.input_size[1], adapter.input_size[0], 3), np.uint8))
    pooling, jmap = check_head_against_model(meta, head_dir, adapter, model, probe.features)
    K, C = int(meta["num_keypoints"]), int(probe.features.shape[1])
    TP = onnx.TensorProto
    inputs = [onnx.helper.make_tensor_value_info("features", TP.FLOAT, ["batch", *probe.features.shape[1:]])]
    use_hm = pooling == "heatmap"
    if use_hm:
        if probe.heatmaps is None:
            raise PosecalInputError("heatmap pooling needs a heatmap model", file=str(model))
        inputs.append(onnx.helper.make_tensor_value_info("heatmaps", TP.FLOAT,
                                                         ["batch", *probe.heatmaps.shape[1:]]))
    b = _Builder(PREFIX)
    rank = filter_rank(meta, head_dir)
    _graft(b, str(meta["head"]), arrs, K, pooling, jmap, "features", "NCHW", tuple(probe.features.shape[2:]), 4, C,
           "heatmaps" if use_hm else None, "NCHW", tuple(probe.heatmaps.shape[2:]) if use_hm else None,
           int(probe.heatmaps.shape[1]) if use_hm else 0, opset=HEAD_ONLY_OPSET, rank=rank, have=jmap >= 0)
    g = onnx.helper.make_graph(b.nodes, "posecal_ccnet_head", inputs, _output_infos(K), b.inits)
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", HEAD_ONLY_OPSET)],
                               producer_name="posecal")
    m.ir_version = 8
    for k, v in (("posecal_ccnet_head", meta["head"]), ("posecal_keypoint_set", meta.get("keypoint_set")),
                 ("posecal_pooling", pooling), ("posecal_model_tensor", adapter.tensor_name),
                 ("posecal_joint_order", ",".join(adapter.joint_names)), *_extra_meta(meta).items(),
                 *((("posecal_heatmap_tensor", _heatmap_source(adapter)),) if use_hm else ())):
        m.metadata_props.add(key=k, value=str(v))
    if meta.get("context") is not None:
        m.metadata_props.add(key="posecal_context_stage", value=CONTEXT_NOTE)
    onnx.checker.check_model(m)
    write_bytes_atomic(out, m.SerializeToString())
    make_shareable(out)
    res = {"out": str(out), "inputs": [i.name for i in inputs], "outputs": list(OUTPUTS), "K": K,
           "pooling": pooling, "head": meta["head"], "model_tensor": adapter.tensor_name,
           "added_nodes": len(b.nodes), "mode": "head-only", "filter_rank": rank,
           "fused_into_model_conv": False, "keypoint_names": _keypoint_names(meta),
           "joint_order": list(adapter.joint_names)}
    if use_hm:
        res["heatmap_tensor"] = _heatmap_source(adapter)
    if meta.get("box_score") is True:
        res["box_score_note"] = BOX_SCORE_NOTE
    if meta.get("context") is not None:
        res["context_stage"] = CONTEXT_NOTE
    return res


def run_two_stage(adapter: Any, session: Any, crops: np.ndarray) -> dict[str, np.ndarray]:
    """Run a (TFLite) adapter on ``crops (B, H, W, 3) uint8`` and a head-only ONNX ``session`` on its
    penultimate features (and heatmaps): the model's ``ModelOutput`` fields plus the three head outputs."""
    out = adapter.predict(crops)
    feeds = {"features": np.ascontiguousarray(out.features, np.float32)}
    if any(i.name == "heatmaps" for i in session.get_inputs()):
        feeds["heatmaps"] = np.ascontiguousarray(out.heatmaps, np.float32)
    res = dict(zip(OUTPUTS, session.run(list(OUTPUTS), feeds), strict=True))
    return {"coords": out.coords, "scores": out.scores, **res}


def export(model: str | os.PathLike, head_dir: str | os.PathLike, out: str | os.PathLike, *,
           fuse: bool = True, model_card: str | os.PathLike | dict | None = None,
           input_size: Any = None) -> dict[str, Any]:
    """ONNX model → :func:`export_calibrated` (``fuse`` passed on); TFLite or torch → :func:`export_head_only`;
    ``model_card`` and ``input_size`` go to the adapter loading of either."""
    from posecal.models.adapters.base import find_model_kind

    if find_model_kind(model) == "onnx":
        return export_calibrated(model, head_dir, out, fuse=fuse, model_card=model_card, input_size=input_size)
    return export_head_only(model, head_dir, out, model_card=model_card, input_size=input_size)
