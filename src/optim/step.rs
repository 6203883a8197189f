//! The crate's one optimisation step. Pretraining, the linear probe, fine-tuning and the
//! benches all call `train_step`; only what they compute (`forward`) and what they check before
//! the update (`before_update`) differ.

use super::{Hyper, Optimizer};
use crate::autograd::{Tape, Var};
use crate::backend::{Backend, GraphId};
use crate::error::Result;
use crate::nn::{Ctx, ParamId, ParamStore};
use crate::ops;
use crate::tensor::{DType, Tensor};

/// What one step did.
pub struct Stepped<T> {
    /// The loss of the step, read back from the backend.
    pub loss: f64,
    /// What `forward` returned beside the loss (an embedding for the collapse monitor).
    pub out: T,
}

/// What a step knows before it updates: the loss, and (when asked for) whether every
/// gradient is finite.
#[derive(Clone, Copy, Debug)]
pub struct Checked {
    pub loss: f64,
    /// One sum over every gradient, on the device (a NaN or Inf anywhere makes it non-finite);
    /// None unless the step was asked to check.
    pub grads_finite: Option<bool>,
}

/// Records `forward` on a fresh tape in training mode, takes the gradient of its loss for every
/// trainable parameter (and with `check_grads` whether they are all finite), hands that and the
/// gradients to `before_update` (which may edit the gradients: freeze, clip, cancel; or decline
/// the update by returning false), then updates the parameters with `opt`.
pub fn train_step<B: Backend, T>(
    ps: &ParamStore<B>,
    opt: &mut dyn Optimizer<B>,
    hyper: Hyper<'_>,
    check_grads: bool,
    forward: impl FnOnce(&Ctx<B>) -> Result<(Var<B>, T)>,
    before_update: impl FnOnce(Checked, &mut Vec<(ParamId, Tensor<B>)>) -> Result<bool>,
) -> Result<Stepped<T>> {
    let (readout, mut pg, out) = forward_backward(ps, check_grads, forward)?;
    update(ps, opt, hyper, &readout, &mut pg, before_update, out, false)
}

/// The recorded part of a step: `forward` on a fresh tape in training mode, then the gradient
/// of its loss for every trainable parameter. Nothing is read back to the host: the readout
/// holds the loss, and with `check_grads` the sum of every gradient's sum after it.
fn forward_backward<B: Backend, T>(
    ps: &ParamStore<B>,
    check_grads: bool,
    forward: impl FnOnce(&Ctx<B>) -> Result<(Var<B>, T)>,
) -> Result<(Tensor<B>, Vec<(ParamId, Tensor<B>)>, T)> {
    let tape = Tape::new();
    let cx = Ctx::new(&tape, ps, true);
    let (loss, out) = forward(&cx)?;
    let mut grads = tape.backward(&loss)?;
    let mut pg = cx.param_grads(&mut grads);
    let mut readout = loss.value.reshape(&[1])?;
    if let Some(r) = ps.replicas() {
        // Data parallel: every rank updates with the mean of the ranks' gradients (DDP's
        // average), and reports the mean of their losses.
        let inv = 1.0 / r.group.world() as f32;
        average_in_buckets(&r.group, &mut pg, inv)?;
        readout = ops::scale(&r.group.all_reduce_sum(&readout)?, inv)?;
    }
    if check_grads {
        let mut total: Option<Tensor<B>> = None;
        for (_, g) in &pg {
            let s = ops::sum_axis(&g.reshape(&[g.numel()])?, 0)?;
            total = Some(match total {
                None => s,
                Some(t) => ops::add(&t, &s)?,
            });
        }
        if let Some(t) = total {
            readout = ops::concat(&[&readout, &t.reshape(&[1])?], 0)?;
        }
    }
    Ok((readout, pg, out))
}

/// The most gradient values one all-reduce carries: DDP's 25 MB buckets (in f32).
pub const BUCKET_ELEMS: usize = 25 * 1024 * 1024 / 4;

/// Replaces each gradient by `inv` times its sum over the ranks, with one all-reduce per bucket
/// of gradients instead of one per tensor (ResNet-18 has 62: 62 launches and latencies become
/// 2). Buckets fill in reverse registration order, the order backward finishes the gradients,
/// as DDP's do. The sums are elementwise, so the buckets change no value.
fn average_in_buckets<B: Backend>(group: &crate::dist::collective::Group<B>, pg: &mut [(ParamId, Tensor<B>)], inv: f32) -> Result<()> {
    let order: Vec<usize> = (0..pg.len()).rev().collect();
    for bucket in buckets(&order, pg) {
        let flat: Vec<Tensor<B>> = bucket.iter().map(|&i| pg[i].1.reshape(&[pg[i].1.numel()])).collect::<Result<_>>()?;
        let sum = ops::scale(&group.all_reduce_sum(&ops::concat(&flat.iter().collect::<Vec<_>>(), 0)?)?, inv)?;
        let mut at = 0;
        for &i in &bucket {
            let n = pg[i].1.numel();
            pg[i].1 = ops::slice(&sum, 0, at, n)?.reshape(pg[i].1.shape())?;
            at += n;
        }
    }
    Ok(())
}

