//! The command-line grammar: every subcommand, its flags and their `--help` text. `main.rs`
//! parses with it and dispatches; the flags of the device are written once (`DeviceArgs`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ssl_engine::Result;
use ssl_engine::backend::Precision;
use ssl_engine::config::{BackendKind, Config};
use ssl_engine::optim::OptimizerKind;

/// `train`'s one line: the method names, from the registry.
fn train_about() -> String {
    format!(
        "Pretrain a backbone with one of the methods (`method =` {}) from a TOML recipe; writes checkpoints, metrics.jsonl and plots to `out`.",
        ssl_engine::ssl::method_names()
    )
}

/// The tool's one line, with the methods the registry holds.
fn about() -> String {
    format!("Self-supervised pretraining of vision backbones ({} methods: {}), from scratch in Rust", ssl_engine::ssl::methods().len(), ssl_engine::ssl::method_names())
}

/// `--help`: the one line and the typical commands.
fn long_about() -> String {
    format!(
        "{}.\n\nTypical use:\n  ssl-engine train --config configs/demo-cpu.toml\n  \
         ssl-engine eval linear --checkpoint runs/demo/last.safetensors --data data/cifar10-demo\n  \
         ssl-engine export --checkpoint runs/demo/last.safetensors --out backbone.safetensors\n  \
         ssl-engine study --config configs/study-demo.toml\n  \
         ssl-engine config",
        about()
    )
}

/// `train --help`: each method of the registry with what it is; its settings go in its own table.
fn train_long_about() -> String {
    format!("{}\n\nMethods (`method = \"<name>\"`; settings in the `[<name>]` table):\n{}", train_about(), ssl_engine::ssl::methods_help())
}

#[derive(Parser)]
#[command(name = "ssl-engine", version, about = about(), long_about = long_about())]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Pretrain a backbone with one of the methods (the registry's list: `train --help`).
    #[command(about = train_about(), long_about = train_long_about())]
    Train {
        /// Recipe file (configs/*.toml). Without it, the defaults (the CIFAR-10 paper recipe) apply.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        run: RunFlags,
        /// Continue from a checkpoint (e.g. <out>/last.safetensors): weights, momentum, position.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Train into an `out` folder that already holds a run: its files are first moved aside,
        /// whole, to `<out>.replaced-N` (nothing is deleted or appended to). Without it, such a
        /// folder is refused.
        #[arg(long, conflicts_with = "resume")]
        overwrite: bool,
        /// With --resume: accept a recipe whose schedule (epochs, learning rate, warm-up, the
        /// optimiser), data or `out` differ from the checkpoint's; the differences are printed
        /// either way. Batch size, model, method, backend and image size can never change.
        #[arg(long, requires = "resume")]
        allow_changes: bool,
        /// Skip at most N steps whose loss is NaN/Inf (no update; batch-norm statistics restored)
        /// before stopping with exit code 3; each skip is reported. Default: stop at the first.
        #[arg(long, value_name = "N")]
        skip_nonfinite: Option<usize>,
        #[command(flatten)]
        dist: DistFlags,
    },
    /// Print every recipe key with its default value and what it does, or (with --config / --set)
    /// the fully resolved recipe a run would use, as TOML.
    Config {
        /// A recipe file to resolve (configs/*.toml); with --set, or alone.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a recipe key, e.g. --set epochs=10 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// The recipe stored in a checkpoint (or an exported backbone) instead, with --config and --set over it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Evaluate a backbone: kNN classifier or linear probe. The image size, normalisation, model
    /// and protocol settings come from the recipe stored in the checkpoint unless --config, --set
    /// or --model say otherwise (each difference is printed).
    Eval {
        #[command(subcommand)]
        what: EvalCmd,
    },
    /// Write backbone features of every image as .npy (rows in sorted order: class folders, then
    /// files), the labels as <stem>_labels.npy and the files as <stem>_files.txt; the image size
    /// and normalisation come from the checkpoint's recipe.
    Embed {
        #[command(flatten)]
        args: EmbedArgs,
    },
    /// Export the backbone with torchvision / timm names (load with model.load_state_dict(safetensors.torch.load_file(...))); the recipe (image size, mean, std) travels in the file's metadata.
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
    /// Hidden, for the tests and for checking a cluster's wiring: a worker's start-up up to
    /// NCCL's communicator init (the world from the flags and environment, the rendezvous), then
    /// one line `rendezvous: rank=.. world_size=.. local_rank=.. pid=.. source=.. id=<hex>`.
    /// With --nproc-per-node it launches its workers as `train` does.
    #[command(hide = true)]
    DistRendezvous {
        #[command(flatten)]
        dist: DistFlags,
        /// cuda: rank 0 makes the id with NCCL where it loads (else random bytes, with a note);
        /// cpu (the default): random bytes.
        #[arg(long)]
        backend: Option<BackendKind>,
        /// Stay up this many seconds after the rendezvous, as a training run would (tests of the
        /// launcher's stop on failure and on Ctrl-C).
        #[arg(long, default_value_t = 0)]
        hold_secs: u64,
    },
}

