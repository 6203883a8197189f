//! The element types the CPU kernels are generic over: f32 (training) and f64 (gradient checks).

use std::cell::RefCell;

use super::CpuData;

thread_local! {
    static SCRATCH_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_F64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer, grown to `len` (contents unspecified: callers
/// overwrite what they read). Reused across calls, so the convolutions' column tiles cost no
/// allocation, page faults or zero-fill per tile; a nested call gets a fresh buffer instead.
fn with_scratch<T: Default + Clone, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<T>>>, len: usize, f: impl FnOnce(&mut [T]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, T::default());
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![T::default(); len]),
    })
}

pub trait Real: num_traits::Float + Default + Send + Sync + std::fmt::Debug + std::iter::Sum + std::ops::AddAssign + 'static {
    fn of_data(d: &CpuData) -> &[Self];
    fn of_data_mut(d: &mut CpuData) -> &mut [Self];
    /// Converts a constant (always representable, so no error path).
    fn c(x: f64) -> Self;
    fn f64(self) -> f64;
    fn erf(self) -> Self;
    /// The nearest bfloat16 (ties to even, NaN kept), in this type.
    fn round_bf16(self) -> Self;
    /// `with_scratch` for this element type.
    fn scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

impl Real for f32 {
    fn of_data(d: &CpuData) -> &[f32] {
        match d {
            CpuData::F32(v) => v,
            CpuData::F64(_) => panic!("cpu backend: f64 buffer where f32 expected (ops.rs checks dtypes)"),
        }
    }
    fn of_data_mut(d: &mut CpuData) -> &mut [f32] {
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
    fn round_bf16(self) -> f32 {
        half::bf16::from_f32(self).to_f32()
    }
    fn scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        with_scratch(&SCRATCH_F32, len, f)
    }
}

impl Real for f64 {
    fn of_data(d: &CpuData) -> &[f64] {
        match d {
            CpuData::F64(v) => v,
            CpuData::F32(_) => panic!("cpu backend: f32 buffer where f64 expected (ops.rs checks dtypes)"),
        }
    }
    fn of_data_mut(d: &mut CpuData) -> &mut [f64] {
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
    /// Rounded from all 52 mantissa bits (`half`'s `from_f64` drops the low 32 before rounding,
    /// which misrounds f32 values whose sticky bits lie there).
    fn round_bf16(self) -> f64 {
        if !self.is_finite() {
            return self;
        }
        // bf16's subnormals are multiples of 2^-133: round there directly (exact in f64).
        if self.abs() < f64::from(f32::MIN_POSITIVE) {
            return (self * 2f64.powi(133)).round_ties_even() * 2f64.powi(-133);
        }
        // Keep 7 of 52 mantissa bits: round the 45 below to nearest, ties to even.
        let u = self.to_bits();
        let r = f64::from_bits((u + (1u64 << 44) - 1 + ((u >> 45) & 1)) & !((1u64 << 45) - 1));
        // Past bf16's largest finite value (as f32's range, 0x7f7f0000) is infinity.
        if r.abs() > f64::from(f32::from_bits(0x7f7f_0000)) { f64::INFINITY.copysign(self) } else { r }
    }
    fn scratch<R>(len: usize, f: impl FnOnce(&mut [f64]) -> R) -> R {
        with_scratch(&SCRATCH_F64, len, f)
    }
}
