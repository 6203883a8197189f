//! `--nproc-per-node N`: this process becomes the launcher of N workers, as torchrun is. Each
//! worker is this same binary with the same arguments minus the launcher's flags, and torchrun's
//! environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`) plus the job id (`SSL_ENGINE_JOB_ID`), so a worker runs exactly as it would
//! under torchrun. Multi-node: one launcher per machine with `--nnodes` and `--node-rank`
//! (global rank = node_rank * N + local rank).
//!
//! The launcher waits for all. When one fails, it stops the others (SIGTERM: they save and
//! exit; SIGKILL after `grace`) and exits with the failed worker's code, naming its rank. Ctrl-C
//! or SIGTERM on the launcher stops every worker the same way, once: the workers run in their own
//! process group, so the terminal's Ctrl-C reaches only the launcher, which passes one SIGTERM on
//! (a second would make them exit without saving). If the launcher itself dies, Linux sends each
//! worker SIGTERM (`PR_SET_PDEATHSIG`). Every line a worker prints comes out as `[rank N] ...`.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{DEFAULT_ADDR, DEFAULT_PORT, DistArgs, JOB_ID_ENV, random_job_id};
use crate::error::{Error, Result};

/// The flags that concern the launcher only; the workers get the rest of the command line.
pub const LAUNCHER_FLAGS: [&str; 6] = ["--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--rdzv-id"];

/// How long workers get to stop after a failure before they are killed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// What one launcher starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    pub job_id: String,
    /// After a worker fails: how long the others get between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl LaunchSpec {
    /// The launch the flags ask for, or `None` when they ask for one process in all (no
    /// launcher: the command runs in this process). `env` is this process's environment: a
    /// launcher inside a launched worker is refused.
    pub fn from_args(args: &DistArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<LaunchSpec>> {
        let nproc = args.nproc_per_node.unwrap_or(1);
        let nnodes = args.nnodes.unwrap_or(1);
        let node_rank = args.node_rank.unwrap_or(0);
        let cfg = |m: String| Err(Error::Config(m));
        if nproc == 0 {
            return cfg("--nproc-per-node 0: a node runs at least one worker".into());
        }
        if nnodes == 0 {
            return cfg("--nnodes 0: a job has at least one node".into());
        }
        if node_rank >= nnodes {
            return cfg(format!("--node-rank {node_rank} is not below --nnodes {nnodes}: nodes are 0..{nnodes}"));
        }
        if nproc * nnodes == 1 {
            return Ok(None);
        }
        if let Some(r) = env("RANK").filter(|v| !v.is_empty()) {
            return cfg(format!(
                "--nproc-per-node / --nnodes in a process that is already rank {r} of a launched job (RANK is set by torchrun or \
                 ssl-engine's launcher): drop these flags, or start the command without the other launcher"
            ));
        }
        if nnodes > 1 && args.master_addr.is_none() {
            return cfg(format!("--nnodes {nnodes}: give --master-addr, node 0's address, which every node can reach"));
        }
        if nnodes > 1 && args.rdzv_id.is_none() {
            return cfg(format!(
                "--nnodes {nnodes}: give every node the same --rdzv-id (any text, e.g. the date), so that only this job's ranks get NCCL's id"
            ));
        }
        if args.master_port == Some(0) {
            return cfg("--master-port 0: give the port rank 0 listens on (1-65535)".into());
        }
        Ok(Some(LaunchSpec {
            nproc_per_node: nproc,
            nnodes,
            node_rank,
            master_addr: args.master_addr.clone().unwrap_or_else(|| DEFAULT_ADDR.into()),
            master_port: args.master_port.unwrap_or(DEFAULT_PORT),
            job_id: args.rdzv_id.clone().unwrap_or_else(random_job_id),
            grace: DEFAULT_GRACE,
        }))
    }

    pub fn world_size(&self) -> usize {
        self.nproc_per_node * self.nnodes
    }

    /// The global rank of this node's `local`-th worker.
    pub fn rank(&self, local: usize) -> usize {
        self.node_rank * self.nproc_per_node + local
    }
}

/// The command line without the launcher's flags (`--flag value` and `--flag=value`).
pub fn worker_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if LAUNCHER_FLAGS.contains(&s.as_ref()) {
            it.next();
        } else if !LAUNCHER_FLAGS.iter().any(|f| s.starts_with(&format!("{f}="))) {
            out.push(a);
        }
    }
    out
}

