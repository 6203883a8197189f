//! Runs you can trust and compare: the recipe travels with the checkpoint (eval, embed, export
//! and config use it), a run never overwrites a run, a resume that changes the schedule says so,
//! and the smaller promises (Ctrl-C's message, missing paths, the ViT patch check, `--set`
//! errors, plot titles, the software-adapter note). CI-sized: a width-4 ResNet on 40 demo
//! images at 24 px, one or two steps; the real binary where a user would type a command.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::cli::one_line_naming;
use common::{repo, tmp_dir};
use ssl_engine::config::Config;

fn bin(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ssl-engine")).args(args).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn ok(args: &[String]) -> (String, String) {
    let o = bin(args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{args:?} failed:\n{out}\n{err}");
    (out, err)
}

fn args(head: &[&str], sets: &[String]) -> Vec<String> {
    let mut v: Vec<String> = head.iter().map(|s| s.to_string()).collect();
    for s in sets {
        v.push("--set".into());
        v.push(s.clone());
    }
    v
}

/// A tiny SimCLR recipe at 24 px with its own normalisation: settings the eval defaults differ
/// from, so an eval that ignored the checkpoint would measure something else.
fn recipe(out: &Path) -> Vec<String> {
    [
        format!("out={:?}", out.display().to_string()),
        "method=\"simclr\"".into(),
        "model_opts.width=4".into(),
        "simclr.proj_hidden=16".into(),
        "simclr.proj_dim=16".into(),
        format!("data.path={:?}", repo("data/cifar10-demo/train")),
        format!("data.test_path={:?}", repo("data/cifar10-demo/test")),
        "data.image_size=24".into(),
        "data.limit_per_class=4".into(),
        "augment.mean=[0.5, 0.45, 0.4]".into(),
        "augment.std=[0.25, 0.25, 0.25]".into(),
        "monitor.knn_k=7".into(),
        "batch_size=8".into(),
        "epochs=1".into(),
        "threads=2".into(),
    ]
    .to_vec()
}

/// The kNN top-1 (in %) the run logged at its end, from metrics.jsonl.
fn logged_knn(out: &Path) -> f64 {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last = text.lines().rfind(|l| l.contains("\"type\":\"epoch\"")).expect("an epoch row");
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    100.0 * v["knn_top1"].as_f64().expect("kNN at the end")
}

fn top1(stdout: &str) -> f64 {
    let line = stdout.lines().find(|l| l.contains("top-1")).unwrap_or_else(|| panic!("no top-1 in {stdout}"));
    line.split_whitespace().nth(1).unwrap().trim_end_matches('%').parse().unwrap()
}

fn trained(name: &str) -> PathBuf {
    let out = tmp_dir(name).join("run");
    ok(&args(&["train", "--quiet"], &recipe(&out)));
    out
}

#[test]
fn eval_and_embed_use_the_checkpoints_recipe() {
    let out = trained("trust_eval");
    let ck = out.join("last.safetensors").display().to_string();
    let limit = ["data.limit_per_class=4".to_string()];
    // No --set for the image size, normalisation or k: the training run's kNN number comes back.
    let (stdout, stderr) = ok(&args(&["eval", "knn", "--checkpoint", &ck, "--data", &repo("data/cifar10-demo")], &limit));
    assert!((top1(&stdout) - logged_knn(&out)).abs() < 1e-9, "eval {} vs training {}", top1(&stdout), logged_knn(&out));
    assert!(stderr.contains("input 24x24 px") && stderr.contains("mean [0.5000, 0.4500, 0.4000]"), "settings line: {stderr}");
    assert!(stdout.contains("k=7"), "k from the recipe: {stdout}");
    assert!(!stderr.contains("note:"), "nothing differs: {stderr}");
    // A setting that differs from the checkpoint's is named, once.
    let sets = [limit[0].clone(), "data.image_size=32".into()];
    let (_, stderr) = ok(&args(&["eval", "knn", "--checkpoint", &ck, "--data", &repo("data/cifar10-demo")], &sets));
    let notes: Vec<&str> = stderr.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    assert!(notes[0].contains("data.image_size = 32") && notes[0].contains("checkpoint's 24"), "{}", notes[0]);

    // embed: the same recipe, one summary line that says what it did, the file list beside.
    let feats = out.join("feats.npy");
    let (stdout, stderr) = ok(&args(
        &["embed", "--checkpoint", &ck, "--data", &repo("data/cifar10-demo/test"), "--out", &feats.display().to_string()],
        &limit,
    ));
    assert!(stderr.contains("input 24x24 px"), "{stderr}");
    assert!(stdout.starts_with("embedded 40 images of"), "{stdout}");
    assert!(!stderr.contains("test images"), "embed reads one set: {stderr}");
    let files = std::fs::read_to_string(out.join("feats_files.txt")).unwrap();
    assert_eq!(files.lines().count(), 40);

    // export: the recipe travels in the exported file, so its evaluation is the checkpoint's.
    let exported = out.join("backbone.safetensors");
    let (stdout, _) = ok(&["export", "--checkpoint", &ck, "--out", &exported.display().to_string()].map(String::from));
    assert!(stdout.contains("24 px"), "{stdout}");
    let wf = ssl_engine::checkpoint::WeightFile::read(&exported).unwrap();
    let timm: serde_json::Value = serde_json::from_str(&wf.meta["pretrained_cfg"]).unwrap();
    assert_eq!(timm["input_size"], serde_json::json!([3, 24, 24]));
    let (stdout, _) =
        ok(&args(&["eval", "knn", "--checkpoint", &exported.display().to_string(), "--data", &repo("data/cifar10-demo")], &limit));
    assert!((top1(&stdout) - logged_knn(&out)).abs() < 1e-9);

    // `config --checkpoint`: the stored recipe, resolved.
    let (stdout, _) = ok(&["config", "--checkpoint", &ck].map(String::from));
    let stored = Config::from_stored(stdout.split_once('\n').unwrap().1).unwrap();
    assert_eq!(stored.data.image_size, 24);
    assert_eq!(stored.augment.mean, [0.5, 0.45, 0.4]);
}

/// A study recipe that leaves the image size and normalisation out takes them from its first
/// checkpoint's recipe; what it does set wins.
#[test]
fn a_study_takes_what_its_file_leaves_out_from_its_checkpoint() {
    let out = trained("trust_study");
    let file = out.with_file_name("study.toml");
    let ck = out.join("last.safetensors").display().to_string();
    std::fs::write(&file, format!("[study]\nstarts = [{ck:?}, \"random\"]\n[monitor]\nknn_k = 3\n")).unwrap();
    let cfg = ssl_engine::study::recipe(&file, &[]).unwrap();
    assert_eq!((cfg.data.image_size, cfg.augment.mean, cfg.model_opts.width), (24, [0.5, 0.45, 0.4], Some(4)));
    assert_eq!((cfg.method.as_str(), cfg.monitor.knn_k), ("simclr", 3), "the study file's own keys win");
}

#[test]
fn imported_weights_get_torchvisions_defaults() {
    use ssl_engine::eval::backbone::{EvalInputs, IMAGENET_MEAN, eval_recipe};
    let dir = tmp_dir("trust_imported");
    let b = common::cpu(1);
    let mut ps = ssl_engine::nn::ParamStore::new(&b, ssl_engine::tensor::DType::F32, 0);
    let cfg = Config::load(None, &["model=\"resnet18\"".into(), "model_opts.width=8".into()]).unwrap();
    cfg.backbone().unwrap().build(&mut ps, "").unwrap();
    let file = dir.join("torchvision.safetensors");
    ssl_engine::checkpoint::export_backbone(&ps, &file, "", Vec::new()).unwrap();
    let wf = ssl_engine::checkpoint::WeightFile::read(&file).unwrap();
    let a = EvalInputs { checkpoint: "x", model: None, config: None, overrides: &[], data: Path::new("."), test_data: None };
    let (cfg, source) = eval_recipe(Some(&wf), &a).unwrap();
    assert_eq!((cfg.data.image_size, cfg.augment.mean, cfg.model.as_str()), (224, IMAGENET_MEAN, "resnet18"));
    assert!(source.contains("ImageNet mean and std"), "{source}");
}

#[test]
fn a_run_never_overwrites_a_run() {
    let out = trained("trust_overwrite");
    let sets = recipe(&out);
    let before = std::fs::read(out.join("last.safetensors")).unwrap();
    let (code, err) = common::cli::ssl(&args(&["train", "--quiet"], &sets).iter().map(String::as_str).collect::<Vec<_>>());
    one_line_naming(code, &err, &out.display().to_string());
    assert!(err.contains("--resume") && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(out.join("last.safetensors")).unwrap(), before, "the finished run is untouched");

    // --overwrite: the old run moves aside whole; the new metrics.jsonl starts afresh.
    ok(&args(&["train", "--quiet", "--overwrite"], &sets));
    let aside = out.with_file_name("run.replaced-1");
    assert_eq!(std::fs::read(aside.join("last.safetensors")).unwrap(), before);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"init\":true")).count(), 1, "{metrics}");
    // config.toml is the resolved recipe.
    let written = Config::from_stored(&std::fs::read_to_string(out.join("config.toml")).unwrap()).unwrap();
    assert_eq!(written, Config::load(None, &sets).unwrap().tap_tables());

    // A resume that changes the schedule needs --allow-changes, and names what changed.
    let ck = out.join("last.safetensors").display().to_string();
    let more = [sets.clone(), vec!["epochs=2".into()]].concat();
    let (code, err) = common::cli::ssl(&args(&["train", "--quiet", "--resume", &ck], &more).iter().map(String::as_str).collect::<Vec<_>>());
    one_line_naming(code, &err, "epochs: 1 -> 2");
    assert!(err.contains("--allow-changes"), "{err}");
    ok(&args(&["train", "--quiet", "--resume", &ck, "--allow-changes"], &more));
    // The settings that change what a step computes still refuse, --allow-changes or not.
    let bigger = [sets.clone(), vec!["batch_size=16".into()]].concat();
    let (code, err) = common::cli::ssl(
        &args(&["train", "--quiet", "--resume", &ck, "--allow-changes"], &bigger).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    one_line_naming(code, &err, "batch_size");
}

