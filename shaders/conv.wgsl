// NHWC convolution as implicit GEMM (CPU: backend/cpu/conv.rs). x [n, h, w, c_in],
// weight [c_out, kh, kw, cg] (cg = c_in / groups, og = c_out / groups), y [n, oh, ow, c_out].
// The im2col matrix is never stored: its elements are gathered while the GEMM core stages
// tiles. Column index q = (ki, kj, c) with c fastest, which is the weight's inner layout.
//   forward       (mode 0): y[r, g*og + o]  = sum_q col[r, q] w[g*og + o, q]          r = output pixel
//   backward-data (mode 1): dx[r, g*cg + c] = sum_(ki,kj,o) dy[window(r), o] w[o, ki, kj, c]   r = input pixel
//                           (a gather: every dx element is written once, no zeroing or atomics)
//   backward-weight (mode 2): dw[g*og + o, q] = sum_r dy[r, g*og + o] col[r, q], split over
//                           `nsplit` ranges of r whose partial results are summed in order.

struct P {
    n: u32,
    h: u32,
    w: u32,
    c_in: u32,
    c_out: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    groups: u32,
    oh: u32,
    ow: u32,
    cg: u32,
    og: u32,
    // the GEMM: rows, columns, depth
    gm: u32,
    gn: u32,
    gk: u32,
    // backward-weight split of the reduction over output pixels
    nsplit: u32,
    chunk: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> xin: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> dyin: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// col[r, q] of group g: the input value under kernel tap q of output pixel r, 0 in the padding.
fn im2col(r: u32, q: u32, g: u32) -> f32 {
    let npix = p.oh * p.ow;
    let img = r / npix;
    let pix = r % npix;
    let oy = pix / p.ow;
    let ox = pix % p.ow;
    let c = q % p.cg;
    let t = q / p.cg;
    let kj = t % p.kw;
    let ki = t / p.kw;
    let iy = i32(oy * p.sh + ki) - i32(p.ph);
    let ix = i32(ox * p.sw + kj) - i32(p.pw);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) {
        return 0.0;
    }
    return xin[((img * p.h + u32(iy)) * p.w + u32(ix)) * p.c_in + g * p.cg + c];
}

// Backward-data works on one stride phase at a time: the input pixels with
// (iy + ph) % sh == ry and (ix + pw) % sw == rx receive gradient only from the kernel taps
// ki = ry + sh * ti, kj = rx + sw * tj, from output pixel (a - ti, b - tj) where
// iy = ry + sh * a - ph. Each phase is a dense GEMM (no zero taps), so stride-2 layers cost
// the same as stride 1; with stride 1 there is one phase. Set once per invocation by
// `set_phase`.
var<private> ph_ry: u32;
var<private> ph_rx: u32;
var<private> ph_alo: u32;
var<private> ph_blo: u32;
var<private> ph_na: u32;
var<private> ph_nb: u32;
var<private> ph_nti: u32;
var<private> ph_ntj: u32;

fn ceil_div_pos(a: i32, b: i32) -> i32 {
    return select(0, (a + b - 1) / b, a > 0);
}

fn set_phase(phase: u32) {
    ph_ry = phase / p.sw;
    ph_rx = phase % p.sw;
    let sh = i32(p.sh);
    let sw = i32(p.sw);
    let alo = ceil_div_pos(i32(p.ph) - i32(ph_ry), sh);
    let blo = ceil_div_pos(i32(p.pw) - i32(ph_rx), sw);
    let ahi = ceil_div_pos(i32(p.h + p.ph) - i32(ph_ry), sh);
    let bhi = ceil_div_pos(i32(p.w + p.pw) - i32(ph_rx), sw);
    ph_alo = u32(alo);
    ph_blo = u32(blo);
    ph_na = u32(max(ahi - alo, 0));
    ph_nb = u32(max(bhi - blo, 0));
    ph_nti = u32(ceil_div_pos(i32(p.kh) - i32(ph_ry), sh));
    ph_ntj = u32(ceil_div_pos(i32(p.kw) - i32(ph_rx), sw));
}

// Backward-data A[r, q] of the current phase: r = (image, a, b), q = (ti, tj, o).
fn dy_gather(r: u32, q: u32, g: u32) -> f32 {
    let o = q % p.og;
    let t = q / p.og;
    let tj = t % ph_ntj;
    let ti = t / ph_ntj;
    let nab = ph_na * ph_nb;
    let img = r / nab;
    let rem = r % nab;
    let oy = i32(ph_alo + rem / ph_nb) - i32(ti);
    let ox = i32(ph_blo + rem % ph_nb) - i32(tj);
    if (oy < 0 || ox < 0 || oy >= i32(p.oh) || ox >= i32(p.ow)) {
        return 0.0;
    }
    return dyin[((img * p.oh + u32(oy)) * p.ow + u32(ox)) * p.c_out + g * p.og + o];
}