/// One started worker.
struct Worker {
    rank: usize,
    child: Child,
    /// Its exit, once seen.
    status: Option<ExitStatus>,
    relays: Vec<JoinHandle<()>>,
}

/// Starts this node's workers (`program args` with torchrun's environment each), waits for all,
/// and stops all when one fails or on Ctrl-C / SIGTERM. Ok when every worker succeeded; a
/// failure is `Error::Distributed` with the failed worker's exit code and rank.
pub fn launch(spec: &LaunchSpec, program: &Path, args: &[OsString]) -> Result<()> {
    let (n, w) = (spec.nproc_per_node, spec.world_size());
    let addr = if spec.master_addr.contains(':') {
        format!("[{}]:{}", spec.master_addr, spec.master_port)
    } else {
        format!("{}:{}", spec.master_addr, spec.master_port)
    };
    eprintln!(
        "launcher: starting ranks {}..{} of {w} on this node; rendezvous at {addr}, job {:?}",
        spec.rank(0),
        spec.rank(n - 1),
        spec.job_id
    );
    let mut workers: Vec<Worker> = Vec::with_capacity(n);
    for local in 0..n {
        let rank = spec.rank(local);
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", w.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("GROUP_RANK", spec.node_rank.to_string())
            .env("MASTER_ADDR", &spec.master_addr)
            .env("MASTER_PORT", spec.master_port.to_string())
            .env(JOB_ID_ENV, &spec.job_id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        own_group(&mut cmd);
        match cmd.spawn() {
            Ok(mut child) => {
                let prefix = format!("[rank {rank}] ");
                let mut relays = Vec::new();
                if let Some(o) = child.stdout.take() {
                    relays.push(relay(o, prefix.clone(), false));
                }
                if let Some(e) = child.stderr.take() {
                    relays.push(relay(e, prefix, true));
                }
                workers.push(Worker { rank, child, status: None, relays });
            }
            Err(e) => {
                for wk in &mut workers {
                    signal(&mut wk.child, false);
                }
                finish(&mut workers);
                return Err(Error::dist(format!("launcher: cannot start rank {rank} ({}): {e}", program.display())));
            }
        }
    }

    // (rank, exit code, what happened) of the first worker that failed.
    let mut failed: Option<(usize, i32, String)> = None;
    let mut stopping = false;
    let mut kill_at: Option<Instant> = None;
    loop {
        for wk in workers.iter_mut().filter(|wk| wk.status.is_none()) {
            if let Ok(Some(st)) = wk.child.try_wait() {
                wk.status = Some(st);
                if !st.success() && !stopping {
                    let (code, what) = describe(st);
                    eprintln!("launcher: rank {} {what}; stopping the other workers", wk.rank);
                    failed = Some((wk.rank, code, what));
                }
            }
        }
        let running = workers.iter().filter(|wk| wk.status.is_none()).count();
        if running == 0 {
            break;
        }
        let interrupted = crate::interrupt::requested();
        if (failed.is_some() || interrupted) && !stopping {
            stopping = true;
            if interrupted && failed.is_none() {
                eprintln!("launcher: interrupted; stopping every worker (each saves at its next safe point)");
            }
            for wk in workers.iter_mut().filter(|wk| wk.status.is_none()) {
                signal(&mut wk.child, false);
            }
            // After a failure the others must not linger; an interrupt waits for their saves.
            if failed.is_some() {
                kill_at = Some(Instant::now() + spec.grace);
            }
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            for wk in workers.iter_mut().filter(|wk| wk.status.is_none()) {
                eprintln!("launcher: rank {} did not stop within {} s; killing it", wk.rank, spec.grace.as_secs_f64());
                signal(&mut wk.child, true);
            }
            kill_at = None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    finish(&mut workers);
    match failed {
        Some((rank, code, what)) => {
            Err(Error::Distributed { msg: format!("launcher: rank {rank} of {w} {what}; the other workers were stopped"), exit: code })
        }
        None if stopping => Err(Error::Interrupted("the launcher stopped every worker".into())),
        None => Ok(()),
    }
}

/// Reaps every worker and flushes what they printed.
fn finish(workers: &mut [Worker]) {
    for wk in workers.iter_mut() {
        if wk.status.is_none() {
            wk.status = wk.child.wait().ok();
        }
        for r in wk.relays.drain(..) {
            let _ = r.join();
        }
    }
}

/// The exit code the launcher passes on (128 + the signal for a killed worker) and the words.
fn describe(st: ExitStatus) -> (i32, String) {
    if let Some(c) = st.code() {
        return (c, format!("exited with code {c}"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = st.signal() {
            return (128 + sig, format!("was killed by signal {sig}"));
        }
    }
    (1, "ended without an exit code".into())
}

/// Copies a worker's output, line by line, each line behind `prefix`.
fn relay(src: impl Read + Send + 'static, prefix: String, to_stderr: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(src);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    let mut out = Vec::with_capacity(prefix.len() + line.len());
                    out.extend_from_slice(prefix.as_bytes());
                    out.extend_from_slice(&line);
                    // One write per line under the lock: lines of different workers never mix.
                    if to_stderr {
                        let _ = std::io::stderr().lock().write_all(&out);
                    } else {
                        let mut o = std::io::stdout().lock();
                        let _ = o.write_all(&out);
                        let _ = o.flush();
                    }
                }
            }
        }
    })
}

