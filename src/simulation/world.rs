//! The simulated world: terminals (clients), the switch (its cores, as the
//! drivers would wire them, minus the sockets), the host, the journal and
//! the clock. Events are kept in a queue ordered by virtual time; between
//! events the world jumps to the earliest deadline any core asks for.

use std::cell::RefCell;
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

use super::host::{Host, HostConn};
use crate::clock::Now;
use crate::frame::{FrameCodec, LengthHeader};
use crate::iso8583::{Message, MessageBuilder, Mti, specs};
use crate::switch::acquirer::link::{LinkCore, LinkSettings};
use crate::switch::acquirer::{AcquirerHandle, EchoSpans, LinkHandle, LinkShared, Outcome};
use crate::switch::config::Config;
use crate::switch::journal::recovery::Fold;
use crate::switch::journal::{Journal, Record, Recovery, RecoveryStats};
use crate::switch::saf::{Answer, SafCore, SafEntry, SafEvent, SafHandle};
use crate::switch::server::Shared;
use crate::switch::terminal::{JournalAppend, TerminalCore};
use crate::tools::sim::rules::XorShift;

/// Terminals (clients) per run.
const CLIENTS: usize = 3;
/// Requests one client keeps in flight at most.
const CLIENT_PIPELINE: usize = 3;
/// Virtual time with traffic and faults; then a quiet time to drain.
const TRAFFIC: Duration = Duration::from_secs(1);
const QUIET: Duration = Duration::from_secs(10);
/// Steps one run may take before it is called a livelock.
const MAX_STEPS: u64 = 2_000_000;
/// Amounts at or under this may be approved in stand-in (config below).
const STAND_IN_MAX: u64 = 5_000;

/// The switch's config in the simulation: the shipped defaults where they
/// do not matter, short timeouts where they set the pace.
fn config_text() -> String {
    format!(
        r#"
test_setup = true
[terminals]
max_in_flight_per_connection = 4
[limits]
max_in_flight = 1000
recent_answers = 4096
[[acquirers]]
name = "acq"
links = ["127.0.0.1:9", "127.0.0.1:9"]
request_timeout_ms = 200
connect_timeout_ms = 100
backoff_initial_ms = 20
backoff_max_ms = 400
echo_interval_ms = 1000
echo_timeout_ms = 100
[acquirers.stand_in]
enabled = true
max_amount = {STAND_IN_MAX}
max_fraud_points = 10
[routing]
default = "acq"
[journal]
durability = "fsync"
[saf]
retry_interval_ms = 100
max_attempts = 10000
expiry_s = 86400
max_entries = 10000
[fraud]
pan_key = "000102030405060708090a0b0c0d0e0f"
"#
    )
}

/// `Shared` wants a journal handle; the cores never use it (they append
/// through [`SimJournal`]), so one real journal serves every run.
fn unused_journal() -> Journal {
    static J: OnceLock<(tempfile::TempDir, Journal)> = OnceLock::new();
    J.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::parse(&config_text())
            .expect("simulation config")
            .journal;
        config.dir = dir.path().to_owned();
        config.durability = crate::switch::journal::Durability::None;
        let (journal, _) = Journal::open(&config).expect("journal");
        (dir, journal)
    })
    .1
    .clone()
}

/// The journal as the simulation keeps it: every record in order, and how
/// far the "disk" has it. A crash keeps only what is durable.
#[derive(Default)]
pub struct JournalState {
    pub records: Vec<(u64, Record)>,
    pub next_seq: u64,
    pub durable: u64,
    commit_due: bool,
}

#[derive(Clone)]
pub struct SimJournal(pub Rc<RefCell<JournalState>>);

impl JournalAppend for SimJournal {
    fn append(&mut self, record: Record) -> Option<u64> {
        let mut j = self.0.borrow_mut();
        j.next_seq += 1;
        let seq = j.next_seq;
        j.records.push((seq, record));
        Some(seq)
    }
}

/// Where a link's reply goes.
#[derive(Clone, Copy, Debug)]
enum Addr {
    Terminal { slot: usize, token: u32 },
    Saf,
}

#[derive(Debug)]
enum Event {
    ClientAct { client: usize },
    Commit,
    Connected { life: u64, link: usize, ok: bool },
    HostReceive { conn: u64, bytes: Bytes },
    LinkReceive { conn: u64, bytes: Bytes },
    Cut { link: usize },
    Crash,
}

