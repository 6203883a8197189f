//! Every layer, forward and backward, against PyTorch (tests/reference/layers.safetensors),
//! to a relative L2 error of 1e-5.

mod common;

use common::*;
use ssl_engine::autograd::{Tape, Var};
use ssl_engine::backend::cpu::CpuBackend;
use ssl_engine::{Tensor, ops};

const TOL: f64 = 1e-5;

fn fx() -> Fixtures {
    Fixtures::load("layers.safetensors")
}

/// A fixture tensor; 4-d activations become NHWC.
fn load(b: &CpuBackend, f: &Fixtures, name: &str, nhwc: bool) -> Tensor<CpuBackend> {
    let (v, s) = (f.f32(name), f.shape(name));
    if nhwc && s.len() == 4 {
        let (v, s) = nchw_to_nhwc(&v, &s);
        tensor(b, &v, &s)
    } else {
        tensor(b, &v, &s)
    }
}

/// Our tensor back in PyTorch's layout.
fn torch_vals(t: &Tensor<CpuBackend>, nhwc: bool) -> Vec<f64> {
    let v = t.to_f32().unwrap();
    if nhwc && t.dims() == 4 { to64(&nhwc_to_nchw(&v, t.shape()).0) } else { to64(&v) }
}

fn check(f: &Fixtures, name: &str, got: &Tensor<CpuBackend>, nhwc: bool) -> f64 {
    let e = assert_close(name, &torch_vals(got, nhwc), f.get(name).1, TOL);
    eprintln!("{name}: rel L2 {e:.2e}");
    e
}

#[test]
fn conv2d_matches_pytorch() {
    let (b, f) = (cpu(2), fx());
    // (name, stride, pad, groups, bias)
    for (name, stride, pad, groups, bias) in [
        ("conv.k3s1p1", 1, 1, 1, false),
        ("conv.k3s2p1", 2, 1, 1, false),
        ("conv.k1s2p0", 2, 0, 1, false),
        ("conv.k3g2", 1, 1, 2, false),
        ("conv.depthwise", 1, 1, 6, false),
        ("conv.k7s2p3", 2, 3, 1, false),
        ("conv.patch4", 4, 0, 1, true),
    ] {
        let tape = Tape::new();
        let x = tape.leaf(load(&b, &f, &format!("{name}.x"), true));
        let (wv, ws) = (f.f32(&format!("{name}.w")), f.shape(&format!("{name}.w")));
        let (wv, ws) = ssl_engine::nn::params_layout::to_internal(&wv, &ws, ssl_engine::nn::Layout::ConvWeight);
        let w = tape.leaf(tensor(&b, &wv, &ws));
        let mut y = tape.conv2d(&x, &w, [stride; 2], [pad; 2], groups).unwrap();
        let bias_var = bias.then(|| tape.leaf(load(&b, &f, &format!("{name}.b"), false)));
        if let Some(bv) = &bias_var {
            y = tape.add(&y, bv).unwrap();
        }
        check(&f, &format!("{name}.y"), &y.value, true);
        let grads = tape.backward_with(&y, load(&b, &f, &format!("{name}.gy"), true)).unwrap();
        check(&f, &format!("{name}.dx"), grads.get(&x).unwrap(), true);
        let dw = grads.get(&w).unwrap().to_f32().unwrap();
        let (dw, _) = ssl_engine::nn::params_layout::from_internal(&dw, &ws, ssl_engine::nn::Layout::ConvWeight);
        let e = assert_close(&format!("{name}.dw"), &to64(&dw), f.get(&format!("{name}.dw")).1, TOL);
        eprintln!("{name}.dw: rel L2 {e:.2e}");
        if let Some(bv) = &bias_var {
            check(&f, &format!("{name}.db"), grads.get(bv).unwrap(), false);
        }
    }
}

#[test]
fn batchnorm2d_train_and_eval_match_pytorch() {
    let (b, f) = (cpu(2), fx());
    let tape = Tape::new();
    let x = tape.leaf(load(&b, &f, "bn2d.x", true));
    let g = tape.leaf(load(&b, &f, "bn2d.gamma", false));
    let be = tape.leaf(load(&b, &f, "bn2d.beta", false));
    let (rm, rv) = (load(&b, &f, "bn2d.rm0", false), load(&b, &f, "bn2d.rv0", false));
    let y = tape.batchnorm_train(&x, Some((&g, &be)), Some((&rm, &rv, 0.1)), 1e-5).unwrap();
    check(&f, "bn2d.y", &y.value, true);
    check(&f, "bn2d.rm1", &rm, false);
    check(&f, "bn2d.rv1", &rv, false);
    let grads = tape.backward_with(&y, load(&b, &f, "bn2d.gy", true)).unwrap();
    check(&f, "bn2d.dx", grads.get(&x).unwrap(), true);
    check(&f, "bn2d.dgamma", grads.get(&g).unwrap(), false);
    check(&f, "bn2d.dbeta", grads.get(&be).unwrap(), false);
    let ye = ops::batchnorm_eval(&x.value, Some(&g.value), Some(&be.value), &rm, &rv, 1e-5).unwrap();
    check(&f, "bn2d.eval_y", &ye, true);
}

