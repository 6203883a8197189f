//! A test suite that cannot pass by skipping: the skip policy (tests/common/skip.rs) fails a
//! skip in CI unless `SSL_ENGINE_ALLOW_SKIP` names its reason, and `.ci/run` stops with a message
//! when its apt or pip step fails, exports CI=true and an allow list that never names what it
//! installs, and prints how long the tests took. The script runs in a scratch copy of the
//! repository with stub apt-get, python3 and cargo, so nothing is installed or built here.

#[path = "common/skip.rs"]
mod skip;

use std::path::Path;
use std::process::{Command, Output};

use skip::{Need, Policy};

/// What .ci/run installs: a test that skips for one of these means a broken install.
const INSTALLED: [Need; 6] = [Need::Nvrtc, Need::Cuobjdump, Need::Gxx, Need::WgpuAdapter, Need::FashionMnist, Need::Tensorboard];

#[test]
fn a_skip_passes_outside_ci_and_fails_in_ci_unless_allowed() {
    let laptop = Policy::new("", "", "");
    for need in Need::ALL {
        let line = laptop.verdict(need, "not here").unwrap();
        assert_eq!(line, format!("skipped: not here [{}]", need.key()));
    }
    for ci in ["true", "TRUE", "1"] {
        let p = Policy::new(ci, "cuda-device, shared-data", "");
        assert!(p.verdict(Need::CudaDevice, "no GPU").is_ok());
        assert!(p.verdict(Need::SharedData, "absent").is_ok());
        for need in INSTALLED {
            let e = p.verdict(need, "missing").unwrap_err();
            assert!(e.contains(need.key()) && e.contains("CI=true"), "{e}");
        }
    }
    // CI=false (or unset) is a developer's machine.
    assert!(Policy::new("false", "", "").verdict(Need::Nvrtc, "absent").is_ok());
    // On the GPU machine a missing device fails whatever the allow list says.
    for ci in ["", "true"] {
        let e = Policy::new(ci, "cuda-device", "1").verdict(Need::CudaDevice, "no driver").unwrap_err();
        assert!(e.contains("SSL_ENGINE_REQUIRE_GPU=1"), "{e}");
    }
    // A misspelt reason allows nothing: it is an error, not a silent no-op.
    let e = Policy::new("true", "cuda-devices", "").verdict(Need::CudaDevice, "no GPU").unwrap_err();
    assert!(e.contains("\"cuda-devices\"") && e.contains("cuda-device,"), "{e}");
    let keys: std::collections::BTreeSet<_> = Need::ALL.iter().map(|n| n.key()).collect();
    assert_eq!(keys.len(), Need::ALL.len(), "two reasons share a key");
}

fn write_stub(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// .ci/run in a scratch checkout whose apt-get install exits `apt`, pip `pip` and cargo test
/// `cargo` (the build step always succeeds); returns its output and what cargo saw.
fn ci_run(apt: i32, pip: i32, cargo: i32) -> (Output, String) {
    let root = tempfile::tempdir().unwrap();
    let (ci, stubs, lib) = (root.path().join(".ci"), root.path().join("stubs"), root.path().join("nvidia/cu13/lib"));
    for d in [&ci, &stubs, &lib] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/run"), ci.join("run")).unwrap();
    let log = root.path().join("cargo.log");
    write_stub(&stubs, "sudo", "exec \"$@\"");
    write_stub(&stubs, "apt-get", &format!("[ \"$1\" = install ] && exit {apt}; exit 0"));
    write_stub(
        &stubs,
        "python3",
        &format!("[ \"$1\" = -c ] && echo {lib:?} && exit 0\necho 'ERROR: No matching distribution found' >&2\nexit {pip}"),
    );
    write_stub(
        &stubs,
        "cargo",
        &format!(
            "echo \"cargo $* | CI=$CI ALLOW=$SSL_ENGINE_ALLOW_SKIP LD=$LD_LIBRARY_PATH\" >> {log:?}\ncase \"$*\" in *--no-run*) exit 0;; esac\nexit {cargo}"
        ),
    );
    let out = Command::new("bash")
        .arg(ci.join("run"))
        .env("PATH", format!("{}:/usr/bin:/bin", stubs.display()))
        .env_remove("CI")
        .env_remove("SSL_ENGINE_ALLOW_SKIP")
        .env("XDG_RUNTIME_DIR", root.path().join("xdg"))
        .output()
        .unwrap();
    (out, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn ci_run_stops_with_a_message_when_apt_or_pip_fails() {
    for (apt, pip, what) in [(100, 0, "apt-get install"), (0, 1, "pip install")] {
        let (out, cargo) = ci_run(apt, pip, 0);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} failed but .ci/run exited 0: {err}");
        assert!(err.contains(&format!("error: {what}")) && err.contains("failed"), "{err}");
        assert!(cargo.is_empty(), "the tests ran after a failed {what}: {cargo}");
    }
    let (out, _) = ci_run(0, 1, 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("No matching distribution"), "pip's own error is shown");
}

#[test]
fn ci_run_exports_ci_and_an_allow_list_without_what_it_installs_and_prints_the_test_time() {
    for cargo_rc in [0, 101] {
        let (out, cargo) = ci_run(0, 0, cargo_rc);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(cargo_rc), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let took = stdout.lines().find_map(|l| l.strip_prefix("tests took ")).unwrap_or_else(|| panic!("no test time: {stdout}"));
        assert!(took.strip_suffix(" s").is_some_and(|n| n.parse::<u64>().is_ok()), "{took}");
        let calls: Vec<&str> = cargo.lines().collect();
        assert_eq!(calls.len(), 2, "{cargo}");
        assert!(calls[0].starts_with("cargo test --release --no-run |") && calls[1].starts_with("cargo test --release |"), "{cargo}");
        let env = calls[1].split(" | ").nth(1).unwrap();
        assert!(env.starts_with("CI=true ") && env.contains("nvidia/cu13/lib"), "{env}");
        let allow = env.split("ALLOW=").nth(1).unwrap().split(' ').next().unwrap();
        let policy = Policy::new("true", allow, "");
        assert!(policy.verdict(Need::CudaDevice, "no GPU in CI").is_ok(), "{allow}");
        for need in INSTALLED {
            assert!(policy.verdict(need, "missing").is_err(), ".ci/run installs what {} needs but allows it to skip: {allow}", need.key());
        }
    }
}
