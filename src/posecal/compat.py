"""A drop-in for pycocotools / xtcocotools scripts that evaluate keypoints.

    from posecal.compat import COCO, COCOeval   # instead of: from pycocotools.coco import COCO ...

    coco_gt = COCO("person_keypoints_val2017.json")
    coco_dt = coco_gt.loadRes("results.json")
    ev = COCOeval(coco_gt, coco_dt, "keypoints")
    ev.params.imgIds = img_ids                     # optional: params are honoured
    ev.evaluate(); ev.accumulate(); ev.summarize()
    ev.stats, ev.eval["precision"]                 # pycocotools' values and shapes

The surface is pycocotools 2.0's for ``iouType='keypoints'``: :class:`COCO` (``dataset``, ``anns``,
``imgs``, ``cats``, ``imgToAnns``, ``catToImgs``, ``getAnnIds``, ``getCatIds``, ``getImgIds``,
``loadAnns``, ``loadCats``, ``loadImgs``, ``loadRes``, ``info``), :class:`COCOeval` (``params`` with
``imgIds``, ``catIds``, ``iouThrs``, ``recThrs``, ``maxDets``, ``areaRng``, ``areaRngLbl``, ``useCats``,
``kpt_oks_sigmas``; ``evaluate()``, ``accumulate()``, ``summarize()`` with the same printed lines,
``stats``, ``eval`` with ``precision`` (T, R, K, A, M), ``recall`` (T, K, A, M), ``scores``, and
``evalImgs`` built on first access). xtcocotools' constructor arguments ``sigmas`` and ``use_area`` and its
``iouType='keypoints_crowd'`` (CrowdPose AP(E)/AP(M)/AP(H)) are accepted too; passing either argument, or
``keypoints_crowd``, selects xtcocotools' rules (``flavor``), otherwise pycocotools' — the numbers are the
reference's own, computed by :func:`posecal.metrics.cocoeval.evaluate`. Segmentation and box evaluation
are not provided (``iouType`` other than keypoints raises ValueError).
"""

from __future__ import annotations

import copy
import datetime
import time
from collections import defaultdict
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError

__all__ = ["COCO", "COCOeval", "Params"]


def _is_array_like(obj: Any) -> bool:
    return hasattr(obj, "__iter__") and hasattr(obj, "__len__")


def _as_list(x: Any) -> list:
    return list(x) if _is_array_like(x) else [x]


