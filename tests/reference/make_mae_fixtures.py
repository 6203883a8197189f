"""MAE fixtures (tests/mae.rs): facebookresearch/mae's models_mae.py functions, verbatim in their
arithmetic, on fixed inputs in float64. Writes mae.safetensors beside this file.

    /tmp/torchvenv/bin/python tests/reference/make_mae_fixtures.py

- `random_masking` given the noise (ids_keep, ids_restore, mask);
- `patchify` and `forward_loss` with and without `norm_pix_loss`, with the gradient of the loss
  with respect to the prediction;
- `get_2d_sincos_pos_embed` (models/pos_embed.py) with the class token row;
- `steps.*`: five AdamW training steps of a small MaskedAutoencoderViT in float64 (see
  `step_fixtures`). Only those entries, the others kept as they are:

    /tmp/torchvenv/bin/python tests/reference/make_mae_fixtures.py steps
"""
import os
import sys
from functools import partial

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

torch.manual_seed(0)
OUT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, OUT)
from make_fixtures import det_param, det_uniform  # noqa: E402  (the generator tests/common implements)


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


# --- timm's ViT block (timm 0.3.2's, which models_mae.py builds on) ----------------------------
class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)  # MAE: qkv_bias=True
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, norm_layer):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # BCHW -> BNC


# --- models_mae.py's MaskedAutoencoderViT, its modules grouped under our names -----------------
class Encoder(nn.Module):
    """backbone.*: patch_embed, cls_token, pos_embed (fixed), blocks, norm."""

    def __init__(self, img_size, patch, dim, depth, heads, mlp_ratio, norm_layer):
        super().__init__()
        grid = img_size // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, norm_layer) for _ in range(depth)])
        self.norm = norm_layer(dim)
        # initialize_weights: the table computed in float64 by NumPy, stored as float32.
        pe = get_2d_sincos_pos_embed(dim, grid, cls_token=True)
        self.pos_embed.data.copy_(torch.from_numpy(pe).float().unsqueeze(0))


class Decoder(nn.Module):
    """decoder.*: embed (models_mae's decoder_embed), mask_token, pos_embed (decoder_pos_embed,
    fixed), blocks (decoder_blocks), norm (decoder_norm), pred (decoder_pred)."""

    def __init__(self, num_patches, grid, enc_dim, dim, depth, heads, mlp_ratio, patch, norm_layer):
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, norm_layer) for _ in range(depth)])
        self.norm = norm_layer(dim)
        self.pred = nn.Linear(dim, patch**2 * 3, bias=True)
        pe = get_2d_sincos_pos_embed(dim, grid, cls_token=True)
        self.pos_embed.data.copy_(torch.from_numpy(pe).float().unsqueeze(0))


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, img_size, patch, dim, depth, heads, dec_dim, dec_depth, dec_heads, mlp_ratio=4.0, norm_pix_loss=True):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        grid = img_size // patch
        self.patch = patch
        self.norm_pix_loss = norm_pix_loss
        self.backbone = Encoder(img_size, patch, dim, depth, heads, mlp_ratio, norm_layer)
        self.decoder = Decoder(grid * grid, grid, dim, dec_dim, dec_depth, dec_heads, mlp_ratio, patch, norm_layer)

    def forward_encoder(self, x, mask_ratio, noise):
        e = self.backbone
        x = e.patch_embed(x)
        x = x + e.pos_embed[:, 1:, :]
        x, mask, ids_restore, _ = random_masking(x, mask_ratio, noise)
        cls_token = e.cls_token + e.pos_embed[:, :1, :]
        cls_tokens = cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        for blk in e.blocks:
            x = blk(x)
        x = e.norm(x)
        return x, mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        d = self.decoder
        x = d.embed(x)
        mask_tokens = d.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # no cls token
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], x_], dim=1)  # append cls token
        x = x + d.pos_embed
        for blk in d.blocks:
            x = blk(x)
        x = d.norm(x)
        x = d.pred(x)
        return x[:, 1:, :]  # remove cls token

    def forward(self, imgs, mask_ratio, noise):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = forward_loss(imgs, pred, mask, self.patch, self.norm_pix_loss)
        return loss, pred, mask


