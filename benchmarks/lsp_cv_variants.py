"""Beyond the ``fit --cv`` grid: head capacity, losses, evidence and data weighting, by the same CV (not a test).

Same stores, folds (3, by image, seed 0: :func:`posecal.ccnet.select.image_folds`) and score (COCO AP of the
held-out images rescored with Σv̂ŝ/Σv̂, :class:`posecal.ccnet.select.FoldEvaluator`) as ``posecal fit --cv 3``
on LSPET + LSP train (EfficientPose-I, heatmap pooling). Each variant is a small torch model trained here by
full-batch L-BFGS (100–200 iterations, L2 on the weights) on MSE(ŝ, OKS) over labelled keypoints + 0.2 × BCE
visibility, like the default recipe; only the named factor changes:

* ``lin``        the per-keypoint linear head (the default recipe's model, re-implemented here as reference);
* ``mlp``        a per-keypoint MLP (hidden 32, ReLU) instead of the linear map;
* ``shared``     a hidden layer (64) shared by all keypoints + a keypoint embedding, plus the linear map;
* ``inst``       ``lin`` + an instance-level loss: (mean of ŝ over labelled keypoints − instance OKS)²;
* ``ev``         ``lin`` on the features + the model's own evidence (score, closed form, log σ̂);
* ``geo``        ``lin`` + an MLP (hidden 64) on the whole pose's geometry (crop-normalised keypoints,
  all pairwise distances, raw scores, closed form) adding to every keypoint's logits;
* ``weight5``    ``lin`` with LSP train rows weighted ×5 against LSPET's;
* ``swapdrop``   ``geo`` without the LSPET training people whose prediction fits their left/right-mirrored
  annotation better (mean keypoint OKS higher by > 0.1: 15.8 % of LSPET, 5.6 % of LSP train) — suspected
  label swaps of LSPET's Mechanical-Turk labels;
* ``swapfix``    ``geo`` with those LSPET people's annotations mirrored (OKS and visibility targets recomputed);
* ``tied``       ``lin`` with each left/right keypoint pair sharing one linear map (own biases);
* ``tiedgeo``    ``geo`` with the tied map;
* ``georank``    ``geo`` + a pairwise instance-ranking loss (``georank3``: weight 3): for 200 000 random pairs
  of training people, softplus(−10 (ĉ_i − ĉ_j) sign(g_i − g_j)) weighted by |g_i − g_j|, where ĉ = Σv̂ŝ/Σv̂ and
  g = the fraction of AP's ten OKS thresholds the person's instance OKS passes (what AP rewards);
* ``geogap``     ``geo`` with the crop's global average-pooled features (``posecal extract --pooling gap`` of the
  same people, given by ``--gap``) appended to the pose MLP's input; ``geogapk``: appended to every keypoint's
  features instead (global context of the crop: background, blur, clutter);
* ``geoinst``    ``geo`` + the ``inst`` loss; ``geo128``: pose MLP hidden 128; ``geo2``: two hidden layers (64, 64);
  ``geoev``: ``geo`` + the ``ev`` columns.

Besides the pooled AP the table gives the AP of the held-out LSPET images and of the held-out LSP-train images
separately (LSP-style people), each against the stores' own score on the same images.

    PYTHONPATH=src nice python3 benchmarks/lsp_cv_variants.py --work /tmp/ccnet [--variants lin,mlp,...]
        [--gap GAP_LSPET --gap GAP_LSP_TRAIN]     # the gap variants: stores of the same people, --pooling gap
"""

from __future__ import annotations

import argparse
import time

import numpy as np

VARIANTS = ("lin", "mlp", "shared", "inst", "ev", "geo", "weight5", "swapdrop", "swapfix", "tied", "tiedgeo",
            "geoinst", "geo128", "geo2", "geoev", "georank", "georank3", "geogap", "geogapk")
GEO = ("geo", "geogap", "geogapk", "swapdrop", "swapfix", "tiedgeo", "geoinst", "geo128", "geoev", "geo2", "georank",
       "georank3")
RANK = {"georank": 1.0, "georank3": 3.0}  # weight of the pairwise instance-ranking loss
RANK_PAIRS, RANK_TEMP = 200_000, 10.0
TIED = ("tied", "tiedgeo")
SWAP_MARGIN = 0.1


