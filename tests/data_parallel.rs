//! Data parallel on the CPU: N ranks, one thread each with its own backend, meeting through the
//! in-process collective (`dist::collective::InProcess`), train exactly as one rank does at the
//! global batch. For every method, 2 ranks at 16 images each (sync_bn) and 1 rank at 32 give the
//! same five losses and the same final weights, in f64; 4 ranks at 8 as well for SimCLR and DINO.
//! Measured: losses within 3e-14 (Barlow Twins 1.4e-12, VICReg 1.5e-13) and every parameter and
//! buffer within 5.1e-12 relative (or absolute below a norm of 1).
//! The steps are the crate's one `train_step` with the method's hooks, on the committed demo
//! images through the loader (each rank takes its share of every global batch).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ssl_engine::autograd::Var;
use ssl_engine::config::Config;
use ssl_engine::data::{Loader, Split};
use ssl_engine::dist::collective::{Collective, Group, InProcess};
use ssl_engine::nn::{ParamStore, Replicas};
use ssl_engine::optim::train_step;
use ssl_engine::ssl::StepInfo;
use ssl_engine::{DType, Tensor};

const STEPS: usize = 5;
const BATCH: usize = 32;
/// The issue asks for 1e-5; the runs agree to 1.4e-12 at worst (Barlow Twins' losses): only the
/// order of the sums differs, so any real difference in the mathematics shows far above this.
const TOL: f64 = 1e-9;

/// Small heads and what each method needs to run on the tiny models.
fn settings(method: &str) -> Vec<&'static str> {
    let resnet = vec!["model=\"resnet18-cifar\"", "model_opts.width=4", "data.image_size=16"];
    let vit = vec!["model=\"vit-tiny\"", "model_opts.patch=4", "data.image_size=8", "optim.optimizer=\"adamw\""];
    let (base, heads): (Vec<&str>, Vec<&str>) = match method {
        "simsiam" => (resnet, vec!["simsiam.proj_hidden=16", "simsiam.proj_dim=16", "simsiam.pred_hidden=8"]),
        "simclr" => (resnet, vec!["simclr.proj_hidden=16", "simclr.proj_dim=8"]),
        "supcon" => (resnet, vec!["supcon.proj_hidden=16", "supcon.proj_dim=8"]),
        "byol" => (resnet, vec!["byol.proj_hidden=16", "byol.proj_dim=8", "byol.pred_hidden=16"]),
        "swav" => (resnet, vec!["swav.proj_hidden=16", "swav.proj_dim=8", "swav.num_prototypes=10", "swav.queue_size=64", "swav.epoch_queue_starts=0", "swav.freeze_prototypes_epochs=0"]),
        "mocov2plus" => (resnet, vec!["mocov2plus.proj_hidden=16", "mocov2plus.proj_dim=8", "mocov2plus.queue_size=64"]),
        "mocov3" => (resnet, vec!["mocov3.proj_hidden=16", "mocov3.proj_dim=8", "mocov3.pred_hidden=16"]),
        "dino" => (resnet, vec!["dino.proj_hidden=16", "dino.proj_dim=8", "dino.num_prototypes=12", "dino.use_bn_in_head=true"]),
        "barlow" => (resnet, vec!["barlow.proj_hidden=16", "barlow.proj_dim=16"]),
        "vicreg" => (resnet, vec!["vicreg.proj_hidden=16", "vicreg.proj_dim=16"]),
        "nnclr" => (resnet, vec!["nnclr.proj_hidden=16", "nnclr.proj_dim=8", "nnclr.pred_hidden=16", "nnclr.queue_size=64"]),
        "mae" => (vit, vec!["mae.decoder_dim=16", "mae.decoder_depth=1", "mae.decoder_heads=2"]),
        "ijepa" => (
            vit,
            vec!["model_opts.class_token=false", "ijepa.pred_dim=16", "ijepa.pred_depth=1", "ijepa.pred_heads=2", "ijepa.min_keep=0", "ijepa.target_scale=[0.25, 0.5]"],
        ),
        m => panic!("no settings for {m}"),
    };
    base.into_iter().chain(heads).collect()
}

