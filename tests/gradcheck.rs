//! Every op's backward against central finite differences, in f64 on the CPU backend.
//! L = sum(out * W) for a fixed random W; dL/dinput from the tape vs (L(x+h) - L(x-h)) / 2h.

mod common;

use ssl_engine::autograd::{Tape, Var};
use ssl_engine::backend::cpu::CpuBackend;
use ssl_engine::rng::Rng;
use ssl_engine::{DType, Tensor};

type B = CpuBackend;

fn rand(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.uniform_range(lo, hi)).collect()
}

/// Checks d sum(f(inputs) * W) / d input for every element of every input.
fn gradcheck(name: &str, inputs: &[(Vec<usize>, Vec<f64>)], f: impl Fn(&Tape<B>, &[Var<B>]) -> Var<B>) {
    let b = common::cpu(2);
    let mut rng = Rng::new(common::fnv(name));
    let build = |tape: &Tape<B>, data: &[(Vec<usize>, Vec<f64>)]| -> Vec<Var<B>> {
        data.iter().map(|(s, v)| tape.leaf(Tensor::from_f64(&b, v, s, DType::F64).unwrap())).collect()
    };
    // Analytic gradients.
    let tape = Tape::new();
    let vars = build(&tape, inputs);
    let out = f(&tape, &vars);
    let w: Vec<f64> = rand(&mut rng, out.value.numel(), -1.0, 1.0);
    let wt = Tensor::from_f64(&b, &w, out.shape(), DType::F64).unwrap();
    let grads = tape.backward_with(&out, wt).unwrap();
    let loss = |data: &[(Vec<usize>, Vec<f64>)]| -> f64 {
        let t = Tape::inference();
        let o = f(&t, &build(&t, data)).value.to_f64().unwrap();
        o.iter().zip(&w).map(|(a, b)| a * b).sum()
    };
    let h = 1e-6;
    for (i, (_, v)) in inputs.iter().enumerate() {
        let analytic = match grads.get(&vars[i]) {
            Some(g) => g.to_f64().unwrap(),
            None => vec![0.0; v.len()],
        };
        let mut worst: f64 = 0.0;
        let scale = analytic.iter().fold(1e-3f64, |m, g| m.max(g.abs()));
        for j in 0..v.len() {
            let mut plus = inputs.to_vec();
            plus[i].1[j] += h;
            let mut minus = inputs.to_vec();
            minus[i].1[j] -= h;
            let numeric = (loss(&plus) - loss(&minus)) / (2.0 * h);
            worst = worst.max((numeric - analytic[j]).abs() / scale);
        }
        assert!(worst < 1e-6, "{name}: input {i}: finite-difference mismatch {worst:.2e} (relative to max |grad|)");
    }
}

fn input(rng: &mut Rng, shape: &[usize]) -> (Vec<usize>, Vec<f64>) {
    (shape.to_vec(), rand(rng, shape.iter().product(), -1.0, 1.0))
}

#[test]
fn matmul_all_transposes() {
    let mut r = Rng::new(1);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = if ta { [2, 3, 5] } else { [2, 5, 3] };
        let bs = if tb { [2, 4, 3] } else { [2, 3, 4] };
        gradcheck(&format!("matmul {ta} {tb}"), &[input(&mut r, &a), input(&mut r, &bs)], |t, v| t.matmul(&v[0], &v[1], ta, tb).unwrap());
    }
}

#[test]
fn conv2d_stride_pad_groups() {
    let mut r = Rng::new(2);
    // (x shape NHWC, w shape [o, kh, kw, i/g], stride, pad, groups)
    let cases: [([usize; 4], [usize; 4], usize, usize, usize); 5] = [
        ([2, 5, 4, 3], [4, 3, 3, 3], 1, 1, 1),
        ([1, 7, 6, 2], [3, 3, 3, 2], 2, 1, 1),
        ([2, 5, 5, 4], [6, 1, 1, 4], 2, 0, 1),
        ([1, 5, 4, 4], [4, 3, 3, 2], 1, 1, 2),
        ([1, 4, 5, 3], [3, 3, 3, 1], 1, 1, 3),
    ];
    for (xs, ws, s, p, g) in cases {
        gradcheck(&format!("conv {xs:?} {ws:?} s{s} p{p} g{g}"), &[input(&mut r, &xs), input(&mut r, &ws)], |t, v| {
            t.conv2d(&v[0], &v[1], [s; 2], [p; 2], g).unwrap()
        });
    }
}

