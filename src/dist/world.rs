//! Who this process is in the job. The same binary runs under our launcher, torchrun or SLURM's
//! srun unchanged, so it reads whichever speaks, in this order: the explicit flags
//! (`--master-addr`, `--master-port`, `--rdzv-id`), torchrun's environment (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; our launcher sets the same), SLURM's
//! (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, the first host of the node list), and
//! otherwise a single process. The environment is passed in as a lookup so the tests never touch
//! the process's own.

use super::{DEFAULT_ADDR, DEFAULT_PORT, DistArgs, JOB_ID_ENV};
use crate::error::{Error, Result};

/// The longest job id the rendezvous carries (bytes).
pub const MAX_JOB_ID: usize = 1024;

/// This process's place in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    /// 0..world_size; rank 0 serves the rendezvous and (later) writes the run's files.
    pub rank: usize,
    pub world_size: usize,
    /// The rank among this machine's workers: the GPU index it should use.
    pub local_rank: usize,
    /// Where rank 0 serves NCCL's unique id (a host name or an IP address).
    pub master_addr: String,
    pub master_port: u16,
    /// What every rank presents at the rendezvous; only ranks presenting rank 0's get the id.
    pub job_id: String,
    /// Where these values came from, for messages ("torchrun's environment", ...).
    pub source: &'static str,
}

impl World {
    /// One process, rank 0 of 1.
    pub fn single() -> World {
        World {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: DEFAULT_ADDR.into(),
            master_port: DEFAULT_PORT,
            job_id: "none".into(),
            source: "a single process",
        }
    }

    /// From the flags and this process's environment.
    pub fn from_env(args: &DistArgs) -> Result<World> {
        World::resolve(args, &|k| std::env::var(k).ok())
    }

    /// From the flags and an environment lookup (`env("RANK")`): see the module's order. A value
    /// that is not a number, a rank outside the world, a world of 0 or a port of 0 is an error
    /// naming the variable and its value.
    pub fn resolve(args: &DistArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<World> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let (rank, world_size, local_rank, slurm_host, source) = if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
            let src = "torchrun's environment";
            let rank = number(&get, "RANK", src)?;
            let world_size = number(&get, "WORLD_SIZE", src)?;
            // torchrun always sets LOCAL_RANK; a hand-made environment may not: one node then.
            let local_rank = if get("LOCAL_RANK").is_some() { number(&get, "LOCAL_RANK", src)? } else { rank };
            (rank, world_size, local_rank, None, src)
        } else if get("SLURM_PROCID").is_some() {
            let src = "SLURM's environment";
            let rank = number(&get, "SLURM_PROCID", src)?;
            let world_size = number(&get, "SLURM_NTASKS", src)?;
            let local_rank = number(&get, "SLURM_LOCALID", src)?;
            // The step's nodes when srun says (rank 0 runs on the first), else the job's.
            let list = ["SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST"].into_iter().find_map(|k| get(k).map(|v| (k, v)));
            let host = match list {
                Some((k, v)) => Some(first_host(&v).map_err(|e| Error::Config(format!("{k}={v:?}: {e}")))?),
                None => None,
            };
            (rank, world_size, local_rank, host, src)
        } else {
            (0, 1, 0, None, "a single process")
        };
        let name = if source.starts_with("torchrun") {
            ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        } else {
            ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
        };
        if world_size == 0 {
            return Err(Error::Config(format!("{}=0 ({source}): a job has at least one process", name.1)));
        }
        if rank >= world_size {
            return Err(Error::Config(format!(
                "{}={rank} is not below {}={world_size} ({source}): ranks are 0..{world_size}",
                name.0, name.1
            )));
        }
        if local_rank >= world_size {
            return Err(Error::Config(format!("{}={local_rank} is not below {}={world_size} ({source})", name.2, name.1)));
        }

