// Batch norm, layer norm, log-sum-exp and softmax over channels-last data [rows, ch]
// (CPU: backend/cpu/norm.rs). Column statistics (batch norm, layer-norm dgamma/dbeta) are
// reduced in two fixed-order stages: `col_*` kernels give one invocation per (split s,
// channel c) that sums the rows of split s in order; the finishing kernels sum the splits in
// order. Row statistics (layer norm, softmax) use one workgroup per row and a fixed tree.

struct P {
    rows: u32,
    ch: u32,
    eps: f32,
    // bit 1: gamma given, bit 2: beta given, bit 4: residual given, bit 8: ReLU (batch norm's
    // fused tail: y = relu?(bn(x) + residual?))
    flags: u32,
    nsplit: u32,
    chunk: u32,
    momentum: f32,
    // rows / (rows - 1): running variance is unbiased
    unbias: f32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> sa: array<f32>; // mean (per channel, or per row in layer norm)
@group(0) @binding(4) var<storage, read> sb: array<f32>; // invstd / rstd (or running var in eval)
@group(0) @binding(5) var<storage, read> gamma: array<f32>;
@group(0) @binding(6) var<storage, read> beta: array<f32>;
@group(0) @binding(7) var<storage, read> part: array<f32>; // partial column sums
@group(0) @binding(8) var<storage, read_write> o1: array<f32>;
@group(0) @binding(9) var<storage, read_write> o2: array<f32>;
@group(0) @binding(10) var<storage, read_write> o3: array<f32>;
@group(0) @binding(11) var<storage, read> t1: array<f32>; // batch-norm backward: sum dy
@group(0) @binding(12) var<storage, read> t2: array<f32>; // batch-norm backward: sum dy * xhat
@group(0) @binding(13) var<storage, read> res: array<f32>; // batch-norm tail: the residual

fn gamma_at(c: u32) -> f32 {
    if ((p.flags & 1u) != 0u) {
        return gamma[c];
    }
    return 1.0;
}

fn beta_at(c: u32) -> f32 {
    if ((p.flags & 2u) != 0u) {
        return beta[c];
    }
    return 0.0;
}

// ---- column reductions, stage 1: one invocation per (split, channel) ---------------------

// The channel and the rows [r0, r1) that column-reduction invocation idx = s * ch + c sums:
// split s holds rows [s * chunk, (s + 1) * chunk), the last one cut at `rows`.
struct ColSplit {
    c: u32,
    r0: u32,
    r1: u32,
}

fn col_split(idx: u32) -> ColSplit {
    let s = idx / p.ch;
    return ColSplit(idx % p.ch, s * p.chunk, min(p.rows, (s + 1u) * p.chunk));
}

// Element i normalised with the statistics at st: sa[st] the mean, sb[st] the invstd / rstd.
fn xhat(i: u32, st: u32) -> f32 {
    return (x[i] - sa[st]) * sb[st];
}

// The backward's column sums for split invocation idx: (sum dy, sum dy * xhat) over its rows,
// with per-channel statistics (batch norm: its dx needs both), or (sum dy * xhat, sum dy) with
// per-row ones (layer norm: dgamma, dbeta) when `per_row`; stored at o1[idx, 0..2].
fn store_dy_xhat_sums(idx: u32, per_row: bool) {
    let cs = col_split(idx);
    var sum_dy = 0.0;
    var sum_dy_xhat = 0.0;
    for (var r = cs.r0; r < cs.r1; r++) {
        let i = r * p.ch + cs.c;
        let g = dy[i];
        sum_dy += g;
        sum_dy_xhat += g * xhat(i, select(cs.c, r, per_row));
    }
    let sums = select(vec2<f32>(sum_dy, sum_dy_xhat), vec2<f32>(sum_dy_xhat, sum_dy), per_row);
    o1[idx * 2u] = sums.x;
    o1[idx * 2u + 1u] = sums.y;
}

// o1[s, c] = sum_(r in split s) x[r, c]
@compute @workgroup_size(WG)
fn batchnorm_colsum_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var idx = flat_id(wid, nwg, li); idx < p.nsplit * p.ch; idx += grid_stride(nwg)) {
        let cs = col_split(idx);
        var acc = 0.0;
        for (var r = cs.r0; r < cs.r1; r++) {
            acc += x[r * p.ch + cs.c];
        }
        o1[idx] = acc;
    }
}

