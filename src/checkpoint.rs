//! Checkpoints and weight files, in safetensors with PyTorch names and layouts.
//!
//! - A training checkpoint holds every parameter and buffer (`backbone.*`, `projector.*`, ...),
//!   the optimiser's momentum (`optimizer.momentum.<name>`) and the loop state (epoch, step,
//!   config) as JSON metadata. With counter-based randomness that is all a resume needs.
//! - An exported backbone holds only `backbone.*` with the prefix stripped: torchvision / timm
//!   names, NCHW conv weights, `num_batches_tracked` included, so PyTorch's `load_state_dict`
//!   takes it after the same stem change.
//! - Files are written atomically: a temp file in the same folder, fsync, rename, fsync of the
//!   folder. A failed write (disk full) leaves the previous file intact. A checkpoint with a
//!   non-finite value is never written.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::{BackboneConfig, EfficientNetConfig, PitConfig, ResNetConfig, Stem, VitConfig};
use crate::nn::{Kind, ParamId, ParamStore};
use crate::optim::Optimizer;
use crate::tensor::Tensor;

const FORMAT: &str = "ssl-engine-checkpoint";
/// Optimiser state is saved as `optimizer.<kind>.<parameter name>` (SGD and LARS: `momentum`;
/// AdamW: `exp_avg`, `exp_avg_sq` and the one-element `step`).
const OPTIMIZER: &str = "optimizer.";
/// A method's own state (queues, centres) is saved as `method.<name>`.
const METHOD: &str = "method.";

/// The training loop's position, saved with the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The epoch the next step belongs to, and the batch index within it.
    pub epoch: usize,
    pub step_in_epoch: usize,
    pub global_step: usize,
    pub method: String,
    /// The run's full configuration (TOML), so a resume can check it trains the same model.
    pub config: String,
}

fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::File { path: path.display().to_string(), msg: msg.into() }
}

/// Writes `bytes` to `path` atomically (temp file in the same folder, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, format!("cannot create folder: {e}")))?;
    let name = path.file_name().ok_or_else(|| file_err(path, "not a file path"))?.to_string_lossy();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        save_pause_for_tests(path);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(file_err(path, format!("write failed ({e}); any previous file at this path is intact")));
    }
    Ok(())
}

