//! The `ssl-engine` command line: parse (the grammar is `cli.rs`), pick the backend once, call
//! the library. Errors print one line and exit non-zero (3 for a non-finite loss, 4 out of GPU
//! memory, 130 after Ctrl-C / SIGTERM).

mod cli;

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use cli::{BenchCmd, Cli, Cmd, Device, EmbedArgs, EvalArgs, EvalCmd};
use ssl_engine::backend::prelude::*;
use ssl_engine::config::Config;
use ssl_engine::eval::backbone::{self, EvalInputs, EvalSetup};
use ssl_engine::eval::linear::ProbeFlags;
use ssl_engine::{Error, Result, bench, eval};

/// A command with everything it needs but the backend, which `dispatch` builds once.
enum Job {
    Train { cfg: Box<Config>, resume: Option<PathBuf>, quiet: bool, started: Instant },
    Study { cfg: Box<Config>, quiet: bool },
    Eval(EvalCmd),
    Embed(EmbedArgs),
    BenchStep { model: String, batch: usize, image_size: usize, warmup: usize, runs: usize, simsiam: bool, graph: bool },
    BenchKernels { batch: usize, filter: Option<String>, runs: usize },
}

/// The one place a backend name becomes a backend: runs `job` on it, computing convolutions,
/// matmuls and attention in `d.precision` (the WebGPU backend refuses bf16).
fn dispatch(d: &Device, job: Job) -> Result<()> {
    match d.backend.as_str() {
        "cpu" => job.run(&ssl_engine::backend::cpu::CpuBackend::new(d.threads)?.with_precision(d.precision)),
        // SSL_ENGINE_TF32=1 runs matmul and convolutions on TF32 tensor cores.
        "cuda" => {
            let tf32 = std::env::var("SSL_ENGINE_TF32").is_ok_and(|v| v == "1");
            job.run(&ssl_engine::backend::cuda::CudaBackend::new(d.index.unwrap_or(0))?.with_tf32(tf32).with_precision(d.precision))
        }
        #[cfg(feature = "wgpu")]
        "wgpu" if d.precision == ssl_engine::backend::Precision::Bf16 => Err(Error::Config(
            "precision \"bf16\" needs the cpu or cuda backend: the WebGPU backend computes in FP32 only (use --precision fp32)".into(),
        )),
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            let b = ssl_engine::backend::wgpu::WgpuBackend::new(d.index)?;
            eprintln!("wgpu adapter: {}", b.name());
            job.run(&b)
        }
        other => Err(Error::Config(format!(
            "backend {other:?} is not available in this build of ssl-engine (available: cpu, cuda{})",
            if cfg!(feature = "wgpu") { ", wgpu" } else { "" }
        ))),
    }
}