// o1[s, c] = sum_(r in split s) (x[r, c] - mean[c])^2
@compute @workgroup_size(WG)
fn batchnorm_sqdev_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var idx = flat_id(wid, nwg, li); idx < p.nsplit * p.ch; idx += grid_stride(nwg)) {
        let cs = col_split(idx);
        let m = sa[cs.c];
        var acc = 0.0;
        for (var r = cs.r0; r < cs.r1; r++) {
            let d = x[r * p.ch + cs.c] - m;
            acc += d * d;
        }
        o1[idx] = acc;
    }
}

// o1[s, c, 0] = sum dy, o1[s, c, 1] = sum dy * xhat with per-channel statistics (batch norm)
@compute @workgroup_size(WG)
fn batchnorm_stats_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var idx = flat_id(wid, nwg, li); idx < p.nsplit * p.ch; idx += grid_stride(nwg)) {
        store_dy_xhat_sums(idx, false);
    }
}

// o1[s, c, 0] = sum dy * xhat, o1[s, c, 1] = sum dy with per-row statistics (layer norm)
@compute @workgroup_size(WG)
fn layernorm_stats_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var idx = flat_id(wid, nwg, li); idx < p.nsplit * p.ch; idx += grid_stride(nwg)) {
        store_dy_xhat_sums(idx, true);
    }
}

// ---- column reductions, stage 2: one invocation per channel -----------------------------

// sum_s part[(s, c) * width + k]: component k of channel c's partial sums over the splits,
// in split order (width 1: one partial per split, 2: the backward's pairs).
fn split_total(c: u32, width: u32, k: u32) -> f32 {
    var acc = 0.0;
    for (var s = 0u; s < p.nsplit; s++) {
        acc += part[(s * p.ch + c) * width + k];
    }
    return acc;
}

// o1[c] = sum_s part[s, c] / rows  (the batch mean)
@compute @workgroup_size(WG)
fn batchnorm_mean_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var c = flat_id(wid, nwg, li); c < p.ch; c += grid_stride(nwg)) {
        o1[c] = split_total(c, 1u, 0u) / f32(p.rows);
    }
}

// o1[c] = 1 / sqrt(var + eps), var = sum_s part[s, c] / rows (biased)
@compute @workgroup_size(WG)
fn batchnorm_invstd_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var c = flat_id(wid, nwg, li); c < p.ch; c += grid_stride(nwg)) {
        o1[c] = 1.0 / sqrt(split_total(c, 1u, 0u) / f32(p.rows) + p.eps);
    }
}

// running = (1 - momentum) running + momentum batch; o2 = running mean, o3 = running var
@compute @workgroup_size(WG)
fn batchnorm_running_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var c = flat_id(wid, nwg, li); c < p.ch; c += grid_stride(nwg)) {
        let var_b = split_total(c, 1u, 0u) / f32(p.rows);
        let m = p.momentum;
        o2[c] = (1.0 - m) * o2[c] + m * sa[c];
        o3[c] = (1.0 - m) * o3[c] + m * var_b * p.unbias;
    }
}

// o1[c] = sum_s part[s, c, 0], o2[c] = sum_s part[s, c, 1]
@compute @workgroup_size(WG)
fn colstats_finalize_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var c = flat_id(wid, nwg, li); c < p.ch; c += grid_stride(nwg)) {
        o1[c] = split_total(c, 2u, 0u);
        o2[c] = split_total(c, 2u, 1u);
    }
}

// ---- batch norm, elementwise ------------------------------------------------------------

// The fused tail: v + res[i] (bit 4), then ReLU (bit 8).
fn bn_tail(v: f32, i: u32) -> f32 {
    var o = v;
    if ((p.flags & 4u) != 0u) {
        o += res[i];
    }
    if ((p.flags & 8u) != 0u) {
        o = max(o, 0.0);
    }
    return o;
}