/// Data-parallel runs: one worker process per GPU, on one machine or several. Under torchrun
/// or SLURM's srun these come from the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
/// MASTER_PORT; SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODELIST) and need no flags.
#[derive(Args, Clone)]
#[command(next_help_heading = "Distributed (data-parallel)")]
pub(crate) struct DistFlags {
    /// Train N ranks on this machine. cuda: N worker processes (one per GPU: LOCAL_RANK 0..N)
    /// meeting over NCCL, as torchrun's --nproc-per-node starts them; this process waits for them
    /// and stops all if one fails. cpu: N ranks in this process, one thread each. batch_size is
    /// the global batch: each rank takes batch_size / N.
    #[arg(long, value_name = "N")]
    pub(crate) nproc_per_node: Option<usize>,
    /// Machines in the job, each running this command with its own --node-rank (default 1).
    #[arg(long, value_name = "N")]
    pub(crate) nnodes: Option<usize>,
    /// This machine's index, 0..nnodes (default 0); its workers are ranks node_rank * N ...
    #[arg(long, value_name = "I")]
    pub(crate) node_rank: Option<usize>,
    /// Where rank 0 hands out NCCL's unique id: node 0's address, reachable from every node
    /// [default: MASTER_ADDR, SLURM's first node, else 127.0.0.1].
    #[arg(long, value_name = "HOST")]
    pub(crate) master_addr: Option<String>,
    /// The TCP port of that rendezvous [default: MASTER_PORT, else 29500].
    #[arg(long, value_name = "PORT")]
    pub(crate) master_port: Option<u16>,
    /// The job's id, the same on every node: only ranks presenting it get NCCL's id [default:
    /// TORCHELASTIC_RUN_ID or SLURM_JOB_ID; a random one per launch on one machine].
    #[arg(long, value_name = "ID")]
    pub(crate) rdzv_id: Option<String>,
    /// Seconds rank 0 waits for every rank at the rendezvous (and the others for rank 0), and a
    /// rank for the others in a collective; then an error names the ranks that did not arrive.
    #[arg(long, value_name = "SECONDS", default_value_t = ssl_engine::dist::DEFAULT_TIMEOUT_S)]
    pub(crate) rdzv_timeout: u64,
}

impl DistFlags {
    /// The flags as the library takes them.
    pub(crate) fn args(&self) -> ssl_engine::dist::DistArgs {
        ssl_engine::dist::DistArgs {
            nproc_per_node: self.nproc_per_node,
            nnodes: self.nnodes,
            node_rank: self.node_rank,
            master_addr: self.master_addr.clone(),
            master_port: self.master_port,
            rdzv_id: self.rdzv_id.clone(),
            rdzv_timeout: std::time::Duration::from_secs(self.rdzv_timeout),
        }
    }
}

/// Where the numbers are computed: the flags of every subcommand that computes. `train` and
/// `study` default to their recipe's keys; `eval`, `embed` and `bench` to cpu, fp32, all cores.
#[derive(Args, Clone)]
pub(crate) struct DeviceArgs {
    /// Compute backend: cpu, cuda or wgpu (default: the recipe's `backend`; cpu without a recipe
    /// key, and for eval, embed and bench).
    #[arg(long)]
    pub(crate) backend: Option<BackendKind>,
    /// GPU index (cuda) or WebGPU adapter index (wgpu); default: the first / best one.
    #[arg(long)]
    pub(crate) device: Option<usize>,
    /// fp32 or bf16: what convolutions, matmuls and attention compute in (default: the recipe's
    /// `precision`, else fp32; weights, optimiser state and checkpoints stay FP32).
    #[arg(long)]
    pub(crate) precision: Option<Precision>,
    /// CPU threads, 0 = all cores (default: the recipe's `threads`, else 0).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
}

/// A backend choice, resolved: the one value the dispatch reads.
pub(crate) struct Device {
    pub(crate) backend: BackendKind,
    pub(crate) index: Option<usize>,
    pub(crate) precision: Precision,
    pub(crate) threads: usize,
}

impl DeviceArgs {
    /// For the commands without a recipe of their own: the flags, else cpu, fp32, all cores.
    pub(crate) fn resolve(&self) -> Result<Device> {
        let precision = self.precision.unwrap_or_default();
        let backend = self.backend.unwrap_or_default();
        Ok(Device { backend, index: self.device, precision, threads: self.threads.unwrap_or(0) })
    }

    /// For `train` and `study`: the recipe with the flags applied and validated, and its device.
    pub(crate) fn recipe(&self, path: Option<&std::path::Path>, overrides: &[String]) -> Result<(Config, Device)> {
        self.apply(Config::load(path, overrides)?)
    }

