#!/usr/bin/env bash
# Last GPU call of the session: correctness and sanitizers on the candidate kernels (B), an A/B of
# the bench against the committed kernels (A), ncu on three TF32 convolution passes, a short run.
set -uo pipefail
export SSL_ENGINE_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print([os.path.join(p, "cu13", "lib") for p in nvidia.__path__][0])')
B=device-bin
S=/usr/local/cuda/bin/compute-sanitizer
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
{
  timeout 60 $B/conformance_cuda --test-threads 1 2>&1 | grep -E "worst|test result|panicked|skipped|FAIL"
  timeout 30 $B/torch_models cuda_ --test-threads 1 --nocapture 2>&1 | grep -E "worst|sgd step|test result|panicked|skipped|FAIL"
} > $OUT/test.log 2>&1
cat $OUT/test.log
for tool in memcheck racecheck; do
  echo "== $tool"
  SSL_ENGINE_CUDA_NO_POOL=1 timeout 80 $S --tool $tool --error-exitcode 3 $B/conformance_cuda cuda_conforms_on_split --test-threads 1 2>&1 | tail -4
  echo "exit ${PIPESTATUS[0]}"
done > $OUT/sanitize.log 2>&1
cat $OUT/sanitize.log
for v in ssl-engine-a ssl-engine; do for t in 0 1; do
  echo "== $v tf32=$t"
  SSL_ENGINE_TF32=$t timeout 40 $B/$v bench kernels --backend cuda --batch 512 --runs 10
  SSL_ENGINE_TF32=$t timeout 30 $B/$v bench step --simsiam --backend cuda --batch 512 --warmup 2 --runs 10
done; done > $OUT/ab.log 2>&1
grep -E "==|simsiam" $OUT/ab.log
echo "ncu: $NCU"
SSL_ENGINE_TF32=1 timeout 90 $NCU --clock-control none --kernel-name regex:conv2d_tc_ --launch-count 6 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section WarpStateStats \
  $B/ssl-engine bench kernels --backend cuda --batch 512 --runs 1 --filter "8x8 256->256" > $OUT/ncu.log 2>&1
echo "ncu exit $?"; grep -E "conv2d_tc|Duration|Throughput|Achieved Occupancy|Registers|Stall|Issue Slots" $OUT/ncu.log | head -40
(time SSL_ENGINE_TF32=1 timeout 60 $B/ssl-engine train --config configs/cifar10-simsiam.toml --set backend=cuda \
  --set data.path=data/cifar10-demo/train --set data.test_path=data/cifar10-demo/test --set epochs=5 \
  --set monitor.knn_every=5 --set out=/tmp/run) > $OUT/train.log 2>&1
grep -vE "^\s*$" $OUT/train.log | tail -12
cp /tmp/run/metrics.jsonl $OUT/ 2>/dev/null
