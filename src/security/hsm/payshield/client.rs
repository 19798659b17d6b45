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

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::codec::Decoder;

use super::KeyBlocks;
use super::core::{ClientCore, Command, CoreSettings, Event, Expect, header_space};
use super::wire::{self, Account, Export, KeyBlockText, MacSize, PinTranslation, Request};
use crate::frame::{FrameCodec, LengthHeader};
use crate::security::dukpt::{DukptError, Ksn};
use crate::security::hsm::{HsmCommand, HsmError, HsmReply, MacAlgorithm, PinSource};
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
    /// Per command: the caller waits at most this long, and the
    /// connection gives the command up this long after it took it.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Largest message either way: a longer command is refused
    /// (`BadInput`), a longer answer closes the connection.
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

/// Where an answer goes: the caller's oneshot, and the permit that holds
/// its place among the `max_in_flight` until the answer (or its failure)
/// is delivered.
struct ReplyTo {
    tx: oneshot::Sender<Result<HsmReply, HsmError>>,
    _permit: OwnedSemaphorePermit,
}

type Call = Command<ReplyTo>;

impl PayShieldClient {
    /// Starts the connection actors on the current tokio runtime (they
    /// connect at once) and returns the handle. The actors stop when the
    /// last handle is dropped, failing what they still hold with
    /// `Unavailable`.
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
            let driver = Driver {
                index,
                addr: config.addr.clone(),
                inbox,
                up: up_tx,
                connect_timeout: config.connect_timeout,
                core: ClientCore::new(CoreSettings {
                    header_len: config.header_len,
                    timeout: config.timeout,
                    backoff_min: config.backoff_min,
                    backoff_max: config.backoff_max,
                }),
                codec: FrameCodec::new(LengthHeader::Binary2, max_frame),
                read: None,
                write: None,
                rbuf: BytesMut::with_capacity(4096),
                connecting: None,
                unreadable: LogThrottle::new(Duration::from_secs(10)),
            };
            runtime.spawn(driver.run());
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

    /// Sends `command` and waits for its answer. A MAC or PIN block that
    /// fails under its key's current block is tried once more under the
    /// block that key replaced, while its overlap lasts (as the soft HSM
    /// takes a replaced key): what the other side sent before it had the
    /// new key.
    pub async fn call(&self, command: HsmCommand) -> Result<HsmReply, HsmError> {
        let answer = self.send(&command, None).await;
        let retry = matches!(
            answer,
            Err(HsmError::MacMismatch) | Err(HsmError::BadPinBlock(_))
        );
        if !retry {
            return answer;
        }
        let checked_by = match &command {
            HsmCommand::VerifyMac { key, .. } => key,
            HsmCommand::TranslatePin {
                source: PinSource::Tpk(key) | PinSource::Zpk(key),
                ..
            } => key,
            _ => return answer,
        };
        match self
            .inner
            .keys
            .previous_at(checked_by, crate::clock::unix_now_ms())
        {
            Some(old) => self.send(&command, Some(old)).await,
            None => answer,
        }
    }

