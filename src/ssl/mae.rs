//! MAE (He et al., CVPR 2022), as facebookresearch/mae's `models_mae.py`: the image is cut into
//! patches, a seeded random `mask_ratio` of them per image is dropped, the ViT encoder sees the
//! rest (with the class token), a light decoder gets the encoded tokens back in place with a
//! learned mask token at each dropped patch (and its own fixed sin-cos positions), and predicts
//! every patch's pixels. The loss is the per-patch MSE on the dropped patches only, against the
//! patch normalised by its own mean and unbiased variance (`norm_pix_loss`).
//!
//! - Masking (`random_masking`): per image, noise ~ U(0, 1) over the patches; the patches of
//!   lowest noise are kept (`ids_shuffle = argsort(noise)`, the first `int(L (1 - r))`), and
//!   `ids_restore = argsort(ids_shuffle)` puts the decoder's tokens back in place. The noise is
//!   drawn from the run's seed and the step, so a resumed run draws the same masks.
//! - `patchify` orders a patch's values as (p, q, c), MAE's order.
//! - Both position tables are MAE's fixed 2-D sin-cos ones (`models::vit::sincos_pos_embed`).
//! - The encoder is the run's ViT (vit-tiny, vit-small): its weights are the backbone that
//!   `eval`, `export` and `study` use; the decoder is `decoder.*`.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

use super::{Method, MethodConfig, StepInfo, StepOutput};
use crate::autograd::Var;
use crate::backend::Backend;
use crate::data::{AugmentConfig, ViewSpec};
use crate::error::{Error, Result};
use crate::models::vit::{Block, LN_EPS, PosEmbed, sincos_pos_embed};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, Init, Kind, LayerNorm, Layout, Linear, ParamId, ParamStore};
use crate::rng::Rng;
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MaeConfig {
    /// Fraction of each image's patches dropped before the encoder (the paper's 0.75).
    pub mask_ratio: f64,
    /// Width of the decoder's tokens.
    pub decoder_dim: usize,
    /// Transformer blocks in the decoder.
    pub decoder_depth: usize,
    /// Attention heads of each decoder block.
    pub decoder_heads: usize,
    /// Regress each patch normalised by its own mean and variance (the paper's better target).
    pub norm_pix_loss: bool,
}

impl Default for MaeConfig {
    /// solo-learn's CIFAR recipe: mask 0.75, decoder 512 wide, 8 blocks, 16 heads, normalised pixels.
    fn default() -> Self {
        MaeConfig { mask_ratio: 0.75, decoder_dim: 512, decoder_depth: 8, decoder_heads: 16, norm_pix_loss: true }
    }
}

impl MethodConfig for MaeConfig {
    const NAME: &'static str = "mae";
    const ABOUT: &'static str = "MAE: a ViT encoder on the visible patches, a light decoder regresses the masked patches' pixels";
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("mae: {m}")));
        if !(self.mask_ratio > 0.0 && self.mask_ratio < 1.0) {
            return bad(format!("mask_ratio must lie in (0, 1) (got {})", self.mask_ratio));
        }
        if self.decoder_depth == 0 || self.decoder_heads == 0 || !self.decoder_dim.is_multiple_of(4 * self.decoder_heads.max(1)) {
            return bad(format!(
                "decoder_depth and decoder_heads must be positive and decoder_dim a multiple of 4 x decoder_heads (got {}, {}, {})",
                self.decoder_depth, self.decoder_heads, self.decoder_dim
            ));
        }
        Ok(())
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, seed: u64) -> Result<Box<dyn Method<B>>> {
        Ok(Box::new(Mae::new(ps, backbone, self, seed)?))
    }
}

/// MAE's masking of one batch: which patches each image keeps, and the inverse permutation.
#[derive(Clone, Debug, PartialEq)]
pub struct Masking {
    /// [n, keep]: per image, the kept patches (lowest noise first).
    pub ids_keep: Vec<usize>,
    /// [n, patches]: per image, where each patch sits in (kept ++ dropped) order.
    pub ids_restore: Vec<usize>,
    /// [n, patches]: 1 for a dropped patch, 0 for a kept one.
    pub mask: Vec<f32>,
    pub keep: usize,
}

