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


# ---- solo-learn losses, copied from vturrisi/solo-learn @ 9187ea39c2c3f43c455ab06664d2b019a9802954
# (the loss files last changed in 3b357ee5). Distributed gathers/all-reduces dropped (world size 1).


def mocov2plus_loss_func(query, key, queue, temperature=0.1):
    """solo-learn's solo/losses/mocov2plus.py, verbatim."""
    pos = torch.einsum("nc,nc->n", [query, key]).unsqueeze(-1)
    neg = torch.einsum("nc,ck->nk", [query, queue])
    logits = torch.cat([pos, neg], dim=1)
    logits /= temperature
    targets = torch.zeros(query.size(0), device=query.device, dtype=torch.long)
    return F.cross_entropy(logits, targets)


def mocov2plus_dequeue_and_enqueue(queue, queue_ptr, keys):
    """solo-learn's solo/methods/mocov2plus.py MoCoV2Plus._dequeue_and_enqueue, verbatim but for
    `self.` (queue [2, dim, K] and queue_ptr [1] long, both updated in place)."""
    queue_size = queue.shape[2]
    batch_size = keys.shape[1]
    ptr = int(queue_ptr)  # type: ignore
    assert queue_size % batch_size == 0  # for simplicity

    # replace the keys at ptr (dequeue and enqueue)
    keys = keys.permute(0, 2, 1)
    queue[:, :, ptr : ptr + batch_size] = keys
    ptr = (ptr + batch_size) % queue_size  # move pointer
    queue_ptr[0] = ptr  # type: ignore


def mocov3_loss_func(query, key, temperature=0.2):
    """solo-learn's solo/losses/mocov3.py, verbatim but for the distributed gather (rank 0)."""
    n = query.size(0)
    device = query.device
    rank = 0

    query = F.normalize(query, dim=1)
    key = F.normalize(key, dim=1)

    logits = torch.einsum("nc,mc->nm", [query, key]) / temperature
    labels = torch.arange(n, dtype=torch.long, device=device) + n * rank

    return F.cross_entropy(logits, labels) * (2 * temperature)


def barlow_loss_func(z1, z2, lamb=5e-3, scale_loss=0.025):
    """solo-learn's solo/losses/barlow.py, verbatim but for the distributed all-reduce."""
    N, D = z1.size()

    # to match the original code
    bn = torch.nn.BatchNorm1d(D, affine=False).to(z1.device)
    z1 = bn(z1)
    z2 = bn(z2)

    corr = torch.einsum("bi, bj -> ij", z1, z2) / N

    diag = torch.eye(D, device=corr.device)
    cdif = (corr - diag).pow(2)
    cdif[~diag.bool()] *= lamb
    loss = scale_loss * cdif.sum()
    return loss


def invariance_loss(z1, z2):
    """solo-learn's solo/losses/vicreg.py, verbatim."""
    return F.mse_loss(z1, z2)


def variance_loss(z1, z2):
    """solo-learn's solo/losses/vicreg.py, verbatim."""
    eps = 1e-4
    std_z1 = torch.sqrt(z1.var(dim=0) + eps)
    std_z2 = torch.sqrt(z2.var(dim=0) + eps)
    std_loss = torch.mean(F.relu(1 - std_z1)) + torch.mean(F.relu(1 - std_z2))
    return std_loss


def covariance_loss(z1, z2):
    """solo-learn's solo/losses/vicreg.py, verbatim."""
    N, D = z1.size()

    z1 = z1 - z1.mean(dim=0)
    z2 = z2 - z2.mean(dim=0)
    cov_z1 = (z1.T @ z1) / (N - 1)
    cov_z2 = (z2.T @ z2) / (N - 1)

    diag = torch.eye(D, device=z1.device)
    cov_loss = cov_z1[~diag.bool()].pow_(2).sum() / D + cov_z2[~diag.bool()].pow_(2).sum() / D
    return cov_loss


def vicreg_loss_func(z1, z2, sim_loss_weight=25.0, var_loss_weight=25.0, cov_loss_weight=1.0):
    """solo-learn's solo/losses/vicreg.py, verbatim but for the distributed gather."""
    sim_loss = invariance_loss(z1, z2)

    var_loss = variance_loss(z1, z2)
    cov_loss = covariance_loss(z1, z2)

    loss = sim_loss_weight * sim_loss + var_loss_weight * var_loss + cov_loss_weight * cov_loss
    return loss


class SinkhornKnopp(torch.nn.Module):
    """solo-learn's solo/utils/sinkhorn_knopp.py, verbatim but for the distributed all-reduces."""

    def __init__(self, num_iters=3, epsilon=0.05, world_size=1):
        super().__init__()
        self.num_iters = num_iters
        self.epsilon = epsilon
        self.world_size = world_size

    @torch.no_grad()
    def forward(self, Q):
        Q = torch.exp(Q / self.epsilon).t()
        B = Q.shape[1] * self.world_size
        K = Q.shape[0]  # num prototypes

        # make the matrix sums to 1
        sum_Q = torch.sum(Q)
        Q /= sum_Q

        for _ in range(self.num_iters):
            # normalize each row: total weight per prototype must be 1/K
            sum_of_rows = torch.sum(Q, dim=1, keepdim=True)
            Q /= sum_of_rows
            Q /= K

            # normalize each column: total weight per sample must be 1/B
            Q /= torch.sum(Q, dim=0, keepdim=True)
            Q /= B

        Q *= B  # the colomns must sum to 1 so that Q is an assignment
        return Q.t()


def swav_loss_func(preds, assignments, temperature=0.1):
    """solo-learn's solo/losses/swav.py, verbatim."""
    losses = []
    for v1, a in enumerate(assignments):
        for v2 in np.delete(np.arange(len(preds)), v1):
            p = preds[v2] / temperature
            loss = -torch.mean(torch.sum(a * torch.log_softmax(p, dim=1), dim=1))
            losses.append(loss)
    return sum(losses) / len(losses)


