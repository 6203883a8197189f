//! The self-supervised losses against PyTorch (tests/reference/losses.safetensors, written by
//! `python tests/reference/make_fixtures.py losses`): F.normalize, and SimCLR's NT-Xent as
//! solo-learn computes it, forward and backward, to a relative L2 error of 1e-5. The same graph
//! on the WGSL backend and the emulated CUDA device is checked against the CPU by conformance.

mod common;

use common::*;
use ssl_engine::autograd::Tape;
use ssl_engine::nn::{Ctx, ParamStore};
use ssl_engine::ssl::byol::byol_loss;
use ssl_engine::ssl::momentum::tau_at;
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
        let images: Vec<usize> = (0..6).collect();
        let loss = nt_xent(&cx, &[z1.clone(), z2.clone()], &images, temp).unwrap();
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

// ---- the other methods' losses, against solo-learn's functions (make_fixtures.py) ----------

/// A fixture tensor as a tape leaf.
fn leaf(tape: &Tape<ssl_engine::backend::cpu::CpuBackend>, b: &ssl_engine::backend::cpu::CpuBackend, f: &Fixtures, name: &str) -> ssl_engine::autograd::Var<ssl_engine::backend::cpu::CpuBackend> {
    tape.leaf(tensor(b, &f.f32(name), f.get(name).0))
}

#[test]
fn supcon_loss_matches_solo_learn_with_repeated_labels() {
    let (b, f) = (cpu(2), Fixtures::load("losses.safetensors"));
    let tape = Tape::new();
    let ps = ParamStore::new(&b, DType::F32, 0);
    let cx = Ctx::new(&tape, &ps, true);
    let (z1, z2) = (leaf(&tape, &b, &f, "supcon.z1"), leaf(&tape, &b, &f, "supcon.z2"));
    let labels: Vec<usize> = f.f32("supcon.labels").iter().map(|&l| l as usize).collect();
    let loss = nt_xent(&cx, &[z1.clone(), z2.clone()], &labels, 0.2).unwrap();
    check(&f, "supcon.loss", &loss.value);
    let grads = tape.backward(&loss).unwrap();
    check(&f, "supcon.dz1", grads.get(&z1).unwrap());
    check(&f, "supcon.dz2", grads.get(&z2).unwrap());
}

/// The fixture's queue [2, d, K] as our two queues of rows [K, d].
fn queues_as_rows(b: &ssl_engine::backend::cpu::CpuBackend, f: &Fixtures, name: &str) -> Vec<Tensor<ssl_engine::backend::cpu::CpuBackend>> {
    let q = tensor(b, &f.f32(name), f.get(name).0);
    (0..2).map(|v| ssl_engine::ops::permute(&ssl_engine::ops::slice(&q, 0, v, 1).unwrap().reshape(&[8, 18]).unwrap(), &[1, 0]).unwrap()).collect()
}

#[test]
fn mocov2plus_loss_and_queue_update_match_solo_learn() {
    use ssl_engine::ssl::mocov2plus::mocov2plus_loss;
    use ssl_engine::ssl::queue::Queue;
    let (b, f) = (cpu(2), Fixtures::load("losses.safetensors"));
    let tape = Tape::new();
    let (z1, z2) = (leaf(&tape, &b, &f, "mocov2.z1"), leaf(&tape, &b, &f, "mocov2.z2"));
    let key = |n: &str| ssl_engine::ops::l2_normalize(&tensor(&b, &f.f32(n), &[6, 8]), 1e-12).unwrap().0;
    let (k1, k2) = (key("mocov2.k1"), key("mocov2.k2"));
    let queue = queues_as_rows(&b, &f, "mocov2.queue");
    let (q1, q2) = (tape.l2_normalize(&z1, 1e-12).unwrap(), tape.l2_normalize(&z2, 1e-12).unwrap());
    let a = mocov2plus_loss(&tape, &q1, &k2, &queue[1], 0.2).unwrap();
    let c = mocov2plus_loss(&tape, &q2, &k1, &queue[0], 0.2).unwrap();
    let loss = tape.scale(&tape.add(&a, &c).unwrap(), 0.5).unwrap();
    check(&f, "mocov2.loss", &loss.value);
    let grads = tape.backward(&loss).unwrap();
    check(&f, "mocov2.dz1", grads.get(&z1).unwrap());
    check(&f, "mocov2.dz2", grads.get(&z2).unwrap());
    // The enqueue: solo-learn's pointer starts at 12 of 18; ours reaches 12 after two batches.
    let want = queues_as_rows(&b, &f, "mocov2.queue_after");
    for (v, k) in [k1, k2].iter().enumerate() {
        let mut q = Queue::new(&b, 18, 8, DType::F32, None).unwrap();
        q.rows = queue[v].clone();
        // Two pushes of the current contents' own rows 0..12 keep them, and move ptr to 12.
        q.push(&ssl_engine::ops::slice(&queue[v], 0, 0, 6).unwrap()).unwrap();
        q.push(&ssl_engine::ops::slice(&queue[v], 0, 6, 6).unwrap()).unwrap();
        assert_eq!(q.ptr(), 12);
        q.push(k).unwrap();
        let e = assert_close(&format!("queue{v}"), &to64(&q.rows.to_f32().unwrap()), &to64(&want[v].to_f32().unwrap()), TOL);
        eprintln!("mocov2.queue_after view {v}: rel L2 {e:.2e}");
        assert_eq!(q.ptr() as f32, f.f32("mocov2.ptr_after")[0]);
    }
}

