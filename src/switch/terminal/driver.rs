//! The tokio task that drives one [`TerminalCore`]: it reads the socket and
//! splits frames, posts the links' replies, watches the journal's durable
//! watermark, writes what the core lets out, hands its forwards to links,
//! and sleeps until the core's next deadline. It decides nothing itself.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::Decoder;
use tracing::debug;

use super::core::TerminalCore;
use super::records::JournalQueue;
use crate::clock::Now;
use crate::frame::FrameCodec;
use crate::net::read_up_to;
use crate::switch::acquirer::{Forward, Reply, ReplyTo};
use crate::switch::server::Shared;

/// Bytes read per wake at most: what one read can add to the write
/// buffer stays near `max_write_buffer`.
const READ_BUDGET: usize = 256 * 1024;

/// Serves one terminal connection until it closes, idles out, or the
/// switch stops (after answering what is in flight), and until every
/// request it forwarded has its reply.
pub async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let max = shared.terminals.max_in_flight_per_connection;
    // Every request in flight gets exactly one reply: an inbox this size
    // never refuses a link.
    let (inbox_tx, mut inbox) = mpsc::channel::<Reply>(max + 1);
    let mut durable = shared.journal.durable();
    let start = *durable.borrow_and_update();
    let journal = JournalQueue::new(shared.journal.clone());
    let mut core = TerminalCore::new(Now::read(), shared.clone(), journal, peer, start);
    let mut codec = FrameCodec::new(shared.terminals.framing, shared.terminals.max_frame);
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut replies = Vec::with_capacity(64);
    let mut stop_seen = false;
    let mut shut = false;
    let timer = sleep_until(Instant::now() + shared.terminals.idle_timeout);
    tokio::pin!(timer);

    loop {
        let deadline = core.poll_timeout();
        if let Some(at) = deadline
            && timer.deadline() != at.into()
        {
            timer.as_mut().reset(at.into());
        }
        let reading = core.wants_read();
        let flushing = core.poll_transmit().is_some();
        let waiting = core.waiting_for_disk();
        let now = tokio::select! {
            biased;
            _ = inbox.recv_many(&mut replies, 64) => {
                let now = Now::read();
                for r in replies.drain(..) {
                    core.handle_reply(now, r.token, r.outcome);
                }
                now
            }
            r = stream.readable(), if reading => {
                let now = Now::read();
                match r {
                    Ok(()) => read_frames(&stream, &mut rbuf, &mut codec, &mut core, now, false),
                    Err(_) => core.handle_write_failed(now),
                }
                now
            }
            r = durable.changed(), if waiting => {
                let now = Now::read();
                match r {
                    Ok(()) => core.handle_durable(now, *durable.borrow_and_update()),
                    Err(_) => core.handle_journal_stopped(now),
                }
                now
            }
            r = stream.writable(), if flushing => {
                let now = Now::read();
                if r.is_err() {
                    core.handle_write_failed(now);
                }
                now
            }
            _ = &mut timer, if deadline.is_some() => {
                let now = Now::read();
                core.handle_timeout(now);
                now
            }
            _ = shared.stopping.cancelled(), if !stop_seen => {
                stop_seen = true;
                let now = Now::read();
                // What the terminal sent before the stop is answered: read
                // what is in the socket now, whatever tokio's readiness says.
                if core.accepts_frames() {
                    read_frames(&stream, &mut rbuf, &mut codec, &mut core, now, true);
                }
                core.handle_stop(now);
                now
            }
        };
        while let Some(f) = core.poll_forward() {
            let token = f.token;
            let forward = Forward {
                key: f.key,
                body: f.body,
                echo: f.echo,
                reply_to: ReplyTo {
                    tx: inbox_tx.clone(),
                    token,
                },
            };
            let link = shared
                .acquirers
                .get(f.acquirer as usize)
                .and_then(|a| a.links.get(f.link));
            if link.is_none_or(|l| l.try_forward(forward).is_err()) {
                core.handle_forward_refused(now, token);
            }
        }
        core.journal_mut().flush();
        if let Some(out) = core.poll_transmit() {
            match stream.try_write(out) {
                Ok(n) => core.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    debug!(peer = %peer, "write failed: {e}");
                    core.handle_write_failed(now);
                }
            }
        }
        if core.is_gone() && !shut {
            // The terminal sees the close now, though replies may still be
            // awaited.
            shut = true;
            let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Both);
        }
        if core.is_finished() {
            break;
        }
    }
}

/// Reads what the socket has and hands every complete frame to the core.
/// `drain` reads past tokio's readiness (on stop, when data that has
/// arrived may not have been seen yet).
fn read_frames(
    stream: &TcpStream,
    rbuf: &mut BytesMut,
    codec: &mut FrameCodec,
    core: &mut TerminalCore<JournalQueue>,
    now: Now,
    drain: bool,
) {
    let read = if drain {
        drain_socket(stream, rbuf)
    } else {
        read_up_to(stream, rbuf, READ_BUDGET)
    };
    let open = match read {
        Ok(open) => open,
        Err(e) => {
            debug!(peer = %core.peer(), "read error: {e}");
            core.handle_write_failed(now);
            return;
        }
    };
    loop {
        match codec.decode(rbuf) {
            Ok(Some(frame)) => core.handle_frame(now, frame),
            Ok(None) => break,
            Err(e) => {
                core.handle_unframeable(now, &e);
                break;
            }
        }
        if !core.accepts_frames() {
            break;
        }
    }
    core.handle_read(now, !rbuf.is_empty());
    if !open {
        core.handle_peer_closed(now);
    }
}

/// Reads until the socket has nothing more now (or `READ_BUDGET`), with
/// plain non-blocking `recv`s; false once the peer has closed.
fn drain_socket(stream: &TcpStream, rbuf: &mut BytesMut) -> std::io::Result<bool> {
    use bytes::BufMut;
    let sock = socket2::SockRef::from(stream);
    let mut total = 0;
    while total < READ_BUDGET {
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(64 * 1024);
        }
        match sock.recv(rbuf.spare_capacity_mut()) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                // SAFETY: `recv` initialised the first `n` bytes of the
                // spare capacity.
                unsafe { rbuf.advance_mut(n) };
                total += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