def add_weight_decay(model, weight_decay):
    """timm's optim_factory.add_weight_decay, as MAE's main_pretrain.py uses it."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen weights (the sin-cos tables)
        if len(param.shape) == 1 or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


# The five-step run (tests/mae.rs `five_mae_steps_match_pytorch` repeats these numbers).
STEPS, STEP_N, STEP_SIZE, STEP_PATCH, STEP_RATIO = 5, 4, 16, 4, 0.75
STEP_VIT = dict(dim=32, depth=2, heads=2, dec_dim=32, dec_depth=1, dec_heads=2, mlp_ratio=4.0)
# Our optimiser takes the learning rate and weight decay as float32: these are exact there.
STEP_LR, STEP_WD = float(np.float32(1e-3)), float(np.float32(0.05))
STEP_KEPT = ("decoder.pred.weight", "backbone.blocks.0.attn.qkv.weight", "backbone.patch_embed.proj.weight",
             "backbone.cls_token", "decoder.mask_token")


def step_fixtures():
    """Five training steps of MaskedAutoencoderViT (16 px, patch 4: 16 patches, 4 kept; encoder 32
    wide, 2 blocks of 2 heads; decoder 32 wide, 1 block of 2 heads; MLP ratio 4; norm_pix_loss) in
    float64, with torch.optim.AdamW (betas (0.9, 0.95), eps 1e-8, lr STEP_LR, weight decay STEP_WD on
    the weights with more than one dimension that are not biases, as add_weight_decay).
    Every trainable parameter starts at det_param(name); the sin-cos tables stay MAE's. Images
    det_uniform("mae.steps.x", (5, 4, 3, 16, 16)) (NCHW, step first); step s masks with noise
    `steps.noise`[s] ([5, 4, 16], float64 U(0, 1) from a generator seeded 1). Stored: `steps.noise`,
    `steps.losses` (the five losses), `steps.final.<name>` for STEP_KEPT (the parameters after the
    fifth update, PyTorch layout)."""
    t = {}
    model = MaskedAutoencoderViT(STEP_SIZE, STEP_PATCH, **STEP_VIT).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(det_param(name, tuple(p.shape)))
    model.train()
    opt = torch.optim.AdamW(add_weight_decay(model, STEP_WD), lr=STEP_LR, betas=(0.9, 0.95), eps=1e-8)
    L = (STEP_SIZE // STEP_PATCH) ** 2
    gen = torch.Generator().manual_seed(1)
    noise = torch.rand(STEPS, STEP_N, L, dtype=torch.float64, generator=gen)
    images = det_uniform("mae.steps.x", (STEPS, STEP_N, 3, STEP_SIZE, STEP_SIZE)).double()
    losses = []
    for step in range(STEPS):
        loss, _, _ = model(images[step], STEP_RATIO, noise[step])
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    t["steps.noise"] = noise
    t["steps.losses"] = torch.tensor(losses, dtype=torch.float64)
    params = dict(model.named_parameters())
    for name in STEP_KEPT:
        t[f"steps.final.{name}"] = params[name].detach().clone()
    assert all(v.dtype == torch.float64 for v in t.values())
    print("MAE five steps:", " ".join(f"{v:.12f}" for v in losses))
    return t


def basic_fixtures():
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
    return t


def main():
    path = os.path.join(OUT, "mae.safetensors")
    if sys.argv[1:] == ["steps"]:  # only the five steps' entries; the others stay as they are
        t = {k: v for k, v in load_file(path).items() if not k.startswith("steps.")}
    else:
        t = basic_fixtures()
    t.update(step_fixtures())
    save_file({k: v.contiguous() for k, v in t.items()}, path)
    print("wrote mae.safetensors:", {k: tuple(v.shape) for k, v in t.items()})


if __name__ == "__main__":
    main()
