// Elementwise maps, fill/copy, and the fixed-order axis sum (CPU: backend/cpu/elementwise.rs).

struct P {
    n: u32,
    b_len: u32,
    op: u32,
    alpha: f32,
    // sum_axis: x [outer, axis, inner] -> out [outer, nsplit, inner], split s summing the
    // axis range [s * chunk, min(axis, (s + 1) * chunk)) in order.
    outer: u32,
    axis: u32,
    inner: u32,
    nsplit: u32,
    chunk: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> x2: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const FRAC_1_SQRT_2: f32 = 0.7071067811865476;
const INV_SQRT_2PI: f32 = 0.3989422804014327;

// erf for f32: FreeBSD's s_erff.c (as in the libm crate the CPU backend uses).
fn erfc_mid(ax: f32) -> f32 {
    let s = ax - 1.0;
    let pp = -2.3621185683e-03 + s * (4.1485610604e-01 + s * (-3.7220788002e-01 + s * (3.1834661961e-01 + s * (-1.1089469492e-01 + s * (3.5478305072e-02 + s * -2.1663755178e-03)))));
    let qq = 1.0 + s * (1.0642088205e-01 + s * (5.4039794207e-01 + s * (7.1828655899e-02 + s * (1.2617121637e-01 + s * (1.3637083583e-02 + s * 1.1984500103e-02)))));
    return 1.0 - 8.4506291151e-01 - pp / qq;
}

fn erfc_tail(ix: u32, ax: f32) -> f32 {
    if (ix < 0x3fa00000u) {
        return erfc_mid(ax);
    }
    let s = 1.0 / (ax * ax);
    var r: f32;
    var big_s: f32;
    if (ix < 0x4036db6du) {
        r = -9.8649440333e-03 + s * (-6.9385856390e-01 + s * (-1.0558626175e+01 + s * (-6.2375331879e+01 + s * (-1.6239666748e+02 + s * (-1.8460508728e+02 + s * (-8.1287437439e+01 + s * -9.8143291473e+00))))));
        big_s = 1.0 + s * (1.9651271820e+01 + s * (1.3765776062e+02 + s * (4.3456588745e+02 + s * (6.4538726807e+02 + s * (4.2900814819e+02 + s * (1.0863500214e+02 + s * (6.5702495575e+00 + s * -6.0424413532e-02)))))));
    } else {
        r = -9.8649431020e-03 + s * (-7.9928326607e-01 + s * (-1.7757955551e+01 + s * (-1.6063638306e+02 + s * (-6.3756646729e+02 + s * (-1.0250950928e+03 + s * -4.8351919556e+02)))));
        big_s = 1.0 + s * (3.0338060379e+01 + s * (3.2579251099e+02 + s * (1.5367296143e+03 + s * (3.1998581543e+03 + s * (2.5530502930e+03 + s * (4.7452853394e+02 + s * -2.2440952301e+01))))));
    }
    let z = bitcast<f32>(bitcast<u32>(ax) & 0xffffe000u);
    return exp(-z * z - 0.5625) * exp((z - ax) * (z + ax) + r / big_s) / ax;
}

fn erf_f32(xv: f32) -> f32 {
    let bits = bitcast<u32>(xv);
    let ix = bits & 0x7fffffffu;
    let neg = (bits >> 31u) != 0u;
    if (ix < 0x3f580000u) {
        // |x| < 0.84375
        if (ix < 0x31800000u) {
            return 0.125 * (8.0 * xv + 1.0270333290e+00 * xv);
        }
        let z = xv * xv;
        let rr = 1.2837916613e-01 + z * (-3.2504209876e-01 + z * (-2.8481749818e-02 + z * (-5.7702702470e-03 + z * -2.3763017452e-05)));
        let ss = 1.0 + z * (3.9791721106e-01 + z * (6.5022252500e-02 + z * (5.0813062117e-03 + z * (1.3249473704e-04 + z * -3.9602282413e-06))));
        return xv + xv * (rr / ss);
    }
    var yv: f32;
    if (ix < 0x40c00000u) {
        yv = 1.0 - erfc_tail(ix, abs(xv));
    } else {
        yv = 1.0;
    }
    return select(yv, -yv, neg);
}

fn gelu(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf_f32(v * FRAC_1_SQRT_2));
}

// d/dx [x Phi(x)] = Phi(x) + x phi(x)
fn gelu_grad(v: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf_f32(v * FRAC_1_SQRT_2));
    let pdf = exp(-(v * v) * 0.5) * INV_SQRT_2PI;
    return cdf + v * pdf;
}

