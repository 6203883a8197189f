//! The one place a test decides it cannot run here. Outside CI a missing driver, library, tool
//! or data set prints "skipped: <reason> [<need>]" and the test passes, as a developer's laptop
//! may lack a GPU or Vulkan. In CI (`CI=true`, which `.ci/run` exports) the same skip is a
//! failure unless `SSL_ENGINE_ALLOW_SKIP` (a comma-separated list of `Need::key`s, set by
//! `.ci/run`) names it: a broken install must not turn a suite into a no-op that passes.
//! With `SSL_ENGINE_REQUIRE_GPU=1` (benches/gpu_run.sh on the GPU machine) a missing CUDA device
//! fails too, whatever the allow list says. docs/testing.md lists what CI allows and why.
#![allow(dead_code)]

use std::fmt::Display;

/// What a test needs and may not find. `key` is the name `SSL_ENGINE_ALLOW_SKIP` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A real CUDA GPU and driver (libcuda): absent on a GPU-less CI machine.
    CudaDevice,
    /// libnvrtc (pip nvidia-cuda-nvrtc): the kernel compile tests, the dry-run device and the
    /// host emulator all need it.
    Nvrtc,
    /// cuobjdump (pip nvidia-cuda-cuobjdump): the static kernel report.
    Cuobjdump,
    /// g++ with C++20: builds the CUDA host emulator.
    Gxx,
    /// A WebGPU adapter (in CI: mesa's llvmpipe through libvulkan1).
    WgpuAdapter,
    /// Fashion-MNIST from the Debian package dataset-fashion-mnist.
    FashionMnist,
    /// ../shared/data/cifar10-jpg, the full export the demo data is cut from: outside the
    /// repository, so only a developer's checkout has it.
    SharedData,
    /// Mounting a tmpfs or a read-only bind (root with CAP_SYS_ADMIN): a container may refuse.
    MountPrivilege,
    /// Python's `tensorboard` package (pip `tensorboard`): reads back the event files a run
    /// writes (`tests/tensorboard.rs`).
    Tensorboard,
}

impl Need {
    pub const ALL: [Need; 9] = [
        Need::CudaDevice,
        Need::Nvrtc,
        Need::Cuobjdump,
        Need::Gxx,
        Need::WgpuAdapter,
        Need::FashionMnist,
        Need::SharedData,
        Need::MountPrivilege,
        Need::Tensorboard,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Need::CudaDevice => "cuda-device",
            Need::Nvrtc => "nvrtc",
            Need::Cuobjdump => "cuobjdump",
            Need::Gxx => "gxx",
            Need::WgpuAdapter => "wgpu-adapter",
            Need::FashionMnist => "fashion-mnist",
            Need::SharedData => "shared-data",
            Need::MountPrivilege => "mount-privilege",
            Need::Tensorboard => "tensorboard",
        }
    }
}

/// The environment the verdict depends on, read once per skip (a value, so tests of the policy
/// need not set process-wide variables).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// `CI` is "true" or "1" (any case).
    pub ci: bool,
    /// `SSL_ENGINE_ALLOW_SKIP`, split on commas.
    pub allowed: Vec<String>,
    /// `SSL_ENGINE_REQUIRE_GPU=1`.
    pub require_gpu: bool,
}

impl Policy {
    pub fn from_env() -> Policy {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Policy::new(&var("CI"), &var("SSL_ENGINE_ALLOW_SKIP"), &var("SSL_ENGINE_REQUIRE_GPU"))
    }

    pub fn new(ci: &str, allow: &str, require_gpu: &str) -> Policy {
        let ci = matches!(ci.trim().to_ascii_lowercase().as_str(), "true" | "1");
        let allowed = allow.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        Policy { ci, allowed, require_gpu: require_gpu.trim() == "1" }
    }

    /// Ok(the line to print) when the test may skip for `need`, Err(the failure message) when
    /// it must fail. An allow-list entry that names no `Need` is an error too: a typo in .ci/run
    /// would otherwise allow nothing and nobody would notice until a skip failed.
    pub fn verdict(&self, need: Need, why: &str) -> Result<String, String> {
        if let Some(bad) = self.allowed.iter().find(|a| !Need::ALL.iter().any(|n| n.key() == a.as_str())) {
            return Err(format!("SSL_ENGINE_ALLOW_SKIP names {bad:?}, which is no skip reason; known: {}", keys()));
        }
        let line = format!("skipped: {why} [{}]", need.key());
        if need == Need::CudaDevice && self.require_gpu {
            return Err(format!("SSL_ENGINE_REQUIRE_GPU=1 but the test would be {line}"));
        }
        if self.ci && !self.allowed.iter().any(|a| a == need.key()) {
            return Err(format!(
                "CI=true and SSL_ENGINE_ALLOW_SKIP ({:?}) does not allow {:?}, but the test would be {line}; install what it needs (.ci/run)",
                self.allowed.join(","),
                need.key()
            ));
        }
        Ok(line)
    }
}

fn keys() -> String {
    Need::ALL.iter().map(|n| n.key()).collect::<Vec<_>>().join(", ")
}

/// Call where a test returns early because `need` is missing: prints the reason (and the test
/// passes) when the policy allows it, panics otherwise.
#[track_caller]
pub fn skip(need: Need, why: impl Display) {
    match Policy::from_env().verdict(need, &why.to_string()) {
        // Straight to stderr, past libtest's capture, so a plain `cargo test` shows every skip
        // (println! would show only if the test failed).
        Ok(line) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{line}");
        }
        Err(e) => panic!("{e}"),
    }
}

/// True when libnvrtc loads; otherwise skips (see `skip`) and returns false.
#[track_caller]
pub fn nvrtc_or_skip() -> bool {
    match ssl_engine::backend::cuda::nvrtc::nvrtc_available() {
        Ok(()) => true,
        Err(e) => {
            skip(Need::Nvrtc, e);
            false
        }
    }
}