        let master_addr = match (&args.master_addr, get("MASTER_ADDR"), slurm_host) {
            (Some(a), _, _) => a.trim().to_string(),
            (None, Some(a), _) => a.trim().to_string(),
            (None, None, Some(h)) => h,
            (None, None, None) if world_size > 1 && source.starts_with("SLURM") => {
                return Err(Error::Config(format!(
                    "SLURM_PROCID is set but no SLURM_NODELIST (or MASTER_ADDR) names rank 0's host: give --master-addr ({source})"
                )));
            }
            (None, None, None) => DEFAULT_ADDR.into(),
        };
        if master_addr.is_empty() {
            return Err(Error::Config("--master-addr / MASTER_ADDR is empty: give rank 0's host name or IP address".into()));
        }
        let master_port = match (args.master_port, get("MASTER_PORT")) {
            (Some(0), _) => return Err(Error::Config("--master-port 0: give the port rank 0 listens on (1-65535)".into())),
            (Some(p), _) => p,
            (None, Some(v)) => match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(Error::Config(format!("MASTER_PORT={v:?}: not a TCP port (1-65535)"))),
            },
            (None, None) => DEFAULT_PORT,
        };
        // The flag, our launcher's, torchrun's, SLURM's job (and step), else "none" (torchrun's
        // default): all ranks of one job agree on each of these.
        let job_id = if let Some(id) = &args.rdzv_id {
            id.clone()
        } else if let Some(id) = get(JOB_ID_ENV).or_else(|| get("TORCHELASTIC_RUN_ID")) {
            id
        } else if let Some(job) = get("SLURM_JOB_ID") {
            match get("SLURM_STEP_ID") {
                Some(step) => format!("{}.{}", job.trim(), step.trim()),
                None => job.trim().to_string(),
            }
        } else {
            "none".into()
        };
        if job_id.len() > MAX_JOB_ID {
            return Err(Error::Config(format!("the job id (--rdzv-id) is {} bytes; at most {MAX_JOB_ID}", job_id.len())));
        }
        Ok(World { rank, world_size, local_rank, master_addr, master_port, job_id, source })
    }

    /// More than one rank: the job needs the rendezvous and the collectives.
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }

    /// `host:port` (`[v6]:port` for an IPv6 address), as messages name the rendezvous.
    pub fn address(&self) -> String {
        if self.master_addr.contains(':') {
            format!("[{}]:{}", self.master_addr, self.master_port)
        } else {
            format!("{}:{}", self.master_addr, self.master_port)
        }
    }
}

/// A whole number from the variable `key`, which must be set: an error names it and its value.
fn number(get: &dyn Fn(&str) -> Option<String>, key: &str, source: &str) -> Result<usize> {
    match get(key) {
        None => Err(Error::Config(format!("{key} is not set but the rest of {source} is"))),
        Some(v) => v.trim().parse::<usize>().map_err(|_| Error::Config(format!("{key}={v:?} ({source}): not a whole number from 0"))),
    }
}

