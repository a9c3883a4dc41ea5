//! [`NatsTransport`]: the `Transport` of catga-core over NATS.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{self, AckKind, stream};
use async_nats::{Client, ConnectOptions, RequestErrorKind, Subject, Subscriber};
use bytes::Bytes;
use catga_core::transport::{
    DEFAULT_REQUEST_TIMEOUT, Inbound, PeerSpec, Transport, WireMessage, WireReply,
};
use catga_core::{Error, ErrorKind, Result};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::options::{Auth, NatsOptions};
use crate::protocol::{self, header};

/// The NATS transport: give it to `CatgaBuilder::transport`.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> catga_core::Result<()> {
/// use catga_core::Catga;
/// use catga_nats::{NatsOptions, NatsTransport};
///
/// let nats = NatsTransport::connect(NatsOptions::new(["nats://127.0.0.1:4222"])).await?;
/// let mediator = Catga::builder().service("orders").transport(nats).build()?;
/// mediator.start().await?;
/// // ...
/// mediator.shutdown().await?; // drains: nothing in flight is lost
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsTransport {
    shared: Arc<Shared>,
}

/// Subjects by message name; foldhash, as SipHash showed in the publish
/// profile (names are our own, not attacker-chosen keys).
type SubjectCache = HashMap<&'static str, Subject, foldhash::fast::RandomState>;

struct Shared {
    client: Client,
    js: jetstream::Context,
    options: NatsOptions,
    streams: OnceCell<()>,
    running: Mutex<Option<Running>>,
    dropped: Arc<AtomicU64>,
    /// Request subjects by message name, built once (cloning one is a
    /// reference-count increment).
    request_subjects: RwLock<SubjectCache>,
    /// Event subjects by message name, likewise.
    event_subjects: RwLock<SubjectCache>,
}

struct Running {
    shutdown: CancellationToken,
    loops: TaskTracker,
    work: TaskTracker,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("urls", &self.shared.options.urls)
            .field("prefix", &self.shared.options.prefix)
            .finish_non_exhaustive()
    }
}

