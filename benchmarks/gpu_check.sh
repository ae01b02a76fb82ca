#!/usr/bin/env bash
# The GPU check of issue 9, in one run of at most 8 minutes on one GPU (under 5 on an H200, the
# first torch.compile included) and without network: training throughput (fp32, bf16, fp16),
# student MD throughput through the GPU-resident path (216 to ~110,000 atoms; CUDA graph with and
# without torch.compile), SevenNet-0 on the same cells, NaN count. See benchmarks/gpu_check.py.
#
# Packages the GPU machine lacks travel as wheels in .whl/ (made here, for CPython 3.12):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl \
#     ase==3.29.0 vesin==0.6.2 hydra-core==1.3.8 omegaconf==2.3.1 sevenn==0.13.0 braceexpand \
#     matscipy==1.3.1 e3nn==0.6.0
#   python3 -m pip wheel --no-deps antlr4-python3-runtime==4.9.3 -w .whl
# Results: $OUT/gpu_check.{json,md} (OUT defaults to benchmarks/results/gpu_check); keep them as
# benchmarks/results/gpu_check_<card>.{json,md} (e.g. gpu_check_h200) and run
# `python benchmarks/reference_training.py` to put them into benchmarks/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
timeout 450 python3 benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
