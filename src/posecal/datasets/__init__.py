"""Dataset readers: LSP and LSPET (``joints.mat``), MPII (MMPose JSON), COCO JSON + image folder.

Every reader returns the same in-memory form, a COCO keypoints dict (``images``, ``annotations``,
``categories`` with ``keypoints`` names), which is also what ``posecal convert`` writes. Top-down
extraction walks it with :func:`instances`.
"""

from posecal.datasets.coco import Instance, image_size, instances, read_coco
from posecal.datasets.lsp import read_lsp, read_lspet
from posecal.datasets.mpii import read_mpii

__all__ = ["Instance", "image_size", "instances", "read_coco", "read_lsp", "read_lspet", "read_mpii"]
