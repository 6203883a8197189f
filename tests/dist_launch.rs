//! Data-parallel start-up as real processes (src/dist): workers started the way
//! `--nproc-per-node 2` starts them, or by hand with torchrun's or SLURM's environment, meet over
//! TCP on 127.0.0.1 and agree on the id; a rank that never starts gives the timeout naming it;
//! strangers, garbage, floods and silent connections are refused while the real ranks meet; a
//! failed worker or Ctrl-C on the launcher stops every worker. The hidden `dist-rendezvous`
//! subcommand runs a worker's start-up up to NCCL's communicator init.
//!
//! NCCL: where the PyPI wheel (`nvidia-nccl-cu13`, installed by .ci/run) is found, beside the
//! CUDA wheels' folder on LD_LIBRARY_PATH as .ci/run and /tmp/env2.sh set it, its library must
//! export every function cudarc calls, and rank 0 makes the id through cudarc (no GPU needed).
//! Without it these skip, except under CI=true, where .ci/run installs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ssl_engine::dist::nccl;

const BIN: &str = env!("CARGO_BIN_EXE_ssl-engine");

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The binary with no distributed variables of the test's own environment.
fn ssl(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args);
    for k in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_JOB_ID"] {
        c.env_remove(k);
    }
    c.env_remove(ssl_engine::dist::JOB_ID_ENV).env_remove(ssl_engine::dist::TEST_EXIT_ENV);
    c
}

/// A worker with torchrun's environment, as the launcher starts it.
fn worker(rank: usize, n: usize, port: u16, job: &str, args: &[&str]) -> Command {
    let mut c = ssl(&[&["dist-rendezvous"][..], args].concat());
    c.env("RANK", rank.to_string())
        .env("WORLD_SIZE", n.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env(ssl_engine::dist::JOB_ID_ENV, job);
    c
}

/// A started process whose stdout and stderr are collected as they come; killed when dropped.
struct Proc {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
}

fn collect(src: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(src).lines().map_while(|l| l.ok()) {
            let mut s = into.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    })
}

impl Proc {
    fn start(cmd: &mut Command) -> Proc {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (out, err) = (Arc::new(Mutex::new(String::new())), Arc::new(Mutex::new(String::new())));
        let readers = vec![collect(child.stdout.take().unwrap(), out.clone()), collect(child.stderr.take().unwrap(), err.clone())];
        Proc { child, out, err, readers, started: Instant::now() }
    }