impl Masking {
    /// The masks of images `start..start + n` only.
    pub fn rows(&self, start: usize, n: usize) -> Masking {
        let images = self.ids_keep.len() / self.keep.max(1);
        let patches = self.mask.len() / images.max(1);
        let (keep, p) = (self.keep, patches);
        Masking {
            ids_keep: self.ids_keep[start * keep..(start + n) * keep].to_vec(),
            ids_restore: self.ids_restore[start * p..(start + n) * p].to_vec(),
            mask: self.mask[start * p..(start + n) * p].to_vec(),
            keep,
        }
    }
}

/// MAE's `random_masking` given the noise ([n, patches] row-major): argsort (stable, as
/// torch.argsort of distinct floats), keep the first `int(L (1 - ratio))`.
pub fn random_masking(noise: &[f64], n: usize, patches: usize, ratio: f64) -> Masking {
    let keep = (patches as f64 * (1.0 - ratio)) as usize;
    let (mut ids_keep, mut ids_restore, mut mask) = (Vec::new(), vec![0; n * patches], vec![0f32; n * patches]);
    for i in 0..n {
        let row = &noise[i * patches..(i + 1) * patches];
        let mut shuffle: Vec<usize> = (0..patches).collect();
        shuffle.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
        for (rank, &p) in shuffle.iter().enumerate() {
            ids_restore[i * patches + p] = rank;
            mask[i * patches + p] = if rank < keep { 0.0 } else { 1.0 };
        }
        ids_keep.extend_from_slice(&shuffle[..keep]);
    }
    Masking { ids_keep, ids_restore, mask, keep }
}