class DINOLoss(nn.Module):
    """solo-learn's solo/losses/dino.py, verbatim but for the distributed all-reduce. Note that
    `student_output.chunk(num_large_crops)`: the student is cut into num_large_crops equal chunks,
    so with small crops the argument must be the total crop count (see dino_fixtures)."""

    def __init__(
        self,
        num_prototypes,
        warmup_teacher_temp,
        teacher_temp,
        warmup_teacher_temp_epochs,
        num_epochs,
        student_temp=0.1,
        num_large_crops=2,
        center_momentum=0.9,
    ):
        super().__init__()
        self.epoch = 0
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.num_large_crops = num_large_crops
        self.register_buffer("center", torch.zeros(1, num_prototypes))
        # we apply a warm up for the teacher temperature because
        # a too high temperature makes the training unstable at the beginning
        self.teacher_temp_schedule = np.concatenate(
            (
                np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
                np.ones(num_epochs - warmup_teacher_temp_epochs) * teacher_temp,
            )
        )

    def forward(self, student_output, teacher_output):
        student_out = student_output / self.student_temp
        student_out = student_out.chunk(self.num_large_crops)

        # teacher centering and sharpening
        temp = self.teacher_temp_schedule[self.epoch]
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1)
        teacher_out = teacher_out.detach().chunk(2)

        total_loss = 0
        n_loss_terms = 0
        for iq, q in enumerate(teacher_out):
            for iv, v in enumerate(student_out):
                if iv == iq:
                    # we skip cases where student and teacher operate on the same view
                    continue
                loss = torch.sum(-q * F.log_softmax(v, dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        batch_center = batch_center / len(teacher_output)

        # ema update
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def supcon_fixtures(t):
    """SupCon: solo-learn's solo/methods/supcon.py calls simclr_loss_func on cat(z) with the
    class targets repeated per crop as the indexes (positives = same class, other rows)."""
    z1 = det_uniform("supcon.z1", (8, 8)).requires_grad_(True)
    z2 = det_uniform("supcon.z2", (8, 8)).requires_grad_(True)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2], dtype=torch.long)
    t["supcon.z1"], t["supcon.z2"] = z1.detach().clone(), z2.detach().clone()
    t["supcon.labels"] = labels.float()
    loss = simclr_loss_func(torch.cat([z1, z2]), indexes=labels.repeat(2), temperature=0.2)
    t["supcon.loss"] = loss.detach().reshape(1)
    loss.backward()
    t["supcon.dz1"], t["supcon.dz2"] = z1.grad.clone(), z2.grad.clone()


def mocov2_fixtures(t):
    """MoCo v2+ as solo/methods/mocov2plus.py training_step: queries and keys L2-normalised, the
    symmetric loss averaged, queue[1] (past view-2 keys) for q1, then the FIFO queue update."""
    z1 = det_uniform("mocov2.z1", (6, 8)).requires_grad_(True)
    z2 = det_uniform("mocov2.z2", (6, 8)).requires_grad_(True)
    k1 = det_uniform("mocov2.k1", (6, 8))
    k2 = det_uniform("mocov2.k2", (6, 8))
    queue = F.normalize(det_uniform("mocov2.queue", (2, 8, 18)), dim=1)
    t["mocov2.z1"], t["mocov2.z2"], t["mocov2.k1"], t["mocov2.k2"] = z1.detach().clone(), z2.detach().clone(), k1, k2
    t["mocov2.queue"] = queue.clone()
    q1, q2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    k1, k2 = F.normalize(k1, dim=-1), F.normalize(k2, dim=-1)
    temperature = 0.2
    q = queue.clone().detach()
    loss = (mocov2plus_loss_func(q1, k2, q[1], temperature) + mocov2plus_loss_func(q2, k1, q[0], temperature)) / 2
    t["mocov2.loss"] = loss.detach().reshape(1)
    loss.backward()
    t["mocov2.dz1"], t["mocov2.dz2"] = z1.grad.clone(), z2.grad.clone()
    queue_ptr = torch.tensor([12], dtype=torch.long)
    mocov2plus_dequeue_and_enqueue(queue, queue_ptr, torch.stack((k1, k2)))
    t["mocov2.queue_after"] = queue.clone()
    t["mocov2.ptr_after"] = queue_ptr.float()


def mocov3_fixtures(t):
    """MoCo v3 as solo/methods/mocov3.py training_step: the two directions summed (not averaged);
    each term already carries the factor 2 * temperature."""
    q1 = det_uniform("mocov3.q1", (6, 8)).requires_grad_(True)
    q2 = det_uniform("mocov3.q2", (6, 8)).requires_grad_(True)
    k1 = det_uniform("mocov3.k1", (6, 8))
    k2 = det_uniform("mocov3.k2", (6, 8))
    t["mocov3.q1"], t["mocov3.q2"], t["mocov3.k1"], t["mocov3.k2"] = q1.detach().clone(), q2.detach().clone(), k1, k2
    loss = mocov3_loss_func(q1, k2, temperature=0.2) + mocov3_loss_func(q2, k1, temperature=0.2)
    t["mocov3.loss"] = loss.detach().reshape(1)
    loss.backward()
    t["mocov3.dq1"], t["mocov3.dq2"] = q1.grad.clone(), q2.grad.clone()


