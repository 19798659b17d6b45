//! The payShield connection's core: the state of one connection to the
//! HSM as a plain struct, in the manner of the switch's other cores (see
//! ARCHITECTURE.md, "Cores and drivers"). No socket, no runtime, no clock
//! read: every input is a `handle_*(now, ...)` call, everything it decides
//! comes out of a `poll_*()` call, and `poll_timeout()` is its next
//! deadline. The driver (`client.rs`) owns the socket and the inbox, reads
//! the clock when it wakes, and decides nothing.
//!
//! What it decides: the header of each command (unique among those in
//! flight: a counter in base 36, so one comes round again only after all
//! `36^header_len` have been used), which answer belongs to which command,
//! when a command has waited too long, what fails when the connection
//! drops, and when to connect again (backoff doubling from `backoff_min`
//! to `backoff_max` while connects fail, back to `backoff_min` once one
//! succeeds).
//!
//! `R` is where an answer goes (the driver's oneshot and permit; a number
//! in the tests).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::wire::{self, ErrorCode, Response};
use crate::security::hsm::{HsmError, HsmReply, MacValue};
use crate::security::pinblock::PinFormat;

/// What the answer must be, and how it becomes an [`HsmReply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
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

/// A command for the HSM, encoded, its header still a placeholder.
pub struct Command<R> {
    /// The body, beginning with `header_len` placeholder characters.
    pub body: Vec<u8>,
    pub response: [u8; 2],
    pub name: &'static str,
    pub expect: Expect,
    pub reply: R,
}

#[derive(Clone, Copy, Debug)]
pub struct CoreSettings {
    pub header_len: usize,
    /// Per command, from when the core takes it.
    pub timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// What happened, for the driver's logs and the handle's up flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Up,
    Down {
        reason: String,
        failed: usize,
    },
    ConnectFailed {
        reason: String,
        retry_in: Duration,
    },
    /// An answer whose header names no command in flight (late, after its
    /// timeout, or never sent).
    Late,
    /// An answer whose header could not be read.
    Unreadable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not connected; connect again at `retry_at` (`None`: at once).
    Down {
        retry_at: Option<Instant>,
    },
    Connecting,
    Up,
}

struct Pending<R> {
    id: u64,
    response: [u8; 2],
    name: &'static str,
    expect: Expect,
    reply: R,
}

pub struct ClientCore<R> {
    settings: CoreSettings,
    space: u64,
    state: State,
    backoff: Duration,
    /// By header number.
    pending: HashMap<u64, Pending<R>>,
    /// In the order sent, so in deadline order (one timeout for all):
    /// (deadline, header, id).
    deadlines: VecDeque<(Instant, u64, u64)>,
    /// Commands taken while a connect is under way, with their deadlines.
    waiting: VecDeque<(Instant, Command<R>)>,
    /// Frames to write; bounded by what the driver lets in (its permits).
    transmit: Vec<u8>,
    replies: VecDeque<(R, Result<HsmReply, HsmError>)>,
    events: VecDeque<Event>,
    want_connect: bool,
    next_header: u64,
    next_id: u64,
}

/// How many distinct headers of `len` base-36 characters (capped: u64).
pub fn header_space(len: usize) -> u64 {
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
        if c.is_ascii_lowercase() {
            return None;
        }
        let d = (c as char).to_digit(36)?;
        acc.checked_mul(36)?.checked_add(u64::from(d))
    })
}

