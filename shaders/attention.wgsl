// Scaled dot-product attention, flash style (CPU: backend/cpu/attention.rs).
// q [bh, tq, d], k and v [bh, tk, d], o [bh, tq, d], lse [bh, tq].
// One invocation per query row (forward, dq) or key row (dk, dv) keeps its row and its
// accumulators in registers; key/value (or query/dout) rows stream through workgroup memory
// in tiles of ATT_BK. The forward keeps a running max and sum (online softmax) and saves only
// the log-sum-exp; backward recomputes the probabilities from it. No score matrix is stored.
// VARIANT is the largest head dimension this module handles (d <= DM).

const DM: u32 = VARIANT;

struct P {
    bh: u32,
    tq: u32,
    tk: u32,
    d: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> qin: array<f32>;
@group(0) @binding(2) var<storage, read> kin: array<f32>;
@group(0) @binding(3) var<storage, read> vin: array<f32>;
@group(0) @binding(4) var<storage, read> oin: array<f32>;
@group(0) @binding(5) var<storage, read> lse: array<f32>;
@group(0) @binding(6) var<storage, read> dout: array<f32>;
@group(0) @binding(7) var<storage, read> dvec: array<f32>; // rowsum(dout * o)
@group(0) @binding(8) var<storage, read_write> o1: array<f32>;
@group(0) @binding(9) var<storage, read_write> o2: array<f32>;

var<workgroup> ts1: array<f32, ATT_BK * DM>;
var<workgroup> ts2: array<f32, ATT_BK * DM>;
var<workgroup> tv1: array<f32, ATT_BK>;
var<workgroup> tv2: array<f32, ATT_BK>;

// Lanes: invocation li of workgroup x owns row x * ATT_BQ + li of its side (queries for the
// forward and dq, keys for dk and dv). A lane past the end works on the last row, so that it
// stages its share of every tile and meets every barrier, and stores nothing.

// Element dd of row `row` of the query-side pair (q, dout), or of the key-side pair (k, v)
// (backward kernels only: the forward binds no dout).
fn row_pair(query_side: bool, row: u32, dd: u32) -> vec2<f32> {
    let at = row * p.d + dd;
    if (query_side) {
        return vec2<f32>(qin[at], dout[at]);
    }
    return vec2<f32>(kin[at], vin[at]);
}

// The workgroup-memory slot of element e of a staged tile (tile row e / d, rows DM apart).
fn tile_slot(e: u32) -> u32 {
    return (e / p.d) * DM + e % p.d;
}

// Stages key rows j0 .. j0 + nt of head b, k into ts1 and v into ts2, by the whole workgroup
// (the rows are contiguous, so element e of the tile is element e from the first); the caller
// waits at a barrier before reading them.
fn stage_kv(b: u32, j0: u32, nt: u32, li: u32) {
    let first = (b * p.tk + j0) * p.d;
    for (var e = li; e < nt * p.d; e += ATT_BQ) {
        ts1[tile_slot(e)] = kin[first + e];
        ts2[tile_slot(e)] = vin[first + e];
    }
}

// A lane's own row of one side's pair, kept in registers by the backward kernels.
fn own_row(query_side: bool, row: u32) -> array<vec2<f32>, DM> {
    var own: array<vec2<f32>, DM>;
    for (var dd = 0u; dd < p.d; dd++) {
        own[dd] = row_pair(query_side, row, dd);
    }
    return own;
}

// (P_ij, dS_ij) for staged tile row t against a lane's own row: s = q_i . k_j, dp = dout_i . v_j,
// P_ij = exp(s scale - lse_i), dS_ij = P_ij (dp - D_i) scale. The own row is (q_i, dout_i)
// against staged (k, v) for dq, or (k_j, v_j) against staged (q, dout) for dk and dv.
fn prob_dscore(t: u32, own: ptr<function, array<vec2<f32>, DM>>, lse_i: f32, d_i: f32) -> vec2<f32> {
    var s = 0.0;
    var dp = 0.0;
    for (var dd = 0u; dd < p.d; dd++) {
        let o = (*own)[dd];
        s = fma(o.x, ts1[t * DM + dd], s);
        dp = fma(o.y, ts2[t * DM + dd], dp);
    }
    let pr = exp(s * p.scale - lse_i);
    return vec2<f32>(pr, pr * (dp - d_i) * p.scale);
}

// Grid: (ceil(tq / ATT_BQ), min(bh, limit)); o1 = o, o2 = lse.
@compute @workgroup_size(ATT_BQ)
fn attention_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wid.x * ATT_BQ + li;
    for (var b = wid.y; b < p.bh; b += nwg.y) {
        let row = b * p.tq + min(i, p.tq - 1u);
        var q: array<f32, DM>;
        var acc: array<f32, DM>;
        for (var dd = 0u; dd < p.d; dd++) {
            q[dd] = qin[row * p.d + dd];
        }
        var m = NEG_BIG;
        var l = 0.0;
        for (var j0 = 0u; j0 < p.tk; j0 += ATT_BK) {
            let nt = min(ATT_BK, p.tk - j0);
            stage_kv(b, j0, nt, li);
            workgroupBarrier();
            var sc: array<f32, ATT_BK>;
            var mt = m;
            for (var jj = 0u; jj < nt; jj++) {
                var s = 0.0;
                for (var dd = 0u; dd < p.d; dd++) {
                    s = fma(q[dd], ts1[jj * DM + dd], s);
                }
                s = s * p.scale;
                sc[jj] = s;
                mt = max(mt, s);
            }
            let corr = exp(m - mt);
            l = l * corr;
            for (var dd = 0u; dd < p.d; dd++) {
                acc[dd] = acc[dd] * corr;
            }
            for (var jj = 0u; jj < nt; jj++) {
                let e = exp(sc[jj] - mt);
                l += e;
                for (var dd = 0u; dd < p.d; dd++) {
                    acc[dd] = fma(e, ts2[jj * DM + dd], acc[dd]);
                }
            }
            m = mt;
            workgroupBarrier();
        }
        if (i < p.tq) {
            let inv = 1.0 / l;
            for (var dd = 0u; dd < p.d; dd++) {
                o1[row * p.d + dd] = acc[dd] * inv;
            }
            o2[row] = m + log(l);
        }
    }
}

