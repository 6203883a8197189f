"""Writes the PyTorch reference fixtures the Rust tests compare against.

Run from the repository root (needs torch, torchvision, timm, safetensors, numpy):
    python tests/reference/make_fixtures.py

Everything is in PyTorch's layout (NCHW activations, [out, in, kh, kw] conv weights); the Rust
tests convert. Inputs and weights come from `det_uniform`, a counter-based generator that
tests/common/mod.rs implements bit for bit, so the whole-model fixtures need not store the
weights (ResNet-18 alone would be 45 MB): both sides build the same weights from the names.
Large gradients are stored as a strided sample plus the full tensor's L2 norm.
"""
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_default_dtype(torch.float32)
torch.backends.mkldnn.enabled = True
M = np.uint64(0xFFFFFFFFFFFFFFFF)
OUT = os.path.dirname(os.path.abspath(__file__))
SAMPLE = 4096  # gradient entries kept per large tensor


def fnv(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def mix(z):
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def det_uniform(name, shape, scale=1.0, offset=0.0):
    """offset + scale * u, u uniform in [-1, 1) with 24 random bits, keyed by `name`."""
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        z = mix(np.arange(n, dtype=np.uint64) + np.uint64(fnv(name)))
    u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 23) - 1.0
    return torch.from_numpy((offset + scale * u).astype(np.float32).reshape(shape))


