//! A method defined entirely in this file, outside the crate: its settings (parsed from its own
//! `[toy]` table, unknown keys refused, values checked), its loss, and one `ssl::register` call.
//! It trains through the normal entry point (`train::train`) on the CPU, its table is checked
//! when the recipe is read, recorded in the checkpoint, and read back on resume: a new method
//! needs no line in the crate outside src/ssl/, and this one needs none in the crate at all.

mod common;

use common::tiny_run::{loss_and_z_std, run, tiny};
use common::tmp_dir;

use serde::{Deserialize, Serialize};
use ssl_engine::autograd::Var;
use ssl_engine::backend::Backend;
use ssl_engine::backend::cpu::CpuBackend;
use ssl_engine::config::Config;
use ssl_engine::models::{Backbone, BackboneConfig};
use ssl_engine::nn::{Ctx, Linear, ParamStore};
use ssl_engine::ssl::{Method, MethodConfig, StepOutput};
use ssl_engine::{Error, Result, Tensor};

/// The toy method's settings: its `[toy]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct ToyConfig {
    /// Width of the linear projector.
    proj_dim: usize,
    /// Let the gradient through the target view too (off: SimSiam's stop-gradient).
    no_stop_grad: bool,
}

impl Default for ToyConfig {
    fn default() -> Self {
        ToyConfig { proj_dim: 16, no_stop_grad: false }
    }
}

impl MethodConfig for ToyConfig {
    const NAME: &'static str = "toy";
    const ABOUT: &'static str = "Toy: backbone + linear projector, negative cosine between the views (a test's method)";
    fn validate(&self) -> Result<()> {
        if self.proj_dim == 0 {
            return Err(Error::Config("toy: proj_dim must be positive".into()));
        }
        Ok(())
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, _seed: u64) -> Result<Box<dyn Method<B>>> {
        let backbone = backbone.build(ps, "backbone")?;
        let projector = Linear::new(ps, "projector", backbone.feature_dim(), self.proj_dim, true, None, None)?;
        Ok(Box::new(Toy { cfg: self.clone(), backbone, projector }))
    }
}

/// Backbone + linear projector; the loss is the negative cosine between the two views'
/// projections, the second a constant unless `no_stop_grad`.
struct Toy {
    cfg: ToyConfig,
    backbone: Backbone,
    projector: Linear,
}

impl<B: Backend> Method<B> for Toy {
    fn name(&self) -> &'static str {
        "toy"
    }
    fn backbone(&self) -> &Backbone {
        &self.backbone
    }
    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        let zs = views.iter().map(|x| self.projector.forward(cx, &self.backbone.forward(cx, x)?)).collect::<Result<Vec<_>>>()?;
        let target = if self.cfg.no_stop_grad { zs[1].clone() } else { zs[1].detach() };
        let loss = cx.tape.cosine_loss(&zs[0], &target, 1e-8)?;
        Ok(StepOutput { loss, embedding: Some(zs[0].value.clone()) })
    }
}

fn register() {
    ssl_engine::ssl::register::<CpuBackend, ToyConfig>();
}

fn load_err(sets: &[&str]) -> String {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::load(None, &sets).unwrap_err().to_string()
}

#[test]
fn a_method_defined_in_a_test_registers_and_trains_through_the_normal_loop() {
    register();
    assert!(ssl_engine::ssl::method_names().contains("toy"));
    assert!(ssl_engine::ssl::methods_help().lines().any(|l| l.contains("toy") && l.contains("a test's method")));
    let dir = tmp_dir("toy");
    let cfg = tiny(&dir, &["method=\"toy\"", "toy.proj_dim=8", "epochs=4", "monitor.knn_every=0"]);
    let s = run(&cfg, None).unwrap();
    let (first, last, _) = loss_and_z_std(&dir);
    eprintln!("toy: {} steps, epoch loss {first:.4} -> {last:.4}", s.steps_done);
    assert_eq!(s.steps_done, 12);
    assert!(last < first, "the toy method's loss should fall: {first} -> {last}");
    // The checkpoint records the method's table with its defaults filled in, as for a built-in.
    let wf = ssl_engine::checkpoint::WeightFile::read(&dir.join("last.safetensors")).unwrap();
    assert_eq!(wf.tensors.get("projector.weight").map(|t| t.0.clone()), Some(vec![8, 4 * 8]), "the projector follows toy.proj_dim");
    let stored = Config::from_stored(&wf.state().unwrap().config).unwrap();
    let toy = &stored.method_tables["toy"];
    assert_eq!(toy.get("proj_dim").and_then(|v| v.as_integer()), Some(8), "{toy:?}");
    assert_eq!(toy.get("no_stop_grad").and_then(|v| v.as_bool()), Some(false), "{toy:?}");
    assert_eq!(stored.method_tables, cfg.method_tables);
}

/// The toy table is checked when the recipe is read, before any data: unknown keys, wrong types
/// and bad values are errors naming the key.
#[test]
fn the_methods_own_table_is_checked_when_the_recipe_is_read() {
    register();
    let e = load_err(&["method=\"toy\"", "toy.proj_dims=8"]);
    assert!(e.contains("proj_dims") && e.contains("toy") && e.contains("proj_dim"), "{e}");
    let e = load_err(&["method=\"toy\"", "toy.proj_dim=\"wide\""]);
    assert!(e.contains("toy.proj_dim"), "{e}");
    let e = load_err(&["method=\"toy\"", "toy.proj_dim=0"]);
    assert!(e.contains("toy: proj_dim must be positive"), "{e}");
    // A `[toy]` table is checked even when another method trains (as every built-in's is).
    let e = load_err(&["method=\"simsiam\"", "toy.proj_dim=0"]);
    assert!(e.contains("toy: proj_dim must be positive"), "{e}");
    // An unknown method is still refused, naming the registered ones.
    let e = load_err(&["method=\"nope\""]);
    assert!(e.contains("nope") && e.contains("toy") && e.contains("dino"), "{e}");
}

/// A resume reads the stored config, the toy table with it, and still refuses a run that cuts
/// the data into other steps; the same settings resume.
#[test]
fn a_resumed_toy_run_is_checked_against_its_stored_config() {
    register();
    let dir = tmp_dir("toy-resume");
    let sets = ["method=\"toy\"", "toy.proj_dim=8", "epochs=2", "monitor.knn_every=0"];
    run(&tiny(&dir, &[&sets[..], &["max_steps=2"]].concat()), None).unwrap();
    let last = dir.join("last.safetensors");
    let e = run(&tiny(&dir, &[&sets[..], &["batch_size=8"]].concat()), Some(&last)).unwrap_err().to_string();
    assert!(e.contains("batch_size = 16") && e.contains("asks for 8"), "{e}");
    let s = run(&tiny(&dir, &sets), Some(&last)).unwrap();
    assert_eq!(s.steps_done, 6, "the resumed run finishes the two epochs");
}
