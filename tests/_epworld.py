"""A small real EfficientPose-I world for the study and TFLite export tests (built once per session).

LSP train images 1–24 → heatmap-pooled store → a CCNet ``kpt`` head fitted briefly; LSP test images
1001–1012 → store → ``posecal apply`` records. Everything lives under pytest's base temp directory.
"""

from __future__ import annotations

import json
from pathlib import Path


def ep_world(tmp_path_factory, shared) -> dict[str, Path]:
    from posecal.cli import main

    base = tmp_path_factory.getbasetemp() / "ep_world"
    w = {"model": shared("models", "efficientpose", "EfficientPoseI.tflite"),
         "images": shared("data", "lsp", "images"), "dir": base,
         "test_json": base / "lsp_test12.json", "train_store": base / "store_train",
         "test_store": base / "store_test", "head": base / "head", "records": base / "applied.json"}
    if (base / "done").exists():
        return w
    base.mkdir(parents=True, exist_ok=True)
    joints = shared("data", "lsp", "joints.mat")
    for split, n, name in (("train", 24, "lsp_train24.json"), ("test", 12, "lsp_test12.json")):
        full = base / f"lsp_{split}.json"
        assert main(["convert", "lsp", str(joints), "--images", str(w["images"]), "--split", split,
                     "--out", str(full)]) == 0
        g = json.loads(full.read_text())
        g["images"], g["annotations"] = g["images"][:n], g["annotations"][:n]
        (base / name).write_text(json.dumps(g))
    for data, store in ((base / "lsp_train24.json", w["train_store"]), (w["test_json"], w["test_store"])):
        assert main(["extract", "--model", str(w["model"]), "--data", str(data), "--images", str(w["images"]),
                     "--out", str(store), "--pooling", "heatmap", "--threads", "2"]) == 0
    # the exportable head (the default recipe's kpt_pose head reads store evidence a model graph lacks)
    assert main(["fit", "--store", str(w["train_store"]), "--out", str(w["head"]), "--head", "kpt", "--evidence",
                 "none", "--steps", "150", "--batch-size", "16"]) == 0
    assert main(["apply", "--store", str(w["test_store"]), "--head", str(w["head"]), "--out",
                 str(w["records"])]) == 0
    (base / "done").write_text("ok")
    return w