#[test]
fn batchnorm_affine_and_plain() {
    let mut r = Rng::new(3);
    gradcheck("bn affine", &[input(&mut r, &[3, 2, 2, 5]), input(&mut r, &[5]), input(&mut r, &[5])], |t, v| {
        t.batchnorm_train(&v[0], Some((&v[1], &v[2])), None, 1e-5).unwrap()
    });
    gradcheck("bn plain", &[input(&mut r, &[7, 4])], |t, v| t.batchnorm_train(&v[0], None, None, 1e-5).unwrap());
}

/// The fused tail relu?(bn(x) + residual?): gradients for x, gamma, beta and the residual.
#[test]
fn batchnorm_with_fused_tail() {
    let mut r = Rng::new(31);
    for (residual, relu) in [(false, true), (true, true), (true, false)] {
        let mut ins = vec![input(&mut r, &[3, 2, 2, 5]), input(&mut r, &[5]), input(&mut r, &[5])];
        if residual {
            ins.push(input(&mut r, &[3, 2, 2, 5]));
        }
        gradcheck(&format!("bn tail residual={residual} relu={relu}"), &ins, |t, v| {
            t.batchnorm_train_tail(&v[0], Some((&v[1], &v[2])), None, 1e-5, v.get(3), relu).unwrap()
        });
    }
}

#[test]
fn layernorm_softmax_attention() {
    let mut r = Rng::new(4);
    gradcheck("layernorm", &[input(&mut r, &[3, 7]), input(&mut r, &[7]), input(&mut r, &[7])], |t, v| {
        t.layernorm(&v[0], &v[1], &v[2], 1e-6).unwrap()
    });
    gradcheck("softmax", &[input(&mut r, &[4, 5])], |t, v| t.softmax(&v[0]).unwrap());
    gradcheck("l2_normalize", &[input(&mut r, &[4, 6])], |t, v| t.l2_normalize(&v[0], 1e-12).unwrap());
    gradcheck("attention", &[input(&mut r, &[2, 5, 3]), input(&mut r, &[2, 4, 3]), input(&mut r, &[2, 4, 3])], |t, v| {
        t.attention(&v[0], &v[1], &v[2], 0.7).unwrap()
    });
}

