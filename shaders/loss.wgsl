// Cross-entropy with logits, the negative-cosine loss, NT-Xent and the identity penalty
// (CPU: backend/cpu/loss.rs).
// Losses land in one-element device buffers; backward reads the upstream gradient dloss[0]
// on the device, so a training step never waits for the host. An invalid label (not an
// integer class in 0..classes) makes its row's loss and gradient NaN (the CPU returns an
// error; a GPU kernel cannot).

struct P {
    rows: u32,
    cols: u32,
    eps: f32,
    // cosine backward: also write dz
    want_dz: u32,
    // identity penalty: the off-diagonal weight (eps holds the diagonal's)
    w2: f32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;      // logits, or p
@group(0) @binding(2) var<storage, read> b: array<f32>;      // labels, groups, or z
@group(0) @binding(3) var<storage, read> dloss: array<f32>;  // [1]
@group(0) @binding(4) var<storage, read> part: array<f32>;   // per-row terms of a loss
@group(0) @binding(5) var<storage, read_write> o1: array<f32>;
@group(0) @binding(6) var<storage, read_write> o2: array<f32>;

const NAN_BITS: u32 = 0x7fc00000u;

// Its row reductions (wg_sum, wg_max) come from reduce.wgsl, over workgroups of WG lanes.
const RED_WG: u32 = WG;

// The class of row r, or -1 when the label is not one.
fn label_of(r: u32) -> i32 {
    let l = b[r];
    if (!(l >= 0.0 && l < f32(p.cols) && fract(l) == 0.0)) {
        return -1;
    }
    return i32(l);
}

fn row_lse(r: u32) -> f32 {
    let base = r * p.cols;
    var m = NEG_BIG;
    for (var j = 0u; j < p.cols; j++) {
        m = max(m, a[base + j]);
    }
    var s = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        s += exp(a[base + j] - m);
    }
    return m + log(s);
}

// One workgroup: o1[0] = mean over rows of (lse - logit[label]).
@compute @workgroup_size(WG)
fn cross_entropy_fwd_f32(@builtin(local_invocation_index) li: u32) {
    var acc = 0.0;
    for (var r = li; r < p.rows; r += WG) {
        let y = label_of(r);
        if (y < 0) {
            acc += bitcast<f32>(NAN_BITS);
        } else {
            acc += row_lse(r) - a[r * p.cols + u32(y)];
        }
    }
    let total = wg_sum(acc, li);
    if (li == 0u) {
        o1[0] = total / f32(p.rows);
    }
}

// One invocation per row: o1[r, j] = dloss / rows * (softmax_j - [j == label])
@compute @workgroup_size(WG)
fn cross_entropy_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var r = flat_id(wid, nwg, li); r < p.rows; r += grid_stride(nwg)) {
        let g = dloss[0] / f32(p.rows);
        let y = label_of(r);
        let lse = row_lse(r);
        let base = r * p.cols;
        for (var j = 0u; j < p.cols; j++) {
            let pr = exp(a[base + j] - lse);
            var v = g * (pr - select(0.0, 1.0, i32(j) == y));
            if (y < 0) {
                v = bitcast<f32>(NAN_BITS);
            }
            o1[base + j] = v;
        }
    }
}

// (p.z, max(|p|, eps), max(|z|, eps)) of one row, by the workgroup.
fn row_stats(r: u32, li: u32) -> vec3<f32> {
    let base = r * p.cols;
    var pz = 0.0;
    var pp = 0.0;
    var zz = 0.0;
    for (var j = li; j < p.cols; j += WG) {
        let u = a[base + j];
        let v = b[base + j];
        pz += u * v;
        pp += u * u;
        zz += v * v;
    }
    let spz = wg_sum(pz, li);
    let spp = wg_sum(pp, li);
    let szz = wg_sum(zz, li);
    return vec3<f32>(spz, max(sqrt(spp), p.eps), max(sqrt(szz), p.eps));
}

// One workgroup per row: o1[r] = cos(p_r, z_r)
@compute @workgroup_size(WG)
fn cosine_loss_rows_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = flat_group(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let st = row_stats(r, li);
    if (li == 0u) {
        o1[r] = st.x / (st.y * st.z);
    }
}

// One workgroup: o1[0] = eps * sum_r part[r] (the loss of per-row terms)
@compute @workgroup_size(WG)
fn loss_reduce_fwd_f32(@builtin(local_invocation_index) li: u32) {
    var acc = 0.0;
    for (var r = li; r < p.rows; r += WG) {
        acc += part[r];
    }
    let total = wg_sum(acc, li);
    if (li == 0u) {
        o1[0] = p.eps * total;
    }
}

// One workgroup per row. d cos / dp = z / (|p| |z|) - cos p / |p|^2 (a norm clamped at eps
// is a constant); o1 = dp, o2 = dz when want_dz.
@compute @workgroup_size(WG)
fn cosine_loss_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = flat_group(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let st = row_stats(r, li);
    let g = -dloss[0] / f32(p.rows);
    let pn = st.y;
    let zn = st.z;
    let cosv = st.x / (pn * zn);
    let p_clamped = pn <= p.eps;
    let z_clamped = zn <= p.eps;
    let base = r * p.cols;
    for (var j = li; j < p.cols; j += WG) {
        let u = a[base + j];
        let v = b[base + j];
        var gp = v / (pn * zn);
        if (!p_clamped) {
            gp -= cosv * u / (pn * pn);
        }
        o1[base + j] = g * gp;
        if (p.want_dz != 0u) {
            var gz = u / (zn * pn);
            if (!z_clamped) {
                gz -= cosv * v / (zn * zn);
            }
            o2[base + j] = g * gz;
        }
    }
}