    async fn send(
        &self,
        command: &HsmCommand,
        older: Option<Arc<StoredBlock>>,
    ) -> Result<HsmReply, HsmError> {
        let inner = &self.inner;
        let (request, expect) = inner.prepare(command, older)?;
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
            reply: ReplyTo {
                tx,
                _permit: permit,
            },
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
    fn key(&self, name: &str, wanted: &[KeyType]) -> Result<Arc<StoredBlock>, HsmError> {
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

    /// The request for `command`; with `older`, the key that checks what
    /// arrived (the PIN's source key, the MAC key of a verify) is that
    /// block instead of the name's current one.
    fn prepare(
        &self,
        command: &HsmCommand,
        older: Option<Arc<StoredBlock>>,
    ) -> Result<(Request, Expect), HsmError> {
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
                    PinSource::AesDukpt { .. } => {
                        // Refused by check-config: the profile's BDK is AES.
                        return Err(HsmError::BadInput(
                            "AES DUKPT (X9.24-3) runs on the soft HSM only".into(),
                        ));
                    }
                };
                let from = match older {
                    Some(old) if ksn.is_none() => old,
                    _ => from,
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
                let full = check_mac_key(*algorithm, &k)?;
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
                let k = match older {
                    Some(old) => old,
                    None => self.key(key, &[KeyType::Tak, KeyType::Zak])?,
                };
                let full = check_mac_key(*algorithm, &k)?;
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
                label,
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
                        label: label.as_deref().map(str::to_owned),
                    },
                    Expect::Key,
                ))
            }
            HsmCommand::ImportKey {
                key_type,
                zmk,
                under,
                label,
            } => {
                let zmk = self.key(zmk, &[KeyType::Zmk])?;
                if zmk.algorithm != Algorithm::Tdes {
                    return Err(HsmError::BadInput(
                        "a key under an AES ZMK comes as a key block, not as 32 hex digits".into(),
                    ));
                }
                if under.len() != 32 || !under.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return Err(HsmError::BadInput(
                        "the key under the ZMK is not 32 hex digits".into(),
                    ));
                }
                Ok((
                    Request::ImportKey {
                        key_type: *key_type,
                        zmk: KeyBlockText(zmk.block.clone()),
                        under_zmk: under.to_ascii_uppercase(),
                        label: label.as_deref().map(str::to_owned),
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

type Connecting = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// One connection's driver: the socket, the inbox, the connect under way;
/// everything else is the core's.
struct Driver {
    index: usize,
    addr: String,
    inbox: mpsc::Receiver<Call>,
    up: watch::Sender<bool>,
    connect_timeout: Duration,
    core: ClientCore<ReplyTo>,
    codec: FrameCodec,
    read: Option<OwnedReadHalf>,
    write: Option<OwnedWriteHalf>,
    rbuf: BytesMut,
    connecting: Option<Connecting>,
    unreadable: LogThrottle,
}

enum Wake {
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

async fn write_some(write: &mut Option<OwnedWriteHalf>, buf: &[u8]) -> io::Result<usize> {
    match write {
        // One poll_write per wake-up: cancel-safe in the select (nothing is
        // written when the future is dropped before it completes).
        Some(w) if !buf.is_empty() => w.write(buf).await,
        _ => std::future::pending().await,
    }
}

async fn connect_some(c: &mut Option<Connecting>) -> io::Result<TcpStream> {
    match c {
        Some(f) => f.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(mut self) {
        loop {
            if self.core.poll_connect() {
                self.start_connect();
            }
            self.deliver();
            let wake = self.core.poll_timeout();
            let event = tokio::select! {
                call = self.inbox.recv() => match call {
                    Some(c) => Wake::Call(c),
                    None => Wake::Stop,
                },
                r = read_some(&mut self.read, &mut self.rbuf) => Wake::Read(r),
                w = write_some(&mut self.write, self.core.poll_transmit()) => Wake::Wrote(w),
                c = connect_some(&mut self.connecting) => Wake::Connected(c),
                () = sleep_until(wake) => Wake::Tick,
            };
            let now = Instant::now();
            match event {
                Wake::Stop => break,
                Wake::Call(call) => self.core.handle_command(now, call),
                Wake::Read(Ok(0)) => self.close(now, "the HSM closed the connection"),
                Wake::Read(Ok(_)) => self.on_read(now),
                Wake::Read(Err(e)) | Wake::Wrote(Err(e)) => {
                    self.close(now, &format!("connection failed: {e}"))
                }
                // A write of nothing from a non-empty buffer: the peer is gone.
                Wake::Wrote(Ok(0)) => self.close(now, "the HSM stopped reading"),
                Wake::Wrote(Ok(n)) => self.core.advance(n),
                Wake::Connected(Ok(stream)) => {
                    self.connecting = None;
                    let _ = stream.set_nodelay(true);
                    let (r, w) = stream.into_split();
                    self.read = Some(r);
                    self.write = Some(w);
                    self.core.handle_connected(now);
                }
                Wake::Connected(Err(e)) => {
                    self.connecting = None;
                    let reason = format!("connect to {} failed: {e}", self.addr);
                    self.core.handle_connect_failed(now, &reason);
                }
                Wake::Tick => self.core.handle_timeout(now),
            }
        }
        self.core.handle_stop();
        self.deliver();
    }

    fn start_connect(&mut self) {
        let addr = self.addr.clone();
        let limit = self.connect_timeout;
        self.connecting = Some(Box::pin(async move {
            match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            }
        }));
    }

    fn close(&mut self, now: Instant, reason: &str) {
        self.read = None;
        self.write = None;
        self.rbuf.clear();
        self.core.handle_closed(now, reason);
    }

    fn on_read(&mut self, now: Instant) {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(frame)) => self.core.handle_frame(now, &frame),
                Ok(None) => return,
                Err(e) => {
                    self.close(now, &format!("unreadable stream: {e}"));
                    return;
                }
            }
        }
    }

    /// Answers to their callers, events to the log and the up flag.
    fn deliver(&mut self) {
        while let Some((to, result)) = self.core.poll_reply() {
            // The caller may have stopped waiting; its permit goes either way.
            let _ = to.tx.send(result);
        }
        while let Some(event) = self.core.poll_event() {
            let (hsm, connection) = (&self.addr, self.index);
            match event {
                Event::Up => {
                    tracing::info!(%hsm, connection, "payShield connection up");
                    let _ = self.up.send(true);
                }
                Event::Down { reason, failed } => {
                    tracing::warn!(%hsm, connection, failed, "payShield connection down: {reason}");
                    let _ = self.up.send(false);
                }
                Event::ConnectFailed { reason, retry_in } => {
                    tracing::debug!(%hsm, connection, ?retry_in, "payShield connect failed: {reason}");
                }
                Event::Late => {
                    tracing::debug!(%hsm, connection, "payShield answer for no command in flight (late?)");
                }
                Event::Unreadable => {
                    // A broken HSM could send these by the thousand: one
                    // line per interval, with a count.
                    if let Some(more) = self.unreadable.allow(Instant::now()) {
                        tracing::warn!(
                            %hsm,
                            connection,
                            "payShield answer without a readable header: dropped \
                             ({more} more since the last line)"
                        );
                    }
                }
            }
        }
    }
}