#[test]
fn activations_and_elementwise() {
    let mut r = Rng::new(5);
    // ReLU away from its kink at 0.
    let x: Vec<f64> = rand(&mut r, 12, 0.1, 1.0).into_iter().enumerate().map(|(i, v)| if i % 2 == 0 { v } else { -v }).collect();
    gradcheck("relu", &[(vec![3, 4], x)], |t, v| t.relu(&v[0]).unwrap());
    gradcheck("gelu", &[input(&mut r, &[3, 4])], |t, v| t.gelu(&v[0]).unwrap());
    gradcheck("add broadcast", &[input(&mut r, &[2, 3, 4]), input(&mut r, &[3, 4])], |t, v| t.add(&v[0], &v[1]).unwrap());
    gradcheck("mul broadcast", &[input(&mut r, &[2, 3, 4]), input(&mut r, &[4])], |t, v| t.mul(&v[0], &v[1]).unwrap());
    gradcheck("scale", &[input(&mut r, &[5])], |t, v| t.scale(&v[0], -1.7).unwrap());
    gradcheck("exp", &[input(&mut r, &[3, 4])], |t, v| t.exp(&v[0]).unwrap());
    gradcheck("sigmoid", &[input(&mut r, &[3, 4])], |t, v| t.sigmoid(&v[0]).unwrap());
    gradcheck("silu", &[input(&mut r, &[3, 4])], |t, v| t.silu(&v[0]).unwrap());
    gradcheck("channel_scale", &[input(&mut r, &[2, 3, 2, 4]), input(&mut r, &[2, 4])], |t, v| t.channel_scale(&v[0], &v[1]).unwrap());
    // log and sqrt on positive inputs; division by values away from 0.
    let pos = |r: &mut Rng, n: usize| rand(r, n, 0.3, 2.0);
    gradcheck("log", &[(vec![3, 4], pos(&mut r, 12))], |t, v| t.log(&v[0]).unwrap());
    gradcheck("sqrt", &[(vec![3, 4], pos(&mut r, 12))], |t, v| t.sqrt(&v[0]).unwrap());
    gradcheck("sub broadcast", &[input(&mut r, &[2, 3, 4]), input(&mut r, &[3, 4])], |t, v| t.sub(&v[0], &v[1]).unwrap());
    gradcheck("div broadcast", &[input(&mut r, &[2, 3, 4]), (vec![4], pos(&mut r, 4))], |t, v| t.div(&v[0], &v[1]).unwrap());
    gradcheck("logsumexp", &[input(&mut r, &[2, 3, 5])], |t, v| t.logsumexp(&v[0]).unwrap());
    for axis in 0..3 {
        gradcheck("sum_axis", &[input(&mut r, &[2, 3, 4])], |t, v| t.sum_axis(&v[0], axis).unwrap());
    }
    gradcheck("mean_axis", &[input(&mut r, &[2, 3, 4])], |t, v| t.mean_axis(&v[0], 1).unwrap());
    gradcheck("linear", &[input(&mut r, &[2, 3, 5]), input(&mut r, &[4, 5]), input(&mut r, &[4])], |t, v| {
        t.linear(&v[0], &v[1], Some(&v[2])).unwrap()
    });
}

#[test]
fn pooling() {
    let mut r = Rng::new(6);
    // Distinct values (a shuffled ramp) so every window has one clear maximum.
    let n = 2 * 5 * 6 * 3;
    let mut x: Vec<f64> = (0..n).map(|i| i as f64 / n as f64).collect();
    for i in (1..n).rev() {
        x.swap(i, r.below(i as u64 + 1) as usize);
    }
    gradcheck("maxpool", &[(vec![2, 5, 6, 3], x)], |t, v| t.maxpool2d(&v[0], 3, 2, 1).unwrap());
    gradcheck("avgpool", &[input(&mut r, &[2, 3, 4, 5])], |t, v| t.avgpool_global(&v[0]).unwrap());
}

#[test]
fn losses() {
    let mut r = Rng::new(7);
    let b = common::cpu(1);
    let labels = Tensor::from_f64(&b, &[2.0, 0.0, 3.0], &[3], DType::F64).unwrap();
    gradcheck("cross_entropy", &[input(&mut r, &[3, 4])], |t, v| t.cross_entropy(&v[0], &labels).unwrap());
    gradcheck("cosine", &[input(&mut r, &[4, 6]), input(&mut r, &[4, 6])], |t, v| t.cosine_loss(&v[0], &v[1], 1e-12).unwrap());
    // Two groups of two and one of three: single and multiple positives per row.
    let groups = Tensor::from_f64(&b, &[0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 2.0], &[7], DType::F64).unwrap();
    gradcheck("nt_xent", &[input(&mut r, &[7, 7])], |t, v| t.nt_xent(&v[0], &groups, 0.3).unwrap());
    let q = Tensor::from_f64(&b, &[0.1, 0.5, 0.2, 0.2, 0.7, 0.0, 0.3, 0.4, 0.3, 0.3, 0.3, 0.1], &[3, 4], DType::F64).unwrap();
    gradcheck("soft_cross_entropy", &[input(&mut r, &[3, 4])], |t, v| t.soft_cross_entropy(&v[0], &q).unwrap());
    gradcheck("identity_penalty", &[input(&mut r, &[5, 5])], |t, v| t.identity_penalty(&v[0], 0.7, 0.2).unwrap());
}