class COCO:
    """pycocotools' ``COCO`` for keypoint ground truth and results (index over the parsed JSON)."""

    def __init__(self, annotation_file: str | None = None) -> None:
        self.dataset: dict = {}
        self.anns: dict = {}
        self.cats: dict = {}
        self.imgs: dict = {}
        self.imgToAnns: defaultdict = defaultdict(list)
        self.catToImgs: defaultdict = defaultdict(list)
        self.anno_file = [annotation_file]  # xtcocotools keeps the file names
        self._gt = None
        self._res = None
        if annotation_file is not None:
            from posecal.io.fastjson import read_json

            print("loading annotations into memory...")
            tic = time.time()
            dataset = read_json(str(annotation_file), None)[0]
            if type(dataset) is not dict:
                raise PosecalInputError(f"annotation file format {type(dataset).__name__} not supported",
                                        str(annotation_file))
            print(f"Done (t={time.time() - tic:0.2f}s)")
            self.dataset = dataset
            self.createIndex()

    def createIndex(self) -> None:  # noqa: N802 (pycocotools' name)
        print("creating index...")
        anns, cats, imgs = {}, {}, {}
        img_to_anns, cat_to_imgs = defaultdict(list), defaultdict(list)
        for ann in self.dataset.get("annotations", []):
            img_to_anns[ann["image_id"]].append(ann)
            anns[ann["id"]] = ann
        for img in self.dataset.get("images", []):
            imgs[img["id"]] = img
        for cat in self.dataset.get("categories", []):
            cats[cat["id"]] = cat
        if "annotations" in self.dataset and "categories" in self.dataset:
            for ann in self.dataset["annotations"]:
                cat_to_imgs[ann["category_id"]].append(ann["image_id"])
        print("index created!")
        self.anns, self.imgToAnns, self.catToImgs = anns, img_to_anns, cat_to_imgs
        self.imgs, self.cats = imgs, cats
        self._gt = None

    def info(self) -> None:
        for key, value in self.dataset["info"].items():
            print(f"{key}: {value}")

    def getAnnIds(self, imgIds: Any = (), catIds: Any = (), areaRng: Any = (),  # noqa: N802, N803
                  iscrowd: Any = None) -> list:
        img_ids, cat_ids = _as_list(imgIds), _as_list(catIds)
        if len(img_ids) == len(cat_ids) == len(areaRng) == 0:
            anns = self.dataset["annotations"]
        else:
            if img_ids:
                anns = [a for i in img_ids if i in self.imgToAnns for a in self.imgToAnns[i]]
            else:
                anns = self.dataset["annotations"]
            anns = anns if not cat_ids else [a for a in anns if a["category_id"] in cat_ids]
            anns = anns if len(areaRng) == 0 else [a for a in anns if areaRng[0] < a["area"] < areaRng[1]]
        if iscrowd is not None:
            return [a["id"] for a in anns if a["iscrowd"] == iscrowd]
        return [a["id"] for a in anns]

    def getCatIds(self, catNms: Any = (), supNms: Any = (), catIds: Any = ()) -> list:  # noqa: N802, N803
        nms, sup, ids = _as_list(catNms), _as_list(supNms), _as_list(catIds)
        cats = self.dataset["categories"]
        cats = cats if not nms else [c for c in cats if c["name"] in nms]
        cats = cats if not sup else [c for c in cats if c["supercategory"] in sup]
        cats = cats if not ids else [c for c in cats if c["id"] in ids]
        return [c["id"] for c in cats]

    def getImgIds(self, imgIds: Any = (), catIds: Any = ()) -> list:  # noqa: N802, N803
        img_ids, cat_ids = _as_list(imgIds), _as_list(catIds)
        if len(img_ids) == len(cat_ids) == 0:
            return list(self.imgs.keys())
        ids = set(img_ids)
        for i, cat in enumerate(cat_ids):
            ids = set(self.catToImgs[cat]) if i == 0 and not ids else ids & set(self.catToImgs[cat])
        return list(ids)

    def loadAnns(self, ids: Any = ()) -> list:  # noqa: N802
        return [self.anns[i] for i in ids] if _is_array_like(ids) else [self.anns[ids]]

    def loadCats(self, ids: Any = ()) -> list:  # noqa: N802
        return [self.cats[i] for i in ids] if _is_array_like(ids) else [self.cats[ids]]

    def loadImgs(self, ids: Any = ()) -> list:  # noqa: N802
        return [self.imgs[i] for i in ids] if _is_array_like(ids) else [self.imgs[ids]]

    def loadRes(self, resFile: Any) -> COCO:  # noqa: N802, N803
        """Results (a file name or a list of keypoint records) as a COCO object, as pycocotools does:
        each record gets ``id`` = position + 1 and, from its keypoints' extent, ``bbox`` and ``area``
        (or ``area`` = w·h of its own ``bbox`` when the first record has one)."""
        from posecal.io.coco import load_results
        from posecal.io.fastjson import read_json

        res = COCO()
        res.dataset["info"] = copy.deepcopy(self.dataset.get("info", {}))
        res.dataset["images"] = list(self.dataset["images"])
        print("Loading and preparing results...")
        tic = time.time()
        path = str(resFile) if isinstance(resFile, str) else None
        anns = read_json(path, None)[0] if path is not None else resFile
        if type(anns) is not list:
            raise PosecalInputError("results in not an array of objects", path)
        res._res = load_results(anns, self.ground_truth(), file=path)  # validates, as arrays
        res.dataset["categories"] = copy.deepcopy(self.dataset["categories"])
        boxes = bool(anns) and bool(anns[0].get("bbox"))
        for i, ann in enumerate(anns):
            ann["area"] = float(res._res.det_area[i])
            ann["id"] = i + 1
            if boxes:
                ann["iscrowd"] = 0
            else:
                x0, y0 = res._res.keypoints[i, :, 0].min(), res._res.keypoints[i, :, 1].min()
                x1, y1 = res._res.keypoints[i, :, 0].max(), res._res.keypoints[i, :, 1].max()
                ann["bbox"] = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        print(f"DONE (t={time.time() - tic:0.2f}s)")
        res.dataset["annotations"] = anns
        res.anno_file = [self.anno_file[0], path]
        res.createIndex()
        return res

    def ground_truth(self):
        """The dataset as :class:`posecal.io.coco.CocoGroundTruth` (validated once, cached)."""
        from posecal.io.coco import load_gt

        if self._gt is None:
            self._gt = load_gt(self.dataset, file=self.anno_file[0])
        return self._gt