/// The worker runs in its own process group (the terminal's Ctrl-C reaches the launcher only)
/// and, on Linux, gets SIGTERM when the launcher dies.
fn own_group(cmd: &mut Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid).
            unsafe {
                cmd.pre_exec(move || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    // The launcher died before the line above: stop now.
                    if libc::getppid() != parent {
                        return Err(std::io::Error::other("the launcher is gone"));
                    }
                    Ok(())
                });
            }
        }
    }
    #[cfg(not(unix))]
    let _ = cmd;
}

/// SIGTERM (stop at the next safe point, saving) or SIGKILL to a worker's process group.
fn signal(child: &mut Child, kill: bool) {
    #[cfg(unix)]
    {
        let sig = if kill { libc::SIGKILL } else { libc::SIGTERM };
        // SAFETY: kill(2) on the group this launcher created for the worker.
        unsafe { libc::kill(-(child.id() as libc::pid_t), sig) };
    }
    #[cfg(not(unix))]
    {
        let _ = kill;
        let _ = child.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: DistArgs, env: &[(&str, &str)]) -> Result<Option<LaunchSpec>> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        LaunchSpec::from_args(&args, &move |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn one_process_needs_no_launcher() {
        assert_eq!(spec(DistArgs::default(), &[]).unwrap(), None);
        assert_eq!(spec(DistArgs { nproc_per_node: Some(1), ..Default::default() }, &[]).unwrap(), None);
    }

    #[test]
    fn one_node() {
        let s = spec(DistArgs { nproc_per_node: Some(4), ..Default::default() }, &[]).unwrap().unwrap();
        assert_eq!((s.world_size(), s.rank(3), s.master_addr.as_str(), s.master_port), (4, 3, "127.0.0.1", 29500));
        assert_eq!(s.job_id.len(), 16, "a random job id per launch");
    }

    #[test]
    fn multi_node() {
        let a = DistArgs {
            nproc_per_node: Some(8),
            nnodes: Some(2),
            node_rank: Some(1),
            master_addr: Some("10.0.0.1".into()),
            rdzv_id: Some("exp".into()),
            ..Default::default()
        };
        let s = spec(a.clone(), &[]).unwrap().unwrap();
        assert_eq!((s.world_size(), s.rank(0), s.rank(7), s.job_id.as_str()), (16, 8, 15, "exp"));
        let e = spec(DistArgs { master_addr: None, ..a.clone() }, &[]).unwrap_err().to_string();
        assert!(e.contains("--master-addr"), "{e}");
        let e = spec(DistArgs { rdzv_id: None, ..a.clone() }, &[]).unwrap_err().to_string();
        assert!(e.contains("--rdzv-id"), "{e}");
        let e = spec(DistArgs { node_rank: Some(2), ..a.clone() }, &[]).unwrap_err().to_string();
        assert!(e.contains("--node-rank 2 is not below --nnodes 2"), "{e}");
        let e = spec(DistArgs { nproc_per_node: Some(0), ..a.clone() }, &[]).unwrap_err().to_string();
        assert!(e.contains("--nproc-per-node 0"), "{e}");
        let e = spec(a, &[("RANK", "3")]).unwrap_err().to_string();
        assert!(e.contains("already rank 3"), "{e}");
    }

    #[test]
    fn launcher_flags_are_dropped() {
        let args = [
            "train",
            "--nproc-per-node",
            "2",
            "--config",
            "x.toml",
            "--master-port=1234",
            "--nnodes",
            "1",
            "--rdzv-timeout",
            "9",
            "--rdzv-id",
            "j",
        ];
        let got: Vec<String> = worker_args(args.iter().map(OsString::from)).into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(got, ["train", "--config", "x.toml", "--rdzv-timeout", "9"]);
    }
}