def det_param(name, shape):
    """The deterministic value a parameter or buffer gets in the whole-model fixtures."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        return det_uniform(name, shape, 0.1)
    if leaf == "running_var":
        return det_uniform(name, shape, 0.2, 1.0)
    if len(shape) >= 2 and leaf == "weight":
        return det_uniform(name, shape, 1.0 / np.sqrt(np.prod(shape[1:])))
    if leaf == "weight":  # norm gammas
        return det_uniform(name, shape, 0.1, 1.0)
    if leaf in ("cls_token", "pos_embed"):
        return det_uniform(name, shape, 0.02)
    return det_uniform(name, shape, 0.1)  # biases


def grad_record(out, prefix, name, g):
    g = g.detach().float().flatten()
    stride = max(1, g.numel() // SAMPLE)
    out[f"{prefix}.grad.{name}"] = g[::stride].contiguous()
    out[f"{prefix}.gradnorm.{name}"] = torch.tensor([g.double().norm().item()], dtype=torch.float64)


def layer_fixtures():
    t = {}

    def req(name, shape, scale=1.0, offset=0.0):
        x = det_uniform(name, shape, scale, offset).requires_grad_(True)
        t[name] = x.detach().clone()
        return x

    def finish(prefix, y, inputs):
        gy = det_uniform(prefix + ".gy", tuple(y.shape))
        t[prefix + ".y"] = y.detach().clone()
        t[prefix + ".gy"] = gy
        y.backward(gy)
        for n, x in inputs.items():
            t[f"{prefix}.d{n}"] = x.grad.detach().clone()

    # conv: (name, n, c_in, h, w, c_out, k, stride, pad, groups, bias)
    convs = [
        ("conv.k3s1p1", 2, 5, 7, 6, 4, 3, 1, 1, 1, False),
        ("conv.k3s2p1", 2, 3, 9, 7, 5, 3, 2, 1, 1, False),
        ("conv.k1s2p0", 3, 6, 5, 5, 7, 1, 2, 0, 1, False),
        ("conv.k3g2", 2, 4, 6, 5, 6, 3, 1, 1, 2, False),
        ("conv.depthwise", 2, 6, 5, 6, 6, 3, 1, 1, 6, False),
        ("conv.k7s2p3", 1, 3, 11, 10, 4, 7, 2, 3, 1, False),
        ("conv.patch4", 2, 3, 8, 8, 5, 4, 4, 0, 1, True),
    ]
    for name, n, ci, h, w, co, k, s, p, g, bias in convs:
        x = req(name + ".x", (n, ci, h, w))
        wt = req(name + ".w", (co, ci // g, k, k), 0.3)
        b = req(name + ".b", (co,), 0.1) if bias else None
        y = F.conv2d(x, wt, b, stride=s, padding=p, groups=g)
        finish(name, y, {"x": x, "w": wt, **({"b": b} if bias else {})})

    # batch norm, train mode (2d, affine) with running stats, then eval mode
    bn = nn.BatchNorm2d(5, momentum=0.1, eps=1e-5)
    with torch.no_grad():
        bn.weight.copy_(req("bn2d.gamma", (5,), 0.5, 1.0))
        bn.bias.copy_(req("bn2d.beta", (5,), 0.5))
        bn.running_mean.copy_(det_uniform("bn2d.rm0", (5,), 0.1))
        bn.running_var.copy_(det_uniform("bn2d.rv0", (5,), 0.2, 1.0))
    t["bn2d.rm0"], t["bn2d.rv0"] = bn.running_mean.clone(), bn.running_var.clone()
    x = req("bn2d.x", (3, 5, 4, 3), 2.0, 0.5)
    y = bn.train()(x)
    t["bn2d.rm1"], t["bn2d.rv1"] = bn.running_mean.clone(), bn.running_var.clone()
    finish("bn2d", y, {"x": x})
    t["bn2d.dgamma"], t["bn2d.dbeta"] = bn.weight.grad.clone(), bn.bias.grad.clone()
    t["bn2d.eval_y"] = bn.eval()(t["bn2d.x"]).detach().clone()

    # batch norm 1d without affine (SimSiam's projector output)
    bn1 = nn.BatchNorm1d(6, affine=False)
    x = req("bn1d.x", (7, 6), 1.5)
    y = bn1.train()(x)
    t["bn1d.rm1"], t["bn1d.rv1"] = bn1.running_mean.clone(), bn1.running_var.clone()
    finish("bn1d", y, {"x": x})

    # linear
    x = req("linear.x", (5, 7))
    w = req("linear.w", (3, 7), 0.4)
    b = req("linear.b", (3,), 0.1)
    finish("linear", F.linear(x, w, b), {"x": x, "w": w, "b": b})

    # layer norm (timm eps)
    x = req("layernorm.x", (3, 5, 8), 2.0)
    g = req("layernorm.gamma", (8,), 0.3, 1.0)
    b = req("layernorm.beta", (8,), 0.3)
    finish("layernorm", F.layer_norm(x, (8,), g, b, eps=1e-6), {"x": x, "gamma": g, "beta": b})

    # attention (odd sizes)
    q = req("attention.q", (2, 3, 5, 4))
    k = req("attention.k", (2, 3, 7, 4))
    v = req("attention.v", (2, 3, 7, 4))
    finish("attention", F.scaled_dot_product_attention(q, k, v), {"q": q, "k": k, "v": v})

    # SimSiam's D(p, z) = -(normalize(p) . normalize(z)).mean(), with and without stop-grad
    for sg in (True, False):
        name = "cosine.stopgrad" if sg else "cosine.nostopgrad"
        p = req(name + ".p", (6, 8))
        z = req(name + ".z", (6, 8))
        zz = z.detach() if sg else z
        loss = -(F.normalize(p, dim=1) * F.normalize(zz, dim=1)).sum(dim=1).mean()
        t[name + ".loss"] = loss.detach().reshape(1)
        loss.backward()
        t[name + ".dp"] = p.grad.clone()
        t[name + ".dz"] = z.grad.clone() if z.grad is not None else torch.zeros_like(z)

    # cross-entropy
    x = req("ce.logits", (6, 5), 3.0)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    t["ce.labels"] = labels.float()
    loss = F.cross_entropy(x, labels)
    t["ce.loss"] = loss.detach().reshape(1)
    loss.backward()
    t["ce.dlogits"] = x.grad.clone()

    # small ops: GELU, softmax, max-pool
    x = req("gelu.x", (4, 9), 3.0)
    finish("gelu", F.gelu(x), {"x": x})
    x = req("softmax.x", (4, 9), 3.0)
    finish("softmax", F.softmax(x, dim=-1), {"x": x})
    x = req("maxpool.x", (2, 3, 7, 6))
    finish("maxpool", F.max_pool2d(x, 3, 2, 1), {"x": x})
    save_file(t, os.path.join(OUT, "layers.safetensors"))


def simclr_loss_func(z, indexes, temperature):
    """solo-learn's solo/losses/simclr.py, verbatim but for the distributed gather."""
    z = F.normalize(z, dim=-1)
    sim = torch.exp(torch.einsum("if, jf -> ij", z, z) / temperature)
    pos_mask = indexes.unsqueeze(0) == indexes.unsqueeze(1)
    pos_mask.fill_diagonal_(0)
    neg_mask = indexes.unsqueeze(0) != indexes.unsqueeze(1)
    pos = torch.sum(sim * pos_mask, 1)
    neg = torch.sum(sim * neg_mask, 1)
    return -(torch.mean(torch.log(pos / (pos + neg))))


