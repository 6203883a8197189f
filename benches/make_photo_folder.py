"""A folder of photo-sized JPEGs for the loader benchmark, from CIFAR-10's JPEGs.

Each CIFAR image is upscaled (bicubic) to an ImageNet-like size (500x375, 375x500 or 500x333),
and grain is added so the files carry about as many bits as photos do (~100 KB at quality 90,
ImageNet's mean JPEG is ~110 KB); upscaled images alone compress to almost nothing and decode
faster than photos. Deterministic: the same folder on every machine.

    python benches/make_photo_folder.py SRC_IMAGEFOLDER OUT [--per-class 50]
"""
import argparse
import os

import numpy as np
from PIL import Image

SIZES = [(500, 375), (375, 500), (500, 333)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=50)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    total = 0
    for cls in sorted(os.listdir(a.src)):
        files = sorted(os.listdir(os.path.join(a.src, cls)))[: a.per_class]
        os.makedirs(os.path.join(a.out, cls), exist_ok=True)
        for k, f in enumerate(files):
            w, h = SIZES[(total + k) % len(SIZES)]
            img = Image.open(os.path.join(a.src, cls, f)).convert("RGB").resize((w, h), Image.BICUBIC)
            px = np.asarray(img, dtype=np.float32) + rng.normal(0, 30, (h, w, 3))
            Image.fromarray(px.clip(0, 255).astype(np.uint8)).save(os.path.join(a.out, cls, f), quality=90)
        total += len(files)
    print(f"{total} JPEGs in {a.out}")


if __name__ == "__main__":
    main()