struct Scheduled {
    at: Instant,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the heap's top is the earliest (ties in scheduling order).
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What the faults of one seed are.
#[derive(Clone, Copy, Debug)]
struct Faults {
    drop: f64,
    late: f64,
    duplicate: f64,
    refuse_sign_on: f64,
    cuts: u32,
    crash: bool,
    hang_up: f64,
}

/// One request as its terminal saw it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub client: usize,
    pub stan: u32,
    pub mti: u16,
    pub amount: u64,
    /// The answers that came (DE39, DE38 starting with `S`: stand-in).
    pub answers: Vec<([u8; 2], bool)>,
    /// The terminal hung up, or the switch crashed, before the answer.
    pub abandoned: bool,
    /// Reverses (0420) the request with this STAN.
    pub reverses: Option<u32>,
    /// The life of the switch (crashes so far) that answered it.
    answered_in: Option<u64>,
    body: Bytes,
}

pub struct Client {
    pub tid: Vec<u8>,
    next_stan: u32,
    slot: Option<usize>,
    codec: FrameCodec,
    rbuf: BytesMut,
    /// STANs of this client's requests awaiting an answer.
    in_flight: Vec<u32>,
    /// STANs whose answer never came because of a hang-up or a crash: the
    /// terminal reverses them itself, as real terminals do.
    to_reverse: Vec<u32>,
    /// STANs given up (reversed or to be): never repeated again.
    closed: Vec<u32>,
}

/// The switch: everything a crash takes away.
struct Switch {
    life: u64,
    shared: Arc<Shared>,
    terminals: Vec<Option<TerminalCore<SimJournal>>>,
    links: Vec<LinkCore<Addr>>,
    /// The host connection of each link, when connected.
    link_conn: Vec<Option<u64>>,
    connecting: Vec<bool>,
    saf: SafCore,
    saf_handle: SafHandle,
    saf_rx: mpsc::Receiver<SafEntry>,
    saf_told_up: Option<bool>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub requests: u64,
    pub answers: u64,
    pub host_approvals: u64,
    pub host_reversals: u64,
    pub crashes: u64,
    pub cuts: u64,
    pub dropped: u64,
    pub late: u64,
    pub duplicated: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.requests += o.requests;
        self.answers += o.answers;
        self.host_approvals += o.host_approvals;
        self.host_reversals += o.host_reversals;
        self.crashes += o.crashes;
        self.cuts += o.cuts;
        self.dropped += o.dropped;
        self.late += o.late;
        self.duplicated += o.duplicated;
    }
}

pub struct World {
    rng: XorShift,
    base: Now,
    now: Now,
    events: BinaryHeap<Scheduled>,
    next_event: u64,
    config: Config,
    faults: Faults,
    pub journal: Rc<RefCell<JournalState>>,
    switch: Switch,
    pub clients: Vec<Client>,
    pub sent: Vec<Sent>,
    /// Index into `sent` by (client, STAN).
    sent_at: HashMap<(usize, u32), usize>,
    pub host: Host,
    host_conns: HashMap<u64, HostConn>,
    next_conn: u64,
    pub stats: Stats,
}

impl World {
    pub fn new(seed: u64, base: Instant) -> World {
        let mut rng = XorShift::new(seed);
        let config = Config::parse(&config_text()).expect("simulation config");
        let faults = Faults {
            drop: rng.next_f64() * 0.1,
            late: rng.next_f64() * 0.05,
            duplicate: rng.next_f64() * 0.05,
            refuse_sign_on: rng.next_f64() * 0.3,
            cuts: rng.below(4) as u32,
            crash: rng.below(3) == 0,
            hang_up: rng.next_f64() * 0.04,
        };
        let base = Now {
            at: base,
            unix_ms: 1_795_592_096_000,
        };
        let journal = Rc::new(RefCell::new(JournalState::default()));
        let switch = Switch::start(&config, 0, seed, base, 1, &Recovery::empty(), &journal);
        let mut w = World {
            host: Host::new(specs::iso87ascii(), seed),
            rng,
            base,
            now: base,
            events: BinaryHeap::new(),
            next_event: 0,
            config,
            faults,
            journal,
            switch,
            clients: (0..CLIENTS)
                .map(|i| Client {
                    tid: format!("SIMT{i:04}").into_bytes(),
                    next_stan: 1,
                    slot: None,
                    codec: FrameCodec::new(LengthHeader::Binary2, 8192),
                    rbuf: BytesMut::new(),
                    in_flight: Vec::new(),
                    to_reverse: Vec::new(),
                    closed: Vec::new(),
                })
                .collect(),
            sent: Vec::new(),
            sent_at: HashMap::new(),
            host_conns: HashMap::new(),
            next_conn: 1,
            stats: Stats::default(),
        };
        for c in 0..CLIENTS {
            let at = Duration::from_millis(w.rng.below(50));
            w.schedule(at, Event::ClientAct { client: c });
        }
        for _ in 0..w.faults.cuts {
            let at = Duration::from_millis(w.rng.below(TRAFFIC.as_millis() as u64));
            let link = w.rng.below(2) as usize;
            w.schedule(at, Event::Cut { link });
        }
        if w.faults.crash {
            let at = Duration::from_millis(200 + w.rng.below(TRAFFIC.as_millis() as u64 - 200));
            w.schedule(at, Event::Crash);
        }
        w
    }

