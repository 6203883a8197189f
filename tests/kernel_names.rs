//! One op, one name: every CUDA entry point (from NVRTC's PTX, so macro-made kernels count) and
//! every WGSL `@compute` entry point is `<op>[_<stage>]_<fwd|bwd>_<f32|bf16>` (bf16 for the kernels
//! that compute in bf16, f32 for the rest: WGSL has only f32), where `<op>` is a method
//! of the `Backend` trait with its `_fwd` / `_bwd` tail cut (conv2d_data_bwd -> conv2d), or a
//! kind of the unary and binary maps (relu, add, round_bf16, ...); and every method that computes
//! has its entry points in both languages (a `_bwd` method a `_bwd` kernel, a `_fwd` method a
//! `_fwd` kernel). The family traits and the enums are read from src/backend/ops/*.rs, so a new
//! method without kernels, or a kernel named otherwise, fails here. A second test holds the
//! layout: each backend implements each family in the file of the family's name, and an op's
//! signature is written in at most four files (its trait and one family file per backend).

use std::collections::BTreeSet;

/// The skip policy every test binary shares (a missing NVRTC fails in CI).
#[path = "common/skip.rs"]
mod skip;

use ssl_engine::backend::cuda::nvrtc::{self, FAMILIES, Target};

/// The op families (src/backend/ops/<family>.rs, each one trait) with their trait names.
const FAMILIES_RS: &[(&str, &str, &str)] = &[
    ("core", "CoreOps", include_str!("../src/backend/ops/core.rs")),
    ("matmul", "MatmulOps", include_str!("../src/backend/ops/matmul.rs")),
    ("conv", "ConvOps", include_str!("../src/backend/ops/conv.rs")),
    ("norm", "NormOps", include_str!("../src/backend/ops/norm.rs")),
    ("attention", "AttentionOps", include_str!("../src/backend/ops/attention.rs")),
    ("elementwise", "ElementwiseOps", include_str!("../src/backend/ops/elementwise.rs")),
    ("pool", "PoolOps", include_str!("../src/backend/ops/pool.rs")),
    ("loss", "LossOps", include_str!("../src/backend/ops/loss.rs")),
    ("optim", "OptimOps", include_str!("../src/backend/ops/optim.rs")),
    ("layout", "LayoutOps", include_str!("../src/backend/ops/layout.rs")),
];

/// The backends and their types.
const BACKENDS: &[(&str, &str)] = &[("cpu", "CpuBackend"), ("cuda", "CudaBackend"), ("wgpu", "WgpuBackend")];

/// Methods that move memory or describe the backend: no kernel of their own. (CUDA's `copy` is
/// a driver device-to-device copy; WGSL's is a kernel, which the name rule still checks.)
const HOST_METHODS: &[&str] = &[
    "name",
    "supports",
    "precision",
    "rounds_gemm_to_bf16",
    "conv2d_batchnorm_out_dtype",
    "alloc",
    "upload_f32",
    "upload_f64",
    "download_f32",
    "download_f64",
    "synchronize",
    "copy",
    "graph_begin",
    "graph_end",
    "graph_replay",
    "graph_launches",
    "graph_release",
];

/// Methods whose trait default composes other methods, with the languages that take the
/// default: those need no entry point of their own there (their parts are checked as methods).
const COMPOSED: &[(&str, &[&str])] = &[("conv2d_batchnorm_fwd_train", &["WGSL"]), ("add_many", &["WGSL"])];

/// Stages shared by several methods, each with the methods that launch it: the fixed-order
/// final sum of every loss, and the column-statistics finalisation of both norms' backward (a
/// kernel of its own in WGSL; CUDA's statistics launches add their partials themselves).
const SHARED_STAGES: &[(&str, &[&str])] = &[
    ("loss_reduce", &["cross_entropy_fwd", "cosine_loss_fwd", "nt_xent_fwd", "identity_penalty_fwd", "soft_cross_entropy_fwd"]),
    ("colstats_finalize", &["batchnorm_bwd", "layernorm_bwd"]),
];