def _geometry(paths, stores, ev) -> np.ndarray:
    """(N, G) whole-pose inputs: crop-normalised keypoints, pairwise distances, raw scores, closed form."""
    from posecal.models.store import FeatureStore

    G = []
    for p, d in zip(paths, stores, strict=True):
        Ms = FeatureStore.open(p).read("crop_transform")
        kp = np.array([r["keypoints"] for r in d.records]).reshape(len(d.records), -1, 3)[:, :, :2]
        uv = np.einsum("nij,nkj->nki", Ms[:, :, :2], kp) + Ms[:, None, :, 2]
        G.append(uv / 256.0 - 0.5)
    P = np.concatenate(G)
    iu = np.triu_indices(P.shape[1], 1)
    dist = np.linalg.norm(P[:, iu[0]] - P[:, iu[1]], axis=-1)
    raw = np.concatenate([np.array([r["keypoints"][2::3] for r in d.records]) for d in stores])
    return np.concatenate([P.reshape(len(P), -1), dist, raw, ev[:, :, 1]], 1).astype(np.float32)


def _fit(variant, X, GI, T, V, w, seed=0):
    """Train one variant on rows (X (N, K, C), GI (N, G) or None, T/V (N, K), w (N,) row weights); returns a
    predictor rows -> (ŝ, v̂)."""
    import torch

    torch.manual_seed(seed)
    N, K, C = X.shape
    mu, sd = X.mean(0), X.std(0) + 1e-6
    xt = torch.from_numpy((X - mu) / sd).float()
    lab = torch.from_numpy(~np.isnan(T)).float()
    wt = torch.from_numpy(w).float()[:, None]
    Tt, Vt = torch.from_numpy(np.nan_to_num(T)).float(), torch.from_numpy(V.astype(np.float32))
    inst = (torch.nan_to_num(torch.from_numpy(T)).float() * lab).sum(1) / lab.sum(1).clamp(min=1)
    p: dict[str, torch.nn.Parameter] = {"W": torch.nn.Parameter(torch.zeros(K, C, 2)),
                                        "b": torch.nn.Parameter(torch.zeros(K, 2))}
    H = {"mlp": 32, "shared": 64, "geo128": 128}.get(variant, 64 if variant in GEO else 0)
    if variant == "mlp":
        p["W1"] = torch.nn.Parameter(torch.randn(K, C, H) * (2 / C) ** 0.5)
        p["b1"] = torch.nn.Parameter(torch.zeros(K, H))
        p["W2"] = torch.nn.Parameter(torch.randn(K, H, 2) * (1 / H) ** 0.5)
    elif variant == "shared":
        p["W1"] = torch.nn.Parameter(torch.randn(C, H) * (2 / C) ** 0.5)
        p["b1"] = torch.nn.Parameter(torch.zeros(K, H))
        p["W2"] = torch.nn.Parameter(torch.randn(K, H, 2) * (1 / H) ** 0.5)
    gm = gs = None
    if variant in GEO:
        gm, gs = GI.mean(0), GI.std(0) + 1e-6
        p["W1"] = torch.nn.Parameter(torch.randn(GI.shape[1], H) * (2 / GI.shape[1]) ** 0.5)
        p["b1"] = torch.nn.Parameter(torch.zeros(H))
        p["W2"] = torch.nn.Parameter(torch.zeros(H, K * 2))
        if variant == "geo2":
            p["W3"] = torch.nn.Parameter(torch.randn(H, H) * (2 / H) ** 0.5)
            p["b3"] = torch.nn.Parameter(torch.zeros(H))

    if variant == "mlp":  # the MLP replaces the linear map
        del p["W"]
    pidx = None
    if variant in TIED:  # one map per left/right pair (and per unpaired keypoint)
        from posecal.keypoints import get_keypoint_set

        _, inv = np.unique(np.minimum(np.arange(K), get_keypoint_set("lsp14").flip_index()), return_inverse=True)
        pidx = torch.from_numpy(inv)
        p["W"] = torch.nn.Parameter(torch.zeros(int(inv.max()) + 1, C, 2))

    def logits(x, g):
        if variant == "mlp":
            h = torch.relu(torch.einsum("nkc,kch->nkh", x, p["W1"]) + p["b1"])
            return torch.einsum("nkh,khj->nkj", h, p["W2"]) + p["b"]
        z = torch.einsum("nkc,kcj->nkj", x, p["W"] if pidx is None else p["W"][pidx]) + p["b"]
        if variant == "shared":
            z = z + torch.einsum("nkh,khj->nkj", torch.relu(x @ p["W1"] + p["b1"]), p["W2"])
        elif variant == "geo2":
            h1 = torch.relu(g @ p["W1"] + p["b1"])
            z = z + (torch.relu(h1 @ p["W3"] + p["b3"]) @ p["W2"]).view(-1, K, 2)
        elif variant in GEO:
            z = z + (torch.relu(g @ p["W1"] + p["b1"]) @ p["W2"]).view(-1, K, 2)
        return z

    gt = torch.from_numpy((GI - gm) / gs).float() if variant in GEO else None
    if variant in RANK:
        thr = torch.linspace(0.5, 0.95, 10)
        has = lab.sum(1) > 0
        gfrac = (inst[:, None] > thr).float().mean(1)
        rows = torch.nonzero(has).squeeze(1)
        gen = torch.Generator().manual_seed(seed)
        pi = rows[torch.randint(len(rows), (RANK_PAIRS,), generator=gen)]
        pj = rows[torch.randint(len(rows), (RANK_PAIRS,), generator=gen)]
        dg = gfrac[pi] - gfrac[pj]
        keep = dg != 0
        pi, pj, dg = pi[keep], pj[keep], dg[keep]
    opt = torch.optim.LBFGS(list(p.values()), max_iter=200 if H else 100, line_search_fn="strong_wolfe",
                            history_size=20)

    def closure():
        opt.zero_grad()
        z = logits(xt, gt)
        s = torch.sigmoid(z[..., 0])
        m = lab * wt
        loss = (((s - Tt) ** 2) * m).sum() / m.sum()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z[..., 1], Vt, reduction="none")
        loss = loss + 0.2 * (bce * wt).sum() / (wt.sum() * K)
        if variant in ("inst", "geoinst"):
            loss = loss + (((s * lab).sum(1) / lab.sum(1).clamp(min=1) - inst) ** 2).mean()
        if variant in RANK:
            v = torch.sigmoid(z[..., 1])
            c = (v * s).sum(1) / v.sum(1).clamp(min=1e-6)
            r = torch.nn.functional.softplus(-RANK_TEMP * (c[pi] - c[pj]) * torch.sign(dg))
            loss = loss + RANK[variant] * (r * dg.abs()).sum() / dg.abs().sum()
        loss = loss + 1e-3 / 2 * sum((v ** 2).sum() for k, v in p.items() if not k.startswith("b"))
        loss.backward()
        return loss

    opt.step(closure)

    def predict(Xr, Gr):
        with torch.no_grad():
            g = torch.from_numpy((Gr - gm) / gs).float() if variant in GEO else None
            z = logits(torch.from_numpy((Xr - mu) / sd).float(), g)
        return torch.sigmoid(z[..., 0]).double().numpy(), torch.sigmoid(z[..., 1]).double().numpy()

    return predict


