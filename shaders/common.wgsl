// Helpers shared by every family; the generated constants (WG, MM_*, ROW_WG, ATT_*,
// VARIANT) come first. Kernels are named <op>_<fwd|bwd>_f32 where the CPU has that pair.

// The flat index of this invocation in a 1-D launch of WG-wide workgroups spread over an
// (x, y) grid (src/backend/wgpu/context.rs `grid`).
fn flat_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// The flat index of this workgroup in an (x, y) grid of workgroups.
fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// Workgroups in an (x, y) grid: kernels with a workgroup per row loop `row += group_stride(nwg)`.
fn group_stride(nwg: vec3<u32>) -> u32 {
    return nwg.x * nwg.y;
}

// A finite stand-in for -infinity (max and exp behave, no inf arithmetic).
const NEG_BIG: f32 = -3.0e38;

// Invocations in a 1-D launch: kernels loop `i += grid_stride(nwg)`, so the host may launch
// fewer workgroups than elements (`Context::grid1` caps them per adapter).
fn grid_stride(nwg: vec3<u32>) -> u32 {
    return nwg.x * nwg.y * WG;
}