/// A Rust item starting at `header` (to its closing brace at column 0) in one of the family files.
fn block_of(header: &str) -> &'static str {
    FAMILIES_RS
        .iter()
        .find_map(|(_, _, src)| {
            let start = src.find(header)?;
            let len = src[start..].find("\n}\n").expect("end of block");
            Some(&src[start..start + len])
        })
        .unwrap_or_else(|| panic!("{header} not found in src/backend/ops/"))
}

/// The `fn` names declared in a block.
fn fns_of(block: &str) -> Vec<String> {
    block.lines().filter_map(|l| l.trim_start().strip_prefix("fn ")).map(|l| l[..l.find(['(', '<']).unwrap()].to_string()).collect()
}

/// Every method of every family trait (together, the `Backend` trait).
fn trait_methods() -> Vec<String> {
    FAMILIES_RS.iter().flat_map(|(_, name, _)| fns_of(block_of(&format!("pub trait {name}")))).collect()
}

/// The variants of an enum as snake_case (RoundBf16 -> round_bf16).
fn enum_kinds(header: &str) -> Vec<String> {
    block_of(header)
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with('#') && l.ends_with(','))
        .map(|l| {
            let mut s = String::new();
            for (i, c) in l.trim_end_matches(',').chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    s.push('_');
                }
                s.push(c.to_ascii_lowercase());
            }
            s
        })
        .collect()
}

/// A method's op: its name up to `_fwd` / `_bwd` (batchnorm_fwd_train -> batchnorm).
fn stem(method: &str) -> &str {
    [method.find("_fwd"), method.find("_bwd")].into_iter().flatten().min().map_or(method, |i| &method[..i])
}

fn wgsl_entries() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut out = Vec::new();
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let src = std::fs::read_to_string(&path).unwrap();
            let mut after_compute = false;
            for line in src.lines() {
                if line.trim_start().starts_with("@compute") {
                    after_compute = true;
                }
                if after_compute && let Some(rest) = line.trim_start().strip_prefix("fn ") {
                    out.push(rest[..rest.find('(').unwrap()].trim().to_string());
                    after_compute = false;
                }
            }
        }
    }
    out
}

/// The CUDA kernels as NVRTC sees them; None after `skip::skip` without libnvrtc.
fn cuda_entries() -> Option<Vec<String>> {
    if let Err(e) = nvrtc::nvrtc_available() {
        skip::skip(skip::Need::Nvrtc, format!("the CUDA half: {e}"));
        return None;
    }
    let target = Target("compute_90a".into());
    let mut out = Vec::new();
    for (file, src) in FAMILIES {
        let c = nvrtc::compile_cached(file, src, &target, nvrtc::cache_dir().as_deref(), false).unwrap();
        out.extend(nvrtc::ptx_entries(c.ptx.as_deref().unwrap_or("")).into_iter().map(|(n, _)| n));
    }
    Some(out)
}

