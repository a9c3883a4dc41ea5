//! [`NatsTransport`]: the `Transport` of catga-core over NATS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream;
use catga_core::Result;
use catga_core::transport::{Inbound, PeerSpec, Transport, WireMessage, WireReply};
use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Gauge, Peer, ServeStats};
use crate::discovery::{self, Endpoint, Identity, Kind};
use crate::jetstream::{Stored, reliable_consumer, serve_reliable, with_retries};
use crate::options::NatsOptions;
use crate::protocol;
use crate::serve::{Reading, Serving, serve_core, serve_event, serve_request};
use crate::shared::{Running, Shared, transport_error};

/// The NATS transport: give it to `CatgaBuilder::transport`.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> catga_core::Result<()> {
/// use catga_core::Catga;
/// use catga_nats::{NatsOptions, NatsTransport};
///
/// let nats = NatsTransport::connect(NatsOptions::new(["nats://127.0.0.1:4222"])).await?;
/// let peer = Catga::builder().service("orders").transport(nats).start().await?;
/// // ...
/// peer.shutdown().await?; // drains: nothing in flight is lost
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("urls", &self.shared.options.urls)
            .field("prefix", &self.shared.options.prefix)
            .finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// Connects to NATS. Fails with a transport error when no server answers;
    /// once connected, the client reconnects by itself with backoff.
    pub async fn connect(options: NatsOptions) -> Result<NatsTransport> {
        let (client, dropped) = crate::connect::client(&options).await?;
        Ok(NatsTransport::with(client, options, dropped))
    }

    /// A transport over a client the application already has (its own
    /// connection options, authentication and event callback). `options`
    /// gives everything but the connection: subject prefix, reliable
    /// events, JetStream, admission limits; its URLs, authentication, TLS,
    /// timeouts and subscription capacity are the client's business here.
    /// [`slow_consumer_drops`](NatsTransport::slow_consumer_drops) counts
    /// nothing: the client's own event callback sees them.
    pub fn from_client(client: Client, options: NatsOptions) -> NatsTransport {
        NatsTransport::with(client, options, Arc::new(AtomicU64::new(0)))
    }

    fn with(client: Client, options: NatsOptions, dropped: Arc<AtomicU64>) -> NatsTransport {
        // JetStream API calls and publish acks must not wait forever (the client
        // itself has no request timeout: Catga passes one per request).
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        let peer = Arc::new(Peer::new(
            options.peer_max_in_flight,
            options.peer_max_in_flight_bytes,
        ));
        NatsTransport {
            shared: Arc::new(Shared {
                js,
                options,
                streams: OnceCell::new(),
                running: Mutex::new(None),
                dropped,
                peer,
                request_subjects: RwLock::default(),
                event_subjects: RwLock::default(),
                reliable_subjects: RwLock::default(),
                client,
            }),
        }
    }

    /// The underlying client, for things Catga does not cover.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Messages NATS dropped because a subscription's buffer was full.
    pub fn slow_consumer_drops(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// What this peer has in flight and what it turned away since it
    /// connected: export these as metrics.
    pub fn stats(&self) -> ServeStats {
        self.shared.peer.stats(self.slow_consumer_drops())
    }

    /// Records [`NatsTransport::stats`] through the `metrics` facade
    /// (feature `metrics`): gauges `catga_in_flight_total` and
    /// `catga_in_flight_bytes`; counters `catga_admitted_total`,
    /// `catga_shed_total`, `catga_expired_total`, `catga_panicked_total`
    /// and `catga_slow_consumer_drops_total`. Call it before rendering.
    #[cfg(feature = "metrics")]
    pub fn record_metrics(&self) {
        let s = self.stats();
        metrics::gauge!("catga_in_flight_total").set(s.in_flight as f64);
        metrics::gauge!("catga_in_flight_bytes").set(s.in_flight_bytes as f64);
        metrics::counter!("catga_admitted_total").absolute(s.admitted);
        metrics::counter!("catga_shed_total").absolute(s.shed);
        metrics::counter!("catga_expired_total").absolute(s.expired);
        metrics::counter!("catga_panicked_total").absolute(s.panicked);
        metrics::counter!("catga_slow_consumer_drops_total").absolute(s.slow_consumer_drops);
    }
}