    /// Everything the checks look at, for a failing seed replayed alone.
    pub fn dump(&self) {
        println!("faults: {:?}", self.faults);
        for s in &self.sent {
            println!(
                "sent: terminal {} STAN {} MTI {:04} amount {} reverses {:?} abandoned {} answers {:?}",
                s.client,
                s.stan,
                s.mti,
                s.amount,
                s.reverses,
                s.abandoned,
                s.answers
                    .iter()
                    .map(|(c, si)| format!(
                        "{}{}",
                        String::from_utf8_lossy(c),
                        if *si { " (stand-in)" } else { "" }
                    ))
                    .collect::<Vec<_>>()
            );
        }
        for (seq, r) in &self.journal.borrow().records {
            println!("journal {seq}: {r}");
        }
        println!("host approved: {:?}", self.host.log.approved);
        println!("host reversed: {:?}", self.host.log.reversed);
        println!("host advised: {:?}", self.host.log.advised);
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.next_event += 1;
        self.events.push(Scheduled {
            at: self.now.at + after,
            seq: self.next_event,
            event,
        });
    }

    fn in_traffic(&self) -> bool {
        self.now.at < self.base.at + TRAFFIC
    }

    /// Runs to the end of the quiet time.
    pub fn run(&mut self) -> Result<(), String> {
        let end = self.base.at + TRAFFIC + QUIET;
        self.pump();
        loop {
            self.stats.steps += 1;
            if self.stats.steps > MAX_STEPS {
                return Err(format!(
                    "livelock: {MAX_STEPS} steps by {:?} of virtual time",
                    self.now.at - self.base.at
                ));
            }
            let Some(at) = self.next_moment() else {
                return Err("nothing left to happen: no deadline at all".into());
            };
            if at > end {
                break;
            }
            if at > self.now.at {
                self.now = self.now.plus(at - self.now.at);
            }
            if self.host.refuse_sign_on != self.refusing_now() {
                self.host.refuse_sign_on = !self.host.refuse_sign_on;
            }
            while self.events.peek().is_some_and(|e| e.at <= self.now.at) {
                let Some(e) = self.events.pop() else { break };
                self.apply(e.event);
                self.pump();
            }
            self.fire_timeouts();
            self.pump();
        }
        self.stats.requests = self.sent.len() as u64;
        self.stats.answers = self.sent.iter().map(|s| s.answers.len() as u64).sum();
        self.stats.host_approvals = self.host.log.approved.len() as u64;
        self.stats.host_reversals = self.host.log.reversed.len() as u64;
        Ok(())
    }

    /// Sign-ons are refused in some stretches of the traffic time.
    fn refusing_now(&self) -> bool {
        if !self.in_traffic() || self.faults.refuse_sign_on < 0.15 {
            return false;
        }
        let ms = (self.now.at - self.base.at).as_millis() as u64;
        (ms / 300) % 3 == 1
    }

    fn next_moment(&self) -> Option<Instant> {
        let s = &self.switch;
        let terminals = s
            .terminals
            .iter()
            .flatten()
            .filter_map(|t| t.poll_timeout());
        let links = s.links.iter().filter_map(|l| l.poll_timeout());
        [self.events.peek().map(|e| e.at), s.saf.poll_timeout()]
            .into_iter()
            .flatten()
            .chain(terminals)
            .chain(links)
            .min()
    }