def barlow_fixtures(t):
    """Barlow Twins with solo-learn's CIFAR settings (lamb 0.0051, scale_loss 0.1)."""
    z1 = det_uniform("barlow.z1", (8, 6)).requires_grad_(True)
    z2 = det_uniform("barlow.z2", (8, 6)).requires_grad_(True)
    t["barlow.z1"], t["barlow.z2"] = z1.detach().clone(), z2.detach().clone()
    loss = barlow_loss_func(z1, z2, lamb=0.0051, scale_loss=0.1)
    t["barlow.loss"] = loss.detach().reshape(1)
    loss.backward()
    t["barlow.dz1"], t["barlow.dz2"] = z1.grad.clone(), z2.grad.clone()


def vicreg_fixtures(t):
    """VICReg with solo-learn's CIFAR weights (25, 25, 1); the columns are scaled so that some
    stds are under 1 (hinge active) and some over (hinge inactive)."""
    cols = torch.tensor([0.3, 0.6, 1.0, 2.0, 3.0, 4.0])
    z1 = (det_uniform("vicreg.z1", (8, 6)) * cols).requires_grad_(True)
    z2 = (det_uniform("vicreg.z2", (8, 6)) * cols).requires_grad_(True)
    t["vicreg.z1"], t["vicreg.z2"] = z1.detach().clone(), z2.detach().clone()
    loss = vicreg_loss_func(z1, z2, sim_loss_weight=25.0, var_loss_weight=25.0, cov_loss_weight=1.0)
    t["vicreg.loss"] = loss.detach().reshape(1)
    loss.backward()
    t["vicreg.dz1"], t["vicreg.dz2"] = z1.grad.clone(), z2.grad.clone()


def swav_fixtures(t):
    """SwAV: Sinkhorn-Knopp assignments (3 iterations, epsilon 0.05) of the detached scores, and
    solo-learn's swav_loss_func at temperature 0.1. `swav.a1_queue` is what
    solo/methods/swav.py get_assignments gives view 1 once the queue is on: the queue's scores
    (prototypes applied to the stored projections of the same view) appended below the batch's,
    Sinkhorn over all rows, and the first batch-size rows kept."""
    p1 = det_uniform("swav.p1", (6, 10)).requires_grad_(True)
    p2 = det_uniform("swav.p2", (6, 10)).requires_grad_(True)
    qext = det_uniform("swav.qext", (4, 10))
    t["swav.p1"], t["swav.p2"], t["swav.qext"] = p1.detach().clone(), p2.detach().clone(), qext
    sk = SinkhornKnopp(num_iters=3, epsilon=0.05, world_size=1)
    a1, a2 = sk(p1.detach()), sk(p2.detach())
    t["swav.a1"], t["swav.a2"] = a1.clone(), a2.clone()
    t["swav.a1_queue"] = sk(torch.cat((p1.detach(), qext)))[:6].clone()
    loss = swav_loss_func([p1, p2], [a1, a2], temperature=0.1)
    t["swav.loss"] = loss.detach().reshape(1)
    loss.backward()
    t["swav.dp1"], t["swav.dp2"] = p1.grad.clone(), p2.grad.clone()


def dino_fixtures(t):
    """DINO: solo-learn's DINOLoss at epoch 1 (teacher temperature 0.055 of the schedule
    linspace(0.04, 0.07, 3) then 0.07), with a 6-row small crop after the two large ones.
    solo-learn's loss cuts the student into `num_large_crops` chunks, so it is built here with 3
    (the total crop count; with the default 2 the 18 student rows would split 9/9 and the loss
    would fail to broadcast against the 6-row teacher chunks)."""
    s = det_uniform("dino.s", (18, 10)).requires_grad_(True)
    teacher = det_uniform("dino.t", (12, 10))
    center0 = det_uniform("dino.center0", (1, 10), 0.5)
    t["dino.s"], t["dino.t"], t["dino.center0"] = s.detach().clone(), teacher, center0
    loss_fn = DINOLoss(
        num_prototypes=10,
        warmup_teacher_temp=0.04,
        teacher_temp=0.07,
        warmup_teacher_temp_epochs=3,
        num_epochs=5,
        student_temp=0.1,
        num_large_crops=3,
        center_momentum=0.9,
    )
    loss_fn.center = center0.clone()
    loss_fn.epoch = 1  # solo-learn's DINO.on_train_epoch_start sets it to current_epoch
    t["dino.temp"] = torch.tensor([loss_fn.teacher_temp_schedule[loss_fn.epoch]], dtype=torch.float32)
    loss = loss_fn(s, teacher)
    assert loss.dtype == torch.float32
    t["dino.loss"] = loss.detach().reshape(1)
    loss.backward()
    t["dino.ds"] = s.grad.clone()
    t["dino.center1"] = loss_fn.center.detach().clone()


def loss_fixtures():
    """The self-supervised losses (losses.safetensors): F.normalize, SimCLR's NT-Xent, BYOL,
    SupCon, MoCo v2+ (with its queue update), MoCo v3, Barlow Twins, VICReg, SwAV and DINO."""
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
    supcon_fixtures(t)
    mocov2_fixtures(t)
    mocov3_fixtures(t)
    barlow_fixtures(t)
    vicreg_fixtures(t)
    swav_fixtures(t)
    dino_fixtures(t)
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


ADAMW_PARAMS = [("fc1.weight", (5, 6)), ("fc1.bias", (5,)), ("fc2.weight", (3, 5)), ("late.weight", (4, 3))]
ADAMW_LRS = [0.1, 0.05, 0.02, 0.01, 0.005]
ADAMW_NO_GRAD = {(0, "late.weight"), (2, "late.weight")}  # (step, parameter) pairs without a gradient


