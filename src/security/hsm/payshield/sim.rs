//! `switchyard hsm-sim`: an emulator of the payShield command subset the
//! client sends (CA, CC, G0, M6, M8, A0, A6, NC), over TCP, for tests.
//!
//! It holds only the LMK, as a payShield does: the keys arrive in the
//! commands as key blocks under it and are unwrapped (authenticated) per
//! command with [`keyblock::unwrap`]; the cryptography is the soft HSM's
//! ([`crate::security::pinblock`], [`crate::security::dukpt`],
//! [`soft::full_mac`], [`soft::verify_mac`], [`soft::export_under_kek`]).
//! `--keys` names the key store the switch uses: it is opened under the
//! LMK at start only to refuse a store under another LMK before any test
//! runs against it.
//!
//! Bounded: connections (`--max-connections`, past it a connection is
//! closed at once), frames (`--max-frame`: a longer one closes the
//! connection), commands in flight per connection (64: past it the reader
//! waits), answers queued per connection (64). A request it cannot read
//! is answered with error 15 (or 68 for a command it does not serve) when
//! its header and command code can be read, and the connection closed when
//! not. `--delay-ms` and `--jitter-ms` delay each answer (the jitter
//! reorders answers on a connection: the client matches them by header);
//! `--stall` reads commands and never answers (the client's timeout).
//! `--control ADDR` opens a control port taking one command per line:
//! `hold` (from now on, read commands and leave them unanswered, as
//! `--stall`; connections stay open) and `release` (answer again; what
//! came while held stays unanswered), each answered `ok`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::Decoder;

use super::wire::{self, ErrorCode, KeyBlockText, PinTranslation, Request, Response};
use crate::frame::{FrameCodec, LengthHeader};
use crate::security::dukpt::{self, Ksn};
use crate::security::hsm::soft;
use crate::security::keyblock::{self, KeyBlockError};
use crate::security::keys::{Algorithm, SecretKey};
use crate::security::lmk::Lmk;
use crate::security::pinblock::{self, PinBlockError, PinFormat};
use crate::security::random;
use crate::security::store::{self, KeyStore, KeyType};

/// Run a payShield emulator (the command subset the switch's client uses).
#[derive(clap::Args, Debug, Clone)]
pub struct HsmSimArgs {
    /// Address to listen on (port 0: any free port; the line on stdout
    /// says which).
    #[arg(long, default_value = "127.0.0.1:1500")]
    pub listen: SocketAddr,
    /// The LMK file (as `switchyard keys form-lmk` writes it).
    #[arg(long, value_name = "FILE")]
    pub lmk: PathBuf,
    /// The key store the switch uses: checked to be under this LMK.
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
    /// Message header length, in characters.
    #[arg(long, default_value_t = wire::DEFAULT_HEADER_LEN)]
    pub header_len: usize,
    /// Delay before each answer, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub delay_ms: u64,
    /// A further random delay of 0 to MS milliseconds per answer.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub jitter_ms: u64,
    /// Read commands and never answer them.
    #[arg(long)]
    pub stall: bool,
    /// A control port (`hold`, `release`: one command per line).
    #[arg(long, value_name = "ADDR")]
    pub control: Option<SocketAddr>,
    /// Connections served at once.
    #[arg(long, default_value_t = 64)]
    pub max_connections: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 8 * 1024)]
    pub max_frame: usize,
}

/// How the emulator serves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub header_len: usize,
    pub delay: Duration,
    pub jitter: Duration,
    pub stall: bool,
    /// Set by the control port's `hold`: as `stall` while it lasts.
    pub held: Arc<AtomicBool>,
    pub max_connections: usize,
    pub max_frame: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            header_len: wire::DEFAULT_HEADER_LEN,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            stall: false,
            held: Arc::new(AtomicBool::new(false)),
            max_connections: 64,
            max_frame: 8 * 1024,
        }
    }
}

/// Commands in flight, and answers queued, per connection.
const PER_CONNECTION: usize = 64;

/// The command logic: a request in, an answer or an error code out.
pub struct Emulator {
    lmk: Lmk,
}

fn key_block_error(e: KeyBlockError) -> ErrorCode {
    match e {
        KeyBlockError::Mac => ErrorCode::KEY_BLOCK_AUTH,
        KeyBlockError::AlgorithmMismatch { .. } | KeyBlockError::KeyLength(..) => {
            ErrorCode::INVALID_ALGORITHM
        }
        KeyBlockError::WrongKbpk(_) | KeyBlockError::Version(_) | KeyBlockError::Malformed(_) => {
            ErrorCode::INVALID_INPUT
        }
    }
}

