//! What the hot path pays for analytics: reading the event's fields from a
//! parsed 0200 (`Event::of_request`, at the request's arrival) and the
//! push onto the analytics queue (`Sink::push`, where the answer is
//! counted): into a queue a consumer thread drains, as in the switch;
//! alone in one thread (push then pop, no other core involved); and into
//! a full queue (the drop, counted).
//!
//! Run with `cargo bench --bench analytics` (not run in CI).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard::iso8583::{Message, samples, specs};
use switchyard::switch::analytics::{Event, Sink, Tap};
use switchyard::switch::config::Config;

fn sink(capacity: usize) -> Sink {
    let config = Config::parse(&format!("[analytics]\nqueue_capacity = {capacity}\n"))
        .unwrap_or_else(|e| panic!("bench config invalid: {e:?}"));
    Sink::new(&config.analytics)
}

fn bench(c: &mut Criterion) {
    let body = samples::typical_0200_for(specs::iso87ascii(), b"4761739001010010", 42)
        .expect("packs")
        .freeze();
    let msg = Message::parse(body, specs::iso87ascii()).expect("parses");
    let mut g = c.benchmark_group("analytics");
    g.measurement_time(Duration::from_secs(3));

    g.bench_function("event_of_request", |b| {
        b.iter(|| black_box(Event::of_request(black_box(&msg))))
    });

    // The tap's whole per-request path for an answer given at once.
    let mut tap = Tap::new(true);
    g.bench_function("tap_request_answered", |b| {
        b.iter(|| {
            tap.request(black_box(&msg));
            let e = tap.answered(200, *b"00", Duration::from_micros(80), 1);
            tap.done();
            black_box(e)
        })
    });

    let e = Event::of_request(&msg);

    // A consumer on another thread drains as the analytics thread does
    // (here without sleeping between drains: the worst case for the
    // cache lines the two sides share).
    let s = Arc::new(sink(16_384));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let q = s.queue_for_bench();
            while !stop.load(Ordering::Relaxed) {
                while q.pop().is_some() {}
                std::thread::yield_now();
            }
        })
    };
    // Timed: bursts of 4,096 pushes while the consumer drains; between
    // bursts (not timed) the queue is let empty, so no push finds it full
    // (a tight loop would outrun any consumer and time the drop instead).
    let q = s.queue_for_bench();
    g.bench_function("push_drained_by_another_thread", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(4096);
                let t = Instant::now();
                for _ in 0..n {
                    s.push(black_box(e));
                }
                total += t.elapsed();
                left -= n;
                while !q.is_empty() {
                    std::hint::spin_loop();
                }
            }
            total
        })
    });
    stop.store(true, Ordering::Relaxed);
    let _ = consumer.join();
    assert_eq!(s.dropped(), 0, "no push found the queue full");

    let s = sink(1024);
    let q = s.queue_for_bench();
    g.bench_function("push_then_pop_one_thread", |b| {
        b.iter(|| {
            s.push(black_box(e));
            black_box(q.pop())
        })
    });

    let s = sink(64);
    for _ in 0..64 {
        s.push(e);
    }
    g.bench_function("push_full_queue_dropped", |b| {
        b.iter(|| s.push(black_box(e)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