def adamw_fixtures():
    """Five steps of torch.optim.AdamW in float64 (adamw.safetensors): betas (0.9, 0.95), weight
    decay 0.05, eps 1e-8, on fixed parameters and given gradients, the learning rate changing
    every step. "late.weight" has no gradient at steps 0 and 2, so torch skips it there and its
    step count (the bias corrections' exponent) trails the others'. Stored after every step:
    `adamw.step<s>.<name>` (the parameter), `.exp_avg.` and `.exp_avg_sq.` (its moments)."""
    t = {}
    for name, shape in ADAMW_PARAMS:
        t["init." + name] = det_uniform("adamw.p." + name, shape, 0.5).double()
        for step in range(len(ADAMW_LRS)):
            if (step, name) not in ADAMW_NO_GRAD:
                t[f"grad{step}.{name}"] = det_uniform(f"adamw.g{step}." + name, shape, 0.1).double()
    ps = [t["init." + name].clone().requires_grad_(True) for name, _ in ADAMW_PARAMS]
    opt = torch.optim.AdamW(ps, lr=ADAMW_LRS[0], betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
    for step, lr in enumerate(ADAMW_LRS):
        for g in opt.param_groups:
            g["lr"] = lr
        for p, (name, _) in zip(ps, ADAMW_PARAMS):
            key = f"grad{step}.{name}"
            p.grad = t[key].clone() if key in t else None
        opt.step()
        for p, (name, _) in zip(ps, ADAMW_PARAMS):
            t[f"adamw.step{step}.{name}"] = p.detach().clone()
            st = opt.state.get(p, {})
            if st:
                t[f"adamw.step{step}.exp_avg.{name}"] = st["exp_avg"].clone()
                t[f"adamw.step{step}.exp_avg_sq.{name}"] = st["exp_avg_sq"].clone()
                t[f"adamw.step{step}.count.{name}"] = torch.tensor([float(st["step"])], dtype=torch.float64)
    assert all(v.dtype == torch.float64 for v in t.values())
    save_file(t, os.path.join(OUT, "adamw.safetensors"))


def nnclr_loss_func(nn, p, temperature=0.1):
    """solo-learn's solo/losses/nnclr.py, verbatim."""
    nn = F.normalize(nn, dim=-1)
    p = F.normalize(p, dim=-1)
    logits = nn @ p.T / temperature
    n = p.size(0)
    labels = torch.arange(n, device=p.device)
    loss = F.cross_entropy(logits, labels)
    return loss


def nnclr_find_nn(queue, z):
    """solo-learn's solo/methods/nnclr.py NNCLR.find_nn, verbatim but for `self.`."""
    idx = (z @ queue.T).max(dim=1)[1]
    nn = queue[idx]
    return idx, nn


def nnclr_dequeue_and_enqueue(queue, queue_ptr, z):
    """solo-learn's NNCLR.dequeue_and_enqueue without the labels (world size 1)."""
    batch_size = z.shape[0]
    ptr = int(queue_ptr)
    assert queue.shape[0] % batch_size == 0
    queue[ptr : ptr + batch_size, :] = z
    queue_ptr[0] = (ptr + batch_size) % queue.shape[0]


def nnclr_fixtures():
    """NNCLR's loss in float64 (nnclr.safetensors), as solo/methods/nnclr.py training_step: the
    projections z normalised, each one's nearest neighbour in a fixed queue of 18 unit rows
    (indices `idx1`, `idx2`), the loss (l(nn1, p2) + l(nn2, p1)) / 2 at temperature 0.2 with its
    gradients for p1 and p2, then normalised z1 enqueued at position 12 (`queue_after`, pointer
    `ptr_after`)."""
    t = {}
    z1 = det_uniform("nnclr.z1", (6, 8)).double()
    z2 = det_uniform("nnclr.z2", (6, 8)).double()
    p1 = det_uniform("nnclr.p1", (6, 8)).double().requires_grad_(True)
    p2 = det_uniform("nnclr.p2", (6, 8)).double().requires_grad_(True)
    queue = F.normalize(det_uniform("nnclr.queue", (18, 8)).double(), dim=1)
    t["nnclr.z1"], t["nnclr.z2"], t["nnclr.p1"], t["nnclr.p2"] = z1, z2, p1.detach().clone(), p2.detach().clone()
    t["nnclr.queue"] = queue.clone()
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    idx1, nn1 = nnclr_find_nn(queue, z1)
    idx2, nn2 = nnclr_find_nn(queue, z2)
    for z in (z1, z2):  # every nearest neighbour is clear of the runner-up
        top2 = (z @ queue.T).topk(2, dim=1).values
        assert (top2[:, 0] - top2[:, 1]).min() > 1e-3
    t["nnclr.idx1"], t["nnclr.idx2"] = idx1.double(), idx2.double()
    loss = nnclr_loss_func(nn1, p2, temperature=0.2) / 2 + nnclr_loss_func(nn2, p1, temperature=0.2) / 2
    t["nnclr.loss"] = loss.detach().reshape(1)
    loss.backward()
    t["nnclr.dp1"], t["nnclr.dp2"] = p1.grad.clone(), p2.grad.clone()
    queue_ptr = torch.tensor([12], dtype=torch.long)
    nnclr_dequeue_and_enqueue(queue, queue_ptr, z1)
    t["nnclr.queue_after"] = queue.clone()
    t["nnclr.ptr_after"] = queue_ptr.double()
    assert all(v.dtype == torch.float64 for v in t.values())
    save_file(t, os.path.join(OUT, "nnclr.safetensors"))


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


def efficientnet_fixtures():
    """torchvision's EfficientNet-B0 as a backbone (classifier removed: pooled 1280 features),
    forward + backward in train mode on four 64x64 images (efficientnet.safetensors; the last
    stage runs at 2x2). Stochastic depth is set to 0 on both sides: its masks are random."""
    import torchvision

    torch.set_num_threads(2)
    t = {}
    m = torchvision.models.efficientnet_b0()
    m.classifier = nn.Identity()
    for mod in m.modules():
        if isinstance(mod, torchvision.ops.StochasticDepth):
            mod.p = 0.0
    model_fixture(t, "efficientnet_b0", m, det_uniform("efficientnet_b0.input", (4, 3, 64, 64)))
    save_file(t, os.path.join(OUT, "efficientnet.safetensors"))
    print("efficientnet.safetensors", os.path.getsize(os.path.join(OUT, "efficientnet.safetensors")) // 1024, "KiB")


def pit_fixtures():
    """timm's PiT-Ti (base dims 32, heads 2/4/8, depth 2/6/4) at 32x32 with patch 4, stride 2
    (a 15x15 grid, pooled to 8x8 and 4x4) as a backbone (no head: the normed class token),
    forward + backward (pit.safetensors)."""
    from timm.models.pit import PoolingVisionTransformer

    torch.set_num_threads(2)
    t = {}
    m = PoolingVisionTransformer(img_size=32, patch_size=4, stride=2, base_dims=[32, 32, 32], depth=[2, 6, 4], heads=[2, 4, 8],
                                 mlp_ratio=4, num_classes=0)
    model_fixture(t, "pit_ti", m, det_uniform("pit_ti.input", (2, 3, 32, 32)))
    save_file(t, os.path.join(OUT, "pit.safetensors"))
    print("pit.safetensors", os.path.getsize(os.path.join(OUT, "pit.safetensors")) // 1024, "KiB")


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
    """State-dict keys and shapes of torchvision's ResNet-18 (CIFAR stem, no fc), EfficientNet-B0
    (no classifier), timm's ViT-tiny (no head) and PiT-Ti at 32x32 (patch 4, stride 2, no head): what an exported backbone must match for load_state_dict(strict=True)."""
    import json

    import timm

    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3, num_classes=0
    )
    import torchvision

    from timm.models.pit import PoolingVisionTransformer

    pit = PoolingVisionTransformer(img_size=32, patch_size=4, stride=2, base_dims=[32, 32, 32], depth=[2, 6, 4], heads=[2, 4, 8],
                                   mlp_ratio=4, num_classes=0)
    effnet = torchvision.models.efficientnet_b0()
    effnet.classifier = nn.Identity()
    keys = {
        "resnet18-cifar": {k: list(v.shape) for k, v in resnet18_cifar(None).state_dict().items()},
        "vit-tiny": {k: list(v.shape) for k, v in vit.state_dict().items()},
        "efficientnet-b0": {k: list(v.shape) for k, v in effnet.state_dict().items()},
        "pit-ti": {k: list(v.shape) for k, v in pit.state_dict().items()},
    }
    with open(os.path.join(OUT, "state_dict_keys.json"), "w") as f:
        json.dump(keys, f, indent=0, sort_keys=True)


# ---- Five training steps of every method (methods.safetensors) -----------------------------
# The modules mirror src/ssl/*.rs parameter for parameter (names included), so set_det_weights
# gives both sides the same weights. Everything trains in train mode (batch statistics in every
# BN, the momentum networks' too), with torch.optim.SGD(lr 0.05, momentum 0.9, wd 1e-4).

STEPS = 5
STEP_BATCH = 8


def ssl_head(in_dim, specs):
    """src/ssl/heads.rs's Head as an nn.Sequential: per (out, bias, bn, act) a Linear, then
    BatchNorm1d(affine=bn) unless bn is None, then the activation ("relu", "gelu") if any; the
    indices count every module (Linear 0, BN 1, ReLU 2, Linear 3, ...)."""
    layers = []
    for out, bias, bn, act in specs:
        layers.append(nn.Linear(in_dim, out, bias=bias))
        if bn is not None:
            layers.append(nn.BatchNorm1d(out, affine=bn))
        if act == "relu":
            layers.append(nn.ReLU())
        elif act == "gelu":
            layers.append(nn.GELU())
        in_dim = out
    return nn.Sequential(*layers)


def two_layer(hidden, out, bn=True, out_bn=None):
    """Linear(bias) [-> BN] -> ReLU -> Linear(bias) [-> BN(affine=out_bn)]."""
    return [(hidden, True, True if bn else None, "relu"), (out, True, out_bn, None)]


def expander(hidden, out):
    """barlow.rs's expander (Barlow Twins, VICReg): two Linear-BN-ReLU, then a Linear."""
    return [(hidden, True, True, "relu"), (hidden, True, True, "relu"), (out, True, None, None)]


class DinoHeadRef(nn.Module):
    """dino.rs's DinoHead: mlp (Linear-GELU, Linear-GELU, Linear), F.normalize, then the
    prototypes F.normalize(last_layer.weight, dim=1) (weight_norm with g fixed at 1), no bias."""

    def __init__(self, in_dim, hidden, bottleneck, num_prototypes):
        super().__init__()
        self.mlp = ssl_head(in_dim, [(hidden, True, None, "gelu"), (hidden, True, None, "gelu"), (bottleneck, True, None, None)])
        self.last_layer = nn.Linear(bottleneck, num_prototypes, bias=False)

    def forward(self, x):
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_layer.weight, dim=1))


