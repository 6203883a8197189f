#!/usr/bin/env bash
# The data loader against torchvision's on the same JPEG files and cores: `ssl-engine bench loader
# --cache none` (decode per batch) and benches/loader_torchvision.py (PIL + torchvision,
# DataLoader with worker processes), in alternating rounds so both see the same machine load.
# Prints each round's images/s and the ratio ours / torchvision (above 1: ours is faster).
#
#   PYTHON=/path/to/venv/bin/python bash benches/loader_vs_torchvision.sh [rounds] [recipe]
#
# The folder: $PHOTOS, or made once by benches/make_photo_folder.py from the CIFAR-10 JPEGs in
# $CIFAR_JPG (default ../shared/data/cifar10-jpg/train, 500 images of about 500x375).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
rounds=${1:-3}
recipe=${2:-crop}
workers=${WORKERS:-2}
size=${SIZE:-224}
batch=${BATCH:-64}
batches=${BATCHES:-16}
views=1; [ "$recipe" = simsiam ] && views=2
photos=${PHOTOS:-/tmp/ssl-engine-photos}
if [ ! -d "$photos" ]; then
  "$py" benches/make_photo_folder.py "${CIFAR_JPG:-../shared/data/cifar10-jpg/train}" "$photos" --per-class 50
fi
bin=${BIN:-./target/release/ssl-engine}
rate() { grep -o "[0-9.]* images/s" | head -1 | cut -d' ' -f1; }
for r in $(seq "$rounds"); do
  ours=$("$bin" bench loader --data "$photos" --cache none --image-size "$size" --recipe "$recipe" --views "$views" \
    --batch "$batch" --batches "$batches" --workers "$workers" | tee /dev/stderr | rate)
  torch=$("$py" benches/loader_torchvision.py --data "$photos" --image-size "$size" --recipe "$recipe" \
    --batch "$batch" --batches "$batches" --workers "$workers" | tee /dev/stderr | rate)
  python3 -c "print(f'round $r ($recipe, {$workers} workers, {$size}px): ours {$ours:.1f} images/s, torchvision {$torch:.1f} images/s, ours/torchvision {$ours/$torch:.2f}x')"
done
