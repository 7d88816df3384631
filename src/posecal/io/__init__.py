"""COCO JSON input/output."""
