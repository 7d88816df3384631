"""CCNet core: heads, loss, training, aggregation, checkpoints, record rescoring."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from posecal.ccnet.apply import rescore_records  # noqa: E402
from posecal.ccnet.checkpoint import check_compatible, load_head, save_head  # noqa: E402
from posecal.ccnet.heads import CCNetHead, build_head  # noqa: E402
from posecal.ccnet.loss import ccnet_loss  # noqa: E402
from posecal.ccnet.train import TrainConfig, fit_head, normalisation_stats, predict  # noqa: E402
from posecal.errors import PosecalInputError  # noqa: E402
from posecal.rescore.aggregate import instance_score  # noqa: E402


def _problem(seed=0, N=800, K=4, C=10):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, K, C)).astype(np.float32)
    w = rng.normal(size=(K, C)) / np.sqrt(C) * 2
    oks = 1 / (1 + np.exp(-(X * w).sum(-1)))
    vis = X[..., 0] > -0.8  # labelled-ness learnable from the features too
    return X, oks, vis


def test_loss_matches_formula():
    rng = np.random.default_rng(1)
    s, v = rng.random((6, 3)), rng.uniform(0.05, 0.95, (6, 3))
    oks, vis = rng.random((6, 3)), rng.random((6, 3)) > 0.3
    oks_nan = np.where(vis, oks, np.nan)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    got = float(ccnet_loss(t(s), t(v), t(oks_nan), t(vis.astype(float)), lam=0.2))
    bce = -(vis * np.log(v) + (1 - vis) * np.log(1 - v))
    want = np.mean((vis * (s - oks) ** 2).sum(1) + 0.2 * bce.sum(1))
    assert got == pytest.approx(want, rel=1e-12)
    got_b = float(ccnet_loss(t(s), t(v), t(oks_nan), t(vis.astype(float)), lam=0.0, conf_loss="bce"))
    want_b = np.mean((vis * -(oks * np.log(s) + (1 - oks) * np.log(1 - s))).sum(1))
    assert got_b == pytest.approx(want_b, rel=1e-9)


@pytest.mark.parametrize("conf_loss", ["mse", "bce"])
def test_loss_decreases_and_training_is_deterministic(conf_loss):
    X, oks, vis = _problem()
    cfg = TrainConfig(head="kpt", steps=300, batch_size=32, seed=7, conf_loss=conf_loss, lr=1e-2)
    a = fit_head(X, oks, vis, cfg, show_progress=False)
    b = fit_head(X, oks, vis, cfg, show_progress=False)
    # the loss floor: 0 for MSE; the targets' entropy for BCE on soft OKS targets
    floor = (
        0.0
        if conf_loss == "mse"
        else float(np.mean((vis * -(oks * np.log(oks) + (1 - oks) * np.log1p(-oks))).sum(1)))
    )
    assert a.losses[-50:].mean() - floor < 0.5 * (a.losses[:20].mean() - floor)
    for k, v in a.head.state_dict().items():
        assert torch.equal(v, b.head.state_dict()[k]), k
    s, _ = predict(a.head, X)
    assert np.corrcoef(s[vis], oks[vis])[0, 1] > 0.9


def test_conv_gap_equals_gap_then_linear():
    torch.manual_seed(0)
    h = CCNetHead("conv_gap", 6, 3)
    x = torch.randn(5, 6, 4, 7)
    z = h.logits(x)
    w = h.conv.weight[:, :, 0, 0]
    z2 = (x.mean(dim=(2, 3)) @ w.T + h.conv.bias).view(5, 3, 2)
    torch.testing.assert_close(z, z2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kind,shape", [("fc", (9,)), ("conv_gap", (9, 4, 4)), ("conv_sigmoid_gap", (9, 4, 4)), ("kpt", (3, 9))]
)
def test_heads_shapes_and_range(kind, shape):
    h = build_head(kind, shape, 3)
    with torch.no_grad():
        s, v = h(torch.randn(7, *shape) * 5)
    assert s.shape == v.shape == (7, 3)
    assert float(s.min()) >= 0 and float(s.max()) <= 1 and float(v.min()) >= 0 and float(v.max()) <= 1


def test_build_head_refuses_wrong_shape():
    with pytest.raises(PosecalInputError, match="axes"):
        build_head("kpt", (9,), 3)
    with pytest.raises(PosecalInputError, match="K=3"):
        build_head("kpt", (4, 9), 3)


def test_spatial_heads_learn_spatial_signal():
    """A target that depends on where a feature fires, not on its mean: only a non-linearity before pooling
    can see it (conv_sigmoid_gap beats conv_gap)."""
    rng = np.random.default_rng(0)
    N, C, H, W = 600, 2, 4, 4
    X = rng.normal(size=(N, C, H, W)).astype(np.float32) * 0.1
    peaky = rng.random(N) < 0.5
    total = rng.uniform(1, 2, N)
    for i in range(N):  # the same channel sum, either on one pixel or spread out
        if peaky[i]:
            X[i, 0, rng.integers(H), rng.integers(W)] += total[i] * H * W
        else:
            X[i, 0] += total[i]
    oks = np.where(peaky, 0.9, 0.1)[:, None].repeat(2, 1)
    vis = np.ones((N, 2), bool)
    err = {}
    for kind in ("conv_gap", "conv_sigmoid_gap"):
        r = fit_head(
            X, oks, vis, TrainConfig(head=kind, steps=400, batch_size=32, lr=3e-2), show_progress=False
        )
        s, _ = predict(r.head, X)
        err[kind] = float(np.mean((s - oks) ** 2))
    # conv_gap sees only the channel mean, identical in distribution for both groups: it cannot beat
    # predicting the overall mean (MSE 0.16); per-pixel sigmoid can
    assert err["conv_gap"] > 0.15
    assert err["conv_sigmoid_gap"] < 0.75 * err["conv_gap"]


def test_normalisation_stats():
    rng = np.random.default_rng(0)
    X = rng.normal(3, 2, size=(50, 4, 5, 6))
    m, s = normalisation_stats("conv_gap", X)
    np.testing.assert_allclose(m, X.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(s, X.std(axis=(0, 2, 3)), rtol=1e-8)
    m, s = normalisation_stats("kpt", X[:, :, :, 0])
    np.testing.assert_allclose(m, X[:, :, :, 0].mean(axis=0), rtol=1e-10)


def test_aggregate_is_visibility_weighted_mean():
    s = np.array([[0.2, 0.8, 0.5], [0.1, 0.1, 0.1]])
    v = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(instance_score(s, "visibility", visibility=v), [0.35, 0.0])
    np.testing.assert_allclose(instance_score(s, "visibility", np.array([0.5, 2.0]), visibility=v), [0.175, 0.0])


def test_checkpoint_round_trip_and_refusal(tmp_path):
    X, oks, vis = _problem(N=200)
    r = fit_head(X, oks, vis, TrainConfig(head="kpt", steps=50, batch_size=16), show_progress=False)
    meta = {
        "keypoint_set": "lsp14",
        "feature_tensor": "features_kpt",
        "feature_shape": [4, 10],
        "pooling": "heatmap",
    }
    save_head(tmp_path / "h", r.head, meta)
    h2, m2 = load_head(tmp_path / "h")
    for k, v in r.head.state_dict().items():
        assert torch.equal(v, h2.state_dict()[k]), k
    np.testing.assert_array_equal(predict(r.head, X)[0], predict(h2, X)[0])
    assert m2["keypoint_set"] == "lsp14" and m2["head"] == "kpt" and len(m2["normalisation"]["mean"]) == 40
    check_compatible(m2, dict(meta))
    with pytest.raises(PosecalInputError, match=r"keypoint_set: head 'lsp14' vs store 'coco17'"):
        check_compatible(m2, {**meta, "keypoint_set": "coco17"})
    with pytest.raises(PosecalInputError, match=r"feature_shape.*pooling"):
        check_compatible(m2, {**meta, "feature_shape": [4, 11], "pooling": "gap"})
    (tmp_path / "h" / "head.json").write_text("{")
    with pytest.raises(PosecalInputError, match="invalid JSON"):
        load_head(tmp_path / "h")


def test_rescore_records_keeps_coordinates():
    recs = [
        {"image_id": 1, "category_id": 1, "keypoints": [1.5, 2.5, 0.9, 3.0, 4.0, 0.1], "score": 0.7, "x": "y"}
    ]
    s, v = np.array([[0.4, 0.6]]), np.array([[1.0, 0.5]])
    out = rescore_records(recs, s, v)
    assert out[0]["keypoints"][0::3] == [1.5, 3.0] and out[0]["keypoints"][1::3] == [2.5, 4.0]
    assert out[0]["keypoints"][2::3] == [0.4, 0.6]
    assert out[0]["score"] == pytest.approx((0.4 + 0.3) / 1.5)
    assert out[0]["visibility"] == [1.0, 0.5] and out[0]["x"] == "y"
    assert recs[0]["score"] == 0.7 and recs[0]["keypoints"][2] == 0.9  # input untouched
    with pytest.raises(PosecalInputError, match="keypoints"):
        rescore_records([{"keypoints": [1, 2]}], s, v)


@pytest.mark.parametrize("kind", ["kpt", "fc"])
def test_head_trained_on_simulator_recovers_expected_oks(kind):
    """Trained on the realised (noisy) keypoint OKS of a SIMULATION, the head predicts the simulator's true
    expected OKS (Eq. 11) on a fresh split — better than the simulated heatmap model's own scores."""
    from posecal.keypoints import COCO17
    from posecal.metrics.oks import keypoint_oks
    from posecal.theory.simulate import simulate

    tr, te = simulate(2000, seed=0), simulate(1000, seed=1)
    gt = np.concatenate([tr.gt_xy, tr.visibility[..., None]], -1)
    oks = keypoint_oks(tr.pred_heatmap, gt, tr.area, COCO17.sigmas)
    vis = tr.visibility > 0
    feats = {"kpt": (tr.features_kpt, te.features_kpt), "fc": (tr.features, te.features)}[kind]
    r = fit_head(feats[0], oks, vis, TrainConfig(head=kind, steps=2000, lr=3e-3), show_progress=False)
    s, v = predict(r.head, feats[1])
    lab = te.visibility > 0
    p_kpt = np.corrcoef(s[lab], te.expected_oks[lab])[0, 1]
    p_inst = np.corrcoef(instance_score(s, "visibility", visibility=v), te.expected_instance_oks)[0, 1]
    assert p_kpt >= 0.9 and p_inst >= 0.9
    assert p_kpt > np.corrcoef(te.score_heatmap[lab], te.expected_oks[lab])[0, 1]
    assert ((v > 0.5) == lab).mean() > 0.95  # visibility (labelled) is in the simulated features too


