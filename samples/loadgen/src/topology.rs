//! The docker-compose topology without Docker: a 3-node NATS cluster with
//! JetStream, Redis with AOF, and N copies of each shop service, all as
//! processes on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use catga_test_support::{NatsCluster, RedisServer, free_port};

/// One of the shop's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `order-service` (HTTP entry, payment saga).
    Order,
    /// `inventory-service`.
    Inventory,
    /// `payment-service`.
    Payment,
}

impl Role {
    /// The binary's name.
    pub fn binary(self) -> &'static str {
        match self {
            Role::Order => "order-service",
            Role::Inventory => "inventory-service",
            Role::Payment => "payment-service",
        }
    }
}

/// A running copy of a service.
#[derive(Debug)]
pub struct Copy {
    /// Which service.
    pub role: Role,
    /// Its HTTP port.
    pub port: u16,
    child: Option<Child>,
}

impl Copy {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether the process is still there.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The leader-only tasks this copy runs now (from `/ops/leading`).
    pub fn leading(&self) -> Vec<String> {
        catga_test_support::http_get(self.port, "/ops/leading")
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no hand-over, nothing flushed.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for a clean exit (SIGKILL after).
    /// Returns whether it exited cleanly with status 0.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        loop {
            match c.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// NATS cluster, Redis and the service copies; everything stops on drop.
#[derive(Debug)]
pub struct Topology {
    /// The NATS cluster.
    pub nats: NatsCluster,
    /// Redis (with AOF).
    pub redis: RedisServer,
    /// Every service copy.
    pub copies: Vec<Copy>,
    logs: tempfile::TempDir,
}

/// Where the service binaries are: next to the running executable (cargo puts
/// a workspace's binaries in one directory), or `CATGA_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CATGA_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test binaries live in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::env::var_os("CATGA_KEEP_LOGS").is_some() {
            self.logs.disable_cleanup(true);
            eprintln!("service logs kept in {}", self.logs.path().display());
        }
    }
}

impl Topology {
    /// Starts NATS (3 nodes), Redis and `copies` copies of each service, and
    /// waits until every copy reports ready.
    pub fn start(bins: &Path, copies: usize, seed_stock: &str) -> Result<Topology, String> {
        for role in [Role::Order, Role::Inventory, Role::Payment] {
            let bin = bins.join(role.binary());
            if !bin.is_file() {
                return Err(format!(
                    "{} not found: build the services first (cargo build -p order-service \
                     -p inventory-service -p payment-service) or set CATGA_BIN_DIR",
                    bin.display()
                ));
            }
        }
        let nats = NatsCluster::start();
        let redis = RedisServer::start_with_aof();
        let logs = tempfile::Builder::new()
            .prefix("catga-shop-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut topology = Topology {
            nats,
            redis,
            copies: Vec::new(),
            logs,
        };
        for role in [Role::Inventory, Role::Payment, Role::Order] {
            for i in 0..copies {
                let copy = topology.spawn(bins, role, i, seed_stock)?;
                topology.copies.push(copy);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for copy in &mut topology.copies {
            while !ready(copy.port) {
                if !copy.is_running() {
                    return Err(format!(
                        "{} on port {} exited while starting",
                        copy.role.binary(),
                        copy.port
                    ));
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} on port {} never got ready",
                        copy.role.binary(),
                        copy.port
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(topology)
    }

    fn spawn(&self, bins: &Path, role: Role, i: usize, seed_stock: &str) -> Result<Copy, String> {
        let port = free_port();
        let log = self.logs.path().join(format!("{}-{i}.log", role.binary()));
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bins.join(role.binary()))
            .env("CATGA_NATS_URL", self.nats.urls().join(","))
            .env("CATGA_REDIS_URL", self.redis.url())
            .env("CATGA_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("CATGA_SEED_STOCK", seed_stock)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", role.binary()))?;
        Ok(Copy {
            role,
            port,
            child: Some(child),
        })
    }

    /// URLs of the order-service copies (the HTTP entries).
    pub fn order_urls(&self) -> Vec<String> {
        self.copies
            .iter()
            .filter(|c| c.role == Role::Order)
            .map(Copy::url)
            .collect()
    }

    /// The `n`-th copy of `role`.
    pub fn copy(&mut self, role: Role, n: usize) -> Option<&mut Copy> {
        self.copies.iter_mut().filter(|c| c.role == role).nth(n)
    }

    /// Where the service logs are (removed on drop unless `CATGA_KEEP_LOGS` is set).
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// Stops every copy with SIGTERM; returns how many exited cleanly.
    pub fn stop(&mut self) -> usize {
        self.copies
            .iter_mut()
            .filter(|c| c.child.is_some())
            .map(|c| c.stop(Duration::from_secs(20)))
            .filter(|ok| *ok)
            .count()
    }
}

/// Whether `GET /health/ready` answers 200.
fn ready(port: u16) -> bool {
    catga_test_support::http_get(port, "/health/ready").is_some_and(|(status, _)| status == 200)
}
