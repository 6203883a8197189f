//! The CUDA backend without a GPU: every kernel file compiles through NVRTC for sm_80 and
//! compute_90a (and sm_90a with register/spill report), kernel symbols follow the naming rule,
//! the disk cache hits on the second compile, `CudaBackend::new` fails with one clear line,
//! and a dry-run device drives every Backend op (the conformance cases, forward and backward,
//! the SGD step, the benchmark shapes and whole training steps) through the real launch code,
//! checking every launch against its kernel's PTX signature and the grid limits.
//! Tests that need libnvrtc skip when it is absent (tests/common/skip.rs: a failure in CI).

mod common;

use ssl_engine::DType;
use ssl_engine::Tensor;
use ssl_engine::autograd::Tape;
use ssl_engine::backend::prelude::*;
use ssl_engine::backend::cuda::CudaBackend;
use ssl_engine::backend::cuda::nvrtc::{self, FAMILIES, ParamKind, Target};
use ssl_engine::ops;

use common::skip::{Need, nvrtc_or_skip, skip};

#[test]
fn every_kernel_file_compiles_for_sm80_and_compute90a() {
    if !nvrtc_or_skip() {
        return;
    }
    println!("nvrtc {:?}, archs {:?}", nvrtc::version().unwrap(), nvrtc::supported_archs().unwrap());
    // Through the on-disk kernel cache, keyed by the source's hash and the target: a hit is this
    // exact source compiled for this target before (compute_90a is what kernel_names and the GPU
    // load, so the suite compiles it once).
    let cache = nvrtc::cache_dir();
    for arch in ["sm_80", "compute_90a"] {
        let target = Target(arch.into());
        let mut total = 0;
        for (file, src) in FAMILIES {
            let c = nvrtc::compile_cached(file, src, &target, cache.as_deref(), false).unwrap_or_else(|e| panic!("{e}"));
            assert!(!c.image.is_empty(), "{file} {arch}: empty image");
            let entries = nvrtc::ptx_entries(c.ptx.as_deref().expect("PTX"));
            assert!(!entries.is_empty(), "{file} {arch}: no kernels");
            for (name, params) in &entries {
                assert!(
                    ["_fwd_f32", "_bwd_f32", "_fwd_bf16", "_bwd_bf16"].iter().any(|s| name.ends_with(s)),
                    "{file}: kernel {name} breaks the <op>_<fwd|bwd>_<dtype> rule"
                );
                assert!(!params.is_empty(), "{name}: no parameters");
            }
            total += entries.len();
        }
        println!("{arch}: {} files, {total} kernels", FAMILIES.len());
    }
}

#[test]
fn compiled_kernels_are_cached_on_disk() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = common::tmp_dir("kcache");
    let target = Target("compute_80".into());
    let (file, src) = FAMILIES.iter().find(|(f, _)| *f == "optim.cu").unwrap();
    let t0 = std::time::Instant::now();
    let a = nvrtc::compile_cached(file, src, &target, Some(&dir), false).unwrap();
    let first = t0.elapsed();
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert!(files >= 1, "nothing written to the cache");
    let t1 = std::time::Instant::now();
    let b = nvrtc::compile_cached(file, src, &target, Some(&dir), false).unwrap();
    let second = t1.elapsed();
    assert_eq!(a.image, b.image);
    assert!(b.log.is_empty(), "second compile did not come from the cache");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), files);
    // A different source gets a different entry.
    nvrtc::compile_cached(file, &format!("{src}\n// changed\n"), &target, Some(&dir), false).unwrap();
    assert!(std::fs::read_dir(&dir).unwrap().count() > files);
    println!("compile {first:?}, cached {second:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compile_errors_carry_the_nvrtc_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let e = nvrtc::compile(
        "broken.cu",
        "extern \"C\" __global__ void broken_fwd_f32(float* x) { x[0] = undefined_thing; }",
        &Target("sm_80".into()),
    )
    .err()
    .expect("compile error");
    let s = e.to_string();
    assert!(s.contains("broken.cu") && s.contains("undefined_thing"), "{s}");
}

#[test]
fn target_follows_the_device() {
    let archs = [75, 80, 86, 89, 90, 100, 120];
    assert_eq!(Target::for_device(9, 0, &archs).unwrap().0, "sm_90a");
    assert_eq!(Target::for_device(8, 0, &archs).unwrap().0, "sm_80");
    assert_eq!(Target::for_device(12, 1, &archs).unwrap().0, "compute_120");
    assert!(Target::for_device(7, 0, &archs).is_err());
}

#[test]
fn ptx_signatures_are_parsed() {
    let ptx = ".visible .entry k_fwd_f32(\n\t.param .u64 .ptr .align 1 k_fwd_f32_param_0,\n\t.param .u32 k_fwd_f32_param_1,\n\t.param .f32 k_fwd_f32_param_2,\n\t.param .align 4 .b8 k_fwd_f32_param_3[56]\n)\n{\n}\n.visible .entry j_bwd_f32()\n{\n}";
    let e = nvrtc::ptx_entries(ptx);
    assert_eq!(e[0].0, "k_fwd_f32");
    assert_eq!(e[0].1, vec![ParamKind::B64, ParamKind::B32, ParamKind::F32, ParamKind::Bytes(56)]);
    assert_eq!(e[1], ("j_bwd_f32".to_string(), vec![]));
}

/// Without a GPU, `CudaBackend::new` returns one line naming what is missing (no panic).
#[test]
fn new_without_a_gpu_is_a_clear_error() {
    match CudaBackend::new(0) {
        Ok(b) => println!("a GPU is present: {}", b.name()),
        Err(e) => {
            let s = e.to_string();
            println!("CudaBackend::new(0): {s}");
            assert!(!s.contains('\n'), "not one line: {s}");
            assert!(
                s.contains("libcuda not found") || s.contains("no CUDA device") || s.contains("libnvrtc not found") || s.contains("cuInit"),
                "unclear error: {s}"
            );
        }
    }
    // A device index past the last one is an error too, never a panic.
    if let Err(e) = CudaBackend::new(1 << 20) {
        assert!(!e.to_string().is_empty());
    }
}

fn dry() -> Option<CudaBackend> {
    if !nvrtc_or_skip() {
        return None;
    }
    Some(CudaBackend::dry_run(132).expect("dry-run device"))
}