/// The first host of a SLURM host list in its compressed form: `node[01-04,07],gpu5` is
/// node01, node02, node03, node04, node07, gpu5, so `node01`; `rack[1-2]-n[3,5]` gives
/// `rack1-n3`. Zero padding is kept.
pub fn first_host(list: &str) -> std::result::Result<String, String> {
    // The first entry: up to the first comma outside brackets.
    let mut depth = 0i32;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
        if depth < 0 {
            return Err("a ']' without its '['".into());
        }
    }
    let entry = list[..end].trim();
    if entry.is_empty() {
        return Err("no host in the list".into());
    }
    // Each bracket group becomes its first element: before its first ',' and the '-' of a range.
    let mut host = String::new();
    let mut rest = entry;
    while let Some(open) = rest.find('[') {
        host.push_str(&rest[..open]);
        let close = rest[open..].find(']').map(|c| open + c).ok_or("a '[' without its ']'")?;
        let group = &rest[open + 1..close];
        let first = group.split(',').next().unwrap_or("").split('-').next().unwrap_or("").trim();
        if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("the range [{group}] does not start with a number"));
        }
        host.push_str(first);
        rest = &rest[close + 1..];
    }
    if rest.contains(']') {
        return Err("a ']' without its '['".into());
    }
    host.push_str(rest);
    Ok(host)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn world(args: &DistArgs, vars: &[(&str, &str)]) -> Result<World> {
        let env: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        World::resolve(args, &|k| env.get(k).cloned())
    }

    fn err(args: &DistArgs, vars: &[(&str, &str)]) -> String {
        world(args, vars).unwrap_err().to_string()
    }

    #[test]
    fn single_process_by_default() {
        let w = world(&DistArgs::default(), &[]).unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank), (0, 1, 0));
        assert_eq!(w.address(), "127.0.0.1:29500");
        assert_eq!(w.job_id, "none");
        assert!(!w.is_distributed());
    }

    #[test]
    fn torchrun_environment() {
        let vars = [
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.4"),
            ("MASTER_PORT", "29600"),
            ("TORCHELASTIC_RUN_ID", "exp7"),
        ];
        let w = world(&DistArgs::default(), &vars).unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank), (5, 8, 1));
        assert_eq!(w.address(), "10.0.0.4:29600");
        assert_eq!(w.job_id, "exp7");
        assert!(w.source.contains("torchrun"));
        // Explicit flags win over the environment.
        let args =
            DistArgs { master_addr: Some("node9".into()), master_port: Some(1234), rdzv_id: Some("mine".into()), ..Default::default() };
        let w = world(&args, &vars).unwrap();
        assert_eq!((w.address().as_str(), w.job_id.as_str()), ("node9:1234", "mine"));
        // Our launcher's job id comes before torchrun's.
        let mut v = vars.to_vec();
        v.push((JOB_ID_ENV, "launch42"));
        assert_eq!(world(&DistArgs::default(), &v).unwrap().job_id, "launch42");
    }

    #[test]
    fn torchrun_wins_over_slurm() {
        let vars = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_JOB_ID", "77"),
        ];
        let w = world(&DistArgs::default(), &vars).unwrap();
        assert_eq!((w.rank, w.world_size), (1, 2));
        // No torchrun or launcher job id: SLURM's job still names the job.
        assert_eq!(w.job_id, "77");
    }

    #[test]
    fn slurm_environment() {
        let vars = [
            ("SLURM_PROCID", "6"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "2"),
            ("SLURM_NODELIST", "gpu[07-08,11],login1"),
            ("SLURM_JOB_ID", "123456"),
        ];
        let w = world(&DistArgs::default(), &vars).unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank), (6, 8, 2));
        assert_eq!(w.master_addr, "gpu07");
        assert_eq!(w.master_port, 29500);
        assert_eq!(w.job_id, "123456");
        // The step's node list and id, where srun gives them; MASTER_ADDR over both.
        let mut v = vars.to_vec();
        v.extend([("SLURM_STEP_NODELIST", "gpu[11]"), ("SLURM_STEP_ID", "3")]);
        let w = world(&DistArgs::default(), &v).unwrap();
        assert_eq!((w.master_addr.as_str(), w.job_id.as_str()), ("gpu11", "123456.3"));
        v.push(("MASTER_ADDR", "head"));
        assert_eq!(world(&DistArgs::default(), &v).unwrap().master_addr, "head");
        // No node list and no address: an error that says what to give.
        let e = err(&DistArgs::default(), &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("SLURM_LOCALID", "0")]);
        assert!(e.contains("SLURM_NODELIST") && e.contains("--master-addr"), "{e}");
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let d = DistArgs::default();
        let e = err(&d, &[("RANK", "4"), ("WORLD_SIZE", "4")]);
        assert!(e.contains("RANK=4") && e.contains("WORLD_SIZE=4"), "{e}");
        let e = err(&d, &[("RANK", "one"), ("WORLD_SIZE", "4")]);
        assert!(e.contains("RANK=\"one\"") && e.contains("not a whole number"), "{e}");
        let e = err(&d, &[("RANK", "0"), ("WORLD_SIZE", "-2")]);
        assert!(e.contains("WORLD_SIZE=\"-2\""), "{e}");
        let e = err(&d, &[("RANK", "0")]);
        assert!(e.contains("WORLD_SIZE is not set"), "{e}");
        let e = err(&d, &[("RANK", "0"), ("WORLD_SIZE", "0")]);
        assert!(e.contains("WORLD_SIZE=0"), "{e}");
        let e = err(&d, &[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "2")]);
        assert!(e.contains("LOCAL_RANK=2"), "{e}");
        let e = err(&d, &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "http")]);
        assert!(e.contains("MASTER_PORT=\"http\""), "{e}");
        let e = err(&d, &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")]);
        assert!(e.contains("MASTER_PORT=\"70000\""), "{e}");
        let e = err(&d, &[("SLURM_PROCID", "3"), ("SLURM_NTASKS", "2"), ("SLURM_LOCALID", "0"), ("SLURM_NODELIST", "n1")]);
        assert!(e.contains("SLURM_PROCID=3") && e.contains("SLURM_NTASKS=2"), "{e}");
        let e = err(&d, &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("SLURM_NODELIST", "n1")]);
        assert!(e.contains("SLURM_LOCALID is not set"), "{e}");
        let e = err(&d, &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("SLURM_LOCALID", "0"), ("SLURM_NODELIST", "n[01-")]);
        assert!(e.contains("SLURM_NODELIST=\"n[01-\""), "{e}");
        let e = err(&DistArgs { master_port: Some(0), ..Default::default() }, &[]);
        assert!(e.contains("--master-port 0"), "{e}");
        let e = err(&DistArgs { rdzv_id: Some("x".repeat(2000)), ..Default::default() }, &[]);
        assert!(e.contains("2000 bytes"), "{e}");
    }

    #[test]
    fn slurm_host_lists() {
        assert_eq!(first_host("node[01-04,07],gpu5").unwrap(), "node01");
        assert_eq!(first_host("gpu5,node[01-04]").unwrap(), "gpu5");
        assert_eq!(first_host("node[7,01-04]").unwrap(), "node7");
        assert_eq!(first_host("rack[1-2]-n[003,5]").unwrap(), "rack1-n003");
        assert_eq!(first_host("single").unwrap(), "single");
        assert_eq!(first_host(" a1 ").unwrap(), "a1");
        for bad in ["", "node[", "node[]", "node]1", "n[a-b]", ",x"] {
            assert!(first_host(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn ipv6_address_is_bracketed() {
        let w = world(&DistArgs { master_addr: Some("::1".into()), ..Default::default() }, &[]).unwrap();
        assert_eq!(w.address(), "[::1]:29500");
    }
}
