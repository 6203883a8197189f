//! The parameter store: every parameter and buffer of a model, by PyTorch name, in
//! registration order. Layers keep `ParamId`s; the optimiser and checkpoints walk the store.

use std::cell::RefCell;
use std::collections::HashMap;

use super::init::Init;
use crate::autograd::{Gradients, Tape, Var};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Trained by the optimiser.
    Param,
    /// State that is not trained (batch-norm running statistics).
    Buffer,
}

/// How a tensor's internal layout differs from PyTorch's (converted at the checkpoint boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Same,
    /// Internal [out, kh, kw, in], PyTorch [out, in, kh, kw].
    ConvWeight,
}

pub struct Entry<B: Backend> {
    pub name: String,
    pub value: Tensor<B>,
    pub kind: Kind,
    pub layout: Layout,
    /// False for frozen parameters (a linear probe's backbone).
    pub trainable: bool,
}

pub struct ParamStore<B: Backend> {
    backend: B,
    dtype: DType,
    rng: Rng,
    entries: Vec<Entry<B>>,
    by_name: HashMap<String, ParamId>,
    /// The data-parallel group whose ranks keep equal copies of this store (None: one rank).
    replicas: Option<Replicas<B>>,
}

/// How a store's copies on several ranks train together.
#[derive(Clone)]
pub struct Replicas<B: Backend> {
    pub group: crate::dist::collective::Group<B>,
    /// Batch norm computes its statistics over every rank's rows (`sync_bn`).
    pub sync_bn: bool,
}

impl<B: Backend> ParamStore<B> {
    /// `seed` keys the initialisation streams: the same seed gives the same weights.
    pub fn new(backend: &B, dtype: DType, seed: u64) -> Self {
        ParamStore { backend: backend.clone(), dtype, rng: Rng::new(seed).stream("init"), entries: Vec::new(), by_name: HashMap::new(), replicas: None }
    }

    /// Makes this store one rank's copy in `group`: training steps average the gradients over
    /// the ranks, and methods gather what their loss needs from every rank.
    pub fn set_replicas(&mut self, replicas: Option<Replicas<B>>) {
        self.replicas = replicas;
    }

    /// The group this store trains in, when there is more than one rank.
    pub fn replicas(&self) -> Option<&Replicas<B>> {
        self.replicas.as_ref().filter(|r| r.group.world() > 1)
    }

    /// Sets every tensor (parameters and buffers) to rank 0's, so every rank starts equal.
    pub fn broadcast_from_rank0(&self) -> Result<()> {
        self.broadcast_where(|_| true)
    }

    /// Sets every buffer (batch norm's running statistics) to rank 0's: without `sync_bn` each
    /// rank's statistics follow its own rows, and rank 0's are the run's (DDP's
    /// `broadcast_buffers`), so evaluation on every rank sees the ones the checkpoint holds.
    pub fn broadcast_buffers_from_rank0(&self) -> Result<()> {
        self.broadcast_where(|e| e.kind == Kind::Buffer)
    }

    /// Rank 0's values of the entries `pick` chooses, in one broadcast of their concatenation.
    fn broadcast_where(&self, pick: impl Fn(&Entry<B>) -> bool) -> Result<()> {
        let Some(r) = self.replicas() else { return Ok(()) };
        let chosen: Vec<&Entry<B>> = self.entries.iter().filter(|e| pick(e)).collect();
        if chosen.is_empty() {
            return Ok(());
        }
        let flat: Vec<Tensor<B>> = chosen.iter().map(|e| e.value.reshape(&[e.value.numel()])).collect::<Result<_>>()?;
        let all = r.group.broadcast(&crate::ops::concat(&flat.iter().collect::<Vec<_>>(), 0)?)?;
        let mut at = 0;
        for f in &flat {
            crate::ops::slice_assign(f, &crate::ops::slice(&all, 0, at, f.numel())?, 0, 0)?;
            at += f.numel();
        }
        Ok(())
    }
    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Registers a tensor; `torch_shape` is its shape in PyTorch, where values are drawn.
    pub fn add(&mut self, name: &str, torch_shape: &[usize], init: Init, kind: Kind, layout: Layout) -> Result<ParamId> {
        if self.by_name.contains_key(name) {
            return Err(Error::Invalid { op: "param", msg: format!("duplicate parameter name {name}") });
        }
        let mut rng = self.rng.derive(&[name.bytes().fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(b as u64))]);
        let n = torch_shape.iter().product();
        let torch_vals = init.sample(n, &mut rng);
        let (vals, shape) = to_internal(&torch_vals, torch_shape, layout);
        let value = Tensor::from_f32(&self.backend, &vals, &shape, self.dtype)?;
        let id = ParamId(self.entries.len());
        self.entries.push(Entry { name: name.to_string(), value, kind, layout, trainable: true });
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    pub fn get(&self, id: ParamId) -> &Tensor<B> {
        &self.entries[id.0].value
    }
    pub fn entry(&self, id: ParamId) -> &Entry<B> {
        &self.entries[id.0]
    }
    pub fn entries(&self) -> &[Entry<B>] {
        &self.entries
    }
    pub fn ids(&self) -> impl Iterator<Item = ParamId> {
        (0..self.entries.len()).map(ParamId)
    }
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).copied()
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.entries.iter().filter(|e| e.kind == Kind::Param).map(|e| e.value.numel()).sum()
    }

    /// Replaces a tensor's value (same shape), e.g. when loading weights.
    pub fn set(&mut self, id: ParamId, value: Tensor<B>) -> Result<()> {
        let e = &mut self.entries[id.0];
        if e.value.shape() != value.shape() {
            return Err(crate::error::shape_err("param set", format!("{} has another shape", e.name), &[e.value.shape(), value.shape()]));
        }
        e.value = value;
        Ok(())
    }
    pub fn set_trainable(&mut self, prefix: &str, trainable: bool) {
        for e in self.entries.iter_mut().filter(|e| e.name.starts_with(prefix)) {
            e.trainable = trainable;
        }
    }

    /// Sets a tensor from PyTorch-layout values.
    pub fn set_from_torch(&mut self, id: ParamId, vals: &[f32], torch_shape: &[usize]) -> Result<()> {
        let layout = self.entries[id.0].layout;
        let (v, shape) = to_internal(vals, torch_shape, layout);
        let t = Tensor::from_f32(&self.backend, &v, &shape, self.dtype)?;
        self.set(id, t)
    }
    /// A tensor's shape in PyTorch's layout.
    pub fn torch_shape(&self, id: ParamId) -> Vec<usize> {
        let e = &self.entries[id.0];
        let s = e.value.shape();
        match e.layout {
            Layout::ConvWeight if s.len() == 4 => vec![s[0], s[3], s[1], s[2]],
            _ => s.to_vec(),
        }
    }
    /// A tensor's values and shape in PyTorch's layout.
    pub fn to_torch(&self, id: ParamId) -> Result<(Vec<f32>, Vec<usize>)> {
        let e = &self.entries[id.0];
        let v = e.value.to_f32()?;
        Ok(from_internal(&v, e.value.shape(), e.layout))
    }
}