/// NHWC images [n, h, w, 3] -> patches [n, (h/p)(w/p), p*p*3], each in (p, q, c) order.
pub fn patchify<B: Backend>(cx: &Ctx<B>, x: &Var<B>, p: usize) -> Result<Var<B>> {
    let t = cx.tape;
    let (n, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let x = t.reshape(x, &[n, h / p, p, w / p, p, 3])?;
    let x = t.permute(&x, &[0, 1, 3, 2, 4, 5])?;
    t.reshape(&x, &[n, (h / p) * (w / p), p * p * 3])
}

/// What one MAE pass computes: the masks, the encoder's tokens [n, 1 + keep, dim] (class token
/// first), the prediction of every patch [n, patches, p*p*3], and the loss.
pub struct Pass<B: Backend> {
    pub masking: Masking,
    pub latent: Var<B>,
    pub pred: Var<B>,
    pub loss: Var<B>,
}

pub struct Mae {
    cfg: MaeConfig,
    backbone: Backbone,
    decoder_embed: Linear,
    mask_token: ParamId,
    decoder_pos: ParamId,
    decoder_blocks: Vec<Block>,
    decoder_norm: LayerNorm,
    decoder_pred: Linear,
    seed: u64,
    /// The step being taken (`begin_step`): with the seed, it picks the step's masks.
    step: Cell<usize>,
}

impl Mae {
    /// Registers `backbone.*` (a ViT with fixed sin-cos positions) and `decoder.*` in `ps`.
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &MaeConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let BackboneConfig::Vit(v) = backbone else {
            return Err(Error::Config("mae: needs a ViT backbone (model = \"vit-tiny\" or \"vit-small\"): it masks patch tokens".into()));
        };
        let vit = crate::models::VitConfig { pos_embed: PosEmbed::SinCos, ..v.clone() };
        let backbone = BackboneConfig::Vit(vit.clone()).build(ps, "backbone")?;
        let (d, patches) = (cfg.decoder_dim, (vit.image_size / vit.patch).pow(2));
        let xavier = Some(Init::TruncNormal(0.02));
        let decoder_embed = Linear::new(ps, "decoder.embed", vit.dim, d, true, xavier, Some(Init::Zeros))?;
        let mask_token = ps.add("decoder.mask_token", &[1, 1, d], Init::Normal(0.02), Kind::Param, Layout::Same)?;
        let decoder_pos = ps.add("decoder.pos_embed", &[1, patches + 1, d], Init::Zeros, Kind::Buffer, Layout::Same)?;
        ps.set_from_torch(decoder_pos, &sincos_pos_embed(d, vit.image_size / vit.patch)?, &[1, patches + 1, d])?;
        let decoder_blocks = (0..cfg.decoder_depth)
            .map(|i| Block::new(ps, &format!("decoder.blocks.{i}"), d, cfg.decoder_heads, 4, xavier))
            .collect::<Result<Vec<_>>>()?;
        let decoder_norm = LayerNorm::new(ps, "decoder.norm", d, LN_EPS)?;
        let decoder_pred = Linear::new(ps, "decoder.pred", d, vit.patch * vit.patch * 3, true, xavier, Some(Init::Zeros))?;
        Ok(Mae { cfg: cfg.clone(), backbone, decoder_embed, mask_token, decoder_pos, decoder_blocks, decoder_norm, decoder_pred, seed, step: Cell::new(0) })
    }

    fn vit(&self) -> &crate::models::Vit {
        match &self.backbone {
            Backbone::Vit(v) => v,
            _ => unreachable!("Mae::new builds a ViT"),
        }
    }

    /// The masks of step `step`: per image, noise from the run's seed, the step and the image.
    pub fn masking(&self, n: usize, step: usize) -> Masking {
        let patches = self.vit().num_patches();
        let mut rng = Rng::new(self.seed).stream("mae masking").derive(&[step as u64]);
        let noise: Vec<f64> = (0..n * patches).map(|_| rng.uniform()).collect();
        random_masking(&noise, n, patches, self.cfg.mask_ratio)
    }

    /// The decoder's prediction of every patch, [n, patches, p*p*3], from the encoder's tokens
    /// [n, 1 + keep, dim] and the masking that chose them.
    pub fn decode<B: Backend>(&self, cx: &Ctx<B>, latent: &Var<B>, m: &Masking) -> Result<Var<B>> {
        let t = cx.tape;
        let b = latent.value.backend();
        let (n, patches, d) = (latent.shape()[0], self.vit().num_patches(), self.cfg.decoder_dim);
        let x = self.decoder_embed.forward(cx, latent)?;
        // Mask tokens at every dropped patch, then every token back in its place.
        let zeros = Var::constant(Tensor::zeros(b, &[n, patches - m.keep, d], x.value.dtype())?);
        let masked = t.add(&zeros, &t.reshape(&cx.param(self.mask_token), &[d])?)?;
        let tokens = t.concat(&[&t.slice(&x, 1, 1, m.keep)?, &masked], 1)?;
        let restore = super::index_tensor(b, &m.ids_restore, &[n, patches], x.value.dtype())?;
        let tokens = t.gather_rows(&tokens, &restore)?;
        let h = t.concat(&[&t.slice(&x, 1, 0, 1)?, &tokens], 1)?;
        let mut h = t.add(&h, &t.reshape(&cx.param(self.decoder_pos), &[patches + 1, d])?)?;
        for blk in &self.decoder_blocks {
            h = blk.forward(cx, &h)?;
        }
        let h = self.decoder_norm.forward(cx, &h)?;
        let pred = self.decoder_pred.forward(cx, &h)?;
        t.slice(&pred, 1, 1, patches)
    }

    /// The loss on `images` [n, h, w, 3] with the masks of `step`, without gradients: how well
    /// the network reconstructs images it was not trained on.
    pub fn heldout_loss<B: Backend>(&self, ps: &ParamStore<B>, images: &Tensor<B>, step: usize) -> Result<f64> {
        let tape = crate::autograd::Tape::inference();
        let cx = Ctx::new(&tape, ps, false);
        Ok(self.pass(&cx, &Var::constant(images.clone()), step)?.loss.value.scalar()? as f64)
    }

    /// One MAE pass over images `x` [n, h, w, 3] with the masks of `step`: what training
    /// (`forward`), the held-out loss and the pictures all compute.
    fn pass<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>, step: usize) -> Result<Pass<B>> {
        let n = x.shape()[0];
        // Drawn for the global batch: a rank's images get the masks one rank would give them.
        let (rank, ranks) = super::rank_of(cx.params);
        self.pass_with(cx, x, self.masking(n * ranks, step).rows(rank * n, n))
    }

    /// One MAE pass over images `x` [n, h, w, 3] with the given masks (`random_masking` of
    /// noise from elsewhere: the five steps against PyTorch give models_mae.py's noise).
    pub fn pass_with<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>, m: Masking) -> Result<Pass<B>> {
        let n = x.shape()[0];
        let keep = super::index_tensor(x.value.backend(), &m.ids_keep, &[n, m.keep], x.value.dtype())?;
        let latent = self.vit().encode(cx, x, Some(&keep))?;
        let pred = self.decode(cx, &latent, &m)?;
        let loss = self.loss(cx, x, &pred, &m)?;
        Ok(Pass { masking: m, latent, pred, loss })
    }

    /// MAE's `forward_loss`: the MSE per patch between `pred` and the (normalised) patches of
    /// `images`, averaged over the dropped patches.
    pub fn loss<B: Backend>(&self, cx: &Ctx<B>, images: &Var<B>, pred: &Var<B>, m: &Masking) -> Result<Var<B>> {
        mae_loss(cx, images, pred, &m.mask, self.vit().patch(), self.cfg.norm_pix_loss)
    }
}

