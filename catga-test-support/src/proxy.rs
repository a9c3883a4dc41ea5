//! A TCP fault proxy: put it between a peer and Redis or NATS to make the
//! connection slow, stalled or cut, as a congested or partitioned network would
//! (kernel netem is not available on the test machines).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the bytes that cross it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards everything at once.
    Pass,
    /// Holds every chunk this long before forwarding it (both directions).
    Delay(Duration),
    /// Forwards nothing and keeps the connections open: calls hang, as with a
    /// server that stopped answering. Bytes wait and flow again on `Pass`.
    Stall,
    /// Closes every open connection and every new one at once, as a network
    /// partition seen through a reset would.
    Cut,
}

#[derive(Debug)]
struct State {
    fault: Mutex<Fault>,
    /// Bumped on every `Cut`, so connections opened before it end.
    cuts: AtomicU64,
}

impl State {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A proxy on a free loopback port forwarding to `upstream`; it stops on drop.
///
/// ```no_run
/// use std::time::Duration;
/// use catga_test_support::{Fault, FaultProxy, RedisServer};
///
/// let redis = RedisServer::start();
/// let proxy = FaultProxy::start(redis.port());
/// let url = proxy.url("redis"); // connect the peer under test here
/// proxy.set(Fault::Stall); // its calls hang from now on
/// proxy.set(Fault::Pass);
/// # drop(url);
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts forwarding `127.0.0.1:<new port>` to `127.0.0.1:<upstream>`. The proxy
    /// runs on a thread of its own, so a test runtime that stalls does not
    /// stall it.
    pub fn start(upstream: u16) -> FaultProxy {
        let state = Arc::new(State {
            fault: Mutex::new(Fault::Pass),
            cuts: AtomicU64::new(0),
        });
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port for the proxy");
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = std_listener.local_addr().expect("proxy address").port();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let s = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("proxy listener");
                    let upstream: SocketAddr = ([127, 0, 0, 1], upstream).into();
                    tokio::select! {
                        () = accept(listener, upstream, s) => {}
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawn the proxy thread");
        FaultProxy {
            port,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `<scheme>://127.0.0.1:<port>`, e.g. `proxy.url("redis")`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Changes what the proxy does, at once, for open and new connections.
    pub fn set(&self, fault: Fault) {
        *self.state.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
        if fault == Fault::Cut {
            self.state.cuts.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, state: Arc<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if state.fault() == Fault::Cut {
            drop(client);
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let born = state.cuts.load(Ordering::SeqCst);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::select! {
                () = pump(cr, sw, &state, born) => {}
                () = pump(sr, cw, &state, born) => {}
            }
        });
    }
}

/// Copies one direction, applying the fault to every chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: &State,
    born: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let cut = || state.cuts.load(Ordering::SeqCst) != born;
        // A stalled proxy does not even read, so the sender's buffers fill as
        // they would behind a dead link.
        while state.fault() == Fault::Stall {
            if cut() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            () = wait_for_cut(state, born) => return,
        };
        loop {
            match state.fault() {
                Fault::Cut => return,
                Fault::Stall => tokio::time::sleep(Duration::from_millis(2)).await,
                Fault::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Fault::Pass => break,
            }
            if cut() {
                return;
            }
        }
        if cut() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn wait_for_cut(state: &State, born: u64) {
    while state.cuts.load(Ordering::SeqCst) == born {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
