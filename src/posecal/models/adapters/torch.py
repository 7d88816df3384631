"""PyTorch backend: a heatmap ``nn.Module`` ``(B, 3, H, W) -> (B, J, h, w)``; features by forward hook.

Tensor names: ``"NAME"`` is the output of submodule NAME, ``"NAME:input"`` its (first) input (a forward
pre-hook). Default: the input of the last 1×1 ``Conv2d`` / ``Linear`` whose output is the model output
(found by tracing one forward pass); for MMPose top-down models ``head.final_layer:input``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError
from posecal.models.adapters.base import (
    ModelOutput,
    decode_heatmaps,
    joint_order_error,
    keypoint_sets_with,
)
from posecal.models.adapters.generic import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    default_joint_names,
    preprocess_nchw,
    preprocessing_info,
)

MMPOSE_DEFAULT_TENSOR = "head.final_layer:input"


def heatmap_output(out: Any, model_file: str | None = None) -> Any:
    """The heatmaps of a module's output: a tensor, or the first element of a tuple/list; anything else (a
    dict, None) is one error naming ``model_file`` (the in-memory module when None)."""
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not hasattr(out, "ndim"):
        what = (f"a dict (keys: {_show([str(k) for k in out], 5)})" if isinstance(out, dict)
                else f"a {type(out).__name__}")
        raise PosecalInputError(f"the model returns {what}; posecal reads its heatmaps (B, J, h, w): a tensor, or "
                                "a tuple/list whose first element is one (wrap the module to return that)",
                                file=model_file, field="--model")
    return out


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
                 std: Sequence[float] = IMAGENET_STD, num_threads: int | None = None,
                 input_spec: dict[str, Any] | None = None, subpixel: bool = False, heatmap_layout: str = "NCHW",
                 feature_layout: str = "NCHW", model_file: str | os.PathLike | None = None):
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        self.module = module.eval()
        self._model_file = model_file
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self._input = None
        if input_spec is not None:  # a model card's input: colour order, scale, mean, std (NCHW float32)
            self._input = {"layout": "NCHW", "dtype": "float32", "color": input_spec.get("color", "RGB"),
                           "scale": input_spec.get("scale", 1.0), "mean": list(input_spec["mean"]),
                           "std": list(input_spec["std"])}
            mean, std = input_spec["mean"], input_spec["std"]
        self.mean, self.std = tuple(mean), tuple(std)
        self.preprocessing = dict(self._input) if self._input else preprocessing_info(self.mean, self.std)
        self._subpixel = bool(subpixel)
        self._hm_nhwc, self._feat_nhwc = heatmap_layout == "NHWC", feature_layout == "NHWC"
        self.kind = "torch-heatmap"
        mods = dict(module.named_modules())
        self._cands = [f"{n}:input" for n, m in mods.items() if n and _is_head_layer(m)]
        if tensor is None:
            tensor = MMPOSE_DEFAULT_TENSOR if "head.final_layer" in mods else self._discover()
        name, _, which = tensor.partition(":")
        if name not in mods or which not in ("", "input"):
            others = [n for n in reversed(list(mods)) if n and f"{n}:input" not in self._cands]
            shown = (self._cands + others)[:10]
            more = len(self._cands) + len(others) - len(shown)
            raise PosecalInputError(f"unknown tensor {tensor!r}; candidates: " + ", ".join(shown)
                                    + (f" (+{more} more)" if more > 0 else "")
                                    + " (any module name: its output, or with ':input' its input)",
                                    field="--tensor")
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
        if hm.ndim != 4:
            raise PosecalInputError(f"the model output has shape {tuple(hm.shape)}, expected heatmaps "
                                    + ("(B, h, w, J)" if self._hm_nhwc else "(B, J, h, w)"),
                                    file=None if model_file is None else str(model_file), field="--model")
        J = int(hm.shape[-1] if self._hm_nhwc else hm.shape[1])
        if joint_names is None and model_file is not None and len(keypoint_sets_with(J)) != 1:
            raise joint_order_error(model_file, J)  # which keypoints? say how to tell: a model card
        self.joint_names = default_joint_names(J, joint_names)

    def _forward(self, x):
        mf = getattr(self, "_model_file", None)
        return heatmap_output(self.module(x), None if mf is None else str(mf))

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

        if self._input is not None:
            from posecal.models.adapters.card import prepare_input

            x = torch.from_numpy(prepare_input(crops, self._input))
        else:
            x = torch.from_numpy(preprocess_nchw(crops, self.mean, self.std))
        self._feat.clear()
        with torch.no_grad():
            hm = self._forward(x).float().numpy()
        feat = self._feat[-1].float().numpy()
        self._feat.clear()
        if self._hm_nhwc:
            hm = np.ascontiguousarray(np.moveaxis(hm, -1, 1))
        if self._feat_nhwc and feat.ndim == 4:
            feat = np.moveaxis(feat, -1, 1)
        if feat.ndim == 2:
            feat = feat[:, :, None, None]
        coords, scores = decode_heatmaps(hm, self.input_size, subpixel=self._subpixel)
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




def card_settings(card: dict[str, Any], card_file: str) -> dict[str, Any]:
    """What a PyTorch model takes from its model card (:mod:`posecal.models.cards`, already validated):
    the keypoint order, the input normalisation (``color``, ``scale``, ``mean``, ``std``) and ``size``, the
    heatmap output's layout and ``subpixel`` decoding, and the feature tensor (a module name, ``NAME`` or
    ``NAME:input``, for a torch.export program; a tensor of the ONNX conversion for TorchScript). The
    module's one positional input and its (first) output are used whatever ``input.name`` and
    ``output.name`` say. What the torch adapter cannot follow is refused: ``card_file`` and the field named.
    """
    out, inp = card["output"], card["input"]
    if out["type"] != "heatmaps":
        raise PosecalInputError(f"{out['type']!r}: a PyTorch model is read as a heatmap model (argmax decoding); "
                                "a model that outputs coordinates needs its ONNX export with this card",
                                file=card_file, field="output.type")
    if card.get("heatmaps") is not None:
        raise PosecalInputError("a PyTorch model's output is its heatmaps: set this to null", file=card_file,
                                field="heatmaps")
    if inp["layout"] != "NCHW":
        raise PosecalInputError(f"{inp['layout']!r}: a PyTorch model is fed (B, 3, H, W) crops (NCHW)",
                                file=card_file, field="input.layout")
    if inp["dtype"] != "float32":
        raise PosecalInputError(f"{inp['dtype']!r}: a PyTorch model is fed float32 crops", file=card_file,
                                field="input.dtype")
    if card.get("backend_kind"):
        raise PosecalInputError(f"{card['backend_kind']!r} selects a TFLite backend; a PyTorch model is run by "
                                "the torch heatmap adapter: drop it", file=card_file, field="backend_kind")
    feat = card.get("features")
    return {"joint_names": card_joint_names(card), "input_spec": inp, "size": tuple(int(v) for v in inp["size"]),
            "batch": inp.get("batch"), "subpixel": bool(out.get("subpixel")), "heatmap_layout": out["layout"],
            "tensor": feat["name"] if feat else None, "feature_layout": feat["layout"] if feat else "NCHW"}


def card_joint_names(card: dict[str, Any]) -> tuple[str, ...]:
    """A pose card's ``keypoints``: a known set's names or the listed names, in the model's channel order."""
    kp = card["keypoints"]
    if isinstance(kp, list):
        return tuple(kp)
    if kp == "blazepose33":
        from posecal.models.adapters.joints import BLAZEPOSE33

        return BLAZEPOSE33
    from posecal.keypoints import get_keypoint_set

    return tuple(get_keypoint_set(kp).names)


