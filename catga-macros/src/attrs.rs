//! `#[catga(...)]` and `#[handler(...)]` arguments.

use syn::parse::Parser;
use syn::{Attribute, LitStr, Path, Type};

/// Arguments of `#[catga(...)]` on a message.
#[derive(Default)]
pub(crate) struct MessageArgs {
    pub(crate) name: Option<LitStr>,
    pub(crate) response: Option<Type>,
    pub(crate) krate: Option<Path>,
    pub(crate) partition: Option<syn::Member>,
    pub(crate) idempotent: bool,
    /// Where `reliable` was written, when it was.
    pub(crate) reliable: Option<proc_macro2::Span>,
    /// Where `durable` was written, when it was.
    pub(crate) durable: Option<proc_macro2::Span>,
}

pub(crate) fn message_args(attrs: &[Attribute]) -> syn::Result<MessageArgs> {
    let mut args = MessageArgs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("catga")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let lit: LitStr = meta.value()?.parse()?;
                check_name(&lit)?;
                args.name = Some(lit);
            } else if meta.path.is_ident("response") {
                args.response = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("crate") {
                let lit: LitStr = meta.value()?.parse()?;
                args.krate = Some(lit.parse()?);
            } else if meta.path.is_ident("partition") {
                args.partition = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("idempotent") {
                args.idempotent = true;
            } else if meta.path.is_ident("durable") {
                args.durable = Some(syn::spanned::Spanned::span(&meta.path));
            } else if meta.path.is_ident("reliable") {
                args.reliable = Some(syn::spanned::Spanned::span(&meta.path));
            } else {
                return Err(meta.error(
                    "unknown catga attribute; expected `name = \"...\"`, `response = Type`, \
                     `partition = field`, `idempotent`, `reliable`, `durable` or `crate = \"path\"`",
                ));
            }
            Ok(())
        })?;
    }
    Ok(args)
}

fn check_name(lit: &LitStr) -> syn::Result<()> {
    let name = lit.value();
    let ok = !name.is_empty()
        && name.split('.').all(|t| !t.is_empty())
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>');
    if ok {
        Ok(())
    } else {
        Err(syn::Error::new(
            lit.span(),
            "a wire name is dot-separated printable ASCII without spaces, `*` or `>`, e.g. \"orders.CreateOrder\"",
        ))
    }
}

/// Arguments of `#[handler(...)]`.
#[derive(Default)]
pub(crate) struct HandlerArgs {
    pub(crate) krate: Option<Path>,
}

pub(crate) fn handler_args(tokens: proc_macro2::TokenStream) -> syn::Result<HandlerArgs> {
    let mut args = HandlerArgs::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            let lit: LitStr = meta.value()?.parse()?;
            args.krate = Some(lit.parse()?);
            Ok(())
        } else {
            Err(meta.error("unknown handler argument; expected `crate = \"path\"`"))
        }
    });
    parser.parse2(tokens)?;
    Ok(args)
}

/// The runtime crate path: `::catga` unless overridden.
pub(crate) fn runtime(krate: Option<Path>) -> Path {
    krate.unwrap_or_else(|| syn::parse_quote!(::catga))
}
