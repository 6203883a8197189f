//! How every rank gets NCCL's 128-byte unique id: rank 0 makes it and serves it over TCP at
//! `master_addr:master_port`; the others connect, present the job id and their rank, and wait.
//! The id goes out only when every rank of the world has arrived (a barrier: no rank walks into
//! `ncclCommInitRank`, which has no timeout of its own, while another is missing), and rank 0
//! returns only once each has confirmed it. This is the only network code of ours; NCCL's own
//! transports carry the training traffic.
//!
//! Rank 0 binds only the given address and serves `world_size - 1` ranks once, then closes. A
//! stranger (another job's id, a wrong world size, a rank out of range), a duplicate rank, a
//! malformed or over-long message or a connection that says nothing is refused with one logged
//! line (`rendezvous: refused <peer>: <reason>`) and never stops rank 0: each connection is read
//! on its own thread, at most `HEADER + MAX_JOB_ID` bytes, within `HELLO_TIMEOUT`.
//!
//! The messages (little-endian): hello `MAGIC, version u16, rank u32, world_size u32, job id
//! length u16, job id`; answer `MAGIC, version u16, status u8` then the 128 id bytes (OK) or a
//! u16-length text (refused, failed); acknowledgement `MAGIC, version u16, rank u32`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::UniqueId;
use super::world::{MAX_JOB_ID, World};
use crate::error::{Error, Result};

/// The first bytes of every message: anything else is not ours.
const MAGIC: &[u8; 8] = b"sslrdzv\0";
const VERSION: u16 = 1;
/// MAGIC, version, rank, world size, job id length.
const HEADER: usize = 8 + 2 + 4 + 4 + 2;
/// MAGIC, version, status.
const ANSWER: usize = 8 + 2 + 1;
/// MAGIC, version, rank.
const ACK: usize = 8 + 2 + 4;
const OK: u8 = 0;
/// Refused for good (another job, a duplicate rank, ...): the client stops with the reason.
const REFUSED: u8 = 1;
/// Rank 0 gave up (timeout, interrupt): the client stops with rank 0's message.
const FAILED: u8 = 2;
/// Too many connections at once: the client tries again.
const BUSY: u8 = 3;
/// The longest refusal text sent.
const MAX_TEXT: usize = 1024;

/// How long a connection may take to send its hello (or confirm the id) before it is refused:
/// a silent or trickling peer costs one thread for this long, never the rendezvous.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections read at once; more are answered "busy" at once.
const MAX_HANDLERS: usize = 64;
/// How long a rank that reached rank 0 waits for the id beyond its timeout: rank 0 started
/// before it connected, so rank 0's verdict (with the missing ranks) arrives first.
const ANSWER_SLACK: Duration = Duration::from_secs(5);
/// Pauses between polls of the listener and between connection attempts.
const POLL: Duration = Duration::from_millis(10);
const RETRY: Duration = Duration::from_millis(100);

/// Every rank's copy of the job's unique id: rank 0 makes it with `make_id` (NCCL's
/// `ncclGetUniqueId`, or random bytes without NCCL) and serves it, the others fetch it. One
/// process alone just makes it. Fails after `timeout` naming the address and the missing ranks.
pub fn rendezvous(world: &World, timeout: Duration, make_id: impl FnOnce() -> Result<UniqueId>) -> Result<UniqueId> {
    if !world.is_distributed() {
        return make_id();
    }
    if world.rank == 0 {
        // Listen first: a port in use is reported before the id is made.
        let server = Server::bind(world)?;
        let id = make_id()?;
        server.serve(&id, timeout)?;
        Ok(id)
    } else {
        fetch(world, timeout)
    }
}

/// Rank 0's listening socket, bound to `master_addr:master_port` only.
pub struct Server {
    listener: TcpListener,
    world: World,
    /// `host:port` as the messages name it.
    addr: String,
}

/// What the serving loop and the connection threads share.
struct State {
    /// Ranks that presented a valid hello and wait for the id, with their connection.
    waiting: BTreeMap<usize, TcpStream>,
    /// Ranks that confirmed the id.
    served: BTreeSet<usize>,
}