#[test]
fn mocov3_loss_matches_solo_learn() {
    use ssl_engine::ssl::mocov3::mocov3_loss;
    let (b, f) = (cpu(2), Fixtures::load("losses.safetensors"));
    let tape = Tape::new();
    let l = |n: &str| leaf(&tape, &b, &f, n);
    let (q1, q2, k1, k2) = (l("mocov3.q1"), l("mocov3.q2"), l("mocov3.k1"), l("mocov3.k2"));
    let loss = tape.add(&mocov3_loss(&tape, &q1, &k2, 0.2).unwrap(), &mocov3_loss(&tape, &q2, &k1, 0.2).unwrap()).unwrap();
    check(&f, "mocov3.loss", &loss.value);
    let grads = tape.backward(&loss).unwrap();
    check(&f, "mocov3.dq1", grads.get(&q1).unwrap());
    check(&f, "mocov3.dq2", grads.get(&q2).unwrap());
    assert!(grads.get(&k1).is_none() && grads.get(&k2).is_none(), "the keys must take no gradient");
}

#[test]
fn barlow_twins_loss_matches_solo_learn() {
    let (b, f) = (cpu(2), Fixtures::load("losses.safetensors"));
    let tape = Tape::new();
    let (z1, z2) = (leaf(&tape, &b, &f, "barlow.z1"), leaf(&tape, &b, &f, "barlow.z2"));
    let loss = ssl_engine::ssl::barlow::barlow_loss(&tape, &z1, &z2, 0.0051, 0.1).unwrap();
    check(&f, "barlow.loss", &loss.value);
    let grads = tape.backward(&loss).unwrap();
    check(&f, "barlow.dz1", grads.get(&z1).unwrap());
    check(&f, "barlow.dz2", grads.get(&z2).unwrap());
}

#[test]
fn vicreg_loss_matches_solo_learn() {
    let (b, f) = (cpu(2), Fixtures::load("losses.safetensors"));
    let tape = Tape::new();
    let (z1, z2) = (leaf(&tape, &b, &f, "vicreg.z1"), leaf(&tape, &b, &f, "vicreg.z2"));
    let cfg = ssl_engine::ssl::vicreg::VicregConfig::default();
    let loss = ssl_engine::ssl::vicreg::vicreg_loss(&tape, &z1, &z2, &cfg).unwrap();
    check(&f, "vicreg.loss", &loss.value);
    let grads = tape.backward(&loss).unwrap();
    check(&f, "vicreg.dz1", grads.get(&z1).unwrap());
    check(&f, "vicreg.dz2", grads.get(&z2).unwrap());
}

#[test]
fn swav_sinkhorn_and_loss_match_solo_learn() {
    use ssl_engine::ssl::losses::sinkhorn;
    let (b, f) = (cpu(2), Fixtures::load("losses.safetensors"));
    let tape = Tape::new();
    let (p1, p2) = (leaf(&tape, &b, &f, "swav.p1"), leaf(&tape, &b, &f, "swav.p2"));
    let a1 = sinkhorn(&p1.value, 0.05, 3).unwrap();
    let a2 = sinkhorn(&p2.value, 0.05, 3).unwrap();
    check(&f, "swav.a1", &a1);
    check(&f, "swav.a2", &a2);
    // With a queue: its scores go under the batch's, and the batch's rows come back.
    let qext = tensor(&b, &f.f32("swav.qext"), &[4, 10]);
    let with_queue = sinkhorn(&ssl_engine::ops::concat(&[&p1.value, &qext], 0).unwrap(), 0.05, 3).unwrap();
    check(&f, "swav.a1_queue", &ssl_engine::ops::slice(&with_queue, 0, 0, 6).unwrap());
    let loss = ssl_engine::ssl::swav::swav_loss(&tape, &[p1.clone(), p2.clone()], &[a1, a2], 0.1).unwrap();
    check(&f, "swav.loss", &loss.value);
    let grads = tape.backward(&loss).unwrap();
    check(&f, "swav.dp1", grads.get(&p1).unwrap());
    check(&f, "swav.dp2", grads.get(&p2).unwrap());
}

