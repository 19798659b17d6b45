//! The control port: one command per line, one answer line per command
//! (`ok`, `error: ...`, or the counters for `stats`). Meant for scripts
//! and people poking a running simulator with `nc`.
//!
//! ```text
//! latency 50 | latency 10-100 | latency off
//! drop-every 5 | drop-every 0
//! stop | resume
//! close | close on | close off      (on: keep closing new connections)
//! wrong-stan on | wrong-stan off
//! stats
//! settlement                        (write the --settlement-file now)
//! cutover                           (write it, then begin a new day)
//! skew 7                            (alter 7 of its records, write it)
//! ```

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::{Latency, SimHandle};

/// Longer lines are refused and the session closed.
const MAX_LINE: u64 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Latency(Latency),
    DropEvery(u64),
    Stop,
    Resume,
    /// Close current connections.
    Close,
    /// Keep closing new connections (and close current ones when set).
    Refuse(bool),
    WrongStan(bool),
    Stats,
    Settlement,
    Cutover,
    Skew(usize),
}

const USAGE: &str = "commands: latency N|MIN-MAX|off, drop-every N, stop, resume, \
                     close [on|off], wrong-stan on|off, stats, settlement, cutover, skew N";

pub fn parse(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or("");
    let arg = words.next();
    if words.next().is_some() {
        return Err(format!("too many arguments to `{verb}`"));
    }
    let switch = |arg: Option<&str>| match arg {
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        _ => Err(format!("`{verb}` takes on or off")),
    };
    let no_arg = |cmd: Command| match arg {
        None => Ok(cmd),
        Some(_) => Err(format!("`{verb}` takes no argument")),
    };
    match verb.to_ascii_lowercase().as_str() {
        "latency" => match arg {
            Some(a) => Latency::parse_ms(a).map(Command::Latency),
            None => Err("`latency` takes N, MIN-MAX (milliseconds) or off".into()),
        },
        "drop-every" => match arg.map(str::parse::<u64>) {
            Some(Ok(n)) => Ok(Command::DropEvery(n)),
            _ => Err("`drop-every` takes a whole number (0 turns it off)".into()),
        },
        "stop" => no_arg(Command::Stop),
        "resume" => no_arg(Command::Resume),
        "close" => match arg {
            None => Ok(Command::Close),
            a => switch(a).map(Command::Refuse),
        },
        "wrong-stan" => switch(arg).map(Command::WrongStan),
        "stats" => no_arg(Command::Stats),
        "settlement" => no_arg(Command::Settlement),
        "cutover" => no_arg(Command::Cutover),
        "skew" => match arg.map(str::parse::<usize>) {
            Some(Ok(n)) if n > 0 => Ok(Command::Skew(n)),
            _ => Err("`skew` takes a whole number of records (1 or more)".into()),
        },
        "" => Err(USAGE.into()),
        other => Err(format!("unknown command `{other}`; {USAGE}")),
    }
}

/// Carries out a command; the answer line without its newline.
pub fn apply(handle: &SimHandle, cmd: Command) -> String {
    match cmd {
        Command::Latency(l) => handle.set_latency(l),
        Command::DropEvery(n) => handle.set_drop_every(n),
        Command::Stop => handle.stop_answering(),
        Command::Resume => handle.resume(),
        Command::Close => handle.close_connections(),
        Command::Refuse(on) => {
            handle.set_refuse_connections(on);
            if on {
                handle.close_connections();
            }
        }
        Command::WrongStan(on) => handle.set_wrong_stan(on),
        Command::Stats => return handle.stats().to_string(),
        Command::Settlement => return answer(handle.write_settlement()),
        Command::Cutover => return answer(handle.settlement_cutover()),
        Command::Skew(n) => return answer(handle.skew_settlement(n)),
    }
    "ok".into()
}

fn answer(r: Result<String, String>) -> String {
    match r {
        Ok(said) => format!("ok: {said}"),
        Err(e) => format!("error: {e}"),
    }
}

/// Answers one line of input.
pub fn execute(handle: &SimHandle, line: &str) -> String {
    match parse(line) {
        Ok(cmd) => apply(handle, cmd),
        Err(e) => format!("error: {e}"),
    }
}

pub(super) async fn serve(listener: TcpListener, handle: SimHandle) {
    let shared = handle.shared.clone();
    let shutdown = shared.until_shutdown();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    tokio::spawn(session(stream, handle.clone()));
                }
                Err(e) => {
                    warn!("sim: control accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            },
        }
    }
}

async fn session(stream: TcpStream, handle: SimHandle) {
    let shared = handle.shared.clone();
    let shutdown = shared.until_shutdown();
    tokio::pin!(shutdown);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::with_capacity(64);
    loop {
        line.clear();
        let mut limited = (&mut r).take(MAX_LINE);
        let n = tokio::select! {
            _ = &mut shutdown => return,
            n = limited.read_until(b'\n', &mut line) => n,
        };
        let mut reply = match n {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with(b"\n") && line.len() as u64 >= MAX_LINE => {
                let _ = w.write_all(b"error: line too long\n").await;
                return;
            }
            Ok(_) => execute(&handle, String::from_utf8_lossy(&line).trim()),
        };
        reply.push('\n');
        if let Err(e) = w.write_all(reply.as_bytes()).await {
            debug!("sim: control session ended: {e}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn commands_parse() {
        let ms = Duration::from_millis;
        assert_eq!(
            parse("latency 50"),
            Ok(Command::Latency(Latency::Fixed(ms(50))))
        );
        assert_eq!(
            parse("  latency   10-100 "),
            Ok(Command::Latency(Latency::Uniform(ms(10), ms(100))))
        );
        assert_eq!(parse("latency 0"), Ok(Command::Latency(Latency::None)));
        assert_eq!(parse("drop-every 5"), Ok(Command::DropEvery(5)));
        assert_eq!(parse("drop-every 0"), Ok(Command::DropEvery(0)));
        assert_eq!(parse("stop"), Ok(Command::Stop));
        assert_eq!(parse("RESUME"), Ok(Command::Resume));
        assert_eq!(parse("close"), Ok(Command::Close));
        assert_eq!(parse("close on"), Ok(Command::Refuse(true)));
        assert_eq!(parse("close off"), Ok(Command::Refuse(false)));
        assert_eq!(parse("wrong-stan on"), Ok(Command::WrongStan(true)));
        assert_eq!(parse("wrong-stan off"), Ok(Command::WrongStan(false)));
        assert_eq!(parse("stats"), Ok(Command::Stats));
        assert_eq!(parse("settlement"), Ok(Command::Settlement));
        assert_eq!(parse("cutover"), Ok(Command::Cutover));
        assert_eq!(parse("skew 7"), Ok(Command::Skew(7)));
    }

    #[test]
    fn bad_commands_say_why() {
        for (line, needle) in [
            ("latency", "latency"),
            ("latency fast", "fast"),
            ("drop-every", "whole number"),
            ("drop-every -1", "whole number"),
            ("wrong-stan maybe", "on or off"),
            ("stop now", "no argument"),
            ("skew", "whole number"),
            ("skew 0", "whole number"),
            ("skew many", "whole number"),
            ("close on now", "too many"),
            ("reboot", "unknown command `reboot`"),
            ("", "commands:"),
        ] {
            match parse(line) {
                Err(e) => assert!(e.contains(needle), "{line:?}: {e}"),
                Ok(c) => panic!("{line:?} parsed as {c:?}"),
            }
        }
    }
}