/// `Config::load` gives the method tables as the checkpoint records them: the same value.
trait TapTables {
    fn tap_tables(self) -> Self;
}
impl TapTables for Config {
    fn tap_tables(self) -> Self {
        Config::from_stored(&self.to_toml()).unwrap()
    }
}

#[test]
fn ctrl_c_names_the_bars_epoch_and_the_resume_command() {
    let out = tmp_dir("trust_ctrlc").join("run");
    let mut sets = recipe(&out);
    sets.extend(["epochs=2".into(), "data.limit_per_class=40".into(), "data.test_path=\"\"".into(), "monitor.log_every=1".into()]);
    let a = args(&["train", "--quiet"], &sets);
    let child = Command::new(env!("CARGO_BIN_EXE_ssl-engine")).args(&a).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Wait for the second logged step, then Ctrl-C.
    let metrics = out.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.matches("\"type\":\"step\"").count()) < 2 {
        assert!(t0.elapsed().as_secs() < 120, "no steps logged");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("of epoch 1/2"), "the bar's numbering: {err}");
    let cmd = err.lines().find_map(|l| l.strip_prefix("continue with: ")).unwrap_or_else(|| panic!("no resume command: {err}"));
    assert!(cmd.contains(&format!("--resume {}", out.join("last.safetensors").display())), "{cmd}");
    assert!(cmd.contains("--set") && cmd.contains("epochs=2"), "the run's own flags: {cmd}");
}

