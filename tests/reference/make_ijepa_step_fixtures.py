"""Five I-JEPA training steps (tests/ijepa_steps.rs) with facebookresearch/ijepa's own code, run
offline in float64. Writes ijepa_steps.safetensors beside this file.

    git clone https://github.com/facebookresearch/ijepa /tmp/ijepa
    IJEPA_SRC=/tmp/ijepa /tmp/torchvenv/bin/python tests/reference/make_ijepa_step_fixtures.py

Nothing of ijepa is copied here: the models (src/models/vision_transformer.py's VisionTransformer
and VisionTransformerPredictor), the mask collator (src/masks/multiblock.py), apply_masks,
repeat_interleave_batch, AllReduce and the optimiser with its schedules (src/helper.py's
init_opt) are imported from IJEPA_SRC (default /tmp/ijepa). `train_step` below is src/train.py's
train_step, step for step (float32, no bfloat16, one process).

The run: 32 px images, patch 4 (an 8x8 grid, 64 patches); an encoder 32 wide with 2 blocks of 2
heads, MLP ratio 4, qkv bias, LayerNorm eps 1e-6; a predictor 16 wide with 1 block of 2 heads;
the target encoder a deep copy of the encoder; everything `.double()`. Every trainable
parameter starts at det_param(<our name>) (names mapped by `OURS`); the two sin-cos tables stay
ijepa's. Batch 4, images det_uniform("ijepa.steps.x", (5, 4, 3, 32, 32)) (NCHW, step first).
The masks of each step come from ijepa's MaskCollator (the settings of configs/in1k_vith14_ep300
but min_keep 4, as an 8x8 grid's 3x3 target blocks could never keep more than 10) with
torch.manual_seed(0) and are stored. AdamW with init_opt's four parameter groups (no weight decay
on biases and 1-D parameters), betas (0.9, 0.999), eps 1e-8, the learning rate and weight decay
held at STEP_LR and STEP_WD (warm-up 0, final = start = reference: the schedules return them
exactly). The EMA: train.py's momentum_scheduler over 5 steps from STEP_EMA, whose taus are
exact in float32 (our EMA kernel takes tau as f32).

Stored:
- `steps.<s>.masks_enc` [1, 4, kc] and `steps.<s>.masks_pred` [4, 4, kp]: step s's masks (patch
  indices as float64);
- `steps.losses`: the five losses;
- `steps.taus`: the five EMA coefficients;
- `steps.final.<our name>` for STEP_KEPT: the weights after the fifth step (and its EMA),
  PyTorch layout.
"""
import copy
import os
import sys
import warnings
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.environ.get("IJEPA_SRC", "/tmp/ijepa"))
from src.helper import init_opt  # noqa: E402
from src.masks.multiblock import MaskCollator  # noqa: E402
from src.masks.utils import apply_masks  # noqa: E402
from src.models.vision_transformer import VisionTransformer, VisionTransformerPredictor  # noqa: E402
from src.utils.distributed import AllReduce  # noqa: E402
from src.utils.tensors import repeat_interleave_batch  # noqa: E402

OUT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, OUT)
from make_fixtures import det_param, det_uniform  # noqa: E402  (the generator tests/common implements)

STEPS, STEP_N, STEP_SIZE, STEP_PATCH = 5, 4, 32, 4
ENC = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=4, qkv_bias=True)
PRED = dict(predictor_embed_dim=16, depth=1, num_heads=2, mlp_ratio=4, qkv_bias=True)
MASKS = dict(enc_mask_scale=(0.85, 1.0), pred_mask_scale=(0.15, 0.2), aspect_ratio=(0.75, 1.5), nenc=1, npred=4, min_keep=4, allow_overlap=False)
# Our optimiser takes the learning rate and weight decay as float32: these are exact there.
STEP_LR, STEP_WD = float(np.float32(1e-3)), float(np.float32(0.04))
# tau = 0.84375 + s / 32: exact in float32, and the EMA moves the target a sixth of the way.
STEP_EMA = (0.84375, 1.0)
STEP_KEPT = ("context.blocks.0.attn.qkv.weight", "context.patch_embed.proj.weight", "backbone.blocks.0.attn.qkv.weight",
             "backbone.blocks.1.mlp.fc2.weight", "predictor.proj.weight", "predictor.mask_token")


def ours(name, module):
    """Our ParamStore name of ijepa's parameter `name` in `module` ("encoder", "target", "predictor")."""
    if module == "encoder":
        return "context." + name
    if module == "target":
        return "backbone." + name
    for theirs, mine in (("predictor_embed.", "predictor.embed."), ("predictor_blocks.", "predictor.blocks."),
                         ("predictor_norm.", "predictor.norm."), ("predictor_proj.", "predictor.proj."),
                         ("predictor_pos_embed", "predictor.pos_embed"), ("mask_token", "predictor.mask_token")):
        if name.startswith(theirs):
            return mine + name[len(theirs):]
    raise KeyError(name)


