"""What the commands print for people is a readable table (found running the documented commands).

``posecal study visibility`` printed its AP-by-aggregation header on the title line and the values two spaces
apart, so no value stood under its column's name (``all  tau  gt_visibility ...`` over ``71.37  71.27 ...``).
"""

from __future__ import annotations

import pytest

from posecal.cli import main


@pytest.fixture
def fake_visibility(monkeypatch):
    """``visibility_study`` / ``plot_visibility`` replaced by a fixed result (no model, no torch)."""
    import posecal.studies.visibility as vis

    res = {"instances": 5, "model": "M.tflite",
           "confidence_by_visibility": {"visible": {"keypoint_oks": {"mean": 0.8}, "raw": {"mean": 0.5}}},
           "AP": {"raw": {"all": 0.7137, "tau": 0.7127, "gt_visibility": 0.7137, "gt_visible": 0.7137,
                          "predicted_visibility": None},
                  "ccnet": dict.fromkeys(vis.VARIANTS, 0.7221)},
           "_arrays": {}}
    monkeypatch.setattr(vis, "visibility_study", lambda store, head=None, tau=0.2: {**res})
    monkeypatch.setattr(vis, "plot_visibility", lambda r, path: path.write_bytes(b"png"))
    return vis.VARIANTS


def test_visibility_table_values_stand_under_their_column(fake_visibility, tmp_path, capsys):
    (tmp_path / "store").mkdir()
    assert main(["study", "visibility", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "v")]) == 0
    lines = capsys.readouterr().out.splitlines()
    i = next(k for k, line in enumerate(lines) if line.strip().startswith("AP (%) by aggregation"))
    header, raw, ccnet = lines[i + 1], lines[i + 2], lines[i + 3]
    assert header.split() == list(fake_visibility)
    assert raw.split() == ["raw", "71.37", "71.27", "71.37", "71.37", "n/a"]
    assert ccnet.split()[0] == "ccnet"
    for row in (raw, ccnet):
        assert len(row) == len(header)
        for name, value in zip(header.split(), row.split()[1:], strict=True):  # right-aligned under the name
            assert header.index(name) + len(name) == row.index(value, header.index(name) - 6) + len(value), (
                header, row)
