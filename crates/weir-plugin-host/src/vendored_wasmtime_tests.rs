//! Tests of weir's patches to the vendored wasmtime (`vendor/README.md`) through wasmtime's
//! public API, with hand-written components whose `realloc` counts its calls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use wasmtime::component::{Component, Linker, TypedFunc};
use wasmtime::{Engine, Store};

/// A component exporting `take(a: list<u8>, b: list<u32>) -> u32` (the sum of the lengths,
/// trapping on a misaligned list pointer) and `calls() -> u32` (how many times its `realloc`
/// ran). Its `realloc` answers a zero-byte request with `ZERO` and others from a bump pointer.
fn component(zero: &str) -> String {
    let src = r#"
(component
  (core module $m
    (memory (export "mem") 1)
    (global $calls (mut i32) (i32.const 0))
    (global $next (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
      (if (i32.eqz (local.get 3)) (then (return ZERO)))
      (local.set $p (global.get $next))
      (global.set $next (i32.add (global.get $next) (i32.const 64)))
      (local.get $p))
    (func (export "take") (param i32 i32 i32 i32) (result i32)
      (if (i32.rem_u (local.get 2) (i32.const 4)) (then unreachable))
      (i32.add (local.get 1) (local.get 3)))
    (func (export "calls") (result i32) (global.get $calls)))
  (core instance $i (instantiate $m))
  (func (export "take") (param "a" (list u8)) (param "b" (list u32)) (result u32)
    (canon lift (core func $i "take") (memory $i "mem") (realloc (func $i "realloc"))))
  (func (export "calls") (result u32) (canon lift (core func $i "calls"))))
"#;
    src.replace("ZERO", zero)
}

struct Guest {
    store: Store<()>,
    take: TypedFunc<(&'static [u8], &'static [u32]), (u32,)>,
    calls: TypedFunc<(), (u32,)>,
}

impl Guest {
    fn new(zero: &str) -> Guest {
        let engine = Engine::default();
        let bytes = wat::parse_str(component(zero)).unwrap();
        let component = Component::from_binary(&engine, &bytes).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = Linker::new(&engine).instantiate(&mut store, &component).unwrap();
        let take = instance.get_typed_func(&mut store, "take").unwrap();
        let calls = instance.get_typed_func(&mut store, "calls").unwrap();
        Guest { store, take, calls }
    }

    fn take(&mut self, a: &'static [u8], b: &'static [u32]) -> u32 {
        self.take.call(&mut self.store, (a, b)).unwrap().0
    }

    fn reallocs(&mut self) -> u32 {
        self.calls.call(&mut self.store, ()).unwrap().0
    }
}

#[test]
fn empty_lists_skip_a_realloc_that_answers_them_with_the_alignment() {
    // wit-bindgen's `cabi_realloc`: a zero-byte request gets the alignment back.
    let mut g = Guest::new("(local.get 2)");
    assert_eq!(g.take(&[], &[]), 0);
    // The first empty list asks the guest, which answers with the alignment; the second
    // (another alignment) no longer does.
    assert_eq!(g.reallocs(), 1);
    for _ in 0..3 {
        assert_eq!(g.take(&[], &[]), 0);
    }
    assert_eq!(g.reallocs(), 1);
    // Non-empty lists are allocated by the guest as before.
    assert_eq!(g.take(&[1, 2, 3], &[]), 3);
    assert_eq!(g.reallocs(), 2);
    assert_eq!(g.take(&[], &[7, 8]), 2);
    assert_eq!(g.reallocs(), 3);
}

#[test]
fn empty_lists_still_call_a_realloc_that_answers_them_otherwise() {
    // A guest that gives zero-byte requests a pointer of its own keeps every call.
    let mut g = Guest::new("(i32.const 512)");
    assert_eq!(g.take(&[], &[]), 0);
    assert_eq!(g.reallocs(), 2);
    assert_eq!(g.take(&[], &[]), 0);
    assert_eq!(g.reallocs(), 4);
    assert_eq!(g.take(&[9], &[]), 1);
    assert_eq!(g.reallocs(), 6);
}
