//! I-JEPA (Assran et al., CVPR 2023), as facebookresearch/ijepa trains it: a context encoder
//! sees one large block of each image's patches, a narrow ViT predictor is given the context
//! tokens and, at the positions of four target blocks, a learned mask token; it regresses the
//! target encoder's (layer-normed) tokens at those positions. The target encoder is an EMA of
//! the context encoder, its tau rising linearly from `base_tau` to `final_tau` over the run.
//! The loss is smooth L1 (the code's `F.smooth_l1_loss`; the paper writes an L2 distance:
//! `loss = "l2"` is the mean squared error).
//!
//! - Masks (`multiblock_masks`, ijepa's `src/masks/multiblock.py`): per batch, one target block
//!   size and one (square) context block size are drawn; per image, 4 target blocks are placed
//!   and the context block is placed and clipped to their complement (relaxing the clip after
//!   every 20 failed tries), each kept only if it holds more than `min_keep` patches; every mask
//!   is cut to the batch's shortest (the first indices in row-major order).
//!   The draws come from the run's seed and the step: a resumed run draws the same masks.
//! - Encoders: ViTs without a class token, with fixed 2-D sin-cos positions
//!   (`model_opts.class_token = false`); features are the mean patch token.
//! - Names: the target encoder is `backbone.*`, so `eval`, `export`, `study` and the kNN monitor
//!   use it, as the paper evaluates the target encoder; the context encoder is `context.*`,
//!   the predictor `predictor.*`.
//! - Optimiser: AdamW without weight decay on biases and norms; I-JEPA's schedules are
//!   `optim.warmup_start_ratio`, `optim.final_lr_ratio` and `optim.final_weight_decay`.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

use super::momentum::MomentumPairs;
use super::{Method, MethodConfig, StepInfo, StepOutput};
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::backend::Unary;
use crate::data::{AugmentConfig, ViewSpec};
use crate::error::{Error, Result};
use crate::models::vit::{Block, LN_EPS, PosEmbed, sincos_pos_embed};
use crate::models::{Backbone, BackboneConfig, Vit, VitConfig};
use crate::nn::{Ctx, Init, Kind, LayerNorm, Layout, Linear, ParamId, ParamStore};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// How the predictor's output is compared with the target tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IjepaLoss {
    /// `F.smooth_l1_loss` (beta 1), what the released code trains with.
    SmoothL1,
    /// The mean squared error: the paper's "L2 distance".
    L2,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IjepaConfig {
    /// Width of the predictor's tokens (the paper's narrow predictor: 384).
    pub pred_dim: usize,
    /// Transformer blocks in the predictor.
    pub pred_depth: usize,
    /// Attention heads of each predictor block (0: the encoder's, as ijepa's init_model).
    pub pred_heads: usize,
    /// Area fraction range of the context block, before the targets are cut out of it.
    pub context_scale: (f64, f64),
    /// Area fraction range of each target block.
    pub target_scale: (f64, f64),
    /// Height / width range of the target blocks (the context block is square).
    pub target_aspect_ratio: (f64, f64),
    /// Target blocks per image.
    pub targets: usize,
    /// A block is redrawn unless it keeps more than this many patches.
    pub min_keep: usize,
    /// Let the context block overlap the targets (the paper: no).
    pub allow_overlap: bool,
    /// EMA coefficient of the target encoder at the first step.
    pub base_tau: f64,
    /// EMA coefficient at the last step (linear in between).
    pub final_tau: f64,
    /// "smooth_l1" (the released code) or "l2" (the paper's text).
    pub loss: IjepaLoss,
}

impl Default for IjepaConfig {
    /// ijepa's configs/in1k_vith14_ep300.yaml, with its predictor 6 blocks deep (init_model's
    /// default; the ViT-H recipe uses 12).
    fn default() -> Self {
        IjepaConfig {
            pred_dim: 384,
            pred_depth: 6,
            pred_heads: 0,
            context_scale: (0.85, 1.0),
            target_scale: (0.15, 0.2),
            target_aspect_ratio: (0.75, 1.5),
            targets: 4,
            min_keep: 10,
            allow_overlap: false,
            base_tau: 0.996,
            final_tau: 1.0,
            loss: IjepaLoss::SmoothL1,
        }
    }
}