    fn fire_timeouts(&mut self) {
        let now = self.now;
        let s = &mut self.switch;
        for t in s.terminals.iter_mut().flatten() {
            if t.poll_timeout().is_some_and(|d| d <= now.at) {
                t.handle_timeout(now);
            }
        }
        for l in s.links.iter_mut() {
            if l.poll_timeout().is_some_and(|d| d <= now.at) {
                l.handle_timeout(now);
            }
        }
        if s.saf.poll_timeout().is_some_and(|d| d <= now.at) {
            s.saf.handle_timeout(now);
        }
    }

    fn apply(&mut self, event: Event) {
        let now = self.now;
        match event {
            Event::ClientAct { client } => self.client_act(client),
            Event::Commit => {
                let mut j = self.journal.borrow_mut();
                j.commit_due = false;
                j.durable = j.next_seq;
                let durable = j.durable;
                drop(j);
                for t in self.switch.terminals.iter_mut().flatten() {
                    t.handle_durable(now, durable);
                }
            }
            Event::Connected { life, link, ok } => {
                if life != self.switch.life {
                    return;
                }
                self.switch.connecting[link] = false;
                if ok {
                    let conn = self.next_conn;
                    self.next_conn += 1;
                    self.host_conns.insert(conn, HostConn::new());
                    self.switch.link_conn[link] = Some(conn);
                    self.switch.links[link].handle_connected(now);
                } else {
                    self.switch.links[link].handle_connect_failed(now, "refused");
                }
            }
            Event::HostReceive { conn, bytes } => {
                let Some(hc) = self.host_conns.get_mut(&conn) else {
                    return;
                };
                let replies = self.host.receive(hc, &bytes);
                for r in replies {
                    self.host_reply(conn, r.bytes, r.transaction);
                }
            }
            Event::LinkReceive { conn, bytes } => {
                let Some(link) = self.switch.link_conn.iter().position(|&c| c == Some(conn)) else {
                    return;
                };
                let mut codec = FrameCodec::new(LengthHeader::Binary2, 8192);
                let mut buf = BytesMut::from(&bytes[..]);
                while let Ok(Some(frame)) = codec.decode(&mut buf) {
                    self.switch.links[link].handle_frame(now, frame);
                }
            }
            Event::Cut { link } => {
                if let Some(conn) = self.switch.link_conn[link].take() {
                    self.stats.cuts += 1;
                    self.host_conns.remove(&conn);
                    self.switch.links[link].handle_closed(now, "cut by the simulation");
                }
            }
            Event::Crash => self.crash(),
        }
    }

    /// The host's answer on its way back, faults applied.
    fn host_reply(&mut self, conn: u64, bytes: Bytes, transaction: bool) {
        let faulty = transaction && self.in_traffic();
        let f = self.faults;
        if faulty && self.rng.next_f64() < f.drop {
            self.stats.dropped += 1;
            return;
        }
        // A busy host during the traffic, a quick one while the backlog
        // drains (store-and-forward sends one entry at a time).
        let spread = if self.in_traffic() { 20_000 } else { 2_000 };
        let mut latency = Duration::from_micros(200 + self.rng.below(spread));
        if faulty && self.rng.next_f64() < f.late {
            self.stats.late += 1;
            latency += Duration::from_millis(250);
        }
        self.schedule(
            latency,
            Event::LinkReceive {
                conn,
                bytes: bytes.clone(),
            },
        );
        if faulty && self.rng.next_f64() < f.duplicate {
            self.stats.duplicated += 1;
            let again = latency + Duration::from_micros(self.rng.below(5_000));
            self.schedule(again, Event::LinkReceive { conn, bytes });
        }
    }