class Params:
    """pycocotools' ``Params`` for keypoints (``iouType='keypoints'`` or ``'keypoints_crowd'``)."""

    def __init__(self, iouType: str = "keypoints") -> None:  # noqa: N803
        from posecal.keypoints import COCO17

        if "keypoints" not in iouType:
            raise ValueError(f"posecal.compat evaluates keypoints only, not iouType {iouType!r}")
        self.imgIds: list = []
        self.catIds: list = []
        self.iouThrs = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
        self.recThrs = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
        self.maxDets = [20]
        self.areaRng = [[0**2, 1e5**2], [32**2, 96**2], [96**2, 1e5**2]]
        self.areaRngLbl = ["all", "medium", "large"]
        self.useCats = 1
        self.kpt_oks_sigmas = np.array(COCO17.sigmas, dtype=np.float64)
        self.iouType = iouType
        self.useSegm = None


class COCOeval:
    """pycocotools' ``COCOeval`` for keypoints (see the module docstring)."""

    def __init__(self, cocoGt: COCO | None = None, cocoDt: COCO | None = None,  # noqa: N803
                 iouType: str = "keypoints", sigmas: Any = None, use_area: bool | None = None,
                 flavor: str | None = None) -> None:
        self.cocoGt, self.cocoDt = cocoGt, cocoDt
        self.params = Params(iouType=iouType)
        self.evalImgs_: list | None = None
        self.eval: dict = {}
        self.stats: Any = []
        self._paramsEval: Any = {}
        self._result = None
        xt = sigmas is not None or use_area is not None or iouType == "keypoints_crowd"
        self.flavor = flavor or ("xtcocotools" if xt else "pycocotools")
        self.use_area = True if use_area is None else bool(use_area)
        self.sigmas = None if sigmas is None else np.asarray(sigmas, dtype=np.float64)
        if xt and self.sigmas is None:
            self.sigmas = self.params.kpt_oks_sigmas.copy()  # xtcocotools' default: COCO's
        if cocoGt is not None:
            self.params.imgIds = sorted(cocoGt.getImgIds())
            self.params.catIds = sorted(cocoGt.getCatIds())
            self.anno_file = cocoGt.anno_file

    # -- pycocotools' three steps --
    def evaluate(self) -> None:
        from posecal.metrics.cocoeval import evaluate

        print("Running per image evaluation...")
        tic = time.time()
        p = self.params
        print(f"Evaluate annotation type *{p.iouType}*")
        p.imgIds = list(np.unique(p.imgIds))
        if p.useCats:
            p.catIds = list(np.unique(p.catIds))
        p.maxDets = sorted(p.maxDets)
        gt = self.cocoGt.ground_truth()
        res = _results_of(self.cocoDt, gt)
        sig = self.sigmas if self.sigmas is not None else p.kpt_oks_sigmas
        self._result = evaluate(
            gt, res, sigmas=sig, use_area=self.use_area, flavor=self.flavor, max_dets=p.maxDets,
            img_ids=np.asarray(p.imgIds, dtype=np.int64), cat_ids=np.asarray(p.catIds, dtype=np.int64),
            use_cats=bool(p.useCats), iou_thrs=p.iouThrs, rec_thrs=p.recThrs, area_rngs=p.areaRng,
            area_labels=p.areaRngLbl, crowd_levels=p.iouType == "keypoints_crowd", keep_matches=True,
            warn=False)
        self.evalImgs_ = None
        self._paramsEval = copy.deepcopy(p)
        print(f"DONE (t={time.time() - tic:0.2f}s).")

    def accumulate(self, p: Params | None = None) -> None:
        print("Accumulating evaluation results...")
        tic = time.time()
        if self._result is None:
            print("Please run evaluate() first")
            return
        p = self.params if p is None else p
        p.catIds = p.catIds if p.useCats == 1 else [-1]  # pycocotools rewrites them so
        r = self._result
        self.eval = {"params": p, "counts": list(r.precision.shape), "precision": r.precision,
                     "recall": r.recall, "scores": r.scores,
                     "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
        print(f"DONE (t={time.time() - tic:0.2f}s).")

    def summarize(self) -> None:
        """Print the summary lines and set ``stats`` (pycocotools' 10; xtcocotools' 9 for keypoints_crowd)."""
        if not self.eval:
            raise Exception("Please run accumulate() first")
        from posecal.metrics.cocoeval import _Settings, _summary_value

        p, r = self.params, self._result
        fmt = (" {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = "
               + ("{:0.3f}" if self.flavor == "pycocotools" else "{: 0.3f}"))
        st = _Settings(np.asarray(p.iouThrs, dtype=np.float64), np.asarray(p.recThrs, dtype=np.float64),
                       np.asarray(p.areaRng, dtype=np.float64), tuple(p.maxDets), r.cat_ids, r.img_ids,
                       bool(p.useCats), self.use_area, self.flavor, r.crowd_levels)
        rows = [(1, None, "all"), (1, 0.5, "all"), (1, 0.75, "all"), (1, None, "medium"), (1, None, "large"),
                (0, None, "all"), (0, 0.5, "all"), (0, 0.75, "all"), (0, None, "medium"), (0, None, "large")]
        if r.crowd_levels:
            rows = [rows[i] for i in (0, 1, 2, 5, 6, 7)]
        stats = []
        for ap, thr, area in rows:
            v = _summary_value(r.precision, r.recall, st, p.areaRngLbl, bool(ap), thr, area, 20)
            iou = f"{p.iouThrs[0]:0.2f}:{p.iouThrs[-1]:0.2f}" if thr is None else f"{thr:0.2f}"
            title, typ = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
            print(fmt.format(title, typ, iou, area, 20, v))
            stats.append(v)
        if r.crowd_levels:
            tfmt = " {:<18} {} @[ IoU={:<9} | type={:>6s} | maxDets={:>3d} ] = {:0.3f}"
            iou = f"{p.iouThrs[0]:0.2f}:{p.iouThrs[-1]:0.2f}"
            for level, name in (("easy", "AP(E)"), ("medium", "AP(M)"), ("hard", "AP(H)")):
                print(tfmt.format("Average Precision", "(AP)", iou, level, 20, r.stats[name]))
                stats.append(r.stats[name])
        self.stats = np.asarray(stats, dtype=np.float64)

    def __str__(self) -> str:
        self.summarize()
        return ""

    # -- per-image results, built when first asked for --
    @property
    def evalImgs(self) -> list:  # noqa: N802
        """pycocotools' per (category, area range, image) dicts (None where the image has neither gts nor
        detections of the category)."""
        if self.evalImgs_ is None and self._result is not None:
            self.evalImgs_ = _eval_imgs(self._result, self.cocoGt.ground_truth(), self.params, self.flavor)
        return self.evalImgs_ or []

    @property
    def ious(self) -> dict:
        raise NotImplementedError("posecal.compat computes OKS only for candidate pairs; ious is not kept")


def _results_of(coco_dt: COCO | None, gt):
    """The detections of a results COCO object (from ``loadRes``, or built by hand from a dataset)."""
    from posecal.io.coco import load_results

    if coco_dt is None:
        return []
    if coco_dt._res is None:
        coco_dt._res = load_results(coco_dt.dataset.get("annotations", []), gt)
    return coco_dt._res


def _eval_imgs(r, gt, p: Params, flavor: str) -> list:
    """Rebuild pycocotools' ``evalImgs`` from the evaluator's sparse matches."""
    det = r.match_detail.det
    g = r.match_detail.gt
    mt = r.match_detail.matches
    d_ig = r.match_detail.det_ignored
    score = r.match_detail.score
    T, A = len(p.iouThrs), len(p.areaRng)
    nI = len(r.img_ids)
    unmatched = 0 if flavor != "xtcocotools" else -1
    dets_by_unit: dict[int, np.ndarray] = {}
    order = np.argsort(det.unit, kind="stable")
    for u, rows in _groups(det.unit[order], order):
        dets_by_unit[u] = rows  # kept-detection rows in rank order
    gts_by_unit: dict[int, np.ndarray] = {}
    order = np.argsort(g.unit, kind="stable")
    for u, rows in _groups(g.unit[order], order):
        gts_by_unit[u] = rows
    by_combo_det: dict[tuple[int, int], int] = {}
    for k, c, gg in zip(mt.det.tolist(), mt.combo.tolist(), mt.gt.tolist(), strict=True):
        by_combo_det[(c, k)] = gg
    out = []
    cat_list = list(r.cat_ids) if p.useCats else [-1]
    for ci, cat in enumerate(cat_list):
        for a in range(A):
            for ii, img in enumerate(r.img_ids.tolist()):
                u = ci * nI + ii
                drows = dets_by_unit.get(u, np.zeros(0, np.int64))
                grows = gts_by_unit.get(u, np.zeros(0, np.int64))
                if drows.size == 0 and grows.size == 0:
                    out.append(None)
                    continue
                gtig = g.ignore_a[a][grows].astype(np.int64)
                gord = np.argsort(gtig, kind="mergesort")
                grows, gtig = grows[gord], np.array(gtig[gord].tolist())  # as pycocotools builds it
                slot = {int(gr): j for j, gr in enumerate(grows.tolist())}
                dtype = np.float64 if flavor != "xtcocotools" else np.int64
                dtm = np.full((T, drows.size), unmatched, dtype=dtype)
                gtm = np.full((T, grows.size), unmatched, dtype=dtm.dtype)
                dig = np.zeros((T, drows.size), dtype=bool)
                for j, k in enumerate(drows.tolist()):
                    for t in range(T):
                        c = a * T + t
                        dig[t, j] = d_ig[c, k]
                        gg = by_combo_det.get((c, k))
                        if gg is not None:
                            dtm[t, j] = g.ann_id[gg]
                            gtm[t, slot[gg]] = det.idx[k] + 1
                out.append({"image_id": img, "category_id": cat, "aRng": p.areaRng[a],
                            "maxDet": p.maxDets[-1],
                            "dtIds": [int(det.idx[k]) + 1 for k in drows.tolist()],
                            "gtIds": [int(g.ann_id[x]) for x in grows.tolist()],
                            "dtMatches": dtm, "gtMatches": gtm,
                            "dtScores": [float(score[det.idx[k]]) for k in drows.tolist()],
                            "gtIgnore": gtig, "dtIgnore": dig})
    return out


def _groups(keys: np.ndarray, rows: np.ndarray):
    """(key, rows) for runs of equal sorted keys."""
    if keys.size == 0:
        return
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], keys.size]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        yield int(keys[s]), rows[s:e]