fn pin_error(e: PinBlockError) -> ErrorCode {
    match e {
        PinBlockError::Control(_) | PinBlockError::PinDigit(_) | PinBlockError::Fill(_) => {
            ErrorCode::PIN_BLOCK_ERROR
        }
        PinBlockError::PinLength(_) | PinBlockError::BadPin => ErrorCode::PIN_LENGTH,
        PinBlockError::BadPan => ErrorCode::INVALID_ACCOUNT,
        // A format whose cipher is not the key's (format 0 under an AES
        // key, 4 under TDES): our choice of code, the manual's for it is
        // not known here.
        PinBlockError::WrongKey { .. } => ErrorCode::INVALID_PIN_FORMAT,
        PinBlockError::BlockLength { .. } => ErrorCode::INVALID_INPUT,
    }
}

impl Emulator {
    pub fn new(lmk: Lmk) -> Emulator {
        Emulator { lmk }
    }

    pub fn lmk_kcv(&self) -> crate::security::Kcv {
        self.lmk.kcv()
    }

    /// A key block under the LMK, authenticated, of one of `wanted`'s
    /// types (the Switchyard type in its optional block 10).
    fn unwrap(&self, text: &KeyBlockText, wanted: &[KeyType]) -> Result<SecretKey, ErrorCode> {
        let (header, key) = keyblock::unwrap(self.lmk.key(), &text.0).map_err(key_block_error)?;
        let t = header
            .block("10")
            .and_then(KeyType::parse)
            .ok_or(ErrorCode::INVALID_KEY_USAGE)?;
        if !wanted.contains(&t) || header.usage != t.usage(key.algorithm()) {
            return Err(ErrorCode::INVALID_KEY_USAGE);
        }
        Ok(key)
    }

    /// `key` as a block under the LMK.
    fn wrap(&self, header: &keyblock::Header, key: &SecretKey) -> Result<String, ErrorCode> {
        let mut pad = [0u8; 32];
        random::fill(&mut pad).map_err(|_| ErrorCode::INTERNAL)?;
        keyblock::wrap(self.lmk.key(), header, key, &pad).map_err(key_block_error)
    }

    pub fn execute(&self, req: &Request) -> Result<Response, ErrorCode> {
        match req {
            Request::TranslateTpk(t) => self.translate(t, &[KeyType::Tpk], None),
            Request::TranslateZpk(t) => self.translate(t, &[KeyType::Zpk], None),
            Request::TranslateDukpt { pin, ksn } => self.translate(pin, &[KeyType::Bdk], Some(ksn)),
            Request::GenerateMac {
                key,
                algorithm,
                size,
                data,
            } => {
                let key = self.unwrap(key, &[KeyType::Tak, KeyType::Zak])?;
                let full =
                    soft::full_mac(&key, *algorithm, data).map_err(|_| ErrorCode::INVALID_INPUT)?;
                if size.bytes() > full.len() {
                    return Err(ErrorCode::INVALID_INPUT);
                }
                Ok(Response::Mac(full.into_iter().take(size.bytes()).collect()))
            }
            Request::VerifyMac {
                key,
                algorithm,
                data,
                mac,
            } => {
                let key = self.unwrap(key, &[KeyType::Tak, KeyType::Zak])?;
                match soft::verify_mac(&key, *algorithm, data, mac) {
                    Ok(()) => Ok(Response::Verified),
                    Err(crate::security::hsm::HsmError::MacMismatch) => {
                        Err(ErrorCode::VERIFICATION_FAILURE)
                    }
                    Err(_) => Err(ErrorCode::INVALID_INPUT),
                }
            }
            Request::GenerateKey {
                key_type,
                algorithm,
                export,
                label,
            } => {
                // 16-byte keys, as the soft HSM makes them.
                let key = random::key(*algorithm, 16).map_err(|_| ErrorCode::INTERNAL)?;
                let label = label.as_deref().unwrap_or("generated");
                let header = store::header_for(label, *key_type, &key, &self.lmk);
                let block = self.wrap(&header, &key)?;
                let exported = match export {
                    None => None,
                    Some(e) => {
                        if !key_type.exportable() {
                            return Err(ErrorCode::KEY_FUNCTION_NOT_PERMITTED);
                        }
                        let types: &[KeyType] = if e.tmk {
                            &[KeyType::Tmk]
                        } else {
                            &[KeyType::Zmk]
                        };
                        let kek = self.unwrap(&e.kek, types)?;
                        let scheme = match kek.algorithm() {
                            Algorithm::Aes => b'S',
                            Algorithm::Tdes => b'X',
                        };
                        if e.scheme != scheme {
                            return Err(ErrorCode::INVALID_KEY_SCHEME);
                        }
                        let text = soft::export_under_kek(&kek, &header, &key)
                            .map_err(|_| ErrorCode::INVALID_KEY_SCHEME)?;
                        Some((scheme, text))
                    }
                };
                Ok(Response::Key {
                    under_lmk: KeyBlockText(block),
                    exported,
                    kcv: key.kcv(),
                })
            }
            Request::ImportKey {
                key_type,
                zmk,
                under_zmk,
                label,
            } => {
                let zmk = self.unwrap(zmk, &[KeyType::Zmk])?;
                let key = soft::import_tdes_under_kek(&zmk, under_zmk)
                    .map_err(|_| ErrorCode::INVALID_INPUT)?;
                let label = label.as_deref().unwrap_or("imported");
                let header = store::header_for(label, *key_type, &key, &self.lmk);
                Ok(Response::Key {
                    under_lmk: KeyBlockText(self.wrap(&header, &key)?),
                    exported: None,
                    kcv: key.kcv(),
                })
            }
            Request::Diagnostics => Ok(Response::Diagnostics {
                lmk_kcv: self.lmk.kcv(),
                firmware: firmware(),
            }),
        }
    }

