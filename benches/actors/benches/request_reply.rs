//! One request and its reply through an actor, the shape of every hop in
//! the switch (terminal -> link -> terminal): a tokio task reading a
//! bounded mpsc inbox and answering on a oneshot, against an actix actor
//! answering `Addr::send`. Both on one current-thread runtime, awaited one
//! at a time inside one `block_on`, so the figure is the per-message cost
//! of the path itself.

use std::hint::black_box;
use std::time::Instant;

use actix::prelude::*;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::sync::{mpsc, oneshot};

/// The request: a number, answered with the number plus one, so the
/// compiler cannot drop the work and the reply is checked.
struct Ask(u64);

impl Message for Ask {
    type Result = u64;
}

struct Adder;

impl Actor for Adder {
    type Context = Context<Self>;
}

impl Handler<Ask> for Adder {
    type Result = u64;
    fn handle(&mut self, msg: Ask, _: &mut Context<Self>) -> u64 {
        msg.0 + 1
    }
}

fn tokio_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(1024);
    rt.spawn(async move {
        while let Some((n, reply)) = rx.recv().await {
            let _ = reply.send(n + 1);
        }
    });
    c.bench_function("request_reply/tokio_mpsc_oneshot", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let (reply, answer) = oneshot::channel();
                    tx.send((black_box(41), reply)).await.expect("actor alive");
                    let got = answer.await.expect("answered");
                    assert_eq!(got, 42);
                }
                start.elapsed()
            })
        })
    });
}

fn actix_path(c: &mut Criterion) {
    let system = actix_rt::System::new();
    let addr = system.block_on(async { Adder.start() });
    c.bench_function("request_reply/actix_addr_send", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let got = addr.send(Ask(black_box(41))).await.expect("answered");
                    assert_eq!(got, 42);
                }
                start.elapsed()
            })
        })
    });
}

criterion_group!(benches, tokio_path, actix_path);
criterion_main!(benches);