// ---- NT-Xent over a similarity matrix a [rows, rows] with groups b [rows] -------------------
// x = a * eps (eps = 1 / T). Row r's denominator is every j != r, its positives the j != r of
// its group. A row without a positive gets NaN (the CPU returns an error).

// (max over j != r, max over the positives) of row r, by the workgroup.
fn nt_xent_max(r: u32, li: u32) -> vec2<f32> {
    let base = r * p.cols;
    var am = NEG_BIG;
    var pm = NEG_BIG;
    for (var j = li; j < p.cols; j += WG) {
        if (j != r) {
            let x = a[base + j] * p.eps;
            am = max(am, x);
            if (b[j] == b[r]) {
                pm = max(pm, x);
            }
        }
    }
    return vec2<f32>(wg_max(am, li), wg_max(pm, li));
}

// (lse_all, lse_pos) of row r; lse_pos is NaN when the row has no positive.
fn nt_xent_lse(r: u32, li: u32) -> vec2<f32> {
    let m = nt_xent_max(r, li);
    let base = r * p.cols;
    var sa = 0.0;
    var sp = 0.0;
    for (var j = li; j < p.cols; j += WG) {
        if (j != r) {
            let x = a[base + j] * p.eps;
            sa += exp(x - m.x);
            if (b[j] == b[r]) {
                sp += exp(x - m.y);
            }
        }
    }
    let all = m.x + log(wg_sum(sa, li));
    let tp = wg_sum(sp, li);
    var pos = bitcast<f32>(NAN_BITS);
    if (tp > 0.0) {
        pos = m.y + log(tp);
    }
    return vec2<f32>(all, pos);
}

// One workgroup per row: o1[r] = lse_all - lse_pos; the loss is loss_reduce_fwd_f32(eps = 1 / rows).
@compute @workgroup_size(WG)
fn nt_xent_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = flat_group(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let l = nt_xent_lse(r, li);
    if (li == 0u) {
        o1[r] = l.x - l.y;
    }
}

// One workgroup per row: o1[r, j] = dloss eps / rows [j != r] (exp(x - lse_all) - [g_j = g_r] exp(x - lse_pos))
@compute @workgroup_size(WG)
fn nt_xent_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = flat_group(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let l = nt_xent_lse(r, li);
    let g = dloss[0] * p.eps / f32(p.rows);
    let base = r * p.cols;
    for (var j = li; j < p.cols; j += WG) {
        let x = a[base + j] * p.eps;
        var pos = 0.0;
        if (b[j] == b[r]) {
            pos = exp(x - l.y);
        }
        o1[base + j] = select(g * (exp(x - l.x) - pos), 0.0, j == r);
    }
}

// ---- identity penalty of a square matrix a [rows, rows] ------------------------------------
// eps * sum_i (a_ii - 1)^2 + w2 * sum_{i != j} a_ij^2 (Barlow Twins' and VICReg's terms).

// One workgroup per row: o1[i] = the row's share; the loss is loss_reduce_fwd_f32(eps = 1).
@compute @workgroup_size(WG)
fn identity_penalty_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = flat_group(wid, nwg);
    if (i >= p.rows) {
        return;
    }
    let base = i * p.cols;
    var off = 0.0;
    for (var j = li; j < p.cols; j += WG) {
        if (j != i) {
            off += a[base + j] * a[base + j];
        }
    }
    let total = wg_sum(off, li);
    if (li == 0u) {
        let dg = a[base + i] - 1.0;
        o1[i] = p.eps * dg * dg + p.w2 * total;
    }
}

// o1[i, j] = 2 dloss (eps (a_ii - 1) if i = j, else w2 a_ij), one invocation per element.
@compute @workgroup_size(WG)
fn identity_penalty_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = 2.0 * dloss[0];
    for (var k = flat_id(wid, nwg, li); k < p.rows * p.cols; k += grid_stride(nwg)) {
        let i = k / p.cols;
        let j = k - i * p.cols;
        o1[k] = g * select(p.w2 * a[k], p.eps * (a[k] - 1.0), i == j);
    }
}

// ---- cross-entropy against soft targets b [rows, cols] (SwAV, DINO) ------------------------

// (lse, sum_j q_j) of row r, by the workgroup.
fn soft_row(r: u32, li: u32) -> vec2<f32> {
    let base = r * p.cols;
    var m = NEG_BIG;
    var qs = 0.0;
    for (var j = li; j < p.cols; j += WG) {
        m = max(m, a[base + j]);
        qs += b[base + j];
    }
    let mx = wg_max(m, li);
    var s = 0.0;
    for (var j = li; j < p.cols; j += WG) {
        s += exp(a[base + j] - mx);
    }
    return vec2<f32>(mx + log(wg_sum(s, li)), wg_sum(qs, li));
}

// One workgroup per row: o1[r] = sum_j q_rj (lse_r - x_rj); the loss is loss_reduce_fwd_f32(eps = 1 / rows).
@compute @workgroup_size(WG)
fn soft_cross_entropy_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = flat_group(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let st = soft_row(r, li);
    let base = r * p.cols;
    var acc = 0.0;
    for (var j = li; j < p.cols; j += WG) {
        acc += b[base + j] * (st.x - a[base + j]);
    }
    let total = wg_sum(acc, li);
    if (li == 0u) {
        o1[r] = total;
    }
}

// One workgroup per row: o1[r, j] = dloss / rows (softmax_rj sum_k q_rk - q_rj)
@compute @workgroup_size(WG)
fn soft_cross_entropy_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = flat_group(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let st = soft_row(r, li);
    let g = dloss[0] / f32(p.rows);
    let base = r * p.cols;
    for (var j = li; j < p.cols; j += WG) {
        o1[base + j] = g * (exp(a[base + j] - st.x) * st.y - b[base + j]);
    }
}
