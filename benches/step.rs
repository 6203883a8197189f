//! `cargo bench`: the whole-step benchmark (ResNet-18 CIFAR, batch 64) and the kernel table on
//! the CPU backend. Compare with `python benches/pytorch_step.py` on the same machine.

use ssl_engine::backend::cpu::CpuBackend;
use ssl_engine::bench;

fn main() -> ssl_engine::Result<()> {
    let b = CpuBackend::new(0)?;
    let t = bench::bench_step(&b, "resnet18-cifar", 64, 32, 2, 5)?;
    println!("{}: median {:.4} s, {}", t.name, t.median_s, t.rate());
    for t in bench::bench_kernels(&b, 64, None, 5)? {
        println!("{:<42} {:>10.3} ms  {}", t.name, t.median_s * 1e3, t.rate());
    }
    Ok(())
}
