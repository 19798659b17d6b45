//! The payShield client: [`PayShieldClient::call`] sends an
//! [`HsmCommand`] to a network HSM and returns its answer as an
//! [`HsmReply`], the same as [`crate::security::hsm::soft::SoftHsm`]
//! would for the same keys and inputs.
//!
//! Each connection is an actor (a tokio task owning the socket, its
//! matching table and its reconnect state) reading a bounded inbox; the
//! cloneable handle resolves key names, checks what the soft HSM checks
//! (key types, algorithms, lengths, the PAN: with the same errors),
//! encodes the command, and sends it with a oneshot for the answer.
//!
//! * Several commands are in flight on one connection: each carries a
//!   header unique among them (base 36, `header_len` characters), which
//!   the HSM echoes and the actor matches the answer by; a late answer
//!   (after its timeout) finds no entry and is dropped. Headers are taken
//!   in turn from a counter, so one comes round again only after all
//!   `36^header_len` have been used (1.7 million with the default 4): an
//!   answer that late would be taken for a newer command's (which then
//!   fails if the response code differs).
//! * In flight across all connections: at most `max_in_flight` (a
//!   semaphore whose permit travels with the command until it is
//!   answered, timed out or failed); past it a call fails at once with
//!   `Unavailable("busy")`, so a stalled HSM never queues without bound.
//! * Each command has `timeout` from when its connection took it: the
//!   actor answers `Timeout` at the deadline (and the caller stops
//!   waiting then too).
//! * A connection that drops fails its commands in flight with
//!   `Unavailable`, and is reopened after a backoff (`backoff_min`,
//!   doubling to `backoff_max` while connects fail). While it is down,
//!   calls fail at once with `Unavailable`; while a connect is under way
//!   they wait for it (within their timeout).
//!
//! Nothing logged names a key, a PIN block or data: lines give the
//! address, the command's name and the reason.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use super::KeyBlocks;
use super::wire::{
    self, Account, ErrorCode, Export, KeyBlockText, MacSize, PinTranslation, Request, Response,
};
use crate::frame::{FrameCodec, LengthHeader};
use crate::security::dukpt::{DukptError, Ksn};
use crate::security::hsm::{HsmCommand, HsmError, HsmReply, MacAlgorithm, MacValue, PinSource};
use crate::security::keys::Algorithm;
use crate::security::mac::MacError;
use crate::security::pinblock::{PinBlockError, PinFormat};
use crate::security::store::{KeyType, StoredBlock};
use crate::throttle::LogThrottle;

/// How the client reaches the HSM.
#[derive(Clone, Debug)]
pub struct PayShieldConfig {
    /// `host:port`.
    pub addr: String,
    /// Connections kept open (commands go round them).
    pub connections: usize,
    /// The HSM's configured message header length.
    pub header_len: usize,
    /// Commands in flight over all connections; past it, `busy`.
    pub max_in_flight: usize,
    /// Per command, from when its connection took it.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Largest answer accepted (a longer one closes the connection).
    pub max_frame: usize,
}

