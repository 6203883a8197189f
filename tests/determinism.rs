//! The same ResNet-18 step gives bit-identical loss and gradients with 1 thread and with 2:
//! every CPU reduction runs in a fixed order.

mod common;

use ssl_engine::autograd::{Tape, Var};
use ssl_engine::backend::cpu::CpuBackend;
use ssl_engine::models::BackboneConfig;
use ssl_engine::nn::{Ctx, ParamStore};
use ssl_engine::{DType, Tensor};

fn step(threads: usize) -> (u32, Vec<Vec<u32>>) {
    let b: CpuBackend = common::cpu(threads);
    let mut ps = ParamStore::new(&b, DType::F32, 7);
    let mut cfg = BackboneConfig::preset("resnet18-cifar", 32).unwrap();
    if let BackboneConfig::ResNet(c) = &mut cfg {
        c.num_classes = Some(10);
    }
    let model = cfg.build(&mut ps, "").unwrap();
    let x = Tensor::from_f32(&b, &common::det_uniform("det.x", 16 * 32 * 32 * 3, 1.0, 0.0), &[16, 32, 32, 3], DType::F32).unwrap();
    let labels: Vec<f32> = (0..16).map(|i| (i % 10) as f32).collect();
    let labels = Tensor::from_f32(&b, &labels, &[16], DType::F32).unwrap();
    let tape = Tape::new();
    let cx = Ctx::new(&tape, &ps, true);
    let loss = tape.cross_entropy(&model.forward(&cx, &Var::constant(x)).unwrap(), &labels).unwrap();
    let mut grads = tape.backward(&loss).unwrap();
    let g = cx.param_grads(&mut grads).into_iter().map(|(_, t)| t.to_f32().unwrap().iter().map(|v| v.to_bits()).collect()).collect();
    (loss.value.scalar().unwrap().to_bits(), g)
}

#[test]
fn resnet18_step_is_bit_identical_for_1_and_2_threads() {
    let (l1, g1) = step(1);
    let (l2, g2) = step(2);
    assert_eq!(l1, l2, "loss differs: {} vs {}", f32::from_bits(l1), f32::from_bits(l2));
    assert_eq!(g1.len(), g2.len());
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        assert!(a == b, "gradient {i} differs between 1 and 2 threads");
    }
}