impl Server {
    /// Binds `world`'s rendezvous address (each address the name resolves to, the first that
    /// binds). A port in use or an address not of this machine is an error naming both.
    pub fn bind(world: &World) -> Result<Server> {
        let addr = world.address();
        let addrs: Vec<SocketAddr> = (world.master_addr.as_str(), world.master_port)
            .to_socket_addrs()
            .map_err(|e| Error::dist(format!("rendezvous: rank 0 cannot resolve {addr}: {e}")))?
            .collect();
        let mut last = None;
        for a in &addrs {
            match TcpListener::bind(a) {
                Ok(listener) => {
                    listener.set_nonblocking(true).map_err(|e| Error::dist(format!("rendezvous at {addr}: {e}")))?;
                    // The port bound (the same, except port 0 in the tests).
                    let mut world = world.clone();
                    world.master_port = listener.local_addr().map(|a| a.port()).unwrap_or(world.master_port);
                    let addr = world.address();
                    return Ok(Server { listener, world, addr });
                }
                Err(e) => last = Some((a, e)),
            }
        }
        Err(match last {
            Some((a, e)) => Error::dist(format!(
                "rendezvous: rank 0 cannot listen at {addr} ({a}): {e} (another job on port {}? pick another --master-port; \
                 is {} an address of this machine?)",
                world.master_port, world.master_addr
            )),
            None => Error::dist(format!("rendezvous: {addr} resolves to no address")),
        })
    }

