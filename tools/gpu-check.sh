#!/bin/bash
# One device call: versions, the Triton tests on the GPU, the block-size sweep of
# tools/gpu_tune.py, the issue-6 benchmark in fp32, fp16 and bf16 (with the weights streamed,
# then kept on chip: RNNKERNELS_WEIGHTS_ON_CHIP in ON_CHIP, default "0 1"), and the benchmark
# command's default run. Logs go to $OUT (at most 8 files come back). Seconds allowed: TEST_S,
# TUNE_S, BENCH_S per dtype and mode, DEFAULT_S (0 skips a step); TUNE_ARGS=--defaults-only
# times the default and the on-chip variant only.
set -u
out=${OUT:-gpu-out}
mkdir -p "$out" /tmp/bench
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__, torch.cuda.get_device_name())"
start=$SECONDS
tests=${TESTS:-tests/test_triton_gpu.py tests/test_triton.py tests/test_kernels.py}
timeout -s INT -k 15 "${TEST_S:-150}" python3 -m pytest -q -n 8 -p no:cacheprovider \
  --timeout 100 --timeout-method thread $tests >"$out/tests.log" 2>&1
echo "tests rc=$? in $((SECONDS - start)) s"; grep -E "passed|failed|error" "$out/tests.log" | tail -3
grep -E "^(FAILED|ERROR)" "$out/tests.log" | head -30
if [ "${TUNE_S:-120}" -gt 0 ]; then
  start=$SECONDS
  timeout "${TUNE_S:-120}" python3 tools/gpu_tune.py ${TUNE_ARGS:-} >"$out/tune.log" 2>&1
  echo "tune rc=$? in $((SECONDS - start)) s"; cat "$out/tune.log" | tail -60
fi
for dt in ${DTYPES:-float32 float16 bfloat16}; do
  for chip in ${ON_CHIP:-0 1}; do
    start=$SECONDS
    echo "== RNNKERNELS_WEIGHTS_ON_CHIP=$chip" >>"$out/bench-$dt.log"
    RNNKERNELS_WEIGHTS_ON_CHIP=$chip timeout -s INT -k 10 "${BENCH_S:-60}" python3 -m rnnkernels.bench \
      --shapes "${SHAPES:-gpu-goals}" --dtype "$dt" --backends "${BACKENDS:-triton}" --out /tmp/bench \
      >>"$out/bench-$dt.log" 2>&1
    echo "bench $dt on-chip=$chip rc=$? in $((SECONDS - start)) s"
  done
  grep -E "==|triton|GEMM" "$out/bench-$dt.log"
done
if [ "${DEFAULT_S:-90}" -gt 0 ]; then
  start=$SECONDS
  timeout -s INT -k 10 "${DEFAULT_S:-90}" python3 -m rnnkernels.bench --out /tmp/bench >"$out/bench-default.log" 2>&1
  echo "default bench rc=$? in $((SECONDS - start)) s"; tail -n 45 "$out/bench-default.log"
fi
ls "$out"
