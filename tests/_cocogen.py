"""Random COCO keypoint sets for the evaluator tests (test helper, not a test module).

Every pycocotools corner case can occur: crowd regions, gts without labelled keypoints (box branch),
``num_keypoints`` disagreeing with the flags, images without gts, images without detections, more than 20
detections per image, tied scores, detections with all keypoint scores 0, areas exactly on the bucket
bounds, a gt with id 0, results with or without ``bbox``, a second category.
"""

from __future__ import annotations

import numpy as np

from posecal.keypoints import COCO17


def make_coco_set(seed: int, *, n_images: int = 5, max_gts: int = 6, max_dets: int = 25, p_crowd: float = 0.1,
                  p_zero_kpts: float = 0.15, p_tie: float = 0.3, gt_id_zero: bool = False,
                  result_bbox: bool = False, two_categories: bool = False, p_zero_score: float = 0.05,
                  nk_mismatch: float = 0.05, with_area: bool = True, K: int = 17,
                  p_dup: float = 0.1) -> tuple[dict, list]:
    """(gt dict, results list) from a seed and structural knobs."""
    rng = np.random.default_rng(seed)
    names = list(COCO17.names) if K == 17 else [f"kp{i}" for i in range(K)]
    cats = [{"id": 1, "name": "person", "keypoints": names, "skeleton": []}]
    if two_categories:
        cats.append({"id": 3, "name": "other", "keypoints": names, "skeleton": []})
    img_ids = rng.choice(np.arange(1, 10 * n_images + 10), size=n_images, replace=False).tolist()
    images = [{"id": int(i), "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in img_ids]
    anns, res = [], []
    next_id = 1 + int(rng.integers(0, 5))
    score_pool = np.round(rng.uniform(0, 1, 4), 2)
    for img in img_ids:
        ng = int(rng.integers(0, max_gts + 1)) if rng.uniform() > 0.15 else 0
        gts_here = []
        for _ in range(ng):
            s = float(np.exp(rng.uniform(np.log(8), np.log(300))))
            cx, cy = rng.uniform(0, 640), rng.uniform(0, 480)
            kp = np.zeros((K, 3))
            kp[:, 0] = cx + rng.normal(0, s / 3, K)
            kp[:, 1] = cy + rng.normal(0, s / 3, K)
            kp[:, 2] = rng.choice([0, 1, 2], size=K, p=[0.3, 0.2, 0.5])
            if rng.uniform() < p_zero_kpts:
                kp[:, 2] = 0
            kp[kp[:, 2] == 0, :2] = 0
            kp = np.round(kp, 2)
            nk = int(np.count_nonzero(kp[:, 2] > 0))
            if rng.uniform() < nk_mismatch:
                nk = 0 if nk > 0 else int(rng.integers(1, 5))
            area = s * s * rng.uniform(0.4, 0.9)
            u = rng.uniform()
            if u < 0.05:
                area = 32.0**2
            elif u < 0.1:
                area = 96.0**2
            elif u < 0.15:
                area = float(rng.integers(500, 20000))
            w, h = s * rng.uniform(0.5, 1.5), s * rng.uniform(0.5, 1.5)
            bbox = [round(cx - w / 2, 2), round(cy - h / 2, 2), round(w, 2), round(h, 2)]
            cat = 3 if two_categories and rng.uniform() < 0.3 else 1
            a = {"id": next_id, "image_id": int(img), "category_id": cat, "keypoints": kp.ravel().tolist(),
                 "num_keypoints": nk, "bbox": bbox, "iscrowd": int(rng.uniform() < p_crowd)}
            if with_area:
                a["area"] = round(float(area), 3)
            next_id += int(rng.integers(1, 4))
            anns.append(a)
            gts_here.append((kp, s, cat))
            if rng.uniform() < p_dup:  # an identical twin: equal OKS, the later gt must win
                twin = dict(a, id=next_id, iscrowd=int(rng.uniform() < p_crowd))
                next_id += 1
                anns.append(twin)
        nd = int(rng.integers(0, max_dets + 1)) if rng.uniform() > 0.1 else 0
        for _ in range(nd):
            if gts_here and rng.uniform() < 0.75:
                kp_g, s, cat = gts_here[int(rng.integers(0, len(gts_here)))]
                sd = s * float(np.exp(rng.uniform(np.log(0.005), np.log(0.5))))
                kp = kp_g.copy()
                lab = kp[:, 2] > 0
                kp[:, 0] = np.where(lab, kp[:, 0], rng.uniform(0, 640, K)) + rng.normal(0, sd, K)
                kp[:, 1] = np.where(lab, kp[:, 1], rng.uniform(0, 480, K)) + rng.normal(0, sd, K)
                if rng.uniform() < 0.05:
                    kp[:, :2] = kp_g[:, :2]  # exact copy: OKS 1 on labelled keypoints
            else:
                cat = 3 if two_categories and rng.uniform() < 0.3 else 1
                kp = np.zeros((K, 3))
                kp[:, 0] = rng.uniform(0, 640) + rng.normal(0, 40, K)
                kp[:, 1] = rng.uniform(0, 480) + rng.normal(0, 40, K)
            kp[:, 2] = rng.uniform(0, 1, K)
            if rng.uniform() < p_zero_score:
                kp[:, 2] = 0
            kp = np.round(kp, 3)
            score = float(rng.choice(score_pool)) if rng.uniform() < p_tie else float(rng.uniform(0, 1))
            r = {"image_id": int(img), "category_id": int(cat), "keypoints": kp.ravel().tolist(),
                 "score": score}
            if result_bbox:
                x0, y0 = kp[:, 0].min(), kp[:, 1].min()
                w, h = float(kp[:, 0].max() - x0) * 1.1, float(kp[:, 1].max() - y0)
                r["bbox"] = [float(x0), float(y0), w, h]
            res.append(r)
    if gt_id_zero and anns:
        anns[int(rng.integers(0, len(anns)))]["id"] = 0
    order = rng.permutation(len(res))  # results file order is not grouped by image
    res = [res[i] for i in order]
    return {"images": images, "annotations": anns, "categories": cats}, res


def perturb_gt(gt: dict, seed: int, *, copies: int = 3, parts: bool = False) -> list:
    """Predictions made by perturbing every gt of a real fixture (noise, dropped/extra detections)."""
    rng = np.random.default_rng(seed)
    fields = ["keypoints"] + (["foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts"] if parts else [])
    res = []
    for a in gt["annotations"]:
        bw, bh = a["bbox"][2], a["bbox"][3]
        scale = max(np.sqrt(max(bw * bh, 1.0)), 4.0)
        for _ in range(int(rng.integers(0, copies + 1))):
            r = {"image_id": a["image_id"], "category_id": a["category_id"]}
            sd = scale * float(np.exp(rng.uniform(np.log(0.01), np.log(0.4))))
            for f in fields:
                k = np.array(a[f], dtype=np.float64).reshape(-1, 3)
                k[:, 0] = np.where(k[:, 2] > 0, k[:, 0], a["bbox"][0] + bw / 2) + rng.normal(0, sd, len(k))
                k[:, 1] = np.where(k[:, 2] > 0, k[:, 1], a["bbox"][1] + bh / 2) + rng.normal(0, sd, len(k))
                k[:, 2] = rng.uniform(0.05, 1.0, len(k))
                r[f] = np.round(k, 3).ravel().tolist()
            r["score"] = float(np.round(rng.uniform(0, 1), 2))
            if parts:
                for p in ("foot", "face", "lefthand", "righthand", "wholebody"):
                    r[f"{p}_score"] = float(rng.uniform(0, 1))
            res.append(r)
    rng.shuffle(res)
    return res
