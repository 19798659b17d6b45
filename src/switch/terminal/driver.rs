//! The tokio task that drives one [`TerminalCore`]: it reads the socket and
//! splits frames, posts the links' replies, watches the journal's durable
//! watermark, writes what the core lets out, hands its forwards to links
//! and its card security effects to an [`HsmRunner`] (posting what they
//! bring back), and sleeps until the core's next deadline. It decides
//! nothing itself.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::Decoder;
use tracing::debug;

use super::core::TerminalCore;
use super::records::JournalQueue;
use crate::clock::Now;
use crate::frame::FrameCodec;
use crate::net::Conn;
use crate::switch::acquirer::{Forward, Reply, ReplyTo};
use crate::switch::card_security::runner::HsmRunner;
use crate::switch::server::Shared;
use crate::switch::tls::identity::BoundTerminals;

/// Bytes read per wake at most: what one read can add to the write
/// buffer stays near `max_write_buffer`.
const READ_BUDGET: usize = 256 * 1024;

/// Serves one terminal connection until it closes, idles out, or the
/// switch stops (after answering what is in flight), and until every
/// request it forwarded has its reply. Over TLS the handshake is done;
/// `bound` are the terminal ids its certificate may use.
pub async fn serve(
    mut conn: Conn,
    peer: SocketAddr,
    shared: Arc<Shared>,
    bound: Option<BoundTerminals>,
) {
    let max = shared.terminals.max_in_flight_per_connection;
    // Every request in flight gets exactly one reply: an inbox this size
    // never refuses a link.
    let (inbox_tx, mut inbox) = mpsc::channel::<Reply>(max + 1);
    let mut durable = shared.journal.durable();
    let start = *durable.borrow_and_update();
    let journal = JournalQueue::new(shared.journal.clone());
    let mut core = TerminalCore::new(Now::read(), shared.clone(), journal, peer, start);
    if let Some(b) = bound {
        core.bind_terminals(b);
    }
    let mut codec = FrameCodec::new(shared.terminals.framing, shared.terminals.max_frame);
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut replies = Vec::with_capacity(64);
    let mut stop_seen = false;
    let mut shut = false;
    // The core's card security effects: a network HSM's commands, key
    // store rewrites (idle, and never polled, without them).
    let network = shared
        .security
        .as_ref()
        .and_then(|s| s.hsm.network().cloned());
    let mut hsm = HsmRunner::new(network);
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
        let flushing = core.poll_transmit().is_some() || conn.wants_flush();
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
            (id, done) = hsm.next(), if !hsm.is_empty() => {
                let now = Now::read();
                core.handle_hsm_reply(now, id, done);
                now
            }
            r = readable(&conn), if reading => {
                let now = Now::read();
                match r {
                    Ok(()) => read_frames(&mut conn, &mut rbuf, &mut codec, &mut core, now, false),
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
            r = conn.tcp().writable(), if flushing => {
                let now = Now::read();
                if r.is_err() || conn.flush().is_err() {
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
                    read_frames(&mut conn, &mut rbuf, &mut codec, &mut core, now, true);
                }
                core.handle_stop(now);
                now
            }
        };
        while let Some(f) = core.poll_forward() {
            let (token, epoch, acquirer, link) = (f.token, f.epoch, f.acquirer, f.link);
            let forward = Forward {
                key: f.key,
                body: f.body,
                echo: f.echo,
                reply_to: ReplyTo {
                    tx: inbox_tx.clone(),
                    token,
                },
            };
            // The link of the generation the request started in.
            let refused = core
                .link(epoch, acquirer, link)
                .is_none_or(|l| l.try_forward(forward).is_err());
            if refused {
                core.handle_forward_refused(now, token);
            }
        }
        while let Some(call) = core.poll_hsm() {
            hsm.start(call);
        }
        core.journal_mut().flush();
        if let Some(out) = core.poll_transmit() {
            match conn.try_write(out) {
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
            conn.shutdown();
        }
        if core.is_finished() {
            break;
        }
    }
    if stop_seen && !shut {
        // Within the stop's grace period, which waits for this task.
        linger_close(&conn, LINGER.min(shared.limits.shutdown_grace)).await;
    }
}

/// After a stop, how long the terminal has to see the end and close (at
/// most `limits.shutdown_grace_ms`).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// What is read and thrown away meanwhile at most.
const LINGER_BYTES: usize = 1024 * 1024;

/// Every answer is written: the end (FIN) goes after them, and what the
/// terminal sent after the stop is read and thrown away, unanswered and
/// never forwarded, until it closes. Closing with those bytes unread
/// would reset the connection, and a reset can discard answers still on
/// their way; after a clean end the terminal knows that a request it has
/// no answer for was never taken, and may send it elsewhere.
async fn linger_close(conn: &Conn, linger: std::time::Duration) {
    let _ = socket2::SockRef::from(conn.tcp()).shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + linger;
    let mut scratch = [0u8; 4096];
    let mut thrown = 0;
    while thrown < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, conn.tcp().readable()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        match conn.tcp().try_read(&mut scratch) {
            Ok(0) => return,
            Ok(n) => thrown += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// The socket is readable, or plaintext that came with the end of the
/// TLS handshake waits (no readiness will announce it).
async fn readable(conn: &Conn) -> std::io::Result<()> {
    if conn.has_buffered() {
        return Ok(());
    }
    conn.tcp().readable().await
}

/// Reads what the socket has and hands every complete frame to the core.
/// `drain` reads past tokio's readiness (on stop, when data that has
/// arrived may not have been seen yet).
fn read_frames(
    conn: &mut Conn,
    rbuf: &mut BytesMut,
    codec: &mut FrameCodec,
    core: &mut TerminalCore<JournalQueue>,
    now: Now,
    drain: bool,
) {
    let read = if drain {
        conn.drain(rbuf, READ_BUDGET)
    } else {
        conn.read_up_to(rbuf, READ_BUDGET)
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
