//! The `ssl-engine` command line: parse, then call the library. Errors print one line and exit
//! non-zero (3 for a non-finite loss, 4 out of GPU memory, 130 after Ctrl-C / SIGTERM).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ssl_engine::app::{self, LoadedBackbone};
use ssl_engine::backend::{Backend, Precision};
use ssl_engine::config::Config;
use ssl_engine::data::Split;
use ssl_engine::{bench, with_backend};

#[derive(Parser)]
#[command(
    name = "ssl-engine",
    version,
    about = "Self-supervised pretraining of vision backbones (ten methods: SimSiam, SimCLR, SupCon, BYOL, SwAV, MoCo v2+/v3, DINO, Barlow Twins, VICReg), from scratch in Rust",
    long_about = "Self-supervised pretraining of vision backbones (ten methods: SimSiam, SimCLR, SupCon, BYOL, SwAV, MoCo v2+/v3, DINO, Barlow Twins, VICReg), from scratch in Rust.\n\n\
        Typical use:\n  ssl-engine train --config configs/demo-cpu.toml\n  \
        ssl-engine eval linear --checkpoint runs/demo/last.safetensors --data data/cifar10-demo\n  \
        ssl-engine export --checkpoint runs/demo/last.safetensors --out backbone.safetensors\n  \
        ssl-engine study --config configs/study-demo.toml"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pretrain a backbone with one of ten methods (`method =` simsiam, simclr, supcon, byol, swav, mocov2plus, mocov3, dino, barlow, vicreg) from a TOML recipe; writes checkpoints, metrics.jsonl and plots to `out`.
    Train {
        /// Recipe file (configs/*.toml). Without it, the defaults (the CIFAR-10 paper recipe) apply.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        run: RunFlags,
        /// Continue from a checkpoint (e.g. <out>/last.safetensors): weights, momentum, position.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Skip at most N steps whose loss is NaN/Inf (no update; batch-norm statistics restored)
        /// before stopping with exit code 3; each skip is reported. Default: stop at the first.
        #[arg(long, value_name = "N")]
        skip_nonfinite: Option<usize>,
    },
    /// Evaluate a backbone: kNN classifier or linear probe.
    Eval {
        #[command(subcommand)]
        what: EvalCmd,
    },
    /// Write backbone features of every image as .npy (rows in sorted order: class folders, then files) plus labels.
    Embed {
        #[command(flatten)]
        args: EmbedArgs,
    },
    /// Export the backbone with torchvision / timm names (load with model.load_state_dict(safetensors.torch.load_file(...))).
    Export {
        /// The training checkpoint (or a backbone file) to export from.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The .safetensors file to write (atomically): the backbone alone, PyTorch names and layouts.
        #[arg(long)]
        out: PathBuf,
    },
    /// Does pretraining help here? Every starting point of `[study] starts` (checkpoints, imported
    /// weights, `random`, `supervised` from scratch) measured by every protocol (kNN, linear probe,
    /// fine-tuning, few-label fine-tuning at `labels_per_class`) on a seeded, stratified validation
    /// split and on the test set. Writes study.md, study.csv, study.json, study_bars.png and
    /// study_curves.png to `[study] out`; each cell is cached there, so a rerun only computes what
    /// is missing.
    Study {
        /// Study recipe (configs/study-*.toml): data, model, normalisation, `[linear]`, `[study]`.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        run: RunFlags,
    },
    /// Redraw the PNG plots (loss, lr, kNN, z-std) of a run folder from its metrics.jsonl.
    Plot {
        /// The run folder (the recipe's `out`), holding metrics.jsonl.
        run: PathBuf,
    },
    /// Benchmarks: a whole training step, or each kernel family.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

