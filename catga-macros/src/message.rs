//! `#[derive(Request)]` and `#[derive(Event)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{DeriveInput, LitStr};

use crate::attrs::{message_args, runtime};

pub(crate) enum Kind {
    Request,
    Event,
}

pub(crate) fn expand(input: TokenStream, kind: Kind) -> syn::Result<TokenStream> {
    let input: DeriveInput = syn::parse2(input)?;
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "messages cannot be generic: a wire name stands for one concrete type; \
             define one message type per variant",
        ));
    }
    let args = message_args(&input.attrs)?;
    let ident = &input.ident;
    let krate = runtime(args.krate);
    let private = quote!(#krate::__private);
    let name = args
        .name
        .unwrap_or_else(|| LitStr::new(&ident.to_string(), ident.span()));
    let partition = args.partition.map(|field| {
        quote! {
            fn partition(&self) -> ::core::option::Option<::std::string::String> {
                ::core::option::Option::Some(::std::string::ToString::to_string(&self.#field))
            }
        }
    });
    let idempotent = args.idempotent.then(|| {
        quote!(
            const IDEMPOTENT: bool = true;
        )
    });
    let message = quote! {
        impl #private::Message for #ident {
            const NAME: &'static str = #name;
            #idempotent
            #partition
        }
    };
    let specific = match kind {
        Kind::Request => {
            if let Some(span) = args.reliable {
                return Err(syn::Error::new(
                    span,
                    "only events are reliable: a request is answered, not stored; remove \
                     `reliable`",
                ));
            }
            let Some(response) = args.response else {
                return Err(syn::Error::new(
                    ident.span(),
                    "missing `response`: add `#[catga(response = YourResponse)]` \
                     (use `response = ()` for a command that returns nothing)",
                ));
            };
            let durable = args.durable.map(|_| {
                quote!(
                    const DURABLE: bool = true;
                )
            });
            quote! {
                impl #private::Request for #ident {
                    type Response = #response;
                    #durable
                }
                impl #private::MessageRoute for #ident {
                    type Route = #private::RequestRoute;
                }
            }
        }
        Kind::Event => {
            if let Some(span) = args.durable {
                return Err(syn::Error::new(
                    span,
                    "only commands are sent durably; an event that must not be lost is \
                     `reliable`",
                ));
            }
            if let Some(response) = args.response {
                return Err(syn::Error::new_spanned(
                    response,
                    "events have no response: remove `response`, or derive `Request` instead",
                ));
            }
            let reliable = args.reliable.map(|_| {
                quote!(
                    const RELIABLE: bool = true;
                )
            });
            quote! {
                impl #private::Event for #ident {
                    #reliable
                }
                impl #private::MessageRoute for #ident {
                    type Route = #private::EventRoute;
                }
            }
        }
    };
    Ok(quote! {
        #message
        #specific
    })
}