def byol_loss_func(p, z, simplified=True):
    """solo-learn's solo/losses/byol.py, verbatim."""
    if simplified:
        return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()
    p = F.normalize(p, dim=-1)
    z = F.normalize(z, dim=-1)
    return 2 - 2 * (p * z.detach()).sum(dim=1).mean()


class MomentumUpdater:
    """solo-learn's solo/utils/momentum.py MomentumUpdater, verbatim but for the nn.Module walk
    (a list of tensors here)."""

    def __init__(self, base_tau=0.996, final_tau=1.0):
        self.base_tau = base_tau
        self.cur_tau = base_tau
        self.final_tau = final_tau

    @torch.no_grad()
    def update(self, online, momentum):
        for op, mp in zip(online, momentum):
            mp.data = self.cur_tau * mp.data + (1 - self.cur_tau) * op.data

    def update_tau(self, cur_step, max_steps):
        self.cur_tau = self.final_tau - (self.final_tau - self.base_tau) * (math.cos(math.pi * cur_step / max_steps) + 1) / 2


def byol_fixtures(t):
    """BYOL's loss over two views, forward and backward, and the momentum network after three
    EMA steps of a ten-step run (solo-learn updates with the current tau, then moves tau)."""
    p1 = det_uniform("byol.p1", (6, 8)).requires_grad_(True)
    p2 = det_uniform("byol.p2", (6, 8)).requires_grad_(True)
    z1 = det_uniform("byol.z1m", (6, 8))
    z2 = det_uniform("byol.z2m", (6, 8))
    t["byol.p1"], t["byol.p2"], t["byol.z1m"], t["byol.z2m"] = p1.detach().clone(), p2.detach().clone(), z1, z2
    loss = byol_loss_func(p2, z1) + byol_loss_func(p1, z2)
    t["byol.loss"] = loss.detach().reshape(1)
    loss.backward()
    t["byol.dp1"], t["byol.dp2"] = p1.grad.clone(), p2.grad.clone()
    updater = MomentumUpdater(0.99, 1.0)
    momentum = [det_uniform("ema.m", (5, 3))]
    t["ema.m0"] = momentum[0].clone()
    for step in range(3):
        online = [det_uniform(f"ema.o{step}", (5, 3))]
        t[f"ema.o{step}"] = online[0]
        updater.update(online, momentum)
        updater.update_tau(step + 1, 10)
        t[f"ema.m{step + 1}"] = momentum[0].clone()


def loss_fixtures():
    """The self-supervised losses (losses.safetensors): F.normalize, and SimCLR's NT-Xent."""
    t = {}
    x = det_uniform("normalize.x", (5, 7), 2.0).requires_grad_(True)
    w = det_uniform("normalize.w", (5, 7))
    t["normalize.x"], t["normalize.w"] = x.detach().clone(), w
    y = F.normalize(x, dim=1)
    t["normalize.y"] = y.detach().clone()
    (y * w).sum().backward()
    t["normalize.dx"] = x.grad.clone()
    for temp in (0.2, 0.5):
        name = f"ntxent.t{temp}"
        z1 = det_uniform(name + ".z1", (6, 8)).requires_grad_(True)
        z2 = det_uniform(name + ".z2", (6, 8)).requires_grad_(True)
        t[name + ".z1"], t[name + ".z2"] = z1.detach().clone(), z2.detach().clone()
        loss = simclr_loss_func(torch.cat([z1, z2]), torch.arange(6).repeat(2), temp)
        t[name + ".loss"] = loss.detach().reshape(1)
        loss.backward()
        t[name + ".dz1"], t[name + ".dz2"] = z1.grad.clone(), z2.grad.clone()
    byol_fixtures(t)
    save_file(t, os.path.join(OUT, "losses.safetensors"))


