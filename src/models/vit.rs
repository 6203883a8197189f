//! timm's VisionTransformer: conv patch embedding, class token, learned position embedding,
//! pre-norm blocks (x + attn(norm1(x)), x + mlp(norm2(x))), final norm, class-token pooling.
//! Names and init follow timm: `patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.0.attn.qkv`.
//! Without a class token (`class_token = false`, I-JEPA's encoder) the features are the mean of
//! the final-normed patch tokens, as I-JEPA's evaluation pools them (timm's `global_pool="avg"`).
//!
//! Token level (what masked image modelling needs): `embed` gives the patch tokens with their
//! position embedding, `encode` runs the class token and any subset of the patch tokens (per
//! image, by index: `Tape::gather_rows`) through the blocks and the final norm, and
//! `encode_layers` also returns every block's output. The position embedding is timm's learned
//! table or MAE's fixed 2-D sin-cos table (`PosEmbed::SinCos`, a buffer, not trained); both are
//! saved as `pos_embed`, so either loads into timm.

use crate::autograd::Var;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::nn::{Attention, Conv2d, Ctx, Init, Kind, LayerNorm, Layout, Linear, Mlp, ParamId, ParamStore};
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    pub num_classes: Option<usize>,
    pub pos_embed: PosEmbed,
    /// A class token in front of the patches (timm, MAE); without one (I-JEPA) the position
    /// table has a row per patch only and `forward` averages the patch tokens.
    pub class_token: bool,
}

/// How a ViT encodes where a patch is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PosEmbed {
    /// timm's: a learned table, truncated-normal at the start.
    #[default]
    Learned,
    /// MAE's: the fixed 2-D sin-cos table of `sincos_pos_embed`, held as a buffer.
    SinCos,
}

impl Default for VitConfig {
    fn default() -> Self {
        VitConfig { image_size: 32, patch: 4, dim: 192, depth: 12, heads: 3, mlp_ratio: 4, num_classes: None, pos_embed: PosEmbed::Learned, class_token: true }
    }
}

/// MAE's `get_2d_sincos_pos_embed(dim, grid, cls_token=True)` as [grid^2 + 1, dim], row-major:
/// row 0 (the class token) is zeros; for patch token r * grid + c, the first dim / 2 entries
/// encode the column c and the last dim / 2 the row r (MAE's meshgrid puts w first), each as
/// [sin(p w_k) for k < dim/4, cos(p w_k) for k < dim/4] with w_k = 10000^(-k / (dim / 4)).
/// Computed in f64 as NumPy does, then rounded to f32.
pub fn sincos_pos_embed(dim: usize, grid: usize) -> Result<Vec<f32>> {
    if dim == 0 || !dim.is_multiple_of(4) {
        return Err(Error::Invalid { op: "vit", msg: format!("sin-cos position embeddings need a width divisible by 4 (got {dim})") });
    }
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter).map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64)).collect();
    let mut out = vec![0f32; (grid * grid + 1) * dim];
    for r in 0..grid {
        for c in 0..grid {
            let row = &mut out[(1 + r * grid + c) * dim..(2 + r * grid + c) * dim];
            for (half, pos) in [c as f64, r as f64].into_iter().enumerate() {
                for (k, w) in omega.iter().enumerate() {
                    row[half * 2 * quarter + k] = (pos * w).sin() as f32;
                    row[half * 2 * quarter + quarter + k] = (pos * w).cos() as f32;
                }
            }
        }
    }
    Ok(out)
}

/// timm's pre-norm transformer block (ViT's and PiT's, and MAE's decoder's): x + attn(norm1(x)),
/// then x + mlp(norm2(x)).
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, b: &str, dim: usize, heads: usize, mlp_ratio: usize, init: Option<Init>) -> Result<Self> {
        Ok(Block {
            norm1: LayerNorm::new(ps, &format!("{b}.norm1"), dim, LN_EPS)?,
            attn: Attention::new(ps, &format!("{b}.attn"), dim, heads, init)?,
            norm2: LayerNorm::new(ps, &format!("{b}.norm2"), dim, LN_EPS)?,
            mlp: Mlp::new(ps, &format!("{b}.mlp"), dim, dim * mlp_ratio, init)?,
        })
    }

    /// x [b, tokens, dim] -> [b, tokens, dim]
    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let t = cx.tape;
        let h = t.add(x, &self.attn.forward(cx, &self.norm1.forward(cx, x)?)?)?;
        t.add(&h, &self.mlp.forward(cx, &self.norm2.forward(cx, &h)?)?)
    }
}

pub struct Vit {
    patch_embed: Conv2d,
    cls_token: Option<ParamId>,
    pos_embed: ParamId,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Option<Linear>,
    pub dim: usize,
    /// Tokens per image: the patches, and the class token when there is one.
    tokens: usize,
    patch: usize,
}

pub const LN_EPS: f32 = 1e-6;

/// What `Vit::encode_layers` gives: each block's output and the normed last one, every one
/// [n, 1 + tokens kept, dim] with the class token first ([n, tokens kept, dim] without one).
pub struct Encoded<B: Backend> {
    pub blocks: Vec<Var<B>>,
    pub out: Var<B>,
}

