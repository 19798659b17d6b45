//! `switchyard settle cutover`: asks the running switch for a cutover
//! over its admin endpoint (`POST /api/actions/cutover`), so the date
//! moves in the process that journals it, and the action is audited.
//! A plain HTTP/1.1 request over a std socket: one request, one bounded
//! answer, no client library for it.
//!
//! `switchyard settle report` reads the store the config names (never
//! the running switch) and prints one business date's report.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::date::BusinessDate;
use super::day::Day;
use super::report::{Format, Report};
use crate::switch::config::Config;

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
    /// One business date's totals from the store: by acquirer, merchant,
    /// terminal, card scheme, transaction type and currency (integer
    /// minor units); authorizations, reversals, stand-in approvals,
    /// declines and pending store-and-forward work apart.
    Report {
        /// The business date, YYYY-MM-DD.
        #[arg(long)]
        date: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// The config whose [store] to read [default:
        /// config/switchyard.toml].
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// As `switchyard run`'s: relative to the current directory.
pub const DEFAULT_CONFIG: &str = "config/switchyard.toml";

/// Writes a command's output to stdout; a reader that went away
/// (`... | head`) is no error.
pub fn print_out(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The config file of a command that reads the store, and the problem
/// with it as the command should print it.
pub fn load_config(path: Option<&Path>) -> Result<Config, String> {
    let path = path.unwrap_or(Path::new(DEFAULT_CONFIG));
    Config::load(path).map_err(|e| e.to_string().trim_end().to_owned())
}

/// A business date argument.
pub fn parse_date(text: &str) -> Result<BusinessDate, String> {
    BusinessDate::parse(text).ok_or_else(|| format!("--date {text}: expected YYYY-MM-DD"))
}

/// The classified rows of `date` in the store `config` names.
pub fn load_day(config: &Config, date: BusinessDate) -> Result<Day, String> {
    if !config.store.enabled {
        eprintln!(
            "note: [store] enabled = false in this config: the switch exports nothing to {}",
            config.store.backend.describe()
        );
    }
    let mut store = crate::switch::store::open_to_read(&config.store.backend)
        .map_err(|e| format!("store {}: {e}", config.store.backend.describe()))?;
    Day::load(&mut *store, &date.to_string()).map_err(|e| format!("store: {e}"))
}

/// `switchyard recon`: an acquirer's settlement file against the store.
#[derive(Debug, clap::Args)]
pub struct ReconArgs {
    /// The acquirer (its `[[acquirers]] name`), whose `[acquirers.recon]`
    /// maps the file's columns.
    #[arg(long)]
    pub acquirer: String,
    /// The business date, YYYY-MM-DD.
    #[arg(long)]
    pub date: String,
    /// The acquirer's settlement file (CSV with a header line).
    #[arg(long)]
    pub file: PathBuf,
    #[arg(long, value_enum, default_value_t = super::recon::Format::Table)]
    pub format: super::recon::Format,
    /// The config whose [store] and [[acquirers]] to read [default:
    /// config/switchyard.toml].
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Exit 0 when everything matched, 1 on any exception, 2 when the
/// reconciliation could not be made (a bad file, config or store).
pub fn recon(args: ReconArgs) -> ExitCode {
    match reconcile(&args) {
        Ok(r) => {
            let printed = print_out(&r.render(args.format));
            if printed != ExitCode::SUCCESS {
                return printed;
            }
            if r.exceptions() == 0 {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "switchyard recon: {} exception(s) against {}",
                    r.exceptions(),
                    args.file.display()
                );
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("switchyard recon: {e}");
            ExitCode::from(2)
        }
    }
}

fn reconcile(args: &ReconArgs) -> Result<super::recon::Recon, String> {
    let date = parse_date(&args.date)?;
    let config = load_config(args.config.as_deref())?;
    let Some(acquirer) = config.acquirers.iter().find(|a| a.name == args.acquirer) else {
        let names: Vec<&str> = config.acquirers.iter().map(|a| a.name.as_str()).collect();
        return Err(format!(
            "--acquirer {}: not in the config's [[acquirers]] ({})",
            args.acquirer,
            names.join(", ")
        ));
    };
    let file = super::recon::read_file(&args.file, &acquirer.recon)?;
    let day = load_day(&config, date)?;
    Ok(super::recon::Recon::run(&acquirer.name, day, file))
}

fn report(date: &str, format: Format, config: Option<&Path>) -> Result<String, String> {
    let date = parse_date(date)?;
    let config = load_config(config)?;
    let day = load_day(&config, date)?;
    Ok(Report::of(&day).render(format))
}

pub fn run(cmd: SettleCommand) -> ExitCode {
    match cmd {
        SettleCommand::Report {
            date,
            format,
            config,
        } => match report(&date, format, config.as_deref()) {
            Ok(out) => print_out(&out),
            Err(e) => {
                eprintln!("switchyard settle report: {e}");
                ExitCode::FAILURE
            }
        },
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
