//! A queue of past embeddings, one row each (MoCo's keys, SwAV's projections): a ring buffer
//! of `len` rows on the backend, the newest batch written at `ptr`. It is method state: the
//! rows and the position go into checkpoints.

use std::collections::HashMap;

use super::saved_state;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

pub struct Queue<B: Backend> {
    /// [len, dim]
    pub rows: Tensor<B>,
    ptr: usize,
}

impl<B: Backend> Queue<B> {
    /// `len` rows of `dim`: zeros, or with `rng` unit-norm Gaussian rows (MoCo's start).
    pub fn new(b: &B, len: usize, dim: usize, dtype: DType, rng: Option<&mut Rng>) -> Result<Self> {
        let rows = match rng {
            None => Tensor::zeros(b, &[len, dim], dtype)?,
            Some(rng) => {
                let mut v: Vec<f32> = (0..len * dim).map(|_| rng.normal() as f32).collect();
                for row in v.chunks_mut(dim.max(1)) {
                    let n = row.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
                    row.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
                }
                Tensor::from_f32(b, &v, &[len, dim], dtype)?
            }
        };
        Ok(Queue { rows, ptr: 0 })
    }

    /// Writes `batch` [n, dim] at the current position (wrapping) and moves past it, so the
    /// oldest rows are the ones replaced.
    pub fn push(&mut self, batch: &Tensor<B>) -> Result<()> {
        let (len, n) = (self.rows.shape()[0], batch.shape()[0]);
        if n > len {
            return Err(Error::Config(format!("a queue of {len} rows cannot take a batch of {n}: make the queue at least one batch")));
        }
        let first = n.min(len - self.ptr);
        ops::slice_assign(&self.rows, &ops::slice(batch, 0, 0, first)?, 0, self.ptr)?;
        if first < n {
            ops::slice_assign(&self.rows, &ops::slice(batch, 0, first, n - first)?, 0, 0)?;
        }
        self.ptr = (self.ptr + n) % len;
        Ok(())
    }

    pub fn ptr(&self) -> usize {
        self.ptr
    }

    /// `<name>` (the rows) and `<name>_ptr` for the checkpoint.
    pub fn state(&self, name: &str) -> Result<Vec<(String, Tensor<B>)>> {
        let ptr = Tensor::from_f32(self.rows.backend(), &[self.ptr as f32], &[1], DType::F32)?;
        Ok(vec![(name.to_string(), self.rows.clone()), (format!("{name}_ptr"), ptr)])
    }

    pub fn load_state(&mut self, saved: &HashMap<String, Tensor<B>>, method: &str, name: &str) -> Result<()> {
        self.rows = saved_state(saved, method, name, self.rows.shape())?;
        let ptr = saved_state(saved, method, &format!("{name}_ptr"), &[1])?.to_f32()?[0];
        if !(ptr >= 0.0 && (ptr as usize) < self.rows.shape()[0]) {
            return Err(Error::Config(format!("the checkpoint's {method} queue position {ptr} is outside the queue")));
        }
        self.ptr = ptr as usize;
        Ok(())
    }
}

/// Every queue's state, as `queue<v>` and `queue<v>_ptr` (v from 1).
pub fn queues_state<B: Backend>(queues: &[Queue<B>]) -> Result<Vec<(String, Tensor<B>)>> {
    let mut out = Vec::new();
    for (v, q) in queues.iter().enumerate() {
        out.extend(q.state(&format!("queue{}", v + 1))?);
    }
    Ok(out)
}

/// Restores what `queues_state` saved.
pub fn load_queues<B: Backend>(queues: &mut [Queue<B>], saved: &HashMap<String, Tensor<B>>, method: &str) -> Result<()> {
    for (v, q) in queues.iter_mut().enumerate() {
        q.load_state(saved, method, &format!("queue{}", v + 1))?;
    }
    Ok(())
}