// o1[row] = sum_dd dout[row, dd] * o[row, dd], one invocation per row of [bh * tq].
@compute @workgroup_size(WG)
fn attention_rowdot_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var row = flat_id(wid, nwg, li); row < p.bh * p.tq; row += grid_stride(nwg)) {
        var s = 0.0;
        for (var dd = 0u; dd < p.d; dd++) {
            s += dout[row * p.d + dd] * oin[row * p.d + dd];
        }
        o1[row] = s;
    }
}

// dq_i = sum_j dS_ij k_j, dS_ij = P_ij (dout_i . v_j - D_i) scale. Grid as the forward.
@compute @workgroup_size(ATT_BQ)
fn attention_dq_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wid.x * ATT_BQ + li;
    for (var b = wid.y; b < p.bh; b += nwg.y) {
        let row = b * p.tq + min(i, p.tq - 1u);
        let lse_i = lse[row];
        let d_i = dvec[row];
        var own = own_row(true, row);
        var acc: array<f32, DM>;
        for (var j0 = 0u; j0 < p.tk; j0 += ATT_BK) {
            let nt = min(ATT_BK, p.tk - j0);
            stage_kv(b, j0, nt, li);
            workgroupBarrier();
            for (var jj = 0u; jj < nt; jj++) {
                let ds = prob_dscore(jj, &own, lse_i, d_i).y;
                for (var dd = 0u; dd < p.d; dd++) {
                    acc[dd] = fma(ds, ts1[jj * DM + dd], acc[dd]);
                }
            }
            workgroupBarrier();
        }
        if (i < p.tq) {
            for (var dd = 0u; dd < p.d; dd++) {
                o1[row * p.d + dd] = acc[dd];
            }
        }
    }
}

// dv_j = sum_i P_ij dout_i, dk_j = sum_i dS_ij q_i; one lane per key row.
// Grid: (ceil(tk / ATT_BQ), min(bh, limit)); o1 = dk, o2 = dv.
@compute @workgroup_size(ATT_BQ)
fn attention_dkdv_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let j = wid.x * ATT_BQ + li;
    for (var b = wid.y; b < p.bh; b += nwg.y) {
        let row = b * p.tk + min(j, p.tk - 1u);
        var own = own_row(false, row);
        var dk: array<f32, DM>;
        var dv: array<f32, DM>;
        for (var i0 = 0u; i0 < p.tq; i0 += ATT_BK) {
            let nt = min(ATT_BK, p.tq - i0);
            // query rows i0 .. i0 + nt: q into ts1, dout into ts2, and their lse and D
            let first = (b * p.tq + i0) * p.d;
            for (var e = li; e < nt * p.d; e += ATT_BQ) {
                ts1[tile_slot(e)] = qin[first + e];
                ts2[tile_slot(e)] = dout[first + e];
            }
            for (var e = li; e < nt; e += ATT_BQ) {
                tv1[e] = lse[b * p.tq + i0 + e];
                tv2[e] = dvec[b * p.tq + i0 + e];
            }
            workgroupBarrier();
            for (var ii = 0u; ii < nt; ii++) {
                let pd = prob_dscore(ii, &own, tv1[ii], tv2[ii]);
                for (var dd = 0u; dd < p.d; dd++) {
                    dv[dd] = fma(pd.x, ts2[ii * DM + dd], dv[dd]);
                    dk[dd] = fma(pd.y, ts1[ii * DM + dd], dk[dd]);
                }
            }
            workgroupBarrier();
        }
        if (j < p.tk) {
            for (var dd = 0u; dd < p.d; dd++) {
                o1[row * p.d + dd] = dk[dd];
                o2[row * p.d + dd] = dv[dd];
            }
        }
    }
}