class StepMethod:
    """One method for method_step_fixtures: `net` holds every parameter and buffer under the
    engine's names; `loss(views, step)` is the training-step loss; `after_step(step)` the
    updates after the optimiser step (EMA, queues, DINO's centre)."""

    base_tau = final_tau = None

    def __init__(self, net, dtype):
        self.net, self.dtype = net, dtype
        set_det_weights(net)
        params = dict(net.named_parameters())
        # solo-learn's initialize_momentum_params: parameters only, not buffers.
        self.pairs = [(params[n[len("momentum_"):]], p) for n, p in params.items() if n.startswith("momentum_")]
        with torch.no_grad():
            for online, mom in self.pairs:
                mom.copy_(online)
                mom.requires_grad_(False)
        if self.pairs:
            self.updater = MomentumUpdater(self.base_tau, self.final_tau)
        net.to(dtype).train()

    def trainable(self):
        return [p for p in self.net.parameters() if p.requires_grad]

    def momentum_forward(self, x, backbone="momentum_backbone", head="momentum_projector"):
        with torch.no_grad():
            out = getattr(self.net, head)(getattr(self.net, backbone)(x))
        assert not out.requires_grad
        return out

    def after_backward(self, step):
        """Between backward and the optimiser step (solo-learn's on_after_backward)."""

    def after_step(self, step):
        if self.pairs:
            # solo-learn: update with the current tau, the tau of this step (tau_at(step)).
            self.updater.update_tau(step, STEPS)
            self.updater.update([o for o, _ in self.pairs], [m for _, m in self.pairs])