impl Default for PayShieldConfig {
    fn default() -> Self {
        PayShieldConfig {
            addr: "127.0.0.1:1500".into(),
            connections: 1,
            header_len: wire::DEFAULT_HEADER_LEN,
            max_in_flight: 64,
            timeout: Duration::from_millis(1000),
            connect_timeout: Duration::from_millis(1000),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_frame: 8 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("payshield client: {0}")]
    Invalid(String),
    #[error("payshield client: must be started inside a tokio runtime")]
    NoRuntime,
}

/// The cloneable handle.
#[derive(Clone)]
pub struct PayShieldClient {
    inner: Arc<Inner>,
}

struct Inner {
    links: Vec<Link>,
    next: AtomicUsize,
    permits: Arc<Semaphore>,
    keys: Arc<KeyBlocks>,
    timeout: Duration,
    header_len: usize,
    max_body: usize,
    max_in_flight: usize,
}

struct Link {
    tx: mpsc::Sender<Call>,
    up: watch::Receiver<bool>,
}

/// What the answer must be, and how it becomes an [`HsmReply`].
enum Expect {
    Pin(PinFormat),
    /// The HSM's whole MAC, of which the left `len` bytes are wanted.
    Mac(usize),
    Verify,
    /// A MAC length M8 does not carry: the whole MAC made with M6, the
    /// left bytes compared here in constant time.
    VerifyLocal(MacValue),
    Key,
    Diagnostics,
}

struct Call {
    /// The body with a placeholder header, which the actor overwrites.
    body: Vec<u8>,
    response: [u8; 2],
    name: &'static str,
    expect: Expect,
    reply: oneshot::Sender<Result<HsmReply, HsmError>>,
    permit: OwnedSemaphorePermit,
}

impl PayShieldClient {
    /// Starts the connection actors on the current tokio runtime (they
    /// connect at once) and returns the handle. The actors stop when the
    /// last handle is dropped.
    pub fn start(
        config: PayShieldConfig,
        keys: Arc<KeyBlocks>,
    ) -> Result<PayShieldClient, ConfigError> {
        let invalid = |s: String| Err(ConfigError::Invalid(s));
        if !(1..=wire::MAX_HEADER_LEN).contains(&config.header_len) {
            return invalid(format!(
                "header_len {} (1 to {})",
                config.header_len,
                wire::MAX_HEADER_LEN
            ));
        }
        if config.connections == 0 || config.connections > 64 {
            return invalid(format!("connections {} (1 to 64)", config.connections));
        }
        if config.max_in_flight == 0 || config.max_in_flight > 65_536 {
            return invalid(format!(
                "max_in_flight {} (1 to 65536)",
                config.max_in_flight
            ));
        }
        // Every command in flight on a connection needs its own header.
        let space = header_space(config.header_len);
        if space < config.max_in_flight as u64 {
            return invalid(format!(
                "header_len {} numbers only {space} commands; max_in_flight is {}",
                config.header_len, config.max_in_flight
            ));
        }
        if config.timeout.is_zero() {
            return invalid("timeout 0".into());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let max_frame = config.max_frame.clamp(64, wire::MAX_BODY);
        let mut links = Vec::with_capacity(config.connections);
        for index in 0..config.connections {
            // The permits bound what can be queued; the inbox never fills
            // before they run out.
            let (tx, inbox) = mpsc::channel(config.max_in_flight);
            let (up_tx, up) = watch::channel(false);
            let actor = Actor {
                index,
                addr: config.addr.clone(),
                inbox,
                up: up_tx,
                header_len: config.header_len,
                space,
                timeout: config.timeout,
                connect_timeout: config.connect_timeout,
                backoff_min: config.backoff_min,
                backoff_max: config.backoff_max.max(config.backoff_min),
                backoff: config.backoff_min,
                codec: FrameCodec::new(LengthHeader::Binary2, max_frame),
                read: None,
                write: None,
                rbuf: BytesMut::with_capacity(4096),
                wbuf: BytesMut::with_capacity(4096),
                connecting: None,
                retry_at: None,
                pending: HashMap::with_capacity(config.max_in_flight),
                deadlines: VecDeque::with_capacity(config.max_in_flight),
                waiting: VecDeque::new(),
                next_header: 0,
                next_id: 0,
                unreadable: LogThrottle::new(Duration::from_secs(10)),
            };
            runtime.spawn(actor.run());
            links.push(Link { tx, up });
        }
        Ok(PayShieldClient {
            inner: Arc::new(Inner {
                links,
                next: AtomicUsize::new(0),
                permits: Arc::new(Semaphore::new(config.max_in_flight)),
                keys,
                timeout: config.timeout,
                header_len: config.header_len,
                max_body: max_frame,
                max_in_flight: config.max_in_flight,
            }),
        })
    }

    /// Is at least one connection up?
    pub fn is_connected(&self) -> bool {
        self.inner.links.iter().any(|l| *l.up.borrow())
    }

    /// Waits until every connection is up (tests, and a start that wants
    /// the HSM there before it takes traffic).
    pub async fn wait_connected(&self) {
        for link in &self.inner.links {
            let mut up = link.up.clone();
            let _ = up.wait_for(|u| *u).await;
        }
    }

    /// Is the HSM's LMK the one the key store's blocks are under (its
    /// diagnostics' check value against the store's `lmk_kcv`)? A switch
    /// asks once at start: under another LMK every block would be refused.
    /// `Ok(None)` when the key blocks came with no store's KCV.
    pub async fn lmk_matches(&self) -> Result<Option<bool>, HsmError> {
        let Some(store) = self.inner.keys.lmk_kcv() else {
            return Ok(None);
        };
        match self.call(HsmCommand::Diagnostics).await? {
            HsmReply::Diagnostics { lmk_kcv, .. } => Ok(Some(lmk_kcv == store)),
            _ => Err(HsmError::Protocol(
                "diagnostics answered with something else".into(),
            )),
        }
    }

    /// Commands in flight now (taken permits).
    pub fn in_flight(&self) -> usize {
        self.inner.max_in_flight - self.inner.permits.available_permits()
    }

    pub async fn call(&self, command: HsmCommand) -> Result<HsmReply, HsmError> {
        let inner = &self.inner;
        let (request, expect) = inner.prepare(&command)?;
        let mut body = Vec::with_capacity(256);
        let placeholder = [b'0'; wire::MAX_HEADER_LEN];
        wire::encode_request(&placeholder[..inner.header_len], &request, &mut body)
            .map_err(|e| HsmError::BadInput(e.to_string()))?;
        if body.len() > inner.max_body {
            return Err(HsmError::BadInput(format!(
                "the command is {} bytes, over the {} the HSM link takes",
                body.len(),
                inner.max_body
            )));
        }
        let permit = inner
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| HsmError::Unavailable("busy".into()))?;
        let (tx, rx) = oneshot::channel();
        let call = Call {
            body,
            response: wire::response_code(request.command_code()),
            name: command.name(),
            expect,
            reply: tx,
            permit,
        };
        inner.pick().tx.try_send(call).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => HsmError::Unavailable("busy".into()),
            mpsc::error::TrySendError::Closed(_) => {
                HsmError::Unavailable("the client has stopped".into())
            }
        })?;
        match tokio::time::timeout(inner.timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(HsmError::Unavailable("the client has stopped".into())),
            Err(_) => Err(HsmError::Timeout(inner.timeout)),
        }
    }
}

