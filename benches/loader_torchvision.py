"""torchvision's loader on an image folder, timed as `ssl-engine bench loader` times ours.

ImageFolder (PIL decode) -> RandomResizedCrop(size) + RandomHorizontalFlip -> ToTensor ->
Normalize, through a DataLoader with `--workers` processes, shuffled, drop_last; the "simsiam"
recipe adds SimSiam's colour jitter and grey (as ssl-engine's default recipe: no blur) and makes
two views. One warm-up batch, then
`--batches` batches are timed. Prints one line with images/s, like ours.

    python benches/loader_torchvision.py --data DIR --image-size 224 --batch 64 --batches 16
"""
import argparse
import time

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms as T


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--recipe", choices=["crop", "simsiam"], default="crop")
    a = p.parse_args()
    torch.set_num_threads(1)
    s = a.image_size
    steps = [T.RandomResizedCrop(s, scale=(0.2, 1.0)), T.RandomHorizontalFlip()]
    if a.recipe == "simsiam":
        steps += [
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
    steps += [T.ToTensor(), T.Normalize([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])]
    one = T.Compose(steps)
    views = 2 if a.recipe == "simsiam" else 1
    tf = (lambda im: [one(im) for _ in range(views)]) if views > 1 else one
    ds = datasets.ImageFolder(a.data, transform=tf)
    dl = DataLoader(ds, batch_size=a.batch, shuffle=True, drop_last=True, num_workers=a.workers,
                    persistent_workers=True, prefetch_factor=2)
    done, start = 0, None
    while done < a.batches:
        for _ in dl:
            if start is None:
                start = time.perf_counter()
                continue
            done += 1
            if done == a.batches:
                break
    secs = time.perf_counter() - start
    ips = done * a.batch / secs
    print(f"torchvision: {ips:.1f} images/s ({ips * views:.0f} augmented {s}x{s} views/s) over {done} batches "
          f"of {a.batch}, {a.workers} workers, recipe {a.recipe}")


if __name__ == "__main__":
    main()
