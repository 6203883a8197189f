//! The `ssl-engine` command line: parse, then call the library. Errors print one line and exit
//! non-zero.

use clap::{Parser, Subcommand};
use ssl_engine::backend::Backend;
use ssl_engine::backend::cpu::CpuBackend;
use ssl_engine::bench;

#[derive(Parser)]
#[command(name = "ssl-engine", version, about = "Self-supervised pretraining of vision backbones (SimSiam), from scratch in Rust")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmarks: a whole training step, or each kernel family.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(clap::Args, Clone)]
struct BackendArgs {
    /// Compute backend.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "wgpu"])]
    backend: String,
    /// WebGPU adapter index (wgpu backend; default: the best adapter).
    #[arg(long)]
    device: Option<usize>,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Times forward + backward + SGD of a backbone with a 10-class head (median of --runs).
    Step {
        #[command(flatten)]
        backend: BackendArgs,
        /// Backbone preset: resnet18-cifar, resnet34-cifar, resnet50-cifar, resnet18, vit-tiny, vit-small, ...
        #[arg(long, default_value = "resnet18-cifar")]
        model: String,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Input image side in pixels.
        #[arg(long, default_value_t = 32)]
        image_size: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Times each kernel family on ResNet-18 (CIFAR) and ViT-tiny shapes.
    Kernels {
        #[command(flatten)]
        backend: BackendArgs,
        /// Batch size the shapes are built for.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Only kernels whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

/// Calls `$f(&backend)` with the backend the flags name (a generic function of `B: Backend`).
macro_rules! with_backend {
    ($args:expr, $f:expr) => {
        match $args.backend.as_str() {
            #[cfg(feature = "wgpu")]
            "wgpu" => $f(&ssl_engine::backend::wgpu::WgpuBackend::new($args.device)?),
            "cpu" => $f(&CpuBackend::new($args.threads)?),
            other => Err(ssl_engine::Error::Other(format!("backend {other} is not compiled in (cargo feature)"))),
        }
    };
}

fn run(cli: Cli) -> ssl_engine::Result<()> {
    match cli.cmd {
        Cmd::Bench { what } => match what {
            BenchCmd::Step { backend, model, batch, image_size, warmup, runs } => with_backend!(backend, |b: &_| bench_step(b, &model, batch, image_size, warmup, runs)),
            BenchCmd::Kernels { backend, batch, filter, runs } => with_backend!(backend, |b: &_| bench_kernels(b, batch, filter.as_deref(), runs)),
        },
    }
}

fn bench_step<B: Backend>(b: &B, model: &str, batch: usize, image_size: usize, warmup: usize, runs: usize) -> ssl_engine::Result<()> {
    println!("backend: {}", b.name());
    let t = bench::bench_step(b, model, batch, image_size, warmup, runs)?;
    println!("{}: median {:.4} s (min {:.4}, max {:.4}), {}", t.name, t.median_s, t.min_s, t.max_s, t.rate());
    Ok(())
}

fn bench_kernels<B: Backend>(b: &B, batch: usize, filter: Option<&str>, runs: usize) -> ssl_engine::Result<()> {
    println!("backend: {}", b.name());
    for t in bench::bench_kernels(b, batch, filter, runs)? {
        println!("{:<42} {:>10.3} ms  {}", t.name, t.median_s * 1e3, t.rate());
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
