"""CCNet — Calibrated ConfidenceNet (paper Sec. 5, App. B, C): a light head on a frozen pose model's features.

The numpy-only parts (:mod:`posecal.rescore.aggregate`, :mod:`posecal.ccnet.apply` record rewriting) import no
torch. :mod:`posecal.ccnet.heads`, :mod:`posecal.ccnet.loss`, :mod:`posecal.ccnet.train` and
:mod:`posecal.ccnet.checkpoint` import torch (the ``posecal[torch]`` extra) when they are imported; this
package's ``__init__`` imports none of them.

Head kinds (``HEAD_KINDS``) and the store feature tensor each one reads:

=====================  ======================  ==============================================================
kind                   store tensor            computation
=====================  ======================  ==============================================================
``fc``                 ``features_gap (N,C)``  one FC C→2K, sigmoid (paper, RLE-style pooled vectors)
``conv_gap``           ``features_spatial``    1×1 conv C→2K, global average pooling, sigmoid (paper). Since
                       ``(N,C,H,W)``           both are linear, this equals GAP then FC.
``conv_sigmoid_gap``   ``features_spatial``    1×1 conv C→2K, per-pixel sigmoid, then average pooling
                                               (keeps spatial information: a non-linearity before pooling)
``kpt``                ``features_kpt (N,K,C)``  per-keypoint FC C→2 on heatmap-weighted pooled features (the
                                               predicted heatmap k used as attention over the spatial map,
                                               pooled at extraction time)
``kpt_inst``           ``features_kpt (N,K,C)``  ``kpt``, with every ŝ_k multiplied by one instance gate
                                               q = σ(u · mean_k e_k + u₀), e_k the last 6 normalised input
                                               channels = the instance evidence (box score, the model's own
                                               keypoint scores): the probability that the detection is a
                                               person, learnt from unmatched detections (target 0) — the
                                               learned combination of CCNet with the detector's score
``kpt_pose``           ``features_kpt (N,K,C)``  ``kpt`` on the features, plus a pose-context MLP P→64→2K whose
                                               output adds to every keypoint's logits; P = the ``pose``
                                               evidence (the last P input channels: the instance's predicted
                                               skeleton in crop coordinates, its pairwise distances, raw
                                               scores and closed-form values,
                                               :data:`posecal.ccnet.targets.EVIDENCE`)
=====================  ======================  ==============================================================
"""

from __future__ import annotations

HEAD_KINDS: dict[str, str] = {
    "fc": "features_gap",
    "conv_gap": "features_spatial",
    "conv_sigmoid_gap": "features_spatial",
    "kpt": "features_kpt",
    "kpt_inst": "features_kpt",
    "kpt_pose": "features_kpt",
}
"""Head kind → the feature-store tensor it reads."""

FEATURE_TENSORS = ("features_gap", "features_kpt", "features_spatial")

__all__ = ["HEAD_KINDS", "FEATURE_TENSORS"]
