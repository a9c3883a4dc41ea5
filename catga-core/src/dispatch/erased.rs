//! Futures with their type erased, without an allocation when they are small.

/// Bytes a handler's future may take to be held in place, with no
/// allocation. A handler that computes (a few references and a state) fits;
/// one that awaits I/O is larger and is boxed, an allocation its I/O dwarfs.
/// Small on purpose: the erased future is moved as a whole, so every byte
/// here is copied on each dispatch.
const INLINE_BYTES: usize = 64;

/// A handler's future with its type erased: held in place when it fits in
/// [`INLINE_BYTES`], boxed inside it when it does not.
pub(crate) type ErasedFuture<'a, T> = stackfuture::StackFuture<'a, T, INLINE_BYTES>;
