//! Tensor: a shape, a dtype and a backend-owned buffer. No math lives here;
//! validated ops are in `ops.rs`, kernels behind the `Backend` trait.

use std::sync::Arc;

use crate::backend::Backend;
pub use crate::dtype::DType;
use crate::error::Result;

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A contiguous, row-major tensor. Cloning is cheap: the buffer is shared.
/// Activations are NHWC; conv weights are [out, kh, kw, in/groups].
pub struct Tensor<B: Backend> {
    shape: Vec<usize>,
    dtype: DType,
    storage: Arc<B::Storage>,
    backend: B,
}

impl<B: Backend> Clone for Tensor<B> {
    fn clone(&self) -> Self {
        Tensor { shape: self.shape.clone(), dtype: self.dtype, storage: self.storage.clone(), backend: self.backend.clone() }
    }
}

impl<B: Backend> std::fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {}, {})", self.shape, self.dtype, self.backend.name())
    }
}

impl<B: Backend> Tensor<B> {
    pub(crate) fn from_storage(backend: &B, storage: B::Storage, shape: &[usize], dtype: DType) -> Self {
        Tensor { shape: shape.to_vec(), dtype, storage: Arc::new(storage), backend: backend.clone() }
    }

    /// A new tensor with unspecified contents (GPU backends do not clear it).
    pub fn empty(backend: &B, shape: &[usize], dtype: DType) -> Result<Self> {
        let s = backend.alloc(numel(shape), dtype)?;
        Ok(Self::from_storage(backend, s, shape, dtype))
    }

    pub fn full(backend: &B, shape: &[usize], value: f32, dtype: DType) -> Result<Self> {
        let t = Self::empty(backend, shape, dtype)?;
        backend.fill(t.storage(), value)?;
        Ok(t)
    }

    pub fn zeros(backend: &B, shape: &[usize], dtype: DType) -> Result<Self> {
        Self::full(backend, shape, 0.0, dtype)
    }

    pub fn from_f32(backend: &B, data: &[f32], shape: &[usize], dtype: DType) -> Result<Self> {
        check_len("from_f32", data.len(), shape)?;
        let s = backend.upload_f32(data, dtype)?;
        Ok(Self::from_storage(backend, s, shape, dtype))
    }

    pub fn from_f64(backend: &B, data: &[f64], shape: &[usize], dtype: DType) -> Result<Self> {
        check_len("from_f64", data.len(), shape)?;
        let s = backend.upload_f64(data, dtype)?;
        Ok(Self::from_storage(backend, s, shape, dtype))
    }

    /// Copies the data to the host: the only operation that waits for the device.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.backend.download_f32(&self.storage)
    }

    pub fn to_f64(&self) -> Result<Vec<f64>> {
        self.backend.download_f64(&self.storage)
    }

    /// Reads back a one-element tensor (a loss).
    pub fn scalar(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(crate::error::shape_err("scalar", "tensor has more than one element", &[&self.shape]));
        }
        Ok(self.to_f32()?[0])
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dims(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn storage(&self) -> &B::Storage {
        &self.storage
    }
    /// True when both tensors share one buffer.
    pub fn same_storage(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// Same buffer, new shape (contiguous tensors make this free).
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.numel() {
            return Err(crate::error::shape_err("reshape", "element count differs", &[&self.shape, shape]));
        }
        Ok(Tensor { shape: shape.to_vec(), dtype: self.dtype, storage: self.storage.clone(), backend: self.backend.clone() })
    }

    /// A fresh copy with its own buffer.
    pub fn deep_clone(&self) -> Result<Self> {
        let t = Self::empty(&self.backend, &self.shape, self.dtype)?;
        self.backend.copy(&self.storage, t.storage())?;
        Ok(t)
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    if len != numel(shape) {
        return Err(crate::error::Error::Shape {
            op,
            msg: format!("{len} values given for {} elements", numel(shape)),
            shapes: format!("{shape:?}"),
        });
    }
    Ok(())
}
