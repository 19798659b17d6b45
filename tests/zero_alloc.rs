//! The codec's hot path allocates nothing: parsing a typical 0200 (ASCII
//! and binary dialects) and reading it through the usual accessors, and
//! packing its 0210 into a reused buffer.
//!
//! A counting global allocator counts allocations per thread, so the tests
//! of this file can run in parallel without seeing each other's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use switchyard::iso8583::specs::{iso87ascii, iso87binary};
use switchyard::iso8583::{Message, MessageBuilder, Mti, Spec, samples};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches
// only a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while running `f`.
fn allocations<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    let after = ALLOCATIONS.with(Cell::get);
    (after - before, r)
}

const STAN: u32 = samples::TYPICAL_STAN;
const AMOUNT: u64 = samples::TYPICAL_AMOUNT;
const ECHO_0210: [usize; 11] = [2, 3, 4, 7, 11, 12, 13, 37, 41, 42, 49];

/// The 0200 of benches/codec.rs (`switchyard::iso8583::samples`).
fn typical_0200(spec: &'static Spec) -> Bytes {
    samples::typical_0200(spec)
        .expect("typical 0200 packs")
        .freeze()
}

/// Parses `frame` and reads it the way the switch does; returns a digest
/// so nothing is optimised away.
fn parse_and_read(frame: &Bytes, spec: &'static Spec) -> usize {
    let m = Message::parse(black_box(frame.clone()), spec).expect("parses");
    let mut digest = 0usize;
    digest += m.mti().value() as usize;
    digest += m.pan().map_or(0, |p| p.len());
    digest += m.stan().unwrap_or(0) as usize;
    digest += m.amount_minor().unwrap_or(0) as usize;
    digest += m.processing_code().unwrap_or(0) as usize;
    digest += m.terminal_id().map_or(0, |t| t.len());
    digest += m.merchant_id().map_or(0, |t| t.len());
    digest += m.rrn().map_or(0, |t| t.len());
    digest += m.currency().unwrap_or(0) as usize;
    digest += m.mcc().unwrap_or(0) as usize;
    digest += m.transmission_time().unwrap_or(0) as usize;
    for n in [2, 3, 4, 7, 11, 37, 41, 42, 43, 49] {
        digest += m.field(n).map_or(0, <[u8]>::len);
    }
    digest += m.fields().count();
    black_box(digest)
}

#[test]
fn the_counter_sees_allocations() {
    let (n, v) = allocations(|| black_box(Vec::<u8>::with_capacity(1)));
    drop(v);
    assert_eq!(n, 1, "the counting allocator must see a Vec allocation");
    let (n, b) = allocations(|| black_box(Box::new(black_box(7u64))));
    drop(b);
    assert_eq!(n, 1);
}

fn assert_parse_allocates_nothing(spec: &'static Spec) {
    let frame = typical_0200(spec);
    // Warm up: the spec's LazyLock, and the first clone of a `Bytes` made
    // from a `Vec`, which moves it to a shared (refcounted) buffer once.
    let expected = parse_and_read(&frame, spec);
    let m = Message::parse(frame.clone(), spec).expect("parses");
    assert_eq!(
        (m.stan(), m.amount_minor(), m.fields().count()),
        (Some(STAN), Some(AMOUNT), 16)
    );
    assert_eq!(
        m.pan().map(|p| p.digits().to_vec()),
        Some(b"4761739001010010".to_vec())
    );
    assert_eq!(
        m.terminal_id().map(|t| t.to_vec()),
        Some(b"TERM0001".to_vec())
    );
    drop(m);

    for _ in 0..3 {
        let (n, digest) = allocations(|| parse_and_read(&frame, spec));
        assert_eq!(digest, expected);
        assert_eq!(
            n, 0,
            "parsing and reading a 0200 in {} allocated {n} times",
            spec.name
        );
    }
}

#[test]
fn parsing_a_typical_0200_allocates_nothing_ascii() {
    assert_parse_allocates_nothing(iso87ascii());
}

#[test]
fn parsing_a_typical_0200_allocates_nothing_binary() {
    assert_parse_allocates_nothing(iso87binary());
}

fn pack_0210(req: &Message, out: &mut BytesMut) {
    out.clear();
    let mut resp = MessageBuilder::response_to(req, &ECHO_0210).expect("a request");
    resp.set(38, b"A1B2C3").set(39, b"00");
    resp.pack(out).expect("0210 packs");
}

fn assert_pack_allocates_nothing(spec: &'static Spec) {
    let req = Message::parse(typical_0200(spec), spec).expect("parses");
    let mut out = BytesMut::with_capacity(512);
    pack_0210(&req, &mut out);
    let first = out.to_vec();
    let check = Message::parse(Bytes::from(first.clone()), spec).expect("0210 parses");
    assert_eq!(check.mti(), Mti::FINANCIAL_RESPONSE);
    assert_eq!(check.stan(), Some(STAN));
    assert_eq!(check.response_code(), Some(*b"00"));

    for _ in 0..3 {
        let (n, ()) = allocations(|| pack_0210(black_box(&req), black_box(&mut out)));
        assert_eq!(&out[..], &first[..]);
        assert_eq!(
            n, 0,
            "packing a 0210 in {} into a reused buffer allocated {n} times",
            spec.name
        );
    }
}

#[test]
fn packing_a_0210_into_a_reused_buffer_allocates_nothing_ascii() {
    assert_pack_allocates_nothing(iso87ascii());
}

#[test]
fn packing_a_0210_into_a_reused_buffer_allocates_nothing_binary() {
    assert_pack_allocates_nothing(iso87binary());
}

/// The analytics tap on the hot path: the event read from the request,
/// the answer's fields added, the push onto the queue (and the drop when
/// it is full) allocate nothing.
#[test]
fn the_analytics_event_and_its_push_allocate_nothing() {
    use switchyard::switch::analytics::{Sink, Tap};
    let config = switchyard::switch::config::Config::parse("[analytics]\nqueue_capacity = 64\n")
        .expect("valid")
        .analytics;
    let sink = Sink::new(&config);
    let mut tap = Tap::new(true);
    let frame = typical_0200(iso87ascii());
    let req = Message::parse(frame, iso87ascii()).expect("parses");
    for _ in 0..100 {
        let (n, ()) = allocations(|| {
            tap.request(black_box(&req));
            if let Some(e) = tap.answered(200, *b"00", std::time::Duration::from_micros(90), 1) {
                sink.push(e);
            }
            tap.done();
        });
        assert_eq!(n, 0, "the analytics tap allocated {n} times");
    }
    assert_eq!(sink.dropped(), 36, "a full queue drops, counted");
}
