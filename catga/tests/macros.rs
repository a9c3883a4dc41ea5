//! The derive and handler macros, end to end.

use std::sync::Mutex;

use catga::{
    Catga, Context, ErrorKind, Event, EventHandler, Message, Request, RequestHandler, Result,
    handler,
};
use catga_fixture_handlers::{Double, Noted};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "orders.CreateOrder", response = u64)]
struct CreateOrder {
    qty: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(response = ())]
struct Ping;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(name = "orders.OrderCreated")]
struct OrderCreated {
    id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "orders.Explicit", response = String)]
struct Explicit;

#[handler]
async fn create_order(cmd: &CreateOrder, ctx: &Context) -> Result<u64> {
    let id = u64::from(cmd.qty) * 10;
    ctx.publish(OrderCreated { id }).await?;
    Ok(id)
}

#[handler]
async fn ping(_: &Ping, _: &Context) -> catga::Result<()> {
    Ok(())
}

#[derive(Default)]
struct Audit;

#[handler]
impl EventHandler<OrderCreated> for Audit {
    async fn handle(&self, e: &OrderCreated, ctx: &Context) -> Result<()> {
        ctx.resource::<Mutex<Vec<String>>>()?
            .lock()
            .unwrap()
            .push(format!("created {}", e.id));
        Ok(())
    }
}

struct ExplicitHandler;
impl RequestHandler<Explicit> for ExplicitHandler {
    async fn handle(&self, _: &Explicit, _: &Context) -> Result<String> {
        Ok("explicit".into())
    }
}

/// A second handler of `CreateOrder`, registered explicitly to clash.
struct RivalCreateOrder;
impl RequestHandler<CreateOrder> for RivalCreateOrder {
    async fn handle(&self, _: &CreateOrder, _: &Context) -> Result<u64> {
        Ok(0)
    }
}

fn log() -> Mutex<Vec<String>> {
    Mutex::new(Vec::new())
}

#[test]
fn derives_set_names_and_responses() {
    assert_eq!(CreateOrder::NAME, "orders.CreateOrder");
    assert_eq!(OrderCreated::NAME, "orders.OrderCreated");
    assert_eq!(Ping::NAME, "Ping", "the default name is the type's name");
    fn response_is<R: Request<Response = u64>>() {}
    response_is::<CreateOrder>();
}

#[tokio::test]
async fn auto_registered_handlers_round_trip() {
    catga_fixture_handlers::link();
    let m = Catga::builder()
        .resource(log())
        .auto_register()
        .request_handler(ExplicitHandler)
        .build()
        .unwrap();
    assert_eq!(m.send(CreateOrder { qty: 3 }).await.unwrap(), 30);
    m.send(Ping).await.unwrap();
    assert_eq!(m.send(Explicit).await.unwrap(), "explicit");
    let seen = m
        .resource::<Mutex<Vec<String>>>()
        .unwrap()
        .lock()
        .unwrap()
        .clone();
    assert_eq!(seen, vec!["created 30".to_owned()]);
}

#[tokio::test]
async fn handlers_in_another_crate_are_found() {
    catga_fixture_handlers::link();
    let m = Catga::builder()
        .resource(log())
        .auto_register()
        .build()
        .unwrap();
    assert_eq!(m.send(Double(21)).await.unwrap(), 42);
    m.publish(Noted("hello".into())).await.unwrap();
    let seen = m
        .resource::<Mutex<Vec<String>>>()
        .unwrap()
        .lock()
        .unwrap()
        .clone();
    assert_eq!(seen, vec!["fixture saw hello".to_owned()]);
}

#[test]
fn an_explicit_handler_clashing_with_an_auto_registered_one_is_a_build_error() {
    let err = Catga::builder()
        .auto_register()
        .request_handler(RivalCreateOrder)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DuplicateHandler);
    let text = err.to_string();
    assert!(text.contains("create_order"), "{text}");
    assert!(text.contains("RivalCreateOrder"), "{text}");
}

#[tokio::test]
async fn a_missing_resource_is_a_clear_error() {
    let m = Catga::builder().auto_register().build().unwrap();
    let err = m.publish(OrderCreated { id: 1 }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("Mutex"), "{err}");
}

#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "orders.Settle", response = (), partition = order)]
struct Settle {
    order: u64,
}

#[test]
fn derive_partition_names_the_entity_a_message_is_about() {
    assert_eq!(Settle { order: 42 }.partition().as_deref(), Some("42"));
    assert_eq!(CreateOrder { qty: 1 }.partition(), None);
}

#[derive(Debug, Clone, Serialize, Deserialize, Request)]
#[catga(name = "orders.Pay", response = (), idempotent)]
struct Pay;

#[test]
fn derive_idempotent_declares_it_on_the_type() {
    // Checked when the test compiles: a derive that ignored the attribute
    // (or set it where absent) does not build.
    const { assert!(<Pay as catga::Message>::IDEMPOTENT) };
    const { assert!(!<Settle as catga::Message>::IDEMPOTENT) };
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(name = "orders.Stored", reliable)]
struct Stored;

#[test]
fn derive_reliable_declares_it_on_the_event() {
    const { assert!(<Stored as catga::Event>::RELIABLE) };
    const { assert!(!<OrderCreated as catga::Event>::RELIABLE) };
}
