//! [`pin_box`]: `Box::pin` for large futures, without the copy.

use std::pin::Pin;

/// Boxes the future `make` returns, built in the new allocation. `Box::pin(f)` builds `f` on the
/// stack and then copies all of it into the box: for the request path's future (~3.4 KB, most
/// of it space for states not yet entered) that copy was a `memmove` per request, 1.2% of
/// weir's samples at saturation. Allocating first and then writing lets the compiler build the
/// future's initial state (its arguments, a few hundred bytes) straight into the heap.
#[inline(always)]
pub fn pin_box<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