/// The patch target MAE regresses and its loss, as `forward_loss`: with `norm_pix`, each target
/// patch becomes (x - mean) / sqrt(var + 1e-6) with the unbiased variance; loss = sum over
/// patches of mask x mean over the patch of (pred - target)^2, divided by the mask's sum.
pub fn mae_loss<B: Backend>(cx: &Ctx<B>, images: &Var<B>, pred: &Var<B>, mask: &[f32], p: usize, norm_pix: bool) -> Result<Var<B>> {
    let t = cx.tape;
    let b = images.value.backend();
    // The target carries no gradient (MAE regresses the pixels; it does not move them).
    let target = patchify(cx, &images.detach(), p)?;
    let (n, patches, len) = (target.shape()[0], target.shape()[1], target.shape()[2]);
    let target = if norm_pix {
        // A layer norm without affine divides by sqrt(biased var + eps'); with eps' = 1e-6 (L-1)/L
        // and a factor sqrt((L-1)/L) that is exactly (x - mean) / sqrt(unbiased var + 1e-6).
        let frac = (len - 1) as f64 / len as f64;
        let normed = super::losses::layer_norm_plain(t, &target, (1e-6 * frac) as f32)?;
        t.scale(&normed, frac.sqrt() as f32)?.detach()
    } else {
        target.detach()
    };
    let diff = t.sub(pred, &target)?;
    let per_patch = t.mean_axis(&t.mul(&diff, &diff)?, 2)?; // [n, patches]
    let mask_t = Var::constant(Tensor::from_f32(b, mask, &[n, patches], pred.value.dtype())?);
    let masked = t.sum_axis(&t.sum_axis(&t.mul(&per_patch, &mask_t)?, 1)?, 0)?;
    let dropped: f32 = mask.iter().sum();
    t.scale(&masked, 1.0 / dropped.max(1.0))
}

