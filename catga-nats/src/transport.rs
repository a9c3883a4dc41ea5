//! [`NatsTransport`]: the `Transport` of catga-core over NATS.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Client, ConnectOptions, RequestErrorKind, Subject};
use catga_core::backoff::Backoff;
use catga_core::transport::{Inbound, PeerSpec, Transport, WireMessage, WireReply};
use catga_core::{Error, ErrorKind, Result};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Gauge, Peer, ServeStats};
use crate::discovery::{self, Endpoint, Identity};
use crate::jetstream::{reliable_consumer, serve_reliable, with_retries};
use crate::options::{Auth, NatsOptions};
use crate::protocol;
use crate::serve::{Reading, Serving, serve_core, serve_event, serve_request};
use crate::shared::{Running, Shared, SubjectCache, transport_error};

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
        let dropped = Arc::new(AtomicU64::new(0));
        let mut co = match &options.auth {
            Auth::None => ConnectOptions::new(),
            Auth::Token(t) => ConnectOptions::new().token(t.clone()),
            Auth::UserPassword(u, p) => {
                ConnectOptions::new().user_and_password(u.clone(), p.clone())
            }
            Auth::NKey(seed) => ConnectOptions::new().nkey(seed.clone()),
            Auth::CredentialsFile(path) => ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        format!("cannot read NATS credentials file {}: {e}", path.display()),
                    )
                })?,
        };
        if options.tls.required {
            co = co.require_tls(true);
        }
        if let Some(ca) = &options.tls.root_certificates {
            co = co.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &options.tls.client_certificate {
            co = co.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(name) = &options.name {
            co = co.name(name.clone());
        }
        let backoff = Backoff::new(Duration::from_millis(50), options.max_reconnect_delay);
        let counter = dropped.clone();
        co = co
            .subscription_capacity(options.subscription_capacity)
            .connection_timeout(options.connect_timeout)
            .request_timeout(None)
            // Full jitter, so peers cut off together do not all come back at once.
            .reconnect_delay_callback(move |attempts| {
                backoff
                    .cap(attempts.min(32) as u32)
                    .mul_f64(fastrand::f64())
            })
            .event_callback(move |event| {
                let counter = counter.clone();
                async move {
                    match event {
                        async_nats::Event::SlowConsumer(sid) => {
                            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                            tracing::warn!(
                                sid,
                                dropped_total = n,
                                "NATS dropped a message for a slow consumer: raise \
                                 subscription_capacity or max_in_flight, or use reliable events"
                            );
                        }
                        async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                        async_nats::Event::Connected => tracing::info!("connected to NATS"),
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                }
            });
        let client = co.connect(options.urls.clone()).await.map_err(|e| {
            transport_error(format!(
                "cannot connect to NATS at {:?}: {e}; is nats-server running?",
                options.urls
            ))
        })?;
        // JetStream API calls and publish acks must not wait forever (the client
        // itself has no request timeout: Catga passes one per request).
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        let peer = Arc::new(Peer::new(
            options.peer_max_in_flight,
            options.peer_max_in_flight_bytes,
        ));
        Ok(NatsTransport {
            shared: Arc::new(Shared {
                js,
                options,
                streams: OnceCell::new(),
                running: Mutex::new(None),
                dropped,
                peer,
                request_subjects: RwLock::default(),
                event_subjects: RwLock::default(),
                client,
            }),
        })
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
}

impl Shared {
    /// The subject `make` builds for `name`, from `cache` when the name is
    /// static (hence the `Cow`: only a borrowed `'static` name can key it).
    #[allow(clippy::ptr_arg)]
    fn subject(
        &self,
        cache: &RwLock<SubjectCache>,
        make: fn(&str, &str) -> String,
        name: &Cow<'static, str>,
    ) -> Subject {
        let &Cow::Borrowed(name) = name else {
            return make(self.prefix(), name).into();
        };
        let cached = cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        cached.unwrap_or_else(|| {
            let subject: Subject = make(self.prefix(), name).into();
            cache
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name, subject.clone());
            subject
        })
    }

    /// The NATS headers (with the current trace context) and the subject of an
    /// outgoing message.
    fn outgoing(
        &self,
        msg: &mut WireMessage,
        cache: &RwLock<SubjectCache>,
        make: fn(&str, &str) -> String,
    ) -> Result<(async_nats::HeaderMap, Subject)> {
        with_current_trace(msg);
        let headers =
            protocol::to_headers(msg).map_err(|e| e.with_message_name(msg.name.clone()))?;
        Ok((headers, self.subject(cache, make, &msg.name)))
    }

    /// Sends a request. The headers, subject and payload are prepared before the
    /// returned future exists, so the future holds little beyond async-nats's
    /// own (it is boxed for every request: its size is an allocation's size).
    fn request(&self, mut msg: WireMessage, timeout: Duration) -> BoxFuture<'_, Result<WireReply>> {
        let (headers, subject) =
            match self.outgoing(&mut msg, &self.request_subjects, protocol::request_subject) {
                Ok(prepared) => prepared,
                Err(e) => return Box::pin(std::future::ready(Err(e))),
            };
        let WireMessage { name, payload, .. } = msg;
        let size = payload.len();
        let request = async_nats::Request::new()
            .payload(payload)
            .headers(headers)
            .timeout(Some(timeout));
        // `map`, not an async block: one awaiting a captured future stores it twice.
        Box::pin(
            self.client
                .send_request(subject, request)
                .map(move |sent| match sent {
                    Ok(reply) => {
                        protocol::parse_reply(&name, reply.headers.as_ref(), reply.payload)
                    }
                    Err(e) => Err(self.request_error(name, size, timeout, e)),
                }),
        )
    }

    /// The error of a request that got no reply. Off the hot path: builds the
    /// subject again for the message rather than keeping it in the future.
    #[cold]
    fn request_error(
        &self,
        name: Cow<'static, str>,
        size: usize,
        timeout: Duration,
        e: async_nats::RequestError,
    ) -> Error {
        let subject = || protocol::request_subject(self.prefix(), &name);
        match e.kind() {
            RequestErrorKind::NoResponders => Error::new(
                ErrorKind::NoHandler,
                format!(
                    "no peer handles `{name}` (no responders on `{}`); start a peer \
                     with a handler for it",
                    subject()
                ),
            ),
            RequestErrorKind::TimedOut => Error::timeout(&name, timeout),
            RequestErrorKind::MaxPayloadExceeded => Error::new(
                ErrorKind::Transport,
                format!(
                    "`{name}` is {size} bytes, over the NATS server's max_payload; send a \
                     reference to the data instead, or raise max_payload"
                ),
            )
            .with_retryable(false),
            _ => transport_error(format!("request `{name}` on `{}` failed: {e}", subject())),
        }
        .with_message_name(name)
    }

    /// Publishes an event: on core NATS, or through JetStream when its type is
    /// reliable. As with requests, the core future holds only async-nats's own.
    fn publish(&self, mut msg: WireMessage) -> BoxFuture<'_, Result<()>> {
        let reliable = self.is_reliable(&msg.name);
        if reliable {
            // A stored event is worth handling whenever it is delivered: it
            // carries no deadline that would make its redeliveries expire.
            msg.timeout = None;
        }
        let (headers, subject) =
            match self.outgoing(&mut msg, &self.event_subjects, protocol::event_subject) {
                Ok(prepared) => prepared,
                Err(e) => return Box::pin(std::future::ready(Err(e))),
            };
        if reliable {
            return Box::pin(self.publish_reliable(msg, subject, headers));
        }
        let WireMessage { name, payload, .. } = msg;
        let size = payload.len();
        Box::pin(
            self.client
                .publish_with_headers(subject, headers, payload)
                .map(move |sent| {
                    sent.map_err(|e| {
                        let why = if e.kind()
                            == async_nats::client::PublishErrorKind::MaxPayloadExceeded
                        {
                            format!("{size} bytes is over the server's max_payload")
                        } else {
                            e.to_string()
                        };
                        self.publish_error(name, why)
                    })
                }),
        )
    }

    #[cold]
    pub(crate) fn publish_error(&self, name: Cow<'static, str>, why: String) -> Error {
        let subject = protocol::event_subject(self.prefix(), &name);
        transport_error(format!("could not publish `{name}` on `{subject}`: {why}"))
            .with_message_name(name)
    }
}

