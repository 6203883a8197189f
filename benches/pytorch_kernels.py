"""The PyTorch twin of `ssl-engine bench kernels`: the same kernels on the same shapes, with the
same names and the same work counts (FLOPs or bytes), so the two outputs compare line by line.

    python3 benches/pytorch_kernels.py --batch 512            # exact FP32 (TF32 off), like the default cuda backend
    python3 benches/pytorch_kernels.py --batch 512 --tf32     # TF32 tensor cores, like SSL_ENGINE_TF32=1
    python3 benches/pytorch_kernels.py --batch 512 --bf16     # every tensor bf16 (cuBLAS / cuDNN bf16), beside --precision bf16

With --bf16 the GB/s column still counts 4 bytes per element (our tensors stay FP32 in memory
under --precision bf16): compare the times, not that column.

Runs on the GPU when there is one (else on the CPU, for a smoke test). Convolutions and batch
norm use channels-last tensors (our layout); conv backward passes are timed separately through
torch.nn.grad (cuDNN's backward-data and backward-weight); other backward passes through
autograd.grad on a kept graph. Times are medians of --runs after warm-up, measured with CUDA
events around each call.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def timer(dev):
    if dev.type == "cuda":
        def run(f, warmup, runs):
            for _ in range(warmup):
                f()
            torch.cuda.synchronize()
            ts = []
            for _ in range(runs):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                f()
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b) / 1e3)
            return statistics.median(ts)
    else:
        def run(f, warmup, runs):
            for _ in range(warmup):
                f()
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
            return statistics.median(ts)
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--filter", default=None, help="only kernels whose name contains this text")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 tensor cores in matmul and cuDNN")
    ap.add_argument("--bf16", action="store_true", help="every tensor in bfloat16 (the yardstick for --precision bf16)")
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(f"backend: pytorch {torch.__version__} on {name}, tf32 {'on' if a.tf32 else 'off'}, {'bf16' if a.bf16 else 'fp32'} tensors")
    run = timer(dev)
    gen = torch.Generator(device=dev).manual_seed(2)

    def rand(*shape, cl=False):
        t = (torch.rand(*shape, device=dev, generator=gen) * 2 - 1).to(torch.bfloat16 if a.bf16 else torch.float32)
        return t.contiguous(memory_format=torch.channels_last) if cl else t

    def push(label, work, f):
        if a.filter and a.filter not in label:
            return
        s = run(f, a.warmup, a.runs)
        kind, amount = work
        rate = f"{amount / s / 1e12:8.2f} TFLOP/s" if kind == "flops" else f"{amount / s / 1e9:8.1f} GB/s"
        print(f"{label:<42} {s * 1e3:>10.3f} ms  {rate}", flush=True)

    n = a.batch
    # GEMM: square ones and ViT-tiny's qkv / MLP projections over batch x 65 tokens.
    for m, k, nn in [(1024, 1024, 1024), (4096, 4096, 4096), (n * 65, 192, 576), (n * 65, 192, 768), (n * 65, 768, 192)]:
        x, w = rand(m, k), rand(nn, k)
        push(f"matmul {m}x{k} . ({nn}x{k})^T", ("flops", 2.0 * m * k * nn), lambda x=x, w=w: x @ w.t())
    # Every distinct convolution of ResNet-18 CIFAR: (h, c_in, c_out, k, stride), padding k // 2.
    for h, ci, co, k, s in [(32, 3, 64, 3, 1), (32, 64, 64, 3, 1), (32, 64, 128, 3, 2), (16, 128, 128, 3, 1), (32, 64, 128, 1, 2),
                            (16, 128, 256, 3, 2), (8, 256, 256, 3, 1), (8, 256, 512, 3, 2), (4, 512, 512, 3, 1)]:
        x = rand(n, ci, h, h, cl=True)
        w = rand(co, ci, k, k, cl=True)
        p = k // 2
        oh = (h + 2 * p - k) // s + 1
        dy = rand(n, co, oh, oh, cl=True)
        flops = 2.0 * n * oh * oh * co * ci * k * k
        tag = f"{h}x{h} {ci}->{co} k{k} s{s}"
        push(f"conv fwd {tag}", ("flops", flops), lambda x=x, w=w, s=s, p=p: F.conv2d(x, w, stride=s, padding=p))
        push(f"conv bwd-data {tag}", ("flops", flops),
             lambda x=x, w=w, dy=dy, s=s, p=p: torch.nn.grad.conv2d_input(x.shape, w, dy, stride=s, padding=p))
        push(f"conv bwd-weight {tag}", ("flops", flops),
             lambda x=x, w=w, dy=dy, s=s, p=p: torch.nn.grad.conv2d_weight(x, w.shape, dy, stride=s, padding=p))
    # Batch norm on the largest ResNet activation, forward and backward; relu and add on it.
    x = rand(n, 64, 32, 32, cl=True)
    g, b = rand(64), rand(64)
    nbytes = x.numel() * 4 * 2
    push("batchnorm fwd 32x32x64", ("bytes", nbytes), lambda: F.batch_norm(x, None, None, g, b, training=True))
    xr, gr, br = x.clone().requires_grad_(), g.clone().requires_grad_(), b.clone().requires_grad_()
    y = F.batch_norm(xr, None, None, gr, br, training=True)
    push("batchnorm bwd 32x32x64", ("bytes", nbytes * 1.5), lambda: torch.autograd.grad(y, (xr, gr, br), x, retain_graph=True))
    push("relu fwd 32x32x64", ("bytes", nbytes), lambda: torch.relu(x))
    push("add 32x32x64", ("bytes", nbytes * 1.5), lambda: x + x)
    # ViT-tiny: layer norm, GELU; attention for ViT-tiny (3 heads) and ViT-small (6 heads) of 64, 65 tokens.
    x = rand(n * 65, 192)
    g, b = rand(192), rand(192)
    push("layernorm fwd 65x192", ("bytes", x.numel() * 8), lambda: F.layer_norm(x, (192,), g, b, 1e-6))
    h = rand(n * 65, 768)
    push("gelu fwd 65x768", ("bytes", h.numel() * 8), lambda: F.gelu(h))
    for heads in [3, 6]:
        q, k, v = rand(n, heads, 65, 64), rand(n, heads, 65, 64), rand(n, heads, 65, 64)
        flops = 4.0 * n * heads * 65 * 65 * 64
        push(f"attention fwd {heads}x65x64", ("flops", flops), lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, scale=0.125))
        qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
        o = F.scaled_dot_product_attention(qr, kr, vr, scale=0.125)
        push(f"attention bwd {heads}x65x64", ("flops", 2.5 * flops),
             lambda o=o, qr=qr, kr=kr, vr=vr: torch.autograd.grad(o, (qr, kr, vr), o.detach(), retain_graph=True))
    # SimSiam's loss on [2 x batch, 2048] (stop-gradient on z) and an 11.2M-parameter SGD step.
    p, z = rand(2 * n, 2048), rand(2 * n, 2048)

    def cosine(p, z):
        return -(F.normalize(p, dim=1, eps=1e-12) * F.normalize(z, dim=1, eps=1e-12)).sum(1).mean()

    push("cosine loss fwd 2048", ("bytes", p.numel() * 8), lambda: cosine(p, z))
    pr = p.clone().requires_grad_()
    loss = cosine(pr, z)
    push("cosine loss bwd 2048", ("bytes", p.numel() * 12), lambda: torch.autograd.grad(loss, pr, retain_graph=True))
    length = 11_173_962
    w = torch.nn.Parameter(rand(length))
    w.grad = rand(length)
    kw = {"fused": True} if dev.type == "cuda" else {"foreach": True}
    opt = torch.optim.SGD([w], lr=1e-6, momentum=0.9, weight_decay=5e-4, **kw)
    push("sgd step 11.2M params", ("bytes", length * 20), opt.step)


if __name__ == "__main__":
    main()