/// One row per image, side by side: the original, the masked input (dropped patches grey), the
/// prediction of every patch, and the prediction with the visible patches pasted back, each
/// tile scaled up to at least 96 pixels. `x` and `pred` are evaluation-normalised: with
/// `norm_pix` the prediction is first put back in each patch's own mean and spread, as MAE's demo.
#[allow(clippy::too_many_arguments)]
fn reconstruction_image(x: &[f32], pred: &[f32], m: &Masking, n: usize, size: usize, p: usize, norm_pix: bool, mean: [f32; 3], std: [f32; 3]) -> image::RgbImage {
    let (g, len) = (size / p, p * p * 3);
    let scale = 96usize.div_ceil(size).max(1);
    let tile = size * scale;
    let mut img = image::RgbImage::from_pixel((4 * tile + 3 * 4) as u32, (n * tile + (n.saturating_sub(1)) * 4) as u32, image::Rgb([255, 255, 255]));
    for i in 0..n {
        let px = |y: usize, xx: usize, c: usize| x[((i * size + y) * size + xx) * 3 + c];
        for patch in 0..g * g {
            let (pr, pc) = (patch / g, patch % g);
            let values: Vec<f32> = (0..len).map(|k| {
                let (py, rest) = (k / (p * 3), k % (p * 3));
                px(pr * p + py, pc * p + rest / 3, rest % 3)
            }).collect();
            let mut guess = pred[(i * g * g + patch) * len..(i * g * g + patch + 1) * len].to_vec();
            if norm_pix {
                let mu = values.iter().sum::<f32>() / len as f32;
                let var = values.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / (len as f32 - 1.0);
                guess.iter_mut().for_each(|v| *v = *v * (var + 1e-6).sqrt() + mu);
            }
            let dropped = m.mask[i * g * g + patch] > 0.5;
            for k in 0..len {
                let (py, rest) = (k / (p * 3), k % (p * 3));
                let (yy, xx, c) = (pr * p + py, pc * p + rest / 3, rest % 3);
                let to_u8 = |v: f32| ((v * std[c] + mean[c]).clamp(0.0, 1.0) * 255.0).round() as u8;
                let cols = [to_u8(values[k]), if dropped { 128 } else { to_u8(values[k]) }, to_u8(guess[k]), if dropped { to_u8(guess[k]) } else { to_u8(values[k]) }];
                for (col, v) in cols.into_iter().enumerate() {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let (ox, oy) = (col * (tile + 4) + xx * scale + dx, i * (tile + 4) + yy * scale + dy);
                            let pixel = img.get_pixel_mut(ox as u32, oy as u32);
                            pixel.0[c] = v;
                        }
                    }
                }
            }
        }
    }
    img
}

impl<B: Backend> Method<B> for Mae {
    fn name(&self) -> &'static str {
        "mae"
    }
    fn backbone(&self) -> &Backbone {
        &self.backbone
    }
    /// One view: MAE's pipeline is RandomResizedCrop and a flip, no colour augmentation.
    fn views(&self, recipe: &AugmentConfig, size: usize) -> Vec<ViewSpec> {
        let augment = AugmentConfig { jitter_p: 0.0, gray_p: 0.0, blur_p: 0.0, solarize_p: 0.0, ..recipe.clone() };
        vec![ViewSpec { augment, size }]
    }
    /// MAE's `add_weight_decay`: no decay for biases and 1-D weights (the norms).
    fn decays(&self, ps: &ParamStore<B>, id: ParamId) -> bool {
        super::decays_unless_bias_or_norm(ps, id)
    }
    /// `reconstruction.png`: per held-out image, the original, the masked input, the
    /// reconstruction and the reconstruction with the visible patches; and the loss on them.
    fn pictures(&self, ps: &ParamStore<B>, images: &Tensor<B>, mean: [f32; 3], std: [f32; 3], out: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
        let tape = crate::autograd::Tape::inference();
        let cx = Ctx::new(&tape, ps, false);
        // A fixed step's masks: the same patches are dropped whenever the picture is drawn.
        let Pass { masking, pred, loss, .. } = self.pass(&cx, &Var::constant(images.clone()), 0)?;
        let (n, size) = (images.shape()[0], images.shape()[1]);
        let img = reconstruction_image(&images.to_f32()?, &pred.value.to_f32()?, &masking, n, size, self.vit().patch(), self.cfg.norm_pix_loss, mean, std);
        let path = out.join("reconstruction.png");
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(|e| Error::File { path: path.display().to_string(), msg: format!("cannot encode PNG: {e}") })?;
        crate::checkpoint::write_atomic(&path, &bytes)?;
        eprintln!("MAE reconstruction loss on {n} held-out images: {:.4} (columns: original, masked, reconstruction, reconstruction + visible)", loss.value.scalar()?);
        Ok(vec![path])
    }
    fn begin_step(&mut self, info: &StepInfo) -> Result<()> {
        self.step.set(info.step);
        Ok(())
    }
    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        super::check_views("mae", views, 1)?;
        let Pass { latent, loss, .. } = self.pass(cx, &views[0], self.step.get())?;
        let n = views[0].shape()[0];
        let cls = cx.tape.reshape(&cx.tape.slice(&latent, 1, 0, 1)?, &[n, self.vit().dim])?;
        Ok(StepOutput { loss, embedding: Some(cls.value) })
    }
}
