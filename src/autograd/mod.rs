//! The autograd tape. Forward ops (`tape_ops.rs`) compute with validated `ops` and record a
//! node holding what their gradient needs; `backward` walks the nodes in reverse, dropping
//! each node (and its saved activations) as soon as its rule has run. Every gradient rule
//! lives in `rules.rs`. A tape built with `Tape::inference()` records nothing, so evaluation
//! cannot build a graph by accident.

mod rules;
mod tape_ops;

use std::cell::RefCell;
use std::collections::HashMap;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::Tensor;

pub use rules::Op;

/// A value in a computation: a tensor, plus an id on the tape when gradients flow to it.
pub struct Var<B: Backend> {
    pub value: Tensor<B>,
    id: Option<usize>,
}

impl<B: Backend> Clone for Var<B> {
    fn clone(&self) -> Self {
        Var { value: self.value.clone(), id: self.id }
    }
}

impl<B: Backend> Var<B> {
    /// A value no gradient flows to (inputs, labels, stop-gradient results).
    pub fn constant(value: Tensor<B>) -> Self {
        Var { value, id: None }
    }
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }
    pub fn requires_grad(&self) -> bool {
        self.id.is_some()
    }
    /// Stop-gradient: the same value, cut from the graph.
    pub fn detach(&self) -> Self {
        Var::constant(self.value.clone())
    }
}

struct Node<B: Backend> {
    op: Op<B>,
    inputs: Vec<Option<usize>>,
    out: usize,
}

struct State<B: Backend> {
    nodes: Vec<Node<B>>,
    next_id: usize,
}

pub struct Tape<B: Backend> {
    state: RefCell<State<B>>,
    recording: bool,
}

/// Gradients of the leaves (inputs and parameters) after `backward`.
pub struct Gradients<B: Backend> {
    by_id: HashMap<usize, Tensor<B>>,
}

impl<B: Backend> Gradients<B> {
    /// The gradient of a leaf, or None when no gradient reached it.
    pub fn get(&self, v: &Var<B>) -> Option<&Tensor<B>> {
        v.id.and_then(|id| self.by_id.get(&id))
    }
    pub fn take(&mut self, v: &Var<B>) -> Option<Tensor<B>> {
        v.id.and_then(|id| self.by_id.remove(&id))
    }
}

