//! The conformance suite on the CPU backend in f32 (poisoned allocations, 1 and 2 threads)
//! against the CPU backend in f64.

mod common;

use ssl_engine::DType;

#[test]
fn cpu_f32_conforms_to_f64_reference() {
    for threads in [1, 2] {
        let dev = common::cpu(threads).with_poison();
        let r = common::conformance::run_suite(&dev, DType::F32, 1e-5, 42 + threads as u64);
        eprintln!("cpu f32, {threads} thread(s): {} checks, worst relative L2 {:.2e}", r.lines.len(), r.worst);
    }
}

/// `Precision::Bf16` on the CPU in f32 against the CPU in f64 with the same rounding points
/// (<= 1e-3) and against the f64 reference without them (<= 1e-2, and visibly not exact: the
/// rounding points ran).
#[test]
fn cpu_bf16_conforms_to_the_f64_bf16_reference() {
    use common::conformance::{bf16_cases, cross_precision, run_cases, run_cases_against};
    use ssl_engine::backend::Precision;
    use ssl_engine::rng::Rng;
    let dev = common::cpu(2).with_poison().with_precision(Precision::Bf16);
    let reference = common::cpu(2).with_precision(Precision::Bf16);
    let r = run_cases_against(&dev, &reference, DType::F32, 1e-3, &mut Rng::new(7), bf16_cases());
    eprintln!("cpu bf16 vs f64 bf16: {} checks, worst relative L2 {:.2e}", r.lines.len(), r.worst);
    let r = run_cases(&dev, DType::F32, 1e-2, &mut Rng::new(7), cross_precision(bf16_cases()));
    eprintln!("cpu bf16 vs f64 fp32: {} checks, worst relative L2 {:.2e}", r.lines.len(), r.worst);
    assert!(r.worst > 1e-4, "bf16 results as exact as fp32 ({:.2e}): no rounding point ran", r.worst);
}