fn gemm_a(mode: u32, z: u32, i: u32, kk: u32) -> f32 {
    if (i >= p.gm) {
        return 0.0;
    }
    if (mode == 0u) {
        return im2col(i, kk, z);
    }
    if (mode == 1u) {
        if (i >= p.n * ph_na * ph_nb) {
            return 0.0;
        }
        return dy_gather(i, kk, z);
    }
    // mode 2: A[o, r] = dy[r, g*og + o], z = s * groups + g
    return dyin[kk * p.c_out + (z % p.groups) * p.og + i];
}

fn gemm_b(mode: u32, z: u32, kk: u32, j: u32) -> f32 {
    if (j >= p.gn) {
        return 0.0;
    }
    if (mode == 0u) {
        // B[q, o] = w[g*og + o, q]
        return wt[(z * p.og + j) * p.gk + kk];
    }
    if (mode == 1u) {
        // B[(ti, tj, o), c] = w[g*og + o, ry + sh*ti, rx + sw*tj, c]
        let o = kk % p.og;
        let t = kk / p.og;
        let ki = ph_ry + p.sh * (t / ph_ntj);
        let kj = ph_rx + p.sw * (t % ph_ntj);
        return wt[(((z * p.og + o) * p.kh + ki) * p.kw + kj) * p.cg + j];
    }
    // mode 2: B[r, q] = col[r, q]
    return im2col(kk, j, z % p.groups);
}

// Grid: (ceil(og / MM_BN), ceil(n*oh*ow / MM_BM), groups)
@compute @workgroup_size(MM_TX, MM_TY, 1)
fn conv2d_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * MM_BM;
    let col0 = wid.x * MM_BN;
    let g = wid.z;
    var acc = gemm_tile(0u, g, row0, col0, 0u, p.gk, lid, li);
    for (var i = 0u; i < MM_TM; i++) {
        let r = row0 + lid.y * MM_TM + i;
        for (var j = 0u; j < MM_TN; j++) {
            let o = col0 + lid.x * MM_TN + j;
            if (r < p.gm && o < p.gn) {
                out[r * p.c_out + g * p.og + o] = gemm_at(&acc, i, j);
            }
        }
    }
}

// Grid: (ceil(cg / MM_BN), ceil(rows of the largest phase / MM_BM), groups * sh * sw)
@compute @workgroup_size(MM_TX, MM_TY, 1)
fn conv2d_data_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * MM_BM;
    let col0 = wid.x * MM_BN;
    let nph = p.sh * p.sw;
    let g = wid.z / nph;
    set_phase(wid.z % nph);
    let rows = p.n * ph_na * ph_nb;
    var acc = gemm_tile(1u, g, row0, col0, 0u, ph_nti * ph_ntj * p.og, lid, li);
    let nab = ph_na * ph_nb;
    for (var i = 0u; i < MM_TM; i++) {
        let r = row0 + lid.y * MM_TM + i;
        if (r >= rows) {
            continue;
        }
        let img = r / nab;
        let rem = r % nab;
        let iy = ph_ry + p.sh * (ph_alo + rem / ph_nb) - p.ph;
        let ix = ph_rx + p.sw * (ph_blo + rem % ph_nb) - p.pw;
        let base = ((img * p.h + iy) * p.w + ix) * p.c_in + g * p.cg;
        for (var j = 0u; j < MM_TN; j++) {
            let c = col0 + lid.x * MM_TN + j;
            if (c < p.gn) {
                out[base + c] = gemm_at(&acc, i, j);
            }
        }
    }
}

// Grid: (ceil(kh*kw*cg / MM_BN), ceil(og / MM_BM), nsplit * groups). Split s writes
// out[s, c_out, kh*kw*cg]; with nsplit == 1 that is dw itself.
@compute @workgroup_size(MM_TX, MM_TY, 1)
fn conv2d_weight_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * MM_BM;
    let col0 = wid.x * MM_BN;
    let g = wid.z % p.groups;
    let s = wid.z / p.groups;
    let rows = p.n * p.oh * p.ow;
    let k0 = s * p.chunk;
    let k1 = min(rows, k0 + p.chunk);
    var acc = gemm_tile(2u, wid.z, row0, col0, k0, k1, lid, li);
    let base = s * p.c_out * p.gn;
    for (var i = 0u; i < MM_TM; i++) {
        let o = row0 + lid.y * MM_TM + i;
        for (var j = 0u; j < MM_TN; j++) {
            let q = col0 + lid.x * MM_TN + j;
            if (o < p.gm && q < p.gn) {
                out[base + (g * p.og + o) * p.gn + q] = gemm_at(&acc, i, j);
            }
        }
    }
}
