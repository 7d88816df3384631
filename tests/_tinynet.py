"""A tiny torch heatmap model (3 → 8 → 12 channels, 1×1 conv → 17 COCO heatmaps at 1/4 resolution) with
non-trivial BatchNorm statistics, for the ONNX/PyTorch adapter and export tests."""

from __future__ import annotations


def tiny_heatmap_net():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                torch.nn.Conv2d(8, 12, 3, stride=2, padding=1), torch.nn.ReLU())
            self.final = torch.nn.Conv2d(12, 17, 1)

        def forward(self, x):
            return self.final(self.backbone(x))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # non-trivial BN statistics
        net.backbone[1].running_mean.uniform_(-0.5, 0.5)
        net.backbone[1].running_var.uniform_(0.5, 2.0)
    return net.eval()
