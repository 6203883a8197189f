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
