//! The conformance suite on the CPU backend in f32 (poisoned allocations, 1 and 2 threads)
//! against the CPU backend in f64.

mod common;

use ssl_engine::DType;

#[test]
fn cpu_f32_conforms_to_f64_reference() {
    for threads in [1, 2] {
        let dev = common::cpu(threads).with_poison();
        let r = common::conformance::run_suite(&dev, DType::F32, 1e-5, 42 + threads as u64);
        eprintln!("cpu f32, {threads} thread(s): {} checks, worst relative L2 {:.2e}", r.lines.len(), r.worst);
    }
}

/// `Precision::Bf16` on the CPU in f32 against the CPU in f64 with the same rounding points
/// (<= 1e-3) and against the f64 reference without them (<= 1e-2, and visibly not exact: the
/// rounding points ran).
#[test]
fn cpu_bf16_conforms_to_the_f64_bf16_reference() {
    use common::conformance::{bf16_cases, cross_precision, run_cases, run_cases_against};
    use ssl_engine::backend::Precision;
    use ssl_engine::rng::Rng;
    let dev = common::cpu(2).with_poison().with_precision(Precision::Bf16);
    let reference = common::cpu(2).with_precision(Precision::Bf16);
    let r = run_cases_against(&dev, &reference, DType::F32, 1e-3, &mut Rng::new(7), bf16_cases());
    eprintln!("cpu bf16 vs f64 bf16: {} checks, worst relative L2 {:.2e}", r.lines.len(), r.worst);
    let r = run_cases(&dev, DType::F32, 1e-2, &mut Rng::new(7), cross_precision(bf16_cases()));
    eprintln!("cpu bf16 vs f64 fp32: {} checks, worst relative L2 {:.2e}", r.lines.len(), r.worst);
    assert!(r.worst > 1e-4, "bf16 results as exact as fp32 ({:.2e}): no rounding point ran", r.worst);
}

/// gather_rows and its scatter back on the CPU (poisoned, 1 and 2 threads) equal the by-hand
/// reference bit for bit in f32 (repeated indices, k > l, d = 1, a width of 33, k = 0) and in
/// f64; an index that is not a row is an error, and so is a shape that does not fit.
#[test]
fn cpu_gather_rows_matches_a_plain_reference() {
    use ssl_engine::rng::Rng;
    use ssl_engine::{Tensor, ops};
    for threads in [1, 2] {
        let dev = common::cpu(threads).with_poison();
        let worst = common::conformance::gather_rows_bitwise(&dev, 3 + threads as u64);
        assert_eq!(worst, 0.0);
    }
    let dev = common::cpu(2).with_poison();
    let mut rng = Rng::new(5);
    for (shape, k, repeats) in common::conformance::gather_shapes() {
        let (n, l, d) = (shape[0], shape[1], shape[2..].iter().product::<usize>());
        let idx = common::conformance::gather_indices(&mut rng, n, l, k, repeats);
        let x: Vec<f64> = (0..n * l * d).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
        let dy: Vec<f64> = (0..n * k * d).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
        let (mut want_y, mut want_dx) = (vec![0f64; n * k * d], vec![0f64; n * l * d]);
        for i in 0..n {
            for j in 0..k {
                let r = idx[i * k + j] as usize;
                for c in 0..d {
                    want_y[(i * k + j) * d + c] = x[(i * l + r) * d + c];
                    want_dx[(i * l + r) * d + c] += dy[(i * k + j) * d + c];
                }
            }
        }
        let it = Tensor::from_f32(&dev, &idx, &[n, k], DType::F64).unwrap();
        let y = ops::gather_rows(&Tensor::from_f64(&dev, &x, &shape, DType::F64).unwrap(), &it).unwrap();
        let dx = ops::gather_rows_bwd(&Tensor::from_f64(&dev, &dy, y.shape(), DType::F64).unwrap(), &it, l).unwrap();
        assert_eq!(y.to_f64().unwrap(), want_y, "f64 gather {shape:?} k {k}");
        assert_eq!(dx.to_f64().unwrap(), want_dx, "f64 scatter {shape:?} k {k}");
    }
    let x = Tensor::from_f32(&dev, &[0.0; 12], &[2, 3, 2], DType::F32).unwrap();
    for bad in [3.0, -1.0, 0.5, f32::NAN] {
        let it = Tensor::from_f32(&dev, &[0.0, 1.0, 2.0, bad], &[2, 2], DType::F32).unwrap();
        let e = ops::gather_rows(&x, &it).expect_err("a bad index").to_string();
        assert!(e.contains("gather_rows") && e.contains("[1, 1]"), "{e}");
        let dy = Tensor::from_f32(&dev, &[0.0; 8], &[2, 2, 2], DType::F32).unwrap();
        assert!(ops::gather_rows_bwd(&dy, &it, 3).is_err(), "scatter with index {bad}");
    }
    let it = Tensor::from_f32(&dev, &[0.0, 1.0, 2.0], &[3, 1], DType::F32).unwrap();
    assert!(ops::gather_rows(&x, &it).is_err(), "indices for 3 images, x has 2");
    let it = Tensor::from_f32(&dev, &[0.0, 1.0], &[2, 1], DType::F64).unwrap();
    assert!(ops::gather_rows(&x, &it).is_err(), "f64 indices for f32 x");
    let dy = Tensor::from_f32(&dev, &[0.0; 12], &[2, 3, 2], DType::F32).unwrap();
    let it = Tensor::from_f32(&dev, &[0.0, 1.0], &[2, 1], DType::F32).unwrap();
    assert!(ops::gather_rows_bwd(&dy, &it, 3).is_err(), "dy with 3 rows, indices with 1");
}