/// The flags `train` and `study` share: recipe overrides, the device, the precision, the output.
#[derive(Args, Clone)]
struct RunFlags {
    /// Override a recipe key, e.g. --set epochs=10 --set data.path=/data/cifar10/train (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Compute backend: cpu, cuda or wgpu (overrides the recipe's `backend`).
    #[arg(long)]
    backend: Option<String>,
    /// GPU index (cuda) or WebGPU adapter index (wgpu); default: the first / best one.
    #[arg(long)]
    device: Option<usize>,
    /// fp32 or bf16: what convolutions, matmuls and attention compute in (overrides the
    /// recipe's `precision`; weights, optimiser state and checkpoints stay FP32).
    #[arg(long)]
    precision: Option<String>,
    /// No progress bar or per-epoch / per-cell lines.
    #[arg(long)]
    quiet: bool,
}

impl RunFlags {
    /// The recipe with the overrides, backend and precision applied, validated.
    fn config(&self, path: Option<&std::path::Path>) -> ssl_engine::Result<Config> {
        let mut cfg = Config::load(path, &self.overrides)?;
        if let Some(bk) = &self.backend {
            cfg.backend = bk.clone();
        }
        if let Some(p) = &self.precision {
            cfg.precision = p.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Which backbone, with which recipe, on which device: the flags `eval` and `embed` share.
#[derive(Args, Clone)]
struct BackboneArgs {
    /// Our checkpoint, a PyTorch-named backbone .safetensors (torchvision / timm), or `random`.
    #[arg(long)]
    checkpoint: String,
    /// Backbone preset, only where the weight file cannot tell (and for `random`); an error if it
    /// contradicts the file.
    #[arg(long)]
    model: Option<String>,
    /// Recipe whose data settings (image size, normalisation) and model to use.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a recipe key, e.g. --set data.image_size=64 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Compute backend: cpu, cuda or wgpu.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// GPU index (cuda) or WebGPU adapter index (wgpu).
    #[arg(long)]
    device: Option<usize>,
    /// fp32 or bf16: what convolutions, matmuls and attention compute in.
    #[arg(long, default_value = "fp32")]
    precision: String,
}

/// The flags of `embed`.
#[derive(Args, Clone)]
struct EmbedArgs {
    #[command(flatten)]
    net: BackboneArgs,
    /// The images to embed: an image folder, CIFAR binary or IDX data (every image, in sorted order).
    #[arg(long)]
    data: PathBuf,
    /// Output .npy file for the features; labels go to <stem>_labels.npy beside it.
    #[arg(long)]
    out: PathBuf,
}

/// The flags shared by `eval knn` and `eval linear`.
#[derive(Args, Clone)]
struct EvalArgs {
    #[command(flatten)]
    net: BackboneArgs,
    /// Training images (the kNN bank / probe training set). A folder with train/ and test/ inside works too.
    #[arg(long)]
    data: PathBuf,
    /// Test images (default: <data>/test when it exists).
    #[arg(long)]
    test_data: Option<PathBuf>,
    /// Also write the metrics (top-1/top-5, macro/micro accuracy and AUC) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum EvalCmd {
    /// Weighted kNN (cosine, exp(sim/T) votes): top-1/top-5, macro/micro accuracy and AUC.
    Knn {
        #[command(flatten)]
        common: EvalArgs,
        /// Neighbours that vote.
        #[arg(long, default_value_t = 200)]
        k: usize,
        /// Temperature of the exp(similarity / T) vote weights.
        #[arg(long, default_value_t = 0.1)]
        t: f32,
    },
    /// Linear probe on frozen, standardised features (eval-mode BN): SGD or LARS, cosine; or --finetune.
    Linear {
        #[command(flatten)]
        common: EvalArgs,
        /// Epochs of probe (or fine-tuning) training.
        #[arg(long, default_value_t = 100)]
        epochs: usize,
        /// sgd (lr 0.5 on standardised features, 30 on raw ones, at batch 256) or lars (lr 0.02).
        #[arg(long, default_value = "sgd")]
        optimizer: String,
        /// Peak learning rate (cosine decay); default by protocol: 0.5 sgd, 0.02 lars, 30 raw features, 0.1 fine-tuning.
        #[arg(long)]
        lr: Option<f64>,
        /// Probe training batch size.
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        /// Train the probe on only N labelled images per class (few-label evaluation).
        #[arg(long)]
        labels_per_class: Option<usize>,
        /// Fine-tune the whole backbone with the head (train-mode BN, crop + flip) instead of a
        /// frozen-feature probe; use a small --lr such as 0.1.
        #[arg(long)]
        finetune: bool,
        /// Weight decay of the probe (default: the recipe's linear.weight_decay; 5e-4 when fine-tuning).
        #[arg(long)]
        weight_decay: Option<f32>,
        /// Probe the raw features (MoCo's protocol, default lr 30) instead of standardised ones.
        #[arg(long)]
        raw_features: bool,
    },
}

#[derive(Args, Clone)]
struct BackendArgs {
    /// Compute backend: cpu, cuda or wgpu.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// GPU index (cuda) or WebGPU adapter index (wgpu); default: the first / best one.
    #[arg(long)]
    device: Option<usize>,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// fp32 or bf16: what convolutions, matmuls and attention compute in.
    #[arg(long, default_value = "fp32")]
    precision: String,
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
        /// Batch size (per view with --simsiam).
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Input image side in pixels.
        #[arg(long, default_value_t = 32)]
        image_size: usize,
        /// Untimed steps first (kernel compilation, caches, allocator).
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Timed steps; the median is reported with the min and max.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Time a whole SimSiam step (two views, projector, predictor, loss) instead of the
        /// supervised step; images/s then counts views.
        #[arg(long)]
        simsiam: bool,
        /// With --backend cuda --simsiam: no GPU, no timing; run one step on the dry-run device
        /// and list its kernel launches and the bytes they reach (the step census).
        #[arg(long)]
        dry_run: bool,
        /// With --simsiam on cuda: launch every kernel of the step eagerly instead of replaying
        /// forward and backward as one CUDA graph (recorded in the warm-up).
        #[arg(long)]
        no_graph: bool,
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
        /// Timed runs per kernel after one warm-up; the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// No timing: compile every CUDA kernel for sm_90a and print registers, spills, shared
        /// memory, theoretical occupancy and the instruction mix (HMMA, LDGSTS, LDSM, local
        /// memory, division calls). Needs libnvrtc and cuobjdump, not a GPU.
        #[arg(long = "static")]
        static_report: bool,
    },
    /// Images per second of the data loader (decode when streaming, augment, normalise) and the
    /// process's peak memory.
    Loader {
        /// Image folder, CIFAR binary or IDX data.
        #[arg(long, default_value = "data/cifar10-demo/train")]
        data: PathBuf,
        /// Loader threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Images per batch.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Batches to time (after one warm-up batch).
        #[arg(long, default_value_t = 20)]
        batches: usize,
        /// The views' side in pixels (data.image_size).
        #[arg(long, default_value_t = 32)]
        image_size: usize,
        /// "ram": decode every image once, before timing; "none": decode per batch (data.cache).
        #[arg(long, default_value = "ram")]
        cache: String,
        /// "simsiam": the full SimSiam recipe (crop, flip, colour jitter, grey, blur); "crop":
        /// RandomResizedCrop + horizontal flip + normalise only (what torchvision's ImageNet
        /// training transform does).
        #[arg(long, default_value = "simsiam")]
        recipe: String,
        /// Augmented views per image (2 for SimSiam).
        #[arg(long, default_value_t = 2)]
        views: usize,
    },
}

fn pct(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

fn print_metrics(title: &str, m: &ssl_engine::eval::metrics::Metrics) {
    println!("{title}");
    println!("  top-1 {}   top-5 {}", pct(m.top1), pct(m.top5));
    println!("  accuracy: macro {}  micro {}", pct(m.macro_accuracy), pct(m.micro_accuracy));
    println!("  one-vs-rest AUC: macro {:.4}  micro {:.4}", m.macro_auc, m.micro_auc);
}

/// The recipe, the backbone, and the train and test sets of an eval command.
type EvalSetup<B> = (Config, LoadedBackbone<B>, std::sync::Arc<ssl_engine::data::Dataset>, std::sync::Arc<ssl_engine::data::Dataset>);

fn eval_setup<B: Backend>(b: &B, a: &EvalArgs) -> ssl_engine::Result<EvalSetup<B>> {
    let n = &a.net;
    let mut cfg = Config::load(n.config.as_deref(), &n.overrides)?;
    if let Some(m) = &n.model {
        cfg.model = m.clone();
    }
    let model = if n.checkpoint == "random" {
        app::random_backbone(b, &cfg)?
    } else {
        app::load_backbone(b, std::path::Path::new(&n.checkpoint), n.model.as_deref(), cfg.data.image_size)?
    };
    let train = app::load(&a.data, Split::Train, &cfg)?;
    let test_path = a.test_data.clone().unwrap_or_else(|| a.data.clone());
    let test = app::load(&test_path, Split::Test, &cfg)?;
    eprintln!("{} training images, {} test images, backbone {} features", train.len(), test.len(), model.backbone.feature_dim());
    Ok((cfg, model, train, test))
}

fn write_json(path: &Option<PathBuf>, v: &impl serde::Serialize) -> ssl_engine::Result<()> {
    if let Some(p) = path {
        let text = serde_json::to_string_pretty(v).map_err(|e| ssl_engine::Error::Other(e.to_string()))?;
        ssl_engine::checkpoint::write_atomic(p, text.as_bytes())?;
    }
    Ok(())
}

fn run(cli: Cli) -> ssl_engine::Result<()> {
    // Every command stops cleanly on the first Ctrl-C / SIGTERM (exit 130), and at once on a second.
    ssl_engine::interrupt::install();
    match cli.cmd {
        Cmd::Train { config, run, resume, skip_nonfinite } => {
            let started = std::time::Instant::now();
            let mut cfg = run.config(config.as_deref())?;
            if let Some(n) = skip_nonfinite {
                cfg.skip_nonfinite = n;
            }
            let (device, quiet) = (run.device, run.quiet);
            let interrupt = ssl_engine::interrupt::install();
            let (s, report) = with_backend!(cfg.backend.as_str(), cfg.threads, device, cfg.precision(), |b| {
                let s = ssl_engine::train::train(&b, &cfg, resume.as_deref(), interrupt, !quiet)?;
                // The table is measured on the checkpoint file the run leaves behind.
                let last = s.out.join("last.safetensors");
                let report = cfg
                    .report
                    .compare_random
                    .then(|| ssl_engine::eval::summary::compare_with_random(&b, &cfg, &last, started))
                    .transpose()?;
                Ok::<_, ssl_engine::Error>((s, report))
            })?;
            println!(
                "trained {} epochs ({} steps) at {:.1} images/s; run folder {}",
                s.epochs_done,
                s.steps_done,
                s.images_per_s,
                s.out.display()
            );
            if let Some(l) = s.last_loss {
                println!("final loss {l:.4}");
            }
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
        }
        Cmd::Eval { what } => match what {
            EvalCmd::Knn { common, k, t } => with_backend!(common.net.backend.as_str(), 0, common.net.device, Precision::parse(&common.net.precision)?, |b| {
                let (mut cfg, model, train, test) = eval_setup(&b, &common)?;
                cfg.monitor.knn_k = k;
                cfg.monitor.knn_t = t;
                let m = app::eval_knn(&model, &train, &test, &cfg)?;
                print_metrics(&format!("kNN (k={k}, T={t}) of {}", common.net.checkpoint), &m);
                write_json(&common.json, &m)
            })?,
            EvalCmd::Linear { common, epochs, optimizer, lr, batch_size, labels_per_class, finetune, weight_decay, raw_features } => {
                with_backend!(common.net.backend.as_str(), 0, common.net.device, Precision::parse(&common.net.precision)?, |b| {
                    let (cfg, model, train, test) = eval_setup(&b, &common)?;
                    let lr = lr.unwrap_or(if finetune {
                        0.1
                    } else if optimizer == "lars" {
                        0.02
                    } else if !raw_features {
                        0.5
                    } else {
                        30.0
                    });
                    let wd = weight_decay.unwrap_or(if finetune { 5e-4 } else { cfg.linear.weight_decay });
                    let probe = ssl_engine::eval::linear::LinearProbeConfig {
                        epochs,
                        batch_size,
                        optimizer,
                        lr,
                        weight_decay: wd,
                        standardize: !raw_features,
                        ..cfg.linear.clone()
                    };
                    let subset = labels_per_class.map(|n| app::labels_per_class(&train, n, cfg.seed));
                    let what = if finetune { "fine-tuning" } else { "linear probe" };
                    let progress = |e: usize, l: f64| {
                        if e == 0 || (e + 1).is_multiple_of(10) {
                            eprintln!("{what} epoch {}/{epochs}: loss {l:.4}", e + 1);
                        }
                    };
                    let r = if finetune {
                        app::eval_finetune(model, &train, &test, &cfg, &probe, subset.as_deref(), progress)?
                    } else {
                        app::eval_linear(&model, &train, &test, &cfg, &probe, subset.as_deref(), progress)?
                    };
                    print_metrics(&format!("{what} of {} ({} training images)", common.net.checkpoint, r.train_images), &r.metrics);
                    write_json(&common.json, &r)
                })?
            }
        },
        Cmd::Embed { args: a } => with_backend!(a.net.backend.as_str(), 0, a.net.device, Precision::parse(&a.net.precision)?, |b| {
            let common = EvalArgs { net: a.net.clone(), data: a.data.clone(), test_data: Some(a.data.clone()), json: None };
            let (cfg, model, train, _) = eval_setup(&b, &common)?;
            let (f, l) = app::embed(&model, &train, &cfg, &a.out)?;
            println!("wrote {} and {}", f.display(), l.display());
            Ok::<(), ssl_engine::Error>(())
        })?,
        Cmd::Export { checkpoint, out } => {
            let b = ssl_engine::backend::cpu::CpuBackend::new(0)?;
            let n = app::export(&b, &checkpoint, &out)?;
            println!("wrote {n} tensors to {}", out.display());
        }
        Cmd::Study { config, run } => {
            let cfg = run.config(Some(&config))?;
            let outcome =
                with_backend!(cfg.backend.as_str(), cfg.threads, run.device, cfg.precision(), |b| ssl_engine::study::run(&b, &cfg, !run.quiet))?;
            print!("{}", ssl_engine::study::report::markdown(&outcome.cells));
            println!(
                "{} cells ({} computed now, {} from the cache in {})",
                outcome.cells.len(),
                outcome.computed,
                outcome.cells.len() - outcome.computed,
                cfg.study.out.join("cells").display()
            );
            for p in &outcome.files {
                println!("wrote {}", p.display());
            }
        }
        Cmd::Plot { run } => {
            for p in ssl_engine::plot::plot_run(&run)? {
                println!("wrote {}", p.display());
            }
        }
        Cmd::Bench { what } => match what {
            BenchCmd::Step { backend, model, batch, image_size, simsiam, dry_run: true, no_graph, .. } => {
                if backend.backend != "cuda" || !simsiam {
                    return Err(ssl_engine::Error::Config(
                        "--dry-run is the CUDA step census: use it with --backend cuda --simsiam".into(),
                    ));
                }
                let precision = Precision::parse(&backend.precision)?;
                let b = ssl_engine::backend::cuda::CudaBackend::dry_run(132)?.with_precision(precision);
                let census = bench::simsiam_step_census(&b, &model, batch, image_size, !no_graph)?;
                let (n, bytes): (usize, u64) = census.rows.iter().fold((0, 0), |(n, by), r| (n + r.launches, by + r.bytes));
                println!("SimSiam step census, {model} batch {batch} (2 views), dry-run CUDA device, {}:", precision.as_str());
                println!("{:<40} {:>9} {:>12}", "kernel", "launches", "MB reached");
                for r in &census.rows {
                    println!("{:<40} {:>9} {:>12.1}", r.kernel, r.launches, r.bytes as f64 / 1e6);
                }
                println!("{:<40} {:>9} {:>12.1}", "total", n, bytes as f64 / 1e6);
                if census.graph_kernels > 0 {
                    // The input and step-value copies before a replay are driver copies, not kernels.
                    let outside = n - census.graph_kernels;
                    let what = if outside == 0 { "forward, backward and optimizer".to_string() } else { format!("+ {outside} kernels outside it") };
                    println!("host kernel launches per step: {} = 1 CUDA graph ({} kernels: {what})", 1 + outside, census.graph_kernels);
                } else {
                    println!("host kernel launches per step: {n} (no CUDA graph)");
                }
            }
            BenchCmd::Step { backend, model, batch, image_size, warmup, runs, simsiam, no_graph, .. } => {
                with_backend!(backend.backend.as_str(), backend.threads, backend.device, Precision::parse(&backend.precision)?, |b| {
                    println!("backend: {}", b.name());
                    let t = if simsiam {
                        bench::bench_simsiam_step(&b, &model, batch, image_size, warmup, runs, !no_graph)?
                    } else {
                        bench::bench_step(&b, &model, batch, image_size, warmup, runs)?
                    };
                    println!("{}: median {:.4} s (min {:.4}, max {:.4}), {}", t.name, t.median_s, t.min_s, t.max_s, t.rate());
                    Ok::<(), ssl_engine::Error>(())
                })?
            }
            BenchCmd::Kernels { static_report: true, filter, .. } => {
                use ssl_engine::backend::cuda::report;
                let tool = report::find_cuobjdump().ok_or_else(|| {
                    ssl_engine::Error::Other(
                        "cuobjdump not found (CUDA toolkit, or pip install nvidia-cuda-cuobjdump and put its bin/ on PATH, or set CUOBJDUMP)"
                            .into(),
                    )
                })?;
                let ks: Vec<_> =
                    report::static_report(&tool)?.into_iter().filter(|k| filter.as_deref().is_none_or(|f| k.name.contains(f))).collect();
                print!("{}", report::format_report(&ks));
            }
            BenchCmd::Kernels { backend, batch, filter, runs, .. } => {
                with_backend!(backend.backend.as_str(), backend.threads, backend.device, Precision::parse(&backend.precision)?, |b| {
                    println!("backend: {}", b.name());
                    for t in bench::bench_kernels(&b, batch, filter.as_deref(), runs)? {
                        println!("{:<42} {:>10.3} ms  {}", t.name, t.median_s * 1e3, t.rate());
                    }
                    Ok::<(), ssl_engine::Error>(())
                })?
            }
            BenchCmd::Loader { data, workers, batch, batches, image_size, cache, recipe, views } => {
                let sets = [format!("data.image_size={image_size}"), format!("data.cache=\"{cache}\"")];
                let cfg = Config::load(None, &sets)?;
                let mut aug = ssl_engine::train::augment_config(&cfg);
                match recipe.as_str() {
                    "simsiam" => {}
                    "crop" => aug = ssl_engine::data::AugmentConfig { jitter_p: 0.0, gray_p: 0.0, blur_p: 0.0, solarize_p: 0.0, ..aug },
                    other => return Err(ssl_engine::Error::Config(format!("--recipe {other:?}: expected \"simsiam\" or \"crop\""))),
                }
                if views == 0 {
                    return Err(ssl_engine::Error::Config("--views must be at least 1".into()));
                }
                let ds = app::load(&data, Split::Train, &cfg)?;
                let workers = if workers == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { workers };
                let loader = ssl_engine::data::Loader::new(ds, vec![aug; views], image_size, batch, 0, workers, 2 * workers)?;
                let t = ssl_engine::data::measure_throughput(&loader, batches)?;
                let peak = ssl_engine::data::peak_memory_bytes().map_or("unknown".into(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64));
                println!(
                    "loader: {:.1} images/s ({:.0} augmented {image_size}x{image_size} views/s) over {} batches of {batch}, {workers} workers, cache {cache}, recipe {recipe}; peak memory {peak}",
                    t.images_per_s, t.views_per_s, t.batches
                );
            }
        },
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