/// Every conformance case, forward and backward, through the launch code of a dry-run device
/// (exact FP32 and TF32 kernels): each launch is checked against its kernel's signature.
#[test]
fn dry_run_every_op_launches_valid_kernels() {
    let Some(dev) = dry() else { return };
    for tf32 in [false, true] {
        let dev = dev.clone().with_tf32(tf32);
        for (case, shapes) in common::conformance::cases() {
            let tape = Tape::new();
            let vars: Vec<_> = shapes
                .iter()
                .map(|s| {
                    let n: usize = s.iter().product();
                    tape.leaf(Tensor::from_f32(&dev, &vec![0.5; n], s, DType::F32).unwrap())
                })
                .collect();
            let out = case.run(&tape, &vars).unwrap_or_else(|e| panic!("{case:?} forward: {e}"));
            let seed = Tensor::full(&dev, out.shape(), 1.0, DType::F32).unwrap();
            tape.backward_with(&out, seed).unwrap_or_else(|e| panic!("{case:?} backward: {e}"));
            let launches = dev.take_launches();
            assert!(!launches.is_empty(), "{case:?}: no kernel launched");
        }
    }
    let ts: Vec<[Tensor<CudaBackend>; 3]> =
        [1usize, 37, 1001, 0, 5000].iter().map(|&n| [0, 1, 2].map(|_| Tensor::zeros(&dev, &[n], DType::F32).unwrap())).collect();
    let slots: Vec<ops::SgdSlot<'_, CudaBackend>> =
        ts.iter().map(|t| ops::SgdSlot { param: &t[0], grad: &t[1], momentum_buf: &t[2], lr: 0.1, weight_decay: 5e-4 }).collect();
    dev.take_launches(); // the fills of Tensor::zeros
    ops::sgd_step(&slots, 0.9).unwrap();
    let l = dev.take_launches();
    assert_eq!(l.len(), 1, "one SGD launch for all tensors");
    assert_eq!(l[0].grid.0 as usize, 1 + 1 + 1 + 5, "blocks of 1024 elements");
    // More tensors than one launch holds: split into launches of 80.
    let many: Vec<[Tensor<CudaBackend>; 3]> = (0..170).map(|_| [0, 1, 2].map(|_| Tensor::zeros(&dev, &[3], DType::F32).unwrap())).collect();
    let slots: Vec<ops::SgdSlot<'_, CudaBackend>> =
        many.iter().map(|t| ops::SgdSlot { param: &t[0], grad: &t[1], momentum_buf: &t[2], lr: 0.1, weight_decay: 0.0 }).collect();
    dev.take_launches();
    ops::sgd_step(&slots, 0.9).unwrap();
    assert_eq!(dev.take_launches().len(), 3);
    // The EMA update batches the same way: one launch for all tensors, then launches of 80.
    let pairs: Vec<(&Tensor<CudaBackend>, &Tensor<CudaBackend>)> = ts.iter().map(|t| (&t[0], &t[1])).collect();
    dev.take_launches();
    ops::ema_update(&pairs, 0.99).unwrap();
    let l = dev.take_launches();
    assert_eq!(l.len(), 1, "one EMA launch for all tensors");
    assert_eq!(l[0].grid.0 as usize, 1 + 1 + 1 + 5, "blocks of 1024 elements");
    let pairs: Vec<(&Tensor<CudaBackend>, &Tensor<CudaBackend>)> = many.iter().map(|t| (&t[0], &t[1])).collect();
    ops::ema_update(&pairs, 0.99).unwrap();
    assert_eq!(dev.take_launches().len(), 3);
}

/// The kernel benchmark at batch 512 and whole training steps (ResNet-18 CIFAR, ViT-tiny),
/// on a dry-run device: real shapes, split-K and grid-limit paths, every launch checked.
#[test]
fn dry_run_benchmark_shapes_and_train_steps() {
    let Some(dev) = dry() else { return };
    for tf32 in [false, true] {
        let dev = dev.clone().with_tf32(tf32);
        let t = ssl_engine::bench::bench_kernels(&dev, 512, None, 1).unwrap();
        assert!(t.len() > 30, "{} kernel timings", t.len());
        let n = dev.take_launches().len();
        println!("bench kernels (tf32 {tf32}): {} timings, {n} launches", t.len());
        for model in ["resnet18-cifar", "vit-tiny"] {
            ssl_engine::bench::bench_step(&dev, model, 8, 32, 0, 1).unwrap();
            let l = dev.take_launches();
            println!("{model} step: {} launches", l.len());
            assert!(l.len() > 50);
        }
    }
    // The pool reuses blocks: a second identical step allocates nothing new.
    dev.release_pooled().unwrap();
    ssl_engine::bench::bench_step(&dev, "resnet18-cifar", 8, 32, 0, 1).unwrap();
    let live = dev.live_bytes() + dev.pooled_bytes();
    ssl_engine::bench::bench_step(&dev, "resnet18-cifar", 8, 32, 0, 1).unwrap();
    assert_eq!(dev.live_bytes() + dev.pooled_bytes(), live, "a steady-state step allocated new memory");
    dev.take_launches();
}