    fn translate(
        &self,
        t: &PinTranslation,
        from_types: &[KeyType],
        ksn: Option<&Ksn>,
    ) -> Result<Response, ErrorCode> {
        let from = self.unwrap(&t.from, from_types)?;
        let from = match ksn {
            Some(ksn) => dukpt::pin_key(&from, ksn).map_err(|_| ErrorCode::INVALID_INPUT)?,
            None => from,
        };
        let to = self.unwrap(&t.to, &[KeyType::Zpk])?;
        let pan = t.account.pan();
        let pin = pinblock::decrypt(&from, &t.block, &pan).map_err(pin_error)?;
        let mut fill = [0u8; 8];
        if t.to_format == PinFormat::Iso4 {
            random::fill(&mut fill).map_err(|_| ErrorCode::INTERNAL)?;
        }
        let out = pinblock::encrypt(&to, t.to_format, &pin, &pan, &fill).map_err(pin_error)?;
        Ok(Response::Pin {
            pin_len: pin.length() as u8,
            block: out,
        })
    }

    /// The answer body to a request body; `None`: unanswerable (close).
    pub fn answer(&self, body: &[u8], header_len: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(128);
        match wire::decode_request(body, header_len) {
            Ok((header, req)) => {
                let result = self.execute(&req);
                wire::encode_response(
                    &header,
                    req.command_code(),
                    result.as_ref().map_err(|c| *c),
                    &mut out,
                );
            }
            Err(Some(refusal)) => {
                tracing::debug!("hsm-sim: refused {}: {}", refusal.code, refusal.reason);
                wire::encode_response(
                    &refusal.header,
                    refusal.command,
                    Err(refusal.code),
                    &mut out,
                );
            }
            Err(None) => return None,
        }
        Some(out)
    }
}

/// The firmware number (9A in the manual).
fn firmware() -> String {
    format!("SY-{}", env!("CARGO_PKG_VERSION"))
        .chars()
        .take(9)
        .collect()
}

/// Serves on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, emulator: Arc<Emulator>, config: SimConfig) {
    let config = Arc::new(config);
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, most likely: pause rather than spin.
                tracing::warn!("hsm-sim: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "hsm-sim: connection limit reached; closed");
            drop(stream);
            continue;
        };
        let (emulator, config) = (emulator.clone(), config.clone());
        tokio::spawn(async move {
            connection(stream, emulator, config).await;
            drop(permit);
        });
    }
}