impl<B: Backend> Default for Tape<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> Tape<B> {
    /// A tape that records for backward.
    pub fn new() -> Self {
        Tape { state: RefCell::new(State { nodes: Vec::new(), next_id: 0 }), recording: true }
    }
    /// A tape that records nothing: no graph, no saved activations.
    pub fn inference() -> Self {
        Tape { recording: false, ..Self::new() }
    }
    pub fn is_recording(&self) -> bool {
        self.recording
    }
    pub fn len(&self) -> usize {
        self.state.borrow().nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn fresh_id(&self) -> usize {
        let mut s = self.state.borrow_mut();
        s.next_id += 1;
        s.next_id - 1
    }

    /// A leaf that gradients flow to (a parameter or an input under test).
    pub fn leaf(&self, value: Tensor<B>) -> Var<B> {
        if !self.recording {
            return Var::constant(value);
        }
        Var { value, id: Some(self.fresh_id()) }
    }

    /// Records `op` producing `value` from `inputs` when any input needs a gradient.
    pub(crate) fn record(&self, value: Tensor<B>, inputs: &[&Var<B>], op: impl FnOnce() -> Op<B>) -> Var<B> {
        if !self.recording || inputs.iter().all(|v| v.id.is_none()) {
            return Var::constant(value);
        }
        let out = self.fresh_id();
        let node = Node { op: op(), inputs: inputs.iter().map(|v| v.id).collect(), out };
        self.state.borrow_mut().nodes.push(node);
        Var { value, id: Some(out) }
    }

    /// Backpropagates from a one-element `loss`, consuming the tape.
    pub fn backward(&self, loss: &Var<B>) -> Result<Gradients<B>> {
        if loss.value.numel() != 1 {
            return Err(Error::Autograd(format!("backward needs a one-element loss, got shape {:?}", loss.shape())));
        }
        let seed = Tensor::full(loss.value.backend(), loss.shape(), 1.0, loss.value.dtype())?;
        self.backward_with(loss, seed)
    }

    /// Backpropagates `seed` (d something / d out, shaped like `out`), consuming the tape.
    pub fn backward_with(&self, out: &Var<B>, seed: Tensor<B>) -> Result<Gradients<B>> {
        let Some(root) = out.id else {
            return Err(Error::Autograd("backward on a value that does not depend on any leaf".into()));
        };
        if seed.shape() != out.shape() {
            return Err(Error::Autograd(format!("seed gradient {:?} does not match output {:?}", seed.shape(), out.shape())));
        }
        let mut grads: HashMap<usize, Tensor<B>> = HashMap::new();
        grads.insert(root, seed);
        let nodes = std::mem::take(&mut self.state.borrow_mut().nodes);
        // A leaf's gradient (a parameter's) is read by no rule, so the pieces of a leaf used
        // more than once (every weight, on both views) need not be added as they arrive: each
        // leaf holds one piece aside, and all held pieces are added in one `add_many` when a
        // leaf gets another or backward ends. The sums associate as before ((g1 + g2) + g3).
        let produced: std::collections::HashSet<usize> = nodes.iter().map(|n| n.out).collect();
        let mut held: HashMap<usize, Tensor<B>> = HashMap::new();
        for node in nodes.into_iter().rev() {
            let Some(g) = grads.remove(&node.out) else { continue };
            let needs: Vec<bool> = node.inputs.iter().map(Option::is_some).collect();
            // Input 0's gradient so far goes into the rule's sum where the rule can add it.
            let prev0 = match node.inputs.first() {
                Some(Some(id)) if rules::adds_into_input0(&node.op) && produced.contains(id) => grads.remove(id),
                _ => None,
            };
            let input_grads = match prev0 {
                Some(p) => rules::backward_adding(&node.op, &g, &needs, p)?,
                None => rules::backward(&node.op, &g, &needs)?,
            };
            if input_grads.len() != node.inputs.len() {
                return Err(Error::Autograd(format!(
                    "rule for {} returned {} gradients for {} inputs",
                    node.op.name(),
                    input_grads.len(),
                    node.inputs.len()
                )));
            }
            for (id, gi) in node.inputs.iter().zip(input_grads) {
                let (Some(id), Some(gi)) = (id, gi) else { continue };
                if !produced.contains(id) && grads.contains_key(id) {
                    if held.contains_key(id) {
                        add_held(&mut grads, &mut held)?;
                    }
                    held.insert(*id, gi);
                    continue;
                }
                let acc = match grads.remove(id) {
                    Some(prev) => ops::add(&prev, &gi)?,
                    None => gi,
                };
                grads.insert(*id, acc);
            }
            // `node` drops here: its saved activations are freed as backward consumes them.
        }
        add_held(&mut grads, &mut held)?;
        Ok(Gradients { by_id: grads })
    }
}

/// grads[id] += held[id] for every held piece, in one `ops::add_many` (in id order).
fn add_held<B: Backend>(grads: &mut HashMap<usize, Tensor<B>>, held: &mut HashMap<usize, Tensor<B>>) -> Result<()> {
    let mut ids: Vec<usize> = held.keys().copied().collect();
    ids.sort_unstable();
    let pairs: Vec<(&Tensor<B>, &Tensor<B>)> = ids.iter().map(|id| (&grads[id], &held[id])).collect();
    let sums = ops::add_many(&pairs)?;
    for (id, sum) in ids.into_iter().zip(sums) {
        grads.insert(id, sum);
    }
    held.clear();
    Ok(())
}
