//! Shared test helpers: the deterministic generator the PyTorch fixture script also implements
//! (tests/reference/make_fixtures.py), fixture loading, layout conversion and error measures.
#![allow(dead_code)]

use std::collections::HashMap;

use safetensors::SafeTensors;
use ssl_engine::backend::prelude::*;
use ssl_engine::nn::ParamStore;
use ssl_engine::{DType, Tensor};

pub mod cli;
pub mod conformance;
pub mod skip;
pub mod tiny_run;

pub fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3))
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// offset + scale * u, u uniform in [-1, 1) with 24 random bits: the fixture script's `det_uniform`.
pub fn det_uniform(name: &str, n: usize, scale: f64, offset: f64) -> Vec<f32> {
    let key = fnv(name);
    (0..n as u64)
        .map(|i| {
            let u = (mix(i.wrapping_add(key)) >> 40) as f64 / (1u64 << 23) as f64 - 1.0;
            (offset + scale * u) as f32
        })
        .collect()
}

/// The fixture script's `det_param`: a parameter's value from its PyTorch name and shape.
pub fn det_param(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let leaf = name.rsplit('.').next().unwrap();
    match leaf {
        "running_mean" => det_uniform(name, n, 0.1, 0.0),
        "running_var" => det_uniform(name, n, 0.2, 1.0),
        "weight" if shape.len() >= 2 => {
            let fan_in: usize = shape[1..].iter().product();
            det_uniform(name, n, 1.0 / (fan_in as f64).sqrt(), 0.0)
        }
        "weight" => det_uniform(name, n, 0.1, 1.0),
        "cls_token" | "pos_embed" => det_uniform(name, n, 0.02, 0.0),
        _ => det_uniform(name, n, 0.1, 0.0),
    }
}

/// Gives every parameter and buffer its `det_param` value.
pub fn set_det_weights<B: Backend>(ps: &mut ParamStore<B>) {
    let ids: Vec<_> = ps.ids().collect();
    for id in ids {
        let name = ps.entry(id).name.clone();
        let shape = ps.torch_shape(id);
        ps.set_from_torch(id, &det_param(&name, &shape), &shape).unwrap();
    }
}

pub struct Fixtures {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Fixtures {
    pub fn load(file: &str) -> Self {
        let path = repo(&format!("tests/reference/{file}"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let vals: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                safetensors::Dtype::F64 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
                d => panic!("{name}: fixture dtype {d:?}"),
            };
            tensors.insert(name.to_string(), (view.shape().to_vec(), vals));
        }
        Fixtures { tensors }
    }
    pub fn get(&self, name: &str) -> (&[usize], &[f64]) {
        let (s, v) = self.tensors.get(name).unwrap_or_else(|| panic!("fixture {name} missing"));
        (s, v)
    }
    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.get(name).1.iter().map(|&v| v as f32).collect()
    }
    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.get(name).0.to_vec()
    }
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// [n, c, h, w] -> [n, h, w, c]
pub fn nchw_to_nhwc(v: &[f32], s: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let mut out = vec![0.0; v.len()];
    for a in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    out[((a * h + y) * w + x) * c + ch] = v[((a * c + ch) * h + y) * w + x];
                }
            }
        }
    }
    (out, vec![n, h, w, c])
}

/// [n, h, w, c] -> [n, c, h, w]
pub fn nhwc_to_nchw(v: &[f32], s: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let (n, h, w, c) = (s[0], s[1], s[2], s[3]);
    let mut out = vec![0.0; v.len()];
    for a in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    out[((a * c + ch) * h + y) * w + x] = v[((a * h + y) * w + x) * c + ch];
                }
            }
        }
    }
    (out, vec![n, c, h, w])
}

/// ||a - b|| / ||b|| (absolute when the reference is all zeros).
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if den == 0.0 { num } else { num / den }
}

pub fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Asserts rel_l2(got, want) <= tol with a message naming the tensor; returns the error.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) -> f64 {
    let e = rel_l2(got, want);
    assert!(e <= tol, "{what}: relative L2 error {e:.3e} > {tol:.0e}");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    e
}

