//! The method registry. A method is defined by its settings type (`MethodConfig`): the name
//! `method = "..."` takes, a line for `--help`, its own `[<name>]` table (serde, defaults, unknown
//! keys refused, values validated by the method), and how it is built on a backend. The built-in
//! methods are the rows of `builtins`; a method defined outside the crate (another crate, a
//! test) is added with `register`. The config never names a method's type: it hands each
//! method's table to the row of that name.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Method, barlow, byol, dino, ijepa, mae, mocov2plus, mocov3, nnclr, simclr, simsiam, supcon, swav, vicreg};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::BackboneConfig;
use crate::nn::ParamStore;

/// A method's settings, and through them the method: what the registry needs to list it,
/// check its table when the recipe is read, and build it.
pub trait MethodConfig: Serialize + DeserializeOwned + Default + Debug + schemars::JsonSchema + 'static {
    /// The name `method = "..."` takes, and the name of the settings table.
    const NAME: &'static str;
    /// One line for `--help` and the docs.
    const ABOUT: &'static str;
    /// Checks the values (widths, temperatures, probabilities); errors name the method.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    /// The method, its heads registered in `ps` beside the backbone. `seed` is the run's seed
    /// (MoCo v2+ draws its starting queue from it).
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, seed: u64) -> Result<Box<dyn Method<B>>>;
}

/// The built-in methods, one row each: a new method is a file in src/ssl/ and a row here.
fn builtins(rows: &mut impl Rows) {
    rows.row::<simsiam::SimSiamConfig>();
    rows.row::<simclr::SimClrConfig>();
    rows.row::<supcon::SupConConfig>();
    rows.row::<byol::ByolConfig>();
    rows.row::<swav::SwavConfig>();
    rows.row::<mocov2plus::MocoV2PlusConfig>();
    rows.row::<mocov3::MocoV3Config>();
    rows.row::<dino::DinoConfig>();
    rows.row::<barlow::BarlowConfig>();
    rows.row::<vicreg::VicregConfig>();
    rows.row::<mae::MaeConfig>();
    rows.row::<nnclr::NnclrConfig>();
    rows.row::<ijepa::IjepaConfig>();
}

/// Something done with each row (list it, build it): a row is a type, and the backend a
/// build needs is a type too, so the rows are visited rather than stored.
trait Rows {
    fn row<M: MethodConfig>(&mut self);
}

/// What the registry knows of a method on every backend.
#[derive(Clone, Copy, Debug)]
pub struct MethodInfo {
    pub name: &'static str,
    pub about: &'static str,
    /// Parses and validates the method's own table; gives it back with every default filled in
    /// (what a checkpoint records). Errors name the key: `simclr.temperature`.
    pub settings: fn(&toml::Table) -> Result<toml::Table>,
    /// The table's keys with their doc comments (`ssl-engine config`).
    pub schema: fn() -> schemars::Schema,
}

impl MethodInfo {
    pub fn of<M: MethodConfig>() -> Self {
        MethodInfo { name: M::NAME, about: M::ABOUT, settings: resolve::<M>, schema: || schemars::schema_for!(M) }
    }
}

/// Parses `M`'s own table: unknown keys and wrong types are errors naming `<method>.<key>`.
pub fn parse_settings<M: MethodConfig>(table: &toml::Table) -> Result<M> {
    // Deserialised under its name, so that serde's messages carry the whole key path.
    let named = toml::Value::Table(toml::Table::from_iter([(M::NAME.to_string(), toml::Value::Table(table.clone()))]));
    let mut one = BTreeMap::<String, M>::deserialize(named).map_err(|e| Error::Config(e.to_string().trim().replace('\n', " ")))?;
    let settings = one.remove(M::NAME).unwrap_or_default();
    settings.validate()?;
    Ok(settings)
}

/// `MethodInfo::settings` of `M`: parsed, validated, written back as a table with its defaults.
fn resolve<M: MethodConfig>(table: &toml::Table) -> Result<toml::Table> {
    let settings = parse_settings::<M>(table)?;
    // Through TOML text rather than toml::Value, which would widen f32 0.2 to 0.20000000298...
    let text = toml::to_string(&settings).map_err(|e| Error::Config(format!("{}: {e}", M::NAME)))?;
    toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", M::NAME)))
}

