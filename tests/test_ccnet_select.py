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
from posecal.ccnet.targets import evidence_columns, evidence_width, pose_channels  # noqa: E402
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


def spy_fit_head(monkeypatch) -> list[np.ndarray]:
    """Record a copy of the training inputs ``X`` of every :func:`posecal.ccnet.train.fit_head` call."""
    import posecal.ccnet.train as train

    seen = []
    real = train.fit_head

    def spy(X, T, V, cfg, **kw):
        seen.append(np.asarray(X).copy())
        return real(X, T, V, cfg, **kw)

    monkeypatch.setattr(train, "fit_head", spy)
    return seen


def test_cross_validate_never_trains_on_the_held_out_images(stores, monkeypatch):
    seen = spy_fit_head(monkeypatch)
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
    assert h1.in_channels == C + evidence_width(r.evidence, stores[0].sigmas.size)
    assert m1["evidence"] == list(r.evidence)
    assert m1["recipe"]["steps"] == 200 and m1["train"]["rows"] == sum(int(d.has_target.sum()) for d in stores)


def test_fit_cv_cli_prints_table_and_refits_winner(stores, tmp_path, capsys):
    out = tmp_path / "head"
    rc = main(["fit", "--store", stores[0].path, "--store", stores[1].path, "--out", str(out), "--cv", "3",
               "--steps", "60", "--batch-size", "32", "--json"])
    assert rc == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    rows = doc["cv"]["rows"]
    assert doc["cv"]["k"] == 3 and len(rows) == len(default_grid(Recipe(steps=60, batch_size=32)))
    best = max(r["cv_ap"] for r in rows)
    chosen = next(r for r in rows if r["cv_ap"] >= best - doc["cv"]["tolerance"])
    assert doc["cv"]["selected"] == chosen["recipe"] == doc["recipe"]
    # a selected recipe that loses to the stores' own scores by CV is said so (a warning, never silent)
    assert ("no recipe beat the stores' own scores" in cap.err) == (chosen["cv_delta_ap"] < 0)
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


def test_pose_evidence_is_the_instance_skeleton_in_crop_coordinates(stores):
    """``pose`` evidence: the same vector on every keypoint row — crop-normalised keypoints, their pairwise
    distances, the raw scores and the closed-form values — computed here by hand from the store arrays."""
    from posecal.models.store import FeatureStore
    from posecal.theory import oks_l2, perfect_expected_oks

    d = stores[0]
    K = d.sigmas.size
    ev = evidence_columns(d.path, ("cf", "pose"), d.sigmas)
    assert ev.shape == (len(d.records), K, 1 + pose_channels(K))
    assert evidence_width(("cf", "pose"), K) == 1 + pose_channels(K)
    assert np.array_equal(ev[:, :1, 1:].repeat(K, 1), ev[:, :, 1:])  # one vector per instance
    fs = FeatureStore.open(d.path)
    W, H = fs.meta["input_size"]
    for i in (0, 7):
        M, kp = fs.read("crop_transform")[i], fs.read("keypoints")[i]
        uv = np.array([M[:, :2] @ p + M[:, 2] for p in kp]) / [W, H] - 0.5
        dist = [np.hypot(*(uv[a] - uv[b])) for a in range(K) for b in range(a + 1, K)]
        box = fs.read("bbox")[i]
        sig = np.nan_to_num(fs.read("sigma_hat")[i], nan=1e3)
        cf = perfect_expected_oks(sig ** 2, oks_l2(d.sigmas, box[2] * box[3]))
        want = np.concatenate([uv.reshape(-1), dist, fs.read("scores")[i], cf])
        np.testing.assert_allclose(ev[i, 0, 1:], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ev[i, :, 0], cf, rtol=1e-6)


def test_kpt_pose_head_starts_as_kpt_and_round_trips(stores, tmp_path):
    """The pose MLP's output layer starts at 0 (the head starts as the plain kpt head on the features); a fitted
    kpt_pose head is saved, reloaded and applied with identical scores."""
    from posecal.ccnet.checkpoint import load_head
    from posecal.ccnet.heads import CCNetHead
    from posecal.ccnet.targets import head_inputs

    d = stores[0]
    K = d.sigmas.size
    x = torch.from_numpy(head_inputs(d, ("pose",)))
    h = CCNetHead("kpt_pose", x.shape[-1], K)
    P = pose_channels(K)
    plain = torch.einsum("bkc,kjc->bkj", h.normalise(x)[:, :, :-P], h.weight) + h.bias
    assert torch.equal(h.logits(x), plain)
    with pytest.raises(Exception, match="pose"):
        CCNetHead("kpt_pose", P, K)
    r = Recipe(head="kpt_pose", evidence=("pose",), optimizer="lbfgs", steps=30, weight_decay=1e-2)
    out = tmp_path / "head"
    assert main(["fit", "--store", stores[0].path, "--store", stores[1].path, "--out", str(out), "--head",
                 "kpt_pose", "--optimizer", "lbfgs", "--steps", "30", "--weight-decay", "1e-2", "--json"]) == 0
    meta = orjson.loads((out / "head.json").read_bytes())
    assert meta["recipe"] == r.to_dict() and meta["evidence"] == ["pose"]
    head, _ = load_head(out)
    cal = tmp_path / "cal.json"
    assert main(["apply", "--store", stores[1].path, "--head", str(out), "--out", str(cal)]) == 0
    s, v = (t.detach().numpy() for t in head(torch.from_numpy(head_inputs(stores[1], ("pose",)))))
    from posecal.rescore.aggregate import instance_score

    want = instance_score(s.astype(np.float64), "visibility", None, visibility=v.astype(np.float64))
    got = [rec["score"] for rec in json.loads(cal.read_text())]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    with pytest.raises(Exception, match="pose"):  # kpt_pose needs the pose evidence last
        fit_from_stores(stores, replace(r, evidence=("score",)), show_progress=False)
