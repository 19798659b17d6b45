//! `switchyard settle cutover`: asks the running switch for a cutover
//! over its admin endpoint (`POST /api/actions/cutover`), so the date
//! moves in the process that journals it, and the action is audited.
//!
//! A plain HTTP/1.1 request over a std socket: one request, one bounded
//! answer, no client library for it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// Longest answer read.
const MAX_ANSWER: u64 = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Subcommand)]
pub enum SettleCommand {
    /// Close the business day now: the business date advances by one
    /// (refused when this day's cutover was already made).
    Cutover {
        /// The switch's admin endpoint (`[admin] listen`).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
        /// An operator's session token (the `switchyard_session` cookie
        /// of `POST /api/login`), when `[admin] users_file` is set.
        #[arg(long)]
        session: Option<String>,
    },
}

pub fn run(cmd: SettleCommand) -> ExitCode {
    match cmd {
        SettleCommand::Cutover { admin, session } => {
            match post(admin, "/api/actions/cutover", session.as_deref()) {
                Ok((200, body)) => {
                    print!("{body}");
                    ExitCode::SUCCESS
                }
                Ok((status, body)) => {
                    eprint!("switchyard settle cutover: {status}: {body}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("switchyard settle cutover: {admin}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// POSTs an empty body; the status and the body of the answer.
pub fn post(addr: SocketAddr, path: &str, session: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let cookie = match session {
        // A token is hex (sessions.rs); anything else would break the
        // header, and is refused here rather than sent.
        Some(t) if t.bytes().all(|b| b.is_ascii_hexdigit()) => {
            format!("Cookie: {}={t}\r\n", crate::switch::admin::sessions::COOKIE)
        }
        Some(_) => {
            return Err(std::io::Error::other("the session token is not hex digits"));
        }
        None => String::new(),
    };
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n{cookie}Connection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}