impl Job {
    fn run<B: Backend>(self, b: &B) -> Result<()> {
        match self {
            Job::Train { cfg, resume, quiet, started } => train(b, &cfg, resume.as_deref(), quiet, started),
            Job::Study { cfg, quiet } => {
                let outcome = ssl_engine::study::run(b, &cfg, !quiet)?;
                print!("{}", ssl_engine::study::report::markdown(&outcome.cells));
                let (n, computed) = (outcome.cells.len(), outcome.computed);
                let cells = cfg.study.out.join("cells");
                println!("{n} cells ({computed} computed now, {} from the cache in {})", n - computed, cells.display());
                outcome.files.iter().for_each(|p| println!("wrote {}", p.display()));
                Ok(())
            }
            Job::Eval(EvalCmd::Knn { common, k, t }) => {
                let EvalSetup { mut cfg, model, train, test } = backbone::open(b, &inputs(&common))?;
                cfg.monitor.knn_k = k;
                cfg.monitor.knn_t = t;
                let m = eval::eval_knn(&model, &train, &test, &cfg)?;
                print!("{}", m.report(&format!("kNN (k={k}, T={t}) of {}", common.net.checkpoint)));
                write_json(&common.json, &m)
            }
            Job::Eval(EvalCmd::Linear { common, epochs, optimizer, lr, batch_size, labels_per_class, finetune, weight_decay, raw_features }) => {
                let EvalSetup { cfg, model, train, test } = backbone::open(b, &inputs(&common))?;
                let flags = ProbeFlags { epochs, batch_size, optimizer, lr, weight_decay, finetune, raw_features };
                let probe = flags.probe(&cfg.linear);
                let subset = labels_per_class.map(|n| eval::labels_per_class(&train, n, cfg.seed));
                let what = if finetune { "fine-tuning" } else { "linear probe" };
                let progress = |e: usize, l: f64| {
                    if e == 0 || (e + 1).is_multiple_of(10) {
                        eprintln!("{what} epoch {}/{epochs}: loss {l:.4}", e + 1);
                    }
                };
                let r = if finetune {
                    eval::eval_finetune(model, &train, &test, &cfg, &probe, subset.as_deref(), progress)?
                } else {
                    eval::eval_linear(&model, &train, &test, &cfg, &probe, subset.as_deref(), progress)?
                };
                print!("{}", r.metrics.report(&format!("{what} of {} ({} training images)", common.net.checkpoint, r.train_images)));
                write_json(&common.json, &r)
            }
            Job::Embed(a) => {
                // The images are loaded as both sets: the same ones, counted in the same line.
                let common = EvalArgs { net: a.net.clone(), data: a.data.clone(), test_data: Some(a.data.clone()), json: None };
                let EvalSetup { cfg, model, train, .. } = backbone::open(b, &inputs(&common))?;
                let (f, l) = eval::embed(&model, &train, &cfg, &a.out)?;
                println!("wrote {} and {}", f.display(), l.display());
                Ok(())
            }
            Job::BenchStep { model, batch, image_size, warmup, runs, simsiam, graph } => {
                println!("backend: {}", b.name());
                let t = if simsiam {
                    bench::bench_simsiam_step(b, &model, batch, image_size, warmup, runs, graph)?
                } else {
                    bench::bench_step(b, &model, batch, image_size, warmup, runs)?
                };
                println!("{}: median {:.4} s (min {:.4}, max {:.4}), {}", t.name, t.median_s, t.min_s, t.max_s, t.rate());
                Ok(())
            }
            Job::BenchKernels { batch, filter, runs } => {
                println!("backend: {}", b.name());
                for t in bench::bench_kernels(b, batch, filter.as_deref(), runs)? {
                    println!("{:<42} {:>10.3} ms  {}", t.name, t.median_s * 1e3, t.rate());
                }
                Ok(())
            }
        }
    }
}

/// `train`: the run, its one-line totals, then the random-vs-pretrained table when the recipe
/// asks for it (measured on the checkpoint file the run leaves behind), else the kNN line.
fn train<B: Backend>(b: &B, cfg: &Config, resume: Option<&Path>, quiet: bool, started: Instant) -> Result<()> {
    let s = ssl_engine::train::train(b, cfg, resume, ssl_engine::interrupt::install(), !quiet)?;
    let last = s.out.join("last.safetensors");
    let report = cfg.report.compare_random.then(|| eval::summary::compare_with_random(b, cfg, &last, started)).transpose()?;
    println!("trained {} epochs ({} steps) at {:.1} images/s; run folder {}", s.epochs_done, s.steps_done, s.images_per_s, s.out.display());
    if let Some(l) = s.last_loss {
        println!("final loss {l:.4}");
    }
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    if let Some(r) = report {
        let path = r.write(&s.out)?;
        println!("\n{}\n(written to {})", r.markdown().trim_end(), path.display());
    } else {
        match (s.knn_init, s.knn_final) {
            (Some(a), Some(b)) => println!("kNN top-1: randomly initialised backbone {} -> pretrained {}", pct(a), pct(b)),
            (None, Some(b)) => println!("kNN top-1: {}", pct(b)),
            _ => {}
        }
    }
    Ok(())
}

