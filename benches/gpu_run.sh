#!/usr/bin/env bash
# The CUDA backend's checks and benchmarks on a GPU machine, which has CUDA, PyTorch and
# compute-sanitizer but no Rust: the binaries are built on a Rust machine and carried.
#
#   bash benches/gpu_run.sh --build        # on the Rust machine: build, strip, copy to device-bin/
#   bash benches/gpu_run.sh [STEP...]      # on the GPU machine, from the repository root, with
#                                          # device-bin/ carried; logs go to $OUT (or ./gpu-logs)
#
# Made for the device tool's limits: the whole default run fits one 10-minute command (every
# command has its own time limit, and the limits of the default steps add up to 520 s),
# the carried binaries stay under 64 MiB (stripped; --build checks), and at most 8 files come
# back: one log per step plus summary.log, which lists every command with its exit code and
# says FAIL for a non-zero exit, a time-out, or a test that printed "skipped" (on the GPU machine
# a skipped GPU test is a failure; SSL_ENGINE_REQUIRE_GPU=1 also makes the tests panic).
#
# STEPs (default: info test kernels step; then, in a second command, sanitize compile wgpu):
#   info      nvidia-smi, the driver, the compute capability, where libnvrtc was found
#   test      NVRTC cold and warm start; the conformance suite (exact FP32 at 1e-5, TF32 at 1e-2,
#             bf16 at 1e-3 against the CPU's bf16; suite + split-K / multi-tile / head-dim-128 /
#             model-sized shapes); ResNet-18 and ViT-tiny forward+backward and three SGD steps
#             against the PyTorch fixtures
#   kernels   bench kernels --backend cuda (FP32, TF32, bf16) beside benches/pytorch_kernels.py
#   step      bench step --simsiam --batch 512 (FP32, TF32, bf16; forward and backward replayed as
#             a CUDA graph, and bf16 once more with --no-graph) beside benches/pytorch_step.py:
#             eager FP32, eager AMP bf16 + channels_last, torch.compile
#   sanitize  compute-sanitizer memcheck, racecheck and synccheck over the TF32 suite (one seed)
#   compile   the torch.compile step alone (slow to compile; also part of `step`)
#   wgpu      bench step --backend wgpu on the same GPU through Vulkan (needs the loader, .gl/)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=device-bin