@compute @workgroup_size(WG)
fn fill_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = flat_id(wid, nwg, li); i < p.n; i += grid_stride(nwg)) {
        y[i] = p.alpha;
    }
}

@compute @workgroup_size(WG)
fn copy_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = flat_id(wid, nwg, li); i < p.n; i += grid_stride(nwg)) {
        y[i] = x[i];
    }
}

// 1 / (1 + e^-x) without overflow: e^-|x| never exceeds 1.
fn sigmoid(v: f32) -> f32 {
    let e = exp(-abs(v));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), v >= 0.0);
}

// The nearest bfloat16, ties to even, as an f32 (the `half` crate's rule): NaN stays NaN.
fn round_bf16(v: f32) -> f32 {
    let u = bitcast<u32>(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { return bitcast<f32>((u | 0x00400000u) & 0xffff0000u); }
    return bitcast<f32>((u + 0x7fffu + ((u >> 16u) & 1u)) & 0xffff0000u);
}

// op 0: relu, 1: gelu, 2: exp, 3: log, 4: sqrt, 5: sigmoid, 6: silu, 7: round to bf16
@compute @workgroup_size(WG)
fn unary_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = flat_id(wid, nwg, li); i < p.n; i += grid_stride(nwg)) {
        let v = x[i];
        switch p.op {
            case 0u: { y[i] = max(v, 0.0); }
            case 1u: { y[i] = gelu(v); }
            case 2u: { y[i] = exp(v); }
            case 3u: { y[i] = log(v); }
            case 4u: { y[i] = sqrt(v); }
            case 5u: { y[i] = sigmoid(v); }
            case 7u: { y[i] = round_bf16(v); }
            default: { y[i] = v * sigmoid(v); }
        }
    }
}

// dx = dy * f'(x); x2 holds dy. ReLU's gradient at 0 is 0 (PyTorch's choice).
@compute @workgroup_size(WG)
fn unary_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = flat_id(wid, nwg, li); i < p.n; i += grid_stride(nwg)) {
        let v = x[i];
        let g = x2[i];
        switch p.op {
            case 0u: { y[i] = select(0.0, g, v > 0.0); }
            case 1u: { y[i] = g * gelu_grad(v); }
            case 2u: { y[i] = g * exp(v); }
            case 3u: { y[i] = g / v; }
            case 4u: { y[i] = g * 0.5 / sqrt(v); }
            case 5u: {
                let s = sigmoid(v);
                y[i] = g * s * (1.0 - s);
            }
            case 7u: { y[i] = round_bf16(g); }
            default: {
                let s = sigmoid(v);
                y[i] = g * s * (1.0 + v * (1.0 - s));
            }
        }
    }
}

// out[i] = a[i] op b[i % b_len]; op 0: add, 1: mul, 2: sub, 3: div
@compute @workgroup_size(WG)
fn binary_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = flat_id(wid, nwg, li); i < p.n; i += grid_stride(nwg)) {
        let a = x[i];
        let b = x2[i % p.b_len];
        switch p.op {
            case 0u: { y[i] = a + b; }
            case 1u: { y[i] = a * b; }
            case 2u: { y[i] = a - b; }
            default: { y[i] = a / b; }
        }
    }
}

// y[o, a, i] = x[o, a, i] s[o, i] (s in x2): squeeze-excitation's gate; b_len = axis * inner.
@compute @workgroup_size(WG)
fn channel_scale_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = flat_id(wid, nwg, li); i < p.n; i += grid_stride(nwg)) {
        let o = i / p.b_len;
        y[i] = x[i] * x2[o * p.inner + (i - o * p.b_len) % p.inner];
    }
}

@compute @workgroup_size(WG)
fn scale_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = flat_id(wid, nwg, li); i < p.n; i += grid_stride(nwg)) {
        y[i] = x[i] * p.alpha;
    }
}

// One invocation per (o, s, i): a sequential sum over its axis range, so the order is fixed.
@compute @workgroup_size(WG)
fn sum_axis_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var idx = flat_id(wid, nwg, li); idx < p.outer * p.nsplit * p.inner; idx += grid_stride(nwg)) {
        let i = idx % p.inner;
        let s = (idx / p.inner) % p.nsplit;
        let o = idx / (p.inner * p.nsplit);
        let a0 = s * p.chunk;
        let a1 = min(p.axis, a0 + p.chunk);
        var acc = 0.0;
        for (var a = a0; a < a1; a++) {
            acc += x[(o * p.axis + a) * p.inner + i];
        }
        y[idx] = acc;
    }
}

