// The SGD update (CPU: backend/cpu/optim.rs), PyTorch semantics with dampening 0:
// d = grad + weight_decay * param; buf = momentum * buf + d; param -= lr * buf.
// One dispatch per tensor, all recorded into the same compute pass and submission.

struct P {
    n: u32,
    lr: f32,
    wd: f32,
    momentum: f32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> buf: array<f32>;

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
