//! The `switchyard` command line. `demo` (simulator, switch and load
//! generator in one process) lives here, not in the library: it is the one
//! part that needs both the switch and the `loadtest` crate.

mod certs;
mod demo;
mod operators;

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use switchyard::frame::LengthHeader;
use switchyard::iso8583::specs;
use switchyard::switch::config::Config;
use switchyard::switch::server::Switch;
use switchyard::telemetry::LogFormat;
use switchyard::tools::decode;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An ISO 8583 transaction switch",
    after_help = LOG_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const LOG_HELP: &str = "Logging: lines go to stderr. RUST_LOG sets the level and filters, \
e.g. RUST_LOG=debug, RUST_LOG=warn, RUST_LOG=info,switchyard::switch::journal=debug \
(default: info). Colour only when stderr is a terminal (and NO_COLOR is unset).";

#[derive(Subcommand)]
enum Command {
    /// Run the switch.
    #[command(after_help = LOG_HELP)]
    Run {
        /// The config file [default: config/switchyard.toml, relative to
        /// the current directory].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Run even though fraud.pan_key is a published development key
        /// (the built-in one or the shipped config's). `test_setup = true`
        /// at the top of the config does the same for test setups.
        #[arg(long)]
        allow_dev_key: bool,
        /// Log lines as text, or as one JSON object per line for log
        /// collectors.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Run an acquirer host simulator (for tests, demos and load tests).
    Sim(switchyard::tools::sim::cli::SimArgs),
    /// Start a simulator, the switch and a load test on free loopback
    /// ports, print the report, stop. Load-test flags pass through.
    Demo(demo::DemoArgs),
    /// Read the transaction journal (masked): tail, show one transaction, stats.
    #[command(subcommand)]
    Journal(switchyard::switch::journal::cli::JournalCommand),
    /// Settlement: `cutover` closes the business day in the running
    /// switch (over its admin endpoint); `report` prints a business
    /// date's totals from the store.
    #[command(subcommand)]
    Settle(switchyard::switch::settlement::cli::SettleCommand),
    /// Reconcile an acquirer's settlement file (CSV, columns mapped by
    /// [acquirers.recon]) against the store's business date: matched,
    /// amount mismatches, missing on either side, approved by the host
    /// after the switch timed out. Exit 1 on any exception, 2 when it
    /// could not be made.
    Recon(switchyard::switch::settlement::cli::ReconArgs),
    /// Keys under the local master key: form-lmk, generate, import, list,
    /// export (KCVs shown, never a key).
    #[command(subcommand)]
    Keys(switchyard::security::cli::KeysCommand),
    /// Operators of the admin API (the `[admin] users_file`): add (prints
    /// the TOTP provisioning URI once), remove, list.
    #[command(subcommand)]
    User(operators::UserCommand),
    /// The admin audit trail: verify its hash chain.
    #[command(subcommand)]
    Audit(operators::AuditCommand),
    /// Run a Thales payShield emulator of the commands the switch's HSM
    /// client uses (for tests).
    HsmSim(switchyard::security::hsm::payshield::sim::HsmSimArgs),
    /// Validate a config file and print every problem with its TOML path.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Decode ISO 8583 messages given as hex and print their fields, masked.
    Decode {
        /// Spec: a built-in name (iso87ascii, iso87binary) or a TOML spec file.
        #[arg(long, default_value = "iso87ascii")]
        spec: String,
        /// The hex includes a length header of this kind
        /// (binary2, ascii4, binary2-inclusive, binary4).
        #[arg(long)]
        framing: Option<LengthHeader>,
        /// Read hex messages from this file, one per line (`-` for stdin).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Hex messages; with neither these nor --file, lines from stdin.
        hex: Vec<String>,
    },
    /// Write a private CA and TLS test certificates into DIR (development).
    #[command(hide = true)]
    Certs {
        /// Where the PEM files go (made if missing).
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            allow_dev_key,
            log_format,
        } => run_switch(config, allow_dev_key, log_format),
        Command::Sim(args) => switchyard::tools::sim::cli::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Journal(cmd) => switchyard::switch::journal::cli::run(cmd),
        Command::Keys(cmd) => switchyard::security::cli::run(cmd),
        Command::Settle(cmd) => switchyard::switch::settlement::cli::run(cmd),
        Command::Recon(args) => switchyard::switch::settlement::cli::recon(args),
        Command::User(cmd) => operators::run_user(cmd),
        Command::Audit(cmd) => operators::run_audit(cmd),
        Command::HsmSim(args) => switchyard::security::hsm::payshield::sim::run(args),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                for w in c.warnings() {
                    eprintln!("{}: warning: {w}", file.display());
                }
                println!(
                    "{}: OK ({} acquirer(s), {} route(s), terminals on {})",
                    file.display(),
                    c.acquirers.len(),
                    c.routing.routes.len(),
                    c.terminals.listen
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Decode {
            spec,
            framing,
            file,
            hex,
        } => run_decode(&spec, framing, file, hex),
        Command::Certs { dir } => certs::run(&dir),
    }
}

const DEFAULT_CONFIG: &str = "config/switchyard.toml";

fn run_switch(path: Option<PathBuf>, allow_dev_key: bool, log_format: LogFormat) -> ExitCode {
    let path = match path {
        Some(p) => p,
        None => {
            let default = PathBuf::from(DEFAULT_CONFIG);
            if !default.exists() {
                let cwd = std::env::current_dir()
                    .map_or_else(|_| ".".to_owned(), |d| d.display().to_string());
                eprintln!(
                    "switchyard run: no config file given and none at {cwd}/{DEFAULT_CONFIG} \
                     (the default is relative to the current directory).\n\
                     Pass one with --config FILE; the repository ships {DEFAULT_CONFIG}, \
                     and `switchyard check-config FILE` validates it."
                );
                return ExitCode::from(1);
            }
            default
        }
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(1);
        }
    };
    if config.uses_dev_key() && !allow_dev_key && !config.test_setup {
        eprintln!(
            "switchyard run: {}: fraud.pan_key is a published development key; card hashes \
             made with it protect nothing. Set your own key (32 hex digits), or pass \
             --allow-dev-key, or set `test_setup = true` at the top of a test config.",
            path.display()
        );
        return ExitCode::from(1);
    }
    switchyard::telemetry::init_logging(log_format);
    tracing::info!(
        "switchyard {} (commit {}) starting with config {}",
        switchyard::build_info::VERSION,
        switchyard::build_info::COMMIT,
        path.display()
    );
    for w in config.warnings() {
        tracing::warn!("{}: {w}", path.display());
    }
    let runtime = match switchyard::runtime::build(&config.runtime) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard run: can not start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        // Before the banner: a SIGTERM right after it must stop the switch
        // in order, not kill it.
        let mut signals = switchyard::runtime::StopSignals::install();
        let mut hangups = switchyard::runtime::Hangups::install();
        let switch = match Switch::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("switchyard run: {e}");
                return ExitCode::from(1);
            }
        };
        let admin = switch
            .admin_addr
            .map_or(String::from("off"), |a| {
                let scheme = if switch.admin_is_tls() { "https" } else { "http" };
                format!("{scheme}://{a}/metrics")
            });
        let tls = switch
            .tls_addr
            .map_or(String::new(), |a| format!(", TLS terminals on {a}"));
        println!(
            "switchyard: terminals on {}{tls}, metrics {admin}; Ctrl-C to stop",
            switch.terminal_addr
        );
        let drain = switch.shared.drain_requested.clone();
        let why = loop {
            tokio::select! {
                s = signals.recv() => break format!("{s} received"),
                () = drain.cancelled() => break "drain requested by an operator".to_owned(),
                () = hangups.recv() => {
                    tracing::info!("SIGHUP received: re-reading the TLS material and the config file");
                    let _ = switch.reload_tls();
                    // Logged (and audited with operators) where it is made.
                    let _ = switch
                        .reload_config(switchyard::switch::reload::Source::Signal)
                        .await;
                }
            }
        };
        tracing::info!("{why}: stopping");
        switch.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn run_decode(
    spec: &str,
    framing: Option<LengthHeader>,
    file: Option<PathBuf>,
    hex: Vec<String>,
) -> ExitCode {
    let spec = match specs::resolve(spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard decode: {e}");
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = if !hex.is_empty() {
        decode::decode_lines(hex.join("\n").as_bytes(), spec, framing, &mut out)
    } else {
        match file {
            Some(path) if path.as_os_str() != "-" => match std::fs::File::open(&path) {
                Ok(f) => decode::decode_lines(BufReader::new(f), spec, framing, &mut out),
                Err(e) => {
                    eprintln!("switchyard decode: {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            },
            _ => decode::decode_lines(std::io::stdin().lock(), spec, framing, &mut out),
        }
    };
    let result = result.and_then(|n| out.flush().map(|()| n));
    match result {
        // The reader has gone (`decode ... | head`): stop quietly.
        Err(e) if loadtest::cli::is_closed_pipe(&e) => ExitCode::from(loadtest::cli::CLOSED_STDOUT),
        Ok(0) => ExitCode::SUCCESS,
        Ok(n) => {
            eprintln!("switchyard decode: {n} message(s) could not be decoded");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("switchyard decode: {e}");
            ExitCode::from(2)
        }
    }
}