/// The GEMM core's tile rule on an H200-sized dry run (132 SMs): 128 x 128 x 32 when that grid
/// alone gives every SM a block, 128 x 64 x 32 for outputs at most 64 wide, otherwise 64 x 64
/// (split-K where its grid is small too); the exact FP32 loop is always 64 x 64. Each launch asks
/// for its tile's shared memory (3 stages of [rows][k] floats for both operands).
#[test]
fn dry_run_gemm_tiles_follow_the_rule() {
    let Some(dry) = dry() else { return };
    type Launched = Vec<(String, (u32, u32, u32), u32)>;
    // The GEMM launches of each op on `dev` (tensors made there, so they carry its precision).
    let launches_of = |dev: &CudaBackend| -> [Launched; 7] {
        let zeros = |s: &[usize]| Tensor::zeros(dev, s, DType::F32).unwrap();
        let (big, wide, thin) = (zeros(&[4096, 4096]), zeros(&[4096, 64]), zeros(&[64, 64]));
        let ragged = (zeros(&[64, 40]), zeros(&[40, 64]));
        let (x, w, dy) = (zeros(&[512, 32, 32, 64]), zeros(&[64, 3, 3, 64]), zeros(&[512, 32, 32, 64]));
        let cd = ops::conv2d_dims(x.shape(), w.shape(), [1, 1], [1, 1], 1).unwrap();
        let run = |f: &dyn Fn() -> ssl_engine::Result<()>| -> Launched {
            dev.take_launches();
            f().unwrap();
            dev.take_launches().into_iter().map(|l| (l.kernel, l.grid, l.shared)).collect()
        };
        [
            run(&|| ops::matmul(&big, &big, false, false).map(drop)),
            run(&|| ops::matmul(&big, &wide, false, false).map(drop)),
            run(&|| ops::matmul(&thin, &thin, false, false).map(drop)),
            run(&|| ops::matmul(&ragged.0, &ragged.1, false, false).map(drop)),
            run(&|| ops::conv2d(&x, &w, &cd).map(drop)),
            run(&|| ops::conv2d_data_bwd(&dy, &w, &cd).map(drop)),
            run(&|| ops::conv2d_weight_bwd(&x, &dy, &cd).map(drop)),
        ]
    };
    for (precision, math) in [(ssl_engine::backend::Precision::Bf16, "bf16"), (ssl_engine::backend::Precision::Fp32, "tc")] {
        let [square, tall, small, ragged, fwd, data, weight] = launches_of(&dry.clone().with_tf32(true).with_precision(precision));
        // TF32 kernels are <op>_tc<tile>_<pass>_f32, bf16 ones <op><tile>_<pass>_bf16.
        let k = |op: &str, rest: &str| if math == "bf16" { format!("{op}{rest}_bf16") } else { format!("{op}_tc{rest}_f32") };
        // 4096^3: 32 x 32 tiles of 128 x 128.
        assert_eq!(square, vec![(k("matmul", "_m128n128_fwd"), (32, 32, 1), 104_448)]);
        // 4096 x 64 outputs: 32 tiles of 128 x 64 would not fill 132 SMs; 64 x 64 tiles with
        // split-K, in 16-byte chunks (k and n multiples of 16 and 4); k = 40 element by element.
        assert_eq!((tall[0].0.clone(), tall[0].1.0, tall[0].2), (k("matmul", "_chunks_fwd"), 64, 27_648), "{tall:?}");
        assert_eq!(small, vec![(k("matmul", "_chunks_fwd"), (1, 1, 1), 27_648)]);
        assert_eq!(ragged, vec![(k("matmul", "_fwd"), (1, 1, 1), 27_648)]);
        // ResNet-18's first stage at batch 512: 524288 pixels x 64 channels, 4096 tiles of 128 x 64.
        assert_eq!(fwd, vec![(k("conv2d", "_m128n64_fwd"), (4096, 1, 1), 79_872)]);
        assert_eq!(data, vec![(k("conv2d", "_m128n64_data_bwd"), (4096, 1, 1), 79_872)]);
        // Backward-weight: 64 x 576 outputs over 524288 pixels, 5 tiles of 64 x 128 (a 128-row
        // tile would be half padding) split along k, in 16-byte chunks (64 channels).
        assert_eq!((weight[0].0.clone(), weight[0].1.0, weight[0].1.1, weight[0].2), (k("conv2d", "_m64n128_weight_bwd"), 1, 5, 79_872), "{weight:?}");
        assert!(weight[0].1.2 > 1, "backward-weight is split along k: {weight:?}");
    }
    // ResNet-18's last stage at batch 512: 512 x 4608 weight-gradient outputs are 144 tiles of
    // 128 x 128, two waves on 132 SMs with the second nearly empty (55%) unsplit; split along k
    // they fill whole waves.
    let dev = dry.clone().with_precision(ssl_engine::backend::Precision::Bf16);
    let (x, dy) = (Tensor::zeros(&dev, &[512, 4, 4, 512], DType::F32).unwrap(), Tensor::zeros(&dev, &[512, 4, 4, 512], DType::F32).unwrap());
    let cd = ops::conv2d_dims(x.shape(), &[512, 3, 3, 512], [1, 1], [1, 1], 1).unwrap();
    dev.take_launches();
    ops::conv2d_weight_bwd(&x, &dy, &cd).unwrap();
    let l = dev.take_launches().into_iter().find(|l| l.kernel.contains("weight_bwd")).unwrap();
    assert_eq!((l.kernel.as_str(), l.grid.0, l.grid.1), ("conv2d_m128n128_weight_bwd_bf16", 4, 36), "{l:?}");
    let e = ssl_engine::backend::cuda::report::wave_efficiency(144 * l.grid.2 as u64, 132, 1);
    assert!(l.grid.2 > 1 && e >= 0.95, "{} pieces: wave efficiency {e:.2}", l.grid.2);
    // Exact FP32: the SIMT loop, 64 x 64, whatever the shape.
    let [square, ..] = launches_of(&dry);
    assert_eq!(square, vec![("matmul_fwd_f32".to_string(), (64, 64, 1), 9_216)]);
}

/// Kernel argument checking: a wrong argument list is an error naming the kernel.
#[test]
fn dry_run_rejects_unsupported_sizes_cleanly() {
    let Some(dev) = dry() else { return };
    // Head dim over 128: a clear error, not a bad launch.
    let q = Tensor::zeros(&dev, &[1, 2, 129], DType::F32).unwrap();
    let e = ops::attention(&q, &q, &q, 1.0).expect_err("head dim 129");
    assert!(e.to_string().contains("head dim"), "{e}");
    // f64 is not supported on this backend.
    assert!(Tensor::zeros(&dev, &[3], DType::F64).is_err());
    assert!(!dev.supports(DType::F64));
}

