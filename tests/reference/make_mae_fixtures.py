"""MAE fixtures (tests/mae.rs): facebookresearch/mae's models_mae.py functions, verbatim in their
arithmetic, on fixed inputs in float64. Writes mae.safetensors beside this file.

    /tmp/torchvenv/bin/python tests/reference/make_mae_fixtures.py

- `random_masking` given the noise (ids_keep, ids_restore, mask);
- `patchify` and `forward_loss` with and without `norm_pix_loss`, with the gradient of the loss
  with respect to the prediction;
- `get_2d_sincos_pos_embed` (models/pos_embed.py) with the class token row.
"""
import os

import numpy as np
import torch
from safetensors.torch import save_file

torch.manual_seed(0)
OUT = os.path.dirname(os.path.abspath(__file__))


# --- models/pos_embed.py ----------------------------------------------------------------------
def get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=False):
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0)
    grid = grid.reshape([2, 1, grid_size, grid_size])
    pos_embed = get_2d_sincos_pos_embed_from_grid(embed_dim, grid)
    if cls_token:
        pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
    return pos_embed


def get_2d_sincos_pos_embed_from_grid(embed_dim, grid):
    assert embed_dim % 2 == 0
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # (H*W, D/2)
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])  # (H*W, D/2)
    return np.concatenate([emb_h, emb_w], axis=1)


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
    assert embed_dim % 2 == 0
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.
    omega = 1. / 10000**omega  # (D/2,)
    pos = pos.reshape(-1)  # (M,)
    out = np.einsum('m,d->md', pos, omega)  # (M, D/2), outer product
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


# --- models_mae.py (MaskedAutoencoderViT's methods, self -> arguments) -------------------------
def patchify(imgs, p):
    assert imgs.shape[2] == imgs.shape[3] and imgs.shape[2] % p == 0
    h = w = imgs.shape[2] // p
    x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
    x = torch.einsum('nchpwq->nhwpqc', x)
    return x.reshape(shape=(imgs.shape[0], h * w, p**2 * 3))


def random_masking(x, mask_ratio, noise):
    N, L, D = x.shape  # batch, length, dim
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep, large is remove
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([N, L], device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore, ids_keep


def forward_loss(imgs, pred, mask, p, norm_pix_loss):
    target = patchify(imgs, p)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.e-6)**.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)  # [N, L], mean loss per patch
    return (loss * mask).sum() / mask.sum()  # mean loss on removed patches


def main():
    t = {}
    n, size, p, ratio = 3, 16, 4, 0.75
    L = (size // p) ** 2
    imgs = torch.randn(n, 3, size, size, dtype=torch.float64)
    noise = torch.rand(n, L, dtype=torch.float64)
    tokens = torch.randn(n, L, 5, dtype=torch.float64)
    x_masked, mask, ids_restore, ids_keep = random_masking(tokens, ratio, noise)
    t["images_nhwc"] = imgs.permute(0, 2, 3, 1).contiguous()
    t["noise"] = noise
    t["tokens"] = tokens
    t["tokens_kept"] = x_masked
    t["ids_keep"] = ids_keep.double()
    t["ids_restore"] = ids_restore.double()
    t["mask"] = mask.double()
    t["patches"] = patchify(imgs, p)
    for norm in (False, True):
        pred = torch.randn(n, L, p * p * 3, dtype=torch.float64, requires_grad=True)
        loss = forward_loss(imgs, pred, mask.double(), p, norm)
        loss.backward()
        key = "norm" if norm else "plain"
        t[f"pred_{key}"] = pred.detach()
        t[f"loss_{key}"] = loss.detach().reshape(1)
        t[f"dpred_{key}"] = pred.grad
    t["pos_embed_64_4"] = torch.from_numpy(get_2d_sincos_pos_embed(64, 4, cls_token=True))
    t["pos_embed_192_8"] = torch.from_numpy(get_2d_sincos_pos_embed(192, 8, cls_token=True))
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "mae.safetensors"))
    print("wrote mae.safetensors:", {k: tuple(v.shape) for k, v in t.items()})


if __name__ == "__main__":
    main()
