"""posecal — calibrated confidence for 2D human pose estimation.

Layers (each imports only from those above it):
keypoints / io → metrics (OKS, COCO eval) → calibration (audit) → theory / heatmap / rescore / simulate
→ ccnet → data / crop / adapters / store → export → cli.

``import posecal`` needs only numpy (and scipy where used); torch, onnx, onnxruntime, ai-edge-litert,
h5py and matplotlib are imported inside the modules that need them.
"""

from posecal.errors import PosecalInputError, PosecalWarning

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

_KEYPOINT_NAMES = ("KEYPOINT_SETS", "KeypointSet", "find_keypoint_set", "get_keypoint_set")


def __getattr__(name: str):
    # PEP 562: the keypoint names (and with them numpy) load on first use, so that ``posecal evaluate`` can
    # configure numpy's BLAS before numpy is imported (see posecal.cli)
    if name in _KEYPOINT_NAMES:
        from posecal import keypoints

        return getattr(keypoints, name)
    raise AttributeError(f"module 'posecal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_KEYPOINT_NAMES))
