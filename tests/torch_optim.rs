//! The optimisers against PyTorch (tests/reference/optim.safetensors, written by
//! `python tests/reference/make_fixtures.py losses`): four steps of SGD against torch.optim.SGD,
//! and of LARS against solo-learn's LARS, with clipping and bias/norm exclusion and without,
//! from the same parameters and gradients, with a learning rate that changes every step and a
//! parameter that starts at zero (LARS's plain-SGD fallback). Parameters after every step to a
//! relative L2 error of 1e-6, each tensor on its own.
//!
//! AdamW against torch.optim.AdamW in float64 (tests/reference/adamw.safetensors, written by
//! `python tests/reference/make_fixtures.py adamw`): five steps, parameters, both moments and
//! the per-parameter step counts after each to 1e-6 (the WGSL and CUDA kernels against the CPU:
//! tests/common/conformance.rs); and a tiny run with AdamW stopped mid-epoch resumes bit for bit.

mod common;

use common::*;
use ssl_engine::backend::prelude::*;
use ssl_engine::nn::{Init, Kind, Layout, ParamId, ParamStore};
use ssl_engine::optim::{AdamW, Lars, LarsConfig, Optimizer, Sgd};
use ssl_engine::{DType, Tensor};

const PARAMS: [&str; 6] = ["fc1.weight", "fc1.bias", "bn.weight", "bn.bias", "fc2.weight", "zero.weight"];
const LRS: [f32; 4] = [0.3, 0.25, 0.2, 0.1];
const WD: f32 = 5e-3;

fn check_run<B: Backend>(b: &B, f: &Fixtures, run: &str, opt: &mut dyn Optimizer<B>) {
    let mut ps = ParamStore::new(b, DType::F32, 0);
    let ids: Vec<ParamId> = PARAMS
        .iter()
        .map(|name| {
            let init = format!("init.{name}");
            let id = ps.add(name, &f.shape(&init), Init::Zeros, Kind::Param, Layout::Same).unwrap();
            ps.set_from_torch(id, &f.f32(&init), &f.shape(&init)).unwrap();
            id
        })
        .collect();
    for (step, lr) in LRS.iter().enumerate() {
        let grads: Vec<_> = ids
            .iter()
            .zip(PARAMS)
            .map(|(id, name)| {
                let g = format!("grad{step}.{name}");
                (*id, tensor(b, &f.f32(&g), &f.shape(&g)))
            })
            .collect();
        opt.step(&ps, &grads, &|_| (*lr, WD)).unwrap();
        for (id, name) in ids.iter().zip(PARAMS) {
            let want = format!("{run}.step{step}.{name}");
            let e = assert_close(&want, &to64(&ps.to_torch(*id).unwrap().0), f.get(&want).1, 1e-6);
            eprintln!("{want}: rel L2 {e:.2e}");
        }
    }
}

#[test]
fn sgd_matches_torch_optim_sgd() {
    let (b, f) = (cpu(2), Fixtures::load("optim.safetensors"));
    check_run(&b, &f, "sgd", &mut Sgd::new(0.9));
}

#[test]
fn lars_matches_solo_learn_with_and_without_clipping_and_exclusion() {
    let (b, f) = (cpu(2), Fixtures::load("optim.safetensors"));
    check_run(&b, &f, "lars", &mut Lars::new(0.9, LarsConfig::default()));
    let plain = LarsConfig { clip_lr: false, exclude_bias_n_norm: false, ..LarsConfig::default() };
    check_run(&b, &f, "lars_plain", &mut Lars::new(0.9, plain));
}

const ADAMW_PARAMS: [&str; 4] = ["fc1.weight", "fc1.bias", "fc2.weight", "late.weight"];
const ADAMW_LRS: [f32; 5] = [0.1, 0.05, 0.02, 0.01, 0.005];
const ADAMW_WD: f32 = 0.05;

