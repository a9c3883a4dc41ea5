//! `redis-server` processes: one node (optionally with AOF) or a three-master cluster.

use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

use crate::free_port;
use crate::process::{Proc, binary, redis_command};

const HINT: &str = "install redis-server, e.g. `apt-get install redis-server`";

fn spawn_redis(port: u16, dir: &std::path::Path, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(binary("redis-server", HINT));
    cmd.args(["--bind", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--daemonize", "no", "--protected-mode", "no"])
        .args(extra);
    let mut proc = Proc::spawn(&mut cmd, &dir.join("redis.log"));
    // A server that requires a password answers NOAUTH: it is up too.
    proc.wait_until("redis-server", || {
        redis_command(port, "PING")
            .is_some_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
    });
    proc
}

/// One `redis-server` on a free loopback port; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    tls_port: Option<u16>,
    aof: bool,
    proc: Proc,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// Starts a server with an append-only file synced on every write, so a
    /// restart (even after SIGKILL) keeps every acknowledged write.
    pub fn start_with_aof() -> RedisServer {
        RedisServer::start_with(true)
    }

    fn start_with(aof: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = free_port();
        let proc = spawn_redis(port, dir.path(), &aof_args(aof));
        RedisServer {
            port,
            tls_port: None,
            aof,
            proc,
            dir,
        }
    }

    /// Starts a server that requires `password` (`requirepass`): clients
    /// connect with `redis://:<password>@...` ([`RedisServer::url_with_password`]).
    pub fn start_with_password(password: &str) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = free_port();
        let proc = spawn_redis(port, dir.path(), &["--requirepass", password]);
        RedisServer {
            port,
            tls_port: None,
            aof: false,
            proc,
            dir,
        }
    }

    /// `redis://:<password>@127.0.0.1:<port>/`.
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}/", self.port)
    }

    /// Starts a server that also takes TLS connections, with the server
    /// certificate of `ca`, on [`RedisServer::tls_url`] (clients need not
    /// present a certificate). Its plain port stays open for readiness checks.
    pub fn start_tls(ca: &crate::TestCa) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (port, tls_port) = (free_port(), free_port());
        let (cert, key, root) = (ca.server_cert(), ca.server_key(), ca.ca());
        let tls = [
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-cert-file".to_owned(),
            cert.display().to_string(),
            "--tls-key-file".to_owned(),
            key.display().to_string(),
            "--tls-ca-cert-file".to_owned(),
            root.display().to_string(),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        let args: Vec<&str> = tls.iter().map(String::as_str).collect();
        let proc = spawn_redis(port, dir.path(), &args);
        RedisServer {
            port,
            tls_port: Some(tls_port),
            aof: false,
            proc,
            dir,
        }
    }

    /// `rediss://127.0.0.1:<tls port>/` of a server started with
    /// [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://127.0.0.1:{p}/"))
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Commands the server has run so far, by name (`INFO commandstats`,
    /// the `INFO` calls themselves left out); empty when it does not answer.
    pub fn command_counts(&self) -> std::collections::BTreeMap<String, u64> {
        command_calls(&crate::process::redis_info(self.port, "commandstats").unwrap_or_default())
    }

    /// The server's process id, while it runs (e.g. to read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Stops the server process (SIGSTOP): connections stay open, nothing is
    /// answered until [`RedisServer::resume`].
    pub fn pause(&self) {
        self.proc.signal("STOP");
    }

    /// Continues a paused server (SIGCONT).
    pub fn resume(&self) {
        self.proc.signal("CONT");
    }

    /// Kills the server if running and starts it again on the same port and
    /// directory (with AOF, the data survives).
    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = spawn_redis(self.port, self.dir.path(), &aof_args(self.aof));
    }
}

fn aof_args(aof: bool) -> Vec<&'static str> {
    if aof {
        vec!["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        vec!["--appendonly", "no"]
    }
}

/// Three Redis masters forming one cluster (no replicas); killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    ports: Vec<u16>,
    procs: Vec<Proc>,
    dirs: Vec<TempDir>,
}

impl RedisCluster {
    /// Starts three masters, assigns the slots and waits until the cluster is ok.
    pub fn start() -> RedisCluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let dirs: Vec<TempDir> = (0..3)
            .map(|_| tempfile::tempdir().expect("temporary directory"))
            .collect();
        let mut procs: Vec<Proc> = ports
            .iter()
            .zip(&dirs)
            .map(|(port, dir)| {
                spawn_redis(
                    *port,
                    dir.path(),
                    &["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"],
                )
            })
            .collect();
        let cli: PathBuf = binary("redis-cli", HINT);
        let mut create = Command::new(cli);
        create.arg("--cluster").arg("create");
        for p in &ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = create
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli --cluster create: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for (port, proc) in ports.iter().zip(&mut procs) {
            proc.wait_until("redis cluster state ok", || {
                redis_command(*port, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok"))
            });
        }
        RedisCluster { ports, procs, dirs }
    }

    /// `redis://127.0.0.1:<port>/` of every master.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// Number of masters.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Always false: a cluster has three masters.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Directory of master `i` (its log is `redis.log` there).
    pub fn dir(&self, i: usize) -> &std::path::Path {
        self.dirs[i].path()
    }
}

/// Calls per command in the text of `INFO commandstats`, the `INFO` command
/// itself left out (so reading the counts does not count): for tests that
/// count what a peer asks of Redis.
pub fn command_calls(info: &str) -> std::collections::BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            (name != "info").then(|| (name.to_owned(), calls))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_calls_reads_commandstats_without_info() {
        let info = "# Commandstats\r\ncmdstat_get:calls=12,usec=30,usec_per_call=2.50\r\n\
                    cmdstat_info:calls=3,usec=9\r\ncmdstat_evalsha:calls=7,usec=70\r\n";
        let calls = super::command_calls(info);
        assert_eq!(calls.get("get"), Some(&12));
        assert_eq!(calls.get("evalsha"), Some(&7));
        assert_eq!(calls.get("info"), None);
        assert_eq!(calls.len(), 2);
    }
}
