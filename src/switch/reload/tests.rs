//! Generations through the terminal core, in virtual time and through its
//! public inputs and outputs only: a request keeps the generation it
//! started in until its outcome (its acquirer's stand-in rules, its
//! link), while the next request takes the newest one published.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::clock::Now;
use crate::iso8583::{Message, MessageBuilder, Mti, samples};
use crate::switch::acquirer::{
    AcquirerHandle, Failure, LinkHandle, LinkShared, Outcome, link::FieldSet,
};
use crate::switch::config::Config;
use crate::switch::journal::{Journal, Record};
use crate::switch::saf::SafHandle;
use crate::switch::server::Shared;
use crate::switch::terminal::{JournalAppend, TerminalCore};

#[derive(Default)]
struct MemJournal {
    last: u64,
}

impl JournalAppend for MemJournal {
    fn append(&mut self, _record: Record) -> Option<u64> {
        self.last += 1;
        Some(self.last)
    }
}

fn config(dir: &std::path::Path, stand_in: bool, second: bool) -> Config {
    let b = if second {
        "[[acquirers]]\nname = \"b\"\nlinks = [\"127.0.0.1:2\"]\n"
    } else {
        ""
    };
    let route = if second {
        "[[routing.routes]]\nprefix = \"4\"\nacquirer = \"b\"\n"
    } else {
        ""
    };
    Config::parse(&format!(
        "[[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n\
         [acquirers.stand_in]\nenabled = {stand_in}\nmax_amount = 10000\nmax_fraud_points = 100\n\
         {b}[routing]\ndefault = \"a\"\n{route}\
         [journal]\ndir = \"{}\"\n[fraud]\npan_key = \"000102030405060708090a0b0c0d0e0f\"\n",
        dir.display()
    ))
    .unwrap_or_else(|p| panic!("{p:?}"))
}

/// The acquirer's handle over `link` and `saf` (the test keeps the
/// queue's other end).
fn handle(
    c: &crate::switch::acquirer::AcquirerConfig,
    link: LinkHandle,
    saf: &SafHandle,
) -> AcquirerHandle {
    AcquirerHandle {
        name: c.name.clone(),
        spec: c.spec.spec,
        links: vec![link],
        stand_in: c.stand_in.clone(),
        answer_must_match: FieldSet::of(&c.answer_must_match),
        saf: saf.clone(),
        security: c.security.clone(),
    }
}

fn up_link(name: &str) -> LinkHandle {
    let ls = Arc::new(LinkShared::new(
        name.into(),
        "127.0.0.1:9".parse().expect("addr"),
    ));
    ls.set_up(true);
    LinkHandle::channel(ls, 8).0
}

fn request(stan: u64, pan: &[u8]) -> Bytes {
    let spec = crate::iso8583::specs::iso87ascii();
    let mut b = MessageBuilder::new(spec, Mti::FINANCIAL);
    b.set(2, pan)
        .set(3, b"000000")
        .set_number(4, 100)
        .set(7, b"0612143015")
        .set_number(11, stan)
        .set(12, b"143015")
        .set(13, b"0612")
        .set(37, b"416314123456")
        .set(41, b"TERM0001")
        .set(42, b"MERCHANT0000001")
        .set(49, b"840");
    b.to_bytes().expect("packs").freeze()
}

/// The answers written so far: (STAN, DE39).
fn answers(core: &mut TerminalCore<MemJournal>, now: Now) -> Vec<(u32, String)> {
    core.handle_durable(now, u64::MAX / 2);
    let Some(out) = core.poll_transmit() else {
        return Vec::new();
    };
    let bytes = Bytes::copy_from_slice(out);
    core.advance(bytes.len());
    let mut v = Vec::new();
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let len = u16::from_be_bytes([bytes[at], bytes[at + 1]]) as usize;
        let m = Message::parse(
            bytes.slice(at + 2..at + 2 + len),
            crate::iso8583::specs::iso87ascii(),
        )
        .expect("parses");
        v.push((
            m.stan().unwrap_or(0),
            String::from_utf8_lossy(&m.response_code().expect("DE39")).into_owned(),
        ));
        at += 2 + len;
    }
    v
}