impl Inner {
    /// The next connection that is up, round-robin; any when none is.
    fn pick(&self) -> &Link {
        let n = self.links.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.links[(start + i) % n])
            .find(|l| *l.up.borrow())
            .unwrap_or(&self.links[start % n])
    }

    /// The key named, of one of `wanted`'s types: the soft HSM's errors.
    fn key(&self, name: &str, wanted: &[KeyType]) -> Result<&StoredBlock, HsmError> {
        let k = self
            .keys
            .get(name)
            .ok_or_else(|| HsmError::UnknownKey(name.to_owned()))?;
        if !wanted.contains(&k.key_type) {
            return Err(HsmError::WrongKeyType {
                name: name.to_owned(),
                actual: k.key_type.name(),
                wanted: wanted[0].name(),
            });
        }
        Ok(k)
    }

    fn prepare(&self, command: &HsmCommand) -> Result<(Request, Expect), HsmError> {
        match command {
            HsmCommand::TranslatePin {
                source,
                to,
                block,
                to_format,
                pan,
            } => {
                let (from, ksn) = match source {
                    PinSource::Tpk(n) => (self.key(n, &[KeyType::Tpk])?, None),
                    PinSource::Zpk(n) => (self.key(n, &[KeyType::Zpk])?, None),
                    PinSource::Dukpt { bdk, ksn } => {
                        let bdk = self.key(bdk, &[KeyType::Bdk])?;
                        check_ksn(ksn)?;
                        if bdk.algorithm != Algorithm::Tdes {
                            return Err(HsmError::BadPinBlock(
                                "DE53: TDES DUKPT needs a double-length TDES base derivation key"
                                    .into(),
                            ));
                        }
                        (bdk, Some(*ksn))
                    }
                };
                let to = self.key(to, &[KeyType::Zpk])?;
                // What pinblock::translate checks before it decrypts, in
                // its order, so the errors are the soft HSM's.
                let from_alg = if ksn.is_some() {
                    Algorithm::Tdes
                } else {
                    from.algorithm
                };
                check_pin_key(block.format(), from_alg)?;
                let account = Account::for_pan(pan, block.format(), *to_format)
                    .map_err(|e| HsmError::BadPinBlock(e.to_string()))?;
                check_pin_key(*to_format, to.algorithm)?;
                let t = PinTranslation {
                    from: KeyBlockText(from.block.clone()),
                    to: KeyBlockText(to.block.clone()),
                    block: block.clone(),
                    to_format: *to_format,
                    account,
                };
                let req = match (source, ksn) {
                    (_, Some(ksn)) => Request::TranslateDukpt { pin: t, ksn },
                    (PinSource::Tpk(_), None) => Request::TranslateTpk(t),
                    (_, None) => Request::TranslateZpk(t),
                };
                Ok((req, Expect::Pin(*to_format)))
            }
            HsmCommand::GenerateMac {
                key,
                algorithm,
                data,
                len,
            } => {
                let k = self.key(key, &[KeyType::Tak, KeyType::Zak])?;
                let full = check_mac_key(*algorithm, k)?;
                if !(4..=full.bytes()).contains(len) {
                    return Err(HsmError::BadInput(format!("a MAC of {len} bytes")));
                }
                Ok((
                    Request::GenerateMac {
                        key: KeyBlockText(k.block.clone()),
                        algorithm: *algorithm,
                        size: full,
                        data: data.clone(),
                    },
                    Expect::Mac(*len),
                ))
            }
            HsmCommand::VerifyMac {
                key,
                algorithm,
                data,
                mac,
            } => {
                let k = self.key(key, &[KeyType::Tak, KeyType::Zak])?;
                let full = check_mac_key(*algorithm, k)?;
                if !(4..=full.bytes()).contains(&mac.len()) {
                    return Err(HsmError::BadInput(MacError::Length(mac.len()).to_string()));
                }
                let key = KeyBlockText(k.block.clone());
                Ok(match MacSize::of_len(mac.len()) {
                    Some(_) => (
                        Request::VerifyMac {
                            key,
                            algorithm: *algorithm,
                            data: data.clone(),
                            mac: mac.clone(),
                        },
                        Expect::Verify,
                    ),
                    None => (
                        Request::GenerateMac {
                            key,
                            algorithm: *algorithm,
                            size: full,
                            data: data.clone(),
                        },
                        Expect::VerifyLocal(mac.clone()),
                    ),
                })
            }
            HsmCommand::GenerateKey {
                key_type,
                algorithm,
                export_under,
            } => {
                let export = match export_under {
                    None => None,
                    Some(name) => {
                        let kek = self.key(name, &[KeyType::Zmk, KeyType::Tmk])?;
                        let scheme = match (kek.algorithm, algorithm) {
                            (Algorithm::Aes, _) => b'S',
                            (Algorithm::Tdes, Algorithm::Tdes) => b'X',
                            (Algorithm::Tdes, Algorithm::Aes) => {
                                return Err(HsmError::BadInput(
                                    "an AES key can not be exported under a TDES \
                                     key-encrypting key"
                                        .into(),
                                ));
                            }
                        };
                        Some(Export {
                            tmk: kek.key_type == KeyType::Tmk,
                            kek: KeyBlockText(kek.block.clone()),
                            scheme,
                        })
                    }
                };
                Ok((
                    Request::GenerateKey {
                        key_type: *key_type,
                        algorithm: *algorithm,
                        export,
                    },
                    Expect::Key,
                ))
            }
            HsmCommand::Diagnostics => Ok((Request::Diagnostics, Expect::Diagnostics)),
        }
    }
}

