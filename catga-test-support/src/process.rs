//! Spawning, waiting for and killing server processes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections on a slow, busy machine.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds `name` on `PATH`, or panics with an install hint.
pub(crate) fn binary(name: &str, hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` was not found on PATH; {hint} (scripts/test.sh installs it)");
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(cmd: &mut Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create log {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc {
            child: Some(child),
            log: log.to_owned(),
        }
    }

    /// Kills the process at once (SIGKILL) and waits for it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `sig` (e.g. `"STOP"`, `"CONT"`) to the process.
    pub(crate) fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            signal(child.id(), sig);
        }
    }

    pub(crate) fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until `ready` holds, panicking with the log when the process dies
    /// or the time runs out.
    pub(crate) fn wait_until(&mut self, what: &str, ready: impl FnMut() -> bool) {
        if let Err(e) = self.try_wait_until(what, ready) {
            panic!("{e}");
        }
    }

    /// Like [`Proc::wait_until`], returning what went wrong (with the log)
    /// instead of panicking, so a caller can start again on other ports.
    pub(crate) fn try_wait_until(
        &mut self,
        what: &str,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ready() {
                return Ok(());
            }
            if !self.is_running() {
                return Err(format!(
                    "{what}: the process exited; its log:\n{}",
                    self.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{what}: not ready after {START_TIMEOUT:?}; log:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends signal `sig` (a name `kill` knows: `STOP`, `CONT`, `TERM`, `KILL`) to
/// process `pid`: how tests pause a process past its timeouts and leases
/// (`STOP`) and resume it (`CONT`).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("kill -{sig} {pid} failed");
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port`: the status code and the body, or
/// `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

/// Sends one inline command to a Redis server and returns the first reply line.
pub(crate) fn redis_command(port: u16, command: &str) -> Option<String> {
    let mut s = redis_send(port, command)?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Sends `INFO <section>` to a Redis server and returns the whole reply text
/// (read to its announced length, however long).
pub(crate) fn redis_info(port: u16, section: &str) -> Option<String> {
    let mut s = redis_send(port, &format!("INFO {section}"))?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buf[..n]);
        // `$<length>\r\n<text>\r\n`
        let text = String::from_utf8_lossy(&reply);
        let (head, body) = text.split_once("\r\n")?;
        let length: usize = head.strip_prefix('$')?.parse().ok()?;
        if body.len() >= length {
            return Some(body[..length].to_owned());
        }
    }
}

/// Connects to a Redis server on loopback and sends one inline command.
fn redis_send(port: u16, command: &str) -> Option<TcpStream> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "{command}\r\n").ok()?;
    Some(s)
}
