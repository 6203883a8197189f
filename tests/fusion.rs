//! Fused ops against the separate ops they replace, on the CPU reference: batch norm's fused
//! tail relu?(bn(x) + residual?) must give, bit for bit, the values and gradients of
//! batchnorm_train / batchnorm_eval, add and relu run one after another (the separate ops are
//! each checked against PyTorch and finite differences elsewhere).

mod common;

use ssl_engine::autograd::{Tape, Var};
use ssl_engine::backend::cpu::CpuBackend;
use ssl_engine::ops;
use ssl_engine::rng::Rng;
use ssl_engine::{DType, Tensor};

type B = CpuBackend;

fn random(b: &B, rng: &mut Rng, shape: &[usize]) -> Tensor<B> {
    let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.uniform_range(-1.5, 1.5) as f32).collect();
    Tensor::from_f32(b, &v, shape, DType::F32).unwrap()
}

fn bits(t: &Tensor<B>) -> Vec<u32> {
    t.to_f32().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn fused_batchnorm_tail_matches_the_separate_ops_bit_for_bit() {
    let b = common::cpu(2);
    let mut rng = Rng::new(7);
    let shape = [4, 5, 3, 6];
    let (x, g, be, res, seed) =
        (random(&b, &mut rng, &shape), random(&b, &mut rng, &[6]), random(&b, &mut rng, &[6]), random(&b, &mut rng, &shape), random(&b, &mut rng, &shape));
    for (residual, relu) in [(false, true), (true, true), (true, false), (false, false)] {
        let what = format!("residual={residual} relu={relu}");
        // Fused: one op on the tape.
        let t = Tape::new();
        let (xv, gv, bv, rv) = (t.leaf(x.clone()), t.leaf(g.clone()), t.leaf(be.clone()), t.leaf(res.clone()));
        let fused = t.batchnorm_train_tail(&xv, Some((&gv, &bv)), None, 1e-5, residual.then_some(&rv), relu).unwrap();
        let fg = t.backward_with(&fused, seed.clone()).unwrap();
        // Separate: batch norm, add, relu.
        let s = Tape::new();
        let (xs, gs, bs, rs) = (s.leaf(x.clone()), s.leaf(g.clone()), s.leaf(be.clone()), s.leaf(res.clone()));
        let mut y: Var<B> = s.batchnorm_train(&xs, Some((&gs, &bs)), None, 1e-5).unwrap();
        if residual {
            y = s.add(&y, &rs).unwrap();
        }
        if relu {
            y = s.relu(&y).unwrap();
        }
        let sg = s.backward_with(&y, seed.clone()).unwrap();
        assert_eq!(bits(&fused.value), bits(&y.value), "{what}: forward");
        for (name, a, c) in [("x", &xv, &xs), ("gamma", &gv, &gs), ("beta", &bv, &bs)] {
            assert_eq!(bits(fg.get(a).unwrap()), bits(sg.get(c).unwrap()), "{what}: d{name}");
        }
        match residual {
            true => assert_eq!(bits(fg.get(&rv).unwrap()), bits(sg.get(&rs).unwrap()), "{what}: dresidual"),
            false => assert!(fg.get(&rv).is_none(), "{what}: an unused residual got a gradient"),
        }
        // Eval mode with running statistics.
        let (rm, rvar) = (random(&b, &mut rng, &[6]), Tensor::from_f32(&b, &[0.7; 6], &[6], DType::F32).unwrap());
        let fe = ops::batchnorm_eval_tail(&x, Some(&g), Some(&be), &rm, &rvar, 1e-5, residual.then_some(&res), relu).unwrap();
        let mut se = ops::batchnorm_eval(&x, Some(&g), Some(&be), &rm, &rvar, 1e-5).unwrap();
        if residual {
            se = ops::add(&se, &res).unwrap();
        }
        if relu {
            se = ops::unary(ssl_engine::backend::Unary::Relu, &se).unwrap();
        }
        assert_eq!(bits(&fe), bits(&se), "{what}: eval forward");
    }
}

/// A wrong residual is refused with the op and the shape named.
#[test]
fn fused_batchnorm_tail_refuses_a_residual_of_another_shape() {
    let b = common::cpu(1);
    let mut rng = Rng::new(8);
    let (x, r) = (random(&b, &mut rng, &[4, 6]), random(&b, &mut rng, &[4, 5]));
    let e = ops::batchnorm_train_tail(&x, None, None, None, 1e-5, Some(&r), true).err().expect("shape mismatch");
    let msg = e.to_string();
    assert!(msg.contains("batchnorm") && msg.contains("residual"), "{msg}");
}

/// conv2d_batchnorm_train (one backend call, recorded as the convolution and the batch norm)
/// against conv2d then batchnorm_train_tail: the same values and gradients for the input, the
/// weight, gamma, beta and the residual. (On the CPU the backend call is the trait's default,
/// the two ops in turn; tests/cuda_emulated.rs checks CUDA's fused statistics.)
#[test]
fn conv_into_batchnorm_matches_the_two_ops() {
    let b = common::cpu(2);
    let mut rng = Rng::new(9);
    let (x, w, g, be) = (random(&b, &mut rng, &[2, 7, 6, 4]), random(&b, &mut rng, &[5, 3, 3, 4]), random(&b, &mut rng, &[5]), random(&b, &mut rng, &[5]));
    let (res, seed) = (random(&b, &mut rng, &[2, 7, 6, 5]), random(&b, &mut rng, &[2, 7, 6, 5]));
    let run = |fused: bool| {
        let t = Tape::new();
        let vs: Vec<Var<B>> = [&x, &w, &g, &be, &res].iter().map(|v| t.leaf((*v).clone())).collect();
        let affine = Some((&vs[2], &vs[3]));
        let y = if fused {
            t.conv2d_batchnorm_train(&vs[0], &vs[1], [1, 1], [1, 1], 1, affine, None, 1e-5, Some(&vs[4]), true).unwrap()
        } else {
            let c = t.conv2d(&vs[0], &vs[1], [1, 1], [1, 1], 1).unwrap();
            t.batchnorm_train_tail(&c, affine, None, 1e-5, Some(&vs[4]), true).unwrap()
        };
        let grads = t.backward_with(&y, seed.clone()).unwrap();
        let mut out = vec![bits(&y.value)];
        out.extend(vs.iter().map(|v| bits(grads.get(v).expect("a gradient for every input"))));
        out
    };
    let (fused, separate) = (run(true), run(false));
    for (i, name) in ["y", "dx", "dw", "dgamma", "dbeta", "dresidual"].iter().enumerate() {
        assert_eq!(fused[i], separate[i], "{name}");
    }
}
