//! The backend-conformance suite on the CUDA backend, f32 against the CPU backend in f64:
//! the exact FP32 kernels at 1e-5 relative L2, the TF32 tensor-core kernels at 1e-2.
//! Without a GPU (or libcuda / libnvrtc) it prints "skipped: <reason>" and passes.

mod common;

use ssl_engine::DType;
use ssl_engine::backend::Backend;
use ssl_engine::backend::cuda::CudaBackend;

fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("skipped: {e}");
            None
        }
    }
}

#[test]
fn cuda_f32_conforms_to_f64_reference() {
    let Some(dev) = gpu() else { return };
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
    let Some(dev) = gpu() else { return };
    let dev = dev.with_tf32(true);
    let r = common::conformance::run_suite(&dev, DType::F32, 1e-2, 43);
    println!("{}: {} checks, worst relative L2 {:.2e}", dev.name(), r.lines.len(), r.worst);
}
