//! Wrong shapes or dtypes at the API boundary give an error naming the op and the shapes.

mod common;

use ssl_engine::autograd::Tape;
use ssl_engine::{DType, Error, Tensor, ops};

fn t(shape: &[usize]) -> Tensor<ssl_engine::backend::cpu::CpuBackend> {
    Tensor::zeros(&common::cpu(1), shape, DType::F32).unwrap()
}

fn expect_err<T>(r: ssl_engine::Result<T>, words: &[&str]) {
    let Err(e) = r else { panic!("bad input must be an error") };
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "message {msg:?} lacks {w:?}");
    }
}

#[test]
fn shape_errors_name_the_op_and_shapes() {
    expect_err(ops::matmul(&t(&[2, 3]), &t(&[4, 5]), false, false), &["matmul", "[2, 3]", "[4, 5]"]);
    expect_err(ops::matmul(&t(&[3]), &t(&[3, 5]), false, false), &["matmul", "[3]"]);
    expect_err(ops::conv2d_dims(&[1, 8, 8, 3], &[4, 3, 3, 2], [1, 1], [1, 1], 1), &["conv2d", "[1, 8, 8, 3]", "[4, 3, 3, 2]"]);
    expect_err(ops::conv2d_dims(&[1, 2, 2, 3], &[4, 5, 5, 3], [1, 1], [0, 0], 1), &["conv2d", "kernel larger"]);
    expect_err(ops::conv2d_dims(&[1, 8, 8, 3], &[4, 3, 3, 3], [1, 1], [1, 1], 2), &["conv2d", "groups"]);
    expect_err(ops::add(&t(&[2, 3]), &t(&[2])), &["binary", "[2, 3]", "[2]"]);
    expect_err(ops::batchnorm_train(&t(&[4, 3]), Some(&t(&[4])), None, None, 1e-5), &["batchnorm", "gamma", "[4]"]);
    expect_err(ops::batchnorm_train(&t(&[1, 3]), None, None, None, 1e-5), &["batchnorm", "more than one value"]);
    expect_err(ops::cosine_loss(&t(&[4, 8]), &t(&[4, 7]), 1e-12), &["cosine_loss", "[4, 8]", "[4, 7]"]);
    expect_err(ops::cross_entropy(&t(&[4, 8]), &t(&[3])), &["cross_entropy", "[4, 8]", "[3]"]);
    expect_err(ops::permute(&t(&[2, 3]), &[0, 0]), &["permute", "[0, 0]"]);
    expect_err(ops::slice(&t(&[2, 3]), 1, 2, 2), &["slice", "out of bounds"]);
    expect_err(ops::concat(&[&t(&[2, 3]), &t(&[2, 4])], 0), &["concat", "[2, 3]", "[2, 4]"]);
    expect_err(ops::attention(&t(&[2, 5, 4]), &t(&[2, 6, 4]), &t(&[2, 6, 3]), 1.0), &["attention"]);
    expect_err(ops::attention(&t(&[2, 5, 4]), &t(&[2, 0, 4]), &t(&[2, 0, 4]), 1.0), &["attention", "tk = 0", "[2, 0, 4]"]);
    expect_err(ops::pool_dims(&[1, 4, 4], 3, 2, 1), &["maxpool2d", "[1, 4, 4]"]);
    expect_err(t(&[2, 3]).reshape(&[5]), &["reshape", "[2, 3]", "[5]"]);
    expect_err(Tensor::from_f32(&common::cpu(1), &[1.0, 2.0], &[3], DType::F32), &["2 values", "3 elements"]);
}

#[test]
fn dtype_errors_name_the_op() {
    let b = common::cpu(1);
    let a = Tensor::zeros(&b, &[2, 2], DType::F32).unwrap();
    let c = Tensor::zeros(&b, &[2, 2], DType::F64).unwrap();
    let e = ops::matmul(&a, &c, false, false).unwrap_err();
    assert!(matches!(e, Error::DType { op: "matmul", .. }), "{e}");
    assert!(e.to_string().contains("f32 mixed with f64"), "{e}");
    expect_err(Tensor::zeros(&b, &[2], DType::BF16), &["bf16", "cpu"]);
}

#[test]
fn invalid_labels_and_autograd_misuse_are_errors() {
    let b = common::cpu(1);
    let logits = Tensor::zeros(&b, &[2, 3], DType::F32).unwrap();
    let labels = Tensor::from_f32(&b, &[0.0, 3.0], &[2], DType::F32).unwrap();
    expect_err(ops::cross_entropy(&logits, &labels), &["cross_entropy", "label 3"]);
    // NT-Xent: a row whose group has no other member has no positive; bad shapes and temperatures.
    let sim = Tensor::zeros(&b, &[3, 3], DType::F32).unwrap();
    let groups = Tensor::from_f32(&b, &[0.0, 1.0, 0.0], &[3], DType::F32).unwrap();
    expect_err(ops::nt_xent(&sim, &groups, 0.2), &["nt_xent", "row 1", "no positive"]);
    expect_err(ops::nt_xent(&logits, &labels, 0.2), &["nt_xent", "[2, 3]"]);
    expect_err(ops::nt_xent(&sim, &groups, 0.0), &["nt_xent", "temperature"]);
    expect_err(ops::identity_penalty(&logits, 1.0, 0.1), &["identity_penalty", "square", "[2, 3]"]);
    let tape = Tape::new();
    let x = tape.leaf(Tensor::zeros(&b, &[2, 3], DType::F32).unwrap());
    let y = tape.relu(&x).unwrap();
    expect_err(tape.backward(&y), &["one-element loss", "[2, 3]"]);
    let tape = Tape::<ssl_engine::backend::cpu::CpuBackend>::inference();
    let x = tape.leaf(Tensor::zeros(&b, &[1], DType::F32).unwrap());
    expect_err(tape.backward(&x), &["does not depend on any leaf"]);
}
