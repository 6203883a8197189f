// The tiled, register-blocked GEMM core shared by matmul.wgsl and conv.wgsl (included in
// those two modules only). The including module defines the operands of its (implicit) GEMM:
//   fn gemm_a(mode: u32, z: u32, i: u32, kk: u32) -> f32   // A[i, kk], 0 when i is out of range
//   fn gemm_b(mode: u32, z: u32, kk: u32, j: u32) -> f32   // B[kk, j], 0 when j is out of range
// A workgroup of MM_TX x MM_TY invocations computes an MM_BM x MM_BN tile of C; invocation
// (tx, ty) owns the MM_TM x MM_TN block at rows ty * MM_TM.., columns tx * MM_TN..
// (MM_TM and MM_TN are multiples of 4). Each step stages an MM_BK-deep slice of A and B in
// workgroup memory as vec4s, so the inner loop does one 128-bit load per four values (the
// usual LDS.128 pattern; on llvmpipe it is what makes the loop arithmetic-bound).
// The k-reduction runs in one fixed order, so results are deterministic; each slice is summed
// on its own and then added to the accumulator (blocked summation: rounding error grows with
// k / MM_BK + MM_BK rather than k, keeping deep convolutions, k = 4608, as accurate as the CPU).

const MM_BM: u32 = MM_TY * MM_TM;
const MM_BN: u32 = MM_TX * MM_TN;
const MM_THREADS: u32 = MM_TX * MM_TY;
const MM_TM4: u32 = MM_TM / 4u;
const MM_TN4: u32 = MM_TN / 4u;
const MM_ACC: u32 = MM_TM * MM_TN4;

var<workgroup> mm_as: array<vec4<f32>, MM_BK * MM_BM / 4u>; // [kk][i / 4]
var<workgroup> mm_bs: array<vec4<f32>, MM_BK * MM_BN / 4u>; // [kk][j / 4]

// The tile with corner (row0, col0), reducing kk over [k0, k1). `mode` and `z` are passed to
// the operand functions (conv direction; batch or group index). Element (i, j) of the
// invocation's block is acc[i * MM_TN4 + j / 4][j % 4].
fn gemm_tile(mode: u32, z: u32, row0: u32, col0: u32, k0: u32, k1: u32, lid: vec3<u32>, li: u32) -> array<vec4<f32>, MM_ACC> {
    var acc: array<vec4<f32>, MM_ACC>;
    for (var kb = k0; kb < k1; kb += MM_BK) {
        for (var e = li; e < MM_BK * MM_BM / 4u; e += MM_THREADS) {
            let kk = e % MM_BK;
            let i = row0 + (e / MM_BK) * 4u;
            var v = vec4<f32>(0.0);
            if (kb + kk < k1) {
                v = vec4<f32>(gemm_a(mode, z, i, kb + kk), gemm_a(mode, z, i + 1u, kb + kk), gemm_a(mode, z, i + 2u, kb + kk), gemm_a(mode, z, i + 3u, kb + kk));
            }
            mm_as[kk * (MM_BM / 4u) + e / MM_BK] = v;
        }
        for (var e = li; e < MM_BK * MM_BN / 4u; e += MM_THREADS) {
            let j4 = e % (MM_BN / 4u);
            let kk = e / (MM_BN / 4u);
            let j = col0 + j4 * 4u;
            var v = vec4<f32>(0.0);
            if (kb + kk < k1) {
                v = vec4<f32>(gemm_b(mode, z, kb + kk, j), gemm_b(mode, z, kb + kk, j + 1u), gemm_b(mode, z, kb + kk, j + 2u), gemm_b(mode, z, kb + kk, j + 3u));
            }
            mm_bs[kk * (MM_BN / 4u) + j4] = v;
        }
        workgroupBarrier();
        var part: array<vec4<f32>, MM_ACC>;
        for (var kk = 0u; kk < MM_BK; kk++) {
            var ar: array<vec4<f32>, MM_TM4>;
            var br: array<vec4<f32>, MM_TN4>;
            for (var v = 0u; v < MM_TM4; v++) {
                ar[v] = mm_as[kk * (MM_BM / 4u) + lid.y * MM_TM4 + v];
            }
            for (var v = 0u; v < MM_TN4; v++) {
                br[v] = mm_bs[kk * (MM_BN / 4u) + lid.x * MM_TN4 + v];
            }
            for (var i = 0u; i < MM_TM; i++) {
                let a = vec4<f32>(ar[i / 4u][i % 4u]);
                for (var v = 0u; v < MM_TN4; v++) {
                    part[i * MM_TN4 + v] = fma(a, br[v], part[i * MM_TN4 + v]);
                }
            }
        }
        for (var e = 0u; e < MM_ACC; e++) {
            acc[e] += part[e];
        }
        workgroupBarrier();
    }
    return acc;
}

// The value of element (i, j) of an invocation's block.
fn gemm_at(acc: ptr<function, array<vec4<f32>, MM_ACC>>, i: u32, j: u32) -> f32 {
    return (*acc)[i * MM_TN4 + j / 4u][j % 4u];
}