/// At precision bf16, a fused convolution + batch norm keeps the convolution's output, which only
/// batch norm reads, as BF16 storage (ConvOps::conv2d_batchnorm_out_dtype): the bf16 convolution
/// writes it, and the batch-norm passes over it, forward and backward, are the ones that read
/// bf16. Everything else stays F32; any other op refuses the BF16 tensor, naming the dtype. At
/// FP32 the same calls keep F32 and the `_f32` passes.
#[test]
fn bf16_convolution_output_for_batch_norm_is_stored_as_bf16() {
    use ssl_engine::backend::{Precision, Unary};
    let Some(dry) = dry() else { return };
    for precision in [Precision::Bf16, Precision::Fp32] {
        let dev = dry.clone().with_precision(precision);
        let full = |s: &[usize]| Tensor::full(&dev, s, 0.5, DType::F32).unwrap();
        let (x, w, g, b) = (full(&[2, 9, 7, 8]), full(&[8, 3, 3, 8]), full(&[8]), full(&[8]));
        let cd = ops::conv2d_dims(x.shape(), w.shape(), [1, 1], [1, 1], 1).unwrap();
        dev.take_launches();
        let (c, y, saved) = ops::conv2d_batchnorm_train(&x, &w, &cd, Some(&g), Some(&b), None, 1e-5, None, true).unwrap();
        let fwd: Vec<String> = dev.take_launches().into_iter().map(|l| l.kernel).collect();
        let dy = full(y.shape());
        dev.take_launches();
        let (dx, dgb, _) = ops::batchnorm_bwd_tail(&c, &dy, Some(&y), Some(&g), Some(&b), &saved, true, false).unwrap();
        let bwd: Vec<String> = dev.take_launches().into_iter().map(|l| l.kernel).collect();
        let (dgamma, dbeta) = dgb.unwrap();
        for t in [&y, &saved.mean, &saved.invstd, &dx, &dgamma, &dbeta] {
            assert_eq!(t.dtype(), DType::F32);
        }
        if precision == Precision::Bf16 {
            assert_eq!(c.dtype(), DType::BF16);
            assert!(fwd[0].starts_with("conv2d_batchnorm") && fwd[0].ends_with("_bf16"), "{fwd:?}");
            assert_eq!(fwd[1..], ["batchnorm_finalize_fwd_f32", "batchnorm_apply_fwd_bf16"], "{fwd:?}");
            assert_eq!(bwd, ["batchnorm_stats_bwd_bf16", "batchnorm_dx_bwd_bf16"]);
            let e = ops::unary(Unary::Relu, &c).expect_err("relu of bf16 storage").to_string();
            assert!(e.contains("bf16"), "{e}");
        } else {
            assert_eq!(c.dtype(), DType::F32);
            assert_eq!(fwd, ["conv2d_batchnorm_fwd_f32", "batchnorm_finalize_fwd_f32", "batchnorm_apply_fwd_f32"]);
            assert_eq!(bwd, ["batchnorm_stats_bwd_f32", "batchnorm_dx_bwd_f32"]);
        }
    }
}