#[test]
fn bad_settings_name_their_key() {
    let dir = tmp_dir("trust_keys");
    // A missing data path names its key and the working directory a relative path is read from.
    let mut sets = recipe(&dir.join("run"));
    sets.push("data.path=\"no/such/folder\"".into());
    let o = bin(&args(&["train", "--quiet"], &sets));
    let (_, err) = text(&o);
    one_line_naming(o.status.code().unwrap(), &err, "data.path: no/such/folder does not exist");
    assert!(err.contains(&std::env::current_dir().unwrap().display().to_string()), "{err}");
    // --data of eval too.
    let o = bin(&["eval", "knn", "--checkpoint", "random", "--data", "missing-dir"].map(String::from));
    one_line_naming(o.status.code().unwrap(), &text(&o).1, "--data: missing-dir does not exist");

    // A ViT whose patch does not divide the image is refused before any image is read (the data
    // path does not even exist), naming model_opts.patch.
    let vit = ["model=\"vit-tiny\"".to_string(), "model_opts.patch=5".into(), "data.path=\"no/such/folder\"".into()];
    let o = bin(&args(&["train", "--quiet"], &vit));
    one_line_naming(o.status.code().unwrap(), &text(&o).1, "model_opts.patch");

    // --set errors name the --set; a file's errors name the file.
    let e = Config::load(None, &["epochs=0".into()]).unwrap_err().to_string();
    assert!(e.contains("--set epochs=0") && e.contains("at least 1"), "{e}");
    let e = Config::load(None, &["seed=1".into(), "optim.bogus=1".into()]).unwrap_err().to_string();
    assert!(e.contains("--set optim.bogus=1") && e.contains("bogus"), "{e}");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "epochs = 0\n").unwrap();
    let e = Config::load(Some(&file), &["seed=2".into()]).unwrap_err().to_string();
    assert!(e.contains("bad.toml") && !e.contains("--set"), "{e}");
}

