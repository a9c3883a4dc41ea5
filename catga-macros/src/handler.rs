//! `#[handler]` on a function or an impl block.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ImplItem, Item, ItemFn, ItemImpl, PathArguments, ReturnType, Type};

use crate::attrs::{handler_args, runtime};

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = handler_args(attr)?;
    let krate = runtime(args.krate);
    match syn::parse2::<Item>(item)? {
        Item::Fn(f) => expand_fn(&krate, f),
        Item::Impl(i) => expand_impl(&krate, i),
        other => Err(syn::Error::new(
            other.span(),
            "`#[handler]` goes on an `async fn(&Message, &Context) -> Result<T>` or on an \
             `impl RequestHandler<M> for H` / `impl EventHandler<M> for H` block",
        )),
    }
}

/// The `M` of a parameter `&M`.
fn message_type(arg: &FnArg) -> syn::Result<&Type> {
    let FnArg::Typed(pat) = arg else {
        return Err(syn::Error::new(
            arg.span(),
            "a handler function is a free function, not a method: move it out of the impl",
        ));
    };
    match &*pat.ty {
        Type::Reference(r) if r.mutability.is_none() => Ok(&r.elem),
        other => Err(syn::Error::new(
            other.span(),
            "the first parameter is the message, taken by reference: `message: &YourMessage`",
        )),
    }
}

fn expand_fn(krate: &syn::Path, f: ItemFn) -> syn::Result<TokenStream> {
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span,
            "handler functions must be `async fn`: write `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "generic handlers cannot be registered automatically: write one handler per \
             message type, or register each instantiation with the builder",
        ));
    }
    if sig.inputs.len() != 2 && sig.inputs.len() != 3 {
        return Err(syn::Error::new(
            if sig.inputs.is_empty() {
                sig.ident.span()
            } else {
                sig.inputs.span()
            },
            "a handler function takes `(message: &YourMessage, ctx: &Context)`, and may take \
             its state as a third: `state: &YourState` (given to the builder with `.resource(..)`)",
        ));
    }
    // The state a handler takes as its third parameter, `&T`: found among the
    // builder's resources, and checked to be there when the peer is built.
    let state = match sig.inputs.iter().nth(2) {
        None => None,
        Some(FnArg::Typed(p)) => match &*p.ty {
            Type::Reference(r) if r.mutability.is_none() => Some((*r.elem).clone()),
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "the third parameter is the handler's state, taken by reference: \
                     `state: &YourState`",
                ));
            }
        },
        Some(other) => {
            return Err(syn::Error::new(
                other.span(),
                "a handler function is a free function, not a method",
            ));
        }
    };
    let message = message_type(&sig.inputs[0])?;
    if let FnArg::Typed(ctx) = &sig.inputs[1] {
        if !matches!(&*ctx.ty, Type::Reference(r) if r.mutability.is_none()) {
            return Err(syn::Error::new(
                ctx.ty.span(),
                "the second parameter is the context, taken by reference: `ctx: &Context`",
            ));
        }
    }
    let ReturnType::Type(_, output) = &sig.output else {
        return Err(syn::Error::new(
            sig.paren_token.span.close(),
            "a handler returns `Result<T>`: add `-> catga::Result<YourResponse>` \
             (`Result<()>` for events and commands without a result)",
        ));
    };
    let private = quote!(#krate::__private);
    let ident = &sig.ident;
    let vis = &f.vis;
    let shim = format_ident!("__CatgaHandler_{}", ident);
    let ctx_ty = quote!(#krate::__private::Context);
    let output_check = quote_spanned! {output.span()=>
        <#output as #private::HandlerResult>::Ok
    };
    let (call, builder) = match &state {
        None => (quote!(#ident(message, ctx)), quote!(builder)),
        Some(state) => (
            quote! {
                async move {
                    let state = ctx.resource::<#state>()?;
                    #ident(message, ctx, state).await
                }
            },
            quote! {
                #private::requires::<#state>(
                    builder,
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                )
            },
        ),
    };
    Ok(quote! {
        #f

        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #shim;

        impl #private::FnHandler<#message> for #shim {
            type Output = #output_check;
            fn call(
                &self,
                message: &#message,
                ctx: &#ctx_ty,
            ) -> impl ::core::future::Future<Output = #private::Result<Self::Output>> + ::core::marker::Send {
                #call
            }
        }

        #private::inventory::submit! {
            #private::Registration {
                name: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                register: |builder| #private::register_fn::<#message, #shim>(
                    #builder,
                    #shim,
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                ),
            }
        }
    })
}

fn expand_impl(krate: &syn::Path, i: ItemImpl) -> syn::Result<TokenStream> {
    if !i.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &i.generics,
            "generic handlers cannot be registered automatically: implement the handler for \
             concrete types, or register each instantiation with the builder",
        ));
    }
    let Some((_, trait_path, _)) = &i.trait_ else {
        return Err(syn::Error::new(
            i.self_ty.span(),
            "`#[handler]` on an impl block needs `impl RequestHandler<M> for H` or \
             `impl EventHandler<M> for H`",
        ));
    };
    let last = trait_path
        .segments
        .last()
        .ok_or_else(|| syn::Error::new(trait_path.span(), "expected a handler trait"))?;
    let register = match last.ident.to_string().as_str() {
        "RequestHandler" => format_ident!("register_request"),
        "EventHandler" => format_ident!("register_event"),
        _ => {
            return Err(syn::Error::new(
                last.ident.span(),
                "`#[handler]` works on `impl RequestHandler<M> for H` and \
                 `impl EventHandler<M> for H` only",
            ));
        }
    };
    let PathArguments::AngleBracketed(generic) = &last.arguments else {
        return Err(syn::Error::new(
            last.span(),
            "name the message type: `RequestHandler<YourMessage>`",
        ));
    };
    let message = generic
        .args
        .first()
        .ok_or_else(|| syn::Error::new(generic.span(), "name the message type"))?;
    for item in &i.items {
        if let ImplItem::Fn(f) = item {
            let returns_future = matches!(&f.sig.output, ReturnType::Type(_, t) if matches!(**t, Type::ImplTrait(_)));
            if f.sig.ident == "handle" && f.sig.asyncness.is_none() && !returns_future {
                return Err(syn::Error::new(
                    f.sig.fn_token.span,
                    "`handle` must be an `async fn`: write `async fn handle(..)`",
                ));
            }
        }
    }
    let self_ty = &i.self_ty;
    let private = quote!(#krate::__private);
    let assert_default = quote_spanned! {self_ty.span()=>
        const _: fn() = || {
            fn handler_must_implement_default<T: ::core::default::Default>() {}
            handler_must_implement_default::<#self_ty>();
        };
    };
    Ok(quote! {
        #i

        #assert_default

        #private::inventory::submit! {
            #private::Registration {
                name: ::core::stringify!(#self_ty),
                register: |builder| #private::#register::<#message, #self_ty>(
                    builder,
                    ::core::stringify!(#self_ty),
                ),
            }
        }
    })
}