/// Cuts gradient indices, in order, into buckets of at most `BUCKET_ELEMS` values (a tensor
/// larger than that is a bucket of its own).
fn buckets<B: Backend>(order: &[usize], pg: &[(ParamId, Tensor<B>)]) -> Vec<Vec<usize>> {
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut filled = 0;
    for &i in order {
        let n = pg[i].1.numel();
        if buckets.is_empty() || filled + n > BUCKET_ELEMS {
            buckets.push(Vec::new());
            filled = 0;
        }
        buckets.last_mut().expect("a bucket").push(i);
        filled += n;
    }
    buckets
}

/// The rest of a step: one read of the readout, `before_update`, then the optimizer if it
/// agrees. `optimizer_ran`: a step graph has run the optimizer already, gated on the device by
/// the same readout (SgdOnDevice); `before_update` still sees the step, but what it decides
/// was decided there: only methods whose `before_update` changes nothing use such graphs
/// (`Method::graph_safe`), and the train loop's check declines exactly the non-finite steps
/// the gate skips.
#[allow(clippy::too_many_arguments)]
fn update<B: Backend, T>(
    ps: &ParamStore<B>,
    opt: &mut dyn Optimizer<B>,
    hyper: Hyper<'_>,
    readout: &Tensor<B>,
    pg: &mut Vec<(ParamId, Tensor<B>)>,
    before_update: impl FnOnce(Checked, &mut Vec<(ParamId, Tensor<B>)>) -> Result<bool>,
    out: T,
    optimizer_ran: bool,
) -> Result<Stepped<T>> {
    let r = readout.to_f32()?;
    let checked = Checked { loss: r[0] as f64, grads_finite: r.get(1).map(|s| s.is_finite()) };
    if before_update(checked, pg)? && !optimizer_ran {
        opt.step(ps, pg, hyper)?;
    }
    Ok(Stepped { loss: checked.loss, out })
}

/// What a `StepGraph` holds once it has recorded a step.
struct Recorded<B: Backend, T> {
    id: GraphId,
    shapes: Vec<Vec<usize>>,
    /// The buffers the graph reads its inputs from, its loss and gradients, `forward`'s output.
    inputs: Vec<Tensor<B>>,
    readout: Tensor<B>,
    grads: Vec<(ParamId, Tensor<B>)>,
    out: T,
    /// Where the optimizer in the graph reads each step's learning rates and weight decays
    /// (row i for grads[i]; rows past the gradients unused); None when the optimizer runs after
    /// the replay.
    hyper: Option<Tensor<B>>,
    /// The parameters, buffers and optimizer state the graph reads and updates in place.
    captured: Captured<B>,
}