/// Five AdamW steps in f64 on the CPU against torch's (betas 0.9 / 0.95, weight decay 0.05, a
/// learning rate that changes every step). "late.weight" has no gradient at steps 0 and 2:
/// like torch, it neither moves nor counts those steps, so its bias corrections trail.
#[test]
fn adamw_matches_torch_optim_adamw_in_f64() {
    let (b, f) = (cpu(2), Fixtures::load("adamw.safetensors"));
    let mut ps = ParamStore::new(&b, DType::F64, 0);
    let ids: Vec<ParamId> = ADAMW_PARAMS
        .iter()
        .map(|name| {
            let init = format!("init.{name}");
            let id = ps.add(name, &f.shape(&init), Init::Zeros, Kind::Param, Layout::Same).unwrap();
            ps.set_from_torch(id, &f.f32(&init), &f.shape(&init)).unwrap();
            assert_eq!(ps.get(id).to_f64().unwrap(), f.get(&init).1, "{init} is not exact in f32");
            id
        })
        .collect();
    let mut opt = AdamW::new([0.9, 0.95], 1e-8).unwrap();
    let mut worst = 0.0f64;
    for (step, lr) in ADAMW_LRS.iter().enumerate() {
        let grads: Vec<_> = ids
            .iter()
            .zip(ADAMW_PARAMS)
            .filter(|(_, name)| f.has(&format!("grad{step}.{name}")))
            .map(|(id, name)| {
                let g = format!("grad{step}.{name}");
                (*id, Tensor::from_f64(&b, f.get(&g).1, &f.shape(&g), DType::F64).unwrap())
            })
            .collect();
        opt.step(&ps, &grads, &|_| (*lr, ADAMW_WD)).unwrap();
        let state = opt.state();
        let counters = opt.counters();
        for (id, name) in ids.iter().zip(ADAMW_PARAMS) {
            let want = format!("adamw.step{step}.{name}");
            worst = worst.max(assert_close(&want, &ps.get(*id).to_f64().unwrap(), f.get(&want).1, 1e-6));
            for kind in ["exp_avg", "exp_avg_sq"] {
                let want = format!("adamw.step{step}.{kind}.{name}");
                let got = state.iter().find(|(k, i, _)| *k == kind && i == id);
                match (got, f.has(&want)) {
                    (Some((_, _, t)), true) => worst = worst.max(assert_close(&want, &t.to_f64().unwrap(), f.get(&want).1, 1e-6)),
                    (None, false) => {}
                    (got, has) => panic!("{want}: state present here {}, in torch {has}", got.is_some()),
                }
            }
            let count = counters.iter().find(|(k, i, _)| *k == "step" && i == id).map(|c| c.2);
            let want = format!("adamw.step{step}.count.{name}");
            assert_eq!(count.map(|c| c as f64), f.has(&want).then(|| f.get(&want).1[0]), "{want}");
        }
    }
    eprintln!("adamw: worst relative L2 over parameters and moments {worst:.2e}");
}

/// A tiny SimSiam run with AdamW stopped at step 4 (inside epoch 2) and resumed gives the same
/// losses and the same final state, bit for bit: the checkpoint holds both moments and the step
/// count of every parameter.
#[test]
fn adamw_runs_resume_bit_identically_mid_epoch() {
    use common::tiny_run::{bits, run, state_digest, tiny};
    let sets = ["optim.optimizer=\"adamw\"", "optim.base_lr=0.02", "optim.betas=[0.9, 0.95]", "optim.weight_decay=0.05"];
    let straight_dir = tmp_dir("adamw-straight");
    let straight = run(&tiny(&straight_dir, &sets), None).unwrap();
    assert!(straight.losses.iter().all(|(_, l)| l.is_finite()), "{:?}", straight.losses);
    let out = tmp_dir("adamw-resume4");
    let first = run(&tiny(&out, &[&sets[..], &["max_steps=4"]].concat()), None).unwrap();
    let wf = ssl_engine::checkpoint::WeightFile::read(&out.join("last.safetensors")).unwrap();
    for kind in ["exp_avg", "exp_avg_sq", "step"] {
        let key = format!("optimizer.{kind}.backbone.conv1.weight");
        assert!(wf.tensors.contains_key(&key), "no {key} in the checkpoint");
    }
    assert_eq!(wf.tensors["optimizer.step.backbone.conv1.weight"].1, [4.0], "the step count after 4 steps");
    let rest = run(&tiny(&out, &sets), Some(&out.join("last.safetensors"))).unwrap();
    let mut joined = bits(&first);
    joined.extend(bits(&rest));
    assert_eq!(joined, bits(&straight), "loss trace after resuming at step 4 differs");
    assert_eq!(state_digest(&out.join("last.safetensors")), state_digest(&straight_dir.join("last.safetensors")), "final state differs");
}
