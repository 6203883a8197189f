//! The element types the CPU kernels are generic over: f32 (training) and f64 (gradient checks).

use super::CpuData;

pub trait Real: num_traits::Float + Default + Send + Sync + std::fmt::Debug + std::iter::Sum + std::ops::AddAssign + 'static {
    fn slice(d: &CpuData) -> &[Self];
    fn slice_mut(d: &mut CpuData) -> &mut [Self];
    /// Converts a constant (always representable, so no error path).
    fn c(x: f64) -> Self;
    fn f64(self) -> f64;
    fn erf(self) -> Self;
}

impl Real for f32 {
    fn slice(d: &CpuData) -> &[f32] {
        match d {
            CpuData::F32(v) => v,
            CpuData::F64(_) => panic!("cpu backend: f64 buffer where f32 expected (ops.rs checks dtypes)"),
        }
    }
    fn slice_mut(d: &mut CpuData) -> &mut [f32] {
        match d {
            CpuData::F32(v) => v,
            CpuData::F64(_) => panic!("cpu backend: f64 buffer where f32 expected (ops.rs checks dtypes)"),
        }
    }
    fn c(x: f64) -> f32 {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    fn erf(self) -> f32 {
        libm::erff(self)
    }
}

impl Real for f64 {
    fn slice(d: &CpuData) -> &[f64] {
        match d {
            CpuData::F64(v) => v,
            CpuData::F32(_) => panic!("cpu backend: f32 buffer where f64 expected (ops.rs checks dtypes)"),
        }
    }
    fn slice_mut(d: &mut CpuData) -> &mut [f64] {
        match d {
            CpuData::F64(v) => v,
            CpuData::F32(_) => panic!("cpu backend: f32 buffer where f64 expected (ops.rs checks dtypes)"),
        }
    }
    fn c(x: f64) -> f64 {
        x
    }
    fn f64(self) -> f64 {
        self
    }
    fn erf(self) -> f64 {
        libm::erf(self)
    }
}
