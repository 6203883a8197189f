//! timm's PiT, the Pooling-based Vision Transformer (Heo et al., ICCV 2021), names included:
//! `patch_embed.conv` (a strided conv), `pos_embed` [1, C, H, W] added to its output grid,
//! `cls_token`, then `transformers.{s}`: stages of timm's ViT blocks on the class token plus the
//! grid's tokens, where every stage after the first starts with `pool` (a depthwise 3x3 conv of
//! stride 2 that also widens the grid's channels, and `fc` widening the class token); `norm` on
//! the class token at the end, and `head` with a class count.

use super::vit::{Block, LN_EPS};
use crate::autograd::Var;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::nn::{Conv2d, Ctx, Init, Kind, LayerNorm, Layout, Linear, ParamId, ParamStore};

#[derive(Clone, Debug, PartialEq)]
pub struct PitConfig {
    pub image_size: usize,
    pub patch: usize,
    /// The patch embedding's stride (patches overlap when it is below `patch`).
    pub stride: usize,
    /// Per stage: width per head, heads, blocks. Stage s works at base_dims[s] * heads[s].
    pub base_dims: [usize; 3],
    pub heads: [usize; 3],
    pub depth: [usize; 3],
    pub mlp_ratio: usize,
    pub num_classes: Option<usize>,
}

impl PitConfig {
    /// timm's pit_ti (base 32, "tiny") or pit_xs (base 48); at 64 pixels and below the patch
    /// embedding is 4 / stride 2 instead of 16 / stride 8, as ViT's patch goes from 16 to 4.
    pub fn preset(base: usize, image_size: usize) -> Self {
        let (patch, stride) = if image_size <= 64 { (4, 2) } else { (16, 8) };
        PitConfig { image_size, patch, stride, base_dims: [base; 3], heads: [2, 4, 8], depth: [2, 6, 4], mlp_ratio: 4, num_classes: None }
    }

    fn dim(&self, stage: usize) -> usize {
        self.base_dims[stage] * self.heads[stage]
    }
}

struct Pool {
    conv: Conv2d,
    fc: Linear,
}

struct Stage {
    pool: Option<Pool>,
    blocks: Vec<Block>,
}

pub struct Pit {
    patch_embed: Conv2d,
    pos_embed: ParamId,
    cls_token: ParamId,
    stages: Vec<Stage>,
    norm: LayerNorm,
    head: Option<Linear>,
    grid: usize,
    pub dim: usize,
}

impl Pit {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, prefix: &str, c: &PitConfig) -> Result<Self> {
        if c.patch == 0 || c.stride == 0 || c.image_size < c.patch || c.heads.contains(&0) || c.base_dims.contains(&0) {
            return Err(Error::Invalid { op: "pit", msg: format!("no token grid from image {} with patch {} stride {}", c.image_size, c.patch, c.stride) });
        }
        let p = |n: &str| if prefix.is_empty() { n.to_string() } else { format!("{prefix}.{n}") };
        let grid = (c.image_size - c.patch) / c.stride + 1;
        let d0 = c.dim(0);
        let patch_embed = Conv2d::new(ps, &p("patch_embed.conv"), 3, d0, c.patch, c.stride, 0, 1, true, None)?;
        // timm: trunc-normal(0.02) position grid and class token; Linear layers keep PyTorch's default init.
        let pos_embed = ps.add(&p("pos_embed"), &[1, d0, grid, grid], Init::TruncNormal(0.02), Kind::Param, Layout::ConvWeight)?;
        let cls_token = ps.add(&p("cls_token"), &[1, 1, d0], Init::TruncNormal(0.02), Kind::Param, Layout::Same)?;
        let mut stages = Vec::new();
        for s in 0..3 {
            let name = p(&format!("transformers.{s}"));
            let dim = c.dim(s);
            let pool = if s > 0 {
                let prev = c.dim(s - 1);
                let conv = Conv2d::new(ps, &format!("{name}.pool.conv"), prev, dim, 3, 2, 1, prev, true, None)?;
                Some(Pool { conv, fc: Linear::new(ps, &format!("{name}.pool.fc"), prev, dim, true, None, None)? })
            } else {
                None
            };
            let blocks = (0..c.depth[s])
                .map(|i| Block::new(ps, &format!("{name}.blocks.{i}"), dim, c.heads[s], c.mlp_ratio, None))
                .collect::<Result<_>>()?;
            stages.push(Stage { pool, blocks });
        }
        let dim = c.dim(2);
        let norm = LayerNorm::new(ps, &p("norm"), dim, LN_EPS)?;
        let head = match c.num_classes {
            Some(n) => Some(Linear::new(ps, &p("head"), dim, n, true, None, None)?),
            None => None,
        };
        Ok(Pit { patch_embed, pos_embed, cls_token, stages, norm, head, grid, dim })
    }

    /// x [n, h, w, 3] -> class-token features [n, dim] (or logits with a head).
    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let t = cx.tape;
        let n = x.shape()[0];
        let mut grid = self.patch_embed.forward(cx, x)?; // [n, g, g, d0]
        if grid.shape()[1] != self.grid || grid.shape()[2] != self.grid {
            return Err(crate::error::shape_err("pit", format!("input gives another grid than the {0}x{0} the model was built for", self.grid), &[x.shape()]));
        }
        let d0 = grid.shape()[3];
        grid = t.add(&grid, &t.reshape(&cx.param(self.pos_embed), &[self.grid, self.grid, d0])?)?;
        // The class token, one per image: [n, 1, d0] as zeros plus the parameter.
        let zeros = Var::constant(crate::tensor::Tensor::zeros(x.value.backend(), &[n, 1, d0], x.value.dtype())?);
        let mut cls = t.add(&zeros, &t.reshape(&cx.param(self.cls_token), &[1, d0])?)?;
        for st in &self.stages {
            if let Some(pool) = &st.pool {
                grid = pool.conv.forward(cx, &grid)?;
                cls = pool.fc.forward(cx, &cls)?;
            }
            let (h, w, d) = (grid.shape()[1], grid.shape()[2], grid.shape()[3]);
            // timm: cat(cls, flatten(grid)) over tokens, the blocks, then split back.
            let mut tokens = t.concat(&[&cls, &t.reshape(&grid, &[n, h * w, d])?], 1)?;
            for b in &st.blocks {
                tokens = b.forward(cx, &tokens)?;
            }
            cls = t.slice(&tokens, 1, 0, 1)?;
            grid = t.reshape(&t.slice(&tokens, 1, 1, h * w)?, &[n, h, w, d])?;
        }
        let f = t.reshape(&self.norm.forward(cx, &cls)?, &[n, self.dim])?;
        match &self.head {
            Some(head) => head.forward(cx, &f),
            None => Ok(f),
        }
    }
}
