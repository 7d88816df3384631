"""posecal — calibrated confidence for 2D human pose estimation.

Layers (each imports only from those above it):
keypoints / io → metrics (OKS, COCO eval) → calibration (audit) → theory / heatmap / rescore / simulate
→ ccnet → data / crop / adapters / store → export → cli.

``import posecal`` needs only numpy (and scipy where used); torch, onnx, onnxruntime, ai-edge-litert,
h5py and matplotlib are imported inside the modules that need them.
"""

from posecal.errors import PosecalInputError, PosecalWarning
from posecal.keypoints import KEYPOINT_SETS, KeypointSet, find_keypoint_set, get_keypoint_set

__version__ = "0.1.0"
__all__ = [
    "KEYPOINT_SETS",
    "KeypointSet",
    "PosecalInputError",
    "PosecalWarning",
    "find_keypoint_set",
    "get_keypoint_set",
    "__version__",
]
