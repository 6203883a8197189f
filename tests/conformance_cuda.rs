//! The backend-conformance suite on a real GPU, f32 against the CPU backend in f64: the exact
//! FP32 kernels at 1e-5 relative L2, the TF32 tensor-core kernels at 1e-2; the suite's shapes,
//! the larger ones the host emulation runs (split-K, multi-block, several attention key tiles,
//! head dim 128) and model-sized ones the emulation cannot afford. Kernel outputs are
//! NaN-poisoned before each launch, so an unwritten element fails.
//! Without a GPU (or libcuda / libnvrtc) it skips (tests/common/skip.rs: CI allows the
//! "cuda-device" reason; SSL_ENGINE_REQUIRE_GPU=1, set by benches/gpu_run.sh, makes it fail).

mod common;

use common::conformance::{large_cases, model_sized_cases, run_cases};
use ssl_engine::DType;
use ssl_engine::backend::prelude::*;
use ssl_engine::rng::Rng;

#[test]
fn cuda_f32_conforms_to_f64_reference() {
    let Some(dev) = common::cuda_or_skip() else { return };
    for seed in [42, 7] {
        let r = common::conformance::run_suite(&dev, DType::F32, 1e-5, seed);
        for l in &r.lines {
            println!("{l}");
        }
        println!("{}: {} checks, worst relative L2 {:.2e}", dev.name(), r.lines.len(), r.worst);
    }
}

#[test]
fn cuda_tf32_conforms_loosely() {
    let Some(dev) = common::cuda_or_skip() else { return };
    let dev = dev.with_tf32(true);
    let r = common::conformance::run_suite(&dev, DType::F32, 1e-2, 43);
    println!("{} tf32: {} checks, worst relative L2 {:.2e}", dev.name(), r.lines.len(), r.worst);
    assert!(r.worst > 1e-7, "TF32 results are exact: the tensor-core path did not run");
}

#[test]
fn cuda_conforms_on_split_multi_block_and_model_sized_shapes() {
    let Some(dev) = common::cuda_or_skip() else { return };
    for tf32 in [false, true] {
        let dev = dev.clone().with_tf32(tf32);
        let tol = if tf32 { 1e-2 } else { 1e-5 };
        let mut rng = Rng::new(5);
        let cases: Vec<_> = large_cases().into_iter().chain(model_sized_cases()).collect();
        let cases = if tf32 { common::conformance::cross_precision(cases) } else { cases };
        let r = run_cases(&dev, DType::F32, tol, &mut rng, cases);
        for l in &r.lines {
            println!("tf32 {tf32}: {l}");
        }
        println!("{} tf32 {tf32}: {} checks, worst relative L2 {:.2e}", dev.name(), r.lines.len(), r.worst);
    }
}

/// `precision = "bf16"` on the GPU (bf16 tensor cores in the GEMM core, rounding inside the
/// kernels): convolutions, matmuls, attention and linear layers on the suite's, the split-K /
/// multi-tile and the model-sized shapes, against the CPU's bf16 reference in f64 (<= 1e-3).
#[test]
fn cuda_bf16_conforms_to_the_cpu_bf16_reference() {
    use common::conformance::{bf16_cases_of, cases, run_cases_against};
    use ssl_engine::backend::Precision;
    let Some(dev) = common::cuda_or_skip() else { return };
    let dev = dev.with_precision(Precision::Bf16);
    let reference = common::cpu(0).with_precision(Precision::Bf16);
    let all = cases().into_iter().chain(large_cases()).chain(model_sized_cases()).collect();
    let r = run_cases_against(&dev, &reference, DType::F32, 1e-3, &mut Rng::new(11), bf16_cases_of(all));
    for l in &r.lines {
        println!("bf16: {l}");
    }
    println!("{} bf16: {} checks, worst relative L2 {:.2e}", dev.name(), r.lines.len(), r.worst);
}

/// gather_rows and its scatter back equal the CPU bit for bit on the GPU (no atomics: each
/// element of dx sums its repeats in the CPU's order); a bad index gives NaN rows.
#[test]
fn cuda_gather_rows_equals_cpu_bitwise() {
    let Some(dev) = common::cuda_or_skip() else { return };
    let dev = dev.with_poison();
    let worst = common::conformance::gather_rows_bitwise(&dev, 23);
    println!("{} gather_rows: max |cuda - cpu| {worst:.1e}", dev.name());
    common::conformance::gather_rows_bad_index_is_nan(&dev);
}
