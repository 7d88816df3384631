#!/usr/bin/env bash
# GPU check of posecal fit (nccl via torchrun) vs CPU; run on a machine with a GPU from the repo root.
# Needs $OUT (output folder) and two stores: .devcache/train (LSP train, heatmap pooling) and .devcache/test.
# The first line installs orjson from carried wheels (.whl/) where the GPU image lacks it.
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src
nvidia-smi --query-gpu=name --format=csv
python3 -c "import torch, posecal; print(torch.__version__, torch.cuda.is_available())"
export POSECAL_PROGRESS=0
S=.devcache
time torchrun --nproc_per_node 1 -m posecal fit --store $S/train --out $OUT/head_cuda --device cuda --json > $OUT/fit_cuda.json
time python3 -m posecal fit --store $S/train --out $OUT/head_cpu --device cpu --threads 8 --json > $OUT/fit_cpu.json
for d in cuda cpu; do python3 -m posecal apply --store $S/test --head $OUT/head_$d --out $OUT/cal_$d.json; python3 -m posecal evaluate --gt $S/test/gt.json --pred $OUT/cal_$d.json --json $OUT/ev_$d.json | head -3; done
python3 - <<'PY'
import json, os, numpy as np
o=os.environ["OUT"]
a=json.load(open(f"{o}/cal_cuda.json")); b=json.load(open(f"{o}/cal_cpu.json"))
ka=np.array([r["keypoints"] for r in a]); kb=np.array([r["keypoints"] for r in b])
print("coords equal:", np.array_equal(ka[:, 0::3], kb[:, 0::3]) and np.array_equal(ka[:, 1::3], kb[:, 1::3]))
print("max |score diff| kpt:", np.abs(ka[:, 2::3]-kb[:, 2::3]).max(), "inst:", np.abs(np.array([r["score"] for r in a])-np.array([r["score"] for r in b])).max())
for d in ("cuda","cpu"): print(d, json.load(open(f"{o}/ev_{d}.json"))["coco"])
PY