def masks_for_steps():
    """Five batches' masks from ijepa's MaskCollator (torch.manual_seed(0); the collator's own
    counter seeds the block sizes, the global generator places the blocks)."""
    torch.manual_seed(0)
    collator = MaskCollator(input_size=(STEP_SIZE, STEP_SIZE), patch_size=STEP_PATCH, **MASKS)
    out = []
    for _ in range(STEPS):
        _, masks_enc, masks_pred = collator([torch.zeros(1)] * STEP_N)
        out.append((masks_enc, masks_pred))
    return out


def step_fixtures():
    t = {}
    steps_masks = masks_for_steps()
    norm_layer = partial(nn.LayerNorm, eps=1e-6)
    grid = STEP_SIZE // STEP_PATCH
    encoder = VisionTransformer(img_size=[STEP_SIZE], patch_size=STEP_PATCH, norm_layer=norm_layer, **ENC).double()
    predictor = VisionTransformerPredictor(num_patches=grid * grid, embed_dim=ENC["embed_dim"], norm_layer=norm_layer, **PRED).double()
    with torch.no_grad():
        for module, net in (("encoder", encoder), ("predictor", predictor)):
            for name, p in net.named_parameters():
                if p.requires_grad:
                    p.copy_(det_param(ours(name, module), tuple(p.shape)))
    target_encoder = copy.deepcopy(encoder)
    for p in target_encoder.parameters():
        p.requires_grad = False
    # Learning rate and weight decay held: start = reference = final, no warm-up.
    optimizer, scaler, scheduler, wd_scheduler = init_opt(
        encoder=encoder, predictor=predictor, iterations_per_epoch=STEPS, start_lr=STEP_LR, ref_lr=STEP_LR, warmup=0,
        num_epochs=1, wd=STEP_WD, final_wd=STEP_WD, final_lr=STEP_LR, use_bfloat16=False, ipe_scale=1.0)
    assert scaler is None
    ipe, num_epochs, ipe_scale, ema = STEPS, 1, 1.0, STEP_EMA
    momentum_scheduler = (ema[0] + i * (ema[1] - ema[0]) / (ipe * num_epochs * ipe_scale)
                          for i in range(int(ipe * num_epochs * ipe_scale) + 1))
    images = det_uniform("ijepa.steps.x", (STEPS, STEP_N, 3, STEP_SIZE, STEP_SIZE)).double()
    encoder.train()
    predictor.train()
    target_encoder.train()
    losses, taus = [], []

    # src/train.py's train_step, with imgs, masks_enc and masks_pred of the step.
    def train_step(imgs, masks_enc, masks_pred):
        _new_lr = scheduler.step()
        _new_wd = wd_scheduler.step()
        assert (_new_lr, _new_wd) == (STEP_LR, STEP_WD)

        def forward_target():
            with torch.no_grad():
                h = target_encoder(imgs)
                h = F.layer_norm(h, (h.size(-1),))  # normalize over feature-dim
                B = len(h)
                # -- create targets (masked regions of h)
                h = apply_masks(h, masks_pred)
                h = repeat_interleave_batch(h, B, repeat=len(masks_enc))
                return h

        def forward_context():
            z = encoder(imgs, masks_enc)
            z = predictor(z, masks_enc, masks_pred)
            return z

        def loss_fn(z, h):
            loss = F.smooth_l1_loss(z, h)
            loss = AllReduce.apply(loss)
            return loss

        h = forward_target()
        z = forward_context()
        loss = loss_fn(z, h)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            m = next(momentum_scheduler)
            for param_q, param_k in zip(encoder.parameters(), target_encoder.parameters()):
                param_k.data.mul_(m).add_((1. - m) * param_q.detach().data)
        with warnings.catch_warnings():  # float() of a tensor that requires grad, as train.py
            warnings.simplefilter("ignore", UserWarning)
            return float(loss), m

    for step in range(STEPS):
        masks_enc, masks_pred = steps_masks[step]
        loss, m = train_step(images[step], masks_enc, masks_pred)
        losses.append(loss)
        taus.append(m)
        t[f"steps.{step}.masks_enc"] = torch.stack(masks_enc).to(torch.float64)
        t[f"steps.{step}.masks_pred"] = torch.stack(masks_pred).to(torch.float64)
    t["steps.losses"] = torch.tensor(losses, dtype=torch.float64)
    t["steps.taus"] = torch.tensor(taus, dtype=torch.float64)
    params = {}
    for module, net in (("encoder", encoder), ("target", target_encoder), ("predictor", predictor)):
        params.update({ours(n, module): p for n, p in net.named_parameters()})
    for name in STEP_KEPT:
        t[f"steps.final.{name}"] = params[name].detach().clone()
    assert all(v.dtype == torch.float64 for v in t.values())
    assert all(np.float32(m) == m for m in taus), taus
    print("I-JEPA five steps:", " ".join(f"{v:.12f}" for v in losses))
    print("taus:", taus)
    print("masks (kc, kp):", [(t[f"steps.{s}.masks_enc"].shape[2], t[f"steps.{s}.masks_pred"].shape[2]) for s in range(STEPS)])
    return t


def main():
    t = step_fixtures()
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "ijepa_steps.safetensors"))
    print("wrote ijepa_steps.safetensors:", {k: tuple(v.shape) for k, v in t.items()})


if __name__ == "__main__":
    main()