    /// A recipe with the device flags applied and validated, and its device.
    pub(crate) fn apply(&self, mut cfg: Config) -> Result<(Config, Device)> {
        if let Some(bk) = self.backend {
            cfg.backend = bk;
        }
        if let Some(p) = self.precision {
            cfg.precision = p;
        }
        if let Some(t) = self.threads {
            cfg.threads = t;
        }
        cfg.validate()?;
        let dev = Device { backend: cfg.backend, index: self.device, precision: cfg.precision, threads: cfg.threads };
        Ok((cfg, dev))
    }
}

/// The flags `train` and `study` share: recipe overrides, the device, the output.
#[derive(Args, Clone)]
pub(crate) struct RunFlags {
    /// Override a recipe key, e.g. --set epochs=10 --set data.path=/data/cifar10/train (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) overrides: Vec<String>,
    #[command(flatten)]
    pub(crate) dev: DeviceArgs,
    /// No progress bar or per-epoch / per-cell lines.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// Which backbone, with which recipe, on which device: the flags `eval` and `embed` share.
#[derive(Args, Clone)]
pub(crate) struct BackboneArgs {
    /// Our checkpoint, a PyTorch-named backbone .safetensors (torchvision / timm), or `random`.
    #[arg(long)]
    pub(crate) checkpoint: String,
    /// Backbone preset, only where the weight file cannot tell (and for `random`); an error if it
    /// contradicts the file.
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// A recipe laid over the checkpoint's own (for `random`: the recipe whose initialisation to
    /// draw, e.g. configs/demo-cpu.toml); its keys replace the checkpoint's.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Override a recipe key, e.g. --set data.image_size=64 (repeatable); default: the
    /// checkpoint's recipe (torchvision / timm files: 224 px, ImageNet mean and std).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) overrides: Vec<String>,
    #[command(flatten)]
    pub(crate) dev: DeviceArgs,
}

/// The flags of `embed`.
#[derive(Args, Clone)]
pub(crate) struct EmbedArgs {
    #[command(flatten)]
    pub(crate) net: BackboneArgs,
    /// The images to embed: an image folder, CIFAR binary or IDX data (every image, in sorted order).
    #[arg(long)]
    pub(crate) data: PathBuf,
    /// Output .npy file for the features; labels go to <stem>_labels.npy beside it.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

/// The flags shared by `eval knn` and `eval linear`.
#[derive(Args, Clone)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    pub(crate) net: BackboneArgs,
    /// Training images (the kNN bank / probe training set). A folder with train/ and test/ inside works too.
    #[arg(long)]
    pub(crate) data: PathBuf,
    /// Test images (default: <data>/test when it exists).
    #[arg(long)]
    pub(crate) test_data: Option<PathBuf>,
    /// Also write the metrics (top-1/top-5, macro/micro accuracy and AUC) as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum EvalCmd {
    /// Weighted kNN (cosine, exp(sim/T) votes): top-1/top-5, macro/micro accuracy and AUC.
    Knn {
        #[command(flatten)]
        common: EvalArgs,
        /// Neighbours that vote (default: the recipe's monitor.knn_k, 200).
        #[arg(long)]
        k: Option<usize>,
        /// Temperature of the exp(similarity / T) vote weights (default: the recipe's monitor.knn_t, 0.1).
        #[arg(long)]
        t: Option<f32>,
    },
    /// Linear probe on frozen, standardised features (eval-mode BN): SGD or LARS, cosine; or --finetune.
    Linear {
        #[command(flatten)]
        common: EvalArgs,
        /// Epochs of probe (or fine-tuning) training (default: the recipe's linear.epochs, 100).
        #[arg(long)]
        epochs: Option<usize>,
        /// sgd (lr 0.5 on standardised features, 30 on raw ones, at batch 256), lars (lr 0.02) or
        /// adamw (lr 1e-3) (default: the recipe's linear.optimizer, sgd).
        #[arg(long)]
        optimizer: Option<OptimizerKind>,
        /// Peak learning rate (cosine decay); default: the recipe's linear.lr for its own
        /// protocol, else 0.02 lars, 30 raw features, 0.1 fine-tuning.
        #[arg(long)]
        lr: Option<f64>,
        /// Probe training batch size (default: the recipe's linear.batch_size, 256).
        #[arg(long)]
        batch_size: Option<usize>,
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

#[derive(Subcommand)]
pub(crate) enum BenchCmd {
    /// Times forward + backward + SGD of a backbone with a 10-class head (median of --runs).
    Step {
        #[command(flatten)]
        dev: DeviceArgs,
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
        /// With --dry-run: the census of rank 0 of N data-parallel ranks (each at --batch per
        /// view), with the collectives each rank calls per step; eager (no CUDA graph).
        #[arg(long, default_value_t = 1)]
        ranks: usize,
        /// With --dry-run --ranks N: batch norm over every rank's rows (the recipe's sync_bn).
        #[arg(long)]
        sync_bn: bool,
    },
    /// Times each kernel family on ResNet-18 (CIFAR) and ViT-tiny shapes.
    Kernels {
        #[command(flatten)]
        dev: DeviceArgs,
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

