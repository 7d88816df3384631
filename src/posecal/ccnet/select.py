"""Recipe selection by cross-validation on training data (``posecal fit --cv K``). Imports torch.

Folds are by image: every row of an image (all its people, all augmented copies, and its rows in every
training store made from the same data file — e.g. a plain and an ``--augment`` store, or a gt-box and a
``--boxes`` store) falls in one fold, so no person is trained and scored on at once. The image key is
``(dataset, image_id)`` with the dataset named by :func:`store_dataset` (the store's source data file hash):
stores made from different data files never share an image, even where their image ids coincide.
A recipe's CV score is the COCO AP of the held-out fold's predictions rescored by a head trained on the
other folds, against the fold's own gt (the same evaluator as ``posecal evaluate``), averaged over the K
folds; the baseline is the store's own score (``predictions.json`` ``score``: the MMPose ``bbox_keypoint``
rule) on the same folds. Nothing here looks at a test split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from posecal.ccnet.fit import Recipe, training_arrays, training_masks
from posecal.ccnet.targets import StoreData, head_inputs

__all__ = ["image_folds", "image_count", "store_dataset", "store_image_keys", "FoldEvaluator", "cross_validate",
           "CVRow", "default_grid", "select", "TOLERANCE"]

TOLERANCE = 1e-3
"""Selection tolerance (0.1 AP point): a recipe must beat the first grid row (the default) by more than this
CV AP to replace it — differences below it are inside the fold-to-fold noise seen on LSPET + LSP train."""


def store_dataset(meta: dict[str, Any], path: str) -> str:
    """The dataset a store's image ids refer to: its source data file's hash (``meta["data_sha256"]``), else
    its gt.json's (``meta["files"]["gt.json"]``), else the store itself (``path``, never shared). Two stores
    with the same key hold the same image under the same id."""
    sha = meta.get("data_sha256") or (meta.get("files") or {}).get("gt.json")
    return f"sha256:{sha}" if sha else f"store:{path}"


def store_image_keys(stores: Sequence[Any]) -> tuple[list[np.ndarray], list[str]]:
    """``(image ids per store, dataset per store)`` of :class:`StoreData` ``stores``: the arguments of
    :func:`image_folds`. String image ids are kept as strings (their codes are store-local: two stores of one
    data file holding different images number them differently)."""
    ids = [np.array([r["image_id"] for r in d.records], object) if d.meta.get("image_id_strings") is not None
           else d.image_codes() for d in stores]
    return ids, [store_dataset(d.meta, d.path) for d in stores]


def _image_key(x: Any) -> int | str:
    return x if isinstance(x, str) else int(x)


def image_count(image_keys: Sequence[np.ndarray], datasets: Sequence[Any] | None = None) -> int:
    """The number of distinct images :func:`image_folds` deals into folds (same arguments)."""
    ds = list(range(len(image_keys))) if datasets is None else list(datasets)
    return len({(ds[i], _image_key(x)) for i, ids in enumerate(image_keys) for x in np.unique(np.asarray(ids))})


def image_folds(image_keys: Sequence[np.ndarray], k: int, seed: int = 0,
                datasets: Sequence[Any] | None = None) -> list[np.ndarray]:
    """Fold index of every row: ``image_keys[i] (N_i,)`` are store i's image ids (integers or strings);
    returns ``[(N_i,) int]``.

    Images, keyed by ``(datasets[i], image_id)`` (``datasets`` default: the store index, so no two stores
    share an image), are shuffled with ``seed`` and dealt round-robin into ``k`` folds, so fold sizes differ
    by at most one image and all rows of an image share a fold — across stores of the same dataset too."""
    if k < 2:
        raise ValueError("k must be >= 2")
    ds = list(range(len(image_keys))) if datasets is None else list(datasets)
    if len(ds) != len(image_keys):
        raise ValueError(f"{len(image_keys)} stores but {len(ds)} datasets")
    keys = list(dict.fromkeys((ds[i], _image_key(x)) for i, ids in enumerate(image_keys)
                              for x in np.unique(np.asarray(ids))))
    if len(keys) < k:
        raise ValueError(f"{len(keys)} images cannot be split into {k} folds")
    perm = np.random.default_rng(seed).permutation(len(keys))
    fold_of = {keys[p]: j % k for j, p in enumerate(perm)}
    return [np.array([fold_of[(ds[i], _image_key(x))] for x in np.asarray(ids)], np.int64)
            for i, ids in enumerate(image_keys)]


class FoldEvaluator:
    """COCO AP/AR of a subset of rows of several stores, against their gts merged into one dataset (image
    and annotation ids offset per store so they never collide)."""

    def __init__(self, stores: Sequence[StoreData]):
        from posecal._util import read_json
        from posecal.datasets.coco import image_id_codes
        from posecal.models.store import FeatureStore

        self.stores = list(stores)
        self.images, self.anns, self.recs, self.row_store, self.row_img = [], [], [], [], []
        self.offset = []
        off = 0
        for i, d in enumerate(self.stores):
            g = read_json(FeatureStore.open(d.path).gt_path)
            # string image ids: their codes (the store's, load_gt's for its gt.json), numbers as they are
            codes = image_id_codes(im["id"] for im in g["images"])
            key = int if codes is None else codes.__getitem__
            ids = [key(im["id"]) for im in g["images"]]
            step = (max(ids + [int(a["id"]) for a in g["annotations"]] + [0]) + 1)
            self.offset.append(off)
            self.images += [{**im, "id": key(im["id"]) + off} for im in g["images"]]
            self.anns += [{**a, "id": int(a["id"]) + off, "image_id": key(a["image_id"]) + off}
                          for a in g["annotations"]]
            row_img = d.image_codes() + off
            self.recs += [{**r, "image_id": int(c)} for r, c in zip(d.records, row_img, strict=True)]
            self.row_store.append(np.full(len(d.records), i))
            self.row_img.append(row_img)
            off += step
        self.cats = g["categories"]
        self.row_img_all = np.concatenate(self.row_img)
        self.img_of_ann = np.array([a["image_id"] for a in self.anns], np.int64)
        self.img_ids = np.array([im["id"] for im in self.images], np.int64)
        self.base = np.array([r["score"] for r in self.recs], np.float64)
        self.starts = np.cumsum([0] + [len(d.records) for d in self.stores])

    def rows(self, per_store: Sequence[np.ndarray]) -> np.ndarray:
        """Global row indices of per-store row selections."""
        return np.concatenate([self.starts[i] + np.asarray(r, np.int64) for i, r in enumerate(per_store)])

    def ap(self, rows: np.ndarray, scores: np.ndarray | None = None) -> dict[str, float]:
        """AP/AR of global ``rows`` with instance ``scores (len(rows),)`` (default: the stores' own score),
        evaluated on the images of those rows."""
        from posecal.metrics.cocoeval import evaluate

        imgs = np.unique(self.row_img_all[rows])
        gt = {"images": [self.images[i] for i in np.flatnonzero(np.isin(self.img_ids, imgs))],
              "annotations": [self.anns[i] for i in np.flatnonzero(np.isin(self.img_of_ann, imgs))],
              "categories": self.cats}
        recs = [self.recs[r] for r in rows]
        sc = self.base[rows] if scores is None else np.asarray(scores, np.float64)
        ev = evaluate(gt, recs, scores=sc, sigmas=self.stores[0].sigmas, warn=False)
        return {"AP": float(ev.stats["AP"]), "AR": float(ev.stats["AR"])}


@dataclass
class CVRow:
    """One recipe's cross-validation result: per-fold AP of the rescored and of the baseline scores."""

    recipe: Recipe
    ap: list[float] = field(default_factory=list)
    base_ap: list[float] = field(default_factory=list)
    ar: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def _scored(self) -> np.ndarray:
        """Folds whose held-out images hold a labelled person: COCO's AP of the others is -1 ("no gt"), not a
        score to average in (tiny or sparsely labelled stores)."""
        keep = np.asarray(self.base_ap, np.float64) >= 0
        return keep if keep.any() else np.ones(len(self.ap), bool)

    @property
    def mean_ap(self) -> float:
        return float(np.mean(np.asarray(self.ap)[self._scored()]))

    @property
    def mean_base_ap(self) -> float:
        return float(np.mean(np.asarray(self.base_ap)[self._scored()]))

    @property
    def mean_delta(self) -> float:
        return float(np.mean(np.subtract(self.ap, self.base_ap)[self._scored()]))

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "label": self.recipe.label(), "cv_ap": self.mean_ap,
                "cv_ap_sd": float(np.std(np.asarray(self.ap)[self._scored()])), "cv_delta_ap": self.mean_delta,
                "fold_ap": self.ap,
                "fold_base_ap": self.base_ap, "fold_ar": self.ar, "seconds": self.seconds}