impl Transport for NatsTransport {
    fn request(&self, message: WireMessage, timeout: Duration) -> BoxFuture<'_, Result<WireReply>> {
        self.shared.request(message, timeout)
    }

    fn publish(&self, message: WireMessage) -> BoxFuture<'_, Result<()>> {
        self.shared.publish(message)
    }

    fn send_durable(&self, message: WireMessage) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.shared.send_durable(message))
    }

    fn start(&self, peer: PeerSpec, inbound: Arc<dyn Inbound>) -> BoxFuture<'_, Result<()>> {
        Box::pin(start(self.shared.clone(), peer, inbound))
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.shared
                .client
                .flush()
                .await
                .map_err(|e| transport_error(format!("could not flush to NATS: {e}")))
        })
    }

    fn ready(&self) -> Result<()> {
        let state = self.shared.client.connection_state();
        if state != async_nats::connection::State::Connected {
            return Err(transport_error(format!("NATS is {state}, not connected")));
        }
        match self.shared.peer.dead_subscriptions.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => Err(transport_error(format!(
                "{n} NATS subscriptions stopped serving; restart this peer"
            ))),
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let running = self
                .shared
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(r) = running {
                r.shutdown.cancel();
                r.loops.close();
                r.loops.wait().await;
                r.work.close();
                r.work.wait().await;
            }
            let client = &self.shared.client;
            client
                .flush()
                .await
                .map_err(|e| transport_error(format!("could not flush NATS on shutdown: {e}")))?;
            client
                .drain()
                .await
                .map_err(|e| transport_error(format!("could not drain NATS on shutdown: {e}")))
        })
    }
}

async fn start(shared: Arc<Shared>, peer: PeerSpec, inbound: Arc<dyn Inbound>) -> Result<()> {
    for name in peer.requests.iter().chain(&peer.events) {
        catga_core::validate_name(name)?;
    }
    let running = Running {
        shutdown: CancellationToken::new(),
        loops: TaskTracker::new(),
        work: TaskTracker::new(),
    };
    let prefix = shared.prefix().to_owned();
    let tasks = shared
        .options
        .serving_tasks
        .unwrap_or_else(|| tokio::runtime::Handle::current().metrics().num_workers());
    let tasks = tasks.max(1);
    let o = &shared.options;
    let mut endpoints = Vec::new();
    for name in &peer.requests {
        let serving = Serving {
            shared: shared.clone(),
            inbound: inbound.clone(),
            name,
            gauge: Arc::new(Gauge::new(o.max_in_flight, o.max_in_flight_bytes)),
        };
        let subject = protocol::request_subject(&prefix, name);
        let group = protocol::request_group(&prefix, name);
        endpoints.push(Endpoint {
            name,
            kind: Kind::Request,
            subject: subject.clone(),
            queue_group: group.clone(),
            gauge: serving.gauge.clone(),
        });
        let reading = Reading::Always;
        subscribe(
            &running,
            tasks,
            subject,
            group,
            serving,
            reading,
            serve_request,
        )
        .await?;
    }
    // Durable commands: one work-queue consumer per command, shared by
    // every copy of the service that handles it.
    for name in &peer.durable_requests {
        serve_stored(
            &shared,
            &inbound,
            &peer,
            name,
            Stored::Command,
            &running,
            &mut endpoints,
        )
        .await?;
    }
    for name in &peer.events {
        let name: &'static str = name;
        if shared.is_reliable(name, peer.reliable_events.contains(&name)) {
            serve_stored(
                &shared,
                &inbound,
                &peer,
                name,
                Stored::Event,
                &running,
                &mut endpoints,
            )
            .await?;
        } else {
            let serving = Serving {
                shared: shared.clone(),
                inbound: inbound.clone(),
                name,
                gauge: Arc::new(Gauge::new(o.max_in_flight, o.max_in_flight_bytes)),
            };
            let subject = protocol::event_subject(&prefix, name);
            let group = peer.service.clone();
            endpoints.push(Endpoint {
                name,
                kind: Kind::Event,
                subject: subject.clone(),
                queue_group: group.clone(),
                gauge: serving.gauge.clone(),
            });
            let reading = Reading::WhileRoom;
            subscribe(
                &running,
                tasks,
                subject,
                group,
                serving,
                reading,
                serve_event,
            )
            .await?;
        }
    }
    let identity = Identity::new(&peer.service, peer.peer_id, &o.service_version);
    let answering = discovery::serve(
        shared.clone(),
        identity,
        endpoints,
        running.shutdown.clone(),
    );
    running.loops.spawn(answering.await?);
    shared
        .client
        .flush()
        .await
        .map_err(|e| transport_error(format!("cannot reach NATS: {e}")))?;
    let previous = shared
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .replace(running);
    if let Some(previous) = previous {
        previous.shutdown.cancel();
    }
    tracing::info!(service = %peer.service, requests = peer.requests.len(), events = peer.events.len(), "serving over NATS");
    Ok(())
}

