#!/usr/bin/env bash
# The CUDA backend's checks and benchmarks on a GPU machine, which has CUDA, PyTorch and
# compute-sanitizer but no Rust: the binaries are built on a Rust machine and carried.
#
#   bash benches/gpu_run.sh --build        # on the Rust machine: build, copy binaries to device-bin/
#   bash benches/gpu_run.sh [STEP...]      # on the GPU machine, from the repository root, with
#                                          # device-bin/ beside (carried); logs go to $OUT (or ./gpu-logs)
#
# The device tool returns at most 8 files from $OUT and runs a command for at most 10 minutes, so
# run the steps in groups, one call each: `info test`, `sanitize`, `bench torch`.
#
# STEPs (default: all, in this order; each command has its own time limit):
#   info      nvidia-smi, the driver, where libnvrtc was found
#   test      the CUDA conformance suite (exact FP32 at 1e-5, TF32 at 1e-2) vs the CPU in f64
#   sanitize  compute-sanitizer memcheck, racecheck, initcheck and synccheck over the FP32 suite
#   bench     ssl-engine bench kernels --backend cuda (FP32, then TF32), and a ResNet-18 step
#   torch     benches/pytorch_kernels.py, the PyTorch twin (FP32, then TF32)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=device-bin

if [ "${1:-}" = "--build" ]; then
  set -e
  cargo build --release
  exe="$(cargo test --release --no-run --message-format=json --test conformance_cuda 2>/dev/null |
    python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "conformance_cuda":
        print(m["executable"])')"
  [ -n "$exe" ] || { echo "conformance_cuda test binary not found" >&2; exit 1; }
  mkdir -p "$BIN"
  cp target/release/ssl-engine "$BIN/ssl-engine"
  cp "$exe" "$BIN/conformance_cuda"
  ls -la "$BIN"
  echo "now carry $BIN to the GPU machine and run: bash benches/gpu_run.sh"
  exit 0
fi

OUT="${OUT:-$PWD/gpu-logs}"
mkdir -p "$OUT"
for f in ssl-engine conformance_cuda; do
  [ -x "$BIN/$f" ] || { echo "missing $BIN/$f: build it with 'bash benches/gpu_run.sh --build' and carry $BIN" | tee "$OUT/error.log"; exit 1; }
done

# libnvrtc (CUDA 13): the pip wheel of the image's Python, else the toolkit, else a search.
find_nvrtc() {
  local d
  d="$(python3 -c 'import nvidia, os; print(next((d for d in (os.path.join(p, "cu13", "lib") for p in nvidia.__path__) if os.path.isdir(d)), ""))' 2>/dev/null)"
  if [ -n "$d" ] && ls "$d"/libnvrtc.so* >/dev/null 2>&1; then echo "$d"; return; fi
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 /usr/lib/x86_64-linux-gnu; do
    if ls "$d"/libnvrtc.so.13* >/dev/null 2>&1; then echo "$d"; return; fi
  done
  d="$(find / -xdev -name 'libnvrtc.so.13*' -not -name '*builtins*' 2>/dev/null | head -n 1)"
  [ -n "$d" ] && dirname "$d"
}
NVRTC_DIR="$(find_nvrtc)"
if [ -n "$NVRTC_DIR" ]; then export LD_LIBRARY_PATH="$NVRTC_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
# A kernel cache of its own, emptied by the test step, so the first start (NVRTC compiles every
# family) and the second (cache hit) are both measured.
export SSL_ENGINE_CACHE_DIR="${SSL_ENGINE_CACHE_DIR:-/tmp/ssl-engine-kernel-cache}"
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"

# run LOG LIMIT_S CMD...: runs CMD with a time limit, output to $OUT/LOG.log and the terminal.
run() {
  local log="$OUT/$1.log" limit="$2"
  shift 2
  echo "== $* (limit ${limit}s) -> $log"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  echo "== exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
  return 0
}

step_info() {
  {
    nvidia-smi || true
    echo "libnvrtc dir: ${NVRTC_DIR:-NOT FOUND}"
    echo "compute-sanitizer: ${SANITIZER:-NOT FOUND}"
    echo "kernel cache: $SSL_ENGINE_CACHE_DIR"
  } 2>&1 | tee "$OUT/info.log"
}

step_test() {
  rm -rf "$SSL_ENGINE_CACHE_DIR"
  # The first start compiles every family through NVRTC; the second reads the cache.
  run start_cold 300 "$BIN/ssl-engine" bench kernels --backend cuda --filter "relu" --runs 1
  run start_warm 120 "$BIN/ssl-engine" bench kernels --backend cuda --filter "relu" --runs 1
  run conformance 600 "$BIN/conformance_cuda" --test-threads 1 --nocapture
}

step_sanitize() {
  if [ -z "$SANITIZER" ]; then echo "compute-sanitizer not found" | tee "$OUT/sanitize.log"; return; fi
  # Exact-size allocations without the caching pool, so memcheck sees every overrun.
  for tool in memcheck racecheck initcheck synccheck; do
    run "sanitize_$tool" 140 env SSL_ENGINE_CUDA_NO_POOL=1 "$SANITIZER" --tool "$tool" --error-exitcode 3 \
      "$BIN/conformance_cuda" cuda_f32_conforms_to_f64_reference --test-threads 1 --nocapture
  done
}

step_bench() {
  run bench_kernels_fp32 180 "$BIN/ssl-engine" bench kernels --backend cuda --batch 512 --runs 20
  run bench_kernels_tf32 180 env SSL_ENGINE_TF32=1 "$BIN/ssl-engine" bench kernels --backend cuda --batch 512 --runs 20
  run bench_step_resnet18 180 "$BIN/ssl-engine" bench step --backend cuda --model resnet18-cifar --batch 512 --runs 10
}

step_torch() {
  run torch_kernels_fp32 240 python3 benches/pytorch_kernels.py --batch 512 --runs 20
  run torch_kernels_tf32 240 python3 benches/pytorch_kernels.py --batch 512 --runs 20 --tf32
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(info test sanitize bench torch)
for s in "${steps[@]}"; do
  case "$s" in
    info|test|sanitize|bench|torch) "step_$s" ;;
    *) echo "unknown step $s (info test sanitize bench torch)"; exit 2 ;;
  esac
done
echo "logs in $OUT"