fn check_ksn(ksn: &Ksn) -> Result<(), HsmError> {
    let counter = ksn.counter();
    let e = if counter == 0 {
        DukptError::CounterZero
    } else if counter.count_ones() > 10 {
        DukptError::CounterBits(counter.count_ones())
    } else {
        return Ok(());
    };
    Err(HsmError::BadPinBlock(format!("DE53: {e}")))
}

fn check_pin_key(format: PinFormat, algorithm: Algorithm) -> Result<(), HsmError> {
    let expected = match format {
        PinFormat::Iso0 => "a TDES key",
        PinFormat::Iso4 => "an AES key",
    };
    let ok = matches!(
        (format, algorithm),
        (PinFormat::Iso0, Algorithm::Tdes) | (PinFormat::Iso4, Algorithm::Aes)
    );
    if ok {
        Ok(())
    } else {
        Err(HsmError::BadPinBlock(
            PinBlockError::WrongKey { format, expected }.to_string(),
        ))
    }
}

/// Does the key fit the algorithm? The whole MAC's size if so.
fn check_mac_key(algorithm: MacAlgorithm, key: &StoredBlock) -> Result<MacSize, HsmError> {
    let (needs, size) = match algorithm {
        MacAlgorithm::Retail | MacAlgorithm::TdesCbc => (Algorithm::Tdes, MacSize::Eight),
        MacAlgorithm::AesCmac => (Algorithm::Aes, MacSize::Sixteen),
    };
    if key.algorithm != needs {
        return Err(HsmError::BadInput(format!(
            "the {} MAC needs a {needs} key (the key given is {})",
            algorithm.name(),
            key.algorithm
        )));
    }
    Ok(size)
}

