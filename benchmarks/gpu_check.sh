#!/usr/bin/env bash
# One call on a GPU machine: build the extension for the visible GPU, run the CUDA tests, the kernel
# tests under compute-sanitizer, and the benchmarks. Logs go to $OUT (or ./gpu_logs).
#
#   bash benchmarks/gpu_check.sh [build|diag|tests|sanitizer|bench|scale ...]   (default: all, in that order)
#
# Needs torch with CUDA and nvcc; nothing is downloaded (pip install --no-build-isolation --no-deps).
set -u
OUT=${OUT:-$PWD/gpu_logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
steps=${*:-build diag tests sanitizer bench scale}
status=0

log() { echo "== $* ($(date +%T))" | tee -a "$OUT/summary.txt"; }

for step in $steps; do
  case $step in
    build)
      log "build"
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/summary.txt"
      python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/summary.txt"
      cap=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
      # the system compilers: the lent GPU machine sets CC/CXX to /opt/gcc, whose g++ embeds its own copy
      # of libstdc++ in the extension; formatting the first error message then segfaulted
      export CC=gcc CXX=g++
      # editable: the extension is built into the working tree, so the tests (which import tests._helpers from
      # the repository root) and the installed package are one and the same
      TORCH_CUDA_ARCH_LIST=$cap LAMDA_EXT_CUDA=1 MAX_JOBS=16 \
        python3 -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 \
        || { tail -40 "$OUT/build.log"; exit 1; }
      python3 -c "import lamda_ext, lamda_ext.ops as o; i = lamda_ext.build_info(); print(i); \
assert o.available() and i['cuda_available'], 'extension not usable'" 2>&1 | tee -a "$OUT/summary.txt"
      [ "${PIPESTATUS[0]}" = 0 ] || exit 1
      ;;
    diag)
      log "diagnostics: compilers, and an error raised by each device's kernel in its own process"
      (g++ --version | head -1; nvcc --version | tail -2) 2>&1 | tee -a "$OUT/summary.txt"
      python3 -c "import torch
try:
    torch.zeros(2).view(3)
except RuntimeError as e:
    print('torch error raised fine:', str(e).splitlines()[0])" 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
      for dev in cpu cuda; do
        code="import torch, lamda_ext.ops as o
try:
    o.unary_coeffs('tanh', torch.zeros(10, 3, dtype=torch.float64, device='$dev'))
except ValueError as e:
    print('ValueError:', str(e).splitlines()[0])"
        python3 -c "$code" >"$OUT/diag_$dev.log" 2>&1
        rc=$?
        echo "$dev: rc=$rc $(head -c 300 "$OUT/diag_$dev.log" | tr '\n' ' ')" | tee -a "$OUT/summary.txt"
        if [ $rc != 0 ]; then
          status=1
          timeout 120 cuda-gdb -batch -ex run -ex "bt 14" --args python3 -c "$code" 2>&1 | grep -A30 "SIGSEGV" \
            >>"$OUT/diag_$dev.log"
        fi
      done
      ;;
    tests)
      log "CUDA tests"
      python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_kernels.py tests/test_linearize.py \
        tests/test_caller_tensors.py -k "cuda" 2>&1 | tee "$OUT/tests.log" | tail -25
      [ "${PIPESTATUS[0]}" = 0 ] || status=1
      ;;
    sanitizer)
      log "compute-sanitizer on the CUDA kernel tests"
      # memcheck on every CUDA kernel test; racecheck/synccheck (slow) on the warp-synchronous CE kernels
      for tool in memcheck racecheck synccheck; do
        if [ $tool = memcheck ]; then sel="cuda"; lim=${SANITIZER_LIMIT:-300}; else sel="cuda and cross_entropy"; lim=$(( ${SANITIZER_LIMIT:-300} / 2 )); fi
        timeout $lim compute-sanitizer --tool $tool --error-exitcode 99 --print-limit 20 \
          python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels.py -k "$sel" >"$OUT/sanitizer_$tool.log" 2>&1
        rc=$?
        grep -q " passed" "$OUT/sanitizer_$tool.log" || { echo "$tool: no test ran"; rc=98; }
        echo "$tool rc=$rc: $(grep -E 'ERROR SUMMARY|passed|failed' "$OUT/sanitizer_$tool.log" | tr '\n' ' ')" \
          | tee -a "$OUT/summary.txt"
        [ $rc = 0 ] || status=1
      done
      ;;
    bench)
      log "benchmarks"
      python3 -m pytest -q -s -p no:cacheprovider benchmarks/test_bench_derivs.py 2>&1 | tee "$OUT/bench.log" \
        | grep -A40 "ratios (median" | tee -a "$OUT/summary.txt"
      ;;
    scale)
      log "scale: real-size models at K = 15, N = 6 (time in forward passes, peak CUDA memory)"
      for case in "vit_b_16 1" "vit_b_16 16" "resnet50 8" "gpt2_small 1"; do
        set -- $case
        timeout 240 python3 benchmarks/scale_case.py --model "$1" --points "$2" --directions 15 --order 6 \
          --backend fused --repeat 2 >>"$OUT/scale.jsonl" 2>>"$OUT/scale.err" || status=1
        tail -1 "$OUT/scale.jsonl" | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print(r['model'], \
'B=%d' % r['points'], 'forward passes', ['%.1f' % v for v in r['forward_passes']], 'peak CUDA %.2f GB' % \
r.get('peak_cuda_GB', float('nan')), 'ok' if r['ok'] else r.get('error'))" 2>&1 | tee -a "$OUT/summary.txt"
      done
      ;;
    *) echo "unknown step $step"; exit 2;;
  esac
done
log "done, status $status"
exit $status
