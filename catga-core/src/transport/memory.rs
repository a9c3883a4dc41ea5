//! An in-process transport with the semantics of the NATS one.
//!
//! A [`MemoryBus`] stands for the network; each peer gets its own
//! [`MemoryTransport`] from [`MemoryBus::transport`]. Requests go to exactly one
//! peer that handles the name (round robin, like a NATS queue group); events go to
//! one peer of every service. Payloads are encoded and decoded as on the wire, and
//! each delivery runs as its own task, so tests of peer-to-peer behaviour written
//! against this bus hold against NATS too.
//!
//! ```
//! # use catga_core::{Message, Request};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Clone, Serialize, Deserialize)] struct Ping;
//! # impl Message for Ping { const NAME: &'static str = "demo.Ping"; }
//! # impl Request for Ping { type Response = String; }
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> catga_core::Result<()> {
//! use catga_core::{Catga, transport::memory::MemoryBus};
//! let bus = MemoryBus::new();
//! let server = Catga::builder()
//!     .service("pings")
//!     .transport(bus.transport())
//!     .request_fn(|_: Ping, _| async { Ok("pong".to_owned()) })
//!     .start()
//!     .await?;
//! // A client that serves nothing needs no start.
//! let client = Catga::builder().service("web").transport(bus.transport()).build()?;
//! assert_eq!(client.send(Ping).await?, "pong");
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::{Inbound, PeerSpec, Transport, WireMessage, WireReply};
use crate::backoff::Backoff;
use crate::error::{Error, ErrorKind, Result};

#[derive(Clone)]
struct Member {
    peer: Uuid,
    inbound: Arc<dyn Inbound>,
    tasks: TaskTracker,
}

#[derive(Default)]
struct Group {
    members: Vec<Member>,
    next: usize,
}

impl Group {
    fn pick(&mut self) -> Option<Member> {
        if self.members.is_empty() {
            return None;
        }
        let i = self.next % self.members.len();
        self.next = self.next.wrapping_add(1);
        Some(self.members[i].clone())
    }
}

#[derive(Default)]
struct BusState {
    /// Request name → the peers that handle it (one queue group).
    requests: HashMap<String, Group>,
    /// Event name → service → the copies of that service that handle it.
    events: HashMap<String, HashMap<String, Group>>,
}

/// The shared "network" of in-memory peers; cheap to clone.
#[derive(Clone, Default)]
pub struct MemoryBus {
    state: Arc<Mutex<BusState>>,
}

impl fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryBus")
            .field("request_names", &state.requests.len())
            .field("event_names", &state.events.len())
            .finish()
    }
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        MemoryBus::default()
    }

    /// A transport for one more peer on this bus.
    pub fn transport(&self) -> MemoryTransport {
        MemoryTransport {
            bus: self.clone(),
            me: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BusState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove(&self, peer: Uuid) {
        let mut state = self.lock();
        for group in state.requests.values_mut() {
            group.members.retain(|m| m.peer != peer);
        }
        for services in state.events.values_mut() {
            for group in services.values_mut() {
                group.members.retain(|m| m.peer != peer);
            }
        }
    }
}

/// One peer's connection to a [`MemoryBus`].
pub struct MemoryTransport {
    bus: MemoryBus,
    me: Mutex<Option<(Uuid, TaskTracker)>>,
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport").finish_non_exhaustive()
    }
}

impl Transport for MemoryTransport {
    fn request(&self, message: WireMessage, timeout: Duration) -> BoxFuture<'_, Result<WireReply>> {
        Box::pin(request_via(&self.bus, message, timeout))
    }

    /// Keeps the command in this process and offers it to a peer that handles
    /// it until one succeeds: attempts with jittered backoff (capped at 1 s)
    /// for about half a minute, so a handler that starts meanwhile gets it.
    /// In memory: lost with the process, and logged when given up.
    fn send_durable(&self, message: WireMessage) -> BoxFuture<'_, Result<()>> {
        let bus = self.bus.clone();
        tokio::spawn(async move {
            let backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
            let retry = |e: &crate::Error| e.is_retryable() || e.kind() == ErrorKind::NoHandler;
            crate::backoff::retry_in_process(&message.name, 40, backoff, retry, || async {
                // A durable command has no deadline: its attempt is waited
                // for to its end (waiting less and sending it again would
                // run it twice at once).
                request_via(&bus, message.clone(), Duration::MAX)
                    .await
                    .map(drop)
            })
            .await;
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish(&self, message: WireMessage) -> BoxFuture<'_, Result<()>> {
        let targets: Vec<Member> = self
            .bus
            .lock()
            .events
            .get_mut(&*message.name)
            .map(|services| services.values_mut().filter_map(Group::pick).collect())
            .unwrap_or_default();
        for member in targets {
            let delivery = member.inbound.event(message.clone());
            let name = message.name.clone();
            member.tasks.spawn(async move {
                if let Err(e) = delivery.await {
                    tracing::warn!(message = %name, error = %e, "event handler failed");
                }
            });
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn start(&self, peer: PeerSpec, inbound: Arc<dyn Inbound>) -> BoxFuture<'_, Result<()>> {
        let tasks = TaskTracker::new();
        let member = Member {
            peer: peer.peer_id,
            inbound,
            tasks: tasks.clone(),
        };
        {
            let mut state = self.bus.lock();
            for name in &peer.requests {
                state
                    .requests
                    .entry((*name).to_owned())
                    .or_default()
                    .members
                    .push(member.clone());
            }
            for name in &peer.events {
                state
                    .events
                    .entry((*name).to_owned())
                    .or_default()
                    .entry(peer.service.clone())
                    .or_default()
                    .members
                    .push(member.clone());
            }
        }
        *self.me.lock().unwrap_or_else(|p| p.into_inner()) = Some((peer.peer_id, tasks));
        Box::pin(std::future::ready(Ok(())))
    }

    fn shutdown(&self) -> BoxFuture<'_, Result<()>> {
        let me = self.me.lock().unwrap_or_else(|p| p.into_inner()).take();
        Box::pin(async move {
            if let Some((peer, tasks)) = me {
                self.bus.remove(peer);
                tasks.close();
                tasks.wait().await;
            }
            Ok(())
        })
    }
}

/// A request through `bus` to one peer that handles its name.
async fn request_via(
    bus: &MemoryBus,
    message: WireMessage,
    timeout: Duration,
) -> Result<WireReply> {
    let member = bus
        .lock()
        .requests
        .get_mut(&*message.name)
        .and_then(Group::pick);
    let Some(member) = member else {
        return Err(Error::new(
            ErrorKind::NoHandler,
            format!(
                "no peer handles `{}` (no responders); start a peer with a handler for it",
                message.name
            ),
        )
        .with_message_name(message.name.clone()));
    };
    let name = message.name.clone();
    let task = member.tasks.spawn(member.inbound.request(message));
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(join)) => Err(Error::transport(format!(
            "the peer handling `{name}` lost the request: {join}"
        ))
        .with_message_name(name)),
        Err(_) => Err(Error::timeout(&name, timeout)),
    }
}