class SoloLars(torch.optim.Optimizer):
    """solo-learn's solo/utils/lars.py LARS step, verbatim but for Nesterov and dampening
    (both off in every recipe)."""

    def __init__(self, params, lr, momentum, weight_decay, eta, eps, clip_lars_lr, exclude_bias_n_norm_lars):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps,
                                      clip_lars_lr=clip_lars_lr, exclude_bias_n_norm_lars=exclude_bias_n_norm_lars))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            weight_decay, momentum = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                p_norm = torch.norm(p.data)
                g_norm = torch.norm(p.grad.data)
                if p.ndim != 1 or not group["exclude_bias_n_norm_lars"]:
                    if p_norm != 0 and g_norm != 0:
                        lars_lr = p_norm / (g_norm + p_norm * weight_decay + group["eps"])
                        lars_lr *= group["eta"]
                        if group["clip_lars_lr"]:
                            lars_lr = min(lars_lr / group["lr"], 1)
                        d_p = d_p.add(p, alpha=weight_decay)
                        d_p *= lars_lr
                if momentum != 0:
                    param_state = self.state[p]
                    if "momentum_buffer" not in param_state:
                        buf = param_state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf = param_state["momentum_buffer"]
                        buf.mul_(momentum).add_(d_p)
                    d_p = buf
                p.add_(d_p, alpha=-group["lr"])


OPTIM_PARAMS = [("fc1.weight", (5, 6)), ("fc1.bias", (5,)), ("bn.weight", (5,)), ("bn.bias", (5,)),
                ("fc2.weight", (3, 5)), ("zero.weight", (3, 4))]
OPTIM_LRS = [0.3, 0.25, 0.2, 0.1]


def optim_fixtures():
    """Four steps of each optimiser on fixed parameters and gradients (optim.safetensors): SGD
    (torch.optim.SGD) and solo-learn's LARS with clipping and exclusions, and without. The
    learning rate changes every step (clipping depends on it); "zero.weight" starts at zero (LARS
    falls back to plain SGD); gradients are given, not computed, so only the update is tested."""
    t = {}
    for name, shape in OPTIM_PARAMS:
        init = torch.zeros(shape) if name.startswith("zero") else det_uniform("optim.p." + name, shape, 0.5)
        t["init." + name] = init
        for step in range(len(OPTIM_LRS)):
            t[f"grad{step}.{name}"] = det_uniform(f"optim.g{step}." + name, shape, 0.1)
    runs = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=OPTIM_LRS[0], momentum=0.9, weight_decay=5e-3),
        "lars": lambda ps: SoloLars(ps, OPTIM_LRS[0], 0.9, 5e-3, 0.02, 1e-8, True, True),
        "lars_plain": lambda ps: SoloLars(ps, OPTIM_LRS[0], 0.9, 5e-3, 0.02, 1e-8, False, False),
    }
    for run, make in runs.items():
        ps = [t["init." + name].clone().requires_grad_(True) for name, _ in OPTIM_PARAMS]
        opt = make(ps)
        for step, lr in enumerate(OPTIM_LRS):
            for g in opt.param_groups:
                g["lr"] = lr
            for p, (name, _) in zip(ps, OPTIM_PARAMS):
                p.grad = t[f"grad{step}.{name}"].clone()
            opt.step()
            for p, (name, _) in zip(ps, OPTIM_PARAMS):
                t[f"{run}.step{step}.{name}"] = p.detach().clone()
    save_file(t, os.path.join(OUT, "optim.safetensors"))


def set_det_weights(model):
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            p.copy_(det_param(name, tuple(p.shape)))


def model_fixture(t, prefix, model, x):
    """Forward + backward of loss = sum(features * R); records output, loss, every gradient."""
    set_det_weights(model)
    model.train()
    x = x.clone().requires_grad_(True)
    y = model(x)
    r = det_uniform(prefix + ".R", tuple(y.shape))
    loss = (y * r).sum()
    loss.backward()
    t[prefix + ".x"] = x.detach().clone()
    t[prefix + ".y"] = y.detach().clone()
    t[prefix + ".loss"] = loss.detach().reshape(1)
    grad_record(t, prefix, "input", x.grad)
    for name, p in model.named_parameters():
        grad_record(t, prefix, name, p.grad)
    for name, b in model.named_buffers():
        if "running" in name:
            t[f"{prefix}.buffer.{name}"] = b.detach().clone()