/// Builds a method on backend B from its own table.
pub type Builder<B> = fn(&toml::Table, u64, &mut ParamStore<B>, &BackboneConfig) -> Result<Box<dyn Method<B>>>;

fn build_from_table<B: Backend, M: MethodConfig>(
    table: &toml::Table,
    seed: u64,
    ps: &mut ParamStore<B>,
    backbone: &BackboneConfig,
) -> Result<Box<dyn Method<B>>> {
    parse_settings::<M>(table)?.build(ps, backbone, seed)
}

/// Methods registered at run time: their row, and their builder as `Builder<B>` for the
/// backend B they were registered on.
static REGISTERED: Mutex<Vec<(MethodInfo, Box<dyn Any + Send>)>> = Mutex::new(Vec::new());

/// Adds a method defined outside this crate to the registry for backend B: `method = "<NAME>"`
/// then trains it with the unchanged loop, its `[<NAME>]` table checked when the recipe is
/// read. Registering the same name again on B replaces the earlier row.
pub fn register<B: Backend, M: MethodConfig>() {
    let mut reg = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|(info, b)| !(info.name == M::NAME && b.is::<Builder<B>>()));
    reg.push((MethodInfo::of::<M>(), Box::new(build_from_table::<B, M> as Builder<B>)));
}

/// Every method, built-in first, then the registered ones (each name once).
pub fn methods() -> Vec<MethodInfo> {
    struct List(Vec<MethodInfo>);
    impl Rows for List {
        fn row<M: MethodConfig>(&mut self) {
            self.0.push(MethodInfo::of::<M>());
        }
    }
    let mut list = List(Vec::new());
    builtins(&mut list);
    for (info, _) in REGISTERED.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        if !list.0.iter().any(|m| m.name == info.name) {
            list.0.push(*info);
        }
    }
    list.0
}

/// The registry's row for `name`.
pub fn method(name: &str) -> Option<MethodInfo> {
    methods().into_iter().find(|m| m.name == name)
}

/// Whether `name` is a built-in or registered method.
pub fn is_method(name: &str) -> bool {
    method(name).is_some()
}

/// The method names, for messages.
pub fn method_names() -> String {
    methods().iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// `--help`'s list: one line per method, its name and what it is.
pub fn methods_help() -> String {
    methods().iter().map(|m| format!("  {:<11} {}", m.name, m.about)).collect::<Vec<_>>().join("\n")
}

/// What building a method takes besides the parameter store and the backbone: its name, its own
/// table (`Config::method_recipe` gives them; an empty table means every default) and the seed.
#[derive(Clone, Copy, Debug)]
pub struct MethodRecipe<'a> {
    pub name: &'a str,
    pub table: &'a toml::Table,
    pub seed: u64,
}

/// Builds the method `recipe` names from its own table, its heads registered in `ps` beside
/// the backbone.
pub fn build<B: Backend>(recipe: &MethodRecipe, ps: &mut ParamStore<B>, backbone: &BackboneConfig) -> Result<Box<dyn Method<B>>> {
    struct Build<'a, 'p, B: Backend> {
        recipe: &'a MethodRecipe<'a>,
        ps: &'p mut ParamStore<B>,
        backbone: &'a BackboneConfig,
        built: Option<Result<Box<dyn Method<B>>>>,
    }
    impl<B: Backend> Rows for Build<'_, '_, B> {
        fn row<M: MethodConfig>(&mut self) {
            if self.built.is_none() && M::NAME == self.recipe.name {
                self.built = Some(build_from_table::<B, M>(self.recipe.table, self.recipe.seed, self.ps, self.backbone));
            }
        }
    }
    let mut b = Build { recipe, ps, backbone, built: None };
    builtins(&mut b);
    if let Some(built) = b.built {
        return built;
    }
    let (named, registered) = {
        let reg = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows = reg.iter().rev().filter(|(info, _)| info.name == recipe.name).peekable();
        (rows.peek().is_some(), rows.find_map(|(_, b)| b.downcast_ref::<Builder<B>>().copied()))
    };
    match registered {
        Some(build) => build(recipe.table, recipe.seed, ps, backbone),
        None if named => Err(Error::Config(format!("method: {:?} is registered, but not for the {} backend", recipe.name, std::any::type_name::<B>()))),
        None => Err(Error::Config(format!("method: unknown {:?}; available: {}", recipe.name, method_names()))),
    }
}
