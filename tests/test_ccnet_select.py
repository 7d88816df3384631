"""Recipe selection: the CV splitter (folds by image, no leakage), cross_validate, `fit --cv`, fit defaults."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import orjson
import pytest

torch = pytest.importorskip("torch")

from posecal.ccnet.fit import (  # noqa: E402
    DEFAULT_RECIPES,
    Recipe,
    default_recipe,
    fit_from_stores,
    load_training_stores,
)
from posecal.ccnet.select import FoldEvaluator, cross_validate, default_grid, image_folds  # noqa: E402
from posecal.cli import main  # noqa: E402
from posecal.metrics.cocoeval import evaluate  # noqa: E402
from test_ccnet_cli import make_store  # noqa: E402


def test_image_folds_group_by_image_and_balance():
    a = np.array([5, 5, 1, 2, 2, 2, 9, 7])  # store 0: image 5 twice, image 2 three times (augmented copies)
    b = np.array([5, 3, 3, 8])  # store 1 shares image id 5 with store 0: a different image
    folds = image_folds([a, b], 3, seed=1)
    assert [f.shape for f in folds] == [a.shape, b.shape]
    for ids, f in zip([a, b], folds, strict=True):
        for x in np.unique(ids):  # every row of an image in one fold
            assert np.unique(f[ids == x]).size == 1
    per_fold = np.bincount(np.concatenate([f[np.unique(ids, return_index=True)[1]]
                                           for ids, f in zip([a, b], folds, strict=True)]), minlength=3)
    assert per_fold.sum() == 8 and per_fold.max() - per_fold.min() <= 1  # 8 images, balanced
    assert all(np.array_equal(x, y) for x, y in zip(folds, image_folds([a, b], 3, seed=1), strict=True))
    seeds = {tuple(np.concatenate(image_folds([a, b], 3, seed=s))) for s in range(6)}
    assert len(seeds) > 1
    with pytest.raises(ValueError):
        image_folds([np.array([1, 2])], 3)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("select")
    return load_training_stores([str(make_store(d / "a", N=120, seed=0)), str(make_store(d / "b", N=80, seed=3))])[0]


def test_cross_validate_never_trains_on_the_held_out_images(stores, monkeypatch):
    import posecal.ccnet.train as train

    seen = []
    real = train.fit_head

    def spy(X, T, V, cfg, **kw):
        seen.append(np.asarray(X).copy())
        return real(X, T, V, cfg, **kw)

    monkeypatch.setattr(train, "fit_head", spy)
    k = 4
    rows = cross_validate(stores, [Recipe(steps=50, batch_size=32)], k=k, seed=0)
    assert len(rows) == 1 and len(rows[0].ap) == k and len(seen) == k
    folds = image_folds([np.array([r["image_id"] for r in d.records]) for d in stores], k, 0)
    for f, X in enumerate(seen):
        held = np.concatenate([d.features[fo == f] for d, fo in zip(stores, folds, strict=True)])
        train_rows = {x.tobytes() for x in X}
        assert not any(h.tobytes() in train_rows for h in held)  # no held-out row was trained on
        n_train = sum(int((d.has_target & (fo != f)).sum()) for d, fo in zip(stores, folds, strict=True))
        assert len(X) == n_train
    # the baseline of each fold is the stores' own score on that fold's images, exact evaluator
    fe = FoldEvaluator(stores)
    f0 = fe.rows([np.flatnonzero(fo == 0) for fo in folds])
    assert rows[0].base_ap[0] == fe.ap(f0)["AP"]
    one = evaluate(stores[0].gt, stores[0].records, sigmas=stores[0].sigmas, warn=False).stats["AP"]
    assert fe.ap(fe.rows([np.arange(len(stores[0].records)), np.array([], np.int64)]))["AP"] == one


def test_select_keeps_the_default_unless_clearly_beaten():
    from posecal.ccnet.select import CVRow, select

    rows = [CVRow(Recipe(steps=s), ap=[a]) for s, a in ((1, 0.5000), (2, 0.5008), (3, 0.4), (4, 0.5005))]
    assert select(rows, tol=1e-3).recipe.steps == 1  # within 0.1 AP of the best: the default stays
    assert select(rows, tol=1e-4).recipe.steps == 2
    rows[0].ap = [0.49]
    assert select(rows, tol=1e-3).recipe.steps == 2  # earliest row within tol of the best (0.5008)


def test_default_grid_is_small_and_starts_with_the_base():
    base = DEFAULT_RECIPES[("efficientpose", "features_kpt")]
    grid = default_grid(base)
    assert grid[0] == base and 5 <= len(grid) <= 10 and len(set(grid)) == len(grid)


def test_default_recipe_per_model_kind():
    assert default_recipe({"model_kind": "efficientpose"}, "features_kpt") == \
        DEFAULT_RECIPES[("efficientpose", "features_kpt")]
    assert default_recipe({"model_kind": "unknown"}, "features_gap").head == "fc"
    assert default_recipe({}, "features_kpt") == Recipe(head="kpt")


def test_fit_from_stores_is_deterministic_and_uses_evidence(stores):
    r = replace(DEFAULT_RECIPES[("efficientpose", "features_kpt")], steps=200)
    h1, m1 = fit_from_stores(stores, r, show_progress=False)
    h2, m2 = fit_from_stores(stores, r, show_progress=False)
    for k, v in h1.state_dict().items():
        assert torch.equal(v, h2.state_dict()[k]), k
    C = stores[0].features.shape[-1]
    assert h1.in_channels == C + len(r.evidence) and m1["evidence"] == list(r.evidence)
    assert m1["recipe"]["steps"] == 200 and m1["train"]["rows"] == sum(int(d.has_target.sum()) for d in stores)


def test_fit_cv_cli_prints_table_and_refits_winner(stores, tmp_path, capsys):
    out = tmp_path / "head"
    rc = main(["fit", "--store", stores[0].path, "--store", stores[1].path, "--out", str(out), "--cv", "3",
               "--steps", "60", "--batch-size", "32", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["cv"]["rows"]
    assert doc["cv"]["k"] == 3 and len(rows) == len(default_grid(Recipe(steps=60, batch_size=32)))
    best = max(r["cv_ap"] for r in rows)
    chosen = next(r for r in rows if r["cv_ap"] >= best - doc["cv"]["tolerance"])
    assert doc["cv"]["selected"] == chosen["recipe"] == doc["recipe"]
    meta = orjson.loads((out / "head.json").read_bytes())
    assert meta["cv"]["selected"] == chosen["recipe"]
    # the applied head rescoring: apply reads the same evidence columns the head was trained with
    cal = tmp_path / "cal.json"
    assert main(["apply", "--store", stores[1].path, "--head", str(out), "--out", str(cal)]) == 0
    with pytest.raises(SystemExit) as e:  # flags are checked at parse time
        main(["fit", "--store", stores[0].path, "--out", str(tmp_path / "h2"), "--cv", "1"])
    assert e.value.code == 2 and not (tmp_path / "h2").exists()
    capsys.readouterr()
    # more folds than images: one error line naming the flag, exit 2, no traceback, nothing written
    n_img = len({r["image_id"] for r in stores[0].records})
    assert main(["fit", "--store", stores[0].path, "--out", str(tmp_path / "h3"),
                 "--cv", str(n_img + 1)]) == 2
    err = capsys.readouterr().err
    assert "--cv" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "h3").exists()
