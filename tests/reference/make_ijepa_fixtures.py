"""I-JEPA fixtures (tests/ijepa.rs): facebookresearch/ijepa's own MaskCollator and loss, run
offline. Writes ijepa.safetensors beside this file.

    git clone https://github.com/facebookresearch/ijepa /tmp/ijepa
    IJEPA_SRC=/tmp/ijepa /tmp/torchvenv/bin/python tests/reference/make_ijepa_fixtures.py

- The multi-block mask collator (src/masks/multiblock.py) on several batches: every value it drew
  (torch.rand for the block sizes, torch.randint for the places) is recorded in order, with the
  masks it made; tests/ijepa.rs replays the draws through our sampler and compares the masks.
- The loss as src/train.py computes it from the target encoder's tokens: F.layer_norm over the
  features, apply_masks with the target masks, F.smooth_l1_loss (and the mean squared error, the
  paper's L2), in float64, with the gradient with respect to the prediction.
"""
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.environ.get("IJEPA_SRC", "/tmp/ijepa"))
from src.masks.multiblock import MaskCollator  # noqa: E402
from src.masks.utils import apply_masks  # noqa: E402

OUT = os.path.dirname(os.path.abspath(__file__))


def recorded(fn, log):
    """fn, recording each scalar it returns (the collator draws one value per call)."""
    def wrapper(*args, **kwargs):
        v = fn(*args, **kwargs)
        log.append(float(v.reshape(-1)[0].item()))
        return v
    return wrapper


def collator_fixtures(out):
    # (name, crop, patch, batch, settings, batches): CIFAR at patch 4 (8x8 grid) with a small
    # min_keep, the paper's settings at 224 px / patch 16 (14x14), and a tight case where the
    # context block must give up regions (few patches left after 4 large targets).
    cases = [
        ("cifar", 32, 4, 4, dict(pred_mask_scale=(0.15, 0.2), enc_mask_scale=(0.85, 1.0), aspect_ratio=(0.75, 1.5), nenc=1, npred=4, min_keep=4), 3),
        ("in1k", 224, 16, 3, dict(pred_mask_scale=(0.15, 0.2), enc_mask_scale=(0.85, 1.0), aspect_ratio=(0.75, 1.5), nenc=1, npred=4, min_keep=10), 2),
        ("tight", 32, 4, 4, dict(pred_mask_scale=(0.3, 0.4), enc_mask_scale=(0.3, 0.4), aspect_ratio=(0.75, 1.5), nenc=1, npred=4, min_keep=6), 3),
        ("overlap", 32, 4, 2, dict(pred_mask_scale=(0.15, 0.2), enc_mask_scale=(0.85, 1.0), aspect_ratio=(0.75, 1.5), nenc=1, npred=4, min_keep=4, allow_overlap=True), 2),
    ]
    torch.manual_seed(0)
    real_rand, real_randint = torch.rand, torch.randint
    for name, crop, patch, batch, kw, batches in cases:
        collator = MaskCollator(input_size=(crop, crop), patch_size=patch, **kw)
        for b in range(batches):
            rands, ints = [], []
            torch.rand, torch.randint = recorded(real_rand, rands), recorded(real_randint, ints)
            try:
                _, masks_enc, masks_pred = collator([torch.zeros(1)] * batch)
            finally:
                torch.rand, torch.randint = real_rand, real_randint
            key = f"collator.{name}.{b}"
            out[f"{key}.rands"] = torch.tensor(rands, dtype=torch.float64)
            out[f"{key}.ints"] = torch.tensor(ints, dtype=torch.float64)
            assert len(masks_enc) == 1
            out[f"{key}.context"] = masks_enc[0].to(torch.float64)
            out[f"{key}.targets"] = torch.stack(masks_pred).to(torch.float64)


def loss_fixtures(out):
    g = torch.Generator().manual_seed(3)
    n, patches, d, targets, kept = 2, 16, 8, 4, 3
    h = torch.randn(n, patches, d, generator=g, dtype=torch.float64) * 2.0
    pred = torch.randn(targets * n, kept, d, generator=g, dtype=torch.float64) * 1.5
    masks = [torch.stack([torch.randperm(patches, generator=g)[:kept].sort().values for _ in range(n)]) for _ in range(targets)]
    target = apply_masks(F.layer_norm(h, (d,)), masks)
    out["loss.h"] = h
    out["loss.pred"] = pred
    out["loss.targets"] = torch.stack(masks).to(torch.float64)
    out["loss.target"] = target
    for key, fn in [("smooth_l1", F.smooth_l1_loss), ("l2", F.mse_loss)]:
        p = pred.clone().requires_grad_(True)
        loss = fn(p, target)
        loss.backward()
        out[f"loss.{key}"] = loss.detach().reshape(1)
        out[f"loss.{key}.dpred"] = p.grad


if __name__ == "__main__":
    out = {}
    collator_fixtures(out)
    loss_fixtures(out)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "ijepa.safetensors"))
    print(f"wrote {len(out)} tensors to ijepa.safetensors")