/// Test hook: `SSL_ENGINE_TEST_SAVE_PAUSE_MS` holds every checkpoint write (`.safetensors`)
/// between the durable temp file and its rename, so the kill tests hit that window often.
fn save_pause_for_tests(path: &Path) {
    if path.extension().is_some_and(|e| e == "safetensors")
        && let Some(ms) = std::env::var("SSL_ENGINE_TEST_SAVE_PAUSE_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Deletes the temp files (`.<name>.tmp.<pid>`) that a killed process left in `dir`. Called when
/// a run starts in its folder; a temp file is never a checkpoint (the rename makes it one).
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') && name.contains(".tmp.") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// (name, shape, little-endian bytes, dtype) of every tensor to write.
type Record = (String, Vec<usize>, Vec<u8>, Dtype);

fn serialize(records: &[Record], meta: HashMap<String, String>, path: &Path) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = records
        .iter()
        .map(|(n, s, b, d)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| file_err(path, format!("cannot encode tensor: {e}")))?;
    safetensors::serialize(views, Some(meta)).map_err(|e| file_err(path, format!("cannot encode: {e}")))
}

/// A tensor in PyTorch layout; a non-finite value becomes the error `non_finite(tensor name)`.
fn torch_record<B: Backend>(ps: &ParamStore<B>, id: ParamId, name: String, non_finite: &dyn Fn(String) -> Error) -> Result<Record> {
    let (vals, shape) = ps.to_torch(id)?;
    if vals.iter().any(|v| !v.is_finite()) {
        return Err(non_finite(ps.entry(id).name.clone()));
    }
    Ok((name, shape, f32_bytes(&vals), Dtype::F32))
}

/// Saves weights, buffers, momentum and the loop state. A non-finite value anywhere is
/// `Error::NonFinite` naming the tensor (a finite loss can hide overflowed BN statistics), and
/// nothing is written.
pub fn save_checkpoint<B: Backend>(
    path: &Path,
    ps: &ParamStore<B>,
    opt: &dyn Optimizer<B>,
    method_state: &[(String, Tensor<B>)],
    state: &TrainState,
) -> Result<()> {
    let non_finite = |what: String| Error::NonFinite { what, epoch: state.epoch, step: state.step_in_epoch };
    let mut records = Vec::new();
    for id in ps.ids() {
        records.push(torch_record(ps, id, ps.entry(id).name.clone(), &|t| non_finite(format!("value in {t}")))?);
    }
    for (kind, id, buf) in opt.state() {
        let e = ps.entry(id);
        let v = buf.to_f32()?;
        let (vals, shape) = crate::nn::params_layout::from_internal(&v, buf.shape(), e.layout);
        if vals.iter().any(|v| !v.is_finite()) {
            return Err(non_finite(format!("{kind} of {}", e.name)));
        }
        records.push((format!("{OPTIMIZER}{kind}.{}", e.name), shape, f32_bytes(&vals), Dtype::F32));
    }
    for (kind, id, count) in opt.counters() {
        // One f32, exact to 2^24 (16.7M steps).
        if count >= 1 << 24 {
            return Err(Error::Invalid { op: "checkpoint", msg: format!("{kind} count {count} of {} is past 2^24", ps.entry(id).name) });
        }
        records.push((format!("{OPTIMIZER}{kind}.{}", ps.entry(id).name), vec![1], f32_bytes(&[count as f32]), Dtype::F32));
    }
    for (name, t) in method_state {
        let vals = t.to_f32()?;
        if vals.iter().any(|v| !v.is_finite()) {
            return Err(non_finite(format!("method state {name}")));
        }
        records.push((format!("{METHOD}{name}"), t.shape().to_vec(), f32_bytes(&vals), Dtype::F32));
    }
    let mut meta = HashMap::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("state".into(), serde_json::to_string(state).map_err(|e| Error::Other(e.to_string()))?);
    write_atomic(path, &serialize(&records, meta, path)?)
}

/// A weight file read into memory: tensors as f32 in PyTorch layout.
pub struct WeightFile {
    pub path: PathBuf,
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub meta: HashMap<String, String>,
}

impl WeightFile {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| file_err(path, format!("not a valid safetensors file: {e}")))?;
        let (_, md) = SafeTensors::read_metadata(&bytes).map_err(|e| file_err(path, format!("bad header: {e}")))?;
        let meta = md.metadata().clone().unwrap_or_default();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let d = view.data();
            let vals: Vec<f32> = match view.dtype() {
                Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                Dtype::F64 => d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
                Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                Dtype::I64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
                other => return Err(file_err(path, format!("tensor {name}: unsupported dtype {other:?}"))),
            };
            tensors.insert(name.to_string(), (view.shape().to_vec(), vals));
        }
        Ok(WeightFile { path: path.to_path_buf(), tensors, meta })
    }

    pub fn is_checkpoint(&self) -> bool {
        self.meta.get("format").map(String::as_str) == Some(FORMAT)
    }

    pub fn state(&self) -> Result<TrainState> {
        let s = self.meta.get("state").ok_or_else(|| file_err(&self.path, "not an ssl-engine training checkpoint (no state)"))?;
        serde_json::from_str(s).map_err(|e| file_err(&self.path, format!("bad checkpoint state: {e}")))
    }

    /// Copies `<file_prefix><name>` into every store entry starting with `store_prefix`
    /// (the rest of its name must match). Shapes must agree; missing tensors are an error that
    /// names them. Returns how many tensors were loaded.
    pub fn load_into<B: Backend>(&self, ps: &mut ParamStore<B>, store_prefix: &str, file_prefix: &str) -> Result<usize> {
        let ids: Vec<ParamId> = ps.ids().filter(|id| ps.entry(*id).name.starts_with(store_prefix)).collect();
        let mut loaded = 0;
        for id in ids {
            let name = ps.entry(id).name.clone();
            let key = format!("{file_prefix}{}", &name[store_prefix.len()..]);
            let want = ps.torch_shape(id);
            let Some((shape, vals)) = self.tensors.get(&key) else {
                return Err(file_err(
                    &self.path,
                    format!("tensor {key} is missing; the file holds another architecture (model expects {name} {want:?})"),
                ));
            };
            if *shape != want {
                return Err(file_err(
                    &self.path,
                    format!("tensor {key} has shape {shape:?} but the model expects {want:?}: another architecture"),
                ));
            }
            if let Some(bad) = vals.iter().find(|v| !v.is_finite()) {
                return Err(file_err(&self.path, format!("tensor {key} holds {bad}")));
            }
            ps.set_from_torch(id, vals, shape)?;
            loaded += 1;
        }
        Ok(loaded)
    }

    /// Restores the optimiser state saved by `save_checkpoint` (the kinds `opt` keeps).
    pub fn load_optimizer_state<B: Backend>(&self, ps: &ParamStore<B>, opt: &mut dyn Optimizer<B>) -> Result<()> {
        for kind in opt.state_kinds() {
            for id in ps.ids() {
                let e = ps.entry(id);
                if let Some((shape, vals)) = self.tensors.get(&format!("{OPTIMIZER}{kind}.{}", e.name)) {
                    let (v, s) = crate::nn::params_layout::to_internal(vals, shape, e.layout);
                    if s != e.value.shape() {
                        return Err(file_err(&self.path, format!("{kind} of {} has shape {shape:?}", e.name)));
                    }
                    opt.load_state(kind, id, Tensor::from_f32(ps.backend(), &v, &s, e.value.dtype())?)?;
                }
            }
        }
        for kind in opt.counter_kinds() {
            for id in ps.ids() {
                let name = &ps.entry(id).name;
                if let Some((_, vals)) = self.tensors.get(&format!("{OPTIMIZER}{kind}.{name}")) {
                    match vals.as_slice() {
                        [c] if *c >= 0.0 && c.fract() == 0.0 => opt.load_counter(kind, id, *c as u64)?,
                        _ => return Err(file_err(&self.path, format!("{kind} of {name} is {vals:?}, not one count"))),
                    }
                }
            }
        }
        Ok(())
    }

    /// The method state saved by `save_checkpoint`, by name, on backend `b`.
    pub fn method_state<B: Backend>(&self, b: &B) -> Result<HashMap<String, Tensor<B>>> {
        let mut out = HashMap::new();
        for (key, (shape, vals)) in &self.tensors {
            if let Some(name) = key.strip_prefix(METHOD) {
                out.insert(name.to_string(), Tensor::from_f32(b, vals, shape, crate::tensor::DType::F32)?);
            }
        }
        Ok(out)
    }

    /// The backbone's tensor-name prefix in this file: "backbone." for our checkpoints, "" for
    /// a plain PyTorch state dict.
    pub fn backbone_prefix(&self) -> &'static str {
        if self.tensors.keys().any(|k| k.starts_with("backbone.")) { "backbone." } else { "" }
    }

    /// Reads the backbone architecture from tensor names and shapes.
    pub fn infer_backbone(&self) -> Result<BackboneConfig> {
        let p = self.backbone_prefix();
        let get = |k: &str| self.tensors.get(&format!("{p}{k}")).map(|(s, _)| s.clone());
        if let Some(w) = get("conv1.weight") {
            let stem = if w.len() == 4 && w[2] == 7 { Stem::ImageNet } else { Stem::Cifar };
            let bottleneck = get("layer1.0.conv3.weight").is_some();
            let blocks = |stage: usize| (0..).take_while(|j| get(&format!("layer{stage}.{j}.conv1.weight")).is_some()).count();
            let counts = [blocks(1), blocks(2), blocks(3), blocks(4)];
            let depth = match (counts, bottleneck) {
                ([2, 2, 2, 2], false) => 18,
                ([3, 4, 6, 3], false) => 34,
                ([3, 4, 6, 3], true) => 50,
                _ => return Err(file_err(&self.path, format!("ResNet with blocks {counts:?} is not ResNet-18/34/50"))),
            };
            let num_classes = get("fc.weight").map(|s| s[0]);
            return Ok(BackboneConfig::ResNet(ResNetConfig { depth, stem, width: w[0], zero_init_residual: false, num_classes }));
        }
        if let Some(w) = get("patch_embed.proj.weight") {
            let (dim, patch) = (w[0], w[2]);
            let depth = (0..).take_while(|i| get(&format!("blocks.{i}.norm1.weight")).is_some()).count();
            let class_token = get("cls_token").is_some();
            let tokens = get("pos_embed").map(|s| s[1]).unwrap_or(1);
            let side = ((tokens - usize::from(class_token)) as f64).sqrt().round() as usize;
            let heads = match dim {
                192 => 3,
                384 => 6,
                768 => 12,
                d => (d / 64).max(1),
            };
            let mlp = get("blocks.0.mlp.fc1.weight").map(|s| s[0] / dim).unwrap_or(4);
            let num_classes = get("head.weight").map(|s| s[0]);
            return Ok(BackboneConfig::Vit(VitConfig { image_size: side * patch, patch, dim, depth, heads, mlp_ratio: mlp, num_classes, class_token, ..VitConfig::default() }));
        }
        if let (Some(w), Some(pos)) = (get("patch_embed.conv.weight"), get("pos_embed")) {
            // timm's PiT: the stride is half the patch; heads 2, 4, 8 by stage.
            let (patch, grid) = (w[2], pos[2]);
            let stride = (patch / 2).max(1);
            let heads = [2, 4, 8];
            let dims: Vec<usize> = (0..3).map(|s| if s == 0 { w[0] } else { get(&format!("transformers.{s}.pool.fc.weight")).map_or(0, |f| f[0]) }).collect();
            let depth = |s: usize| (0..).take_while(|i| get(&format!("transformers.{s}.blocks.{i}.norm1.weight")).is_some()).count();
            let base_dims = [dims[0] / heads[0], dims[1] / heads[1], dims[2] / heads[2]];
            let num_classes = get("head.weight").map(|s| s[0]);
            let image_size = (grid - 1) * stride + patch;
            let (depth, mlp_ratio) = ([depth(0), depth(1), depth(2)], get("transformers.0.blocks.0.mlp.fc1.weight").map_or(4, |f| f[0] / dims[0]));
            return Ok(BackboneConfig::Pit(PitConfig { image_size, patch, stride, base_dims, heads, depth, mlp_ratio, num_classes }));
        }
        if get("features.1.0.block.0.0.weight").is_some() {
            let num_classes = get("classifier.1.weight").map(|s| s[0]);
            return Ok(BackboneConfig::EfficientNet(EfficientNetConfig { num_classes, ..EfficientNetConfig::default() }));
        }
        Err(file_err(
            &self.path,
            "no ResNet (conv1.weight), ViT (patch_embed.proj.weight), PiT (patch_embed.conv.weight) or EfficientNet \
             (features.1.0.block.0.0.weight) backbone found",
        ))
    }
}

