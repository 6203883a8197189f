"""The PyTorch twin of `ssl-engine bench step`: the same backbone with a 10-class head,
forward + cross-entropy + backward + SGD (momentum 0.9, weight decay 5e-4), median of --runs.

    python benches/pytorch_step.py --model resnet18-cifar --batch 64 --threads 2
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def build(model, image_size):
    if model.startswith("resnet"):
        import torchvision

        depth = model.split("-")[0]
        m = getattr(torchvision.models, depth)(num_classes=10)
        if model.endswith("-cifar"):
            m.conv1 = nn.Conv2d(3, m.conv1.out_channels, 3, 1, 1, bias=False)
            m.maxpool = nn.Identity()
        return m
    import timm

    dim, heads = {"vit-tiny": (192, 3), "vit-small": (384, 6)}[model]
    patch = 4 if image_size <= 64 else 16
    return timm.models.vision_transformer.VisionTransformer(
        img_size=image_size, patch_size=patch, embed_dim=dim, depth=12, num_heads=heads, num_classes=10
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18-cifar")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = build(a.model, a.image_size).train()
    x = torch.randn(a.batch, 3, a.image_size, a.image_size)
    if a.channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    y = torch.arange(a.batch) % 10
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    ts = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    med = statistics.median(ts)
    print(f"pytorch {torch.__version__} step {a.model} batch {a.batch}: median {med:.4f} s "
          f"(min {min(ts):.4f}, max {max(ts):.4f}), {a.batch / med:.1f} img/s")


if __name__ == "__main__":
    main()