def _gap_features(paths, gap_paths) -> np.ndarray:
    """(N, C) global-average-pooled features of the same rows as the stores at ``paths`` (checked row by row)."""
    from posecal.models.store import FeatureStore

    if len(gap_paths) != len(paths):
        raise SystemExit(f"the gap variants need --gap once per store ({len(paths)}), got {len(gap_paths)}")
    out = []
    for p, gp in zip(paths, gap_paths, strict=True):
        a, g = FeatureStore.open(p), FeatureStore.open(gp)
        if g.meta.get("pooling") != "gap" or not np.array_equal(a.read("ann_id"), g.read("ann_id")) \
                or not np.allclose(a.read("keypoints"), g.read("keypoints")):
            raise SystemExit(f"{gp}: not a --pooling gap store of the same rows as {p}")
        out.append(g.read(g.feature_name).reshape(g.num_instances, -1))
    return np.concatenate(out).astype(np.float32)


def _mirrored_targets(paths, stores) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) keypoint OKS and visibility against each person's left/right-mirrored annotation."""
    from posecal.keypoints import get_keypoint_set
    from posecal.metrics.oks import keypoint_oks
    from posecal.models.store import FeatureStore

    T, V = [], []
    for p, d in zip(paths, stores, strict=True):
        fs = FeatureStore.open(p)
        ks = get_keypoint_set(str(d.meta["keypoint_set"]))
        row = {int(a): i for i, a in enumerate(d.gt.ann_id)}
        g = np.array([row[int(a)] for a in fs.read("ann_id")])
        gtk = d.gt.keypoints[g][:, ks.flip_index()]
        T.append(keypoint_oks(fs.read("keypoints"), gtk, d.gt.area[g], ks.sigmas))
        V.append(gtk[..., 2] > 0)
    return np.concatenate(T), np.concatenate(V)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/ccnet")
    ap.add_argument("--variants", default=",".join(v for v in VARIANTS if not v.startswith("geogap")))
    ap.add_argument("--gap", action="append", default=[],
                    help="the gap variants: `posecal extract --pooling gap` stores of STORE_LSPET's and "
                         "STORE_LSP_TRAIN's people, in that order")
    args = ap.parse_args()
    import torch

    from posecal.ccnet.select import FoldEvaluator, image_folds
    from posecal.ccnet.targets import evidence_columns, load_store
    from posecal.rescore.aggregate import instance_score

    torch.set_num_threads(1)
    paths = [f"{args.work}/STORE_LSPET", f"{args.work}/STORE_LSP_TRAIN"]
    stores = [load_store(p) for p in paths]
    folds = np.concatenate(image_folds([np.array([int(r["image_id"]) for r in d.records]) for d in stores], 3, 0))
    fe = FoldEvaluator(stores)
    store_of = np.concatenate([np.full(len(d.records), i) for i, d in enumerate(stores)])
    X = np.concatenate([d.features for d in stores]).astype(np.float32)
    T = np.concatenate([d.oks for d in stores])
    V = np.concatenate([d.vis for d in stores])
    ev = np.concatenate([evidence_columns(d.path, ("score", "cf", "log_sigma"), d.sigmas) for d in stores])
    GI = _geometry(paths, stores, ev)
    variants = args.variants.split(",")
    if unknown := sorted(set(variants) - set(VARIANTS)):
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    gap = _gap_features(paths, args.gap) if {"geogap", "geogapk"} & set(variants) else None
    Tm = Vm = swap = None
    if {"swapdrop", "swapfix"} & set(variants):  # only the swap variants need the mirrored targets
        Tm, Vm = _mirrored_targets(paths, stores)
        swap = (np.nanmean(Tm, 1) > np.nanmean(T, 1) + SWAP_MARGIN) & (store_of == 0)  # suspected LSPET swaps
    held = [np.flatnonzero(folds == f) for f in range(3)]
    part = {"all": None, "LSPET": 0, "LSP train": 1}
    own = {n: np.mean([fe.ap(h if s is None else h[store_of[h] == s])["AP"] for h in held]) for n, s in part.items()}
    print(f"{'variant':<10} " + " ".join(f"{n + ' AP':>13} {'Δ':>6}" for n in part) + f" {'s':>5}")
    print(f"{'own score':<10} " + " ".join(f"{100 * own[n]:13.2f} {'':>6}" for n in part))
    for variant in variants:
        t0 = time.perf_counter()
        Xv = np.concatenate([X, ev], -1) if variant in ("ev", "geoev") else X
        if variant == "geogapk":
            Xv = np.concatenate([X, np.broadcast_to(gap[:, None, :], (*X.shape[:2], gap.shape[1]))], -1)
        GIv = np.concatenate([GI, gap], 1) if variant == "geogap" else GI
        res = {n: [] for n in part}
        for f, h in enumerate(held):
            tr = np.flatnonzero(folds != f)
            if variant == "swapdrop":
                tr = tr[~swap[tr]]
            Tt, Vt = T[tr].copy(), V[tr].copy()
            if variant == "swapfix":
                m = swap[tr]
                Tt[m], Vt[m] = Tm[tr][m], Vm[tr][m]
            w = np.where(store_of[tr] == 1, 5.0 if variant == "weight5" else 1.0, 1.0)
            pred = _fit(variant, Xv[tr], GIv[tr], Tt, Vt, w)
            s, v = pred(Xv[h], GIv[h])
            c = instance_score(s, "visibility", None, visibility=v)
            for n, st in part.items():
                m = np.ones(len(h), bool) if st is None else store_of[h] == st
                res[n].append(fe.ap(h[m], c[m])["AP"])
        print(f"{variant:<10} " + " ".join(f"{100 * np.mean(res[n]):13.2f} {100 * (np.mean(res[n]) - own[n]):+6.2f}"
                                           for n in part) + f" {time.perf_counter() - t0:5.0f}", flush=True)


if __name__ == "__main__":
    main()
