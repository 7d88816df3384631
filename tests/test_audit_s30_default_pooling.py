"""The default pooling of ``extract`` (session 30, the custom-model audit).

The Python ``posecal.models.extract.extract`` defaulted to ``gap`` while ``posecal extract`` defaulted to
``heatmap`` (what ``fit``'s default recipe reads), so "the same pipeline from Python" gave another store and head
kind; and ``posecal extract`` on a model without heatmap outputs, without ``--pooling``, failed with
"--pooling heatmap needs a heatmap model", a flag the user never gave. Now both default to the card's pooling,
else ``heatmap`` for a heatmap model and ``gap`` for a coordinate one.
"""

from __future__ import annotations

import json

import numpy as np

from posecal.models.extract import extract
from test_audit_s30_pipeline import _BrightModel, _data, folder  # noqa: F401  (fixture: 6 images)


class _HeatModel(_BrightModel):
    """The stand-in with heatmaps: one Gaussian bump per joint at the bright centroid."""

    def predict(self, crops):
        from posecal.models.adapters.base import ModelOutput

        out = super().predict(crops)
        B = crops.shape[0]
        yy, xx = np.mgrid[0:8, 0:8]
        c = out.coords / 4.0
        hm = np.exp(-((xx - c[..., 0, None, None]) ** 2 + (yy - c[..., 1, None, None]) ** 2) / 2.0)
        return ModelOutput(coords=out.coords, scores=out.scores, features=out.features,
                           heatmaps=hm.reshape(B, 2, 8, 8).astype(np.float32))


def test_library_default_is_heatmap_for_a_heatmap_model_and_gap_otherwise(folder, tmp_path):  # noqa: F811
    img = folder
    heat = extract(_HeatModel(), _data(3), img, tmp_path / "H", allow_missing_joints=True, model_sha256="0")
    coord = extract(_BrightModel(), _data(3), img, tmp_path / "C", allow_missing_joints=True, model_sha256="0")
    assert heat.meta["pooling"] == "heatmap"  # was: gap (the CLI's default is heatmap)
    assert coord.meta["pooling"] == "gap"


def test_cli_default_on_a_coordinate_model_is_gap(folder, tmp_path, monkeypatch):  # noqa: F811
    import posecal.models.adapters.base as base
    from posecal.cli import main

    img = folder
    data = tmp_path / "d.json"
    data.write_text(json.dumps(_data(3)))
    monkeypatch.setattr(base, "load_adapter", lambda *a, **k: _BrightModel())
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x08\x07")  # opened by the patched loader only
    rc = main(["extract", "--model", str(model), "--data", str(data), "--images", str(img), "--out",
               str(tmp_path / "S"), "--allow-missing-joints"])
    assert rc == 0  # was: exit 2, "--pooling heatmap needs a heatmap model"
    assert json.loads((tmp_path / "S" / "meta.json").read_text())["pooling"] == "gap"
