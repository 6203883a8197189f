// Max-pool and global average pool over NHWC (CPU: backend/cpu/pool.rs).

struct P {
    n: u32,
    h: u32,
    w: u32,
    c: u32,
    k: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
    // global average pool: x [n, axis, inner], inv = 1 / axis
    axis: u32,
    inner: u32,
    inv: f32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

struct Best {
    v: f32,
    // pixel index (iy * w + ix) within the image; 0xffffffff when the window is empty
    at: u32,
}

// The first maximum of window (oy, ox) of channel c (a NaN wins, as in PyTorch).
fn window_max(img: u32, oy: u32, ox: u32, c: u32) -> Best {
    var best = Best(NEG_BIG, 0xffffffffu);
    for (var i = 0u; i < p.k; i++) {
        let iy = i32(oy * p.stride + i) - i32(p.pad);
        if (iy < 0 || iy >= i32(p.h)) {
            continue;
        }
        for (var j = 0u; j < p.k; j++) {
            let ix = i32(ox * p.stride + j) - i32(p.pad);
            if (ix < 0 || ix >= i32(p.w)) {
                continue;
            }
            let at = u32(iy) * p.w + u32(ix);
            let v = x[(img * p.h * p.w + at) * p.c + c];
            if (best.at == 0xffffffffu || v > best.v || (is_nan(v) && !is_nan(best.v))) {
                best = Best(v, at);
            }
        }
    }
    return best;
}

// (image, y, x, channel) of flat index idx into an NHWC tensor of h x w pixels and p.c channels.
fn nhwc_coords(idx: u32, h: u32, w: u32) -> vec4<u32> {
    return vec4<u32>(idx / (p.c * w * h), (idx / (p.c * w)) % h, (idx / p.c) % w, idx % p.c);
}

@compute @workgroup_size(WG)
fn maxpool2d_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var idx = flat_id(wid, nwg, li); idx < p.n * p.oh * p.ow * p.c; idx += grid_stride(nwg)) {
        let o = nhwc_coords(idx, p.oh, p.ow);
        out[idx] = window_max(o.x, o.y, o.z, o.w).v;
    }
}

// A gather over the windows that contain input pixel (iy, ix), in (oy, ox) order: the same
// order in which the CPU scatters, and no atomics.
@compute @workgroup_size(WG)
fn maxpool2d_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var idx = flat_id(wid, nwg, li); idx < p.n * p.h * p.w * p.c; idx += grid_stride(nwg)) {
        let at = nhwc_coords(idx, p.h, p.w);
        let img = at.x;
        let iy = at.y;
        let ix = at.z;
        let c = at.w;
        let me = iy * p.w + ix;
        let s = i32(p.stride);
        let ty = i32(iy + p.pad) - i32(p.k) + 1;
        let tx = i32(ix + p.pad) - i32(p.k) + 1;
        let oy0 = u32(select(0, (ty + s - 1) / s, ty > 0));
        let ox0 = u32(select(0, (tx + s - 1) / s, tx > 0));
        let oy1 = min(p.oh, (iy + p.pad) / p.stride + 1u);
        let ox1 = min(p.ow, (ix + p.pad) / p.stride + 1u);
        var acc = 0.0;
        for (var oy = oy0; oy < oy1; oy++) {
            for (var ox = ox0; ox < ox1; ox++) {
                if (window_max(img, oy, ox, c).at == me) {
                    acc += dy[((img * p.oh + oy) * p.ow + ox) * p.c + c];
                }
            }
        }
        out[idx] = acc;
    }
}

// y[n, c] = (sum_p x[n, p, c]) * inv, summed in order
@compute @workgroup_size(WG)
fn avgpool_global_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var idx = flat_id(wid, nwg, li); idx < p.n * p.inner; idx += grid_stride(nwg)) {
        let c = idx % p.inner;
        let img = idx / p.inner;
        var acc = 0.0;
        for (var q = 0u; q < p.axis; q++) {
            acc += x[(img * p.axis + q) * p.inner + c];
        }
        out[idx] = acc * p.inv;
    }
}

@compute @workgroup_size(WG)
fn avgpool_global_bwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var idx = flat_id(wid, nwg, li); idx < p.n * p.axis * p.inner; idx += grid_stride(nwg)) {
        let c = idx % p.inner;
        let img = idx / (p.axis * p.inner);
        out[idx] = dy[img * p.inner + c] * p.inv;
    }
}