fn map_error(expect: &Expect, code: ErrorCode) -> HsmError {
    match (expect, &code.0) {
        (Expect::Verify, b"01") => HsmError::MacMismatch,
        (Expect::Pin(_), b"20" | b"22" | b"23" | b"24") => {
            HsmError::BadPinBlock(format!("the HSM answered {code}"))
        }
        _ => HsmError::Refused {
            code: code.as_str().to_owned(),
            meaning: code.meaning().to_owned(),
        },
    }
}

fn finish(expect: Expect, answer: Result<Response, ErrorCode>) -> Result<HsmReply, HsmError> {
    let answer = match answer {
        Ok(a) => a,
        Err(code) => return Err(map_error(&expect, code)),
    };
    let unfit = || HsmError::Protocol("the answer's fields do not fit the command".into());
    match (expect, answer) {
        (Expect::Pin(format), Response::Pin { block, .. }) if block.format() == format => {
            Ok(HsmReply::Pin(block))
        }
        (Expect::Mac(len), Response::Mac(mac)) if mac.len() >= len => {
            Ok(HsmReply::Mac(mac.into_iter().take(len).collect()))
        }
        (Expect::Verify, Response::Verified) => Ok(HsmReply::Verified),
        (Expect::VerifyLocal(want), Response::Mac(full)) => {
            let n = want.len();
            if full.len() >= n && bool::from(full[..n].ct_eq(&want)) {
                Ok(HsmReply::Verified)
            } else {
                Err(HsmError::MacMismatch)
            }
        }
        (
            Expect::Key,
            Response::Key {
                under_lmk,
                exported,
                kcv,
            },
        ) => Ok(HsmReply::Key {
            block: under_lmk.0,
            exported: exported.map(|(_, text)| text),
            kcv,
        }),
        (Expect::Diagnostics, Response::Diagnostics { lmk_kcv, firmware }) => {
            Ok(HsmReply::Diagnostics { lmk_kcv, firmware })
        }
        _ => Err(unfit()),
    }
}

/// How many distinct headers of `len` base-36 characters (capped: u64).
fn header_space(len: usize) -> u64 {
    36u64.checked_pow(len as u32).unwrap_or(u64::MAX)
}

fn write_header(mut n: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    for c in out.iter_mut().rev() {
        *c = DIGITS[(n % 36) as usize];
        n /= 36;
    }
}

fn read_header(h: &[u8]) -> Option<u64> {
    h.iter().try_fold(0u64, |acc, &c| {
        let d = (c as char).to_digit(36)?;
        if c.is_ascii_lowercase() {
            return None;
        }
        acc.checked_mul(36)?.checked_add(u64::from(d))
    })
}