impl<R> ClientCore<R> {
    /// A core that wants to connect at once.
    pub fn new(settings: CoreSettings) -> ClientCore<R> {
        ClientCore {
            space: header_space(settings.header_len),
            backoff: settings.backoff_min,
            settings,
            state: State::Down { retry_at: None },
            pending: HashMap::new(),
            deadlines: VecDeque::new(),
            waiting: VecDeque::new(),
            transmit: Vec::with_capacity(4096),
            replies: VecDeque::new(),
            events: VecDeque::new(),
            want_connect: true,
            next_header: 0,
            next_id: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Commands sent and not yet answered, timed out or failed.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// `true` once when the driver should start a connect (then answer
    /// with `handle_connected` or `handle_connect_failed`).
    pub fn poll_connect(&mut self) -> bool {
        if std::mem::take(&mut self.want_connect) {
            self.state = State::Connecting;
            true
        } else {
            false
        }
    }

    pub fn handle_connected(&mut self, _now: Instant) {
        self.state = State::Up;
        self.backoff = self.settings.backoff_min;
        self.events.push_back(Event::Up);
        while let Some((deadline, cmd)) = self.waiting.pop_front() {
            self.send(cmd, deadline);
        }
    }

    pub fn handle_connect_failed(&mut self, now: Instant, reason: &str) {
        for (_, cmd) in self.waiting.drain(..) {
            self.replies
                .push_back((cmd.reply, Err(HsmError::Unavailable(reason.to_owned()))));
        }
        self.state = State::Down {
            retry_at: Some(now + self.backoff),
        };
        self.events.push_back(Event::ConnectFailed {
            reason: reason.to_owned(),
            retry_in: self.backoff,
        });
        self.backoff =
            (self.backoff * 2).min(self.settings.backoff_max.max(self.settings.backoff_min));
    }

    /// The connection is gone (closed by the HSM, a failed read or write,
    /// an unframeable stream): what was in flight fails.
    pub fn handle_closed(&mut self, now: Instant, reason: &str) {
        if self.state != State::Up {
            return;
        }
        let failed = self.pending.len();
        for (_, p) in self.pending.drain() {
            self.replies
                .push_back((p.reply, Err(HsmError::Unavailable(reason.to_owned()))));
        }
        self.deadlines.clear();
        self.transmit.clear();
        self.state = State::Down {
            retry_at: Some(now + self.backoff),
        };
        self.events.push_back(Event::Down {
            reason: reason.to_owned(),
            failed,
        });
    }

    pub fn handle_command(&mut self, now: Instant, cmd: Command<R>) {
        let deadline = now + self.settings.timeout;
        match self.state {
            State::Up => self.send(cmd, deadline),
            State::Connecting => self.waiting.push_back((deadline, cmd)),
            State::Down { .. } if self.want_connect => self.waiting.push_back((deadline, cmd)),
            State::Down { .. } => self.replies.push_back((
                cmd.reply,
                Err(HsmError::Unavailable("not connected (reconnecting)".into())),
            )),
        }
    }

    fn send(&mut self, mut cmd: Command<R>, deadline: Instant) {
        let h = self.settings.header_len;
        if cmd.body.len() < h + 2 || cmd.body.len() > wire::MAX_BODY {
            self.replies.push_back((
                cmd.reply,
                Err(HsmError::BadInput(
                    "a command of no length the HSM takes".into(),
                )),
            ));
            return;
        }
        // A header no command in flight has. The driver keeps those fewer
        // than the header space (it checks max_in_flight against it), so
        // this ends.
        let mut n = self.next_header % self.space;
        while self.pending.contains_key(&n) {
            n = (n + 1) % self.space;
        }
        self.next_header = (n + 1) % self.space;
        write_header(n, &mut cmd.body[..h]);
        let len = cmd.body.len() as u16;
        self.transmit.extend_from_slice(&len.to_be_bytes());
        self.transmit.extend_from_slice(&cmd.body);
        let id = self.next_id;
        self.next_id += 1;
        self.deadlines.push_back((deadline, n, id));
        self.pending.insert(
            n,
            Pending {
                id,
                response: cmd.response,
                name: cmd.name,
                expect: cmd.expect,
                reply: cmd.reply,
            },
        );
    }

    /// An answer's body (after the length prefix).
    pub fn handle_frame(&mut self, _now: Instant, frame: &[u8]) {
        let header =
            wire::split_head(frame, self.settings.header_len).and_then(|(h, _, _)| read_header(h));
        let Some(n) = header else {
            self.events.push_back(Event::Unreadable);
            return;
        };
        let Some(p) = self.pending.remove(&n) else {
            self.events.push_back(Event::Late);
            return;
        };
        let result = match wire::decode_response(frame, self.settings.header_len) {
            Err(e) => Err(HsmError::Protocol(e.to_string())),
            Ok((_, code, _)) if code != p.response => Err(HsmError::Protocol(format!(
                "{} answered with {}",
                p.name,
                String::from_utf8_lossy(&code)
            ))),
            Ok((_, _, answer)) => finish(p.expect, answer),
        };
        self.replies.push_back((p.reply, result));
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, n, id)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            if self.pending.get(&n).is_some_and(|p| p.id == id) {
                if let Some(p) = self.pending.remove(&n) {
                    self.replies
                        .push_back((p.reply, Err(HsmError::Timeout(self.settings.timeout))));
                }
            }
        }
        while self.waiting.front().is_some_and(|w| w.0 <= now) {
            if let Some((_, cmd)) = self.waiting.pop_front() {
                self.replies
                    .push_back((cmd.reply, Err(HsmError::Timeout(self.settings.timeout))));
            }
        }
        if let State::Down { retry_at: Some(at) } = self.state {
            if at <= now {
                self.state = State::Down { retry_at: None };
                self.want_connect = true;
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = match self.state {
            State::Down { retry_at } => retry_at,
            _ => None,
        };
        [
            self.deadlines.front().map(|d| d.0),
            self.waiting.front().map(|w| w.0),
            retry,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Bytes to write (whole frames); `advance` by what was written.
    pub fn poll_transmit(&self) -> &[u8] {
        if self.state == State::Up {
            &self.transmit
        } else {
            &[]
        }
    }

    pub fn advance(&mut self, n: usize) {
        self.transmit.drain(..n.min(self.transmit.len()));
    }

    pub fn poll_reply(&mut self) -> Option<(R, Result<HsmReply, HsmError>)> {
        self.replies.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The driver is stopping: everything it holds fails.
    pub fn handle_stop(&mut self) {
        let reason = || Err(HsmError::Unavailable("the client has stopped".into()));
        for (_, p) in self.pending.drain() {
            self.replies.push_back((p.reply, reason()));
        }
        for (_, cmd) in self.waiting.drain(..) {
            self.replies.push_back((cmd.reply, reason()));
        }
        self.deadlines.clear();
    }
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

#[cfg(test)]
mod tests;
