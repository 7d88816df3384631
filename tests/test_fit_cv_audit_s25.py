"""Audit of ``posecal fit --cv K`` folds: an image's rows never split between training and validation, also
across several training stores made from the same data file (a plain and an ``--augment`` store, a gt-box and
a ``--boxes`` store), while stores of different data files whose image ids coincide stay apart; plus pins of
the CV table's determinism, the ``--json`` document and the refit on all rows."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from posecal.ccnet.fit import Recipe, load_training_stores  # noqa: E402
from posecal.ccnet.select import cross_validate  # noqa: E402
from posecal.cli import main  # noqa: E402
from test_ccnet_cli import make_store  # noqa: E402
from test_ccnet_select import spy_fit_head  # noqa: E402


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """Stores ``a`` and ``a2`` made from one data file (same gt.json; here identical rows, as a plain store and a
    second store of the same images), and ``b``: another data file whose image ids 1..N coincide with a's."""
    d = tmp_path_factory.mktemp("cv_audit")
    a = make_store(d / "a", N=30, seed=0)
    a2 = make_store(d / "a2", N=30, seed=0)
    b = make_store(d / "b", N=30, seed=5)
    assert (a / "gt.json").read_bytes() == (a2 / "gt.json").read_bytes() != (b / "gt.json").read_bytes()
    return d, [str(a), str(a2), str(b)]


def test_cv_never_trains_on_a_held_out_image_through_a_second_store_of_it(twin, monkeypatch):
    """Store a2 holds the images of store a: an image held out in a must be held out in a2 too, else its rows
    (identical features here) are trained on while a's copy is scored. Store b (another data file, same ids)
    is dealt on its own."""
    _, paths = twin
    stores = load_training_stores(paths)[0]
    seen = spy_fit_head(monkeypatch)
    k = 3
    rows = cross_validate(stores, [Recipe(steps=5, batch_size=16)], k=k, seed=0)
    assert len(seen) == k and len(rows[0].ap) == k
    a = stores[0]
    held = 0
    for X in seen:
        train_rows = {x.tobytes() for x in X}
        held += sum(f.tobytes() not in train_rows for f in a.features)
    assert held == len(a.features)  # each of a's rows (== a2's) left out of exactly one fold's training
    # the folds themselves: image i of a and of a2 always together; b's image ids are not tied to a's
    from posecal.ccnet.select import image_folds, store_image_keys

    ids, datasets = store_image_keys(stores)
    folds = image_folds(ids, k, 0, datasets=datasets)
    assert datasets[0] == datasets[1] != datasets[2]
    assert np.array_equal(folds[0], folds[1])
    assert not np.array_equal(folds[0], folds[2])


