//! Helpers shared by the data pipeline tests (tests/data_*.rs).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};

/// The skip policy every test binary shares (tests/common/skip.rs).
#[path = "../common/skip.rs"]
pub mod skip;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn demo() -> PathBuf {
    repo().join("data").join("cifar10-demo")
}

/// A tensor of tests/reference/augment.safetensors, as f64 values with its shape.
pub struct Fixture {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

pub struct AugmentFixtures {
    pub tensors: HashMap<String, Fixture>,
    pub cases: Vec<serde_json::Value>,
}

impl AugmentFixtures {
    pub fn load() -> Self {
        Self::load_file("augment.safetensors")
    }
    /// A fixture file of tests/reference/; its "cases" metadata, when it has one.
    pub fn load_file(file: &str) -> Self {
        let path = repo().join("tests/reference").join(file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).expect(file);
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("metadata");
        let cases: Vec<serde_json::Value> = match meta.metadata().as_ref().and_then(|m| m.get("cases")) {
            Some(json) => serde_json::from_str(json).expect("cases json"),
            None => Vec::new(),
        };
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let d = view.data();
            let data: Vec<f64> = match view.dtype() {
                Dtype::U8 => d.iter().map(|&v| v as f64).collect(),
                Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                Dtype::F64 => d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
                t => panic!("{name}: unexpected dtype {t:?}"),
            };
            tensors.insert(name, Fixture { shape: view.shape().to_vec(), data });
        }
        AugmentFixtures { tensors, cases }
    }
    pub fn get(&self, name: &str) -> &Fixture {
        self.tensors.get(name).unwrap_or_else(|| panic!("fixture {name} missing"))
    }
    /// An input image as (u8 pixels, h, w).
    pub fn input(&self, name: &str) -> (Vec<u8>, usize, usize) {
        let f = self.get(&format!("input.{name}"));
        (f.data.iter().map(|&v| v as u8).collect(), f.shape[0], f.shape[1])
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).abs()).fold(0.0, f64::max)
}
