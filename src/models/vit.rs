//! timm's VisionTransformer: conv patch embedding, class token, learned position embedding,
//! pre-norm blocks (x + attn(norm1(x)), x + mlp(norm2(x))), final norm, class-token pooling.
//! Names and init follow timm: `patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.0.attn.qkv`.

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
}

impl Default for VitConfig {
    fn default() -> Self {
        VitConfig { image_size: 32, patch: 4, dim: 192, depth: 12, heads: 3, mlp_ratio: 4, num_classes: None }
    }
}

/// timm's pre-norm transformer block (ViT's and PiT's): x + attn(norm1(x)), then x + mlp(norm2(x)).
pub(super) struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    pub(super) fn new<B: Backend>(ps: &mut ParamStore<B>, b: &str, dim: usize, heads: usize, mlp_ratio: usize, init: Option<Init>) -> Result<Self> {
        Ok(Block {
            norm1: LayerNorm::new(ps, &format!("{b}.norm1"), dim, LN_EPS)?,
            attn: Attention::new(ps, &format!("{b}.attn"), dim, heads, init)?,
            norm2: LayerNorm::new(ps, &format!("{b}.norm2"), dim, LN_EPS)?,
            mlp: Mlp::new(ps, &format!("{b}.mlp"), dim, dim * mlp_ratio, init)?,
        })
    }

    /// x [b, tokens, dim] -> [b, tokens, dim]
    pub(super) fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let t = cx.tape;
        let h = t.add(x, &self.attn.forward(cx, &self.norm1.forward(cx, x)?)?)?;
        t.add(&h, &self.mlp.forward(cx, &self.norm2.forward(cx, &h)?)?)
    }
}

pub struct Vit {
    patch_embed: Conv2d,
    cls_token: ParamId,
    pos_embed: ParamId,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Option<Linear>,
    pub dim: usize,
    tokens: usize,
}

pub(super) const LN_EPS: f32 = 1e-6;

impl Vit {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, prefix: &str, c: &VitConfig) -> Result<Self> {
        if c.patch == 0 || !c.image_size.is_multiple_of(c.patch) {
            return Err(Error::Invalid { op: "vit", msg: format!("image size {} is not a multiple of patch {}", c.image_size, c.patch) });
        }
        let p = |n: &str| if prefix.is_empty() { n.to_string() } else { format!("{prefix}.{n}") };
        let tokens = (c.image_size / c.patch).pow(2) + 1;
        let lin = Some(Init::TruncNormal(0.02));
        let patch_embed = Conv2d::new(ps, &p("patch_embed.proj"), 3, c.dim, c.patch, c.patch, 0, 1, true, None)?;
        let cls_token = ps.add(&p("cls_token"), &[1, 1, c.dim], Init::Normal(1e-6), Kind::Param, Layout::Same)?;
        let pos_embed = ps.add(&p("pos_embed"), &[1, tokens, c.dim], Init::TruncNormal(0.02), Kind::Param, Layout::Same)?;
        let mut blocks = Vec::new();
        for i in 0..c.depth {
            blocks.push(Block::new(ps, &p(&format!("blocks.{i}")), c.dim, c.heads, c.mlp_ratio, lin)?);
        }
        let norm = LayerNorm::new(ps, &p("norm"), c.dim, LN_EPS)?;
        let head = match c.num_classes {
            Some(n) => Some(Linear::new(ps, &p("head"), c.dim, n, true, lin, Some(Init::Zeros))?),
            None => None,
        };
        Ok(Vit { patch_embed, cls_token, pos_embed, blocks, norm, head, dim: c.dim, tokens })
    }

    /// x [n, h, w, 3] -> class-token features [n, dim] (or logits with a head).
    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let t = cx.tape;
        let n = x.shape()[0];
        let d = self.dim;
        let patches = self.patch_embed.forward(cx, x)?; // [n, gh, gw, d]: row-major patches, as timm
        if patches.shape()[1] * patches.shape()[2] + 1 != self.tokens {
            return Err(crate::error::shape_err(
                "vit",
                format!("input gives another token count than the {} the model was built for", self.tokens),
                &[x.shape()],
            ));
        }
        let patches = t.reshape(&patches, &[n, self.tokens - 1, d])?;
        // The class token, repeated over the batch by adding it to zeros.
        let zeros = Var::constant(Tensor::zeros(x.value.backend(), &[n, 1, d], x.value.dtype())?);
        let cls = t.add(&zeros, &t.reshape(&cx.param(self.cls_token), &[1, d])?)?;
        let tokens = t.concat(&[&cls, &patches], 1)?;
        let mut h = t.add(&tokens, &t.reshape(&cx.param(self.pos_embed), &[self.tokens, d])?)?;
        for b in &self.blocks {
            h = b.forward(cx, &h)?;
        }
        let h = self.norm.forward(cx, &h)?;
        let f = t.reshape(&t.slice(&h, 1, 0, 1)?, &[n, d])?;
        match &self.head {
            Some(head) => head.forward(cx, &f),
            None => Ok(f),
        }
    }
}