impl Vit {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, prefix: &str, c: &VitConfig) -> Result<Self> {
        if c.patch == 0 || !c.image_size.is_multiple_of(c.patch) {
            return Err(Error::Invalid { op: "vit", msg: format!("image size {} is not a multiple of patch {}", c.image_size, c.patch) });
        }
        let p = |n: &str| if prefix.is_empty() { n.to_string() } else { format!("{prefix}.{n}") };
        let grid = c.image_size / c.patch;
        let tokens = grid * grid + usize::from(c.class_token);
        let lin = Some(Init::TruncNormal(0.02));
        let patch_embed = Conv2d::new(ps, &p("patch_embed.proj"), 3, c.dim, c.patch, c.patch, 0, 1, true, None)?;
        // MAE starts its class token at N(0, 0.02^2); timm at N(0, 1e-6^2).
        let cls_std = if c.pos_embed == PosEmbed::SinCos { 0.02 } else { 1e-6 };
        let cls_token = if c.class_token { Some(ps.add(&p("cls_token"), &[1, 1, c.dim], Init::Normal(cls_std), Kind::Param, Layout::Same)?) } else { None };
        let pos_embed = match c.pos_embed {
            PosEmbed::Learned => ps.add(&p("pos_embed"), &[1, tokens, c.dim], Init::TruncNormal(0.02), Kind::Param, Layout::Same)?,
            PosEmbed::SinCos => {
                let id = ps.add(&p("pos_embed"), &[1, tokens, c.dim], Init::Zeros, Kind::Buffer, Layout::Same)?;
                // The table's first row is the class token's (zeros): dropped without one.
                let table = sincos_pos_embed(c.dim, grid)?;
                ps.set_from_torch(id, &table[(1 - usize::from(c.class_token)) * c.dim..], &[1, tokens, c.dim])?;
                id
            }
        };
        let mut blocks = Vec::new();
        for i in 0..c.depth {
            blocks.push(Block::new(ps, &p(&format!("blocks.{i}")), c.dim, c.heads, c.mlp_ratio, lin)?);
        }
        let norm = LayerNorm::new(ps, &p("norm"), c.dim, LN_EPS)?;
        let head = match c.num_classes {
            Some(n) => Some(Linear::new(ps, &p("head"), c.dim, n, true, lin, Some(Init::Zeros))?),
            None => None,
        };
        Ok(Vit { patch_embed, cls_token, pos_embed, blocks, norm, head, dim: c.dim, tokens, patch: c.patch })
    }

    /// Patch tokens per image (the class token not counted).
    pub fn num_patches(&self) -> usize {
        self.tokens - self.cls()
    }

    /// 1 with a class token, else 0: where the patch tokens start.
    fn cls(&self) -> usize {
        usize::from(self.cls_token.is_some())
    }

    /// The side of a patch in pixels.
    pub fn patch(&self) -> usize {
        self.patch
    }

    /// x [n, h, w, 3] -> the patch tokens with their position embedding, [n, patches, dim]
    /// (row-major patches, as timm).
    pub fn embed<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let t = cx.tape;
        let (n, d) = (x.shape()[0], self.dim);
        let patches = self.patch_embed.forward(cx, x)?; // [n, gh, gw, d]
        if patches.shape()[1] * patches.shape()[2] + self.cls() != self.tokens {
            return Err(crate::error::shape_err(
                "vit",
                format!("input gives another token count than the {} the model was built for", self.tokens),
                &[x.shape()],
            ));
        }
        let patches = t.reshape(&patches, &[n, self.num_patches(), d])?;
        t.add(&patches, &t.slice(&self.pos_table(cx)?, 0, self.cls(), self.num_patches())?)
    }

    /// The position table [tokens, dim]: the class token's row (if any), then the patches'.
    pub fn pos_table<B: Backend>(&self, cx: &Ctx<B>) -> Result<Var<B>> {
        cx.tape.reshape(&cx.param(self.pos_embed), &[self.tokens, self.dim])
    }

    /// The class token (if any) and the patch tokens `keep` names ([n, k] indices into the
    /// patches, per image; all of them when None) through the blocks and the final norm:
    /// [n, 1 + k, dim], or [n, k, dim] without a class token.
    pub fn encode<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>, keep: Option<&Tensor<B>>) -> Result<Var<B>> {
        Ok(self.encode_layers(cx, x, keep)?.out)
    }

    /// `encode`, also returning every block's output (before the final norm).
    pub fn encode_layers<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>, keep: Option<&Tensor<B>>) -> Result<Encoded<B>> {
        let t = cx.tape;
        let (n, d) = (x.shape()[0], self.dim);
        let mut patches = self.embed(cx, x)?;
        if let Some(idx) = keep {
            patches = t.gather_rows(&patches, idx)?;
        }
        let mut h = match self.cls_token {
            Some(cls_token) => {
                // The class token with its position, repeated over the batch by adding it to zeros.
                let zeros = Var::constant(Tensor::zeros(x.value.backend(), &[n, 1, d], x.value.dtype())?);
                let cls_pos = t.add(&t.reshape(&cx.param(cls_token), &[1, d])?, &t.slice(&self.pos_table(cx)?, 0, 0, 1)?)?;
                let cls = t.add(&zeros, &cls_pos)?;
                t.concat(&[&cls, &patches], 1)?
            }
            None => patches,
        };
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            h = b.forward(cx, &h)?;
            blocks.push(h.clone());
        }
        Ok(Encoded { blocks, out: self.norm.forward(cx, &h)? })
    }

    /// x [n, h, w, 3] -> class-token features [n, dim], or the mean patch token without a class
    /// token (or logits with a head).
    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let t = cx.tape;
        let n = x.shape()[0];
        let h = self.encode(cx, x, None)?;
        let f = if self.cls_token.is_some() { t.reshape(&t.slice(&h, 1, 0, 1)?, &[n, self.dim])? } else { t.mean_axis(&h, 1)? };
        match &self.head {
            Some(head) => head.forward(cx, &f),
            None => Ok(f),
        }
    }
}
