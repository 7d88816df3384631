#!/usr/bin/env bash
# The issue-14 contract chain through the CLI, 2-fold by image on coco-mini (not a test; figures in
# docs/results.md, "Context stage": "The contract chain through the CLI"). coco-mini's 80 images are split
# into two halves of 40 (numpy default_rng(123).permutation of the sorted image ids: the first 40 are A);
# each half in turn plays the hidden check's training "COCOMINI" and the other the hidden test set:
#   detect -> extract --boxes -> fit --store S_LSPET --store S_TRAIN -> apply -> evaluate / compare.
# Usage (in an empty work directory):
#   bash benchmarks/coco17_chain.sh SHARED_DIR S_LSPET [MODEL]
# SHARED_DIR: ../shared; S_LSPET: the store of LSPET-as-COCO-17 made with the same pose model (`posecal convert
# lspet ... --keypoint-set coco17`, then `posecal extract --model MODEL` with defaults); MODEL: the pose model
# (default SHARED_DIR/models/simplepose/ultralight-nano-simplepose.onnx; e.g. .../movenet/movenet-thunder.onnx).
set -euo pipefail
S=${1:?shared dir}; LSPET=${2:?SimplePose LSPET store}
M=${3:-$S/models/simplepose/ultralight-nano-simplepose.onnx}; ND=$S/models/nanodet/nanodet-m-416.onnx
GT=$S/data/coco-mini/person_keypoints_train2017.json; IM=$S/data/coco-mini/train2017
python3 - "$GT" <<'PY'
import json, sys
import numpy as np
d = json.load(open(sys.argv[1]))
ids = np.random.default_rng(123).permutation(sorted(im["id"] for im in d["images"]))
for name, keep in (("A", set(ids[:40].tolist())), ("B", set(ids[40:].tolist()))):
    part = dict(d, images=[im for im in d["images"] if im["id"] in keep],
                annotations=[a for a in d["annotations"] if a["image_id"] in keep])
    json.dump(part, open(f"MINI_{name}.json", "w"))
PY
for T in A B; do
  posecal detect --model "$ND" --data MINI_$T.json --images "$IM" --out DET_$T.json
  posecal extract --model "$M" --data MINI_$T.json --images "$IM" --boxes DET_$T.json --out S_$T
done
for TR in A B; do
  TE=$([ $TR = A ] && echo B || echo A)
  posecal fit --store "$LSPET" --store S_$TR --out HEAD_$TR
  posecal apply --store S_$TE --head HEAD_$TR --out CAL_$TE.json
  posecal evaluate --gt MINI_$TE.json --pred S_$TE/predictions.json
  posecal evaluate --gt MINI_$TE.json --pred CAL_$TE.json
  posecal compare --gt MINI_$TE.json S_$TE/predictions.json CAL_$TE.json
done
