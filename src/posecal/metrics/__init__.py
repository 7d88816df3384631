"""Accuracy metrics: OKS, PCK, EPE and the exact COCO keypoint evaluator."""