/// What `backbone::open` reads from the eval flags; the test images default to the data's.
fn inputs(a: &EvalArgs) -> EvalInputs<'_> {
    let n = &a.net;
    EvalInputs {
        checkpoint: &n.checkpoint,
        model: n.model.as_deref(),
        config: n.config.as_deref(),
        overrides: &n.overrides,
        data: &a.data,
        test_data: a.test_data.as_deref().unwrap_or(&a.data),
    }
}

fn write_json(path: &Option<PathBuf>, v: &impl serde::Serialize) -> Result<()> {
    if let Some(p) = path {
        let text = serde_json::to_string_pretty(v).map_err(|e| Error::Other(e.to_string()))?;
        ssl_engine::checkpoint::write_atomic(p, text.as_bytes())?;
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    // Every command stops cleanly on the first Ctrl-C / SIGTERM (exit 130), and at once on a second.
    ssl_engine::interrupt::install();
    let (device, job) = match cli.cmd {
        Cmd::Train { config, run, resume, skip_nonfinite } => {
            let started = Instant::now();
            let (mut cfg, device) = run.dev.recipe(config.as_deref(), &run.overrides)?;
            if let Some(n) = skip_nonfinite {
                cfg.skip_nonfinite = n;
            }
            (device, Job::Train { cfg: Box::new(cfg), resume, quiet: run.quiet, started })
        }
        Cmd::Study { config, run } => {
            let (cfg, device) = run.dev.recipe(Some(&config), &run.overrides)?;
            (device, Job::Study { cfg: Box::new(cfg), quiet: run.quiet })
        }
        Cmd::Eval { what } => {
            let (EvalCmd::Knn { common, .. } | EvalCmd::Linear { common, .. }) = &what;
            (common.net.dev.resolve()?, Job::Eval(what))
        }
        Cmd::Embed { args } => (args.net.dev.resolve()?, Job::Embed(args)),
        Cmd::Export { checkpoint, out } => {
            let n = eval::export(&ssl_engine::backend::cpu::CpuBackend::new(0)?, &checkpoint, &out)?;
            println!("wrote {n} tensors to {}", out.display());
            return Ok(());
        }
        Cmd::Plot { run } => {
            for p in ssl_engine::plot::plot_run(&run)? {
                println!("wrote {}", p.display());
            }
            return Ok(());
        }
        Cmd::Bench { what: BenchCmd::Step { dev, model, batch, image_size, simsiam, dry_run: true, no_graph, .. } } => {
            if dev.backend != Some(ssl_engine::config::BackendKind::Cuda) || !simsiam {
                return Err(Error::Config("--dry-run is the CUDA step census: use it with --backend cuda --simsiam".into()));
            }
            print!("{}", bench::dry_run_census_table(&model, batch, image_size, dev.resolve()?.precision, !no_graph)?);
            return Ok(());
        }
        Cmd::Bench { what: BenchCmd::Kernels { static_report: true, filter, .. } } => {
            print!("{}", bench::static_kernel_table(filter.as_deref())?);
            return Ok(());
        }
        Cmd::Bench { what: BenchCmd::Loader { data, workers, batch, batches, image_size, cache, recipe, views } } => {
            println!("{}", bench::bench_loader(&bench::LoaderBench { data, workers, batch, batches, image_size, cache, recipe, views })?);
            return Ok(());
        }
        Cmd::Bench { what: BenchCmd::Step { dev, model, batch, image_size, warmup, runs, simsiam, no_graph, .. } } => {
            (dev.resolve()?, Job::BenchStep { model, batch, image_size, warmup, runs, simsiam, graph: !no_graph })
        }
        Cmd::Bench { what: BenchCmd::Kernels { dev, batch, filter, runs, .. } } => (dev.resolve()?, Job::BenchKernels { batch, filter, runs }),
    };
    dispatch(&device, job)
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