def default_grid(base: Recipe) -> list[Recipe]:
    """The documented CV grid: ``base`` (the store's default recipe) and one-factor variations of it —
    evidence columns (none; score; score + closed form; + log σ̂), ``kpt`` ↔ ``kpt_pose`` (the pose-context
    head with the ``pose`` evidence), confidence loss (MSE / BCE on OKS),
    L2 weight decay (×10, ÷10), training length (a quarter of the iterations: early stopping), and the
    optimiser (mini-batch Adam, lr 1e-2, batch 256, 2000 steps vs full-batch L-BFGS). Duplicates removed."""
    evid = [(), ("score",), ("score", "cf"), ("score", "cf", "log_sigma")]
    wd = base.weight_decay or 1e-4
    other_opt = (replace(base, optimizer="adam", lr=1e-2, batch_size=256, steps=2000) if base.optimizer == "lbfgs"
                 else replace(base, optimizer="lbfgs", steps=100))
    tail = ("pose",) if base.head == "kpt_pose" else ()
    plain = tuple(e for e in base.evidence if e != "pose")
    swap = ([replace(base, head="kpt", evidence=plain)] if base.head == "kpt_pose" else
            [replace(base, head="kpt_pose", evidence=plain + ("pose",))] if base.head == "kpt" else [])
    grid = [replace(base, evidence=e + tail) for e in evid] + swap + [
        replace(base, conf_loss="bce" if base.conf_loss == "mse" else "mse"),
        replace(base, weight_decay=wd * 10),
        replace(base, weight_decay=wd / 10),
        replace(base, steps=max(1, base.steps // 4)),
        other_opt,
    ]
    out: list[Recipe] = []
    for r in [base] + grid:
        if r not in out and (r.head in ("kpt", "kpt_pose") or not r.evidence):
            out.append(r)
    return out


def cross_validate(stores: Sequence[StoreData], grid: Sequence[Recipe], k: int = 5, seed: int = 0, *,
                   on_row: Callable[[CVRow], None] | None = None, show_progress: bool = False) -> list[CVRow]:
    """Score every recipe of ``grid`` by K-fold CV over images of ``stores`` (module docstring).

    Returns one :class:`CVRow` per recipe, in grid order."""
    import time

    from posecal.ccnet.train import fit_head, predict
    from posecal.rescore.aggregate import instance_score

    ids, datasets = store_image_keys(stores)
    folds = image_folds(ids, k, seed, datasets=datasets)
    fe = FoldEvaluator(stores)
    base_ap = []
    held = []
    for f in range(k):
        rows = fe.rows([np.flatnonzero(fo == f) for fo in folds])
        held.append(rows)
        base_ap.append(fe.ap(rows)["AP"])
    inputs: dict[tuple[str, ...], list[np.ndarray]] = {}
    out = []
    for recipe in grid:
        if recipe.evidence not in inputs:
            inputs[recipe.evidence] = [head_inputs(d, recipe.evidence) for d in stores]
        X_all = np.concatenate(inputs[recipe.evidence])
        row = CVRow(recipe=recipe, base_ap=list(base_ap))
        t0 = time.perf_counter()
        for f in range(k):
            train_rows = [np.flatnonzero(fo != f) for fo in folds]
            X, T, V = training_arrays([replace(d, features=inputs[recipe.evidence][i])
                                       for i, d in enumerate(stores)], (), train_rows)
            res = fit_head(X, T, V, recipe.train_config(), show_progress=show_progress,
                           **training_masks(stores, train_rows))
            s, v = predict(res.head, X_all[held[f]])
            box = np.concatenate([d.box_score for d in stores])[held[f]] if recipe.box_score else None
            c = instance_score(s, "visibility", box, visibility=v)
            m = fe.ap(held[f], c)
            row.ap.append(m["AP"])
            row.ar.append(m["AR"])
        row.seconds = time.perf_counter() - t0
        out.append(row)
        if on_row is not None:
            on_row(row)
    return out


def select(rows: Sequence[CVRow], tol: float = TOLERANCE) -> CVRow:
    """The selected row: the best CV AP, unless the first row (the default recipe) is within ``tol`` of it;
    among several rows within ``tol`` of the best, the earliest in grid order (the simpler variation)."""
    best = max(r.mean_ap for r in rows)
    return next(r for r in rows if r.mean_ap >= best - tol)