#[test]
fn plot_titles_carry_the_method() {
    let out = trained("trust_plots");
    let titles = ssl_engine::plot::titles(&out);
    assert!(titles[0].starts_with("simclr loss"), "{titles:?}");
    assert!(titles[2].contains("k=7"), "{titles:?}");
    assert!(titles.iter().all(|t| !t.contains("SimSiam")));
}

#[test]
fn config_prints_the_resolved_recipe() {
    let file = repo("configs/demo-cpu.toml");
    let (stdout, _) = ok(&["config", "--config", &file, "--set", "epochs=3"].map(String::from));
    let printed = Config::from_stored(stdout.split_once('\n').unwrap().1).unwrap();
    assert_eq!(printed, Config::load(Some(Path::new(&file)), &["epochs=3".into()]).unwrap().tap_tables());
    // Without a recipe: every key, its default and its help (checked key by key in config::help).
    let (stdout, _) = ok(&["config".to_string()]);
    assert!(stdout.contains("image_size = 32") && stdout.contains("# The model's input"), "{stdout}");
}

#[test]
fn a_software_webgpu_adapter_is_named() {
    if common::wgpu_or_skip().is_none() {
        return;
    }
    // The note comes before the command's own work (here: an error about the missing file).
    let o = bin(&["eval", "knn", "--backend", "wgpu", "--checkpoint", "missing.safetensors", "--data", &repo("data/cifar10-demo")]
        .map(String::from));
    let err = text(&o).1;
    let adapter = err.lines().find(|l| l.starts_with("wgpu adapter:")).unwrap_or_else(|| panic!("{err}")).to_lowercase();
    let software = adapter.contains("llvmpipe") || adapter.contains("swiftshader") || adapter.contains("cpu");
    assert_eq!(err.contains("software device") && err.contains("--backend cpu"), software, "{err}");
}