#[test]
fn batchnorm1d_without_affine_matches_pytorch() {
    let (b, f) = (cpu(2), fx());
    let tape = Tape::new();
    let x = tape.leaf(load(&b, &f, "bn1d.x", false));
    let (rm, rv) = (Tensor::zeros(&b, &[6], ssl_engine::DType::F32).unwrap(), Tensor::full(&b, &[6], 1.0, ssl_engine::DType::F32).unwrap());
    let y = tape.batchnorm_train(&x, None, Some((&rm, &rv, 0.1)), 1e-5).unwrap();
    check(&f, "bn1d.y", &y.value, false);
    check(&f, "bn1d.rm1", &rm, false);
    check(&f, "bn1d.rv1", &rv, false);
    let grads = tape.backward_with(&y, load(&b, &f, "bn1d.gy", false)).unwrap();
    check(&f, "bn1d.dx", grads.get(&x).unwrap(), false);
}

#[test]
fn linear_matches_pytorch() {
    let (b, f) = (cpu(2), fx());
    let tape = Tape::new();
    let [x, w, bias] = ["x", "w", "b"].map(|n| tape.leaf(load(&b, &f, &format!("linear.{n}"), false)));
    let y = tape.linear(&x, &w, Some(&bias)).unwrap();
    check(&f, "linear.y", &y.value, false);
    let grads = tape.backward_with(&y, load(&b, &f, "linear.gy", false)).unwrap();
    for (n, v) in [("dx", &x), ("dw", &w), ("db", &bias)] {
        check(&f, &format!("linear.{n}"), grads.get(v).unwrap(), false);
    }
}

#[test]
fn layernorm_matches_pytorch() {
    let (b, f) = (cpu(2), fx());
    let tape = Tape::new();
    let [x, g, be] = ["x", "gamma", "beta"].map(|n| tape.leaf(load(&b, &f, &format!("layernorm.{n}"), false)));
    let y = tape.layernorm(&x, &g, &be, 1e-6).unwrap();
    check(&f, "layernorm.y", &y.value, false);
    let grads = tape.backward_with(&y, load(&b, &f, "layernorm.gy", false)).unwrap();
    for (n, v) in [("dx", &x), ("dgamma", &g), ("dbeta", &be)] {
        check(&f, &format!("layernorm.{n}"), grads.get(v).unwrap(), false);
    }
}

#[test]
fn attention_matches_pytorch() {
    let (b, f) = (cpu(2), fx());
    let tape = Tape::new();
    let [q, k, v] = ["q", "k", "v"].map(|n| tape.leaf(load(&b, &f, &format!("attention.{n}"), false)));
    let y = tape.attention(&q, &k, &v, 0.5).unwrap(); // 1/sqrt(head dim 4)
    check(&f, "attention.y", &y.value, false);
    let grads = tape.backward_with(&y, load(&b, &f, "attention.gy", false)).unwrap();
    for (n, var) in [("dq", &q), ("dk", &k), ("dv", &v)] {
        check(&f, &format!("attention.{n}"), grads.get(var).unwrap(), false);
    }
}

#[test]
fn cosine_loss_with_and_without_stop_gradient_matches_pytorch() {
    let (b, f) = (cpu(2), fx());
    for (name, stop) in [("cosine.stopgrad", true), ("cosine.nostopgrad", false)] {
        let tape = Tape::new();
        let p = tape.leaf(load(&b, &f, &format!("{name}.p"), false));
        let z = tape.leaf(load(&b, &f, &format!("{name}.z"), false));
        let zz = if stop { z.detach() } else { z.clone() };
        let loss = tape.cosine_loss(&p, &zz, 1e-12).unwrap();
        check(&f, &format!("{name}.loss"), &loss.value, false);
        let grads = tape.backward(&loss).unwrap();
        check(&f, &format!("{name}.dp"), grads.get(&p).unwrap(), false);
        match grads.get(&z) {
            Some(dz) => check(&f, &format!("{name}.dz"), dz, false),
            None => {
                assert!(stop, "{name}: no gradient reached z");
                assert!(f.get(&format!("{name}.dz")).1.iter().all(|&v| v == 0.0));
                0.0
            }
        };
    }
}

#[test]
fn cross_entropy_matches_pytorch() {
    let (b, f) = (cpu(2), fx());
    let tape = Tape::new();
    let x = tape.leaf(load(&b, &f, "ce.logits", false));
    let labels = load(&b, &f, "ce.labels", false);
    let loss = tape.cross_entropy(&x, &labels).unwrap();
    check(&f, "ce.loss", &loss.value, false);
    let grads = tape.backward(&loss).unwrap();
    check(&f, "ce.dlogits", grads.get(&x).unwrap(), false);
}

#[test]
fn gelu_softmax_maxpool_match_pytorch() {
    let (b, f) = (cpu(2), fx());
    type Fwd = fn(&Tape<CpuBackend>, &Var<CpuBackend>) -> Var<CpuBackend>;
    let cases: [(&str, bool, Fwd); 3] = [
        ("gelu", false, |t, x| t.gelu(x).unwrap()),
        ("softmax", false, |t, x| t.softmax(x).unwrap()),
        ("maxpool", true, |t, x| t.maxpool2d(x, 3, 2, 1).unwrap()),
    ];
    for (name, nhwc, fwd) in cases {
        let tape = Tape::new();
        let x = tape.leaf(load(&b, &f, &format!("{name}.x"), nhwc));
        let y = fwd(&tape, &x);
        check(&f, &format!("{name}.y"), &y.value, nhwc);
        let grads = tape.backward_with(&y, load(&b, &f, &format!("{name}.gy"), nhwc)).unwrap();
        check(&f, &format!("{name}.dx"), grads.get(&x).unwrap(), nhwc);
    }
}