impl MethodConfig for IjepaConfig {
    const NAME: &'static str = "ijepa";
    const ABOUT: &'static str = "I-JEPA: a narrow ViT predictor regresses an EMA target encoder's tokens of four blocks from one context block";
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("ijepa: {m}")));
        let range = |(lo, hi): (f64, f64)| 0.0 < lo && lo <= hi && hi <= 1.0;
        if !range(self.context_scale) || !range(self.target_scale) {
            return bad(format!("context_scale and target_scale must satisfy 0 < lo <= hi <= 1 (got {:?}, {:?})", self.context_scale, self.target_scale));
        }
        let (lo, hi) = self.target_aspect_ratio;
        if !(0.0 < lo && lo <= hi && hi.is_finite()) {
            return bad(format!("target_aspect_ratio must satisfy 0 < lo <= hi (got {:?})", self.target_aspect_ratio));
        }
        if self.targets == 0 || self.pred_depth == 0 || self.pred_dim == 0 || !self.pred_dim.is_multiple_of(4) {
            return bad(format!(
                "targets and pred_depth must be positive and pred_dim a positive multiple of 4 (sin-cos positions) (got {}, {}, {})",
                self.targets, self.pred_depth, self.pred_dim
            ));
        }
        super::momentum::check_taus("ijepa", self.base_tau, self.final_tau)
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, seed: u64) -> Result<Box<dyn Method<B>>> {
        Ok(Box::new(Ijepa::new(ps, backbone, self, seed)?))
    }
}

/// Where the mask sampler's randomness comes from: `rand` for the per-batch block sizes (ijepa's
/// seeded generator), `randint` for the block places (its global generator), each in [0, 1) and
/// [0, high).
pub trait BlockDraws {
    fn rand(&mut self) -> f64;
    fn randint(&mut self, high: usize) -> usize;
}

/// The run's draws for one step: two streams from the seed and the step.
pub struct SeededDraws {
    sizes: Rng,
    places: Rng,
}

impl SeededDraws {
    pub fn new(seed: u64, step: usize) -> Self {
        let root = Rng::new(seed);
        SeededDraws { sizes: root.stream("ijepa block sizes").derive(&[step as u64]), places: root.stream("ijepa block places").derive(&[step as u64]) }
    }
}

impl BlockDraws for SeededDraws {
    fn rand(&mut self) -> f64 {
        self.sizes.uniform()
    }
    fn randint(&mut self, high: usize) -> usize {
        self.places.below(high as u64) as usize
    }
}

/// One batch's masks: indices into the row-major patches, per image.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiBlock {
    /// [n, context_len]: the context block's patches (targets removed), ascending.
    pub context: Vec<usize>,
    pub context_len: usize,
    /// Per target block, [n, target_len], ascending.
    pub targets: Vec<Vec<usize>>,
    pub target_len: usize,
}

impl MultiBlock {
    /// The masks of images `start..start + n` only.
    pub fn rows(&self, start: usize, n: usize) -> MultiBlock {
        let cut = |v: &[usize], w: usize| v[start * w..(start + n) * w].to_vec();
        MultiBlock {
            context: cut(&self.context, self.context_len),
            context_len: self.context_len,
            targets: self.targets.iter().map(|t| cut(t, self.target_len)).collect(),
            target_len: self.target_len,
        }
    }
}

/// ijepa's `_sample_block_size`: one draw sets both the scale and the aspect ratio; the block
/// is shrunk until it is smaller than the grid on each side.
fn block_size(draws: &mut dyn BlockDraws, grid: usize, scale: (f64, f64), ratio: (f64, f64)) -> (usize, usize) {
    let r = draws.rand();
    let max_keep = ((grid * grid) as f64 * (scale.0 + r * (scale.1 - scale.0))) as usize;
    let aspect = ratio.0 + r * (ratio.1 - ratio.0);
    // Python's round() rounds halves to even.
    let h = ((max_keep as f64 * aspect).sqrt().round_ties_even() as usize).min(grid - 1);
    let w = ((max_keep as f64 / aspect).sqrt().round_ties_even() as usize).min(grid - 1);
    (h, w)
}

/// ijepa's `_sample_block_mask`: a block of `size` at a drawn place, clipped to the first of the
/// `allowed` regions (one per target: its complement) still in force, redrawn unless it keeps
/// more than `min_keep` patches; after every 20 failures one more region is dropped. Returns the
/// kept patches and the block's complement.
fn block_mask(draws: &mut dyn BlockDraws, grid: usize, (h, w): (usize, usize), min_keep: usize, allowed: Option<&[Vec<bool>]>) -> (Vec<usize>, Vec<bool>) {
    let (mut tries, mut timeout) = (0usize, 20);
    loop {
        let top = draws.randint(grid - h);
        let left = draws.randint(grid - w);
        let inside = |p: usize| (top..top + h).contains(&(p / grid)) && (left..left + w).contains(&(p % grid));
        let in_force = allowed.map_or(0, |a| a.len().saturating_sub(tries));
        let kept: Vec<usize> = (0..grid * grid).filter(|&p| inside(p) && allowed.is_none_or(|a| a[..in_force].iter().all(|r| r[p]))).collect();
        if kept.len() > min_keep {
            return (kept, (0..grid * grid).map(|p| !inside(p)).collect());
        }
        timeout -= 1;
        if timeout == 0 {
            tries += 1;
            timeout = 20;
        }
    }
}