/// PyTorch layout -> internal layout (f32 values, or f64 where the tests compare in f64).
pub fn to_internal<T: Copy + Default>(vals: &[T], shape: &[usize], layout: Layout) -> (Vec<T>, Vec<usize>) {
    match layout {
        Layout::ConvWeight if shape.len() == 4 => {
            let (o, i, kh, kw) = (shape[0], shape[1], shape[2], shape[3]);
            let mut out = vec![T::default(); vals.len()];
            for a in 0..o {
                for b in 0..i {
                    for y in 0..kh {
                        for x in 0..kw {
                            out[((a * kh + y) * kw + x) * i + b] = vals[((a * i + b) * kh + y) * kw + x];
                        }
                    }
                }
            }
            (out, vec![o, kh, kw, i])
        }
        _ => (vals.to_vec(), shape.to_vec()),
    }
}

/// Internal layout -> PyTorch layout (f32 values, or f64 where the tests compare in f64).
pub fn from_internal<T: Copy + Default>(vals: &[T], shape: &[usize], layout: Layout) -> (Vec<T>, Vec<usize>) {
    match layout {
        Layout::ConvWeight if shape.len() == 4 => {
            let (o, kh, kw, i) = (shape[0], shape[1], shape[2], shape[3]);
            let mut out = vec![T::default(); vals.len()];
            for a in 0..o {
                for b in 0..i {
                    for y in 0..kh {
                        for x in 0..kw {
                            out[((a * i + b) * kh + y) * kw + x] = vals[((a * kh + y) * kw + x) * i + b];
                        }
                    }
                }
            }
            (out, vec![o, i, kh, kw])
        }
        _ => (vals.to_vec(), shape.to_vec()),
    }
}

/// What a forward pass needs: the tape, the parameters, and train/eval mode. Each parameter
/// becomes one leaf per context, so a parameter used twice (two views) accumulates one gradient.
pub struct Ctx<'a, B: Backend> {
    pub tape: &'a Tape<B>,
    pub params: &'a ParamStore<B>,
    pub train: bool,
    leaves: RefCell<HashMap<ParamId, Var<B>>>,
    /// The forward pass's randomness (stochastic depth, dropout). The training loop seeds it per
    /// step, so a resumed run draws the same masks.
    noise: RefCell<Rng>,
}

impl<'a, B: Backend> Ctx<'a, B> {
    pub fn new(tape: &'a Tape<B>, params: &'a ParamStore<B>, train: bool) -> Self {
        Ctx { tape, params, train, leaves: RefCell::new(HashMap::new()), noise: RefCell::new(Rng::new(0).stream("forward noise")) }
    }
    /// Seeds the forward pass's randomness.
    pub fn seed_noise(&self, rng: Rng) {
        *self.noise.borrow_mut() = rng;
    }
    /// n draws of a Bernoulli(keep) mask scaled by 1 / keep (dropout's and stochastic depth's).
    pub fn keep_mask(&self, n: usize, keep: f64) -> Vec<f32> {
        let mut rng = self.noise.borrow_mut();
        (0..n).map(|_| if rng.uniform() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect()
    }
    /// The parameter as a tape value (a constant when frozen).
    pub fn param(&self, id: ParamId) -> Var<B> {
        let e = self.params.entry(id);
        if !e.trainable || e.kind != Kind::Param {
            return Var::constant(e.value.clone());
        }
        self.leaves.borrow_mut().entry(id).or_insert_with(|| self.tape.leaf(e.value.clone())).clone()
    }
    /// Gradients of every parameter this context used, in store order.
    pub fn param_grads(&self, grads: &mut Gradients<B>) -> Vec<(ParamId, Tensor<B>)> {
        let leaves = self.leaves.borrow();
        let mut out: Vec<(ParamId, Tensor<B>)> = leaves.iter().filter_map(|(id, v)| grads.take(v).map(|g| (*id, g))).collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }
}