struct Pending {
    id: u64,
    response: [u8; 2],
    name: &'static str,
    expect: Expect,
    reply: oneshot::Sender<Result<HsmReply, HsmError>>,
    _permit: OwnedSemaphorePermit,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

struct Actor {
    index: usize,
    addr: String,
    inbox: mpsc::Receiver<Call>,
    up: watch::Sender<bool>,
    header_len: usize,
    space: u64,
    timeout: Duration,
    connect_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    backoff: Duration,
    codec: FrameCodec,
    read: Option<OwnedReadHalf>,
    write: Option<OwnedWriteHalf>,
    rbuf: BytesMut,
    /// Bounded by the permits: at most `max_in_flight` commands of at
    /// most `max_frame` bytes each.
    wbuf: BytesMut,
    connecting: Option<Connecting>,
    retry_at: Option<Instant>,
    /// By header number.
    pending: HashMap<u64, Pending>,
    /// In the order sent, so in deadline order (one timeout for all).
    deadlines: VecDeque<(Instant, u64, u64)>,
    /// Calls taken while a connect is under way, with their deadlines.
    waiting: VecDeque<(Instant, Call)>,
    next_header: u64,
    next_id: u64,
    unreadable: LogThrottle,
}

enum Event {
    Call(Call),
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
    Connected(io::Result<TcpStream>),
    Tick,
    Stop,
}

async fn read_some(read: &mut Option<OwnedReadHalf>, buf: &mut BytesMut) -> io::Result<usize> {
    match read {
        Some(r) => {
            buf.reserve(4096);
            r.read_buf(buf).await
        }
        None => std::future::pending().await,
    }
}

async fn write_some(write: &mut Option<OwnedWriteHalf>, buf: &mut BytesMut) -> io::Result<usize> {
    match write {
        // One poll_write per wake-up: cancel-safe in the select (nothing is
        // written when the future is dropped before it completes).
        Some(w) if !buf.is_empty() => w.write_buf(buf).await,
        _ => std::future::pending().await,
    }
}

async fn connect_some(c: &mut Option<Connecting>) -> io::Result<TcpStream> {
    match c {
        Some(f) => f.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self) {
        self.start_connect();
        loop {
            let wake = self.next_wake();
            let event = tokio::select! {
                call = self.inbox.recv() => match call {
                    Some(c) => Event::Call(c),
                    None => Event::Stop,
                },
                r = read_some(&mut self.read, &mut self.rbuf) => Event::Read(r),
                w = write_some(&mut self.write, &mut self.wbuf) => Event::Wrote(w),
                c = connect_some(&mut self.connecting) => Event::Connected(c),
                () = sleep_until(wake) => Event::Tick,
            };
            match event {
                Event::Stop => break,
                Event::Call(call) => self.on_call(call),
                Event::Read(Ok(0)) => self.drop_connection("the HSM closed the connection"),
                Event::Read(Ok(_)) => self.on_read(),
                Event::Read(Err(e)) | Event::Wrote(Err(e)) => {
                    self.drop_connection(&format!("connection failed: {e}"))
                }
                // A write of nothing from a non-empty buffer: the peer is gone.
                Event::Wrote(Ok(0)) => self.drop_connection("the HSM stopped reading"),
                Event::Wrote(Ok(_)) => {}
                Event::Connected(r) => self.on_connected(r),
                Event::Tick => self.on_tick(),
            }
        }
        self.drop_connection("the client has stopped");
        for (_, call) in self.waiting.drain(..) {
            let _ = call
                .reply
                .send(Err(HsmError::Unavailable("the client has stopped".into())));
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        [
            self.deadlines.front().map(|d| d.0),
            self.waiting.front().map(|w| w.0),
            self.retry_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn start_connect(&mut self) {
        self.retry_at = None;
        let addr = self.addr.clone();
        let limit = self.connect_timeout;
        self.connecting = Some(Box::pin(async move {
            match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            }
        }));
    }

    fn on_connected(&mut self, result: io::Result<TcpStream>) {
        self.connecting = None;
        match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let (r, w) = stream.into_split();
                self.read = Some(r);
                self.write = Some(w);
                self.backoff = self.backoff_min;
                tracing::info!(hsm = %self.addr, connection = self.index, "payShield connection up");
                let _ = self.up.send(true);
                while let Some((deadline, call)) = self.waiting.pop_front() {
                    self.send(call, deadline);
                }
            }
            Err(e) => {
                tracing::debug!(hsm = %self.addr, connection = self.index, "payShield connect failed: {e}");
                let reason = format!("connect to {} failed: {e}", self.addr);
                for (_, call) in self.waiting.drain(..) {
                    let _ = call.reply.send(Err(HsmError::Unavailable(reason.clone())));
                }
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(self.backoff_max);
            }
        }
    }

    fn drop_connection(&mut self, reason: &str) {
        if self.read.is_none() && self.write.is_none() {
            return;
        }
        tracing::warn!(
            hsm = %self.addr,
            connection = self.index,
            in_flight = self.pending.len(),
            "payShield connection down: {reason}"
        );
        self.read = None;
        self.write = None;
        self.rbuf.clear();
        self.wbuf.clear();
        let _ = self.up.send(false);
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(HsmError::Unavailable(reason.to_owned())));
        }
        self.deadlines.clear();
        self.retry_at = Some(Instant::now() + self.backoff);
    }

    fn on_call(&mut self, call: Call) {
        let deadline = Instant::now() + self.timeout;
        if self.write.is_some() {
            self.send(call, deadline);
        } else if self.connecting.is_some() {
            self.waiting.push_back((deadline, call));
        } else {
            let _ = call.reply.send(Err(HsmError::Unavailable(format!(
                "not connected to {} (reconnecting)",
                self.addr
            ))));
        }
    }

    fn send(&mut self, mut call: Call, deadline: Instant) {
        // A header no command in flight has: the permits keep those fewer
        // than the header space, so this ends.
        let mut n = self.next_header % self.space;
        while self.pending.contains_key(&n) {
            n = (n + 1) % self.space;
        }
        self.next_header = (n + 1) % self.space;
        write_header(n, &mut call.body[..self.header_len]);
        let len = call.body.len() as u16;
        self.wbuf.extend_from_slice(&len.to_be_bytes());
        self.wbuf.extend_from_slice(&call.body);
        let id = self.next_id;
        self.next_id += 1;
        self.deadlines.push_back((deadline, n, id));
        self.pending.insert(
            n,
            Pending {
                id,
                response: call.response,
                name: call.name,
                expect: call.expect,
                reply: call.reply,
                _permit: call.permit,
            },
        );
    }

    fn on_read(&mut self) {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(frame)) => self.on_frame(&frame),
                Ok(None) => return,
                Err(e) => {
                    self.drop_connection(&format!("unreadable stream: {e}"));
                    return;
                }
            }
        }
    }

    fn on_frame(&mut self, frame: &[u8]) {
        let header = wire::split_head(frame, self.header_len).and_then(|(h, _, _)| read_header(h));
        let Some(n) = header else {
            // A broken HSM could send these by the thousand: one line per
            // interval, with a count.
            if let Some(more) = self.unreadable.allow(std::time::Instant::now()) {
                tracing::warn!(
                    hsm = %self.addr,
                    "payShield answer without a readable header: dropped ({more} more since the last line)"
                );
            }
            return;
        };
        let Some(p) = self.pending.remove(&n) else {
            tracing::debug!(hsm = %self.addr, "payShield answer for no command in flight (late?)");
            return;
        };
        let result = match wire::decode_response(frame, self.header_len) {
            Err(e) => Err(HsmError::Protocol(e.to_string())),
            Ok((_, code, _)) if code != p.response => Err(HsmError::Protocol(format!(
                "{} answered with {}",
                p.name,
                String::from_utf8_lossy(&code)
            ))),
            Ok((_, _, answer)) => finish(p.expect, answer),
        };
        let _ = p.reply.send(result);
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        while let Some(&(at, n, id)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            if self.pending.get(&n).is_some_and(|p| p.id == id) {
                if let Some(p) = self.pending.remove(&n) {
                    let _ = p.reply.send(Err(HsmError::Timeout(self.timeout)));
                }
            }
        }
        while self.waiting.front().is_some_and(|w| w.0 <= now) {
            if let Some((_, call)) = self.waiting.pop_front() {
                let _ = call.reply.send(Err(HsmError::Timeout(self.timeout)));
            }
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.start_connect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_fill_their_width() {
        let mut h = [0u8; 4];
        for n in [0u64, 1, 35, 36, 1295, 36u64.pow(4) - 1] {
            write_header(n, &mut h);
            assert_eq!(read_header(&h), Some(n));
        }
        write_header(0, &mut h);
        assert_eq!(&h, b"0000");
        assert_eq!(read_header(b"00a0"), None);
        assert_eq!(read_header(b"00-0"), None);
        assert_eq!(header_space(4), 36u64.pow(4));
        assert_eq!(header_space(40), u64::MAX);
    }
}
