//! # catga-macros
//!
//! Declare a message and its handler in a few lines; never write a registration
//! list by hand. Use these through the `catga` crate (feature `macros`, on by
//! default), which re-exports them; generated code names only `catga::__private`,
//! so you add no other dependency.
//!
//! - `#[derive(Request)]` with `#[catga(name = "orders.CreateOrder", response = OrderId)]`
//! - `#[derive(Event)]` with `#[catga(name = "orders.OrderCreated")]`
//! - `#[handler]` on an `async fn(&Message, &Context) -> Result<T>`, which may
//!   take its state as a third parameter, `state: &YourState` (a resource given
//!   to the builder; `build()` fails naming the handler when it is missing), or
//!   on an `impl RequestHandler<M> for H` / `impl EventHandler<M> for H` (the
//!   handler is built with `Default`)
//! - `CatgaBuilder::auto_register()` then adds every `#[handler]` in the program.
//!
//! When `name` is omitted, the wire name is the type's name (`CreateOrder`):
//! stable across crates and modules, so two services that define the same type
//! agree on it. Namespace it (`orders.CreateOrder`) when names could collide.
//!
//! Also on a message: `#[catga(partition = field)]` (the entity it is about,
//! for sharded stores) and `#[catga(idempotent)]` (its handlers take effect
//! once per message id on a peer built with `.idempotency(store)`); on an
//! event, `#[catga(reliable)]` (delivered at least once, through JetStream on
//! NATS); on a request, `#[catga(durable)]` (may be sent with `send_durable`:
//! stored, taken by its service when it can).
//!
//! `#[catga(crate = "path")]` on a message, or `#[handler(crate = "path")]`,
//! points generated code at another path than `::catga`.
#![forbid(unsafe_code)]

mod attrs;
mod handler;
mod message;

use proc_macro::TokenStream;

/// Implements `Message` and `Request` for a struct or enum.
///
/// `#[catga(response = T)]` is required (`()` for a command that returns
/// nothing); `#[catga(name = "...")]` sets the wire name.
#[proc_macro_derive(Request, attributes(catga))]
pub fn derive_request(input: TokenStream) -> TokenStream {
    message::expand(input.into(), message::Kind::Request)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Implements `Message` and `Event` for a struct or enum.
#[proc_macro_derive(Event, attributes(catga))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    message::expand(input.into(), message::Kind::Event)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Registers a handler for `CatgaBuilder::auto_register()`.
///
/// On a function: `async fn name(message: &M, ctx: &Context) -> Result<T>`, or
/// `async fn name(message: &M, ctx: &Context, state: &S) -> Result<T>` with `S`
/// a resource of the builder (checked when the peer is built).
/// On an impl block: `impl RequestHandler<M> for H` or `impl EventHandler<M> for H`,
/// where `H: Default`.
#[proc_macro_attribute]
pub fn handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match handler::expand(attr.into(), item.clone()) {
        Ok(tokens) => tokens.into(),
        // Keep the item so the only error the user sees is ours.
        Err(e) => {
            let mut tokens = e.into_compile_error();
            tokens.extend(item);
            tokens.into()
        }
    }
}