def resnet18_cifar(num_classes):
    import torchvision

    m = torchvision.models.resnet18(num_classes=num_classes or 1000)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    if not num_classes:
        m.fc = nn.Identity()
    return m


def model_fixtures():
    import timm

    torch.set_num_threads(2)
    t = {}
    model_fixture(t, "resnet18", resnet18_cifar(None), det_uniform("resnet18.input", (4, 3, 32, 32)))
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3, num_classes=0
    )
    model_fixture(t, "vit_tiny", vit, det_uniform("vit_tiny.input", (2, 3, 32, 32)))

    # Three SGD-momentum steps with weight decay on ResNet-18 (with a 10-class head), CE loss.
    # The reference trace is computed in float64 (the float32 trace is kept for information).
    # Sixteen images and lr 0.01 keep the loss away from zero: with four images at lr 0.05 they
    # are memorised by step 3 (loss 0.035), where any float32 rounding moves the loss by up to
    # 3e-4 relative, PyTorch's own float32 trace included.
    x = det_uniform("sgd.input", (16, 3, 32, 32))
    labels = torch.arange(16) % 10
    t["sgd.x"], t["sgd.labels"] = x, labels.float()
    for dtype, key in ((torch.float64, "sgd.losses"), (torch.float32, "sgd.losses_f32")):
        m = resnet18_cifar(10)
        set_det_weights(m)
        m = m.to(dtype).train()
        opt = torch.optim.SGD(m.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)
        losses = []
        for _ in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(m(x.to(dtype)), labels)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        t[key] = torch.tensor(losses, dtype=torch.float64)
    save_file(t, os.path.join(OUT, "models.safetensors"))


def metric_fixtures():
    """scikit-learn's accuracy / balanced accuracy / one-vs-rest AUCs on random scores."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score, top_k_accuracy_score

    t = {}
    rng = np.random.default_rng(0)
    n, c = 300, 6
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs[40:80] = probs[:40]  # identical rows: ties across samples, which AUC must average
    onehot = np.eye(c)[labels]
    t["scores"] = torch.tensor(probs, dtype=torch.float32)
    t["labels"] = torch.tensor(labels, dtype=torch.float32)
    pf = t["scores"].double().numpy()  # exactly the float32 values the Rust side reads
    expected = [
        top_k_accuracy_score(labels, pf, k=1),
        top_k_accuracy_score(labels, pf, k=5),
        balanced_accuracy_score(labels, pf.argmax(1)),
        (pf.argmax(1) == labels).mean(),
        roc_auc_score(labels, pf, multi_class="ovr", average="macro"),
        roc_auc_score(onehot, pf, average="micro"),
    ]
    t["expected"] = torch.tensor(expected, dtype=torch.float64)
    save_file(t, os.path.join(OUT, "metrics.safetensors"))


def key_fixtures():
    """State-dict keys and shapes of torchvision's ResNet-18 (CIFAR stem, no fc) and timm's
    ViT-tiny (no head): what an exported backbone must match for load_state_dict(strict=True)."""
    import json

    import timm

    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3, num_classes=0
    )
    keys = {
        "resnet18-cifar": {k: list(v.shape) for k, v in resnet18_cifar(None).state_dict().items()},
        "vit-tiny": {k: list(v.shape) for k, v in vit.state_dict().items()},
    }
    with open(os.path.join(OUT, "state_dict_keys.json"), "w") as f:
        json.dump(keys, f, indent=0, sort_keys=True)


if __name__ == "__main__":
    import sys

    torch.manual_seed(0)
    loss_fixtures()
    optim_fixtures()
    if sys.argv[1:] == ["losses"]:  # only losses.safetensors and optim.safetensors
        sys.exit(0)
    key_fixtures()
    metric_fixtures()
    layer_fixtures()
    model_fixtures()
    for f in ("metrics.safetensors", "layers.safetensors", "models.safetensors"):
        print(f, os.path.getsize(os.path.join(OUT, f)) // 1024, "KiB")