def test_cv_images_counted_once_across_stores_of_one_data_file(twin, capsys, monkeypatch):
    """``--cv K`` needs K images; two stores of the same 30 images hold 30 images, not 60."""
    import posecal.cli.fit as fit_cli

    # a2 stands in for a second store of a's images (a plain and an --augment store); its rows are identical to
    # a's, which fit refuses as a copy (tests/test_audit_s30_aliasing.py): that check is not the subject here
    monkeypatch.setattr(fit_cli, "_refuse_same_rows", lambda *a: None)
    d, paths = twin
    out = d / "h_many"
    assert main(["fit", "--store", paths[0], "--store", paths[1], "--out", str(out), "--cv", "31",
                 "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "--cv 31 needs at least 31 images; the stores hold 30" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_context_stage_cross_fit_keeps_an_image_of_two_stores_in_one_fold(twin, monkeypatch):
    """The context stage's cross-fitting (fit on detection stores) deals images as --cv does: the rows a
    fold's head scores out-of-fold were not trained on through the other store of the same data file."""
    import posecal.ccnet.fit as fit

    _, paths = twin
    stores = load_training_stores(paths[:2])[0]
    monkeypatch.setattr(fit, "_is_detection_store", lambda d: True)
    seen = spy_fit_head(monkeypatch)
    res = fit.fit_context_stage(stores, Recipe(steps=5, batch_size=16), folds=3)
    assert res is not None and len(seen) == 3
    held = 0  # each of a's rows (== a2's) is left out of exactly one fold's training
    for X in seen:
        train_rows = {x.tobytes() for x in X}
        held += sum(f.tobytes() not in train_rows for f in stores[0].features)
    assert held == len(stores[0].features)

def test_store_dataset_names_the_data_file():
    """The dataset of a store is its source data file (a subset store's gt.json differs, its ids are the same
    images); else its gt.json; else the store itself. String ids are keyed as strings, not store-local codes."""
    from posecal.ccnet.select import image_folds, store_dataset, store_image_keys

    m1 = {"data_sha256": "d", "files": {"gt.json": "g1"}}
    m2 = {"data_sha256": "d", "files": {"gt.json": "g2"}}
    assert store_dataset(m1, "p") == store_dataset(m2, "q")
    assert store_dataset({"files": {"gt.json": "g1"}}, "p") == store_dataset({"files": {"gt.json": "g1"}}, "q")
    assert store_dataset({}, "p") != store_dataset({}, "q")

    def fake(path, ids, names):  # a string-id store: its codes are positions in ITS sorted names
        return SimpleNamespace(path=path, records=[{"image_id": i} for i in ids],
                               meta={"data_sha256": "d", "image_id_strings": names},
                               image_codes=lambda: np.array([names.index(i) for i in ids], np.int64))

    s1 = fake("p", ["a", "b", "c", "c"], ["a", "b", "c"])
    s2 = fake("q", ["b", "c"], ["b", "c"])  # "b" is code 1 in s1, code 0 in s2
    ids, ds = store_image_keys([s1, s2])
    for seed in range(5):
        f1, f2 = image_folds(ids, 2, seed, datasets=ds)
        assert f1[1] == f2[0] and f1[2] == f1[3] == f2[1]


def test_cv_table_is_deterministic_and_json_is_strict(twin, tmp_path, capsys):
    """Same inputs, same --cv table (everything but the timings) and the same head; --json parses without
    NaN tokens; the refit uses every row with a target of every store."""
    _, paths = twin
    docs = []
    for r in range(2):
        out = tmp_path / f"h{r}"
        assert main(["fit", "--store", paths[0], "--store", paths[2], "--out", str(out), "--cv", "2",
                     "--steps", "10", "--batch-size", "16", "--json"]) == 0
        text = capsys.readouterr().out

        def no_const(c):
            raise AssertionError(f"non-JSON token {c}")

        docs.append(json.loads(text, parse_constant=no_const))
    a, b = docs
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in a["cv"]["rows"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in b["cv"]["rows"]]
    assert {"k", "seed", "selected", "tolerance", "rows"} <= set(a["cv"])
    assert a["cv"]["k"] == 2 and a["cv"]["selected"] == a["recipe"] == b["recipe"]
    for row in a["cv"]["rows"]:
        assert {"recipe", "label", "cv_ap", "cv_ap_sd", "cv_delta_ap", "fold_ap", "fold_base_ap", "fold_ar",
                "seconds"} <= set(row) and len(row["fold_ap"]) == 2
    assert (tmp_path / "h0" / "head.safetensors").read_bytes() == (tmp_path / "h1" / "head.safetensors").read_bytes()
    stores = load_training_stores([paths[0], paths[2]])[0]
    assert a["train"]["rows"] == sum(int(d.has_target.sum()) for d in stores)


def test_single_image_store_json_has_no_nan(tmp_path, capsys):
    """One image: --cv 2 is refused (one line, exit 2, nothing written); a plain fit's --json is strict JSON
    (an undefined Pearson is null, not NaN)."""
    one = make_store(tmp_path / "one", N=1, seed=0)
    assert main(["fit", "--store", str(one), "--out", str(tmp_path / "h"), "--cv", "2", "--steps", "2"]) == 2
    assert not (tmp_path / "h").exists()
    capsys.readouterr()
    assert main(["fit", "--store", str(one), "--out", str(tmp_path / "h"), "--steps", "2", "--json"]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)
    shutil.rmtree(tmp_path / "h")


def test_save_head_writes_the_same_bytes_for_the_same_head(tmp_path):
    """safetensors writes its ``__metadata__`` in hash-map order (random per call): the same head must still
    give byte-identical files (reproducible fits, comparable checksums). Eight saves: a random order would
    match all eight times with probability 2**-7."""
    from posecal.ccnet.checkpoint import load_head, save_head
    from posecal.ccnet.heads import CCNetHead

    torch.manual_seed(0)
    head = CCNetHead("kpt", 6, 14)
    blobs = set()
    for i in range(8):
        save_head(tmp_path / f"h{i}", head, {"keypoint_set": "lsp14"})
        blobs.add((tmp_path / f"h{i}" / "head.safetensors").read_bytes())
    assert len(blobs) == 1
    back, _ = load_head(tmp_path / "h0")
    for k, v in head.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