pub fn tensor<B: Backend>(b: &B, v: &[f32], shape: &[usize]) -> Tensor<B> {
    Tensor::from_f32(b, v, shape, DType::F32).unwrap()
}

/// A fresh, empty folder `<temp>/ssl-engine-test-<pid>/<name>`, unique to this test process and
/// `name`. The whole per-process folder goes when the test binary exits (pass or fail), unless
/// SSL_ENGINE_KEEP_TEST_DIRS is set to look at it: the suite writes ~2 GB of runs, and left
/// behind, a few suites filled the disk that a CI build then failed on.
pub fn tmp_dir(name: &str) -> std::path::PathBuf {
    let d = process_tmp_root().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn process_tmp_root() -> std::path::PathBuf {
    static REMOVE_AT_EXIT: std::sync::Once = std::sync::Once::new();
    REMOVE_AT_EXIT.call_once(|| {
        if std::env::var_os("SSL_ENGINE_KEEP_TEST_DIRS").is_none() {
            // libtest ends through exit() whether the tests passed or not, which runs this.
            unsafe { libc::atexit(remove_process_tmp_root) };
        }
    });
    std::env::temp_dir().join(format!("ssl-engine-test-{}", std::process::id()))
}

extern "C" fn remove_process_tmp_root() {
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("ssl-engine-test-{}", std::process::id())));
}

/// A path inside the repository: the one the tests were built in, or, for a test binary carried
/// to another machine (benches/gpu_run.sh), the current folder when it is a checkout.
pub fn repo(p: &str) -> String {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = if built.join("Cargo.toml").exists() || !std::path::Path::new("Cargo.toml").exists() {
        built.to_path_buf()
    } else {
        std::env::current_dir().unwrap()
    };
    format!("{}/{p}", root.display())
}

/// The CUDA backend on GPU 0, or None after `skip::skip` (which fails in CI unless .ci/run
/// allows "cuda-device", and always with SSL_ENGINE_REQUIRE_GPU=1, set by benches/gpu_run.sh
/// on the GPU machine, so a run there can never pass by skipping).
pub fn cuda_or_skip() -> Option<ssl_engine::backend::cuda::CudaBackend> {
    match ssl_engine::backend::cuda::CudaBackend::new(0) {
        Ok(b) => {
            eprintln!("{}", ssl_engine::backend::CoreOps::name(&b));
            Some(b.with_poison())
        }
        Err(e) => {
            skip::skip(skip::Need::CudaDevice, e);
            None
        }
    }
}

pub fn cpu(threads: usize) -> ssl_engine::backend::cpu::CpuBackend {
    ssl_engine::backend::cpu::CpuBackend::new(threads).unwrap()
}

/// The WGSL backend on the best adapter, or None after `skip::skip` (in CI a failure: .ci/run
/// installs mesa's llvmpipe, so a missing adapter means a broken install).
#[cfg(feature = "wgpu")]
pub fn wgpu_or_skip() -> Option<ssl_engine::backend::wgpu::WgpuBackend> {
    match ssl_engine::backend::wgpu::WgpuBackend::new(None) {
        Ok(b) => {
            eprintln!("{}", ssl_engine::backend::CoreOps::name(&b));
            Some(b)
        }
        Err(e) => {
            skip::skip(skip::Need::WgpuAdapter, e);
            None
        }
    }
}

/// A parameter's values in f64, PyTorch's layout (a conv weight is held [out, kh, kw, in] here).
pub fn torch_f64(ps: &ParamStore<ssl_engine::backend::cpu::CpuBackend>, name: &str) -> Vec<f64> {
    let id = ps.find(name).unwrap_or_else(|| panic!("no parameter {name}"));
    let t = ps.get(id);
    ssl_engine::nn::params_layout::from_internal(&t.to_f64().unwrap(), t.shape(), ps.entry(id).layout).0
}
