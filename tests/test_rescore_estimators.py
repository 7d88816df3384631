"""Rescorers as scikit-learn-style estimators: the registry, get_params/set_params, NotFittedError."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

import posecal.rescore as R
from posecal.errors import NotFittedError, PosecalInputError
from posecal.rescore import (
    RESCORERS,
    ClosedFormRescorer,
    IsotonicRescorer,
    LogLogRescorer,
    MMPoseRescorer,
    Rescorer,
    VisibilityRescorer,
    get_rescorer,
    register_rescorer,
    registered_rescorers,
    rescorer_class,
)
from posecal.theory.simulate import simulate

_ALL_CLASSES = {ClosedFormRescorer, IsotonicRescorer, LogLogRescorer, MMPoseRescorer, VisibilityRescorer}


def _concrete_subclasses(cls: type) -> set[type]:
    out = set()
    for c in cls.__subclasses__():
        if not c.__name__.startswith("_") and c.__module__.startswith("posecal."):
            out.add(c)
        out |= _concrete_subclasses(c)
    return out


def test_registry_lists_every_rescorer():
    reg = registered_rescorers()
    assert tuple(reg) == RESCORERS
    assert set(reg.values()) == _concrete_subclasses(Rescorer) == _ALL_CLASSES
    assert RESCORERS == (
        "closed-form", "isotonic", "loglog", "mmpose-bbox", "mmpose-keypoint", "mmpose-bbox_keypoint",
        "mmpose-bbox_rle", "visibility",
    )  # fmt: skip
    for name in RESCORERS:
        r = get_rescorer(name)
        assert type(r) is reg[name] is rescorer_class(name)
        assert r.method == name  # the name a rescorer reports is the one it was built from
    for c in ("bbox", "keypoint", "bbox_keypoint", "bbox_rle"):
        assert get_rescorer(f"mmpose-{c}", mode="bbox").mode == c  # the name fixes the mode
    with pytest.raises(ValueError, match="unknown rescoring method 'nope'; use one of closed-form"):
        get_rescorer("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_rescorer("isotonic")(IsotonicRescorer)
    assert registered_rescorers() == reg  # the failed registration changed nothing


def test_params_match_the_constructor_signature():
    """scikit-learn's rule: every parameter is a keyword of __init__ stored under its own name."""
    for cls in _ALL_CLASSES:
        sig = inspect.signature(cls.__init__)
        assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()), cls
        init_args = set(sig.parameters) - {"self"}
        assert set(cls._params) <= init_args, cls
        assert init_args - set(cls._params) <= set(cls._state), cls  # the rest is state (mean_area)


_NON_DEFAULT = {
    "closed-form": dict(
        area="pred", model="rle", target_sigma=3.0, heatmap_size=(24, 32), input_size=(96, 128), padding=1.1,
        aggregate="mean", keypoint_score_thr=0.3, sigmas=np.full(17, 0.05),
    ),
    "isotonic": dict(aggregate="keypoint", keypoint_score_thr=0.1, sigmas=np.full(17, 0.07)),
    "loglog": dict(aggregate="bbox_rle", keypoint_score_thr=0.4, sigmas=None, min_score=1e-3),
    "mmpose-bbox": dict(keypoint_score_thr=0.5),
    "mmpose-keypoint": dict(keypoint_score_thr=0.5),
    "mmpose-bbox_keypoint": dict(keypoint_score_thr=0.5),
    "mmpose-bbox_rle": dict(keypoint_score_thr=0.5),
    "visibility": {},
}  # fmt: skip


def _same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray) or isinstance(b[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k])
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("method", RESCORERS)
def test_get_params_round_trips_through_get_rescorer(method):
    r = get_rescorer(method, **_NON_DEFAULT[method])
    p = r.get_params()
    assert set(p) == set(type(r)._params)
    for k, v in _NON_DEFAULT[method].items():
        _same_params({k: p[k]}, {k: v})
    r2 = get_rescorer(r.method, **p)
    assert type(r2) is type(r) and r2.method == r.method
    _same_params(r2.get_params(), p)
    assert r2.to_json()["params"] == r.to_json()["params"]
    # default parameters round-trip too, and differ from the non-default ones where there are any
    d = get_rescorer(method)
    _same_params(get_rescorer(method, **d.get_params()).get_params(), d.get_params())
    if _NON_DEFAULT[method]:
        assert d.to_json()["params"] != r.to_json()["params"]


def test_set_params_validates_and_keeps_fitted_state():
    sim = simulate(300, seed=5)
    r = IsotonicRescorer().fit(sim.heatmap_results, sim.gt)
    x = r.x_.copy()
    assert r.set_params(aggregate="mean", keypoint_score_thr=0.5) is r
    assert (r.aggregate, r.keypoint_score_thr) == ("mean", 0.5)
    np.testing.assert_array_equal(r.x_, x)
    with pytest.raises(ValueError, match="invalid parameter"):
        r.set_params(x_=np.zeros(3))
    with pytest.raises(ValueError, match="unknown aggregation"):
        r.set_params(aggregate="median")
    assert r.aggregate == "mean"  # a rejected value changes nothing
    c = ClosedFormRescorer().set_params(heatmap_size=[24.0, 32.0])
    assert c.heatmap_size == (24, 32)  # normalised as the constructor normalises it
    m = MMPoseRescorer().set_params(mode="bbox")
    assert m.method == "mmpose-bbox"


@pytest.mark.parametrize("cls", [IsotonicRescorer, LogLogRescorer])
def test_not_fitted_error_before_fit(cls):
    sim = simulate(100, seed=6)
    r = cls()
    assert not r.is_fitted and r.needs_fit
    with pytest.raises(NotFittedError, match="not fitted") as e:
        r.transform(sim.heatmap_results)
    assert isinstance(e.value, ValueError) and isinstance(e.value, AttributeError)
    assert isinstance(e.value, PosecalInputError)  # the CLI reports it as one line, exit 2
    with pytest.raises(NotFittedError):
        r.map_scores(np.array([0.5]))
    assert R.NotFittedError is NotFittedError
    r.fit(sim.heatmap_results, sim.gt)
    assert r.is_fitted
    assert r.transform(sim.heatmap_results).keypoint_scores.shape == (100, 17)


def test_stateless_rescorers_need_no_fit():
    sim = simulate(50, seed=7)
    for name in ("closed-form", "mmpose-bbox_keypoint"):
        r = get_rescorer(name, area="pred") if name == "closed-form" else get_rescorer(name)
        assert not r.needs_fit
        assert r.transform(sim.heatmap_results).instance_scores.shape == (50,)


def test_api_misuse_is_value_error_bad_file_is_input_error():
    with pytest.raises(ValueError) as e:
        ClosedFormRescorer(area="box")
    assert not isinstance(e.value, PosecalInputError)
    with pytest.raises(TypeError):
        get_rescorer("isotonic", area="gt")  # not a parameter of isotonic
    sim = simulate(20, seed=8)
    with pytest.raises(ValueError, match="needs ground truth to fit") as e:
        LogLogRescorer().fit(sim.heatmap_results)  # no gt
    assert not isinstance(e.value, PosecalInputError)
    # the same mistakes inside a calibrator file are bad input data: PosecalInputError naming the field
    for params in ({"area": "box"}, {"nope": 1}):
        obj = {"method": "closed-form", "params": params, "state": {}}
        with pytest.raises(PosecalInputError, match="field 'params': bad parameters"):
            Rescorer.from_json(json.loads(json.dumps(obj)), "c.json")