/// The static report (`ssl-engine bench kernels --static`), from one sm_90a compile of every
/// family: no kernel spills registers to local memory; every GEMM and convolution kernel
/// on sm_90a keeps everything in registers (no spill, no local memory), makes no 64-bit
/// division call (they used to: two per loaded element in the convolution loaders, one per block
/// in split_range), and the TF32 and BF16 variants run on tensor cores (HMMA), fed through the
/// cp.async pipeline (LDGSTS) and ldmatrix (LDSM). Needs cuobjdump.
#[test]
fn static_report_gemm_conv_and_attention_kernels_are_spill_free_division_free_and_use_tensor_cores() {
    if !nvrtc_or_skip() {
        return;
    }
    use ssl_engine::backend::cuda::report;
    let Some(tool) = report::find_cuobjdump() else {
        skip(Need::Cuobjdump, "cuobjdump not found (pip install nvidia-cuda-cuobjdump)");
        return;
    };
    let ks = report::static_report(&tool).unwrap();
    println!("{}", report::format_report(&ks));
    // Every kernel of every family (from ptxas' report on the sm_90a cubins, which cuobjdump
    // has just read back): a register count, and nothing spilled to local memory.
    for (file, _) in FAMILIES {
        assert!(ks.iter().any(|k| k.file == *file), "{file}: no kernel in the ptxas log");
    }
    for k in &ks {
        assert!(k.registers > 0, "{} ({}): no register count in the ptxas log", k.name, k.file);
        assert_eq!(k.spill_bytes, 0, "{} ({}) spills {} bytes on sm_90a", k.name, k.file, k.spill_bytes);
    }
    let gemm: Vec<_> = ks.iter().filter(|k| k.name.starts_with("matmul") || k.name.starts_with("conv2d")).collect();
    assert_eq!(
        gemm.len(),
        41,
        "9 matmul (2 of them 64 x 64 chunk kernels) + 21 convolution + 7 convolution-with-BN-statistics + 2 64 x 64 backward-weight chunk + 2 64 x 128 backward-weight kernels expected (FP32; TF32 and BF16 at three tiles)"
    );
    for k in &gemm {
        assert!(k.instructions > 100, "{}: no SASS parsed", k.name);
        assert_eq!((k.spill_bytes, k.local_ops), (0, 0), "{}: spills or local memory", k.name);
        assert_eq!(k.calls, 0, "{}: integer-division calls", k.name);
        assert_eq!(k.block_threads, Some(256), "{}: launch bounds", k.name);
        // The 128-row tiles hold 4x the accumulators and 108 KB of pipeline: one block of 8
        // warps per SM at least, latency hidden by the 3-stage cp.async pipeline and 16 mma per
        // warp and k16 step; the 64 x 64 tiles keep 2 blocks or more. (64 x 128, backward-weight
        // only, counts with the big tiles: 78 KB of pipeline.)
        let big_tile = k.name.contains("_m128") || k.name.contains("_m64n128_");
        let floor = if big_tile { 0.125 } else { 0.25 };
        assert!(k.occupancy().unwrap() >= floor, "{}: occupancy under {floor}", k.name);
        assert_eq!(k.smem_bytes > 48 * 1024, big_tile, "{}: shared memory {} (dynamic, by tile)", k.name, k.smem_bytes);
        let tensor_cores = k.name.contains("_tc_") || k.name.ends_with("_bf16");
        assert_eq!(k.hmma > 0, tensor_cores, "{}: HMMA only and always in the TF32 and BF16 variants", k.name);
        // Backward-weight's chunk loader (the 128-row and _chunks_ kernels) holds both operands
        // row-major (TcTile::mn_at) and reads their fragments 8 bytes at a time: no ldmatrix.
        let rows_major = k.name.contains("weight_bwd") && (big_tile || k.name.contains("_chunks_"));
        assert_eq!(k.ldgsts > 0, tensor_cores, "{}: cp.async only and always in the tensor-core variants", k.name);
        assert_eq!(k.ldsm > 0, tensor_cores && !rows_major, "{}: ldmatrix in the tensor-core variants but the chunk loader's", k.name);
        // Operands with k contiguous in memory (matmul, the convolutions' activations along
        // channels) have a 16-byte cp.async path, and so has the chunk loader; the general
        // backward-weight loader has neither.
        let has_k_contiguous_operand = !k.name.contains("weight_bwd");
        assert_eq!(k.ldgsts128 > 0, tensor_cores && (has_k_contiguous_operand || rows_major), "{}: 16-byte cp.async", k.name);
        // The 128-row convolution kernels load through the tap loaders (kernels/conv.cu): per
        // piece two mask bits and a constant step instead of a bounds check per element. With
        // the per-element loaders the 128 x 128 bf16 main loops took 52.1 (forward) and 53.2
        // (backward-data) instructions per MMA, and the forward's copies averaged 6.4 bytes.
        // Backward-data's weight operand moves 4 channels per 16-byte copy into a row-major
        // stage (TcTile::mn_at) since the chunk loader: 17.4 (128 x 128) and 25.8 (128 x 64) bf16
        // instructions per MMA before, with 4-byte copies. Since the loaders serve the whole block
        // tile (TileLoader: the tap kept once for all pieces, predicates instead of null
        // pointers) and the stages are addressed by 32-bit shared addresses: 11.9 -> 7.5 and
        // 12.6 -> 8.1 (128 x 128), 20.2 -> 11.3 and 20.4 -> 12.6 (128 x 64); with the weight's
        // fragments read 8 bytes at a time (TcTile::frag_col) and 128 x 64 in 4 x 2 warps:
        // backward-data 7.6 (128 x 128), forward 10.2 and backward-data 11.4 (128 x 64). With one
        // mask of the taps a row reaches and the tap as one bit of it (one AND per copy, the k
        // bound folded in): 6.1 and 6.8 (128 x 128), 8.9 and 10.1 (128 x 64).
        if big_tile && k.name.starts_with("conv2d") && !k.name.contains("weight_bwd") {
            let per_mma = k.instructions_per_mma().unwrap();
            let data_bwd = k.name.contains("data_bwd");
            assert_eq!(k.ldgsts128, k.ldgsts, "{}: a 4-byte cp.async in a tap loader", k.name);
            let bound = match (k.name.contains("_m128n128_"), data_bwd) {
                (true, false) => 6.5,
                (true, true) => 7.5,
                (false, false) => 9.25,
                (false, true) => 10.5,
            };
            assert!(per_mma <= bound, "{}: {per_mma:.1} instructions per MMA in the main loop (at most {bound})", k.name);
        }
        // Backward-weight's chunk loader: only 16-byte copies, and in bf16 14.0 (128 x 128), 21.7
        // (128 x 64) and 37.8 (64 x 64) instructions per MMA, where the 4-byte piece loader took
        // 32.7 on 128 x 128 and the general loader 63.6 on 128 x 64 and 102.0 on 64 x 64. With the
        // pixel kept once for all pieces (TileLoader) and 32-bit shared addresses: 10.1, 16.6, 29.5;
        // 64 x 128 (ResNet's 64-channel stage, which took 64 x 64) 16.7. With fragments read 8
        // bytes at a time (TcTile::frag_row, frag_col) and 128 x 64 in 4 x 2 warps: 8.7, 13.2,
        // 26.8, and 14.8. With one dy pointer for all pieces and the 128-row tiles' fragment
        // lanes made once per block (FragLanes): 8.2 and 12.2; with one pixel per thread and
        // stage (stage_chunk_coord: one advance per 32 pixels, not per 16): 7.1, 10.1, and 12.8.
        if rows_major {
            let per_mma = k.instructions_per_mma().unwrap();
            assert_eq!(k.ldgsts128, k.ldgsts, "{}: a 4-byte cp.async in the chunk loader", k.name);
            // (bf16, TF32): TF32's fragments are one word per element, 4 of them per k8 MMA.
            let (bf16, tf32) = match () {
                _ if k.name.contains("_m128n128_") => (7.5, 8.5),
                _ if k.name.contains("_m128n64_") => (10.5, 11.0),
                _ if k.name.contains("_m64n128_") => (13.25, 12.0),
                _ => (27.5, 27.5),
            };
            let bound = if k.name.contains("_tc_") { tf32 } else { bf16 };
            assert!(per_mma <= bound, "{}: {per_mma:.1} instructions per MMA in the main loop (at most {bound})", k.name);
        }
        // The backward-weight plan (weight_plan in src/backend/cuda/conv.rs) scores its tiles
        // and splits by wave efficiency with these blocks per SM: 1 for 128 x 128, 2 for 128 x
        // 64, 3 for 64 x 64 (the kernels' launch bounds, WeightBlocksPerSm in kernels/conv.cu).
        if k.name.contains("weight_bwd") {
            let plan = if k.name.contains("_m128n128_") { 1 } else if k.name.contains("_m128n64_") || k.name.contains("_m64n128_") { 2 } else { 3 };
            assert_eq!(k.blocks_per_sm(), Some(plan), "{}: blocks per SM, as weight_plan assumes", k.name);
        }
        // The matmul kernels' chunk loader (kernels/matmul.cu: the 128-row tiles and the 64 x 64
        // _chunks_ kernels): only 16-byte copies, 4 rows at one k for a transposed operand. Each
        // kernel holds four main loops, one per transpose, and the report gives the worst. With
        // the per-element loaders the 128-row bf16 loops took 27.5 (128 x 128) and 41.4 (128 x
        // 64) instructions per MMA; with 16-byte copies of k-contiguous operands only (4-byte
        // ones of the transposed), 8.1-14.1 and 11.3-18.2; now 5.2-5.7 and 7.4-8.8, and 64 x 64
        // 14.9-19.0 where the element-wise kernel takes 47.0-73.2.
        if k.name.starts_with("matmul") && (big_tile || k.name.contains("_chunks_")) {
            let per_mma = k.instructions_per_mma().unwrap();
            assert_eq!(k.ldgsts128, k.ldgsts, "{}: a 4-byte cp.async in the chunk loader", k.name);
            let bound = match () {
                _ if k.name.contains("_m128n128_") => 8.0,
                _ if k.name.contains("_m128n64_") => 10.0,
                _ => 20.0,
            };
            assert!(per_mma <= bound, "{}: {per_mma:.1} instructions per MMA in the main loop (at most {bound})", k.name);
        }
    }
    // Batch norm's output and backward passes move 4 channels per 16-byte load and store when
    // C is a multiple of 4 (every ResNet layer): 24 of the 43 GB a bf16 SimSiam step reaches.
    for name in ["batchnorm_apply_fwd_f32", "batchnorm_dx_bwd_f32"] {
        let k = ks.iter().find(|k| k.name == name).unwrap_or_else(|| panic!("{name}: not in the report"));
        assert!(k.global128 >= 4, "{name}: {} 16-byte global loads and stores", k.global128);
    }
    // Attention at head dim 128 used to spill 344 bytes in the dk/dv pass (256 accumulators per
    // thread); two threads per key now hold 128 each. The flash kernels (TF32 and bf16, three
    // passes, two head-dim variants) run on tensor cores, fed by 16-byte cp.async and ldmatrix,
    // and call nothing (the IEEE division's slow path used to spill in the forward).
    let attention: Vec<_> = ks.iter().filter(|k| k.name.starts_with("attention")).collect();
    assert_eq!(attention.len(), 19, "6 exact + 12 tensor-core attention kernels + the row-dot pass expected");
    for k in &attention {
        assert_eq!((k.spill_bytes, k.local_ops), (0, 0), "{}: spills or local memory", k.name);
        let tensor_cores = k.name.contains("_tc_") || k.name.ends_with("_bf16");
        assert_eq!(k.hmma > 0, tensor_cores, "{}: HMMA only and always in the flash kernels", k.name);
        assert_eq!(k.ldgsts128 > 0 && k.ldsm > 0, tensor_cores, "{}: 16-byte cp.async + ldmatrix in the flash kernels", k.name);
        if tensor_cores {
            assert_eq!(k.calls, 0, "{}: calls", k.name);
        }
    }
}