if [ "${1:-}" = "--build" ]; then
  set -e
  cargo build --release
  json="$(cargo test --release --no-run --message-format=json --test conformance_cuda --test torch_models 2>/dev/null)"
  mkdir -p "$BIN"
  for t in conformance_cuda torch_models; do
    exe="$(printf '%s\n' "$json" | python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$t")"
    [ -n "$exe" ] || { echo "$t test binary not found" >&2; exit 1; }
    strip -o "$BIN/$t" "$exe"
  done
  strip -o "$BIN/ssl-engine" target/release/ssl-engine
  ls -la "$BIN"
  total=$(du -cb "$BIN"/* | tail -n 1 | cut -f1)
  [ "$total" -lt $((60 * 1024 * 1024)) ] || { echo "$BIN is $total bytes: over the 64 MiB the device tool carries" >&2; exit 1; }
  echo "now carry $BIN to the GPU machine and run: bash benches/gpu_run.sh"
  exit 0
fi

OUT="${OUT:-$PWD/gpu-logs}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.log"
for f in ssl-engine conformance_cuda torch_models; do
  [ -x "$BIN/$f" ] || { echo "missing $BIN/$f: build it with 'bash benches/gpu_run.sh --build' and carry $BIN" | tee -a "$SUMMARY"; exit 1; }
done
export SSL_ENGINE_REQUIRE_GPU=1 PYTHONUNBUFFERED=1

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

# run LOG NAME LIMIT_S CMD...: runs CMD with a time limit, appends its output to $OUT/LOG.log,
# and one line to summary.log: PASS, or FAIL with the exit code (124: timed out) or "skipped".
run() {
  local log="$OUT/$1.log" name="$2" limit="$3"
  shift 3
  echo "== $name: $* (limit ${limit}s)" | tee -a "$log"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" > >(tee -a "$log") 2>&1
  local rc=$?
  sleep 0.2
  local verdict=PASS
  [ "$rc" -ne 0 ] && verdict="FAIL (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out'))"
  if [ "$rc" -eq 0 ] && sed -n "/^== $name: /,\$p" "$log" | grep -q "skipped"; then verdict="FAIL (a test was skipped)"; fi
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
  printf '%-28s %-34s %4d s\n' "$name" "$verdict" "$((SECONDS - t0))" | tee -a "$SUMMARY"
}

step_info() {
  {
    nvidia-smi || true
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.sm,clocks.max.sm --format=csv || true
    echo "libnvrtc dir: ${NVRTC_DIR:-NOT FOUND}"
    echo "compute-sanitizer: ${SANITIZER:-NOT FOUND}"
    echo "kernel cache: $SSL_ENGINE_CACHE_DIR"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' || true
    ls -la "$BIN"
  } 2>&1 | tee -a "$OUT/info.log"
}

step_test() {
  rm -rf "$SSL_ENGINE_CACHE_DIR"
  # The first start compiles every family through NVRTC; the second reads the cache.
  run test start_cold 60 "$BIN/ssl-engine" bench kernels --backend cuda --filter "relu" --runs 1
  run test start_warm 20 "$BIN/ssl-engine" bench kernels --backend cuda --filter "relu" --runs 1
  run test conformance 90 "$BIN/conformance_cuda" --test-threads 1 --nocapture
  run test models 45 "$BIN/torch_models" cuda_ --test-threads 1 --nocapture
}

step_sanitize() {
  if [ -z "$SANITIZER" ]; then echo "compute-sanitizer not found" | tee -a "$SUMMARY"; return; fi
  # Exact-size allocations without the caching pool, so memcheck sees every overrun. The TF32
  # suite runs the tensor-core GEMM pipeline (cp.async stages, ldmatrix, mma.sync): racecheck
  # for its shared-memory hazards, synccheck for its warp-synchronous instructions.
  for tool in memcheck racecheck synccheck; do
    run sanitize "sanitize_$tool" 45 env SSL_ENGINE_CUDA_NO_POOL=1 "$SANITIZER" --tool "$tool" --error-exitcode 3 \
      "$BIN/conformance_cuda" cuda_tf32_conforms_loosely --test-threads 1 --nocapture
  done
  # memcheck over replayed step graphs (bf16: the zero-fill cp.async with a NULL source): the
  # exact-size allocator defers frees made during a capture, so the graph is recorded and the
  # timed steps are replays ("captured the step graph" in the log says so).
  run sanitize sanitize_memcheck_step_graph 60 env SSL_ENGINE_CUDA_NO_POOL=1 "$SANITIZER" --tool memcheck --error-exitcode 3 \
    "$BIN/ssl-engine" bench step --simsiam --backend cuda --precision bf16 --batch 32 --warmup 2 --runs 2
}

step_kernels() {
  # Limits: about 4x the H200's times of 2026-11-30 (ours 7 s, PyTorch 25 s).
  run kernels ours_fp32 30 "$BIN/ssl-engine" bench kernels --backend cuda --batch 512 --runs 10
  run kernels ours_tf32 30 env SSL_ENGINE_TF32=1 "$BIN/ssl-engine" bench kernels --backend cuda --batch 512 --runs 10
  run kernels ours_bf16 30 "$BIN/ssl-engine" bench kernels --backend cuda --precision bf16 --batch 512 --runs 10
  run kernels torch_fp32 30 python3 benches/pytorch_kernels.py --batch 512 --runs 10
  run kernels torch_tf32 30 python3 benches/pytorch_kernels.py --batch 512 --runs 10 --tf32
  run kernels torch_bf16 30 python3 benches/pytorch_kernels.py --batch 512 --runs 10 --bf16
}

step_step() {
  run step ours_simsiam_fp32 25 "$BIN/ssl-engine" bench step --simsiam --backend cuda --batch 512 --warmup 2 --runs 10
  run step ours_simsiam_tf32 25 env SSL_ENGINE_TF32=1 "$BIN/ssl-engine" bench step --simsiam --backend cuda --batch 512 --warmup 2 --runs 10
  run step ours_simsiam_bf16 25 "$BIN/ssl-engine" bench step --simsiam --backend cuda --precision bf16 --batch 512 --warmup 2 --runs 10
  # The same bf16 step with every kernel launched from the host: what the step graph saves.
  run step ours_simsiam_bf16_eager 25 "$BIN/ssl-engine" bench step --simsiam --backend cuda --precision bf16 --batch 512 --warmup 2 --runs 10 --no-graph
  local t=(python3 benches/pytorch_step.py --simsiam --batch 512 --device cuda --warmup 3 --runs 20)
  run step torch_eager_fp32 25 "${t[@]}"
  run step torch_eager_amp_cl 25 "${t[@]}" --amp --channels-last
}

step_compile() {
  run step torch_compile 150 python3 benches/pytorch_step.py --simsiam --batch 512 --device cuda --warmup 3 --runs 20 --compile --amp --channels-last
}

step_wgpu() {
  if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  run wgpu wgpu_step 60 "$BIN/ssl-engine" bench step --simsiam --backend wgpu --batch 512 --warmup 1 --runs 5
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(info test kernels step)
for s in "${steps[@]}"; do
  case "$s" in
    info|test|sanitize|kernels|step|compile|wgpu) "step_$s" ;;
    *) echo "unknown step $s (info test kernels step sanitize compile wgpu)"; exit 2 ;;
  esac
done
echo "logs in $OUT"
cat "$SUMMARY"
