"""Error conventions: ValueError/TypeError for API misuse, PosecalInputError for bad input data."""

from __future__ import annotations

import json

import pytest

from posecal.errors import NotFittedError, PosecalInputError
from posecal.theory.simulate import simulate


def test_not_fitted_error_is_value_and_attribute_error():
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)
    e = NotFittedError("isotonic calibrator is not fitted", None, None, "calibrator")
    assert str(e) == "field 'calibrator': isotonic calibrator is not fitted"


@pytest.mark.parametrize(
    "kw",
    [dict(n=-1), dict(n=2.5), dict(gamma_median=0.0), dict(score_noise=-0.1), dict(p_occluded=1.2),
     dict(p_occluded=0.6, p_unlabelled=0.6), dict(gross_error_rate=float("nan"))],
)  # fmt: skip
def test_simulate_rejects_arguments_outside_their_domain(kw):
    with pytest.raises(ValueError) as e:
        simulate(**{"n": 4, **kw})
    assert not isinstance(e.value, PosecalInputError)


def test_simulate_still_accepts_edge_values():
    assert len(simulate(0).heatmap_results) == 0
    assert len(simulate(3, p_occluded=0.5, p_unlabelled=0.5, score_noise=0.0).heatmap_results) == 3


def test_head_kind_misuse_vs_bad_head_file(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from posecal.ccnet.checkpoint import load_head, save_head
    from posecal.ccnet.heads import CCNetHead, feature_shape_ok

    with pytest.raises(ValueError, match="unknown head kind 'mlp'") as e:
        CCNetHead("mlp", 4, 3)
    assert not isinstance(e.value, PosecalInputError)
    with pytest.raises(ValueError, match="unknown head kind"):
        feature_shape_ok("mlp", (4,), 3)
    save_head(tmp_path / "h", CCNetHead("fc", 4, 3), {"keypoint_set": "lsp14"})
    meta_path = tmp_path / "h" / "head.json"
    meta = json.loads(meta_path.read_text())
    for bad in ({"head": "mlp"}, {"head": ["fc"]}, {"in_channels": "four"}):
        meta_path.write_text(json.dumps({**meta, **bad}))
        with pytest.raises(PosecalInputError, match="head.json"):
            load_head(tmp_path / "h")