    /// The switch dies: what was not durable is gone, every connection
    /// drops, and a new switch starts from the journal.
    fn crash(&mut self) {
        self.stats.crashes += 1;
        {
            let mut j = self.journal.borrow_mut();
            let durable = j.durable;
            j.records.retain(|(seq, _)| *seq <= durable);
            j.next_seq = durable;
            j.commit_due = false;
        }
        for conn in self.switch.link_conn.iter_mut().filter_map(Option::take) {
            self.host_conns.remove(&conn);
        }
        for c in 0..self.clients.len() {
            self.client_lost(c);
        }
        let mut fold = Fold::new();
        for (seq, r) in self.journal.borrow().records.iter() {
            fold.apply(*seq, r);
        }
        let next_txn = fold.next_txn();
        let (unfinished, saf, unanswered) = fold.finish();
        let recovery = Recovery {
            next_seq: self.journal.borrow().next_seq + 1,
            next_txn,
            torn: None,
            corrupt: Vec::new(),
            unfinished,
            saf,
            stats: RecoveryStats {
                unanswered,
                ..RecoveryStats::default()
            },
            oldest_needed_seq: None,
            last_cutover: fold.last_cutover(),
            batches: fold.take_batches(),
        };
        let life = self.switch.life + 1;
        let seed = self.rng.next_u64();
        self.switch = Switch::start(
            &self.config,
            life,
            seed,
            self.now,
            next_txn,
            &recovery,
            &self.journal,
        );
    }

    /// The client's connection is gone: what it awaited is abandoned.
    fn client_lost(&mut self, c: usize) {
        let client = &mut self.clients[c];
        client.slot = None;
        client.rbuf.clear();
        for stan in client.in_flight.drain(..) {
            if let Some(&i) = self.sent_at.get(&(c, stan)) {
                let s = &mut self.sent[i];
                s.abandoned = true;
                // Terminals reverse what they sent and never heard about
                // (a repeat's STAN is its original's).
                if s.reverses.is_none()
                    && matches!(s.mti, 100 | 101 | 200 | 201)
                    && !client.closed.contains(&stan)
                {
                    client.closed.push(stan);
                    client.to_reverse.push(stan);
                }
                // A reversal that was not acknowledged is sent again.
                if let Some(original) = s.reverses {
                    client.to_reverse.push(original);
                }
            }
        }
    }

