#!/usr/bin/env bash
# Download, here (with internet), the wheels that TransformerLens 3.9 needs on the GPU machine
# (Python 3.12, torch 2.11, transformers 5.17, no transformer_lens, no internet) into .whl/tl3/
# (ignored by git; name it in the device run's `carry`). Used by benchmarks/bench_gpu.py and
# scripts/gpu_check.sh. About 3 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl/tl3 transformer_lens==3.9.0 better_abc==0.0.3 datasets==5.2.0 dill==0.4.1 \
  multiprocess==0.70.19 xxhash==4.1.0 beartype==0.23.1
ls -la .whl/tl3
