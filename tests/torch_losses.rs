//! The self-supervised losses against PyTorch (tests/reference/losses.safetensors, written by
//! `python tests/reference/make_fixtures.py losses`): F.normalize, and SimCLR's NT-Xent as
//! solo-learn computes it, forward and backward, to a relative L2 error of 1e-5. The same graph
//! on the WGSL backend and the emulated CUDA device is checked against the CPU by conformance.

mod common;

use common::*;
use ssl_engine::autograd::Tape;
use ssl_engine::nn::{Ctx, ParamStore};
use ssl_engine::ssl::byol::{byol_loss, tau_at};
use ssl_engine::ssl::simclr::nt_xent;
use ssl_engine::{DType, Tensor};

const TOL: f64 = 1e-5;

fn check(f: &Fixtures, name: &str, got: &Tensor<ssl_engine::backend::cpu::CpuBackend>) {
    let e = assert_close(name, &to64(&got.to_f32().unwrap()), f.get(name).1, TOL);
    eprintln!("{name}: rel L2 {e:.2e}");
}

#[test]
fn l2_normalize_matches_f_normalize() {
    let (b, f) = (cpu(2), Fixtures::load("losses.safetensors"));
    let tape = Tape::new();
    let x = tape.leaf(tensor(&b, &f.f32("normalize.x"), f.get("normalize.x").0));
    let w = tensor(&b, &f.f32("normalize.w"), f.get("normalize.w").0);
    let y = tape.l2_normalize(&x, 1e-12).unwrap();
    check(&f, "normalize.y", &y.value);
    let loss = tape.sum_axis(&tape.mul(&y, &ssl_engine::autograd::Var::constant(w)).unwrap(), 1).unwrap();
    let loss = tape.sum_axis(&loss, 0).unwrap();
    let grads = tape.backward(&loss).unwrap();
    check(&f, "normalize.dx", grads.get(&x).unwrap());
}

#[test]
fn nt_xent_matches_solo_learn_simclr_loss() {
    let (b, f) = (cpu(2), Fixtures::load("losses.safetensors"));
    for temp in [0.2f32, 0.5] {
        let name = format!("ntxent.t{temp}");
        let tape = Tape::new();
        let ps = ParamStore::new(&b, DType::F32, 0);
        let cx = Ctx::new(&tape, &ps, true);
        let z1 = tape.leaf(tensor(&b, &f.f32(&format!("{name}.z1")), &[6, 8]));
        let z2 = tape.leaf(tensor(&b, &f.f32(&format!("{name}.z2")), &[6, 8]));
        let loss = nt_xent(&cx, &[z1.clone(), z2.clone()], temp).unwrap();
        check(&f, &format!("{name}.loss"), &loss.value);
        let grads = tape.backward(&loss).unwrap();
        check(&f, &format!("{name}.dz1"), grads.get(&z1).unwrap());
        check(&f, &format!("{name}.dz2"), grads.get(&z2).unwrap());
    }
}

#[test]
fn byol_loss_matches_solo_learn_and_gives_the_momentum_views_no_gradient() {
    let (b, f) = (cpu(2), Fixtures::load("losses.safetensors"));
    let tape = Tape::new();
    let leaf = |name: &str| tape.leaf(tensor(&b, &f.f32(name), f.get(name).0));
    let (p1, p2, z1, z2) = (leaf("byol.p1"), leaf("byol.p2"), leaf("byol.z1m"), leaf("byol.z2m"));
    let loss = byol_loss(&tape, [&p1, &p2], [&z1, &z2]).unwrap();
    check(&f, "byol.loss", &loss.value);
    let grads = tape.backward(&loss).unwrap();
    check(&f, "byol.dp1", grads.get(&p1).unwrap());
    check(&f, "byol.dp2", grads.get(&p2).unwrap());
    assert!(grads.get(&z1).is_none() && grads.get(&z2).is_none(), "the momentum projections must take no gradient");
}

/// Three EMA steps of a ten-step run through `tau_at` and the fused `ema_update`, against
/// solo-learn's MomentumUpdater (update with the current tau, then move tau).
#[test]
fn momentum_update_matches_solo_learn_momentum_updater() {
    let (b, f) = (cpu(2), Fixtures::load("losses.safetensors"));
    let m = tensor(&b, &f.f32("ema.m0"), f.get("ema.m0").0);
    for step in 0..3 {
        let o = tensor(&b, &f.f32(&format!("ema.o{step}")), f.get("ema.m0").0);
        let tau = tau_at(0.99, 1.0, step, 10) as f32;
        ssl_engine::ops::ema_update(&[(&m, &o)], tau).unwrap();
        check(&f, &format!("ema.m{}", step + 1), &m);
    }
}