    fn client_act(&mut self, c: usize) {
        let now = self.now;
        if self.in_traffic() {
            let think = Duration::from_micros(self.rng.below(4_000));
            self.schedule(think, Event::ClientAct { client: c });
        } else if self.clients[c].to_reverse.is_empty() {
            return;
        } else {
            self.schedule(Duration::from_millis(50), Event::ClientAct { client: c });
        }
        let slot = match self.clients[c].slot {
            Some(s) if self.switch.terminals.get(s).is_some_and(Option::is_some) => s,
            _ => {
                let peer: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 40_000 + c as u16));
                let durable = self.journal.borrow().durable;
                let core = TerminalCore::new(
                    now,
                    self.switch.shared.clone(),
                    SimJournal(self.journal.clone()),
                    peer,
                    durable,
                );
                self.switch.terminals.push(Some(core));
                let s = self.switch.terminals.len() - 1;
                self.clients[c].slot = Some(s);
                s
            }
        };
        let in_flight = self.clients[c].in_flight.len();
        if self.in_traffic() && in_flight > 0 && self.rng.next_f64() < self.faults.hang_up {
            if let Some(t) = self.switch.terminals[slot].as_mut() {
                t.handle_peer_closed(now);
            }
            self.client_lost(c);
            return;
        }
        if in_flight >= CLIENT_PIPELINE {
            return;
        }
        if let Some(original) = self.clients[c].to_reverse.pop() {
            return self.send_reversal(c, slot, original);
        }
        if !self.in_traffic() {
            return;
        }
        let roll = self.rng.next_f64();
        if roll < 0.05 {
            // A repeat (0201/0101) of a request already answered. Only
            // while the switch that answered it runs: its memory of
            // answers does not survive a crash (README, "Limits"), after
            // which terminals reverse rather than repeat.
            let life = self.switch.life;
            let answered: Vec<usize> = self
                .sent
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    s.client == c && s.answered_in == Some(life) && s.reverses.is_none()
                })
                // One send per STAN at a time: answers are told apart by it.
                .filter(|(_, s)| !self.clients[c].in_flight.contains(&s.stan))
                .filter(|(_, s)| !self.clients[c].closed.contains(&s.stan))
                .filter(|(_, s)| matches!(s.mti, 100 | 200))
                .map(|(i, _)| i)
                .collect();
            if !answered.is_empty() {
                let pick = answered[self.rng.below(answered.len() as u64) as usize];
                let original = self.sent[pick].clone();
                return self.send_repeat(c, slot, &original);
            }
        }
        let amount = match self.rng.below(10) {
            0 => 95_000 + self.rng.below(10_000),
            1..=3 => 10_000 + self.rng.below(50_000),
            _ => 100 + self.rng.below(STAND_IN_MAX),
        };
        let mti = if self.rng.below(4) == 0 {
            Mti::AUTHORIZATION
        } else {
            Mti::FINANCIAL
        };
        let card = self.rng.below(8);
        self.send_new(c, slot, mti, amount, card);
    }

    fn next_stan(&mut self, c: usize) -> u32 {
        let client = &mut self.clients[c];
        let stan = client.next_stan;
        client.next_stan += 1;
        stan
    }

    fn send_new(&mut self, c: usize, slot: usize, mti: Mti, amount: u64, card: u64) {
        let stan = self.next_stan(c);
        // The load generator's cards: Luhn-valid, one BIN.
        let pan = loadtest::messages::card_pan(b"476173", 900_101_000 + card);
        let tid = self.clients[c].tid.clone();
        let rrn = format!("{:012}", u64::from(stan) + 100_000 * c as u64);
        let de7 = crate::clock::transmission_time(self.now.unix_ms / 1000);
        let mut b = MessageBuilder::new(specs::iso87ascii(), mti);
        b.set(2, &pan)
            .set(3, b"000000")
            .set_number(4, amount)
            .set(7, &de7)
            .set_number(11, u64::from(stan))
            .set(18, b"5411")
            .set(37, rrn.as_bytes())
            .set(41, &tid)
            .set(42, b"SIMMERCHANT0001")
            .set(49, b"840");
        let body = b.to_bytes().expect("a simulation request packs").freeze();
        self.send(c, slot, stan, mti.value(), amount, None, body);
    }

    fn send_repeat(&mut self, c: usize, slot: usize, original: &Sent) {
        let repeat = Mti::new(original.mti + 1).expect("repeat MTI");
        let Ok(msg) = Message::parse(original.body.clone(), specs::iso87ascii()) else {
            return;
        };
        let mut b = MessageBuilder::new(specs::iso87ascii(), repeat);
        b.copy_all(&msg);
        let body = b.to_bytes().expect("a repeat packs").freeze();
        // A repeat is its own send awaiting its own (the original's) answer.
        self.send(
            c,
            slot,
            original.stan,
            repeat.value(),
            original.amount,
            None,
            body,
        );
    }

    fn send_reversal(&mut self, c: usize, slot: usize, original: u32) {
        let Some(&i) = self.sent_at.get(&(c, original)) else {
            return;
        };
        let orig = self.sent[i].clone();
        let stan = self.next_stan(c);
        let tid = self.clients[c].tid.clone();
        let de90 = format!("{:04}{:06}{}", orig.mti, orig.stan, "0".repeat(32));
        let de7 = crate::clock::transmission_time(self.now.unix_ms / 1000);
        let pan = Message::parse(orig.body.clone(), specs::iso87ascii())
            .ok()
            .and_then(|m| m.field(2).map(<[u8]>::to_vec))
            .unwrap_or_default();
        let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::REVERSAL_ADVICE);
        b.set(2, &pan)
            .set(3, b"000000")
            .set_number(4, orig.amount)
            .set(7, &de7)
            .set_number(11, u64::from(stan))
            .set(41, &tid)
            .set(42, b"SIMMERCHANT0001")
            .set(49, b"840")
            .set(90, de90.as_bytes());
        let body = b.to_bytes().expect("a reversal packs").freeze();
        self.send(c, slot, stan, 420, orig.amount, Some(original), body);
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        c: usize,
        slot: usize,
        stan: u32,
        mti: u16,
        amount: u64,
        reverses: Option<u32>,
        body: Bytes,
    ) {
        // A repeat shares its original's STAN; its record replaces the
        // index so the answer goes to the latest send.
        self.sent.push(Sent {
            client: c,
            stan,
            mti,
            amount,
            answers: Vec::new(),
            abandoned: false,
            reverses,
            answered_in: None,
            body: body.clone(),
        });
        self.sent_at.insert((c, stan), self.sent.len() - 1);
        self.clients[c].in_flight.push(stan);
        let now = self.now;
        if let Some(t) = self.switch.terminals[slot].as_mut() {
            t.handle_frame(now, body);
        }
    }

    /// Bytes the switch wrote to a client.
    fn client_receive(&mut self, c: usize, bytes: &[u8]) {
        self.clients[c].rbuf.extend_from_slice(bytes);
        loop {
            let client = &mut self.clients[c];
            let frame = match client.codec.decode(&mut client.rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => panic!("the switch sent a terminal a bad frame: {e}"),
            };
            let msg = Message::parse(frame, specs::iso87ascii())
                .unwrap_or_else(|e| panic!("the switch sent a terminal an unreadable answer: {e}"));
            let Some(stan) = msg.stan() else {
                panic!("an answer without DE11");
            };
            let code = msg.response_code().unwrap_or(*b"  ");
            let stand_in = msg.field(38).is_some_and(|v| v.first() == Some(&b'S'));
            let client = &mut self.clients[c];
            if let Some(pos) = client.in_flight.iter().position(|&s| s == stan) {
                client.in_flight.swap_remove(pos);
            }
            match self.sent_at.get(&(c, stan)) {
                Some(&i) => {
                    self.sent[i].answers.push((code, stand_in));
                    self.sent[i].answered_in = Some(self.switch.life);
                }
                None => panic!("an answer for STAN {stan} the terminal never sent"),
            }
        }
    }

    /// Carries out what every core asks for until nothing moves.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            if !self.pump_once() {
                return;
            }
        }
        panic!("the cores keep asking for work without time passing");
    }

    fn pump_once(&mut self) -> bool {
        let now = self.now;
        let mut moved = false;
        // Terminals: forwards to links, answers to clients.
        for slot in 0..self.switch.terminals.len() {
            let s = &mut self.switch;
            let Some(t) = s.terminals[slot].as_mut() else {
                continue;
            };
            while let Some(f) = t.poll_forward() {
                moved = true;
                match s.links.get_mut(f.link) {
                    Some(l) if l.accepts_forwards() => l.handle_forward(
                        now,
                        f.key,
                        f.body,
                        f.echo,
                        Addr::Terminal {
                            slot,
                            token: f.token,
                        },
                    ),
                    _ => t.handle_forward_refused(now, f.token),
                }
            }
            if let Some(out) = t.poll_transmit() {
                moved = true;
                let bytes = out.to_vec();
                t.advance(bytes.len());
                if let Some(c) = self.clients.iter().position(|c| c.slot == Some(slot)) {
                    self.client_receive(c, &bytes);
                }
            }
            let s = &mut self.switch;
            if s.terminals[slot].as_ref().is_some_and(|t| t.is_finished()) {
                s.terminals[slot] = None;
                for c in self.clients.iter_mut().filter(|c| c.slot == Some(slot)) {
                    c.slot = None;
                }
            }
        }
        // Links: connects, bytes to the host, replies, up/down.
        for i in 0..self.switch.links.len() {
            let s = &mut self.switch;
            if !s.connecting[i] && s.links[i].poll_connect(now) {
                s.connecting[i] = true;
                let ok = self.rng.below(10) != 0;
                let life = s.life;
                self.schedule(
                    Duration::from_micros(500),
                    Event::Connected { life, link: i, ok },
                );
            }
            let s = &mut self.switch;
            if let Some(out) = s.links[i].poll_transmit() {
                moved = true;
                let bytes = Bytes::copy_from_slice(out);
                s.links[i].handle_transmitted(bytes.len());
                if let Some(conn) = s.link_conn[i] {
                    let at = Duration::from_micros(50 + self.rng.below(500));
                    self.schedule(at, Event::HostReceive { conn, bytes });
                }
            }
            let s = &mut self.switch;
            while let Some((addr, outcome)) = s.links[i].poll_reply() {
                moved = true;
                match addr {
                    Addr::Terminal { slot, token } => {
                        if let Some(t) = s.terminals.get_mut(slot).and_then(Option::as_mut) {
                            t.handle_reply(now, token, outcome);
                        }
                    }
                    Addr::Saf => s.saf.handle_answer(now, answer_of(&outcome)),
                }
            }
            while s.links[i].poll_event().is_some() {}
            if !s.links[i].wants_socket()
                && let Some(conn) = s.link_conn[i].take()
            {
                self.host_conns.remove(&conn);
            }
            let s = &mut self.switch;
            s.shared.acquirers[0].links[i]
                .shared
                .set_up(s.links[i].is_up());
        }
        // Store-and-forward: new entries, links up, events, sends.
        let s = &mut self.switch;
        while let Ok(e) = s.saf_rx.try_recv() {
            moved = true;
            if s.saf.handle_entry(now, e).is_err() {
                panic!("store-and-forward refused an entry its handle had reserved");
            }
        }
        let up = s.links.iter().any(LinkCore::is_up);
        if s.saf_told_up != Some(up) {
            s.saf_told_up = Some(up);
            s.saf.handle_links_up(now, up);
        }
        loop {
            while let Some(e) = s.saf.poll_event() {
                moved = true;
                if matches!(e, SafEvent::Acked { .. } | SafEvent::Expired { .. }) {
                    s.saf_handle.entry_left();
                }
                if let Some(record) = crate::switch::saf::record_of(&e, now.unix_ms) {
                    SimJournal(self.journal.clone()).append(record);
                }
            }
            let Some((key, body)) = s.saf.poll_send() else {
                break;
            };
            moved = true;
            match s
                .links
                .iter_mut()
                .find(|l| l.is_up() && l.accepts_forwards())
            {
                Some(l) => l.handle_forward(now, key, body, EchoSpans::UNKNOWN, Addr::Saf),
                None => s.saf.handle_answer(now, Answer::NotAnswered),
            }
        }
        // The journal's group commit, a little later.
        let mut j = self.journal.borrow_mut();
        if j.next_seq > j.durable && !j.commit_due {
            j.commit_due = true;
            drop(j);
            let after = Duration::from_micros(100 + self.rng.below(900));
            self.schedule(after, Event::Commit);
        }
        moved
    }
}