@pytest.mark.parametrize("kind", ["kpt", "kpt_inst"])
def test_filter_rank_projection(kind):
    """fit with filter_rank r: the folded (2K, C) map W / σ has rank r, it is the best rank-r approximation in
    the scaled norm (no other rank-r matrix is closer: checked against random ones and the unscaled SVD), the
    bias and normalisation are untouched; r ≥ min(2K, C) changes nothing; other heads are refused."""
    from posecal.ccnet.heads import project_filter_rank

    X, oks, vis = _problem()
    K, C, r = X.shape[1], X.shape[2], 2
    cfg = TrainConfig(head=kind, steps=60, batch_size=32, seed=3)
    full = fit_head(X, oks, vis, cfg, show_progress=False).head
    low = fit_head(X, oks, vis, TrainConfig(**{**cfg.to_dict(), "filter_rank": r}), show_progress=False).head
    for k in ("bias", "feat_mean", "feat_std"):
        assert torch.equal(full.state_dict()[k], low.state_dict()[k])
    sd = full.feat_std.double()
    s = sd.pow(2).mean(0).sqrt()
    M = lambda h: (h.weight.detach().double() / sd[:, None, :]).reshape(2 * K, C) * s  # noqa: E731
    assert int(torch.linalg.matrix_rank(M(low), rtol=1e-5)) == r < int(torch.linalg.matrix_rank(M(full)))
    err = torch.linalg.norm(M(full) - M(low))
    U, S, Vt = torch.linalg.svd(M(full), full_matrices=False)
    assert torch.isclose(err, S[r:].pow(2).sum().sqrt(), rtol=1e-4)  # Eckart–Young
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        R = (torch.randn(2 * K, r, generator=g, dtype=torch.float64)
             @ torch.randn(r, C, generator=g, dtype=torch.float64))
        assert torch.linalg.norm(M(full) - R) > err
    same = fit_head(X, oks, vis, TrainConfig(**{**cfg.to_dict(), "filter_rank": min(2 * K, C)}),
                    show_progress=False).head
    assert torch.equal(same.weight, full.weight)
    with pytest.raises(PosecalInputError, match="filter_rank"):
        fit_head(X, oks, vis, TrainConfig(head="fc", steps=2, filter_rank=2), show_progress=False)
    with pytest.raises(PosecalInputError, match="filter rank"):
        project_filter_rank(build_head("fc", (C,), K), 2)
