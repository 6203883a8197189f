#!/usr/bin/env bash
# `ssl-engine bench step` and benches/pytorch_step.py side by side on the same threads, in
# alternating rounds so both see the same machine load; prints each round's medians and the
# ratio ours / PyTorch (below 1: ours is faster).
#
#   PYTHON=/path/to/venv/bin/python bash benches/step_vs_pytorch.sh [rounds] [extra bench args]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
rounds=${1:-3}
shift || true
threads=${THREADS:-2}
for r in $(seq "$rounds"); do
  ours=$(./target/release/ssl-engine bench step --threads "$threads" --runs 5 "$@" 2>/dev/null | grep -o "median [0-9.]*" | cut -d' ' -f2)
  torch=$("$py" benches/pytorch_step.py --threads "$threads" --runs 5 "$@" 2>/dev/null | grep -o "median [0-9.]*" | cut -d' ' -f2)
  python3 -c "print(f'round $r: ours {float(\"$ours\"):.4f} s, pytorch {float(\"$torch\"):.4f} s, ours/pytorch {float(\"$ours\")/float(\"$torch\"):.3f}')"
done