    /// The address actually bound (its port, where `master_port` was 0 in a test).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `id` to ranks 1..world_size, each once, and returns when all have confirmed it;
    /// after `timeout` an error naming the address and the ranks that did not arrive (the ranks
    /// waiting are told the same). Stops early with `Error::Interrupted` on Ctrl-C / SIGTERM.
    pub fn serve(self, id: &UniqueId, timeout: Duration) -> Result<()> {
        let (n, addr) = (self.world.world_size, self.addr.clone());
        let state = Arc::new(Mutex::new(State { waiting: BTreeMap::new(), served: BTreeSet::new() }));
        let handlers = Arc::new(AtomicUsize::new(0));
        let job = Arc::new(self.world.job_id.clone());
        let deadline = Instant::now() + timeout;
        eprintln!("rendezvous: rank 0 of {n} serving NCCL's id at {addr} (job {:?})", self.world.job_id);
        loop {
            // Take every pending connection; each is read on its own thread.
            loop {
                match self.listener.accept() {
                    Ok((stream, peer)) => {
                        if handlers.load(Ordering::SeqCst) >= MAX_HANDLERS {
                            refuse(stream, peer, BUSY, "too many connections at once");
                            continue;
                        }
                        handlers.fetch_add(1, Ordering::SeqCst);
                        let (state, handlers, job) = (state.clone(), handlers.clone(), job.clone());
                        let spawned = std::thread::Builder::new().name("rendezvous-conn".into()).spawn(move || {
                            admit(stream, peer, &job, n, &state);
                            handlers.fetch_sub(1, Ordering::SeqCst);
                        });
                        if spawned.is_err() {
                            eprintln!("rendezvous: could not start a thread for {peer}");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // A connection reset before accept, or out of descriptors: the next poll retries.
                    Err(_) => break,
                }
            }
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            // A rank that hung up while waiting has not arrived: it may connect again.
            let gone: Vec<usize> = st.waiting.iter().filter(|(_, s)| !alive(s)).map(|(&r, _)| r).collect();
            for r in gone {
                st.waiting.remove(&r);
                eprintln!("rendezvous: rank {r} hung up before every rank had arrived; waiting for it again");
            }
            if !st.waiting.is_empty() && st.waiting.len() + st.served.len() == n - 1 {
                hand_out(&mut st, id);
            }
            if st.served.len() == n - 1 {
                return Ok(());
            }
            if crate::interrupt::requested() {
                tell_waiting(&mut st, "rendezvous: rank 0 was interrupted (Ctrl-C / SIGTERM)");
                return Err(Error::Interrupted(format!("during the rendezvous at {addr}")));
            }
            if Instant::now() >= deadline {
                let missing: Vec<usize> = (1..n).filter(|r| !st.served.contains(r) && !st.waiting.contains_key(r)).collect();
                let msg = format!("rendezvous at {addr} timed out after {}: {} of {n} did not arrive", secs(timeout), ranks(&missing));
                tell_waiting(&mut st, &msg);
                return Err(Error::dist(msg));
            }
            drop(st);
            std::thread::sleep(POLL);
        }
    }
}

/// Every rank is there: the id to each waiting rank, then each confirmation. A rank that does
/// not confirm goes back to "not arrived" (it may connect again until the deadline).
fn hand_out(st: &mut State, id: &UniqueId) {
    let mut answer = answer_header(OK);
    answer.extend_from_slice(id);
    let waiting = std::mem::take(&mut st.waiting);
    let mut sent = Vec::new();
    for (r, mut s) in waiting {
        match s.write_all(&answer) {
            Ok(()) => sent.push((r, s)),
            Err(e) => eprintln!("rendezvous: rank {r} lost before it got the id ({e}); waiting for it again"),
        }
    }
    for (r, mut s) in sent {
        let mut ack = [0u8; ACK];
        match read_full(&mut s, &mut ack, Instant::now() + HELLO_TIMEOUT, false) {
            Ok(()) if &ack[..8] == MAGIC && u32::from_le_bytes(ack[10..14].try_into().unwrap()) as usize == r => {
                st.served.insert(r);
            }
            _ => eprintln!("rendezvous: rank {r} did not confirm the id; waiting for it again"),
        }
    }
}

/// Tells every waiting rank that rank 0 gave up, with its message.
fn tell_waiting(st: &mut State, msg: &str) {
    for (_, mut s) in std::mem::take(&mut st.waiting) {
        let _ = s.write_all(&text_answer(FAILED, msg));
    }
}

/// One connection: read and check its hello within `HELLO_TIMEOUT`, then hand the connection to
/// the serving loop as a waiting rank, or refuse it with a logged line.
fn admit(mut s: TcpStream, peer: SocketAddr, job: &str, n: usize, state: &Mutex<State>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let hello = match read_hello(&mut s) {
        Ok(h) => h,
        Err(reason) => return refuse(s, peer, REFUSED, &reason),
    };
    if hello.job != job.as_bytes() {
        let shown = String::from_utf8_lossy(&hello.job[..hello.job.len().min(64)]).into_owned();
        return refuse(s, peer, REFUSED, &format!("job id {shown:?} is not this job's (a rank of another job, or a wrong --rdzv-id)"));
    }
    if hello.world_size != n {
        return refuse(s, peer, REFUSED, &format!("rank {} says the world has {} ranks; this job's has {n}", hello.rank, hello.world_size));
    }
    if hello.rank == 0 || hello.rank >= n {
        return refuse(s, peer, REFUSED, &format!("rank {} is not one of 1..{n} (rank 0 is the server)", hello.rank));
    }
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let r = hello.rank;
    if st.served.contains(&r) {
        drop(st);
        return refuse(s, peer, REFUSED, &format!("rank {r} already got the id"));
    }
    if st.waiting.get(&r).is_some_and(alive) {
        drop(st);
        return refuse(s, peer, REFUSED, &format!("rank {r} is already here (two processes with the same rank?)"));
    }
    st.waiting.insert(r, s);
}

/// Logs the refusal and tells the peer why (best effort: it may be gone or not ours). What it
/// still sends is read and dropped for a moment (at most 64 KiB), so that closing does not reset
/// the connection before the peer has read the reason (not for "busy", which the serving loop
/// answers itself and must not wait on).
fn refuse(mut s: TcpStream, peer: SocketAddr, status: u8, reason: &str) {
    eprintln!("rendezvous: refused {peer}: {reason}");
    let _ = s.set_nonblocking(false);
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = s.write_all(&text_answer(status, reason));
    let _ = s.shutdown(std::net::Shutdown::Write);
    if status == BUSY {
        return;
    }
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        if !matches!(s.read(&mut sink), Ok(k) if k > 0) {
            break;
        }
    }
}

struct Hello {
    rank: usize,
    world_size: usize,
    job: Vec<u8>,
}

/// The hello, or why it is not one. Reads at most `HEADER + MAX_JOB_ID` bytes.
fn read_hello(s: &mut TcpStream) -> std::result::Result<Hello, String> {
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let mut head = [0u8; HEADER];
    read_full(s, &mut head, deadline, false).map_err(|e| e.describe("a hello"))?;
    if &head[..8] != MAGIC {
        return Err(format!("not a rendezvous message (it starts with \"{}\")", head[..8].escape_ascii()));
    }
    let version = u16::from_le_bytes([head[8], head[9]]);
    if version != VERSION {
        return Err(format!("protocol version {version}; this rank 0 speaks version {VERSION} (mixed ssl-engine builds?)"));
    }
    let rank = u32::from_le_bytes(head[10..14].try_into().unwrap()) as usize;
    let world_size = u32::from_le_bytes(head[14..18].try_into().unwrap()) as usize;
    let len = u16::from_le_bytes([head[18], head[19]]) as usize;
    if len > MAX_JOB_ID {
        return Err(format!("announces a job id of {len} bytes (at most {MAX_JOB_ID})"));
    }
    let mut job = vec![0u8; len];
    read_full(s, &mut job, deadline, false).map_err(|e| e.describe("its job id"))?;
    Ok(Hello { rank, world_size, job })
}

/// Rank r > 0: connects to rank 0 (again and again until `timeout` while nobody listens),
/// presents the job id and its rank, and waits for the id.
pub fn fetch(world: &World, timeout: Duration) -> Result<UniqueId> {
    let addr = world.address();
    let start = Instant::now();
    let deadline = start + timeout;
    let mut last = String::from("nobody answered");
    loop {
        if crate::interrupt::requested() {
            return Err(Error::Interrupted(format!("during the rendezvous at {addr}")));
        }
        if Instant::now() >= deadline {
            return Err(Error::dist(format!(
                "rendezvous at {addr} timed out after {}: rank {} of {} could not reach rank 0 there ({last})",
                secs(timeout),
                world.rank,
                world.world_size
            )));
        }
        match connect(world, deadline) {
            Ok(s) => match exchange(s, world, timeout) {
                Ok(id) => return Ok(id),
                Err(Attempt::Retry(why)) => last = why,
                Err(Attempt::Fatal(e)) => return Err(e),
            },
            Err(why) => last = why,
        }
        std::thread::sleep(RETRY.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// One try at the rendezvous: to try again (nobody there yet, busy) or to stop.
enum Attempt {
    Retry(String),
    Fatal(Error),
}

fn connect(world: &World, deadline: Instant) -> std::result::Result<TcpStream, String> {
    let addrs = (world.master_addr.as_str(), world.master_port).to_socket_addrs().map_err(|e| format!("cannot resolve it: {e}"))?;
    let mut last = String::from("it resolves to no address");
    for a in addrs {
        let wait = deadline.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(1), Duration::from_secs(2));
        match TcpStream::connect_timeout(&a, wait) {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Hello, answer, acknowledgement over one connection.
fn exchange(mut s: TcpStream, world: &World, timeout: Duration) -> std::result::Result<UniqueId, Attempt> {
    let addr = world.address();
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(HELLO_TIMEOUT));
    let mut hello = Vec::with_capacity(HEADER + world.job_id.len());
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&VERSION.to_le_bytes());
    hello.extend_from_slice(&(world.rank as u32).to_le_bytes());
    hello.extend_from_slice(&(world.world_size as u32).to_le_bytes());
    hello.extend_from_slice(&(world.job_id.len() as u16).to_le_bytes());
    hello.extend_from_slice(world.job_id.as_bytes());
    s.write_all(&hello).map_err(|e| Attempt::Retry(format!("sending the hello: {e}")))?;

    // Every rank must arrive before the id comes: wait as long as rank 0 may.
    let mut head = [0u8; ANSWER];
    match read_full(&mut s, &mut head, Instant::now() + timeout + ANSWER_SLACK, true) {
        Ok(()) => {}
        Err(ReadEnd::Interrupted) => return Err(Attempt::Fatal(Error::Interrupted(format!("during the rendezvous at {addr}")))),
        Err(ReadEnd::Timeout(_)) => {
            return Err(Attempt::Fatal(Error::dist(format!(
                "rendezvous at {addr} timed out after {}: rank {} reached it but got no answer (is something else listening there?)",
                secs(timeout),
                world.rank
            ))));
        }
        // Closed without an answer: rank 0 restarting, or gone; try again until the deadline.
        Err(e) => return Err(Attempt::Retry(format!("it closed the connection: {}", e.describe("an answer")))),
    }
    if &head[..8] != MAGIC {
        return Err(Attempt::Fatal(Error::dist(format!("rendezvous at {addr}: what listens there is not ssl-engine's rank 0"))));
    }
    let version = u16::from_le_bytes([head[8], head[9]]);
    if version != VERSION {
        return Err(Attempt::Fatal(Error::dist(format!(
            "rendezvous at {addr}: rank 0 speaks protocol version {version}, this rank {VERSION}"
        ))));
    }
    let short = Instant::now() + HELLO_TIMEOUT;
    match head[10] {
        OK => {
            let mut id = [0u8; 128];
            read_full(&mut s, &mut id, short, true).map_err(|e| Attempt::Retry(format!("reading the id: {}", e.describe("the id"))))?;
            let mut ack = Vec::with_capacity(ACK);
            ack.extend_from_slice(MAGIC);
            ack.extend_from_slice(&VERSION.to_le_bytes());
            ack.extend_from_slice(&(world.rank as u32).to_le_bytes());
            // Rank 0 counts this rank only once it confirms; a lost confirmation is rank 0's to report.
            let _ = s.write_all(&ack);
            Ok(id)
        }
        status => {
            let text = read_text(&mut s, short);
            match status {
                REFUSED => Err(Attempt::Fatal(Error::dist(format!("rendezvous at {addr} refused rank {}: {text}", world.rank)))),
                FAILED => Err(Attempt::Fatal(Error::dist(format!("{text} (rank 0's verdict, seen by rank {})", world.rank)))),
                BUSY => Err(Attempt::Retry(format!("rank 0 was busy: {text}"))),
                s => Err(Attempt::Fatal(Error::dist(format!("rendezvous at {addr}: unknown answer {s}")))),
            }
        }
    }
}

/// The u16-length text after a refusal (at most `MAX_TEXT` bytes).
fn read_text(s: &mut TcpStream, deadline: Instant) -> String {
    let mut len = [0u8; 2];
    if read_full(s, &mut len, deadline, false).is_err() {
        return "(no reason given)".into();
    }
    let mut text = vec![0u8; (u16::from_le_bytes(len) as usize).min(MAX_TEXT)];
    if read_full(s, &mut text, deadline, false).is_err() {
        return "(reason cut short)".into();
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn answer_header(status: u8) -> Vec<u8> {
    let mut m = Vec::with_capacity(ANSWER + 128);
    m.extend_from_slice(MAGIC);
    m.extend_from_slice(&VERSION.to_le_bytes());
    m.push(status);
    m
}

fn text_answer(status: u8, text: &str) -> Vec<u8> {
    let mut t = text.as_bytes();
    t = &t[..t.len().min(MAX_TEXT)];
    let mut m = answer_header(status);
    m.extend_from_slice(&(t.len() as u16).to_le_bytes());
    m.extend_from_slice(t);
    m
}

/// Why a read stopped short.
enum ReadEnd {
    Eof(usize),
    Timeout(usize),
    Io(io::Error),
    Interrupted,
}

impl ReadEnd {
    fn describe(&self, what: &str) -> String {
        match self {
            ReadEnd::Eof(0) => format!("closed the connection before sending {what}"),
            ReadEnd::Eof(n) => format!("closed the connection after {n} bytes of {what}"),
            ReadEnd::Timeout(0) => format!("sent nothing within {}", secs(HELLO_TIMEOUT)),
            ReadEnd::Timeout(n) => format!("sent only {n} bytes of {what} within {}", secs(HELLO_TIMEOUT)),
            ReadEnd::Io(e) => format!("{e} while reading {what}"),
            ReadEnd::Interrupted => "interrupted".into(),
        }
    }
}

/// Fills `buf` by `deadline`, in short waits so that Ctrl-C is seen (when `watch_interrupt`).
fn read_full(s: &mut TcpStream, buf: &mut [u8], deadline: Instant, watch_interrupt: bool) -> std::result::Result<(), ReadEnd> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadEnd::Timeout(got));
        }
        if watch_interrupt && crate::interrupt::requested() {
            return Err(ReadEnd::Interrupted);
        }
        let _ = s.set_read_timeout(Some(left.min(Duration::from_millis(200))));
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(ReadEnd::Eof(got)),
            Ok(k) => got += k,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(ReadEnd::Io(e)),
        }
    }
    Ok(())
}

/// Whether the peer of a waiting connection is still there (no end of stream, no error).
fn alive(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let r = s.peek(&mut [0u8; 1]);
    let _ = s.set_nonblocking(false);
    match r {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// "rank 2" or "ranks 2, 3".
fn ranks(rs: &[usize]) -> String {
    let list = rs.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ");
    if rs.len() == 1 { format!("rank {list}") } else { format!("ranks {list}") }
}

/// "30 s", "2.5 s".
fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{} s", d.as_secs()) } else { format!("{:.1} s", d.as_secs_f64()) }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    /// A world of `n` on 127.0.0.1 with a free port, as rank `rank`.
    fn world(rank: usize, n: usize, port: u16, job: &str) -> World {
        World {
            rank,
            world_size: n,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            job_id: job.into(),
            source: "test",
        }
    }

    /// Rank 0's server on a free port, serving in a thread: (port, its outcome).
    fn server(n: usize, job: &str, id: UniqueId, timeout: Duration) -> (u16, thread::JoinHandle<Result<()>>) {
        let s = Server::bind(&world(0, n, 0, job)).unwrap();
        let port = s.local_addr().unwrap().port();
        (port, thread::spawn(move || s.serve(&id, timeout)))
    }

    fn hello(rank: u32, n: u32, job: &str) -> Vec<u8> {
        let mut m = MAGIC.to_vec();
        m.extend_from_slice(&VERSION.to_le_bytes());
        m.extend_from_slice(&rank.to_le_bytes());
        m.extend_from_slice(&n.to_le_bytes());
        m.extend_from_slice(&(job.len() as u16).to_le_bytes());
        m.extend_from_slice(job.as_bytes());
        m
    }

    /// Sends `msg` and returns rank 0's answer status and text.
    fn raw(port: u16, msg: &[u8]) -> (u8, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(msg).unwrap();
        let mut head = [0u8; ANSWER];
        read_full(&mut s, &mut head, Instant::now() + Duration::from_secs(10), false)
            .unwrap_or_else(|e| panic!("{}", e.describe("an answer")));
        assert_eq!(&head[..8], MAGIC);
        (head[10], read_text(&mut s, Instant::now() + Duration::from_secs(5)))
    }

    #[test]
    fn three_ranks_get_the_same_id() {
        let id = super::super::random_id();
        let (port, srv) = server(3, "job", id, Duration::from_secs(10));
        let clients: Vec<_> = (1..3).map(|r| thread::spawn(move || fetch(&world(r, 3, port, "job"), Duration::from_secs(10)))).collect();
        for c in clients {
            assert_eq!(c.join().unwrap().unwrap(), id);
        }
        srv.join().unwrap().unwrap();
    }

    #[test]
    fn strangers_and_duplicates_are_refused() {
        let id = super::super::random_id();
        let (port, srv) = server(3, "job", id, Duration::from_secs(10));
        let (st, text) = raw(port, &hello(1, 3, "other"));
        assert_eq!(st, REFUSED);
        assert!(text.contains("not this job's"), "{text}");
        let (st, text) = raw(port, &hello(1, 4, "job"));
        assert!(st == REFUSED && text.contains("has 3"), "{text}");
        for r in [0, 3, 99] {
            let (st, text) = raw(port, &hello(r, 3, "job"));
            assert!(st == REFUSED && text.contains("not one of 1..3"), "{text}");
        }
        let (st, text) = raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(st == REFUSED && text.contains("not a rendezvous message"), "{text}");
        let mut long = hello(1, 3, "job");
        long[18..20].copy_from_slice(&u16::MAX.to_le_bytes());
        let (st, text) = raw(port, &long);
        assert!(st == REFUSED && text.contains("65535 bytes"), "{text}");
        let mut v2 = hello(1, 3, "job");
        v2[8] = 9;
        let (st, text) = raw(port, &v2);
        assert!(st == REFUSED && text.contains("version 9"), "{text}");

        // Rank 1 arrives and waits; a second rank 1 is refused while it is there.
        let first = thread::spawn(move || fetch(&world(1, 3, port, "job"), Duration::from_secs(10)));
        thread::sleep(Duration::from_millis(300));
        let (st, text) = raw(port, &hello(1, 3, "job"));
        assert!(st == REFUSED && text.contains("already here"), "{text}");
        // Rank 2 completes the world; both get the id, rank 0 returns.
        assert_eq!(fetch(&world(2, 3, port, "job"), Duration::from_secs(10)).unwrap(), id);
        assert_eq!(first.join().unwrap().unwrap(), id);
        srv.join().unwrap().unwrap();
    }

    #[test]
    fn a_refused_rank_stops_at_once() {
        let (port, _srv) = server(2, "job", [1; 128], Duration::from_secs(3));
        let t = Instant::now();
        let e = fetch(&world(1, 2, port, "another"), Duration::from_secs(20)).unwrap_err().to_string();
        assert!(e.contains(&format!("rendezvous at 127.0.0.1:{port} refused rank 1")) && e.contains("not this job's"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_missing_rank_times_out_everywhere() {
        let (port, srv) = server(4, "job", [7; 128], Duration::from_millis(1500));
        let one = thread::spawn(move || fetch(&world(1, 4, port, "job"), Duration::from_millis(1500)));
        let e = srv.join().unwrap().unwrap_err();
        let want = format!("rendezvous at 127.0.0.1:{port} timed out after 1.5 s: ranks 2, 3 of 4 did not arrive");
        assert_eq!(e.to_string(), want);
        assert_eq!(e.exit_code(), 5);
        let e1 = one.join().unwrap().unwrap_err().to_string();
        assert!(e1.starts_with(&want) && e1.contains("seen by rank 1"), "{e1}");
    }

    #[test]
    fn nobody_listening_times_out_naming_the_address() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let t = Instant::now();
        let e = fetch(&world(2, 3, port, "job"), Duration::from_secs(1)).unwrap_err().to_string();
        assert!(e.starts_with(&format!("rendezvous at 127.0.0.1:{port} timed out after 1 s: rank 2 of 3 could not reach rank 0")), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn a_port_in_use_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = Server::bind(&world(0, 2, port, "job")).err().unwrap().to_string();
        assert!(e.contains(&format!("cannot listen at 127.0.0.1:{port}")) && e.contains("--master-port"), "{e}");
    }

    #[test]
    fn one_process_needs_no_network() {
        let w = world(0, 1, 1, "job");
        assert_eq!(rendezvous(&w, Duration::from_millis(1), || Ok([3; 128])).unwrap(), [3; 128]);
    }

    #[test]
    fn messages_name_ranks_and_seconds() {
        assert_eq!(ranks(&[2]), "rank 2");
        assert_eq!(ranks(&[2, 3]), "ranks 2, 3");
        assert_eq!(secs(Duration::from_secs(30)), "30 s");
        assert_eq!(secs(Duration::from_millis(2500)), "2.5 s");
    }
}
