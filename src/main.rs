//! The `ssl-engine` command line: parse (the grammar is `cli.rs`), pick the backend once, call
//! the library. Errors print one line and exit non-zero (3 for a non-finite loss, 4 out of GPU
//! memory, 130 after Ctrl-C / SIGTERM).

mod cli;

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use cli::{BackboneArgs, BenchCmd, Cli, Cmd, Device, EmbedArgs, EvalArgs, EvalCmd};
use ssl_engine::backend::prelude::*;
use ssl_engine::config::Config;
use ssl_engine::eval::backbone::{self, EvalInputs, EvalSetup};
use ssl_engine::eval::linear::ProbeFlags;
use ssl_engine::{Error, Result, bench, eval};

/// A command with everything it needs but the backend, which `dispatch` builds once.
enum Job {
    Train { cfg: Box<Config>, start: TrainStart, quiet: bool, started: Instant, ranks: Ranks },
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
            if b.is_software() {
                eprintln!(
                    "note: this WebGPU adapter is a software device (a CPU rasteriser such as mesa's llvmpipe, not a GPU): \
                     it computes correctly but far slower than `--backend cpu`, which is what to use on this machine"
                );
            }
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
            Job::Train { cfg, start, quiet, started, ranks } => train(b, &cfg, &start, quiet, started, &ranks),
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
                let EvalSetup { mut cfg, model, train, test } = backbone::open(b, &eval_inputs(&common))?;
                cfg.monitor.knn_k = k.unwrap_or(cfg.monitor.knn_k);
                cfg.monitor.knn_t = t.unwrap_or(cfg.monitor.knn_t);
                let (k, t) = (cfg.monitor.knn_k, cfg.monitor.knn_t);
                let m = eval::eval_knn(&model, &train, &test.expect("eval loads a test set"), &cfg)?;
                print!("{}", m.report(&format!("kNN (k={k}, T={t}) of {}", common.net.checkpoint)));
                write_json(&common.json, &m)
            }
            Job::Eval(EvalCmd::Linear { common, epochs, optimizer, lr, batch_size, labels_per_class, finetune, weight_decay, raw_features }) => {
                let EvalSetup { cfg, model, train, test } = backbone::open(b, &eval_inputs(&common))?;
                let test = test.expect("eval loads a test set");
                let flags = ProbeFlags { epochs, batch_size, optimizer, lr, weight_decay, finetune, raw_features };
                let probe = flags.probe(&cfg.linear);
                let epochs = probe.epochs;
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
                // One set of images: no test set is loaded.
                let EvalSetup { cfg, model, train, .. } = backbone::open(b, &inputs(&a.net, &a.data, None))?;
                let w = eval::embed(&model, &train, &cfg, &a.out)?;
                println!(
                    "embedded {} images of {} ({} features each): wrote {}, {} and {}",
                    train.len(),
                    a.data.display(),
                    model.backbone.feature_dim(),
                    w.features.display(),
                    w.labels.display(),
                    w.files.display()
                );
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
fn train<B: Backend>(b: &B, cfg: &Config, start: &TrainStart, quiet: bool, started: Instant, ranks: &Ranks) -> Result<()> {
    let (opts, interrupt) = (start.options(), ssl_engine::interrupt::install());
    let trained = match ranks {
        Ranks::One => ssl_engine::train::train_with(b, cfg, &opts, interrupt, !quiet),
        // The ranks share this backend's threads (a CPU backend's clone is a handle on its pool).
        Ranks::InProcess { ranks, timeout } => ssl_engine::train::train_in_process(*ranks, &|_| Ok(b.clone()), cfg, &opts, interrupt, !quiet, *timeout),
        // A launched worker trains on NCCL, which the cuda backend alone has (`train_ranks`
        // refuses the others before a backend is built).
        Ranks::Worker { world, args } => match (b as &dyn std::any::Any).downcast_ref::<ssl_engine::backend::cuda::CudaBackend>() {
            Some(cuda) => ssl_engine::train::train_cuda_worker(cuda, world, args, cfg, &opts, interrupt, !quiet),
            None => Err(Error::Config(format!("rank {} of {}: a launched worker trains on the cuda backend (NCCL)", world.rank, world.world_size))),
        },
    };
    let s = trained.map_err(|e| match e {
        // The exact command that continues the run, after the line that says where it stopped.
        Error::Interrupted(m) if m.starts_with("state saved") => {
            Error::Interrupted(format!("{m}\ncontinue with: {}", resume_command(&cfg.out.join("last.safetensors"))))
        }
        e => e,
    })?;
    // The closing evaluation and the summary are rank 0's (in-process ranks have returned to
    // this thread, which is rank 0's process).
    if let Ranks::Worker { world, .. } = ranks
        && world.rank != 0
    {
        return Ok(());
    }
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
fn eval_inputs(a: &EvalArgs) -> EvalInputs<'_> {
    inputs(&a.net, &a.data, Some(a.test_data.as_deref().unwrap_or(&a.data)))
}

/// What `backbone::open` reads from the backbone flags, the images and the test images, if any.
fn inputs<'a>(n: &'a BackboneArgs, data: &'a Path, test_data: Option<&'a Path>) -> EvalInputs<'a> {
    EvalInputs {
        checkpoint: &n.checkpoint,
        model: n.model.as_deref(),
        config: n.config.as_deref(),
        overrides: &n.overrides,
        data,
        test_data,
    }
}