#[test]
fn layout_ops() {
    let mut r = Rng::new(8);
    gradcheck("permute", &[input(&mut r, &[2, 3, 4])], |t, v| t.permute(&v[0], &[2, 0, 1]).unwrap());
    gradcheck("reshape", &[input(&mut r, &[2, 6])], |t, v| t.reshape(&v[0], &[3, 4]).unwrap());
    gradcheck("slice", &[input(&mut r, &[2, 5, 3])], |t, v| t.slice(&v[0], 1, 1, 3).unwrap());
    gradcheck("concat", &[input(&mut r, &[2, 2, 3]), input(&mut r, &[2, 1, 3])], |t, v| t.concat(&[&v[0], &v[1]], 1).unwrap());
}

/// MAE's token gather: repeated rows (whose gradients sum), k > l, a row never picked (zero
/// gradient), trailing axes flattened.
#[test]
fn gather_rows() {
    let mut r = Rng::new(9);
    let b = common::cpu(1);
    let idx = Tensor::from_f64(&b, &[4.0, 0.0, 4.0, 2.0, 1.0, 1.0, 1.0, 3.0], &[2, 4], DType::F64).unwrap();
    gradcheck("gather_rows", &[input(&mut r, &[2, 5, 3])], |t, v| t.gather_rows(&v[0], &idx).unwrap());
    let idx = Tensor::from_f64(&b, &[2.0, 0.0, 2.0, 2.0, 1.0, 1.0, 0.0, 0.0], &[2, 4], DType::F64).unwrap();
    gradcheck("gather_rows k > l", &[input(&mut r, &[2, 3, 2, 2])], |t, v| t.gather_rows(&v[0], &idx).unwrap());
    // Through something nonlinear after it: the gradient of x * x at each kept row.
    let idx = Tensor::from_f64(&b, &[1.0, 1.0, 0.0], &[1, 3], DType::F64).unwrap();
    gradcheck("gather_rows then mul", &[input(&mut r, &[1, 2, 4])], |t, v| {
        let y = t.gather_rows(&v[0], &idx).unwrap();
        t.mul(&y, &y).unwrap()
    });
}

/// A parameter used four times: its gradient's pieces are held aside and summed by
/// `add_many` (autograd/mod.rs), in the order they arrive, ((g4 + g3) + g2) + g1, bit for bit the
/// sum the tape made one add at a time; a leaf used once is untouched.
#[test]
fn a_leaf_used_four_times_sums_its_pieces_in_arrival_order() {
    let b = common::cpu(2);
    let mut r = Rng::new(11);
    let t = |v: &[f64]| Tensor::from_f64(&b, v, &[v.len()], DType::F64).unwrap();
    let (wv, seed) = (rand(&mut r, 7, -1.0, 1.0), rand(&mut r, 7, -1.0, 1.0));
    let uses: Vec<Vec<f64>> = (0..4).map(|_| rand(&mut r, 7, -1.0, 1.0)).collect();
    let tape = Tape::new();
    let w = tape.leaf(t(&wv));
    let once = tape.leaf(t(&uses[0]));
    let mut y = tape.mul(&w, &once).unwrap();
    for u in &uses[1..] {
        let m = tape.mul(&w, &Var::constant(t(u))).unwrap();
        y = tape.add(&y, &m).unwrap();
    }
    let grads = tape.backward_with(&y, t(&seed)).unwrap();
    let got = grads.get(&w).unwrap().to_f64().unwrap();
    for i in 0..7 {
        let g = |k: usize| seed[i] * uses[k][i];
        let want = ((g(3) + g(2)) + g(1)) + g(0);
        assert_eq!(got[i].to_bits(), want.to_bits(), "element {i}: {} vs {want}", got[i]);
    }
    let got_once = grads.get(&once).unwrap().to_f64().unwrap();
    assert_eq!(got_once, (0..7).map(|i| seed[i] * wv[i]).collect::<Vec<_>>());
}