/// The tensors outside its own buffers that a recorded step reads and writes in place: every
/// parameter and buffer, and the optimizer's state. The graph holds their device addresses, so
/// it is valid only while each is still the same buffer; one replaced since (a weight reload,
/// `Optimizer::load_state`) would leave the graph updating memory nobody reads any more.
struct Captured<B: Backend> {
    params: Vec<Tensor<B>>,
    state: Vec<((&'static str, ParamId), Tensor<B>)>,
}

impl<B: Backend> Captured<B> {
    fn of(ps: &ParamStore<B>, opt: &dyn Optimizer<B>) -> Self {
        Captured {
            params: ps.entries().iter().map(|e| e.value.clone()).collect(),
            state: opt.state().into_iter().map(|(kind, id, t)| ((kind, id), t.clone())).collect(),
        }
    }

    /// What was replaced since the capture, named; None while the graph is still valid.
    fn replaced(&self, ps: &ParamStore<B>, opt: &dyn Optimizer<B>) -> Option<String> {
        let entries = ps.entries();
        if entries.len() != self.params.len() {
            return Some(format!("the parameters ({} then, {} now)", self.params.len(), entries.len()));
        }
        if let Some(e) = entries.iter().zip(&self.params).find(|(e, t)| !e.value.same_storage(t)).map(|(e, _)| e) {
            return Some(format!("parameter {}", e.name));
        }
        let now = opt.state();
        let name = |id: ParamId| &entries[id.0].name;
        if now.len() != self.state.len() {
            return Some(format!("the optimizer's state ({} tensors then, {} now)", self.state.len(), now.len()));
        }
        now.into_iter()
            .find(|(kind, id, t)| !self.state.iter().any(|(key, old)| *key == (*kind, *id) && old.same_storage(t)))
            .map(|(kind, id, _)| format!("the optimizer's {kind} of {}", name(id)))
    }
}

/// One training step as a device graph (CUDA graphs): forward, backward and the optimizer,
/// recorded after a warm-up step at the same input shapes, then replayed with one launch per
/// step. Each step's inputs are copied into the buffers the graph reads, and its learning rates
/// and weight decays into the table the optimizer reads; its loss, gradients and `forward`'s
/// output are buffers the graph writes. The optimizer updates only when the loss and the
/// gradient sum are finite, checked on the device (`Optimizer::step_on_device`); one that
/// cannot be recorded (LARS) runs after the replay. Inputs of other shapes (the last partial batch) run
/// eagerly; shapes that stay get a new graph after their own warm-up step. A backend without
/// graphs runs every step eagerly, and so does a step that cannot be recorded (it reads data
/// back or uploads some in the middle: stochastic depth's masks): `events` says which, once.
pub struct StepGraph<B: Backend, T> {
    backend: B,
    recorded: Option<Recorded<B, T>>,
    /// The shapes of the last eager step (a warm-up).
    warm: Option<Vec<Vec<usize>>>,
    /// Every step runs eagerly from now on (configuration, no graphs, or a failed capture;
    /// `events` gives the reason where it is news).
    off: bool,
    /// Whether steps check their gradients (`Checked::grads_finite`; inside the graph).
    check_grads: bool,
    /// What happened, for the log: captured, recaptured, ran eagerly, fell back (and why).
    pub events: Vec<String>,
}

impl<B: Backend, T: Clone> StepGraph<B, T> {
    /// `check_grads`: see `train_step`.
    pub fn new(backend: &B, check_grads: bool) -> Self {
        StepGraph { backend: backend.clone(), recorded: None, warm: None, off: false, check_grads, events: Vec::new() }
    }

    /// Graphs off for good (configuration): every step runs eagerly.
    pub fn disabled(backend: &B, check_grads: bool) -> Self {
        let mut g = Self::new(backend, check_grads);
        g.off = true;
        g
    }

    /// The kernel launches the current graph replays (0 without one).
    pub fn launches(&self) -> usize {
        self.recorded.as_ref().map_or(0, |r| self.backend.graph_launches(r.id))
    }

    /// `train_step` with `forward` reading its inputs from `inputs` (see the type's doc).
    pub fn step(
        &mut self,
        ps: &ParamStore<B>,
        opt: &mut dyn Optimizer<B>,
        hyper: Hyper<'_>,
        inputs: Vec<Tensor<B>>,
        forward: impl Fn(&Ctx<B>, &[Tensor<B>]) -> Result<(Var<B>, T)>,
        before_update: impl FnOnce(Checked, &mut Vec<(ParamId, Tensor<B>)>) -> Result<bool>,
    ) -> Result<Stepped<T>> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        if self.off {
            return self.eager(ps, opt, hyper, &inputs, forward, before_update);
        }
        if let Some(r) = self.recorded.as_ref().filter(|r| r.shapes == shapes) {
            match r.captured.replaced(ps, opt) {
                None => {
                    self.warm = None;
                    return self.replay(ps, opt, hyper, &inputs, before_update);
                }
                // Recorded again below, on the new buffers (the pool is warm at these shapes).
                Some(what) => {
                    self.events.push(format!("{what} was replaced since the step graph was captured: recapturing it"));
                    self.warm = Some(shapes.clone());
                }
            }
        }
        if self.warm.as_ref() != Some(&shapes) {
            if let Some(r) = &self.recorded {
                self.events.push(format!("inputs {shapes:?} ran eagerly (the step graph is for {:?})", r.shapes));
            }
            self.warm = Some(shapes);
            return self.eager(ps, opt, hyper, &inputs, forward, before_update);
        }
        // Second step at these shapes: record it.
        let before = self.recorded.take().map(|r| {
            self.backend.graph_release(r.id);
            r.shapes
        });
        match self.record(ps, opt, &inputs, &forward, shapes.clone()) {
            Ok(Some(r)) => {
                let n = self.backend.graph_launches(r.id);
                let with = if r.hyper.is_some() { "with" } else { "without" };
                self.events.push(match before {
                    Some(old) => format!("recaptured the step graph for inputs {shapes:?} ({n} launches {with} the optimizer; it was for {old:?})"),
                    None => format!("captured the step graph for inputs {shapes:?}: {n} launches {with} the optimizer, replayed as one"),
                });
                self.recorded = Some(r);
                self.warm = None;
                self.replay(ps, opt, hyper, &inputs, before_update)
            }
            Ok(None) => {
                self.off = true; // the backend has no graphs
                self.eager(ps, opt, hyper, &inputs, forward, before_update)
            }
            Err(e) => {
                self.events.push(format!("the step could not be captured as a graph ({e}); every step runs eagerly"));
                self.off = true;
                self.eager(ps, opt, hyper, &inputs, forward, before_update)
            }
        }
    }

    fn eager(
        &self,
        ps: &ParamStore<B>,
        opt: &mut dyn Optimizer<B>,
        hyper: Hyper<'_>,
        inputs: &[Tensor<B>],
        forward: impl Fn(&Ctx<B>, &[Tensor<B>]) -> Result<(Var<B>, T)>,
        before_update: impl FnOnce(Checked, &mut Vec<(ParamId, Tensor<B>)>) -> Result<bool>,
    ) -> Result<Stepped<T>> {
        train_step(ps, opt, hyper, self.check_grads, |cx| forward(cx, inputs), before_update)
    }

    /// Records forward, backward and (where it can be) the optimizer on `inputs` (kept as the
    /// graph's input buffers). None where the backend has no graphs.
    fn record(
        &self,
        ps: &ParamStore<B>,
        opt: &mut dyn Optimizer<B>,
        inputs: &[Tensor<B>],
        forward: &impl Fn(&Ctx<B>, &[Tensor<B>]) -> Result<(Var<B>, T)>,
        shapes: Vec<Vec<usize>>,
    ) -> Result<Option<Recorded<B, T>>> {
        // The optimizer's step values ([learning rate, weight decay] per gradient: a row per
        // parameter is enough) are written before each replay, so their buffer is taken before
        // the capture: a block taken during it may be scratch an earlier kernel of the same graph
        // writes, after the upload, on every replay.
        let table = Tensor::empty(&self.backend, &[ps.len().max(1), 2], DType::F32)?;
        if !self.backend.graph_begin()? {
            return Ok(None);
        }
        let recorded = forward_backward(ps, self.check_grads, |cx| forward(cx, inputs)).and_then(|(readout, grads, out)| {
            let in_graph = opt.step_on_device(ps, &grads, &table, &readout)?;
            Ok((readout, grads, out, in_graph.then_some(table)))
        });
        match recorded {
            Ok((readout, grads, out, hyper)) => {
                let id = self.backend.graph_end(true)?;
                let captured = Captured::of(ps, opt);
                Ok(Some(Recorded { id, shapes, inputs: inputs.to_vec(), readout, grads, out, hyper, captured }))
            }
            Err(e) => {
                let _ = self.backend.graph_end(false);
                Err(e)
            }
        }
    }

    fn replay(
        &mut self,
        ps: &ParamStore<B>,
        opt: &mut dyn Optimizer<B>,
        hyper: Hyper<'_>,
        inputs: &[Tensor<B>],
        before_update: impl FnOnce(Checked, &mut Vec<(ParamId, Tensor<B>)>) -> Result<bool>,
    ) -> Result<Stepped<T>> {
        let r = self.recorded.as_ref().expect("replay without a graph");
        for (dst, src) in r.inputs.iter().zip(inputs) {
            if dst.storage() as *const _ != src.storage() as *const _ {
                self.backend.copy(src.storage(), dst.storage())?;
            }
        }
        if let Some(table) = &r.hyper {
            let mut values: Vec<f32> = r.grads.iter().flat_map(|(id, _)| <[f32; 2]>::from(hyper(*id))).collect();
            values.resize(table.numel(), 0.0);
            let src = Tensor::from_f32(&self.backend, &values, table.shape(), DType::F32)?;
            self.backend.copy(src.storage(), table.storage())?;
        }
        self.backend.graph_replay(r.id)?;
        let mut pg = r.grads.clone();
        update(ps, opt, hyper, &r.readout, &mut pg, before_update, r.out.clone(), r.hyper.is_some())
    }
}

impl<B: Backend, T> Drop for StepGraph<B, T> {
    fn drop(&mut self) {
        if let Some(r) = self.recorded.take() {
            self.backend.graph_release(r.id);
        }
    }
}

/// `before_update` for callers that take every step as it comes.
pub fn always<B: Backend>(_: Checked, _: &mut Vec<(ParamId, Tensor<B>)>) -> Result<bool> {
    Ok(true)
}
