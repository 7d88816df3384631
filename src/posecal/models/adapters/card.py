"""ONNX pose models described by a model card (:mod:`posecal.models.cards`): no per-model code.

The card names the input (layout, dtype, size, colour, normalisation, fixed batch), the keypoint output
(heatmaps decoded by :func:`posecal.theory.heatmap.decode_argmax`, or coordinates + scores normalised to the
input frame), the heatmaps for σ̂ and pooling, and the feature tensor. Tensors the graph does not list as
outputs are added as extra outputs (``onnx``); weights listed as graph inputs (old exports) are dropped from
``graph.input``; a model whose batch is fixed at 1 is run one crop at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError
from posecal.models.adapters.base import ModelOutput, decode_heatmaps


def _joint_names(card: dict[str, Any]) -> tuple[str, ...]:
    kp = card["keypoints"]
    if isinstance(kp, list):
        return tuple(kp)
    if kp == "blazepose33":  # allowed by validate_card: BlazePose's joint order (no posecal keypoint set)
        from posecal.models.adapters.joints import BLAZEPOSE33

        return BLAZEPOSE33
    from posecal.keypoints import get_keypoint_set

    return tuple(get_keypoint_set(kp).names)


def _to_nchw(a: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2))) if layout == "NHWC" else a


def prepare_input(crops: np.ndarray, inp: dict[str, Any]) -> np.ndarray:
    """(B, H, W, 3) uint8 RGB -> the model input as the card's ``input`` describes it."""
    x = np.asarray(crops)
    if inp["color"] == "BGR":
        x = x[..., ::-1]
    if inp["dtype"] in ("int32", "uint8") and inp.get("scale", 1.0) == 1.0 and not any(inp["mean"]) \
            and all(s == 1 for s in inp["std"]):
        x = x.astype(inp["dtype"])
    else:
        x = x.astype(np.float32) * np.float32(inp.get("scale", 1.0))
        x = ((x - np.asarray(inp["mean"], np.float32)) / np.asarray(inp["std"], np.float32)).astype(inp["dtype"])
    if inp["layout"] == "NCHW":
        x = np.transpose(x, (0, 3, 1, 2))
    return np.ascontiguousarray(x)


def open_session(path: str | os.PathLike, extra_outputs: list[str], num_threads: int | None = None,
                 named_by: dict[str, str] | None = None):
    """An onnxruntime session of ``path`` with ``extra_outputs`` exposed (and initializers out of the inputs).
    ``named_by`` maps a tensor name to the flag that named it (default ``--model-card``), for the error."""
    import onnx
    import onnxruntime as ort

    try:
        model = onnx.load_model(str(path))
    except Exception as e:
        raise PosecalInputError(f"not an ONNX model: {e}", file=str(path), field="--model") from None
    g = model.graph
    if not g.node:  # an empty file parses as an empty ModelProto
        raise PosecalInputError("not an ONNX model (empty graph)", file=str(path), field="--model")
    inits = {i.name for i in g.initializer}
    keep = [i for i in g.input if i.name not in inits]
    if len(keep) != len(g.input):
        del g.input[:]
        g.input.extend(keep)
    values = {o for n in g.node for o in n.output} | {i.name for i in g.input}
    outs = {o.name for o in g.output}
    for t in extra_outputs:
        if t in outs:
            continue
        if t not in values:
            flag = (named_by or {}).get(t, "--model-card")
            raise PosecalInputError(f"the model has no tensor {t!r}"
                                    + (" named by its card" if flag == "--model-card" else ""), file=str(path),
                                    field=flag)
        g.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
        outs.add(t)
    so = ort.SessionOptions()
    if num_threads:
        so.intra_op_num_threads = num_threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