// The output pass of both modes: o1[i] = bn_tail(x * scale + shift), shift = beta - mean * scale,
// with sa holding the mean (batch or running) of element i's channel.
fn bn_out(i: u32, scale: f32) {
    let c = i % p.ch;
    let shift = beta_at(c) - sa[c] * scale;
    o1[i] = bn_tail(x[i] * scale + shift, i);
}

// y = x * scale + shift, scale = invstd * gamma, shift = beta - mean * scale
@compute @workgroup_size(WG)
fn batchnorm_apply_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = flat_id(wid, nwg, li); i < p.rows * p.ch; i += grid_stride(nwg)) {
        let c = i % p.ch;
        bn_out(i, sb[c] * gamma_at(c));
    }
}

// Eval: scale = gamma / sqrt(running_var + eps), shift = beta - running_mean * scale
@compute @workgroup_size(WG)
fn batchnorm_eval_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = flat_id(wid, nwg, li); i < p.rows * p.ch; i += grid_stride(nwg)) {
        let c = i % p.ch;
        bn_out(i, gamma_at(c) / sqrt(sb[c] + p.eps));
    }
}

// dx = gamma * invstd / N * (N dy - sum(dy) - xhat * sum(dy xhat))
@compute @workgroup_size(WG)
fn batchnorm_dx_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = flat_id(wid, nwg, li); i < p.rows * p.ch; i += grid_stride(nwg)) {
        let c = i % p.ch;
        let n = f32(p.rows);
        let k = gamma_at(c) * sb[c] / n;
        o1[i] = k * (n * dy[i] - t1[c] - xhat(i, c) * t2[c]);
    }
}

// ---- row reductions: one workgroup per row ------------------------------------------------

// Its row reductions (wg_sum, wg_max) come from reduce.wgsl, over workgroups of ROW_WG lanes.
const RED_WG: u32 = ROW_WG;

// Row kernels loop `row += group_stride(nwg)` as the 1-D ones loop over elements; the host
// launches a workgroup per row (rounded up to its grid), so each takes one row or none.

// (mean, rstd) of the row at `base`, by the whole workgroup: two passes, as the CPU.
fn row_mean_rstd(base: u32, li: u32) -> vec2<f32> {
    var s = 0.0;
    for (var j = li; j < p.ch; j += ROW_WG) {
        s += x[base + j];
    }
    let mean = wg_sum(s, li) / f32(p.ch);
    var q = 0.0;
    for (var j = li; j < p.ch; j += ROW_WG) {
        let d = x[base + j] - mean;
        q += d * d;
    }
    return vec2<f32>(mean, 1.0 / sqrt(wg_sum(q, li) / f32(p.ch) + p.eps));
}

// y = (x - mean) * rstd * gamma + beta; o1 = y, o2 = mean, o3 = rstd
@compute @workgroup_size(ROW_WG)
fn layernorm_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var row = flat_group(wid, nwg); row < p.rows; row += group_stride(nwg)) {
        let base = row * p.ch;
        let st = row_mean_rstd(base, li);
        for (var j = li; j < p.ch; j += ROW_WG) {
            o1[base + j] = (x[base + j] - st.x) * st.y * gamma[j] + beta[j];
        }
        if (li == 0u) {
            o2[row] = st.x;
            o3[row] = st.y;
        }
    }
}

// sum over the row at `base` of x * dy, reduced over the workgroup
fn row_dot_x_dy(base: u32, li: u32) -> f32 {
    var s = 0.0;
    for (var j = li; j < p.ch; j += ROW_WG) {
        s += x[base + j] * dy[base + j];
    }
    return wg_sum(s, li);
}

// Row-wise L2 normalisation (F.normalize): o1 = x / n, o2 = n = max(|x|, eps)
@compute @workgroup_size(ROW_WG)
fn l2_normalize_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var row = flat_group(wid, nwg); row < p.rows; row += group_stride(nwg)) {
        let base = row * p.ch;
        var s = 0.0;
        for (var j = li; j < p.ch; j += ROW_WG) {
            s += x[base + j] * x[base + j];
        }
        let n = max(sqrt(wg_sum(s, li)), p.eps);
        for (var j = li; j < p.ch; j += ROW_WG) {
            o1[base + j] = x[base + j] / n;
        }
        if (li == 0u) {
            o2[row] = n;
        }
    }
}

