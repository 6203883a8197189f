//! The optimisers against PyTorch (tests/reference/optim.safetensors, written by
//! `python tests/reference/make_fixtures.py losses`): four steps of SGD against torch.optim.SGD,
//! and of LARS against solo-learn's LARS, with clipping and bias/norm exclusion and without,
//! from the same parameters and gradients, with a learning rate that changes every step and a
//! parameter that starts at zero (LARS's plain-SGD fallback). Parameters after every step to a
//! relative L2 error of 1e-6, each tensor on its own.

mod common;

use common::*;
use ssl_engine::backend::prelude::*;
use ssl_engine::nn::{Init, Kind, Layout, ParamId, ParamStore};
use ssl_engine::optim::{Lars, LarsConfig, Optimizer, Sgd};
use ssl_engine::DType;

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