/// `train`'s flags on how the run meets its folder and a checkpoint.
struct TrainStart {
    resume: Option<PathBuf>,
    overwrite: bool,
    allow_changes: bool,
}

impl TrainStart {
    fn options(&self) -> ssl_engine::train::StartOptions<'_> {
        ssl_engine::train::StartOptions { resume: self.resume.as_deref(), overwrite: self.overwrite, allow_changes: self.allow_changes }
    }
}

/// This process's command line with `--resume <checkpoint>` in place of any `--resume` or
/// `--overwrite` it had: the command that continues the run. Arguments are quoted for a shell.
fn resume_command(checkpoint: &Path) -> String {
    let mut args: Vec<String> = Vec::new();
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--resume" => {
                it.next();
            }
            "--overwrite" => {}
            a if a.starts_with("--resume=") => {}
            _ => args.push(a),
        }
    }
    args.push("--resume".into());
    args.push(checkpoint.display().to_string());
    let quote = |a: &String| {
        if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) { a.clone() } else { format!("'{}'", a.replace('\'', "'\\''")) }
    };
    args.iter().map(quote).collect::<Vec<_>>().join(" ")
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
        Cmd::Train { config, run, resume, overwrite, allow_changes, skip_nonfinite, dist } => {
            let started = Instant::now();
            let (mut cfg, device) = run.dev.recipe(config.as_deref(), &run.overrides)?;
            let dist = dist.args();
            let ranks = train_ranks(&dist, &cfg)?;
            // One GPU per worker: LOCAL_RANK's, unless --device says.
            let device = match &ranks {
                Ranks::Worker { world, .. } => Device { index: device.index.or(Some(world.local_rank)), ..device },
                _ => device,
            };
            // --nproc-per-node / --nnodes on cuda: this process launches the workers instead of training.
            if matches!(ranks, Ranks::One)
                && let Some(spec) = launch_spec(&dist)?
            {
                return launch_workers(&spec);
            }
            if let Some(n) = skip_nonfinite {
                cfg.skip_nonfinite = n;
            }
            (device, Job::Train { cfg: Box::new(cfg), start: TrainStart { resume, overwrite, allow_changes }, quiet: run.quiet, started, ranks })
        }
        Cmd::Study { config, run } => {
            let (cfg, device) = run.dev.apply(ssl_engine::study::recipe(&config, &run.overrides)?)?;
            (device, Job::Study { cfg: Box::new(cfg), quiet: run.quiet })
        }
        Cmd::Config { config, overrides, checkpoint } => {
            print!("{}", config_command(config.as_deref(), &overrides, checkpoint.as_deref())?);
            return Ok(());
        }
        Cmd::Eval { what } => {
            let (EvalCmd::Knn { common, .. } | EvalCmd::Linear { common, .. }) = &what;
            (common.net.dev.resolve()?, Job::Eval(what))
        }
        Cmd::Embed { args } => (args.net.dev.resolve()?, Job::Embed(args)),
        Cmd::Export { checkpoint, out } => {
            let done = eval::export(&ssl_engine::backend::cpu::CpuBackend::new(0)?, &checkpoint, &out)?;
            let recipe = match done.recipe {
                Some(c) => format!(
                    "with its recipe ({} px, mean {:?}, std {:?}) in the file's metadata",
                    c.data.image_size, c.augment.mean, c.augment.std
                ),
                None => "without a recipe (the checkpoint holds none)".into(),
            };
            println!("wrote {} tensors to {} {recipe}", done.tensors, out.display());
            return Ok(());
        }
        Cmd::Plot { run } => {
            for p in ssl_engine::plot::plot_run(&run)? {
                println!("wrote {}", p.display());
            }
            return Ok(());
        }
        Cmd::Bench { what: BenchCmd::Step { dev, model, batch, image_size, simsiam, dry_run: true, no_graph, ranks, sync_bn, .. } } => {
            if dev.backend != Some(ssl_engine::config::BackendKind::Cuda) || !simsiam {
                return Err(Error::Config("--dry-run is the CUDA step census: use it with --backend cuda --simsiam".into()));
            }
            let precision = dev.resolve()?.precision;
            let r = bench::CensusRequest { model: &model, batch, image: image_size, precision, graph: !no_graph, ranks, sync_bn, waves: true };
            print!("{}", bench::dry_run_census_table(&r)?);
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
        Cmd::DistRendezvous { dist, backend, hold_secs } => {
            let dist = dist.args();
            if let Some(spec) = launch_spec(&dist)? {
                return launch_workers(&spec);
            }
            let cuda = backend == Some(ssl_engine::config::BackendKind::Cuda);
            return ssl_engine::dist::probe::run(&dist, cuda, std::time::Duration::from_secs(hold_secs));
        }
    };
    dispatch(&device, job)
}

