"""The PyTorch twin of `ssl-engine bench step`: the same backbone with a 10-class head,
forward + cross-entropy + backward + SGD (momentum 0.9, weight decay 5e-4), median of --runs.

    python benches/pytorch_step.py --model resnet18-cifar --batch 64 --threads 2
    python benches/pytorch_step.py --simsiam --batch 512 --device cuda                 # eager FP32
    python benches/pytorch_step.py --simsiam --batch 512 --device cuda --amp --channels-last
    python benches/pytorch_step.py --simsiam --batch 512 --device cuda --compile

On a GPU the step is synchronised before the clock is read; --amp is autocast to bf16 (FP32
master weights, as `--precision bf16` will be); TF32 stays off unless --tf32.
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


class SimSiam(nn.Module):
    """The paper's CIFAR model: backbone + 2-layer 2048-d projector (last BN without affine)
    + 2048->512->2048 predictor; symmetric negative cosine with stop-gradient."""

    def __init__(self, backbone, feat_dim):
        super().__init__()
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.projector = nn.Sequential(
            nn.Linear(feat_dim, 2048, bias=False), nn.BatchNorm1d(2048), nn.ReLU(inplace=True),
            nn.Linear(2048, 2048, bias=False), nn.BatchNorm1d(2048, affine=False))
        self.predictor = nn.Sequential(
            nn.Linear(2048, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, 2048))

    def forward(self, x1, x2):
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        d = lambda p, z: -(F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(1).mean()
        return 0.5 * d(p1, z2) + 0.5 * d(p2, z1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18-cifar")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--simsiam", action="store_true", help="time a whole SimSiam step (two views)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--amp", action="store_true", help="autocast to bf16 (GPU)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmul/conv (GPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    m = build(a.model, a.image_size).train().to(dev)
    x = torch.randn(a.batch, 3, a.image_size, a.image_size, device=dev)
    if a.channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    y = torch.arange(a.batch, device=dev) % 10
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    if a.simsiam:
        feat = m.fc.in_features if hasattr(m, "fc") else m.head.in_features
        m = SimSiam(m, feat).train().to(dev)
        x2 = torch.randn_like(x)
        opt = torch.optim.SGD(m.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    fwd = torch.compile(m) if a.compile else m
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.amp):
            loss = fwd(x, x2) if a.simsiam else F.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    sync()
    ts = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        step()
        sync()
        ts.append(time.perf_counter() - t0)
    med = statistics.median(ts)
    kind = "simsiam step" if a.simsiam else "step"
    kind += "".join(f" {f}" for f, on in [("amp-bf16", a.amp), ("channels-last", a.channels_last), ("tf32", a.tf32),
                                          ("compile", a.compile)] if on) + f" on {a.device}"
    imgs = a.batch * (2 if a.simsiam else 1)
    print(f"pytorch {torch.__version__} {kind} {a.model} batch {a.batch}: median {med:.4f} s "
          f"(min {min(ts):.4f}, max {max(ts):.4f}), {imgs / med:.1f} img/s")


if __name__ == "__main__":
    main()