/// Writes the backbone (`backbone.*`, prefix stripped) with PyTorch names and layouts, and
/// `metadata` (the recipe, `eval::backbone::export`) beside the tensors.
pub fn export_backbone<B: Backend>(ps: &ParamStore<B>, path: &Path, prefix: &str, metadata: Vec<(String, String)>) -> Result<usize> {
    let mut records = Vec::new();
    for id in ps.ids().filter(|id| ps.entry(*id).name.starts_with(prefix)) {
        let e = ps.entry(id);
        let name = e.name[prefix.len()..].to_string();
        records.push(torch_record(ps, id, name.clone(), &|t| file_err(path, format!("refusing to write: tensor {t} is not finite")))?);
        // torchvision's BatchNorm state dict also has num_batches_tracked (unused with momentum).
        if e.kind == Kind::Buffer && name.ends_with(".running_var") {
            let nbt = name.replace(".running_var", ".num_batches_tracked");
            records.push((nbt, vec![], 0i64.to_le_bytes().to_vec(), Dtype::I64));
        }
    }
    if records.is_empty() {
        return Err(file_err(path, format!("no tensors named {prefix}* to export")));
    }
    let n = records.len();
    let mut meta = HashMap::new();
    meta.insert("exported_by".into(), "ssl-engine".into());
    meta.extend(metadata);
    write_atomic(path, &serialize(&records, meta, path)?)?;
    Ok(n)
}