/// Serves the stored messages `name` of kind `stored` from their JetStream
/// consumer (made when missing), on a task of their own, and lists them as a
/// service API endpoint.
async fn serve_stored(
    shared: &Arc<Shared>,
    inbound: &Arc<dyn Inbound>,
    peer: &PeerSpec,
    name: &'static str,
    stored: Stored,
    running: &Running,
    endpoints: &mut Vec<Endpoint>,
) -> Result<()> {
    let consumer = with_retries("JetStream setup", || async {
        shared.ensure_streams().await?;
        reliable_consumer(shared, &peer.service, name, stored).await
    })
    .await?;
    let o = &shared.options;
    let gauge = Arc::new(Gauge::new(o.max_in_flight, o.max_in_flight_bytes));
    endpoints.push(Endpoint {
        name,
        kind: stored.kind(),
        subject: stored.subject(shared.prefix(), name),
        queue_group: consumer.cached_info().name.clone(),
        gauge: gauge.clone(),
    });
    running.loops.spawn(serve_reliable(
        shared.clone(),
        inbound.clone(),
        name,
        stored,
        consumer,
        gauge,
        running.shutdown.clone(),
        running.work.clone(),
    ));
    Ok(())
}

/// Subscribes `tasks` times to `subject` in queue `group` and reads each
/// subscription on a task of its own: the runtime runs them on every core.
async fn subscribe<Fut>(
    running: &Running,
    tasks: usize,
    subject: String,
    group: String,
    serving: Serving,
    reading: Reading,
    handle: fn(&Serving, async_nats::Message) -> Fut,
) -> Result<()>
where
    Fut: Future<Output = ()> + Send + 'static,
{
    for _ in 0..tasks {
        let sub = serving
            .shared
            .client
            .queue_subscribe(subject.clone(), group.clone())
            .await
            .map_err(|e| transport_error(format!("cannot subscribe to `{subject}`: {e}")))?;
        let shutdown = running.shutdown.clone();
        let task = serve_core(sub, shutdown, serving.clone(), reading, handle);
        running.loops.spawn(task);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The per-message futures are allocated for every message: these tests keep
    //! them small. glibc serves allocations of up to 1,032 bytes from a lock-free
    //! per-thread cache; a larger one takes the arena lock and, freed on another
    //! thread, consolidates. The publish future was 5.8 KB before these tests and
    //! publishing ran at 0.75 of the bare client sending the same header; at
    //! 720 bytes it runs at 1.0.
    use super::*;
    use bytes::Bytes;
    use catga_core::Metadata;
    use catga_core::codec::Format;
    use catga_test_support::NatsServer;

    /// What glibc's per-thread cache serves (`tcache`'s largest chunk, less its
    /// header).
    const CACHED: usize = 1032;
    /// What Catga may add to the future of the async-nats call it wraps.
    const OURS: usize = 96;

    struct Answers;
    impl Inbound for Answers {
        fn request(&self, m: WireMessage) -> BoxFuture<'static, Result<WireReply>> {
            Box::pin(async move {
                Ok(WireReply {
                    payload: m.payload,
                    format: m.format,
                })
            })
        }
        fn event(&self, _: WireMessage) -> BoxFuture<'static, Result<()>> {
            Box::pin(async { Ok(()) })
        }
    }

    fn wire() -> WireMessage {
        WireMessage::new(
            "t.Size",
            Bytes::from_static(b"\x90"),
            Format::MsgPack,
            &Metadata::new(),
        )
    }

    fn message(reply: Option<&str>) -> async_nats::Message {
        async_nats::Message {
            subject: "catga.req.t.Size".into(),
            reply: reply.map(Into::into),
            payload: Bytes::from_static(b"\x90"),
            headers: None,
            status: None,
            description: None,
            length: 1,
        }
    }

    #[tokio::test]
    async fn per_message_futures_stay_small() {
        let server = NatsServer::start();
        let nats = NatsTransport::connect(NatsOptions::new([server.url().as_str()]))
            .await
            .unwrap();
        let client = nats.client();

        let publish = nats.publish(wire());
        let bare_publish = client.publish_with_headers("s", Default::default(), Bytes::new());
        let size = std::mem::size_of_val(&*publish);
        assert!(size <= CACHED, "publish future is {size} bytes");
        assert!(size <= std::mem::size_of_val(&bare_publish) + OURS);

        // async-nats's own request future is over the cached size already: ours
        // must only not add much to it.
        let request = nats.request(wire(), Duration::from_secs(1));
        let bare_request = client.send_request("s", async_nats::Request::new());
        let size = std::mem::size_of_val(&*request);
        assert!(
            size <= std::mem::size_of_val(&bare_request) + OURS,
            "request future is {size} bytes"
        );

        // Served requests and events sit in a `FuturesUnordered` slot, which
        // adds its own bookkeeping (about 64 bytes).
        let serving = Serving {
            shared: nats.shared.clone(),
            inbound: Arc::new(Answers),
            name: "t.Size",
            gauge: Arc::new(Gauge::new(10, 1000)),
        };
        let serve = serve_request(&serving, message(Some("r")));
        let size = std::mem::size_of_val(&serve);
        assert!(size + 64 <= CACHED, "serve_request future is {size} bytes");
        let serve = serve_event(&serving, message(None));
        let size = std::mem::size_of_val(&serve);
        assert!(size + 64 <= CACHED, "serve_event future is {size} bytes");
    }
}