/// ijepa's MaskCollator for a batch of `n` images on a `grid` x `grid` patch grid: one context
/// block and `spec.targets` target blocks per image (the block settings of `spec`), cut to the
/// batch's shortest. An error (not an endless loop) when a block of the drawn size can never
/// keep more than `min_keep` patches.
pub fn multiblock_masks(n: usize, grid: usize, spec: &IjepaConfig, draws: &mut dyn BlockDraws) -> Result<MultiBlock> {
    let g = grid;
    if g < 2 {
        return Err(Error::Config(format!("ijepa: the image is {g} patch(es) across; blocks need a grid of at least 2x2")));
    }
    let target_size = block_size(draws, g, spec.target_scale, spec.target_aspect_ratio);
    let context_size = block_size(draws, g, spec.context_scale, (1.0, 1.0));
    for (what, (h, w)) in [("target", target_size), ("context", context_size)] {
        if h * w <= spec.min_keep {
            return Err(Error::Config(format!(
                "ijepa: a {what} block of {h}x{w} patches (drawn on a {g}x{g} grid) can never keep more than min_keep = {} patches: \
                 lower ijepa.min_keep or raise ijepa.{what}_scale",
                spec.min_keep
            )));
        }
    }
    let (mut targets, mut contexts) = (vec![Vec::new(); spec.targets], Vec::with_capacity(n));
    for _ in 0..n {
        let mut complements = Vec::with_capacity(spec.targets);
        for t in targets.iter_mut() {
            let (kept, complement) = block_mask(draws, g, target_size, spec.min_keep, None);
            t.push(kept);
            complements.push(complement);
        }
        let allowed = if spec.allow_overlap { None } else { Some(complements.as_slice()) };
        contexts.push(block_mask(draws, g, context_size, spec.min_keep, allowed).0);
    }
    let target_len = targets.iter().flatten().map(Vec::len).min().unwrap_or(0);
    let context_len = contexts.iter().map(Vec::len).min().unwrap_or(0);
    let cut = |rows: &[Vec<usize>], len: usize| rows.iter().flat_map(|r| r[..len].to_vec()).collect::<Vec<_>>();
    Ok(MultiBlock { context: cut(&contexts, context_len), context_len, targets: targets.iter().map(|t| cut(t, target_len)).collect(), target_len })
}

/// `F.smooth_l1_loss(pred, target)` (beta 1, mean over every element), from ReLUs so that every
/// backend has it: with a = |d| and e = relu(a - 1), it is 0.5 min(a, 1)^2 + e per element,
/// whose gradient is d inside [-1, 1] and sign(d) outside, as PyTorch's.
pub fn smooth_l1<B: Backend>(t: &Tape<B>, pred: &Var<B>, target: &Var<B>) -> Result<Var<B>> {
    let d = t.sub(pred, target)?;
    let a = t.add(&t.unary(Unary::Relu, &d)?, &t.unary(Unary::Relu, &t.scale(&d, -1.0)?)?)?;
    let last = *d.shape().last().unwrap_or(&1);
    let minus_one = Var::constant(Tensor::full(d.value.backend(), &[last], -1.0, d.value.dtype())?);
    let e = t.unary(Unary::Relu, &t.add(&a, &minus_one)?)?;
    let m = t.sub(&a, &e)?;
    let per = t.add(&t.scale(&t.mul(&m, &m)?, 0.5)?, &e)?;
    super::losses::mean_all(t, &per)
}

/// The mean squared error over every element (the paper's L2 loss).
pub fn l2<B: Backend>(t: &Tape<B>, pred: &Var<B>, target: &Var<B>) -> Result<Var<B>> {
    let d = t.sub(pred, target)?;
    super::losses::mean_all(t, &t.mul(&d, &d)?)
}

/// The narrow ViT that predicts the target tokens (ijepa's VisionTransformerPredictor).
struct Predictor {
    embed: Linear,
    mask_token: ParamId,
    pos_embed: ParamId,
    blocks: Vec<Block>,
    norm: LayerNorm,
    proj: Linear,
    dim: usize,
    patches: usize,
}