#[test]
fn a_request_finishes_in_the_generation_it_started_in() {
    let dir = tempfile::tempdir().expect("dir");
    let one = config(dir.path(), false, false);
    let (journal, _) = Journal::open(&one.journal).expect("journal");
    let a_link = up_link("a#0");
    let (a_saf, mut a_queue) = SafHandle::channel(64);
    let (b_saf, _b_queue) = SafHandle::channel(64);
    let gen1 = Arc::new(
        Shared::new(
            &one,
            vec![handle(&one.acquirers[0], a_link.clone(), &a_saf)],
            journal,
            1,
        )
        .expect("routes"),
    );
    Shared::publish(&gen1);
    let mut now = Now {
        at: Instant::now(),
        unix_ms: 1_795_592_096_000,
    };
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let mut core = TerminalCore::new(now, gen1.clone(), MemJournal::default(), peer, 0);

    // Request 1 in generation 1: to acquirer a (no stand-in there).
    now = now.plus(Duration::from_millis(1));
    core.handle_frame(now, request(1, samples::TYPICAL_PAN));
    core.handle_durable(now, u64::MAX / 2);
    let f1 = core.poll_forward().expect("forwarded");
    assert_eq!((f1.acquirer, f1.epoch), (0, 1));

    // Generation 2: acquirer b added, 4... cards moved to it, stand-in on
    // at a. Published: the core is told with one load at its next request.
    let two = config(dir.path(), true, true);
    let b_link = up_link("b#0");
    let gen2 = Arc::new(
        gen1.next_generation(
            Arc::new(two.clone()),
            vec![
                handle(&two.acquirers[0], a_link.clone(), &a_saf),
                handle(&two.acquirers[1], b_link.clone(), &b_saf),
            ],
            gen1.blocks.clone(),
            2,
            "api",
        )
        .expect("routes"),
    );
    assert!(gen1.is_current());
    Shared::publish(&gen2);
    assert!(!gen1.is_current() && gen2.is_current());
    assert_eq!(gen1.current().epoch, gen2.epoch);

    now = now.plus(Duration::from_millis(1));
    core.handle_frame(now, request(2, samples::TYPICAL_PAN));
    core.handle_frame(now, request(3, b"5500000000000004"));
    core.handle_durable(now, u64::MAX / 2);
    let f2 = core.poll_forward().expect("forwarded");
    let f3 = core.poll_forward().expect("forwarded");
    assert_eq!((f2.acquirer, f2.epoch), (1, 2), "the moved route");
    assert_eq!((f3.acquirer, f3.epoch), (0, 2), "the default");
    // Each forward's link is its own generation's.
    let l1 = core.link(f1.epoch, f1.acquirer, f1.link).expect("link");
    assert!(Arc::ptr_eq(&l1.shared, &a_link.shared));
    let l2 = core.link(f2.epoch, f2.acquirer, f2.link).expect("link");
    assert!(Arc::ptr_eq(&l2.shared, &b_link.shared));

    // Both of a's requests find its link down: request 1 under
    // generation 1's rules (no stand-in: 91), request 3 under generation
    // 2's (stand-in: 00).
    now = now.plus(Duration::from_millis(5));
    core.handle_reply(now, f1.token, Outcome::Failed(Failure::LinkDown));
    core.handle_reply(now, f3.token, Outcome::Failed(Failure::LinkDown));
    let mut got = answers(&mut core, now);
    got.sort();
    assert_eq!(got, [(1, "91".into()), (3, "00".into())]);
    // The stand-in's advice, to a's queue (the same in both generations).
    let advice = a_queue.try_recv().expect("an advice");
    assert_eq!(advice.kind, crate::switch::saf::SafKind::Advice);
    // The older generation is let go once nothing of it is pending.
    now = now.plus(Duration::from_millis(200));
    core.handle_reply(now, f2.token, Outcome::Failed(Failure::LinkDown));
    assert_eq!(answers(&mut core, now), [(2, "91".to_owned())]);
    assert_eq!(
        Arc::strong_count(&gen1),
        1,
        "the connection let generation 1 go"
    );
    drop(core);
}