/// The step census (`bench step --backend cuda --simsiam --dry-run`): one SimSiam step's kernel
/// launches on the dry-run device and the bytes they reach. Every convolution of ResNet-18 runs
/// its three passes (the stem's backward-data is skipped: the input needs no gradient), the
/// count is the same step after step, and the bytes follow the buffers' sizes.
#[test]
fn step_census_counts_launches_and_bytes_of_one_simsiam_step() {
    if !nvrtc_or_skip() {
        return;
    }
    let b = CudaBackend::dry_run(132).unwrap();
    let rows = ssl_engine::bench::simsiam_step_census(&b, "resnet18-cifar", 8, 16, false).unwrap().rows;
    let get = |k: &str| rows.iter().find(|r| r.kernel == k).unwrap_or_else(|| panic!("no {k} in {rows:?}"));
    let launches = |k: &str| rows.iter().find(|r| r.kernel == k).map_or(0, |r| r.launches);
    // 20 convolutions per view (17 3x3 + 3 1x1 shortcuts), two views, each into a batch norm:
    // the statistics come from the convolution's epilogue (conv2d_batchnorm_fwd_f32), also
    // where split-K takes the convolution (small outputs: most of them at batch 8; its last
    // piece per tile sums them). The heads have 6 more batch norms (3 per view), with a
    // statistics pass of their own.
    assert_eq!(launches("conv2d_batchnorm_fwd_f32"), 40, "{rows:?}");
    assert_eq!(launches("conv2d_fwd_f32"), 0);
    assert_eq!(launches("batchnorm_stats_fwd_f32"), 6);
    assert_eq!(get("conv2d_weight_bwd_f32").launches, 40);
    assert_eq!(get("conv2d_data_bwd_f32").launches, 38);
    // Split-K convolutions and matmuls sum their pieces in the same launch: the only split
    // sums left follow the axis sums (the heads' bias gradients). Backward batch norm adds its
    // statistics' partials in the statistics launch: 46 of those, and no finalize kernel.
    assert!(launches("sum_axis_splits_fwd_f32") <= launches("sum_axis_fwd_f32"), "{rows:?}");
    assert_eq!(launches("batchnorm_stats_bwd_f32"), 46);
    assert!(rows.iter().all(|r| !r.kernel.contains("finalize_bwd")), "{rows:?}");
    assert_eq!(get("sgd_step_fwd_f32").launches, 1, "one fused optimizer launch");
    // The first convolution reaches at least its input, weight and output: 8 x 16 x 16 x 3 inputs,
    // 64 x 3 x 3 x 3 weights, 8 x 16 x 16 x 64 outputs, in f32.
    let min_fwd = 4 * (8 * 16 * 16 * 3 + 64 * 27 + 8 * 16 * 16 * 64) as u64;
    let fwd_bytes: u64 = rows.iter().filter(|r| r.kernel == "conv2d_fwd_f32" || r.kernel == "conv2d_batchnorm_fwd_f32").map(|r| r.bytes).sum();
    assert!(fwd_bytes >= 2 * min_fwd);
    let again = ssl_engine::bench::simsiam_step_census(&b, "resnet18-cifar", 8, 16, false).unwrap().rows;
    let total = |r: &[ssl_engine::bench::CensusRow]| r.iter().map(|x| x.launches).sum::<usize>();
    assert_eq!(total(&rows), total(&again), "the same step makes the same launches");
    println!("census at batch 8: {} launches", total(&rows));
    // With the step graph (the default): the same kernels, the optimizer's too, replayed by one
    // graph launch, which the dry run counts.
    let replays = b.graph_replays();
    let graphed = ssl_engine::bench::simsiam_step_census(&b, "resnet18-cifar", 8, 16, true).unwrap();
    assert_eq!(b.graph_replays(), replays + 2, "the recording step and the timed step replay the graph");
    assert_eq!(total(&graphed.rows), total(&rows), "a replay runs the same kernels");
    assert_eq!(graphed.graph_kernels, total(&rows), "everything, the optimizer too, is in the graph");

    // The roofline's FLOPs, against ResNet-18 CIFAR's convolutions counted here from its layers
    // (3x3 stem at stride 1; stages of 64-512 channels, 2 blocks each, the first of stages 2-4
    // at stride 2 with a 1x1 shortcut): each pass makes one multiply-add per output pixel,
    // output channel and tap of the input channels, on both views; the stem has no
    // backward-data.
    let (n, mut side) = (8u64, 16u64);
    let mut convs = vec![(side, 64u64, 9u64, 3u64)]; // (output side, c_out, taps, c_in)
    let mut c_in = 64;
    for (stage, c) in [64u64, 128, 256, 512].into_iter().enumerate() {
        if stage > 0 {
            side /= 2;
            convs.push((side, c, 1, c_in));
        }
        convs.extend([(side, c, 9, c_in), (side, c, 9, c), (side, c, 9, c), (side, c, 9, c)]);
        c_in = c;
    }
    let flops = |(s, c, t, ci): (u64, u64, u64, u64)| 2 * 2 * n * s * s * c * t * ci;
    let all: u64 = convs.iter().map(|&c| flops(c)).sum();
    let of = |pass: &str| rows.iter().filter(|r| r.kernel.starts_with("conv2d") && r.kernel.contains(pass)).map(|r| r.flops).sum::<u64>();
    assert_eq!(of("_fwd_f32"), all, "forward FLOPs");
    assert_eq!(of("weight_bwd"), all, "backward-weight FLOPs");
    assert_eq!(of("data_bwd"), all - flops(convs[0]), "backward-data FLOPs");
    for r in &rows {
        assert_eq!(r.flops > 0, r.kernel.starts_with("conv2d") || r.kernel.starts_with("matmul"), "{}: FLOPs", r.kernel);
        let floor = ssl_engine::bench::roofline_seconds(r.bytes, r.flops, ssl_engine::backend::Precision::Fp32);
        assert!(r.floor_s >= floor * (1.0 - 1e-9), "{}: the floor of its launches {} < that of their sum {floor}", r.kernel, r.floor_s);
    }
}