impl Predictor {
    fn new<B: Backend>(ps: &mut ParamStore<B>, enc: &VitConfig, cfg: &IjepaConfig) -> Result<Self> {
        let (d, grid) = (cfg.pred_dim, enc.image_size / enc.patch);
        let heads = if cfg.pred_heads == 0 { enc.heads } else { cfg.pred_heads };
        if !d.is_multiple_of(heads) {
            return Err(Error::Config(format!("ijepa: pred_dim {d} is not a multiple of the predictor's {heads} heads (ijepa.pred_heads)")));
        }
        let init = Some(Init::TruncNormal(0.02));
        let embed = Linear::new(ps, "predictor.embed", enc.dim, d, true, init, Some(Init::Zeros))?;
        let mask_token = ps.add("predictor.mask_token", &[1, 1, d], Init::TruncNormal(0.02), Kind::Param, Layout::Same)?;
        let pos_embed = ps.add("predictor.pos_embed", &[1, grid * grid, d], Init::Zeros, Kind::Buffer, Layout::Same)?;
        // The sin-cos table without the class token's row.
        ps.set_from_torch(pos_embed, &sincos_pos_embed(d, grid)?[d..], &[1, grid * grid, d])?;
        let blocks = (0..cfg.pred_depth).map(|i| Block::new(ps, &format!("predictor.blocks.{i}"), d, heads, 4, init)).collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::new(ps, "predictor.norm", d, LN_EPS)?;
        let proj = Linear::new(ps, "predictor.proj", d, enc.dim, true, init, Some(Init::Zeros))?;
        Ok(Predictor { embed, mask_token, pos_embed, blocks, norm, proj, dim: d, patches: grid * grid })
    }

    /// The context tokens z [n, kc, enc dim] -> a prediction per target block, stacked
    /// [targets n, kt, enc dim] (target-major, as ijepa's apply_masks concatenates).
    fn forward<B: Backend>(&self, cx: &Ctx<B>, z: &Var<B>, context: &Tensor<B>, targets: &[Tensor<B>]) -> Result<Var<B>> {
        let t = cx.tape;
        let (n, kc, d) = (z.shape()[0], z.shape()[1], self.dim);
        // Each image's copy of the position table, to gather its tokens' positions from.
        let zeros = Var::constant(Tensor::zeros(z.value.backend(), &[n, self.patches, d], z.value.dtype())?);
        let pos = t.add(&zeros, &t.reshape(&cx.param(self.pos_embed), &[self.patches, d])?)?;
        let ctx = t.add(&self.embed.forward(cx, z)?, &t.gather_rows(&pos, context)?)?;
        let mask_token = t.reshape(&cx.param(self.mask_token), &[d])?;
        let queries = targets.iter().map(|idx| t.add(&t.gather_rows(&pos, idx)?, &mask_token)).collect::<Result<Vec<_>>>()?;
        let ctx_rows: Vec<&Var<B>> = std::iter::repeat_n(&ctx, targets.len()).collect();
        let query_rows: Vec<&Var<B>> = queries.iter().collect();
        let mut h = t.concat(&[&t.concat(&ctx_rows, 0)?, &t.concat(&query_rows, 0)?], 1)?;
        for blk in &self.blocks {
            h = blk.forward(cx, &h)?;
        }
        let h = self.norm.forward(cx, &h)?;
        let kt = h.shape()[1] - kc;
        self.proj.forward(cx, &t.slice(&h, 1, kc, kt)?)
    }
}

pub struct Ijepa {
    cfg: IjepaConfig,
    /// The context encoder (`context.*`), trained by the loss.
    context: Backbone,
    /// The target encoder (`backbone.*`): the EMA of the context encoder, what evaluation uses.
    target: Backbone,
    predictor: Predictor,
    pairs: MomentumPairs,
    grid: usize,
    seed: u64,
    /// The step being taken (`begin_step`): with the seed, it picks the step's masks.
    step: Cell<usize>,
}