impl Transport for NatsTransport {
    fn request(&self, message: WireMessage, timeout: Duration) -> BoxFuture<'_, Result<WireReply>> {
        self.shared.request(message, timeout)
    }

    fn publish(&self, message: WireMessage) -> BoxFuture<'_, Result<()>> {
        self.shared.publish(message)
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
            kind: "request",
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
    for name in &peer.events {
        let name: &'static str = name;
        if shared.is_reliable(name) {
            let consumer = with_retries("JetStream setup", || async {
                shared.ensure_streams().await?;
                reliable_consumer(&shared, &peer.service, name).await
            })
            .await?;
            running.loops.spawn(serve_reliable(
                shared.clone(),
                inbound.clone(),
                name,
                consumer,
                running.shutdown.clone(),
                running.work.clone(),
            ));
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
                kind: "event",
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

/// With the `otel` feature: the current span's OpenTelemetry context becomes the
/// message's `traceparent` (over one inherited from an incoming message).
fn with_current_trace(msg: &mut WireMessage) {
    #[cfg(feature = "otel")]
    if let Some(tp) = crate::otel::current_traceparent() {
        msg.headers.insert(protocol::header::TRACEPARENT, tp);
    }
    #[cfg(not(feature = "otel"))]
    let _ = msg;
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