fn transport_error(what: impl std::fmt::Display) -> Error {
    Error::transport(what.to_string())
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
        let max_delay = options.max_reconnect_delay;
        let counter = dropped.clone();
        co = co
            .subscription_capacity(options.subscription_capacity)
            .connection_timeout(options.connect_timeout)
            .request_timeout(None)
            .reconnect_delay_callback(move |attempts| {
                let base = Duration::from_millis(50)
                    .saturating_mul(2u32.saturating_pow(attempts.min(16) as u32))
                    .min(max_delay);
                base.mul_f64(0.5 + fastrand::f64() * 0.5)
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
        Ok(NatsTransport {
            shared: Arc::new(Shared {
                js,
                options,
                streams: OnceCell::new(),
                running: Mutex::new(None),
                dropped,
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
}

impl Shared {
    fn prefix(&self) -> &str {
        &self.options.prefix
    }

    fn is_reliable(&self, name: &str) -> bool {
        !self.options.reliable.is_empty() && self.options.reliable.contains(name)
    }

    /// Creates the event and dead-letter streams if missing.
    async fn ensure_streams(&self) -> Result<()> {
        self.streams
            .get_or_try_init(|| async {
                let o = &self.options;
                let js = &o.jetstream;
                let replicas = js.replicas.unwrap_or_else(|| {
                    // The server lists the other nodes' client URLs with its own.
                    let nodes = self.client.server_info().connect_urls.len();
                    nodes.clamp(1, 3)
                });
                for (name, subject) in [
                    (o.stream_name(), format!("{}.evt.>", o.prefix)),
                    (o.dead_letter_stream_name(), format!("{}.dlq.>", o.prefix)),
                ] {
                    self.js
                        .get_or_create_stream(stream::Config {
                            name: name.clone(),
                            subjects: vec![subject],
                            max_age: js.max_age,
                            duplicate_window: js.duplicate_window,
                            num_replicas: replicas,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| {
                            transport_error(format!("cannot create JetStream stream `{name}`: {e}"))
                        })?;
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

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
        msg.timeout = protocol::request_timeout_on_wire(msg.timeout);
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
        let (headers, subject) =
            match self.outgoing(&mut msg, &self.event_subjects, protocol::event_subject) {
                Ok(prepared) => prepared,
                Err(e) => return Box::pin(std::future::ready(Err(e))),
            };
        if self.is_reliable(&msg.name) {
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

    /// Publishes through JetStream and waits for the stream's ack; the message id
    /// doubles as `Nats-Msg-Id`, so the stream drops a republished duplicate.
    async fn publish_reliable(
        &self,
        msg: WireMessage,
        subject: Subject,
        mut headers: async_nats::HeaderMap,
    ) -> Result<()> {
        self.ensure_streams().await?;
        headers.insert(header::NATS_MSG_ID, protocol::uuid_value(msg.message_id));
        let acked = match self
            .js
            .publish_with_headers(subject, headers, msg.payload)
            .await
        {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        acked.map_err(|why| self.publish_error(msg.name, why))
    }

    #[cold]
    fn publish_error(&self, name: Cow<'static, str>, why: String) -> Error {
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
    let subscribe_error = |subject: &str, e: async_nats::SubscribeError| {
        transport_error(format!("cannot subscribe to `{subject}`: {e}"))
    };
    for name in &peer.requests {
        let subject = protocol::request_subject(&prefix, name);
        let sub = shared
            .client
            .queue_subscribe(subject.clone(), protocol::request_group(&prefix, name))
            .await
            .map_err(|e| subscribe_error(&subject, e))?;
        let (shared2, inbound) = (shared.clone(), inbound.clone());
        let name: &'static str = name;
        running.loops.spawn(serve_core(
            sub,
            &running,
            shared.options.max_in_flight,
            move |msg| serve_request(shared2.clone(), inbound.clone(), name, msg),
        ));
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
            let subject = protocol::event_subject(&prefix, name);
            let sub = shared
                .client
                .queue_subscribe(subject.clone(), peer.service.clone())
                .await
                .map_err(|e| subscribe_error(&subject, e))?;
            let inbound = inbound.clone();
            running.loops.spawn(serve_core(
                sub,
                &running,
                shared.options.max_in_flight,
                move |msg| serve_event(inbound.clone(), name, msg),
            ));
        }
    }
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

/// Retries a setup step while JetStream is still forming (a cluster electing its
/// meta leader answers nothing for a moment), for up to a minute.
async fn with_retries<T, F, Fut>(what: &str, mut step: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut wait = Duration::from_millis(100);
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, ?wait, "{what} failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads a core subscription, running at most `max_in_flight` handlers at once
/// on this task (no spawn per message); on shutdown, drains the subscription and
/// still handles what was already delivered.
fn serve_core<Fut>(
    mut sub: Subscriber,
    running: &Running,
    max_in_flight: usize,
    handle: impl Fn(async_nats::Message) -> Fut + Send + Sync + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let shutdown = running.shutdown.clone();
    async move {
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                () = shutdown.cancelled(), if open => {
                    open = false;
                    if let Err(e) = sub.drain().await {
                        tracing::warn!(error = %e, "could not drain a NATS subscription");
                    }
                }
                msg = sub.next(), if in_flight.len() < max_in_flight => match msg {
                    Some(m) => in_flight.push(handle(m)),
                    None => break,
                },
            }
        }
        while in_flight.next().await.is_some() {}
    }
}

/// With the `otel` feature: the current span's OpenTelemetry context becomes the
/// message's `traceparent` (over one inherited from an incoming message).
fn with_current_trace(msg: &mut WireMessage) {
    #[cfg(feature = "otel")]
    if let Some(tp) = crate::otel::current_traceparent() {
        msg.headers.insert(header::TRACEPARENT, tp);
    }
    #[cfg(not(feature = "otel"))]
    let _ = msg;
}

/// The span a received message is handled in: its name, ids and trace context.
/// Field values are only formatted when a subscriber records the span. With the
/// `otel` feature, a `traceparent` sent by the caller is the span's parent.
fn receive_span(name: &str, wire: &Result<WireMessage>) -> tracing::Span {
    match wire {
        Ok(w) => {
            let span = tracing::info_span!(
                "catga.receive",
                message = name,
                message_id = %w.message_id,
                correlation_id = %w.correlation_id,
                traceparent = %protocol::Traceparent(w),
            );
            #[cfg(feature = "otel")]
            if let Some(tp) = w.headers.get(header::TRACEPARENT) {
                crate::otel::set_remote_parent(&span, tp);
            }
            span
        }
        Err(_) => tracing::info_span!("catga.receive", message = name),
    }
}

/// Handles one request and sends the reply. What can be done before the
/// handler runs is done here, outside the returned future, which every request
/// allocates (in a `FuturesUnordered` slot): it stays small enough for the
/// allocator's per-thread cache.
fn serve_request(
    shared: Arc<Shared>,
    inbound: Arc<dyn Inbound>,
    name: &'static str,
    msg: async_nats::Message,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let wire = protocol::from_nats(name, msg.headers.as_ref(), msg.payload);
    let span = receive_span(name, &wire);
    let handled = msg.reply.map(|reply_to| {
        let handling = match wire {
            Ok(mut wire) => {
                // No timeout on the wire: the sender waits the default.
                wire.timeout.get_or_insert(DEFAULT_REQUEST_TIMEOUT);
                span.in_scope(|| inbound.request(wire))
            }
            Err(e) => Box::pin(std::future::ready(Err(e))),
        };
        (reply_to, handling)
    });
    async move {
        let Some((reply_to, handling)) = handled else {
            tracing::warn!(
                message = name,
                "request without a reply subject; nothing to answer"
            );
            return;
        };
        let (headers, payload) = reply(&shared.client, name, handling.await);
        // Empty headers go out as a plain PUB.
        let sent = shared
            .client
            .publish_with_headers(reply_to, headers.unwrap_or_default(), payload)
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not send the reply; the caller will time out");
        }
    }
    .instrument(span)
}

/// The reply to a handled request: the response, or the error, or an error
/// saying the response is too large for the server.
fn reply(
    client: &Client,
    name: &str,
    result: Result<WireReply>,
) -> (Option<async_nats::HeaderMap>, Bytes) {
    let reply = match result {
        Ok(reply) => protocol::reply_ok(reply),
        Err(e) => {
            tracing::debug!(error = %e, "request failed");
            let (h, p) = protocol::reply_err(&e);
            (Some(h), p)
        }
    };
    // Headers count towards max_payload too. The limit is the server's of the
    // current connection (it may change on reconnect).
    let max_payload = client.max_payload();
    let headers = reply.0.as_ref().map_or(0, protocol::header_bytes);
    if reply.1.len() + headers <= max_payload {
        return reply;
    }
    tracing::warn!(
        bytes = reply.1.len(),
        "the reply is over the server's max_payload"
    );
    let (h, p) = protocol::reply_err(
        &Error::transport(format!(
            "the reply to `{name}` is {} bytes, over the NATS server's max_payload ({}); \
             reply with a reference to the data instead, or raise max_payload",
            reply.1.len(),
            max_payload
        ))
        .with_retryable(false),
    );
    (Some(h), p)
}

/// Handles one core event (prepared outside the future, as for requests).
fn serve_event(
    inbound: Arc<dyn Inbound>,
    name: &'static str,
    msg: async_nats::Message,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let wire = protocol::from_nats(name, msg.headers.as_ref(), msg.payload);
    let span = receive_span(name, &wire);
    let handling = match wire {
        Ok(wire) => span.in_scope(|| inbound.event(wire)),
        Err(e) => Box::pin(std::future::ready(Err(e))),
    };
    async move {
        if let Err(e) = handling.await {
            tracing::warn!(error = %e, "event handling failed (core events are not redelivered)");
        }
    }
    .instrument(span)
}

fn durable_name(service: &str, name: &str) -> String {
    format!("{service}__{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

async fn reliable_consumer(
    shared: &Shared,
    service: &str,
    name: &str,
) -> Result<jetstream::consumer::PullConsumer> {
    let o = &shared.options;
    let stream = o.stream_name();
    let durable = durable_name(service, name);
    let stream_handle =
        shared.js.get_stream(&stream).await.map_err(|e| {
            transport_error(format!("cannot open JetStream stream `{stream}`: {e}"))
        })?;
    stream_handle
        .get_or_create_consumer(
            &durable,
            pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: protocol::event_subject(&o.prefix, name),
                ack_policy: AckPolicy::Explicit,
                ack_wait: o.jetstream.ack_wait,
                // Catga dead-letters after `max_deliveries`; the server limit is a
                // safety net for peers that crash on every delivery.
                max_deliver: i64::from(o.jetstream.max_deliveries) + 2,
                max_ack_pending: o.max_in_flight as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| transport_error(format!("cannot create JetStream consumer `{durable}`: {e}")))
}

async fn serve_reliable(
    shared: Arc<Shared>,
    inbound: Arc<dyn Inbound>,
    name: &'static str,
    consumer: jetstream::consumer::PullConsumer,
    shutdown: CancellationToken,
    work: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(shared.options.max_in_flight));
    while !shutdown.is_cancelled() {
        let batch = shared.options.max_in_flight.min(256);
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(event = name, error = %e, "cannot pull from JetStream; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(msg)) => {
                    let Ok(permit) = limit.clone().acquire_owned().await else {
                        return;
                    };
                    let (shared, inbound) = (shared.clone(), inbound.clone());
                    work.spawn(async move {
                        handle_reliable(&shared, &*inbound, name, msg).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(event = name, error = %e, "JetStream pull interrupted; resuming");
                    break;
                }
                None => break,
            }
        }
    }
}

async fn handle_reliable(
    shared: &Shared,
    inbound: &dyn Inbound,
    name: &'static str,
    msg: jetstream::Message,
) {
    let wire = protocol::from_nats(name, msg.headers.as_ref(), msg.payload.clone());
    let span = receive_span(name, &wire);
    async move {
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1).max(1) as u32;
        let result = match wire {
            Ok(wire) => inbound.event(wire).await,
            Err(e) => Err(e),
        };
        let js = &shared.options.jetstream;
        let ack = match result {
            Ok(()) => msg.ack().await,
            Err(e) if e.is_retryable() && delivered < js.max_deliveries => {
                let delay = js
                    .backoff
                    .saturating_mul(2u32.saturating_pow(delivered - 1))
                    .min(js.max_backoff);
                tracing::warn!(error = %e, delivered, ?delay, "event failed; redelivering later");
                msg.ack_with(AckKind::Nak(Some(delay))).await
            }
            Err(e) => match dead_letter(shared, name, &msg, &e, delivered).await {
                Ok(()) => {
                    tracing::error!(error = %e, delivered, "event dead-lettered");
                    msg.ack_with(AckKind::Term).await
                }
                Err(dl) => {
                    tracing::error!(error = %dl, "could not dead-letter; redelivering");
                    msg.ack_with(AckKind::Nak(Some(js.max_backoff))).await
                }
            },
        };
        if let Err(e) = ack {
            tracing::warn!(error = %e, "could not acknowledge; JetStream will redeliver");
        }
    }
    .instrument(span)
    .await;
}

async fn dead_letter(
    shared: &Shared,
    name: &str,
    msg: &jetstream::Message,
    error: &Error,
    delivered: u32,
) -> Result<()> {
    let mut headers = msg.headers.clone().unwrap_or_default();
    headers.insert(header::NAME, name);
    let one_line: String = error
        .message()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    headers.insert(header::ERROR_KIND, error.kind().as_str());
    if let Some(code) = error
        .code()
        .and_then(|c| c.parse::<async_nats::HeaderValue>().ok())
    {
        headers.insert(header::ERROR_CODE, code);
    }
    if let Ok(v) = one_line.parse::<async_nats::HeaderValue>() {
        headers.insert(header::ERROR_MESSAGE, v);
    }
    headers.insert(header::DELIVERIES, delivered.to_string().as_str());
    if let Some(service) = msg
        .info()
        .ok()
        .map(|i| i.consumer.to_owned())
        .and_then(|c| c.parse::<async_nats::HeaderValue>().ok())
    {
        headers.insert(header::FAILED_SERVICE, service);
    }
    // The dead-letter entry is a new message: dedup must not swallow it.
    headers.insert(
        header::NATS_MSG_ID,
        format!("dlq-{}", catga_core::new_id()).as_str(),
    );
    let subject = protocol::dead_letter_subject(shared.prefix(), name);
    let payload: Bytes = msg.payload.clone();
    shared
        .js
        .publish_with_headers(subject.clone(), headers, payload)
        .await
        .map_err(|e| transport_error(format!("dead-letter publish to `{subject}`: {e}")))?
        .await
        .map_err(|e| transport_error(format!("dead-letter ack from `{subject}`: {e}")))?;
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
        let inbound: Arc<dyn Inbound> = Arc::new(Answers);
        let serve = serve_request(
            nats.shared.clone(),
            inbound.clone(),
            "t.Size",
            message(Some("r")),
        );
        let size = std::mem::size_of_val(&serve);
        assert!(size + 64 <= CACHED, "serve_request future is {size} bytes");
        let serve = serve_event(inbound, "t.Size", message(None));
        let size = std::mem::size_of_val(&serve);
        assert!(size + 64 <= CACHED, "serve_event future is {size} bytes");
    }
}