#[test]
fn every_kernel_is_named_after_its_backend_method_in_cuda_and_wgsl() {
    let methods = trait_methods();
    assert!(methods.len() > 40 && methods.contains(&"conv2d_weight_bwd".to_string()), "trait parse: {methods:?}");
    let kinds: Vec<String> = [enum_kinds("pub enum Unary"), enum_kinds("pub enum Binary")].concat();
    assert!(kinds.contains(&"round_bf16".into()) && kinds.contains(&"div".into()), "enum parse: {kinds:?}");
    for (c, _) in COMPOSED {
        assert!(methods.iter().any(|m| m == c), "composed method {c} is not a Backend method");
    }
    for (stage, users) in SHARED_STAGES {
        for u in *users {
            assert!(methods.iter().any(|m| m == u), "shared stage {stage}: {u} is not a Backend method");
        }
    }
    let computing: Vec<&String> = methods.iter().filter(|m| !HOST_METHODS.contains(&m.as_str())).collect();
    let mut ops: BTreeSet<String> = methods.iter().map(|m| stem(m).to_string()).collect();
    ops.extend(kinds.iter().cloned());
    ops.extend(SHARED_STAGES.iter().map(|(s, _)| s.to_string()));

    let mut langs = vec![("WGSL", wgsl_entries())];
    langs.extend(cuda_entries().map(|e| ("CUDA", e)));
    for (lang, entries) in &langs {
        println!("{lang}: {} entry points", entries.len());
        for e in entries {
            let body = e
                .strip_suffix("_f32")
                .or_else(|| if *lang == "CUDA" { e.strip_suffix("_bf16") } else { None })
                .unwrap_or_else(|| panic!("{lang} entry point {e}: not <op>_<fwd|bwd>_<dtype>"));
            assert!(body.ends_with("_fwd") || body.ends_with("_bwd"), "{lang} entry point {e}: not <op>_<fwd|bwd>_<dtype>");
            // The dtype is the suffix alone (the unary kind round_bf16 is an op name, not a dtype).
            let mid = body.strip_prefix("round_bf16_").unwrap_or(body);
            assert!(!mid.contains("_bf16"), "{lang} entry point {e}: a bf16 kernel says so in its suffix, <op>_<fwd|bwd>_bf16");
            assert!(
                ops.iter().any(|op| body.starts_with(&format!("{op}_"))),
                "{lang} entry point {e}: its op is neither a Backend method, a unary / binary kind nor a shared stage"
            );
        }
        for m in &computing {
            if COMPOSED.iter().any(|(c, langs)| c == m && langs.contains(lang)) {
                continue;
            }
            let op = stem(m);
            // The unary and binary maps may be one kernel with an op code, or one per kind.
            let kinds_of = match op {
                "unary" => enum_kinds("pub enum Unary"),
                "binary" => enum_kinds("pub enum Binary"),
                _ => vec![],
            };
            let pass = if m.contains("_bwd") { "_bwd_f32" } else if m.contains("_fwd") { "_fwd_f32" } else { "_f32" };
            // Every op has its FP32 kernel; bf16 variants come beside it.
            let has = |prefix: &str| entries.iter().any(|e| e.starts_with(&format!("{prefix}_")) && e.ends_with(pass));
            let covered = has(op) || (!kinds_of.is_empty() && kinds_of.iter().all(|k| has(k) || (pass == "_bwd_f32" && op == "binary")));
            assert!(covered, "{lang}: Backend::{m} has no entry point {op}_..{pass}");
        }
    }
}

/// burn's layout: `Backend` is the family traits together, each backend implements family F in
/// src/backend/<backend>/F.rs (core in its mod.rs) and nowhere else, and an op's signature is
/// written in at most four files: its trait's and one family file per backend. A forwarding
/// layer (every signature once more in a backend's mod.rs) fails here.
#[test]
fn each_backend_implements_each_family_in_its_family_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backend");
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("src/backend/{rel}: {e}"));
    let all_backend_files: Vec<(String, String)> = ["", "ops", "cpu", "cuda", "wgpu"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap().map(|f| f.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| (p.strip_prefix(&root).unwrap().display().to_string(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    for (family, name, src) in FAMILIES_RS {
        for (backend, ty) in BACKENDS {
            let home = if *family == "core" { format!("{backend}/mod.rs") } else { format!("{backend}/{family}.rs") };
            let imp = format!("impl {name} for {ty} ");
            assert!(read(&home).contains(&imp), "{ty} does not implement {name} in src/backend/{home}");
            for (file, text) in &all_backend_files {
                assert!(file == &home || !text.contains(&imp), "{ty} implements {name} in src/backend/{file}, not in {home}");
            }
        }
        // Core is the buffers' plumbing (alloc, copy, fill...), not an op family.
        let ops = if *family == "core" { vec![] } else { fns_of(block_of(&format!("pub trait {name}"))) };
        for method in ops {
            let decl = [format!("fn {method}("), format!("fn {method}<")];
            let files: Vec<&String> =
                all_backend_files.iter().filter(|(_, text)| decl.iter().any(|d| text.contains(d.as_str()))).map(|(f, _)| f).collect();
            assert!(src.contains(&decl[0]) || src.contains(&decl[1]), "{method} is not declared in its trait's file");
            assert!(files.len() <= 1 + BACKENDS.len(), "{method} is declared in {} files: {files:?}", files.len());
        }
    }
}
