"""Audit s28 (Python API): rescorer parameters are checked where the Python API takes them (as the CLI's
argument types and ``Rescorer.from_json`` check them), OKS sigmas of the wrong length are one clear error,
``RescoreResult.to_records`` takes the records it was given, an empty result file rescores to nothing, and
``posecal.datasets`` exports every reader."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from posecal.errors import PosecalInputError
from posecal.rescore import get_rescorer
from posecal.rescore.closed_form import ClosedFormRescorer
from posecal.theory.simulate import simulate


@pytest.fixture(scope="module")
def sim():
    return simulate(12, seed=0)


@pytest.mark.parametrize("kw", [
    dict(target_sigma=float("nan")), dict(target_sigma=0.0), dict(padding=-1.0), dict(padding=float("inf")),
    dict(heatmap_size=(0, 0)), dict(input_size=(192.5, 256)), dict(heatmap_size=(48,)),
    dict(keypoint_score_thr=float("nan")), dict(sigmas=[float("nan")] * 17), dict(sigmas=[-0.05] * 17),
    dict(sigmas=[]), dict(sigmas=np.full((2, 17), 0.05)),
])  # fmt: skip
def test_closed_form_refuses_parameters_that_made_nan_or_constant_scores(kw, sim):
    # was: accepted; transform then wrote NaN (target_sigma nan, sigmas nan), all 1 (target_sigma 0) or all 0
    # (heatmap_size 0) keypoint scores, or NaN-thresholded instance scores of 0, without a word
    with pytest.raises(ValueError) as e:
        ClosedFormRescorer(area="pred", **kw)
    assert not isinstance(e.value, PosecalInputError)  # API misuse, not bad data
    with pytest.raises(ValueError):
        ClosedFormRescorer(area="pred").set_params(**kw)


@pytest.mark.parametrize("method,kw", [
    ("isotonic", dict(keypoint_score_thr=float("nan"))), ("isotonic", dict(sigmas=[0.0] * 17)),
    ("loglog", dict(min_score=0.0)), ("loglog", dict(min_score=float("nan"))),
    ("mmpose-bbox_keypoint", dict(keypoint_score_thr=float("nan"))),
])  # fmt: skip
def test_other_rescorers_refuse_non_finite_parameters(method, kw):
    with pytest.raises(ValueError):
        get_rescorer(method, **kw)


def test_good_parameters_still_accepted(sim):
    r = ClosedFormRescorer(area="pred", heatmap_size=[24.0, 32.0], sigmas=[0.05] * 17, keypoint_score_thr=-1.0)
    assert r.heatmap_size == (24, 32) and r.sigmas.shape == (17,)
    assert get_rescorer("loglog", min_score=1e-3).min_score == 1e-3


def test_sigmas_of_the_wrong_length_are_one_clear_error(sim):
    # was: numpy "operands could not be broadcast together with shapes (12,17) (12,5)"
    with pytest.raises(PosecalInputError, match="5 OKS sigmas for 17 keypoints"):
        ClosedFormRescorer(area="pred", sigmas=[0.05] * 5).transform(sim.heatmap_results)
    with pytest.raises(PosecalInputError, match="5 OKS sigmas for 17 keypoints"):
        get_rescorer("isotonic", sigmas=[0.05] * 5).fit(sim.heatmap_results, sim.gt)


def test_to_records_takes_the_records_list_it_was_transformed_from(sim):
    # the rescore package docstring: ``pred`` may be a list of records; ``out.to_records(pred)`` then raised
    # AttributeError: 'list' object has no attribute 'records'
    recs = sim.heatmap_results
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ClosedFormRescorer(area="pred").transform(recs)
    new = out.to_records(recs)
    assert len(new) == len(recs) and new[0]["keypoints"][0::3] == recs[0]["keypoints"][0::3]
    assert new[0]["score"] == pytest.approx(out.instance_scores[0]) and new[0] is not recs[0]


def test_visibility_rescorer_on_no_records_gives_no_scores():
    # was: PosecalInputError naming "record 0" of an empty file (every other method gives empty results)
    out = get_rescorer("visibility").transform([])
    assert out.instance_scores.shape == (0,) and out.to_records([]) == []


def test_datasets_package_exports_every_reader_the_convert_command_has():
    # `posecal convert lspet` has a reader; `from posecal.datasets import read_lspet` was an ImportError
    import posecal.datasets as ds
    from posecal.datasets.lsp import read_lspet

    assert ds.read_lspet is read_lspet and "read_lspet" in ds.__all__
