//! The operators' endpoint: `GET /metrics` (Prometheus text format) and
//! `GET /health` (JSON: link states; 200 when every acquirer has a link
//! up, 503 when none has). HTTP/1.1, one request per connection: this is
//! scraped every few seconds, not a hot path, and needs no web framework.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::switch::config::{NO_ADDRESS, Section, address, table};
use crate::switch::server::Shared;

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// A scraper that has not sent its request by then is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more wait in the kernel backlog.
const MAX_CONCURRENT: usize = 32;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    let mut accept_failed =
        crate::throttle::LogThrottle::new(crate::switch::server::LISTENER_WARN_EVERY);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors: the same pause as the terminal
                // listener; retrying at once spun a core.
                crate::switch::server::pause_after_accept_error("admin", &e, &mut accept_failed)
                    .await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &shared).await {
                debug!("admin request failed: {e}");
            }
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = head.split(|&c| c == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => match crate::telemetry::prometheus() {
            Some(h) => {
                sample_gauges(shared);
                ("200 OK", "text/plain; version=0.0.4", h.render())
            }
            None => (
                "503 Service Unavailable",
                "text/plain",
                "metrics recorder not installed\n".to_owned(),
            ),
        },
        ("GET", "/health") => health(shared),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /health\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Depths and sizes are read when scraped rather than updated per
/// request: the hot path pays nothing for them.
fn sample_gauges(shared: &Shared) {
    use crate::telemetry as t;
    metrics::gauge!(t::IN_FLIGHT).set(shared.in_flight.load(Ordering::Relaxed) as f64);
    let j = shared.journal.stats();
    metrics::gauge!(t::JOURNAL_QUEUE).set(j.queue_depth as f64);
    metrics::gauge!(t::JOURNAL_FSYNCS).set(j.fsyncs as f64);
    metrics::gauge!(t::JOURNAL_BYTES).set(j.disk_bytes as f64);
    metrics::gauge!(t::FRAUD_TRACKED_CARDS).set(shared.fraud_state.len() as f64);
    metrics::gauge!(t::RECENT_ANSWERS).set(shared.recent.len() as f64);
}

fn health(shared: &Shared) -> (&'static str, &'static str, String) {
    let total = shared.acquirers.len();
    let up = shared.acquirers.iter().filter(|a| a.any_up()).count();
    let (status, code) = if up == total {
        ("up", "200 OK")
    } else if up > 0 {
        ("degraded", "200 OK")
    } else {
        ("down", "503 Service Unavailable")
    };
    let mut body = format!(
        "{{\"status\":\"{status}\",\"connections\":{},\"in_flight\":{},\"acquirers\":[",
        shared.connections.load(Ordering::Relaxed),
        shared.in_flight.load(Ordering::Relaxed)
    );
    for (i, a) in shared.acquirers.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(body, "{{\"name\":{},\"links\":[", json_str(&a.name));
        for (j, l) in a.links.iter().enumerate() {
            if j > 0 {
                body.push(',');
            }
            let _ = write!(
                body,
                "{{\"name\":{},\"addr\":\"{}\",\"up\":{},\"in_flight\":{}}}",
                json_str(&l.shared.name),
                l.shared.addr,
                l.is_up(),
                l.shared.in_flight()
            );
        }
        body.push_str("]}");
    }
    body.push_str("]}\n");
    (code, "application/json", body)
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------
// Its config: the `[admin]` table.

#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// `/metrics` and `/health`; `None` disables the endpoint.
    pub listen: Option<SocketAddr>,
}

table! {
    pub(crate) AdminFile {
        listen: String = "127.0.0.1:9090".into();
        enabled: bool = true;
    }
}

impl AdminFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> AdminConfig {
        self.check_ranges(s);
        // Checked even when disabled: turning it on must not reveal a typo.
        let listen = s.ok("listen", address(&self.listen), NO_ADDRESS);
        AdminConfig {
            listen: self.enabled.then_some(listen),
        }
    }
}
