"""Robustness studies of the paper on real crops (Sec. 6.5, Figs. 3 and 4).

* :mod:`posecal.studies.occlusion` — circular occluders and Gaussian blurs of growing radius pasted at one
  joint; mean OKS, raw confidence and CCNet confidence against the radius (Fig. 3).
* :mod:`posecal.studies.visibility` — confidence of visible vs occluded joints (raw vs CCNet) and AP of the
  instance-score aggregation variants (all keypoints, τ-threshold, gt visibility, predicted visibility)
  (Fig. 4).

Both write a PNG and a JSON (atomically) and import matplotlib, torch and the model backends inside
their functions.
"""
