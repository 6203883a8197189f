// Permute, slice, slice-assign and the per-row gather with its scatter back: explicit copies
// (CPU: backend/cpu/layout.rs).

struct P {
    n: u32,
    rank: u32,
    // slice: [outer, axis, inner], range [start, start + len) of the middle axis;
    // gather: x [outer = n, axis = l, inner = d], len = k rows kept per outer index
    outer: u32,
    axis: u32,
    start: u32,
    len: u32,
    inner: u32,
    _pad: u32,
    // permute: the output's shape and, per output axis, its stride in the input (rank <= 8)
    out_shape: array<vec4<u32>, 2>,
    src_stride: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
// gather: the row indices [n, k], stored as floats (as the losses' labels)
@group(0) @binding(3) var<storage, read> rows: array<f32>;

const NAN_BITS: u32 = 0x7fc00000u;

@compute @workgroup_size(WG)
fn permute_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var idx = flat_id(wid, nwg, li); idx < p.n; idx += grid_stride(nwg)) {
        var rem = idx;
        var src = 0u;
        for (var ax = i32(p.rank) - 1; ax >= 0; ax--) {
            let a = u32(ax);
            let extent = p.out_shape[a / 4u][a % 4u];
            src += (rem % extent) * p.src_stride[a / 4u][a % 4u];
            rem = rem / extent;
        }
        y[idx] = x[src];
    }
}

// The index in the full [outer, axis, inner] tensor of element idx of its slice
// [outer, len, inner] (middle axis from `start`).
fn slice_to_full(idx: u32) -> u32 {
    let block = p.len * p.inner;
    let o = idx / block;
    let rest = idx % block;
    return (o * p.axis + p.start) * p.inner + rest;
}

// y [outer, len, inner] = x [outer, start..start+len, inner]
@compute @workgroup_size(WG)
fn slice_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var idx = flat_id(wid, nwg, li); idx < p.n; idx += grid_stride(nwg)) {
        y[idx] = x[slice_to_full(idx)];
    }
}

// y [outer, start..start+len, inner] = x [outer, len, inner]; the rest of y is kept
@compute @workgroup_size(WG)
fn slice_assign_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var idx = flat_id(wid, nwg, li); idx < p.n; idx += grid_stride(nwg)) {
        y[slice_to_full(idx)] = x[idx];
    }
}

// A gather index that names a row in 0..l.
fn valid_row(v: f32) -> bool {
    return v >= 0.0 && v < f32(p.axis) && fract(v) == 0.0;
}

// y [n, k, d] = x [n, rows[n, k], d]; a row whose index is not in 0..l is NaN (the CPU returns
// an error; a kernel cannot)
@compute @workgroup_size(WG)
fn gather_rows_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var idx = flat_id(wid, nwg, li); idx < p.n; idx += grid_stride(nwg)) {
        let row = idx / p.inner; // o * k + j
        let v = rows[row];
        if (valid_row(v)) {
            y[idx] = x[((row / p.len) * p.axis + u32(v)) * p.inner + idx % p.inner];
        } else {
            y[idx] = bitcast<f32>(NAN_BITS);
        }
    }
}

// y = dx [n, l, d] from x = dy [n, k, d]: dx[o, r, c] = the sum over j = 0, 1, .. of dy[o, j, c]
// where rows[o, j] = r, from 0.0 (the CPU's order, so the same bits); zero where no index points.
// One invocation per element of dx, every one written.
@compute @workgroup_size(WG)
fn gather_rows_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let block = p.axis * p.inner;
    for (var idx = flat_id(wid, nwg, li); idx < p.n; idx += grid_stride(nwg)) {
        let o = idx / block;
        let rest = idx % block;
        let r = f32(rest / p.inner);
        let c = rest % p.inner;
        var acc = 0.0;
        for (var j = 0u; j < p.len; j++) {
            if (rows[o * p.len + j] == r) {
                acc += x[(o * p.len + j) * p.inner + c];
            }
        }
        y[idx] = acc;
    }
}
