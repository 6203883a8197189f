// Batched matmul: C[z] (m x n) = op(A[z]) (m x k) . op(B[z]) (k x n), row-major operands,
// A stored (k x m) when ta, B stored (n x k) when tb (CPU: backend/cpu/matmul.rs).

struct P {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    ta: u32,
    tb: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// Index of element (r, c) of an R x C operand stored row-major, or transposed (C x R) when
// `trans`.
fn operand_index(r: u32, c: u32, rows: u32, cols: u32, trans: bool) -> u32 {
    return select(r * cols + c, c * rows + r, trans);
}

// op(A)[z] (i, kk), zero past m
fn gemm_a(mode: u32, z: u32, i: u32, kk: u32) -> f32 {
    if (i >= p.m) {
        return 0.0;
    }
    return a[z * p.m * p.k + operand_index(i, kk, p.m, p.k, p.ta != 0u)];
}

// op(B)[z] (kk, j), zero past n
fn gemm_b(mode: u32, z: u32, kk: u32, j: u32) -> f32 {
    if (j >= p.n) {
        return 0.0;
    }
    return b[z * p.k * p.n + operand_index(kk, j, p.k, p.n, p.tb != 0u)];
}

// Grid: (ceil(n / MM_BN), ceil(m / MM_BM), min(batch, limit)); z loops over the batch.
@compute @workgroup_size(MM_TX, MM_TY, 1)
fn matmul_fwd_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * MM_BM;
    let col0 = wid.x * MM_BN;
    for (var z = wid.z; z < p.batch; z += nwg.z) {
        var acc = gemm_tile(0u, z, row0, col0, 0u, p.k, lid, li);
        let base = z * p.m * p.n;
        for (var i = 0u; i < MM_TM; i++) {
            let r = row0 + lid.y * MM_TM + i;
            for (var j = 0u; j < MM_TN; j++) {
                let col = col0 + lid.x * MM_TN + j;
                if (r < p.m && col < p.n) {
                    c[base + r * p.n + col] = gemm_at(&acc, i, j);
                }
            }
        }
    }
}

