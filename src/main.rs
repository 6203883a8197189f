//! The `ssl-engine` command line: parse, then call the library. Errors print one line and exit
//! non-zero.

use clap::{Parser, Subcommand};
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
    /// Compute backend (cuda: GPU 0; SSL_ENGINE_TF32=1 turns on TF32 tensor cores).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    backend: String,
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

/// Binds `$b` to the backend `$args` names and runs `$body` with it.
macro_rules! on_backend {
    ($args:expr, $b:ident => $body:expr) => {
        match $args.backend.as_str() {
            "cuda" => {
                let tf32 = std::env::var("SSL_ENGINE_TF32").is_ok_and(|v| v == "1");
                let $b = ssl_engine::backend::cuda::CudaBackend::new(0)?.with_tf32(tf32);
                $body
            }
            _ => {
                let $b = CpuBackend::new($args.threads)?;
                $body
            }
        }
    };
}

fn run(cli: Cli) -> ssl_engine::Result<()> {
    match cli.cmd {
        Cmd::Bench { what } => match what {
            BenchCmd::Step { backend, model, batch, image_size, warmup, runs } => on_backend!(backend, b => {
                println!("backend: {}", ssl_engine::backend::Backend::name(&b));
                let t = bench::bench_step(&b, &model, batch, image_size, warmup, runs)?;
                println!("{}: median {:.4} s (min {:.4}, max {:.4}), {}", t.name, t.median_s, t.min_s, t.max_s, t.rate());
            }),
            BenchCmd::Kernels { backend, batch, filter, runs } => on_backend!(backend, b => {
                println!("backend: {}", ssl_engine::backend::Backend::name(&b));
                for t in bench::bench_kernels(&b, batch, filter.as_deref(), runs)? {
                    println!("{:<42} {:>10.3} ms  {}", t.name, t.median_s * 1e3, t.rate());
                }
            }),
        },
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