/// Binds `addr` (SO_REUSEADDR: a restarted emulator gets its port back
/// while the old connections are in TIME_WAIT) and serves on it in a
/// task; returns the address bound.
pub async fn spawn(
    addr: SocketAddr,
    emulator: Arc<Emulator>,
    config: SimConfig,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = bind(addr)?;
    let local = listener.local_addr()?;
    Ok((local, tokio::spawn(serve(listener, emulator, config))))
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let mut b = [0u8; 8];
    if random::fill(&mut b).is_err() {
        return Duration::ZERO;
    }
    let ms = max.as_millis().max(1) as u64;
    Duration::from_millis(u64::from_le_bytes(b) % (ms + 1))
}

async fn connection(stream: TcpStream, emulator: Arc<Emulator>, config: Arc<SimConfig>) {
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(PER_CONNECTION);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let in_flight = Arc::new(Semaphore::new(PER_CONNECTION));
    let mut codec = FrameCodec::new(LengthHeader::Binary2, config.max_frame);
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let frame = match codec.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                buf.reserve(4096);
                match read.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            Err(e) => {
                tracing::warn!("hsm-sim: {e}; connection closed");
                break;
            }
        };
        if config.stall || config.held.load(Ordering::Relaxed) {
            continue;
        }
        if wire::split_head(&frame, config.header_len).is_none() {
            tracing::warn!(
                "hsm-sim: a message without a header and command code; connection closed"
            );
            break;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (emulator, config, tx) = (emulator.clone(), config.clone(), tx.clone());
        tokio::spawn(async move {
            let wait = config.delay + jitter(config.jitter);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            if let Some(body) = emulator.answer(&frame, config.header_len) {
                let Ok(len) = u16::try_from(body.len()) else {
                    return;
                };
                let mut out = Vec::with_capacity(2 + body.len());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&body);
                let _ = tx.send(out).await;
            }
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
}

/// The control port: `hold` and `release`, one per line, each answered
/// `ok` (anything else: `error: ...`). One session at a time is enough for
/// a test or a person with `nc`.
pub async fn control(listener: TcpListener, held: Arc<AtomicBool>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read.take(64 * 1024)).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let answer = match line.trim() {
                "hold" => {
                    held.store(true, Ordering::Relaxed);
                    tracing::info!("hsm-sim: held (commands read, not answered)");
                    "ok\n"
                }
                "release" => {
                    held.store(false, Ordering::Relaxed);
                    tracing::info!("hsm-sim: released");
                    "ok\n"
                }
                _ => "error: commands: hold, release\n",
            };
            if write.write_all(answer.as_bytes()).await.is_err() {
                break;
            }
        }
    }
}