// o1 = dx = dy / n - x (x . dy) / n^3 (dy / n where n was clamped at eps); sa = n
@compute @workgroup_size(ROW_WG)
fn l2_normalize_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var row = flat_group(wid, nwg); row < p.rows; row += group_stride(nwg)) {
        let base = row * p.ch;
        let n = sa[row];
        let dot = row_dot_x_dy(base, li);
        var k = 0.0;
        if (n > p.eps) {
            k = dot / (n * n * n);
        }
        for (var j = li; j < p.ch; j += ROW_WG) {
            o1[base + j] = dy[base + j] / n - x[base + j] * k;
        }
    }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma; sa, sb = mean, rstd
@compute @workgroup_size(ROW_WG)
fn layernorm_dx_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var row = flat_group(wid, nwg); row < p.rows; row += group_stride(nwg)) {
        let base = row * p.ch;
        var s1 = 0.0;
        var s2 = 0.0;
        for (var j = li; j < p.ch; j += ROW_WG) {
            let g = dy[base + j] * gamma[j];
            s1 += g;
            s2 += g * xhat(base + j, row);
        }
        let m1 = wg_sum(s1, li) / f32(p.ch);
        let m2 = wg_sum(s2, li) / f32(p.ch);
        for (var j = li; j < p.ch; j += ROW_WG) {
            let g = dy[base + j] * gamma[j];
            o1[base + j] = sb[row] * (g - m1 - xhat(base + j, row) * m2);
        }
    }
}

// (max, sum of exp(x - max)) over the row of x at `base`, by the whole workgroup.
fn row_max_expsum(base: u32, li: u32) -> vec2<f32> {
    var m = NEG_BIG;
    for (var j = li; j < p.ch; j += ROW_WG) {
        m = max(m, x[base + j]);
    }
    let mx = wg_max(m, li);
    var s = 0.0;
    for (var j = li; j < p.ch; j += ROW_WG) {
        s += exp(x[base + j] - mx);
    }
    return vec2<f32>(mx, wg_sum(s, li));
}

// o1[row] = log sum_j exp(x[row, j]), max-shifted
@compute @workgroup_size(ROW_WG)
fn logsumexp_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var row = flat_group(wid, nwg); row < p.rows; row += group_stride(nwg)) {
        let ms = row_max_expsum(row * p.ch, li);
        if (li == 0u) {
            o1[row] = ms.x + log(ms.y);
        }
    }
}

// dx = dlse * exp(x - lse); sa holds lse, dy holds dlse (one value per row)
@compute @workgroup_size(ROW_WG)
fn logsumexp_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var row = flat_group(wid, nwg); row < p.rows; row += group_stride(nwg)) {
        let base = row * p.ch;
        let l = sa[row];
        let g = dy[row];
        for (var j = li; j < p.ch; j += ROW_WG) {
            o1[base + j] = g * exp(x[base + j] - l);
        }
    }
}

@compute @workgroup_size(ROW_WG)
fn softmax_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var row = flat_group(wid, nwg); row < p.rows; row += group_stride(nwg)) {
        let base = row * p.ch;
        let ms = row_max_expsum(base, li);
        let inv = 1.0 / ms.y;
        for (var j = li; j < p.ch; j += ROW_WG) {
            o1[base + j] = exp(x[base + j] - ms.x) * inv;
        }
    }
}

// dx = y * (dy - sum(y * dy)); x holds y
@compute @workgroup_size(ROW_WG)
fn softmax_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var row = flat_group(wid, nwg); row < p.rows; row += group_stride(nwg)) {
        let base = row * p.ch;
        let dot = row_dot_x_dy(base, li);
        for (var j = li; j < p.ch; j += ROW_WG) {
            o1[base + j] = x[base + j] * (dy[base + j] - dot);
        }
    }
}