/// What a run of `ranks` ranks gives: the five (rank-averaged) losses and rank 0's final tensors.
struct Trace {
    losses: Vec<f64>,
    tensors: Vec<(String, Vec<f64>)>,
}

fn train_ranks(method: &str, ranks: usize) -> Trace {
    let mut sets = vec![format!("method={method}"), format!("batch_size={BATCH}"), "seed=3".into(), format!("data.path={:?}", repo("data/cifar10-demo/train"))];
    sets.extend(settings(method).iter().map(|s| s.to_string()));
    sets.extend(["data.limit_per_class=16".into(), "data.resize_on_load=true".into(), "optim.base_lr=0.05".into()]);
    let cfg = Config::load(None, &sets).unwrap();
    let data = Arc::new(ssl_engine::setup::load_split(&cfg.data.path, Split::Train, &cfg).unwrap());
    let group = InProcess::group(ranks, Duration::from_secs(120));
    let mut traces: Vec<Trace> = std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|me| {
                let (cfg, data) = (&cfg, data.clone());
                s.spawn(move || {
                    let b = cpu(1);
                    let mut ps = ParamStore::new(&b, DType::F64, cfg.seed);
                    let mut m = ssl_engine::ssl::build(&cfg.method_recipe(), &mut ps, &cfg.backbone().unwrap()).unwrap();
                    let rank = Collective::<ssl_engine::backend::cpu::CpuBackend>::rank(&me);
                    let group: Group<_> = Arc::new(me);
                    ps.set_replicas(Some(Replicas { group, sync_bn: true }));
                    ps.broadcast_from_rank0().unwrap();
                    let views = m.views(&cfg.augment, cfg.data.image_size);
                    let loader = Loader::with_views(data, views.clone(), cfg.batch_size, cfg.seed, 1, 1).unwrap().shard(rank, ranks).unwrap();
                    let decays: Vec<bool> = ps.ids().map(|id| m.decays(&ps, id)).collect();
                    let mut opt = cfg.optim.optimizer().unwrap();
                    let mut losses = Vec::new();
                    for step in 0..STEPS {
                        let batch = loader.batch(0, step).unwrap().unwrap();
                        let rows = batch.labels.len();
                        let xs: Vec<Var<_>> = batch
                            .views
                            .iter()
                            .zip(&views)
                            .map(|(v, spec)| Var::constant(Tensor::from_f32(&b, v, &[rows, spec.size, spec.size, 3], DType::F64).unwrap()))
                            .collect();
                        let labels: Vec<f32> = batch.labels.iter().map(|&l| l as f32).collect();
                        let labels = Tensor::from_f32(&b, &labels, &[rows], DType::F64).unwrap();
                        let info = StepInfo { step, total_steps: STEPS, epoch: 0, steps_per_epoch: STEPS };
                        m.begin_step(&info).unwrap();
                        let stepped = train_step(
                            &ps,
                            opt.as_mut(),
                            &|id| (0.05, if decays[id.0] { 1e-4 } else { 0.0 }),
                            false,
                            |cx| {
                                let loss = m.forward(cx, &xs, Some(&labels))?.loss;
                                Ok((loss.clone(), loss.value))
                            },
                            |_, grads| m.before_update(&info, grads).map(|()| true),
                        )
                        .unwrap();
                        m.after_step(&mut ps, &info).unwrap();
                        // The step reports the ranks' mean loss rounded to f32: the full one here.
                        let local = stepped.out;
                        let mean = match ps.replicas() {
                            Some(r) => r.group.all_reduce_sum(&local).unwrap().to_f64().unwrap()[0] / ranks as f64,
                            None => local.to_f64().unwrap()[0],
                        };
                        losses.push(mean);
                    }
                    let tensors = ps.ids().map(|id| (ps.entry(id).name.clone(), ps.get(id).to_f64().unwrap())).collect();
                    Trace { losses, tensors }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for other in &traces[1..] {
        assert_eq!(other.tensors, traces[0].tensors, "{method}: the ranks' weights must stay identical");
    }
    traces.swap_remove(0)
}

/// The worst relative difference between two runs: losses (relative, absolute below 1) and every
/// parameter and buffer (relative L2, absolute below 1).
fn compare(method: &str, one: &Trace, many: &Trace, ranks: usize) -> (f64, f64) {
    let loss = one.losses.iter().zip(&many.losses).map(|(a, b)| (a - b).abs() / a.abs().max(1.0)).fold(0.0, f64::max);
    let mut weights = 0.0f64;
    for ((name, a), (_, b)) in one.tensors.iter().zip(&many.tensors) {
        let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
        // Relative, or absolute below a norm of 1 (biases in front of a batch norm start at 0 and
        // get no gradient but rounding: their relative error means nothing).
        let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(1.0);
        let e = diff / norm;
        if e > TOL {
            eprintln!("{method}: {name} differs by {e:.1e} on {ranks} ranks");
        }
        weights = weights.max(e);
    }
    eprintln!("{method}: 1 rank x {BATCH} vs {ranks} ranks x {}: losses {loss:.1e}, weights {weights:.1e} (losses {:.6?})", BATCH / ranks, one.losses);
    (loss, weights)
}

#[test]
fn two_ranks_at_half_the_batch_train_as_one_rank_for_every_method() {
    let mut failures = Vec::new();
    for method in ssl_engine::ssl::methods().iter().map(|m| m.name) {
        let one = train_ranks(method, 1);
        let two = train_ranks(method, 2);
        let (l, w) = compare(method, &one, &two, 2);
        if l > TOL || w > TOL {
            failures.push(format!("{method}: losses {l:.1e}, weights {w:.1e}"));
        }
    }
    assert!(failures.is_empty(), "2 ranks differ from 1: {failures:#?}");
}

#[test]
fn four_ranks_train_as_one_for_simclr_and_dino() {
    for method in ["simclr", "dino"] {
        let (one, four) = (train_ranks(method, 1), train_ranks(method, 4));
        let (l, w) = compare(method, &one, &four, 4);
        assert!(l <= TOL && w <= TOL, "{method}: 4 ranks differ from 1: losses {l:.1e}, weights {w:.1e}");
    }
}

#[test]
fn a_batch_the_ranks_cannot_share_is_refused_naming_both_numbers() {
    let cfg = Config::load(None, &["data.limit_per_class=4".into(), format!("data.path={:?}", repo("data/cifar10-demo/train"))]).unwrap();
    let data = Arc::new(ssl_engine::setup::load_split(&cfg.data.path, Split::Train, &cfg).unwrap());
    let views = vec![ssl_engine::data::ViewSpec { augment: cfg.augment.clone(), size: 8 }];
    let e = Loader::with_views(data, views, 30, 0, 1, 1).unwrap().shard(0, 4).err().unwrap().to_string();
    assert!(e.contains("30") && e.contains("4 ranks"), "{e}");
}

/// A rank that fails makes the others fail too instead of waiting forever.
#[test]
fn a_rank_that_fails_stops_the_others() {
    type Cpu = ssl_engine::backend::cpu::CpuBackend;
    let group = InProcess::group(2, Duration::from_secs(60));
    let started = std::time::Instant::now();
    let results: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = group
            .into_iter()
            .map(|me| {
                s.spawn(move || {
                    let b = cpu(1);
                    if Collective::<Cpu>::rank(&me) == 1 {
                        Collective::<Cpu>::abort(&me, "its data ran out");
                        return "aborted".to_string();
                    }
                    let x = Tensor::from_f32(&b, &[1.0], &[1], DType::F32).unwrap();
                    me.all_reduce_sum(&x).err().map(|e| e.to_string()).unwrap_or_default()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results[0].contains("rank 1 failed: its data ran out"), "{results:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