pub fn run(args: HsmSimArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("switchyard hsm-sim: {msg}");
        ExitCode::from(1)
    };
    if !(1..=wire::MAX_HEADER_LEN).contains(&args.header_len) {
        return fail(format!("--header-len: 1 to {}", wire::MAX_HEADER_LEN));
    }
    let lmk = match Lmk::load(&args.lmk) {
        Ok(l) => l,
        Err(e) => return fail(format!("--lmk {}: {e}", args.lmk.display())),
    };
    let keys = match &args.keys {
        None => None,
        Some(path) => match KeyStore::open(path, &lmk) {
            Ok(s) => Some(s.entries().count()),
            Err(e) => return fail(format!("--keys: {e}")),
        },
    };
    crate::telemetry::init_logging(crate::telemetry::LogFormat::Text);
    let config = SimConfig {
        header_len: args.header_len,
        delay: Duration::from_millis(args.delay_ms),
        jitter: Duration::from_millis(args.jitter_ms),
        stall: args.stall,
        held: Arc::new(AtomicBool::new(false)),
        max_connections: args.max_connections,
        max_frame: args.max_frame.clamp(64, wire::MAX_BODY),
    };
    // One thread: a test stand-in, leaving the cores to what it serves.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("can not start the runtime: {e}")),
    };
    runtime.block_on(async move {
        let kcv = lmk.kcv();
        let emulator = Arc::new(Emulator::new(lmk));
        let held = config.held.clone();
        let (addr, task) = match spawn(args.listen, emulator, config).await {
            Ok(x) => x,
            Err(e) => return fail(format!("can not listen on {}: {e}", args.listen)),
        };
        let keys = keys.map_or(String::new(), |n| format!(", {n} keys in the store"));
        println!(
            "switchyard hsm-sim: listening on {addr} (header {} characters, LMK KCV {kcv}{keys})",
            args.header_len
        );
        if let Some(at) = args.control {
            let listener = match TcpListener::bind(at).await {
                Ok(l) => l,
                Err(e) => return fail(format!("--control: can not listen on {at}: {e}")),
            };
            let local = listener.local_addr().map_or(at, |a| a);
            println!("switchyard hsm-sim: control on {local} (hold, release)");
            tokio::spawn(control(listener, held));
        }
        tokio::select! {
            _ = task => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::pinblock::{EncryptedPinBlock, Pin};
    use crate::security::store::header_for;
    use wire::Account;

    fn lmk() -> Lmk {
        Lmk::from_components(&[
            SecretKey::aes(&[0x11; 32]).expect("c1"),
            SecretKey::aes(&[0x22; 32]).expect("c2"),
        ])
        .expect("lmk")
    }

    fn block(lmk: &Lmk, t: KeyType, key: &SecretKey) -> KeyBlockText {
        let header = header_for("k", t, key, lmk);
        KeyBlockText(keyblock::wrap(lmk.key(), &header, key, &[7; 32]).expect("wrap"))
    }

    fn tdes(h: &str) -> SecretKey {
        SecretKey::from_hex(Algorithm::Tdes, h).expect("key")
    }

    #[test]
    fn g0_translates_the_published_dukpt_vector() {
        let lmk = lmk();
        let zpk = tdes("1A1B1C1D1E1F2A2B2C2D2E2F3A3B3C3D");
        let req = Request::TranslateDukpt {
            pin: PinTranslation {
                from: block(
                    &lmk,
                    KeyType::Bdk,
                    &tdes("0123456789ABCDEFFEDCBA9876543210"),
                ),
                to: block(&lmk, KeyType::Zpk, &zpk),
                block: EncryptedPinBlock::from_bytes(
                    PinFormat::Iso0,
                    &crate::hex::parse_hex("1B9C1845EB993A7A").expect("hex"),
                )
                .expect("block"),
                to_format: PinFormat::Iso0,
                account: Account::for_pan("4012345678909", PinFormat::Iso0, PinFormat::Iso0)
                    .expect("pan"),
            },
            ksn: Ksn::new(&crate::hex::parse_hex("FFFF9876543210E00001").expect("hex"))
                .expect("ksn"),
        };
        let emu = Emulator::new(lmk);
        let Ok(Response::Pin { pin_len, block }) = emu.execute(&req) else {
            panic!("not a PIN block")
        };
        assert_eq!(pin_len, 4);
        let pin = pinblock::decrypt(&zpk, &block, "4012345678909").expect("decrypt");
        assert!(pin.matches("1234"));
    }

    #[test]
    fn errors_are_answered_with_payshield_codes() {
        let lmk = lmk();
        let tpk = tdes("0123456789ABCDEFFEDCBA9876543210");
        let zpk = tdes("1A1B1C1D1E1F2A2B2C2D2E2F3A3B3C3D");
        let pan = "4012345678909";
        let pin = Pin::new("1234").expect("pin");
        let under = |k: &SecretKey| {
            pinblock::encrypt(k, PinFormat::Iso0, &pin, pan, &[0; 8]).expect("encrypt")
        };
        let t = |from: KeyBlockText, pin_block: EncryptedPinBlock| {
            Request::TranslateTpk(PinTranslation {
                from,
                to: block(&lmk, KeyType::Zpk, &zpk),
                block: pin_block,
                to_format: PinFormat::Iso0,
                account: Account::for_pan(pan, PinFormat::Iso0, PinFormat::Iso0).expect("pan"),
            })
        };
        let good = t(block(&lmk, KeyType::Tpk, &tpk), under(&tpk));
        let wrong_pin_key = t(block(&lmk, KeyType::Tpk, &tpk), under(&zpk));
        let wrong_type = t(block(&lmk, KeyType::Zpk, &tpk), under(&tpk));
        let other_lmk = Lmk::from_components(&[
            SecretKey::aes(&[0x33; 32]).expect("c1"),
            SecretKey::aes(&[0x22; 32]).expect("c2"),
        ])
        .expect("lmk");
        let foreign = t(block(&other_lmk, KeyType::Tpk, &tpk), under(&tpk));
        let emu = Emulator::new(lmk);
        assert!(matches!(
            emu.execute(&good),
            Ok(Response::Pin { pin_len: 4, .. })
        ));
        assert_eq!(emu.execute(&wrong_pin_key), Err(ErrorCode::PIN_BLOCK_ERROR));
        assert_eq!(emu.execute(&wrong_type), Err(ErrorCode::INVALID_KEY_USAGE));
        assert_eq!(emu.execute(&foreign), Err(ErrorCode::KEY_BLOCK_AUTH));
        // Unreadable input: 15 with the header echoed; no header: nothing.
        assert_eq!(emu.answer(b"0042CA12", 4), Some(b"0042CB15".to_vec()));
        assert_eq!(emu.answer(b"00", 4), None);
    }

    #[test]
    fn a0_labels_its_block_and_a6_imports_from_under_the_zmk() {
        let lmk = lmk();
        let zmk = tdes("2C2C2C2C2C2C2C2C3D3D3D3D3D3D3D3D");
        let tmk = tdes("6E6E6E6E6E6E6E6E7F7F7F7F7F7F7F7F");
        let emu = Emulator::new(lmk.clone());
        // A0 mode 1 under a TMK: under the LMK (labelled) and under the TMK.
        let Ok(Response::Key {
            under_lmk,
            exported: Some((b'X', under_tmk)),
            kcv,
        }) = emu.execute(&Request::GenerateKey {
            key_type: KeyType::Tak,
            algorithm: Algorithm::Tdes,
            export: Some(wire::Export {
                tmk: true,
                kek: block(&lmk, KeyType::Tmk, &tmk),
                scheme: b'X',
            }),
            label: Some("t-T1.tak".into()),
        })
        else {
            panic!("not a key under the TMK")
        };
        let (header, key) = keyblock::unwrap(lmk.key(), &under_lmk.0).expect("under the LMK");
        assert_eq!(header.block("LB"), Some("t-T1.tak"));
        assert_eq!(header.block("10"), Some("TAK"));
        assert_eq!(key.kcv(), kcv);
        let sent = soft::import_tdes_under_kek(&tmk, &under_tmk).expect("under the TMK");
        assert_eq!(sent.kcv(), kcv);

        // A6: a key under the ZMK comes back under the LMK with its KCV.
        let zpk = tdes("1111111111111111EEEEEEEEEEEEEEEE");
        let header = header_for("x", KeyType::Zpk, &zpk, &lmk);
        let under_zmk = soft::export_under_kek(&zmk, &header, &zpk).expect("export");
        let import = |zmk_block: KeyBlockText, under_zmk: String| Request::ImportKey {
            key_type: KeyType::Zpk,
            zmk: zmk_block,
            under_zmk,
            label: Some("acq.zpk".into()),
        };
        let Ok(Response::Key {
            under_lmk,
            exported: None,
            kcv,
        }) = emu.execute(&import(block(&lmk, KeyType::Zmk, &zmk), under_zmk.clone()))
        else {
            panic!("not an imported key")
        };
        assert_eq!(kcv, zpk.kcv());
        let (header, key) = keyblock::unwrap(lmk.key(), &under_lmk.0).expect("under the LMK");
        assert_eq!(key.kcv(), zpk.kcv());
        assert_eq!(header.block("LB"), Some("acq.zpk"));
        assert_eq!(header.block("10"), Some("ZPK"));
        // Under another ZMK it decrypts to another key: its KCV differs
        // (the switch compares it with the one the host sent).
        let other = tdes("0E0E0E0E0E0E0E0E0F0F0F0F0F0F0F0F");
        let Ok(Response::Key { kcv: wrong, .. }) = emu.execute(&import(
            block(&lmk, KeyType::Zmk, &other),
            under_zmk.clone(),
        )) else {
            panic!("not a key")
        };
        assert_ne!(wrong, zpk.kcv());
        // A TMK where a ZMK belongs: invalid key usage.
        assert_eq!(
            emu.execute(&import(block(&lmk, KeyType::Tmk, &zmk), under_zmk.clone())),
            Err(ErrorCode::INVALID_KEY_USAGE)
        );
        // Through the codec: the header echoed, A7 with the fields.
        let mut body = Vec::new();
        wire::encode_request(
            b"0009",
            &import(block(&lmk, KeyType::Zmk, &zmk), under_zmk),
            &mut body,
        )
        .expect("encodes");
        let answer = emu.answer(&body, 4).expect("answered");
        let (h, code, resp) = wire::decode_response(&answer, 4).expect("decodes");
        assert_eq!((h, code), (&b"0009"[..], *b"A7"));
        assert!(matches!(resp, Ok(Response::Key { kcv, .. }) if kcv == zpk.kcv()));
    }
}