def _net(**modules):
    net = nn.Module()
    for k, v in modules.items():
        setattr(net, k, v)
    return net


class SimSiamRef(StepMethod):
    def __init__(self, dtype):
        proj = [(32, False, True, "relu"), (32, False, False, None)]  # proj_layers 2, last BN without affine
        pred = [(8, False, True, "relu"), (32, True, None, None)]
        super().__init__(_net(backbone=resnet18_cifar(None), projector=ssl_head(512, proj), predictor=ssl_head(32, pred)), dtype)

    def loss(self, views, step):
        n = self.net
        z = [n.projector(n.backbone(x)) for x in views]
        p = [n.predictor(zi) for zi in z]

        def d(p, z):
            return -(F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(dim=1).mean()

        return d(p[0], z[1]) / 2 + d(p[1], z[0]) / 2


class SimClrRef(StepMethod):
    def __init__(self, dtype):
        super().__init__(_net(backbone=resnet18_cifar(None), projector=ssl_head(512, two_layer(32, 16))), dtype)

    def project(self, views):
        return torch.cat([self.net.projector(self.net.backbone(x)) for x in views])

    def loss(self, views, step):
        return simclr_loss_func(self.project(views), torch.arange(STEP_BATCH).repeat(2), 0.2)


def supcon_step_labels(step):
    return torch.tensor([(3 * i + step) % 4 for i in range(STEP_BATCH)], dtype=torch.long)


class SupConRef(SimClrRef):
    def loss(self, views, step):
        return simclr_loss_func(self.project(views), supcon_step_labels(step).repeat(2), 0.2)


class ByolRef(StepMethod):
    base_tau, final_tau = 0.99, 1.0

    def __init__(self, dtype):
        super().__init__(_net(
            backbone=resnet18_cifar(None),
            projector=ssl_head(512, two_layer(32, 16)),
            predictor=ssl_head(16, two_layer(32, 16)),
            momentum_backbone=resnet18_cifar(None),
            momentum_projector=ssl_head(512, two_layer(32, 16)),
        ), dtype)

    def loss(self, views, step):
        n = self.net
        p = [n.predictor(n.projector(n.backbone(x))) for x in views]
        zm = [self.momentum_forward(x) for x in views]
        return byol_loss_func(p[0], zm[1]) + byol_loss_func(p[1], zm[0])


class SwavRef(StepMethod):
    def __init__(self, dtype):
        super().__init__(_net(
            backbone=resnet18_cifar(None),
            projector=ssl_head(512, two_layer(32, 16)),
            prototypes=nn.Linear(16, 20, bias=False),
        ), dtype)
        # epsilon and temperature exact in float32 (the engine's hyperparameters are float32):
        # Sinkhorn's exp(p / epsilon) turns a 1e-8 difference in epsilon into 1e-3 in the
        # fourth step's loss.
        self.sk = SinkhornKnopp(num_iters=3, epsilon=0.0625, world_size=1)
        # queue_size 16 per large crop, zeros at the start, in use from the first step.
        self.queue = torch.zeros(2, 16, 16, dtype=dtype)
        self.ptr = 0
        self.pending = None

    def loss(self, views, step):
        n = self.net
        protos = F.normalize(n.prototypes.weight, dim=1)
        z = [F.normalize(n.projector(n.backbone(x)), dim=1) for x in views]
        preds = [F.linear(zi, protos) for zi in z]
        with torch.no_grad():  # solo-learn's get_assignments, the queue's scores under the batch's
            assignments = []
            for i, p in enumerate(preds):
                p = torch.cat((p.detach(), F.linear(self.queue[i], protos.detach())))
                assignments.append(self.sk(p)[:STEP_BATCH])
        self.pending = torch.stack([zi.detach() for zi in z])
        return swav_loss_func(preds, assignments, temperature=0.125)

    def after_step(self, step):
        # A ring buffer as queue.rs (solo-learn shifts rows instead: the same set of rows, and
        # Sinkhorn does not depend on their order).
        self.queue[:, self.ptr : self.ptr + STEP_BATCH] = self.pending
        self.ptr = (self.ptr + STEP_BATCH) % self.queue.shape[1]


def mocov2plus_initial_queues():
    """The two initial queues [16, 16] (row = one key), F.normalize'd in float32."""
    return [F.normalize(det_uniform(f"mocov2plus.queue{v}", (16, 16)), dim=1) for v in (1, 2)]


class MocoV2PlusRef(StepMethod):
    base_tau, final_tau = 0.99, 0.999

    def __init__(self, dtype):
        mlp = two_layer(32, 16, bn=False)  # Linear-ReLU-Linear: projector.0, projector.2
        super().__init__(_net(
            backbone=resnet18_cifar(None),
            projector=ssl_head(512, mlp),
            momentum_backbone=resnet18_cifar(None),
            momentum_projector=ssl_head(512, mlp),
        ), dtype)
        self.queue = torch.stack(mocov2plus_initial_queues()).to(dtype)  # [2, K, d]
        self.ptr = 0
        self.pending = None

    def loss(self, views, step):
        n = self.net
        q = [F.normalize(n.projector(n.backbone(x)), dim=-1) for x in views]
        k = [F.normalize(self.momentum_forward(x), dim=-1) for x in views]
        queue = self.queue.clone().detach()
        # solo-learn's queue is [2, d, K]: queue[1] (view 2's keys) for q1, queue[0] for q2.
        loss = (mocov2plus_loss_func(q[0], k[1], queue[1].t(), 0.2) + mocov2plus_loss_func(q[1], k[0], queue[0].t(), 0.2)) / 2
        self.pending = torch.stack(k)
        return loss

    def after_step(self, step):
        self.queue[:, self.ptr : self.ptr + STEP_BATCH] = self.pending
        self.ptr = (self.ptr + STEP_BATCH) % self.queue.shape[1]
        super().after_step(step)


class MocoV3Ref(StepMethod):
    base_tau, final_tau = 0.99, 1.0

    def __init__(self, dtype):
        proj = two_layer(32, 16, out_bn=False)  # Linear-BN-ReLU-Linear-BN(no affine)
        super().__init__(_net(
            backbone=resnet18_cifar(None),
            projector=ssl_head(512, proj),
            predictor=ssl_head(16, two_layer(32, 16)),
            momentum_backbone=resnet18_cifar(None),
            momentum_projector=ssl_head(512, proj),
        ), dtype)

    def loss(self, views, step):
        n = self.net
        q = [n.predictor(n.projector(n.backbone(x))) for x in views]
        k = [self.momentum_forward(x) for x in views]
        return mocov3_loss_func(q[0], k[1], temperature=0.2) + mocov3_loss_func(q[1], k[0], temperature=0.2)


# DINO's clip_grad in the step fixture: some backbone gradients above it, some below.
DINO_CLIP = 0.05


class DinoRef(StepMethod):
    base_tau, final_tau = 0.99, 1.0

    def __init__(self, dtype):
        super().__init__(_net(
            backbone=resnet18_cifar(None),
            head=DinoHeadRef(512, 32, 16, 24),
            momentum_backbone=resnet18_cifar(None),
            momentum_head=DinoHeadRef(512, 32, 16, 24),
        ), dtype)
        # Teacher temperature 0.07 from the start (no warm-up epochs); the centre starts at 0.
        self.loss_fn = DINOLoss(num_prototypes=24, warmup_teacher_temp=0.07, teacher_temp=0.07, warmup_teacher_temp_epochs=0,
                                num_epochs=1, student_temp=0.1, num_large_crops=2, center_momentum=0.9).to(dtype)

    def loss(self, views, step):
        n = self.net
        student = torch.cat([n.head(n.backbone(x)) for x in views])
        teacher = torch.cat([self.momentum_forward(x, head="momentum_head") for x in views])
        # DINOLoss moves its centre inside forward, from this step's teacher outputs; the centre
        # is only read by the next step's loss, so this equals updating it after the step.
        return self.loss_fn(student, teacher)

    def after_backward(self, step):
        # solo-learn's DINO.clip_gradients over the student backbone ("encoder"), verbatim.
        clipped = 0
        for p in self.net.backbone.parameters():
            if p.grad is not None:
                param_norm = p.grad.data.norm(2)
                clip_coef = DINO_CLIP / (param_norm + 1e-6)
                if clip_coef < 1:
                    p.grad.data.mul_(clip_coef)
                    clipped += 1
        # The threshold is chosen so that both branches run.
        assert 0 < clipped < len(list(self.net.backbone.parameters())), clipped


class BarlowRef(StepMethod):
    def __init__(self, dtype):
        super().__init__(_net(backbone=resnet18_cifar(None), projector=ssl_head(512, expander(32, 32))), dtype)

    def loss(self, views, step):
        z = [self.net.projector(self.net.backbone(x)) for x in views]
        return barlow_loss_func(z[0], z[1], lamb=0.0051, scale_loss=0.1)


class VicregRef(BarlowRef):
    def loss(self, views, step):
        z = [self.net.projector(self.net.backbone(x)) for x in views]
        return vicreg_loss_func(z[0], z[1], sim_loss_weight=25.0, var_loss_weight=25.0, cov_loss_weight=1.0)


def nnclr_initial_queue():
    """NNCLR's initial support queue [16, 16] (row = one normalised projection), in float32."""
    return F.normalize(det_uniform("nnclr.queue", (16, 16)), dim=1)


class NnclrRef(StepMethod):
    """solo-learn's NNCLR training_step with the support queue a ring buffer of 16 rows (written
    after the step with the normalised first-view projections; solo-learn writes it inside the
    step, after the loss: the same values)."""

    def __init__(self, dtype):
        proj = [(32, True, True, "relu"), (32, True, True, "relu"), (16, True, True, None)]
        pred = [(32, True, True, "relu"), (16, True, None, None)]
        super().__init__(_net(backbone=resnet18_cifar(None), projector=ssl_head(512, proj), predictor=ssl_head(16, pred)), dtype)
        self.queue = nnclr_initial_queue().to(dtype)
        self.ptr = 0
        self.pending = None

    def loss(self, views, step):
        n = self.net
        z = [n.projector(n.backbone(x)) for x in views]
        p = [n.predictor(zi) for zi in z]
        z = [F.normalize(zi, dim=-1) for zi in z]
        with torch.no_grad():
            _, nn1 = nnclr_find_nn(self.queue, z[0])
            _, nn2 = nnclr_find_nn(self.queue, z[1])
        self.pending = z[0].detach()
        return nnclr_loss_func(nn1, p[1], temperature=0.2) / 2 + nnclr_loss_func(nn2, p[0], temperature=0.2) / 2

    def after_step(self, step):
        self.queue[self.ptr : self.ptr + STEP_BATCH] = self.pending
        self.ptr = (self.ptr + STEP_BATCH) % self.queue.shape[0]


STEP_METHODS = {
    "simsiam": SimSiamRef,
    "simclr": SimClrRef,
    "supcon": SupConRef,
    "byol": ByolRef,
    "swav": SwavRef,
    "mocov2plus": MocoV2PlusRef,
    "mocov3": MocoV3Ref,
    "dino": DinoRef,
    "barlow": BarlowRef,
    "vicreg": VicregRef,
    "nnclr": NnclrRef,
}


def method_step_losses(make, dtype):
    """The five losses of one method's five training steps in `dtype`."""
    old_default = torch.get_default_dtype()
    # barlow_loss_func builds its BatchNorm1d in the default dtype: float64 in the float64 run.
    torch.set_default_dtype(dtype)
    try:
        m = make(dtype)
        opt = torch.optim.SGD(m.trainable(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        x1 = det_uniform("steps.x1", (STEPS, STEP_BATCH, 3, 16, 16))
        x2 = det_uniform("steps.x2", (STEPS, STEP_BATCH, 3, 16, 16))
        losses = []
        for step in range(STEPS):
            loss = m.loss([x1[step].to(dtype), x2[step].to(dtype)], step)
            assert loss.dtype == dtype and loss.numel() == 1
            losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            m.after_backward(step)
            for _, mom in getattr(m, "pairs", []):
                assert mom.grad is None  # the momentum networks take no gradient
            assert all(p.grad is not None for p in m.trainable())
            opt.step()
            m.after_step(step)
        if m.pairs:  # the EMA really moved the momentum networks, and they trail the online ones
            diff = max((o - mm).abs().max().item() for o, mm in m.pairs)
            assert diff > 0, "momentum network equals the online one"
        return losses
    finally:
        torch.set_default_dtype(old_default)


def method_step_fixtures(only=()):
    """Five training steps of every method on ResNet-18 (CIFAR stem) with small heads
    (methods.safetensors): `<method>.losses` the float64 trace (the reference), `<method>.losses_f32`
    the float32 one. Views x1, x2 = det_uniform("steps.x{1,2}", (5, 8, 3, 16, 16))[step], each
    through the network on its own. The EMA uses tau_at(step, 5) after step `step`; SwAV's and
    MoCo v2+'s queues are ring buffers of 16 rows per view written after the step.
    Also stored: `supcon.labels` [5, 8] (per step, (3 i + step) % 4), MoCo v2+'s initial
    queues `mocov2plus.queue{1,2}` [16, 16] and NNCLR's `nnclr.queue` [16, 16] (float32, rows
    normalised; the float64 run casts). With `only`, just those methods are run and their
    entries replace theirs in the existing file (the others' stay as they are)."""
    torch.set_num_threads(2)
    path = os.path.join(OUT, "methods.safetensors")
    t = {}
    if only:
        from safetensors.torch import load_file

        t = {k: v for k, v in load_file(path).items() if k.split(".")[0] not in only}
    for name, make in STEP_METHODS.items():
        if only and name not in only:
            continue
        for dtype, key in ((torch.float64, "losses"), (torch.float32, "losses_f32")):
            losses = method_step_losses(make, dtype)
            assert all(math.isfinite(v) for v in losses), (name, losses)
            assert len(set(losses)) == STEPS, (name, losses)
            t[f"{name}.{key}"] = torch.tensor(losses, dtype=torch.float64)
        print(name, " ".join(f"{v:.10f}" for v in t[f"{name}.losses"].tolist()),
              f"(f32 max diff {(t[name + '.losses'] - t[name + '.losses_f32']).abs().max().item():.2e})")
    t["supcon.labels"] = torch.stack([supcon_step_labels(s) for s in range(STEPS)]).float()
    t["mocov2plus.queue1"], t["mocov2plus.queue2"] = mocov2plus_initial_queues()
    t["nnclr.queue"] = nnclr_initial_queue()
    save_file(t, os.path.join(OUT, "methods.safetensors"))
    print("methods.safetensors", os.path.getsize(os.path.join(OUT, "methods.safetensors")), "bytes")


if __name__ == "__main__":
    import sys

    torch.manual_seed(0)
    if sys.argv[1:] == ["methods"]:  # only methods.safetensors
        method_step_fixtures()
        sys.exit(0)
    if sys.argv[1:2] == ["methods"]:  # `methods nnclr ...`: only those methods' entries, merged
        method_step_fixtures(only=tuple(sys.argv[2:]))
        sys.exit(0)
    if sys.argv[1:] == ["efficientnet"]:  # only efficientnet.safetensors
        efficientnet_fixtures()
        sys.exit(0)
    if sys.argv[1:] == ["pit"]:  # only pit.safetensors
        pit_fixtures()
        sys.exit(0)
    if sys.argv[1:] == ["adamw"]:  # only adamw.safetensors
        adamw_fixtures()
        sys.exit(0)
    if sys.argv[1:] == ["nnclr"]:  # only nnclr.safetensors
        nnclr_fixtures()
        sys.exit(0)
    loss_fixtures()
    optim_fixtures()
    adamw_fixtures()
    nnclr_fixtures()
    if sys.argv[1:] == ["losses"]:  # only the losses' and the optimisers' fixtures
        sys.exit(0)
    key_fixtures()
    metric_fixtures()
    layer_fixtures()
    model_fixtures()
    efficientnet_fixtures()
    pit_fixtures()
    method_step_fixtures()
    for f in ("metrics.safetensors", "layers.safetensors", "models.safetensors"):
        print(f, os.path.getsize(os.path.join(OUT, f)) // 1024, "KiB")