/// How many ranks a `train` runs and where.
enum Ranks {
    /// One process, one rank.
    One,
    /// `--nproc-per-node N --backend cpu`: N ranks in this process, one thread each.
    InProcess { ranks: usize, timeout: std::time::Duration },
    /// One worker process of a launched job (ours, torchrun or srun), on the GPU `local_rank`.
    Worker { world: ssl_engine::dist::World, args: ssl_engine::dist::DistArgs },
}

/// The ranks `train`'s flags and environment ask for. A launched CPU worker (RANK set) is
/// refused: the CPU's ranks meet in one process, which --nproc-per-node starts.
fn train_ranks(dist: &ssl_engine::dist::DistArgs, cfg: &Config) -> Result<Ranks> {
    let (nproc, nnodes) = (dist.nproc_per_node.unwrap_or(1), dist.nnodes.unwrap_or(1));
    if let Some(ranks) = ssl_engine::train::in_process_ranks(cfg.backend, nproc, nnodes)? {
        // Before anything is loaded or written (each rank's loader checks it too).
        ssl_engine::data::loader::check_shareable(cfg.batch_size, ranks)?;
        return Ok(Ranks::InProcess { ranks, timeout: dist.rdzv_timeout });
    }
    let world = ssl_engine::dist::World::from_env(dist)?;
    if !world.is_distributed() {
        return Ok(Ranks::One);
    }
    if cfg.backend != ssl_engine::config::BackendKind::Cuda {
        return Err(Error::Config(format!(
            "rank {} of {} ({}) with the {} backend: data parallel across processes runs on cuda (NCCL); on the cpu, \
             start one process with --nproc-per-node {} (one thread per rank)",
            world.rank, world.world_size, world.source, cfg.backend, world.world_size
        )));
    }
    Ok(Ranks::Worker { world, args: dist.clone() })
}

/// The launch that --nproc-per-node / --nnodes ask for, if any.
fn launch_spec(d: &ssl_engine::dist::DistArgs) -> Result<Option<ssl_engine::dist::launch::LaunchSpec>> {
    ssl_engine::dist::launch::LaunchSpec::from_args(d, &|k| std::env::var(k).ok())
}

/// This process becomes the launcher: each worker runs this same command minus the launcher's
/// flags; a failed worker's exit code becomes this process's.
fn launch_workers(spec: &ssl_engine::dist::launch::LaunchSpec) -> Result<()> {
    use ssl_engine::dist::launch;
    let exe = std::env::current_exe().map_err(|e| Error::dist(format!("launcher: cannot find this program to start the workers: {e}")))?;
    launch::launch(spec, &exe, &launch::worker_args(std::env::args_os().skip(1)))
}

/// `ssl-engine config`: every key with its default and its help, or the resolved recipe.
fn config_command(config: Option<&Path>, overrides: &[String], checkpoint: Option<&Path>) -> Result<String> {
    if let Some(ck) = checkpoint {
        let wf = ssl_engine::checkpoint::WeightFile::read(ck)?;
        let (base, source, stored) = backbone::base_recipe(Some(&wf))?;
        let cfg = backbone::lay_over(&base, stored, config, overrides, None)?;
        return Ok(format!("# the resolved recipe: {source}\n{}", cfg.to_toml()));
    }
    if config.is_none() && overrides.is_empty() {
        return Ok(ssl_engine::config::help::reference());
    }
    let cfg = Config::load(config, overrides)?;
    let from = config.map(|p| p.display().to_string()).unwrap_or_else(|| "the defaults".into());
    Ok(format!("# the resolved recipe: {from}{}\n{}", if overrides.is_empty() { "" } else { " with --set" }, cfg.to_toml()))
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