fn answer_of(outcome: &Outcome) -> Answer {
    match outcome {
        Outcome::Answered { response_code, .. } => Answer::Answered(*response_code),
        Outcome::Failed(_) => Answer::NotAnswered,
    }
}

impl Switch {
    /// A switch as `Switch::start` would build it, with the simulation's
    /// handles, resuming store-and-forward from `recovery`.
    fn start(
        config: &Config,
        life: u64,
        seed: u64,
        now: Now,
        next_txn: u64,
        recovery: &Recovery,
        journal: &Rc<RefCell<JournalState>>,
    ) -> Switch {
        let a = &config.acquirers[0];
        let mut links = Vec::new();
        let mut handles = Vec::new();
        for i in 0..a.links.len() {
            let mut settings = LinkSettings::from_acquirer(a, i);
            settings.seed = seed ^ (i as u64 + 1);
            links.push(LinkCore::new(settings, now));
            let ls = Arc::new(LinkShared::new(format!("{}#{i}", a.name), a.links[i]));
            // Nothing reads these queues: the simulation hands forwards to
            // the link cores itself.
            let (h, _) = LinkHandle::channel(ls, 1);
            handles.push(h);
        }
        let (saf_handle, saf_rx) = SafHandle::channel(config.saf.max_entries);
        let acquirers = vec![AcquirerHandle {
            name: a.name.clone(),
            spec: a.spec.spec,
            links: handles,
            stand_in: a.stand_in.clone(),
            answer_must_match: crate::switch::acquirer::link::FieldSet::of(&a.answer_must_match),
            saf: saf_handle.clone(),
            security: a.security.clone(),
        }];
        crate::switch::saf::resume_from_journal(&acquirers, recovery, now.unix_ms, |r| {
            SimJournal(journal.clone()).append(r);
        });
        let mut shared =
            Shared::new(config, acquirers, unused_journal(), next_txn).expect("simulation routes");
        // Placement in the recent answers is seeded per process in the
        // switch; here by the run, so a seed replays exactly.
        shared.recent = Arc::new(crate::switch::repeats::RecentAnswers::with_seed(
            config.limits.recent_answers,
            config.limits.recent_answers_ttl,
            seed,
        ));
        Switch {
            life,
            shared: Arc::new(shared),
            terminals: Vec::new(),
            connecting: vec![false; links.len()],
            link_conn: vec![None; links.len()],
            links,
            saf: SafCore::new(config.saf.clone(), a.spec.spec),
            saf_handle,
            saf_rx,
            saf_told_up: None,
        }
    }
}

impl Recovery {
    /// Nothing to recover (a first start).
    fn empty() -> Recovery {
        Recovery {
            next_seq: 1,
            next_txn: 1,
            torn: None,
            corrupt: Vec::new(),
            unfinished: Vec::new(),
            saf: Vec::new(),
            stats: RecoveryStats::default(),
            oldest_needed_seq: None,
            last_cutover: None,
            batches: Default::default(),
        }
    }
}
