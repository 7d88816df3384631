"""The CV table of ``posecal fit --cv K`` on LSPET + LSP train, split over processes (not a test).

``posecal fit --store STORE_LSPET --store STORE_LSP_TRAIN --cv K`` scores the grid of
:func:`posecal.ccnet.select.default_grid` one recipe after another; on a shared 2-core machine that is slow,
so this script runs the same :func:`posecal.ccnet.select.cross_validate` (same folds: seed 0, by image) on
the grid rows ``--rows i,j,...`` only, writing one JSON per run; run it in parallel with disjoint rows and
merge with ``--merge``. The rows are the same numbers ``fit --cv K`` prints (deterministic training).

    PYTHONPATH=src nice python3 benchmarks/lsp_cv.py --work /tmp/ccnet --cv 3 --rows 0,3,6 --out /tmp/ccnet/cv_a.json
    PYTHONPATH=src python3 benchmarks/lsp_cv.py --merge /tmp/ccnet/cv_*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/ccnet")
    ap.add_argument("--cv", type=int, default=3)
    ap.add_argument("--rows", default=None, help="comma-separated grid indices (default: all)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="+", default=None)
    args = ap.parse_args()
    if args.merge:
        rows = sorted((r for f in args.merge for r in json.loads(Path(f).read_text())["rows"]),
                      key=lambda r: r["grid_index"])
        print(f"{'#':>2}  {'recipe':<62} {'CV AP':>7} {'sd':>6} {'own':>7} {'Δ':>7} {'s':>6}")
        for r in rows:
            own = sum(r["fold_base_ap"]) / len(r["fold_base_ap"])
            print(f"{r['grid_index']:>2}  {r['label']:<62} {100 * r['cv_ap']:7.2f} {100 * r['cv_ap_sd']:6.2f} "
                  f"{100 * own:7.2f} {100 * r['cv_delta_ap']:+7.2f} {r['seconds']:6.0f}")
        from posecal.ccnet.select import TOLERANCE

        top = max(r["cv_ap"] for r in rows)
        chosen = next(r for r in rows if r["cv_ap"] >= top - TOLERANCE)
        print(f"selected (best CV AP, the default unless beaten by > {100 * TOLERANCE:.1f} AP):", chosen["label"])
        return
    import torch

    from posecal.ccnet.fit import default_recipe, load_training_stores
    from posecal.ccnet.select import cross_validate, default_grid

    torch.set_num_threads(1)
    w = Path(args.work)
    stores, _ = load_training_stores([str(w / "STORE_LSPET"), str(w / "STORE_LSP_TRAIN")])
    grid = default_grid(default_recipe(stores[0].meta, stores[0].head_meta["feature_tensor"]))
    idx = [int(i) for i in args.rows.split(",")] if args.rows else list(range(len(grid)))
    out = []

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps({"k": args.cv, "rows": out}, indent=1))

    for i in idx:
        (row,) = cross_validate(stores, [grid[i]], k=args.cv, seed=0)
        out.append({"grid_index": i, **row.to_dict()})
        print(f"{i}: {row.recipe.label()}: CV AP {row.mean_ap:.4f} Δ {row.mean_delta:+.4f} {row.seconds:.0f} s",
              flush=True)
        save()


if __name__ == "__main__":
    main()
