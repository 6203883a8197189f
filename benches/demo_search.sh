#!/usr/bin/env bash
# The search behind configs/demo-cpu.toml: each trial is the demo with some `--set` overrides,
# run to the end (training + the random-vs-pretrained table), one line per trial in a Markdown
# table. Accuracies are deterministic for a given seed; wall times depend on the machine.
#
#   bash benches/demo_search.sh "optim.base_lr=0.3" "batch_size=64 epochs=6" ...
#
# Appends to benches/results/demo-search.md (override with SEARCH_OUT). CONFIG picks another
# recipe (default configs/demo-cpu.toml); its name then leads each row, e.g.
#   CONFIG=configs/swav-demo.toml SEARCH_OUT=benches/results/methods-demo.md bash benches/demo_search.sh ""
# BIN runs another build of the binary (e.g. a copy, so a rebuild meanwhile does not replace
# it) and RUN_DIR another run folder (default runs/demo-search).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-./target/release/ssl-engine}
config=${CONFIG:-configs/demo-cpu.toml}
out=${SEARCH_OUT:-benches/results/demo-search.md}
mkdir -p "$(dirname "$out")"
[ -f "$out" ] || printf '| overrides | kNN random | kNN pretrained | linear random | linear pretrained | kNN gain | linear gain | wall |\n|---|---:|---:|---:|---:|---:|---:|---:|\n' > "$out"
for trial in "$@"; do
  args=(--config "$config" --quiet --set out=${RUN_DIR:-runs/demo-search} --set report.compare_random=true)
  for kv in $trial; do args+=(--set "$kv"); done
  rm -rf "${RUN_DIR:-runs/demo-search}"
  "$bin" train "${args[@]}" > /dev/null
  # summary.md rows: random init, pretrained, gain; then the wall-time sentence.
  label=$trial
  [ "$config" = configs/demo-cpu.toml ] || label="$(basename "$config") $trial"
  python3 - "$label" "${RUN_DIR:-runs/demo-search}/summary.md" >> "$out" <<'PY'
import re, sys
trial, path = sys.argv[1], sys.argv[2]
text = open(path).read()
cells = lambda label: [c.strip() for c in next(l for l in text.splitlines() if l.startswith("| " + label)).split("|")[2:4]]
r, p, g = cells("random init"), cells("pretrained"), cells("gain")
wall = re.search(r"Wall time ([^.]+)\.", text).group(1)
print(f"| `{trial}` | {r[0]} | {p[0]} | {r[1]} | {p[1]} | {g[0]} | {g[1]} | {wall} |")
PY
  tail -1 "$out"
done