    fn out(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn err(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits until `pred(stdout, stderr)` holds; false after `within`.
    fn until(&self, within: Duration, pred: impl Fn(&str, &str) -> bool) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if pred(&self.out(), &self.err()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        pred(&self.out(), &self.err())
    }

    /// Waits for the exit (panics after `within`): (code, stdout, stderr, seconds since start).
    fn finish(mut self, within: Duration) -> (i32, String, String, f64) {
        let end = Instant::now() + within;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                panic!("still running after {within:?}\nstdout:\n{}\nstderr:\n{}", self.out(), self.err());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let secs = self.started.elapsed().as_secs_f64();
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        (status.code().unwrap_or(-1), self.out(), self.err(), secs)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A worker's line: (rank, pid, source, id hex).
fn parse(line: &str) -> (usize, u32, String, String) {
    let field = |k: &str| {
        line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{k}="))).unwrap_or_else(|| panic!("no {k} in {line:?}")).to_string()
    };
    (field("rank").parse().unwrap(), field("pid").parse().unwrap(), field("source"), field("id"))
}

/// Every `rendezvous: rank=...` line of an output, ranks sorted.
fn lines_of(out: &str) -> Vec<(usize, u32, String, String)> {
    let mut v: Vec<_> = out.lines().filter(|l| l.contains("rendezvous: rank=")).map(parse).collect();
    v.sort();
    v
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn two_workers_meet_through_the_launcher() {
    let port = free_port().to_string();
    let p = Proc::start(&mut ssl(&["dist-rendezvous", "--nproc-per-node", "2", "--master-port", &port, "--rdzv-timeout", "20"]));
    let (code, out, err, secs) = p.finish(Duration::from_secs(20));
    println!("two workers through the launcher: {secs:.2} s");
    assert_eq!(code, 0, "{out}\n{err}");
    let got = lines_of(&out);
    assert_eq!(got.len(), 2, "{out}\n{err}");
    assert_eq!((got[0].0, got[1].0), (0, 1));
    assert_ne!(got[0].1, got[1].1, "two processes");
    assert_eq!(got[0].3, got[1].3, "the same id on both ranks");
    assert_eq!(got[0].3.len(), 256, "128 bytes");
    assert!(out.lines().all(|l| l.starts_with("[rank ")), "worker lines carry their rank:\n{out}");
    assert!(err.contains(&format!("rendezvous at 127.0.0.1:{port}")), "{err}");
}

#[test]
fn workers_under_torchrun_and_srun_environments_meet() {
    // torchrun's variables, set by hand.
    let port = free_port();
    let ranks: Vec<Proc> = (0..3).map(|r| Proc::start(&mut worker(r, 3, port, "job-t", &["--rdzv-timeout", "20"]))).collect();
    let ids: Vec<String> = ranks
        .into_iter()
        .map(|p| {
            let (code, out, err, _) = p.finish(Duration::from_secs(20));
            assert_eq!(code, 0, "{out}\n{err}");
            lines_of(&out).pop().unwrap().3
        })
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");

    // SLURM's: rank 0's host is the first of the compressed node list.
    let port = free_port().to_string();
    let procs: Vec<Proc> = (0..2)
        .map(|r| {
            let mut c = ssl(&["dist-rendezvous", "--rdzv-timeout", "20", "--master-port", &port]);
            c.env("SLURM_PROCID", r.to_string())
                .env("SLURM_NTASKS", "2")
                .env("SLURM_LOCALID", r.to_string())
                .env("SLURM_NODELIST", "127.0.0.1,node[02-04]")
                .env("SLURM_JOB_ID", "4242");
            Proc::start(&mut c)
        })
        .collect();
    let outs: Vec<_> = procs.into_iter().map(|p| p.finish(Duration::from_secs(20))).collect();
    for (code, out, err, _) in &outs {
        assert_eq!(*code, 0, "{out}\n{err}");
    }
    assert_eq!(lines_of(&outs[0].1)[0].3, lines_of(&outs[1].1)[0].3);
    assert!(outs[0].2.contains("job \"4242\""), "SLURM's job id names the job: {}", outs[0].2);
}

#[test]
fn a_rank_that_never_starts_times_out_naming_it() {
    let port = free_port();
    let r0 = Proc::start(&mut worker(0, 3, port, "job", &["--rdzv-timeout", "3"]));
    let r1 = Proc::start(&mut worker(1, 3, port, "job", &["--rdzv-timeout", "3"]));
    let (c0, _, e0, s0) = r0.finish(Duration::from_secs(15));
    let (c1, _, e1, s1) = r1.finish(Duration::from_secs(15));
    println!("missing rank 2: rank 0 gave up after {s0:.2} s, rank 1 after {s1:.2} s");
    let want = format!("rendezvous at 127.0.0.1:{port} timed out after 3 s: rank 2 of 3 did not arrive");
    assert_eq!(c0, 5, "{e0}");
    assert!(e0.lines().any(|l| l == format!("error: {want}")), "rank 0:\n{e0}");
    assert_eq!(c1, 5, "{e1}");
    assert!(e1.contains(&want) && e1.contains("seen by rank 1"), "rank 1:\n{e1}");
    assert!(s0 < 7.0 && s1 < 7.0, "both within the timeout (and a little): {s0:.2} s, {s1:.2} s");
}

#[test]
fn strangers_garbage_floods_and_silence_are_refused_while_the_ranks_meet() {
    let port = free_port();
    let r0 = Proc::start(&mut worker(0, 2, port, "job-a", &["--rdzv-timeout", "20", "--hold-secs", "60"]));
    assert!(r0.until(Duration::from_secs(10), |_, e| e.contains("serving NCCL's id")), "rank 0 never listened:\n{}", r0.err());

    // Rank 1 of another job: refused, and it says so at once.
    let (code, _, err, secs) = Proc::start(&mut worker(1, 2, port, "job-b", &["--rdzv-timeout", "20"])).finish(Duration::from_secs(10));
    assert_eq!(code, 5, "{err}");
    assert!(err.contains(&format!("rendezvous at 127.0.0.1:{port} refused rank 1")) && err.contains("not this job's"), "{err}");
    assert!(secs < 3.0, "a refused rank stops at once, not at its timeout ({secs:.2} s)");

    // Garbage, a 1 MB flood and a connection that says nothing.
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: rank0\r\n\r\n").unwrap();
    let flood = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = s.write_all(&vec![0xab; 1 << 20]); // refused after its first bytes: the write may fail
    });
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();

    // The real rank 1 still meets rank 0.
    let (code, out1, err1, _) = Proc::start(&mut worker(1, 2, port, "job-a", &["--rdzv-timeout", "20"])).finish(Duration::from_secs(20));
    assert_eq!(code, 0, "{out1}\n{err1}");
    assert!(r0.until(Duration::from_secs(5), |o, _| o.contains("rendezvous: rank=0")), "{}", r0.err());
    assert_eq!(lines_of(&r0.out())[0].3, lines_of(&out1)[0].3, "the same id");
    flood.join().unwrap();

    // The silent one is refused after its 5 s; rank 0 is still up (it holds, as training would).
    assert!(r0.until(Duration::from_secs(10), |_, e| e.contains("sent nothing within 5 s")), "{}", r0.err());
    drop((garbage, silent));
    let err0 = r0.err();
    let refused: Vec<&str> = err0.lines().filter(|l| l.starts_with("rendezvous: refused 127.0.0.1:")).collect();
    println!("rank 0 logged:\n{}", refused.join("\n"));
    assert!(refused.iter().any(|l| l.contains("job id \"job-b\" is not this job's")), "{err0}");
    assert_eq!(refused.iter().filter(|l| l.contains("not a rendezvous message")).count(), 2, "garbage and flood: {err0}");
    assert!(refused.iter().any(|l| l.contains("sent nothing within 5 s")), "{err0}");
    let mut r0 = r0;
    assert!(r0.child.try_wait().unwrap().is_none(), "rank 0 must survive every refusal");
}

#[test]
fn a_failed_worker_stops_the_others_and_names_its_rank() {
    let port = free_port().to_string();
    let mut c = ssl(&["dist-rendezvous", "--nproc-per-node", "2", "--master-port", &port, "--hold-secs", "60"]);
    c.env(ssl_engine::dist::TEST_EXIT_ENV, "1");
    let (code, out, err, secs) = Proc::start(&mut c).finish(Duration::from_secs(20));
    println!("rank 1 failed; the launcher ended rank 0 and exited after {secs:.2} s");
    assert_eq!(code, ssl_engine::dist::TEST_EXIT_CODE, "the failed worker's code:\n{out}\n{err}");
    assert!(err.contains("error: launcher: rank 1 of 2 exited with code 7; the other workers were stopped"), "{err}");
    let got = lines_of(&out);
    assert_eq!(got.len(), 2, "{out}");
    assert!(gone(got[0].1), "rank 0 (pid {}) must be stopped", got[0].1);
    assert!(err.contains("[rank 0] error: interrupted"), "rank 0 stopped at its safe point:\n{err}");
    assert!(secs < 10.0, "{secs:.2} s");
}

#[test]
fn ctrl_c_on_the_launcher_stops_every_worker() {
    let port = free_port().to_string();
    let p = Proc::start(&mut ssl(&["dist-rendezvous", "--nproc-per-node", "2", "--master-port", &port, "--hold-secs", "60"]));
    assert!(p.until(Duration::from_secs(15), |o, _| lines_of(o).len() == 2), "{}\n{}", p.out(), p.err());
    let pids: Vec<u32> = lines_of(&p.out()).iter().map(|l| l.1).collect();
    let t = Instant::now();
    // SAFETY: a signal to the launcher this test started.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGINT) };
    let (code, _, err, _) = p.finish(Duration::from_secs(15));
    println!("Ctrl-C: launcher and workers gone after {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(code, 130, "{err}");
    assert!(err.contains("launcher: interrupted; stopping every worker"), "{err}");
    assert!(pids.iter().all(|&pid| gone(pid)), "workers {pids:?} must be gone");
}

/// `train --backend cuda --nproc-per-node 2` starts two training workers, each on its GPU
/// (LOCAL_RANK); on this machine without one, each stops with the cuda backend's one line and
/// the launcher names the rank. (With a GPU the worker goes on to the rendezvous and NCCL:
/// `train::train_cuda_worker`.)
#[test]
fn cuda_train_workers_start_and_a_missing_gpu_is_named() {
    let port = free_port().to_string();
    let args = ["train", "--config", "configs/demo-cpu.toml", "--backend", "cuda", "--nproc-per-node", "2", "--master-port", &port, "--quiet"];
    let p = Proc::start(&mut ssl(&args));
    let (code, _, err, _) = p.finish(Duration::from_secs(30));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("error: launcher: rank") && err.contains("the other workers were stopped"), "{err}");
    assert!(err.lines().any(|l| l.starts_with("[rank ") && l.contains("error:") && l.to_lowercase().contains("cuda")), "{err}");
}

/// With the cpu backend, `--nproc-per-node 2` trains in this process (one thread per rank):
/// no workers are launched and no port is taken.
#[test]
fn cpu_ranks_train_in_process_without_a_launcher() {
    let out = std::env::temp_dir().join(format!("ssl-engine-dist-cpu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let set = |kv: String| ["--set".to_string(), kv];
    let mut args: Vec<String> = ["train", "--config", "configs/demo-cpu.toml", "--nproc-per-node", "2", "--quiet"].map(String::from).to_vec();
    for kv in [format!("out={:?}", out.display().to_string()), "max_steps=1".into(), "data.limit_per_class=4".into(), "batch_size=8".into(), "data.test_path=\"\"".into(), "report.compare_random=false".into(), "model_opts.width=4".into()] {
        args.extend(set(kv));
    }
    let p = Proc::start(&mut ssl(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let (code, _, err, _) = p.finish(Duration::from_secs(120));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("launcher:"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

/// libnccl.so.2 from the PyPI wheel: beside the CUDA wheels' folder on LD_LIBRARY_PATH, else
/// where python3 has the `nvidia` packages (the way .ci/run finds the NVRTC folder).
fn wheel_nccl() -> Option<PathBuf> {
    nccl::wheel_library().or_else(|| {
        let py = "import nvidia, os; print(next((d for d in (os.path.join(p, 'nccl', 'lib') for p in nvidia.__path__) if os.path.isdir(d)), ''))";
        let o = Command::new("python3").args(["-c", py]).output().ok()?;
        let lib = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join(nccl::SONAME);
        lib.is_file().then_some(lib)
    })
}

/// The wheel's library, or a skip (a failure under CI=true, where .ci/run installs it).
fn nccl_or_skip() -> Option<PathBuf> {
    let found = wheel_nccl();
    if found.is_none() {
        let why = "no libnccl.so.2 from the PyPI wheel (`python3 -m pip install nvidia-nccl-cu13`)";
        let ci = std::env::var("CI").is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1"));
        assert!(!ci, "CI=true but the test would be skipped: {why}; .ci/run installs it");
        eprintln!("skipped: {why} [nccl]");
    }
    found
}

#[test]
fn the_nccl_wheel_exports_what_cudarc_calls() {
    let Some(path) = nccl_or_skip() else { return };
    // SAFETY: loading NCCL runs its initialisers only; the symbols are looked up, not called,
    // except ncclGetVersion (one int out).
    unsafe {
        let lib = libloading::Library::new(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let missing: Vec<&str> = nccl::SYMBOLS.iter().copied().filter(|s| lib.get::<*const ()>(s.as_bytes()).is_err()).collect();
        assert!(missing.is_empty(), "{} lacks {missing:?}", path.display());
        let version: libloading::Symbol<unsafe extern "C" fn(*mut i32) -> i32> = lib.get(b"ncclGetVersion").unwrap();
        let mut v = 0;
        assert_eq!(version(&mut v), 0);
        println!("{}: NCCL {}.{}.{}, all {} symbols", path.display(), v / 10000, (v / 100) % 100, v % 100, nccl::SYMBOLS.len());
        assert!(v >= 22200, "NCCL {v} is older than cudarc's oldest binding (2.22)");
    }
}

#[test]
fn rank_0_makes_the_id_with_nccl_through_cudarc() {
    let Some(lib) = nccl_or_skip() else { return };
    // Only libnccl.so.2 ships and cudarc loads libnccl.so: the link the error message suggests.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&lib, dir.path().join("libnccl.so")).unwrap();
    let path = std::env::join_paths(
        std::iter::once(dir.path().to_path_buf()).chain(std::env::split_paths(&std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default())),
    )
    .unwrap();
    let port = free_port().to_string();
    let mut c = ssl(&["dist-rendezvous", "--backend", "cuda", "--nproc-per-node", "2", "--master-port", &port, "--rdzv-timeout", "20"]);
    c.env("LD_LIBRARY_PATH", path);
    let (code, out, err, secs) = Proc::start(&mut c).finish(Duration::from_secs(20));
    println!("NCCL id through cudarc, 2 workers: {secs:.2} s");
    assert_eq!(code, 0, "{out}\n{err}");
    let got = lines_of(&out);
    assert_eq!(got.len(), 2, "{out}");
    assert!(got.iter().all(|l| l.2 == "nccl"), "{out}\n{err}");
    assert_eq!(got[0].3, got[1].3);

    // Without the link: one line naming the folder and the link to add.
    let mut c = ssl(&["dist-rendezvous", "--backend", "cuda"]);
    c.env("LD_LIBRARY_PATH", lib.parent().unwrap());
    let (code, _, err, _) = Proc::start(&mut c).finish(Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");
    if !err.is_empty() {
        assert!(err.contains("only as libnccl.so.2") && err.contains("ln -s libnccl.so.2"), "{err}");
    }
}

#[test]
fn missing_nccl_is_one_line() {
    let empty = tempfile::tempdir().unwrap();
    let mut c = ssl(&["dist-rendezvous", "--backend", "cuda"]);
    c.env("LD_LIBRARY_PATH", empty.path());
    let (code, out, err, _) = Proc::start(&mut c).finish(Duration::from_secs(20));
    assert_eq!(code, 0, "the rendezvous itself needs no NCCL: {err}");
    if lines_of(&out)[0].2 == "nccl" {
        eprintln!("skipped: this machine has a system NCCL that cudarc loads");
        return;
    }
    let notes: Vec<&str> = err.lines().filter(|l| l.contains("NCCL")).collect();
    assert_eq!(notes.len(), 1, "{err}");
    assert!(
        notes[0].contains(nccl::NCCL_MISSING) || notes[0].contains("only as libnccl.so.2"),
        "the line says how to install NCCL: {}",
        notes[0]
    );
}
