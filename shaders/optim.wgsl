// The SGD update (CPU: backend/cpu/optim.rs), PyTorch semantics with dampening 0:
// d = grad + weight_decay * param; buf = momentum * buf + d; param -= lr * buf.
// One dispatch per tensor, all recorded into the same compute pass and submission.

struct P {
    n: u32,
    lr: f32,
    wd: f32,
    momentum: f32,
    // AdamW only (adamw_step_fwd_f32): the per-tensor factors and the shared settings.
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> buf: array<f32>;
@group(0) @binding(4) var<storage, read_write> buf2: array<f32>;

@compute @workgroup_size(WG)
fn sgd_step_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = flat_id(wid, nwg, li); i < p.n; i += grid_stride(nwg)) {
        let w = param[i];
        let d = grad[i] + p.wd * w;
        let nb = p.momentum * buf[i] + d;
        buf[i] = nb;
        param[i] = w - p.lr * nb;
    }
}

// The EMA update of a momentum encoder (CPU: ema_update in backend/cpu/optim.rs):
// target = tau * target + (1 - tau) * source, with the source bound as `grad`, the target as
// `param` and tau in `p.lr` (one parameter block for the module's two entry points).
@compute @workgroup_size(WG)
fn ema_update_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = flat_id(wid, nwg, li); i < p.n; i += grid_stride(nwg)) {
        param[i] = p.lr * param[i] + (1.0 - p.lr) * grad[i];
    }
}

// The AdamW update (CPU: adamw in backend/cpu/optim.rs, torch.optim.AdamW's semantics), with
// the first moment bound as `buf` and the second as `buf2`: param *= decay;
// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; param -= step_size m / (sqrt(v) / bc2_sqrt + eps),
// decay = 1 - lr wd, step_size = lr / (1 - b1^step), bc2_sqrt = sqrt(1 - b2^step) from the host.
@compute @workgroup_size(WG)
fn adamw_step_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = flat_id(wid, nwg, li); i < p.n; i += grid_stride(nwg)) {
        let g = grad[i];
        let m = p.beta1 * buf[i] + p.one_minus_beta1 * g;
        let v = p.beta2 * buf2[i] + p.one_minus_beta2 * g * g;
        buf[i] = m;
        buf2[i] = v;
        param[i] = param[i] * p.decay - p.step_size * m / (sqrt(v) / p.bc2_sqrt + p.eps);
    }
}
