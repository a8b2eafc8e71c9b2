#!/usr/bin/env bash
# The one GPU check for the fast decode path (issue 6), sized for < 8 minutes on one H100/H200.
# Run from the repository root on the GPU machine, with .whl/ built by /work/shared/device/wheels.sh:
#   bash tools/gpu_check.sh            # results land in $OUT (or ./gpu_check_out)
# Steps: install the wheels the image lacks; the CPU-equivalence tests on CUDA (compiled == eager
# tokens, fused == unfused logits); bench_generate --compare on a random 8B-shaped bf16 checkpoint
# (512-token prompt, 256 new tokens): ours eager vs compiled vs HF eager / static / compiled static.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" \
  > "$OUT/versions.txt" 2>&1

# 1. equivalence on CUDA (the CPU tests, with the compiled path on the GPU: CUDA graphs)
LLAMA_AGENTS_TEST_DEVICE=cuda timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_compile.py \
  > "$OUT/test_compile.txt" 2>&1
echo "test_compile rc=$?" >> "$OUT/summary.txt"
timeout 120 python3 tools/bench_generate.py --preset tiny --prompt-len 64 --new-tokens 32 --compare \
  > "$OUT/bench_tiny.json" 2> "$OUT/bench_tiny.err"
echo "bench tiny rc=$?" >> "$OUT/summary.txt"

# 2. the numbers: 8B shape, bf16, 512-token prompt, 256 new tokens, batch 1
timeout 330 python3 tools/bench_generate.py --preset llama3.1-8b --prompt-len 512 --new-tokens 256 \
  --dtype bfloat16 --compare --workdir /tmp > "$OUT/bench_8b.json" 2> "$OUT/bench_8b.err"
echo "bench 8b rc=$?" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
cat "$OUT/bench_8b.json"
