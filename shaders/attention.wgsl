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

// Grid: (ceil(tq / ATT_BQ), min(bh, limit)); o1 = o, o2 = lse.
@compute @workgroup_size(ATT_BQ)
fn attention_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wid.x * ATT_BQ + li;
    let valid = i < p.tq;
    let qi = min(i, p.tq - 1u);
    for (var b = wid.y; b < p.bh; b += nwg.y) {
        var q: array<f32, DM>;
        var acc: array<f32, DM>;
        for (var dd = 0u; dd < p.d; dd++) {
            q[dd] = qin[(b * p.tq + qi) * p.d + dd];
        }
        var m = NEG_BIG;
        var l = 0.0;
        for (var j0 = 0u; j0 < p.tk; j0 += ATT_BK) {
            let nt = min(ATT_BK, p.tk - j0);
            for (var e = li; e < nt * p.d; e += ATT_BQ) {
                let jj = e / p.d;
                let dd = e % p.d;
                let src = (b * p.tk + j0 + jj) * p.d + dd;
                ts1[jj * DM + dd] = kin[src];
                ts2[jj * DM + dd] = vin[src];
            }
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
        if (valid) {
            let inv = 1.0 / l;
            for (var dd = 0u; dd < p.d; dd++) {
                o1[(b * p.tq + i) * p.d + dd] = acc[dd] * inv;
            }
            o2[b * p.tq + i] = m + log(l);
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
    let valid = i < p.tq;
    let qi = min(i, p.tq - 1u);
    for (var b = wid.y; b < p.bh; b += nwg.y) {
        var q: array<f32, DM>;
        var g: array<f32, DM>;
        var acc: array<f32, DM>;
        let row = b * p.tq + qi;
        for (var dd = 0u; dd < p.d; dd++) {
            q[dd] = qin[row * p.d + dd];
            g[dd] = dout[row * p.d + dd];
        }
        let lrow = lse[row];
        let drow = dvec[row];
        for (var j0 = 0u; j0 < p.tk; j0 += ATT_BK) {
            let nt = min(ATT_BK, p.tk - j0);
            for (var e = li; e < nt * p.d; e += ATT_BQ) {
                let jj = e / p.d;
                let dd = e % p.d;
                let src = (b * p.tk + j0 + jj) * p.d + dd;
                ts1[jj * DM + dd] = kin[src];
                ts2[jj * DM + dd] = vin[src];
            }
            workgroupBarrier();
            for (var jj = 0u; jj < nt; jj++) {
                var s = 0.0;
                var dp = 0.0;
                for (var dd = 0u; dd < p.d; dd++) {
                    s = fma(q[dd], ts1[jj * DM + dd], s);
                    dp = fma(g[dd], ts2[jj * DM + dd], dp);
                }
                let pr = exp(s * p.scale - lrow);
                let ds = pr * (dp - drow) * p.scale;
                for (var dd = 0u; dd < p.d; dd++) {
                    acc[dd] = fma(ds, ts1[jj * DM + dd], acc[dd]);
                }
            }
            workgroupBarrier();
        }
        if (valid) {
            for (var dd = 0u; dd < p.d; dd++) {
                o1[(b * p.tq + i) * p.d + dd] = acc[dd];
            }
        }
    }
}

// dv_j = sum_i P_ij dout_i, dk_j = sum_i dS_ij q_i; one invocation per key row.
// Grid: (ceil(tk / ATT_BQ), min(bh, limit)); o1 = dk, o2 = dv.
@compute @workgroup_size(ATT_BQ)
fn attention_dkdv_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let j = wid.x * ATT_BQ + li;
    let valid = j < p.tk;
    let kj = min(j, p.tk - 1u);
    for (var b = wid.y; b < p.bh; b += nwg.y) {
        var kr: array<f32, DM>;
        var vr: array<f32, DM>;
        var dk: array<f32, DM>;
        var dv: array<f32, DM>;
        let row = b * p.tk + kj;
        for (var dd = 0u; dd < p.d; dd++) {
            kr[dd] = kin[row * p.d + dd];
            vr[dd] = vin[row * p.d + dd];
        }
        for (var i0 = 0u; i0 < p.tq; i0 += ATT_BK) {
            let nt = min(ATT_BK, p.tq - i0);
            for (var e = li; e < nt * p.d; e += ATT_BQ) {
                let ii = e / p.d;
                let dd = e % p.d;
                let src = (b * p.tq + i0 + ii) * p.d + dd;
                ts1[ii * DM + dd] = qin[src];
                ts2[ii * DM + dd] = dout[src];
            }
            for (var e = li; e < nt; e += ATT_BQ) {
                tv1[e] = lse[b * p.tq + i0 + e];
                tv2[e] = dvec[b * p.tq + i0 + e];
            }
            workgroupBarrier();
            for (var ii = 0u; ii < nt; ii++) {
                var s = 0.0;
                var dp = 0.0;
                for (var dd = 0u; dd < p.d; dd++) {
                    s = fma(ts1[ii * DM + dd], kr[dd], s);
                    dp = fma(ts2[ii * DM + dd], vr[dd], dp);
                }
                let pr = exp(s * p.scale - tv1[ii]);
                let ds = pr * (dp - tv2[ii]) * p.scale;
                for (var dd = 0u; dd < p.d; dd++) {
                    dv[dd] = fma(pr, ts2[ii * DM + dd], dv[dd]);
                    dk[dd] = fma(ds, ts1[ii * DM + dd], dk[dd]);
                }
            }
            workgroupBarrier();
        }
        if (valid) {
            for (var dd = 0u; dd < p.d; dd++) {
                o1[(b * p.tk + j) * p.d + dd] = dk[dd];
                o2[(b * p.tk + j) * p.d + dd] = dv[dd];
            }
        }
    }
}
