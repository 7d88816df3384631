"""Model adapters behind one protocol (:class:`posecal.models.adapters.base.PoseAdapter`).

``load_adapter(path, ...)`` picks the backend from the file (``.tflite``, ``.onnx``; PyTorch modules are
passed as objects to :class:`posecal.models.adapters.torch.TorchAdapter`). Backends import their runtime lazily.
"""

from posecal.models.adapters.base import ModelOutput, PoseAdapter, load_adapter
from posecal.models.adapters.joints import BLAZEPOSE33, EFFICIENTPOSE16, joint_map

__all__ = ["BLAZEPOSE33", "EFFICIENTPOSE16", "ModelOutput", "PoseAdapter", "joint_map", "load_adapter"]