class CardAdapter:
    """A :class:`posecal.models.adapters.base.PoseAdapter` for an ONNX pose model and its card."""

    def __init__(self, path: str | os.PathLike, card: dict[str, Any], *, tensor: str | None = None,
                 num_threads: int | None = None):
        self.path = Path(path)
        self.card = card
        self.kind = card["name"]
        inp = card["input"]
        self.input_size = (int(inp["size"][0]), int(inp["size"][1]))
        self.joint_names = _joint_names(card)
        feat = card.get("features")
        if tensor is None and feat is None:
            raise PosecalInputError("the model card names no feature tensor; give --tensor", file=str(path),
                                    field="--tensor")
        self.tensor_name = tensor or feat["name"]
        out = card["output"]
        hm = card.get("heatmaps") or (
            {"name": out["name"], "layout": out["layout"]} if out["type"] == "heatmaps" else None)
        # another tensor (--tensor) of the same graph is in the graph's own layout: the card's feature tensor's,
        # else its heatmaps', else its input's (a channels-last TF export stays channels-last throughout)
        self._feat_layout = self.feature_layout = (feat or hm or card["input"])["layout"]
        self._hm = hm
        names = [out["name"], self.tensor_name] + ([hm["name"]] if hm else [])
        self._fetch = list(dict.fromkeys(names))
        self.session = open_session(self.path, self._fetch, num_threads,
                                    named_by={tensor: "--tensor"} if tensor else None)
        self._batch = inp.get("batch")
        self.preprocessing = {k: inp[k] for k in ("layout", "dtype", "color", "scale", "mean", "std")}
        self.preprocessing["card"] = card["name"]
        if tensor is not None and tensor != (feat or {}).get("name"):
            self._infer_tensor_layout()
        self._dry_run()

    def _infer_tensor_layout(self) -> None:
        """A ``--tensor`` other than the card's: its layout from its shape where the shape tells — the pair of
        axes whose ratio is the input's H/W is the spatial one (a graph can mix layouts, e.g. MoveNet's raw NCHW
        maps beside its NHWC features); else the graph's (the card's feature, heatmap or input layout)."""
        W, H = self.input_size
        try:
            raw = self._run(prepare_input(np.zeros((1, H, W, 3), np.uint8), self.card["input"]))
        except Exception:  # noqa: BLE001 - a card that does not fit the model is named by _dry_run
            return
        shape = np.shape(raw[self._fetch.index(self.tensor_name)])
        if len(shape) != 4:
            return
        _, a, b, c = shape
        nhwc, nchw = a * W == b * H and a > 1, b * W == c * H and b > 1
        if nhwc != nchw:
            self._feat_layout = self.feature_layout = "NHWC" if nhwc else "NCHW"

    def _dry_run(self) -> None:
        """Run blank crops once (two when the card says the batch is free), so a card that does not fit the
        model (input name, size, layout, dtype, batch, output shapes) fails here in one line, before a store
        is created."""
        n = 1 if self._batch == 1 else 2
        W, H = self.input_size
        try:
            o = self.predict(np.zeros((n, H, W, 3), np.uint8))
        except PosecalInputError:
            raise
        except Exception as e:  # onnxruntime's error types, reshape/index errors of a mismatched card
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PosecalInputError(f"the model does not run as its card describes: {msg[:300]}",
                                    file=str(self.path), field="--model-card") from None
        J = len(self.joint_names)
        if o.coords.shape != (n, J, 2) or (o.heatmaps is not None and o.heatmaps.shape[:2] != (n, J)):
            got = o.heatmaps.shape if o.heatmaps is not None else o.coords.shape
            raise PosecalInputError(f"the card lists {J} keypoints but the model's output has shape {got}",
                                    file=str(self.path), field="--model-card")

    def feature_candidates(self) -> list[str]:
        return [self.tensor_name]

    @property
    def info(self) -> dict[str, Any]:
        return {"backend": "onnx", "kind": self.kind, "output": self.card["output"]["name"]}

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        name = self.card["input"]["name"]
        if self._batch == 1 and x.shape[0] != 1:
            parts = [self.session.run(self._fetch, {name: x[i:i + 1]}) for i in range(x.shape[0])]
            return [np.concatenate([p[j] for p in parts]) for j in range(len(self._fetch))]
        return self.session.run(self._fetch, {name: x})

    def predict(self, crops: np.ndarray) -> ModelOutput:
        """crops (B, H, W, 3) uint8 RGB -> ModelOutput in input px (pixel centres at integers)."""
        got = dict(zip(self._fetch, self._run(prepare_input(crops, self.card["input"])), strict=True))
        out = self.card["output"]
        B, J = crops.shape[0], len(self.joint_names)
        hms = _to_nchw(got[self._hm["name"]], self._hm["layout"]) if self._hm else None
        if out["type"] == "heatmaps":
            coords, scores = decode_heatmaps(hms, self.input_size, subpixel=bool(out.get("subpixel")))
        else:
            v = np.asarray(got[out["name"]], np.float64).reshape(B, J, -1)
            xy = v[..., [1, 0]] if out["order"] == "yxs" else v[..., :2]
            if out.get("normalised", True):
                xy = xy * np.array(self.input_size, np.float64) - 0.5  # [0, 1] of the frame -> px centres
            coords, scores = xy, v[..., 2]
        feats = _to_nchw(np.asarray(got[self.tensor_name], np.float32), self._feat_layout)
        if feats.ndim == 2:
            feats = feats[:, :, None, None]
        return ModelOutput(coords=coords, scores=np.asarray(scores, np.float64), features=feats,
                           heatmaps=None if hms is None else np.asarray(hms, np.float32))