impl Ijepa {
    /// Registers `context.*`, `predictor.*` and `backbone.*` (a copy of the context encoder,
    /// frozen: it moves only by the EMA).
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &IjepaConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let vit = match backbone {
            BackboneConfig::Vit(v) if !v.class_token => VitConfig { pos_embed: PosEmbed::SinCos, ..v.clone() },
            _ => {
                return Err(Error::Config(
                    "ijepa: needs a ViT without a class token: model = \"vit-tiny\" or \"vit-small\" and model_opts.class_token = false \
                     (I-JEPA's encoder has none; its features are the mean patch token)"
                        .into(),
                ));
            }
        };
        let context = BackboneConfig::Vit(vit.clone()).build(ps, "context")?;
        let predictor = Predictor::new(ps, &vit, cfg)?;
        let target = BackboneConfig::Vit(vit.clone()).build(ps, "backbone")?;
        let pairs = MomentumPairs::copy_and_freeze_renamed(ps, "ijepa", "backbone.", "context.")?;
        Ok(Ijepa { cfg: cfg.clone(), context, target, predictor, pairs, grid: vit.image_size / vit.patch, seed, step: Cell::new(0) })
    }

    fn vit(b: &Backbone) -> &Vit {
        match b {
            Backbone::Vit(v) => v,
            _ => unreachable!("Ijepa::new builds ViTs"),
        }
    }

    /// The masks of step `step` for `n` images.
    pub fn masks(&self, n: usize, step: usize) -> Result<MultiBlock> {
        multiblock_masks(n, self.grid, &self.cfg, &mut SeededDraws::new(self.seed, step))
    }

    /// The loss on images `x` [n, h, w, 3] with the masks `m`, and the context encoder's tokens.
    pub fn loss_with<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>, m: &MultiBlock) -> Result<(Var<B>, Var<B>)> {
        let t = cx.tape;
        let (b, dt, n) = (x.value.backend(), x.value.dtype(), x.shape()[0]);
        let targets: Vec<Tensor<B>> = m.targets.iter().map(|ids| super::index_tensor(b, ids, &[n, m.target_len], dt)).collect::<Result<_>>()?;
        let context = super::index_tensor(b, &m.context, &[n, m.context_len], dt)?;
        // The targets: the target encoder's tokens on the whole image, normalised over the
        // features (F.layer_norm: no affine, eps 1e-5), at each target block; no gradient.
        let h = super::losses::layer_norm_plain(t, &Self::vit(&self.target).encode(cx, x, None)?.detach(), 1e-5)?;
        let parts = targets.iter().map(|idx| t.gather_rows(&h, idx)).collect::<Result<Vec<_>>>()?;
        let target = t.concat(&parts.iter().collect::<Vec<_>>(), 0)?.detach();
        let z = Self::vit(&self.context).encode(cx, x, Some(&context))?;
        let pred = self.predictor.forward(cx, &z, &context, &targets)?;
        let loss = match self.cfg.loss {
            IjepaLoss::SmoothL1 => smooth_l1(t, &pred, &target)?,
            IjepaLoss::L2 => l2(t, &pred, &target)?,
        };
        Ok((loss, z))
    }
}

/// tau at `step` of `total`: ijepa's momentum scheduler, linear from `base` to `last`.
pub fn linear_tau(base: f64, last: f64, step: usize, total: usize) -> f64 {
    base + step as f64 * (last - base) / total.max(1) as f64
}

impl<B: Backend> Method<B> for Ijepa {
    fn name(&self) -> &'static str {
        "ijepa"
    }
    fn backbone(&self) -> &Backbone {
        &self.target
    }
    /// One view: I-JEPA's pipeline is a random resized crop only (no flip, no colour).
    fn views(&self, recipe: &AugmentConfig, size: usize) -> Vec<ViewSpec> {
        let augment = AugmentConfig { flip_p: 0.0, jitter_p: 0.0, gray_p: 0.0, blur_p: 0.0, solarize_p: 0.0, ..recipe.clone() };
        vec![ViewSpec { augment, size }]
    }
    fn decays(&self, ps: &ParamStore<B>, id: ParamId) -> bool {
        super::decays_unless_bias_or_norm(ps, id)
    }
    fn begin_step(&mut self, info: &StepInfo) -> Result<()> {
        self.step.set(info.step);
        Ok(())
    }
    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        super::check_views("ijepa", views, 1)?;
        // Drawn for the global batch (sizes per batch, cut to the batch's shortest): a rank's
        // images get the masks one rank would give them.
        let n = views[0].shape()[0];
        let (rank, ranks) = super::rank_of(cx.params);
        let m = self.masks(n * ranks, self.step.get())?.rows(rank * n, n);
        let (loss, z) = self.loss_with(cx, &views[0], &m)?;
        // The collapse monitor watches the context encoder's mean token.
        Ok(StepOutput { loss, embedding: Some(cx.tape.mean_axis(&z, 1)?.value) })
    }
    /// The target encoder's EMA, tau on ijepa's linear schedule.
    fn after_step(&mut self, ps: &mut ParamStore<B>, info: &StepInfo) -> Result<()> {
        self.pairs.update(ps, linear_tau(self.cfg.base_tau, self.cfg.final_tau, info.step, info.total_steps))
    }
}