#[test]
fn dino_loss_centre_and_teacher_temperature_match_solo_learn() {
    use ssl_engine::ssl::dino::{DinoConfig, dino_loss};
    let (b, f) = (cpu(2), Fixtures::load("losses.safetensors"));
    let cfg = DinoConfig { warmup_teacher_temperature_epochs: 3, ..DinoConfig::default() };
    let temp = cfg.teacher_temperature_at(1);
    assert!((temp - f.f32("dino.temp")[0]).abs() < 1e-7, "teacher temperature {temp}");
    let tape = Tape::new();
    let s = leaf(&tape, &b, &f, "dino.s");
    let crops: Vec<_> = (0..3).map(|c| tape.slice(&s, 0, 6 * c, 6).unwrap()).collect();
    let t = tensor(&b, &f.f32("dino.t"), &[12, 10]);
    let teacher: Vec<_> = (0..2).map(|c| ssl_engine::ops::slice(&t, 0, 6 * c, 6).unwrap()).collect();
    let center = tensor(&b, &f.f32("dino.center0"), &[10]);
    let (loss, batch_mean) = dino_loss(&tape, &crops, &teacher, &center, 0.1, temp).unwrap();
    check(&f, "dino.loss", &loss.value);
    let grads = tape.backward(&loss).unwrap();
    check(&f, "dino.ds", grads.get(&s).unwrap());
    ssl_engine::ops::ema_update(&[(&center, &batch_mean)], 0.9).unwrap();
    check(&f, "dino.center1", &center);
}

/// NNCLR against solo-learn in float64 (tests/reference/nnclr.safetensors, written by
/// `python tests/reference/make_fixtures.py nnclr`): each normalised projection's nearest
/// neighbour in a fixed queue (the same indices), the symmetric loss and its gradients for the
/// predictions to a relative 1e-6, the neighbours the queue's rows bit for bit, and the FIFO
/// enqueue of the normalised first-view projections at the pointer.
#[test]
fn nnclr_neighbours_loss_and_queue_update_match_solo_learn_in_f64() {
    use ssl_engine::ssl::nnclr::{nearest_indices, nnclr_loss, queue_rows};
    use ssl_engine::ssl::queue::Queue;
    const TOL64: f64 = 1e-6;
    let (b, f) = (cpu(2), Fixtures::load("nnclr.safetensors"));
    let t64 = |name: &str| Tensor::from_f64(&b, f.get(name).1, f.get(name).0, DType::F64).unwrap();
    let check64 = |name: &str, got: &Tensor<ssl_engine::backend::cpu::CpuBackend>| {
        let e = assert_close(name, &got.to_f64().unwrap(), f.get(name).1, TOL64);
        eprintln!("{name}: rel L2 {e:.2e}");
    };
    let queue = t64("nnclr.queue");
    let unit = |name: &str| ssl_engine::ops::l2_normalize(&t64(name), 1e-12).unwrap().0;
    let (z1, z2) = (unit("nnclr.z1"), unit("nnclr.z2"));
    let (idx1, idx2) = (nearest_indices(&z1, &queue).unwrap(), nearest_indices(&z2, &queue).unwrap());
    let as_usize = |name: &str| f.get(name).1.iter().map(|&v| v as usize).collect::<Vec<_>>();
    assert_eq!((&idx1, &idx2), (&as_usize("nnclr.idx1"), &as_usize("nnclr.idx2")), "nearest neighbours");
    let (nn1, nn2) = (queue_rows(&queue, &idx1).unwrap(), queue_rows(&queue, &idx2).unwrap());
    let qv = queue.to_f64().unwrap();
    for (i, &r) in idx1.iter().enumerate() {
        assert_eq!(nn1.to_f64().unwrap()[i * 8..(i + 1) * 8], qv[r * 8..(r + 1) * 8], "neighbour {i} is not queue row {r}");
    }
    let tape = Tape::new();
    let (p1, p2) = (tape.leaf(t64("nnclr.p1")), tape.leaf(t64("nnclr.p2")));
    let a = nnclr_loss(&tape, &nn1, &p2, 0.2).unwrap();
    let c = nnclr_loss(&tape, &nn2, &p1, 0.2).unwrap();
    let loss = tape.scale(&tape.add(&a, &c).unwrap(), 0.5).unwrap();
    check64("nnclr.loss", &loss.value);
    let grads = tape.backward(&loss).unwrap();
    check64("nnclr.dp1", grads.get(&p1).unwrap());
    check64("nnclr.dp2", grads.get(&p2).unwrap());
    // The enqueue: solo-learn's pointer at 12 of 18; ours reaches 12 after two batches of the
    // queue's own rows, then takes z1 and wraps to 0.
    let mut q = Queue::new(&b, 18, 8, DType::F64, None).unwrap();
    q.rows = queue.clone();
    q.push(&ssl_engine::ops::slice(&queue, 0, 0, 6).unwrap()).unwrap();
    q.push(&ssl_engine::ops::slice(&queue, 0, 6, 6).unwrap()).unwrap();
    q.push(&z1).unwrap();
    assert_eq!(q.ptr() as f64, f.get("nnclr.ptr_after").1[0]);
    check64("nnclr.queue_after", &q.rows);
}