def _ignored(flags: list[str], what: str, why: str) -> None:
    import warnings

    from posecal.errors import PosecalWarning

    if flags:
        warnings.warn(f"{', '.join(flags)}: ignored for {what} ({why})", PosecalWarning, stacklevel=3)


def _show(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit]) or "none"
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def load_torch_model(path: str | os.PathLike, *, tensor: str | None = None, num_threads: int | None = None,
                     input_size: Sequence[int] | None = None, model_kind: str | None = None,
                     card: dict[str, Any] | None = None, card_file: str | os.PathLike | None = None,
                     joint_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> Any:
    """Open a PyTorch heatmap model file ``(B, 3, H, W) -> (B, J, h, w)``.

    * ``torch.export`` program (``torch.export.save``, .pt2): the input size comes from its example
      input (``input_size`` is ignored, with a warning); it is unflattened (``torch.export.unflatten``) so the
      feature is read by a forward hook, as :class:`TorchAdapter` does for an in-memory module.
    * TorchScript (``torch.jit.save``, .pt): ScriptModules take no hooks, so the module is converted in
      memory to ONNX (TorchScript exporter) and run by :class:`posecal.models.adapters.onnx.OnnxAdapter`
      (same feature discovery; tensors are named as in that conversion), or, with a card, by
      :class:`posecal.models.adapters.card.CardAdapter`. A TorchScript archive records no input size: give
      ``input_size`` (W, H) or a card with ``input.size``.

    ``card``: the model card (validated; :func:`card_settings` says what is read and what is refused),
    ``card_file`` the file it came from, named in errors. Without a card, ``joint_names``, ``mean`` and
    ``std`` may be given as to :class:`TorchAdapter`. ``model_kind`` is ignored (a warning).

    A plain ``torch.save`` checkpoint (a pickle) is refused: posecal never unpickles.
    """
    import torch

    p = Path(path)
    kind = torch_archive_kind(p)
    if kind is None:
        raise PosecalInputError("not a TorchScript archive (torch.jit.save) nor a torch.export program "
                                "(torch.export.save); pickled checkpoints are not loaded", file=str(p),
                                field="--model")
    cf = str(card_file) if card_file is not None else str(p)
    cs = card_settings(card, cf) if card is not None else None
    given = {k: v for k, v in (("joint_names", joint_names), ("mean", mean), ("std", std)) if v is not None}
    if cs is not None:
        given = {"joint_names": cs["joint_names"]}
    # the feature tensor: --tensor, else the card's; the card's layout applies to the card's tensor only
    t_from_card = tensor is None and cs is not None and cs["tensor"] is not None
    t = tensor if tensor is not None else (cs["tensor"] if cs is not None else None)
    feat_layout = cs["feature_layout"] if cs is not None and t == cs["tensor"] else "NCHW"
    t_file, t_field = (cf, "features.name") if t_from_card else (str(p), "--tensor")
    if kind == "export":
        _ignored([f for f, v in (("--input-size", input_size), ("--model-kind", model_kind)) if v is not None],
                 "a torch.export program", "its input size is the one it was exported with, its decoding "
                 "heatmap argmax; describe the model with --model-card")
        return _load_export(p, t, t_file, t_field, num_threads, cs, cf, given, feat_layout, card)
    _ignored(["--model-kind"] if model_kind is not None else [], "a TorchScript model",
             "it is run as a heatmap model; describe it with --model-card")
    if cs is not None and input_size is not None and tuple(int(v) for v in input_size) != cs["size"]:
        raise PosecalInputError(f"[{cs['size'][0]}, {cs['size'][1]}] differs from --input-size "
                                f"{input_size[0]} {input_size[1]}; give one of them or make them agree",
                                file=cf, field="input.size")
    if input_size is None and cs is None:
        raise PosecalInputError("a TorchScript model records no input size: give --input-size W H (or a "
                                "--model-card with input.size)", file=str(p), field="--input-size")
    W, H = (int(v) for v in (input_size if input_size is not None else cs["size"]))
    try:
        module = torch.jit.load(str(p), map_location="cpu").eval()
    except Exception as e:
        raise PosecalInputError(f"cannot load the TorchScript model: {_first_line(e)}", file=str(p),
                                field="--model") from None
    return _load_script(p, module, (W, H), t, t_file, t_field, num_threads, cs, cf, card, given,
                        feat_layout)


def _load_export(p: Path, t, t_file, t_field, num_threads, cs, cf, given, feat_layout, card) -> TorchAdapter:
    import torch

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
    size = (int(shape[3]), int(shape[2]))
    if cs is not None and cs["size"] != size:
        raise PosecalInputError(f"[{cs['size'][0]}, {cs['size'][1]}], but the torch.export program {p.name} "
                                f"was exported for (B, 3, {size[1]}, {size[0]}) crops, i.e. [{size[0]}, "
                                f"{size[1]}]", file=cf, field="input.size")
    extra = {} if cs is None else {k: cs[k] for k in ("input_spec", "subpixel", "heatmap_layout")}
    try:
        ad = TorchAdapter(module, size, tensor=t, num_threads=num_threads, feature_layout=feat_layout,
                          model_file=p, **given, **extra)
    except PosecalInputError as e:
        raise _relabel(e, p, cf if card is not None else None, t_file, t_field) from None
    except Exception as e:
        raise PosecalInputError(f"the program fails to run: {_first_line(e)}", file=str(p),
                                field="--model") from None
    ad.path = p
    ad.kind = "torch-export-heatmap"
    if card is not None:
        ad.card = card
        ad.preprocessing["card"] = card["name"]
    if cs is not None and cs["batch"] == 1:
        ad.max_batch = 1
        return ad
    try:  # a batch of two runs unless the program was exported with a static batch size
        ad._predict(np.zeros((2, shape[2], shape[3], 3), np.uint8))
    except Exception:
        ad.max_batch = int(shape[0])
    return ad


def _relabel(e: PosecalInputError, p: Path, cf: str | None, t_file: str, t_field: str,
             tmp: Path | None = None) -> PosecalInputError:
    """An adapter's error about the model file ``p`` (or its in-memory ONNX conversion ``tmp``), named by the
    file and field the user wrote: the feature tensor (``--tensor`` or the card's ``features.name``), the
    card (``cf``, None without a card) and its ``keypoints``; never the temporary conversion."""
    if e.field == "--tensor":
        msg = e.message if t_file == str(p) else f"{p.name}: {e.message}"
        return PosecalInputError(msg.replace(str(tmp), p.name) if tmp else msg, file=t_file, field=t_field)
    if e.field == "joint_names" and cf is not None:
        return PosecalInputError(f"the card's keypoints do not fit {p.name}: {e.message}", file=cf,
                                 field="keypoints")
    if e.field == "--model-card" and cf is not None:
        return PosecalInputError(f"{p.name}: {e.message}", file=cf, field="--model-card")
    if tmp is not None and (e.file == str(tmp) or str(tmp) in e.message):
        return PosecalInputError(e.message.replace(str(tmp), p.name), file=str(p), record=e.record,
                                 field=e.field)
    return e


def onnx_tensor_candidates(model: Any, output: str) -> list[str]:
    """Feature-tensor candidates of an ONNX model: the inputs of its 1×1 conv / Gemm / MatMul nodes, then its
    other 4-D activations (shape inference), nearest the ``output`` first."""
    import onnx

    from posecal.models.adapters.onnx import feature_candidates

    g = model.graph
    heads = feature_candidates(g)
    try:
        vi = onnx.shape_inference.infer_shapes(model).graph.value_info
        rank4 = {v.name for v in vi if len(v.type.tensor_type.shape.dim) == 4}
    except Exception:  # shape inference is a nicety here
        rank4 = set()
    acts = [o for n in g.node if n.op_type != "Constant" for o in n.output if o in rank4 and o != output]
    return heads + [a for a in reversed(acts) if a not in heads]


def _load_script(p: Path, module, size: tuple[int, int], t, t_file, t_field, num_threads, cs, cf, card, given,
                 feat_layout) -> Any:
    import tempfile
    from copy import deepcopy

    from posecal.models.adapters.onnx import head_node

    W, H = size
    with tempfile.TemporaryDirectory(prefix="posecal-ts-") as tmp:
        onnx_path = Path(tmp) / (p.stem + ".onnx")
        om = _script_to_onnx(module, p, (W, H), onnx_path)
        g = om.graph
        cands = onnx_tensor_candidates(om, "heatmaps")
        hint = (" (a TorchScript model runs as its ONNX conversion: its tensors are named as in that graph"
                + (f", e.g. {cands[0]!r}" if cands else "") + ", not by module)")
        if t is not None and t not in {o for n in g.node for o in n.output}:
            raise PosecalInputError(f"{'' if t_file == str(p) else p.name + ': '}unknown tensor {t!r}{hint}; "
                                    f"candidates: {_show(cands)}", file=t_file, field=t_field)
        if t is None:
            head = head_node(g, "heatmaps")
            if head is None:
                raise PosecalInputError(f"no 1×1 conv head found; name the feature with --tensor{hint}; "
                                        f"candidates: {_show(cands)}", file=str(p), field="--tensor")
            t = head.input[0]
        dims = g.output[0].type.tensor_type.shape.dim if g.output else []
        J = dims[1].dim_value if len(dims) == 4 else 0
        if J and "joint_names" not in given and len(keypoint_sets_with(J)) != 1:
            raise joint_order_error(p, J)
        try:
            if cs is not None:
                if J and cs["heatmap_layout"] == "NCHW" and len(cs["joint_names"]) != J:
                    raise PosecalInputError(f"the card's keypoints do not fit {p.name}: it lists "
                                            f"{len(cs['joint_names'])} joints, the model has {J} heatmap "
                                            "channels", file=cf, field="keypoints")
                from posecal.models.adapters.card import CardAdapter

                run = deepcopy(card)  # the card, with the names of the conversion's input, output, feature
                run["input"].update(name="input", size=[W, H])
                run["output"]["name"] = "heatmaps"
                run["features"] = {"name": t, "layout": feat_layout}
                ad = CardAdapter(onnx_path, run, num_threads=num_threads)
                ad.card = run
            else:
                from posecal.models.adapters.onnx import OnnxAdapter

                ad = OnnxAdapter(onnx_path, tensor=t, num_threads=num_threads, **given)
                ad._cands = cands
        except PosecalInputError as e:
            raise _relabel(e, p, cf if card is not None else None, t_file, t_field, tmp=onnx_path) from None
    ad.path = p
    ad.kind = "torchscript-heatmap"
    return ad


@contextlib.contextmanager
def _stdout_fd_silenced() -> Iterator[None]:
    """File descriptor 1 to the null device for the block: torch.onnx's TorchScript exporter prints its whole IR
    graph there (from C++) when a conversion fails, and posecal's stdout is its table or ``--json``."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all: nothing to guard
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _script_to_onnx(module: Any, p: Path, size: tuple[int, int], onnx_path: Path) -> Any:
    """The in-memory ONNX conversion of the TorchScript ``module`` (file ``p``) for (B, 3, H, W) crops, its output
    ``heatmaps``; a module that fails to run, returns no heatmap tensor or cannot be converted is one error."""
    import warnings

    import onnx
    import torch

    W, H = size
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, H, W))
    except Exception as e:
        raise PosecalInputError(f"the TorchScript model fails on a (1, 3, {H}, {W}) input: {_first_line(e)}",
                                file=str(p), field="--model") from None
    heatmap_output(out, str(p))  # a dict output: say what is read, not what the ONNX exporter lacks
    try:
        with warnings.catch_warnings(), _stdout_fd_silenced():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.zeros(1, 3, H, W),), str(onnx_path), dynamo=False,
                              input_names=["input"], output_names=["heatmaps"],
                              dynamic_axes={"input": {0: "b"}, "heatmaps": {0: "b"}})
        return onnx.load_model(str(onnx_path))
    except Exception as e:
        raise PosecalInputError(f"the TorchScript model cannot be converted for a (1, 3, {H}, {W}) input: "
                                f"{_first_line(e)}", file=str(p), field="--model") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