/// The census of a data-parallel step (`bench step --dry-run --ranks 2`): rank 0's kernels and
/// the collectives each rank calls. Without sync_bn the step all-reduces its gradients in 25 MB
/// buckets (ResNet-18 CIFAR + SimSiam heads: 74 MB of f32 gradients, 3 buckets) and its loss:
/// 4 all-reduces carrying every gradient once. With sync_bn each of the 46 batch norms adds
/// all-reduces of its statistics forward and of their gradients backward.
#[test]
fn step_census_of_two_ranks_counts_the_collectives() {
    if !nvrtc_or_skip() {
        return;
    }
    let req = |sync_bn| ssl_engine::bench::CensusRequest {
        model: "resnet18-cifar",
        batch: 4,
        image: 16,
        precision: ssl_engine::backend::Precision::Fp32,
        graph: false,
        ranks: 2,
        sync_bn,
        waves: false,
    };
    let plain = ssl_engine::bench::dry_run_census_table(&req(false)).unwrap();
    let line = plain.lines().find(|l| l.starts_with("all_reduce")).unwrap_or_else(|| panic!("{plain}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    // The step's trainable values (and the loss, 4 bytes), counted on the CPU's copy of the model.
    let cpu = ssl_engine::backend::cpu::CpuBackend::new(1).unwrap();
    let mut ps = ssl_engine::nn::ParamStore::new(&cpu, DType::F32, 0);
    let backbone = ssl_engine::models::BackboneConfig::preset("resnet18-cifar", 16).unwrap();
    ssl_engine::ssl::simsiam::SimSiam::new(&mut ps, &backbone, &ssl_engine::ssl::simsiam::SimSiamConfig::default()).unwrap();
    let grads_mb = 4.0 * (ps.num_params() + 1) as f64 / 1e6;
    assert_eq!(cols[1], "4", "{plain}");
    let mb: f64 = cols[2].parse().unwrap();
    assert!((mb - grads_mb).abs() < 0.01, "{mb} MB vs {grads_mb} MB of gradients: {plain}");
    let synced = ssl_engine::bench::dry_run_census_table(&req(true)).unwrap();
    let calls: usize = synced.lines().find(|l| l.starts_with("all_reduce")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(calls >= 4 + 2 * 46, "sync_bn all-reduces each batch norm's statistics: {synced}");
}

/// The step-graph tests' model: one [4, 3] weight on the dry-run device.
fn one_weight_model() -> (CudaBackend, ssl_engine::nn::ParamStore<CudaBackend>, ssl_engine::nn::ParamId) {
    use ssl_engine::nn::{Init, Kind, Layout, ParamStore};
    let b = CudaBackend::dry_run(132).unwrap();
    let mut ps = ParamStore::new(&b, DType::F32, 0);
    let w = ps.add("w", &[4, 3], Init::Zeros, Kind::Param, Layout::Same).unwrap();
    (b, ps, w)
}

/// Their forward: the sum of x w.
fn sum_of_product(
    cx: &ssl_engine::nn::Ctx<CudaBackend>,
    x: &[Tensor<CudaBackend>],
    w: ssl_engine::nn::ParamId,
) -> ssl_engine::Result<(ssl_engine::autograd::Var<CudaBackend>, ())> {
    use ssl_engine::autograd::Var;
    let y = cx.tape.matmul(&Var::constant(x[0].clone()), &cx.param(w), false, false)?;
    Ok((cx.tape.sum_axis(&cx.tape.sum_axis(&y, 0)?, 0)?, ()))
}

/// The step graph's rules on the dry-run device (which records and replays graphs as a GPU
/// does): a warm-up step runs eagerly, the second step at the same input shapes is captured and
/// replayed, other shapes run eagerly without losing the graph, shapes that stay are captured
/// again, and a step that uploads data in the middle cannot be captured, so every step then runs
/// eagerly, saying why.
#[test]
fn step_graph_warms_up_captures_replays_and_falls_back() {
    if !nvrtc_or_skip() {
        return;
    }
    use ssl_engine::autograd::Var;
    use ssl_engine::nn::Ctx;
    use ssl_engine::optim::{Sgd, StepGraph, always};
    let (b, ps, w) = one_weight_model();
    let mut opt = Sgd::new(0.9);
    let input = |rows: usize| vec![Tensor::zeros(&b, &[rows, 4], DType::F32).unwrap()];
    let forward = |cx: &Ctx<CudaBackend>, x: &[Tensor<CudaBackend>]| sum_of_product(cx, x, w);
    let mut g = StepGraph::new(&b, true);
    let mut replays = Vec::new();
    for rows in [8, 8, 8, 5, 8, 5, 5, 8] {
        let before = b.graph_replays();
        g.step(&ps, &mut opt, &|_| (0.1, 0.0), input(rows), forward, always).unwrap();
        replays.push(b.graph_replays() - before);
    }
    assert_eq!(replays, [0, 1, 1, 0, 1, 0, 1, 0], "events: {:?}", g.events);
    let ev = g.events.join("\n");
    assert!(ev.contains("captured the step graph for inputs [[8, 4]]"), "{ev}");
    assert!(ev.contains("with the optimizer"), "SGD is recorded after its warm-up step made its momentum: {ev}");
    assert!(ev.contains("inputs [[5, 4]] ran eagerly (the step graph is for [[8, 4]])"), "{ev}");
    assert!(ev.contains("recaptured the step graph for inputs [[5, 4]]"), "{ev}");
    assert!(g.launches() > 0);

    // A forward that uploads a constant cannot be recorded: eager from then on.
    let uploads = |cx: &Ctx<CudaBackend>, x: &[Tensor<CudaBackend>]| {
        let c = Tensor::from_f32(&b, &[1.0; 12], &[4, 3], DType::F32)?;
        let y = cx.tape.matmul(&Var::constant(x[0].clone()), &Var::constant(c), false, false)?;
        let y = cx.tape.mul(&y, &cx.tape.matmul(&Var::constant(x[0].clone()), &cx.param(w), false, false)?)?;
        Ok((cx.tape.sum_axis(&cx.tape.sum_axis(&y, 0)?, 0)?, ()))
    };
    let mut g = StepGraph::new(&b, true);
    for _ in 0..4 {
        let before = b.graph_replays();
        g.step(&ps, &mut opt, &|_| (0.1, 0.0), input(8), uploads, always).unwrap();
        assert_eq!(b.graph_replays(), before);
    }
    assert_eq!(g.events.len(), 1, "{:?}", g.events);
    assert!(g.events[0].contains("could not be captured") && g.events[0].contains("an upload from the host"), "{:?}", g.events);
}

/// A recorded step holds the addresses of the tensors it updates in place. Replacing one (an
/// optimizer state load, a weight reload) recaptures the graph on the new buffers instead of
/// replaying into the old ones, which nothing reads any more.
#[test]
fn step_graph_is_recaptured_when_a_tensor_it_captured_is_replaced() {
    if !nvrtc_or_skip() {
        return;
    }
    use ssl_engine::nn::{Ctx, ParamStore};
    use ssl_engine::optim::{Optimizer, Sgd, StepGraph, always};
    let (b, mut ps, w) = one_weight_model();
    let mut opt = Sgd::new(0.9);
    let forward = |cx: &Ctx<CudaBackend>, x: &[Tensor<CudaBackend>]| sum_of_product(cx, x, w);
    let mut g = StepGraph::new(&b, true);
    let step = |ps: &ParamStore<CudaBackend>, opt: &mut Sgd<CudaBackend>, g: &mut StepGraph<CudaBackend, ()>| {
        let before = b.graph_replays();
        let x = vec![Tensor::zeros(&b, &[8, 4], DType::F32).unwrap()];
        g.step(ps, opt, &|_| (0.1, 0.0), x, forward, always).unwrap();
        b.graph_replays() - before
    };
    let replays: Vec<u64> = (0..3).map(|_| step(&ps, &mut opt, &mut g)).collect();
    assert_eq!(replays, [0, 1, 1], "warm-up, capture, replay: {:?}", g.events);
    g.events.clear();

    // The momentum restored from a checkpoint is a new buffer.
    let (kind, id, shape) = opt.state().first().map(|(k, id, t)| (*k, *id, t.shape().to_vec())).expect("momentum after a step");
    opt.load_state(kind, id, Tensor::zeros(&b, &shape, DType::F32).unwrap()).unwrap();
    assert_eq!(step(&ps, &mut opt, &mut g), 1, "recorded again and replayed: {:?}", g.events);
    let ev = g.events.join("\n");
    assert!(ev.contains("the optimizer's momentum of w was replaced since the step graph was captured"), "{ev}");
    assert!(ev.contains("recaptured the step graph"), "{ev}");
    g.events.clear();
    assert_eq!(step(&ps, &mut opt, &mut g), 1);
    assert!(g.events.is_empty(), "an unchanged graph replays quietly: {:?}", g.events);

    // A weight reload replaces the parameter's buffer.
    ps.set(w, Tensor::zeros(&b, &[4, 3], DType::F32).unwrap()).unwrap();
    assert_eq!(step(&ps, &mut opt, &mut g), 1);
    assert!(g.events.join("\n").contains("parameter w was replaced"), "{:?}", g.events);
}

/// The allocator keeps a graph's memory to the graph: a block freed during the capture is not
/// handed to work outside the graph while the graph lives (each replay writes there again), and
/// returns to common use once the graph is dropped.
#[test]
fn graph_memory_stays_with_the_graph_until_it_is_dropped() {
    if !nvrtc_or_skip() {
        return;
    }
    let b = CudaBackend::dry_run(132).unwrap();
    let first = b.alloc(1000, DType::F32).unwrap();
    let p = first.device_ptr();
    drop(first);
    assert_eq!(b.alloc(1000, DType::F32).unwrap().device_ptr(), p, "the pool hands a freed block out again at once");

    assert!(b.graph_begin().unwrap());
    let inside = b.alloc(1000, DType::F32).unwrap();
    let q = inside.device_ptr();
    drop(inside);
    let again = b.alloc(1000, DType::F32).unwrap();
    assert_eq!(again.device_ptr(), q, "within the capture, the graph reuses its own blocks");
    drop(again);
    let g = b.graph_end(true).unwrap();
    let outside = b.alloc(1000, DType::F32).unwrap();
    assert_ne!(outside.device_ptr(), q, "a block of the live graph went to a tensor outside it");
    drop(outside);
    b.graph_release(g);
    assert_eq!(b.alloc(1000, DType::F32).unwrap().device_ptr(), q, "the dropped graph's blocks are free again");
}
