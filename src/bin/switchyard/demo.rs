//! `switchyard demo`: the acquirer simulator, the switch and a load test on
//! free loopback ports, in this process, each on its own thread; then the
//! report, and an orderly stop.
//!
//! Each part gets its own runtime so that the load generator never shares
//! a scheduler with what it measures.
//!
//! The demo carries its config: `config/switchyard.toml` as shipped is built
//! into the binary, so `switchyard demo` works from any directory (it used
//! to fall back to defaults with no acquirer outside the repository, and
//! answer every request 92).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use tokio::sync::oneshot;

use loadtest::cli::LoadArgs;
use switchyard::switch::config::Config;
use switchyard::switch::server::Switch;
use switchyard::tools::certs::{CertFiles, Pki};
use switchyard::tools::sim::{self, SimConfig};
use switchyard_protocol::tls::{ClientSettings, ServerSettings};

/// The shipped config, built in: what the demo's switch runs with unless
/// `--config` is given.
pub const BUILT_IN_CONFIG: &str = include_str!("../../../config/switchyard.toml");

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Switch config to start from (listen addresses, links and the
    /// journal directory are replaced). Without it, the shipped
    /// `config/switchyard.toml`, built into the binary.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Journal durability for the demo's switch: `fsync` (as in
    /// production: forwards and answers wait for the group commit) or
    /// `none` (records are written but not synced; faster).
    #[arg(long, value_name = "fsync|none", default_value = "fsync")]
    pub journal_durability: String,
    /// The load test's options; `--target` and `--admin` are ignored (the
    /// demo's own switch is the target, its admin listener the admin).
    #[command(flatten)]
    pub load: LoadArgs,
}

const LOOPBACK_ANY: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Lines for stdout that notice a closed stdout (`switchyard demo | head`)
/// instead of panicking as `println!` does.
struct Out {
    failed: Option<std::io::Error>,
}

impl Out {
    /// Writes one line; false once stdout is gone (or failed otherwise).
    fn line(&mut self, args: std::fmt::Arguments) -> bool {
        if self.failed.is_none() {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_fmt(args).and_then(|()| writeln!(out)) {
                self.failed = Some(e);
            }
        }
        self.failed.is_none()
    }

    /// The exit status for a stdout that failed: quiet for a closed pipe.
    fn failure(&mut self) -> ExitCode {
        match self.failed.take() {
            Some(e) if loadtest::cli::is_closed_pipe(&e) => {
                ExitCode::from(loadtest::cli::CLOSED_STDOUT)
            }
            Some(e) => {
                eprintln!("switchyard demo: writing to stdout: {e}");
                ExitCode::from(2)
            }
            None => ExitCode::SUCCESS,
        }
    }
}

/// Certificates made for a `--tls` run: one private CA; the switch's and
/// the simulator's server certificates; client certificates for the
/// load test's terminals and for the switch's link to the simulator.
struct DemoTls {
    dir: PathBuf,
    ca: PathBuf,
    switch: CertFiles,
    sim: CertFiles,
    terminal: CertFiles,
    link: CertFiles,
}

impl DemoTls {
    fn make() -> Result<DemoTls, String> {
        let dir = std::env::temp_dir().join(format!("switchyard-demo-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut pki = Pki::new(&dir, "demo").map_err(|e| e.to_string())?;
        let mut cert = |stem: &str, client: Option<&str>| match client {
            Some(cn) => pki.client(stem, cn, &[]),
            None => pki.server(stem, &[]),
        };
        let switch = cert("switch", None).map_err(|e| e.to_string())?;
        let sim = cert("simulator", None).map_err(|e| e.to_string())?;
        let terminal = cert("terminal", Some("demo terminal")).map_err(|e| e.to_string())?;
        let link = cert("switch-link", Some("switchyard link")).map_err(|e| e.to_string())?;
        Ok(DemoTls {
            ca: pki.ca.clone(),
            dir,
            switch,
            sim,
            terminal,
            link,
        })
    }

    /// TLS 1.2+ with client certificates required, on both sides.
    fn apply(&self, config: &mut Config) {
        config.terminals.tls = Some(switchyard::switch::tls::TerminalTlsConfig {
            listen: None,
            server: self.server(&self.switch),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes_in_flight: 64,
            bind_terminal_id: switchyard::switch::tls::BindTerminalId::Off,
            terminal_id_map: None,
        });
        for a in &mut config.acquirers {
            a.tls = Some(switchyard::switch::tls::AcquirerTlsConfig {
                client: ClientSettings {
                    ca: self.ca.clone(),
                    cert: Some(self.link.cert.clone()),
                    key: Some(self.link.key.clone()),
                    ..ClientSettings::default()
                },
                server_name: "localhost".into(),
            });
        }
    }

    fn server(&self, cert: &CertFiles) -> ServerSettings {
        ServerSettings {
            cert: cert.cert.clone(),
            key: cert.key.clone(),
            client_ca: Some(self.ca.clone()),
            require_client_cert: true,
            ..ServerSettings::default()
        }
    }
}

impl Drop for DemoTls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run(mut args: DemoArgs) -> ExitCode {
    // `--tls` (a load test option) makes the whole demo TLS: certificates
    // for the run, the switch's listener and its link to the simulator.
    let tls = if args.load.tls {
        match DemoTls::make() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("switchyard demo: --tls: making certificates: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    let (mut config, config_name) = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard demo: {e}");
            return ExitCode::from(2);
        }
    };
    config.journal.durability = match args.journal_durability.as_str() {
        "fsync" => switchyard::switch::journal::Durability::Fsync,
        "none" => switchyard::switch::journal::Durability::None,
        other => {
            eprintln!("switchyard demo: --journal-durability is `fsync` or `none`, not `{other}`");
            return ExitCode::from(2);
        }
    };
    let sim_tls = match &tls {
        Some(t) => match t.server(&t.sim).build() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("switchyard demo: --tls: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let sim = match start_sim(sim_tls) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard demo: simulator: {e}");
            return ExitCode::from(1);
        }
    };
    // A journal of its own, so the demo never mixes with a real one.
    config.journal.dir =
        std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&config.journal.dir);
    // Its store beside that journal, gone with it: a store that outlived
    // its journal would be refused by the next demo (exported further
    // than the new journal goes).
    let store_dir =
        std::env::temp_dir().join(format!("switchyard-demo-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store_dir);
    if config.store.enabled
        && matches!(
            config.store.backend,
            switchyard::switch::store::Backend::Sqlite { .. }
        )
    {
        config.store.backend = switchyard::switch::store::Backend::Sqlite {
            path: store_dir.join("switchyard.db"),
        };
    }
    config.terminals.listen = LOOPBACK_ANY;
    config.admin.listen = Some(LOOPBACK_ANY);
    config.acquirers.truncate(1);
    if let Some(a) = config.acquirers.first_mut() {
        a.links = vec![sim.addr];
    }
    if let Some(t) = &tls {
        t.apply(&mut config);
        if args.load.ca.is_none() {
            args.load.ca = Some(t.ca.clone());
        }
        if args.load.cert.is_none() && args.load.key.is_none() {
            args.load.cert = Some(t.terminal.cert.clone());
            args.load.key = Some(t.terminal.key.clone());
        }
    }
    let journal_dir = config.journal.dir.clone();
    let store_line = if config.store.enabled {
        config.store.backend.describe()
    } else {
        "off".to_owned()
    };
    let switch = match start_switch(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard demo: switch: {e}");
            sim.stop();
            let _ = std::fs::remove_dir_all(&journal_dir);
            let _ = std::fs::remove_dir_all(&store_dir);
            return ExitCode::from(1);
        }
    };
    let stop_all = |switch: RunningSwitch, sim: Running| {
        switch.stop();
        sim.stop();
        let _ = std::fs::remove_dir_all(&journal_dir);
        let _ = std::fs::remove_dir_all(&store_dir);
    };

    if args.load.html.is_none() {
        // Beside the build in a checkout's root; elsewhere (run from a
        // subdirectory, or an installed binary) in the temp dir rather than
        // a new `target/` wherever the user stands.
        let dir = if std::path::Path::new("target").is_dir() {
            PathBuf::from("target")
        } else {
            std::env::temp_dir()
        };
        args.load.html = Some(dir.join("demo-report.html"));
    }
    args.load.target = switch.terminal.to_string();
    args.load.admin = switch.admin.map(|a| a.to_string());
    let load = match args.load.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard demo: {e}");
            stop_all(switch, sim);
            return ExitCode::from(2);
        }
    };
    let durability = match args.journal_durability.as_str() {
        "fsync" => "fsync (answers wait for the group commit, as in production)",
        _ => "none (records written, not synced)",
    };
    let mut out = Out { failed: None };
    let banner = out.line(format_args!(
        "switchyard demo: the acquirer simulator, the switch and a load test"
    )) && out.line(format_args!("  config              {config_name}"))
        && out.line(format_args!("  acquirer simulator  {}", sim.addr))
        && out.line(format_args!(
            "  journal             {} (removed at the end)",
            journal_dir.display()
        ))
        && out.line(format_args!("  durability          {durability}"))
        && out.line(format_args!(
            "  store               {store_line} (removed at the end)"
        ))
        && tls.as_ref().is_none_or(|t| {
            out.line(format_args!(
                "  TLS                 terminals and acquirer link, TLS 1.2+, client certificates \
                 required (made for this run in {}, removed at the end)",
                t.dir.display()
            ))
        })
        && out.line(format_args!(
            "  switch              {} (metrics http://{}/metrics)",
            switch.terminal,
            switch.admin.map_or_else(|| "off".into(), |a| a.to_string())
        ))
        && out.line(format_args!(
            "  load test           {} connections, {:?}, seed {}\n",
            load.connections, load.duration, load.seed
        ));
    if !banner {
        stop_all(switch, sim);
        return out.failure();
    }
    let report = loadtest::run(load);
    stop_all(switch, sim);

    let mut report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard demo: load test failed: {e}");
            return ExitCode::from(1);
        }
    };
    report.add_context("config", config_name);
    report.add_context("durability", durability);
    if tls.is_some() {
        report.add_context("tls", "terminals and acquirer link (TLS 1.2+, mutual)");
    }
    let printed = {
        let mut stdout = std::io::stdout().lock();
        report
            .print_human(&mut stdout)
            .and_then(|()| stdout.flush())
    };
    if let Err(e) = printed {
        out.failed = Some(e);
    }
    let mut ok = true;
    let paths = [&args.load.html, &args.load.json, &args.load.hgrm];
    for dir in paths.into_iter().flatten().filter_map(|p| p.parent()) {
        if !dir.as_os_str().is_empty() {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    for (what, path, written) in loadtest::cli::write_outputs(&report, &args.load) {
        match written {
            Ok(()) => {
                out.line(format_args!("{what}: {}", path.display()));
            }
            Err(e) => {
                eprintln!("switchyard demo: can not write {}: {e}", path.display());
                ok = false;
            }
        }
    }
    if out.failed.is_some() {
        return out.failure();
    }
    let problems = report.problems();
    if !problems.is_empty() {
        eprintln!("switchyard demo: NOT CLEAN: {}", problems.join("; "));
        return ExitCode::from(report.exit_code());
    }
    if !ok {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// The config to start from and how to name it in the report.
fn load_config(path: Option<&std::path::Path>) -> Result<(Config, String), String> {
    match path {
        Some(p) => Config::load(p)
            .map(|c| {
                (
                    c,
                    format!(
                        "{} (addresses, links and journal dir replaced)",
                        p.display()
                    ),
                )
            })
            .map_err(|e| e.to_string()),
        None => Config::parse(BUILT_IN_CONFIG)
            .map(|c| {
                (
                    c,
                    "built-in config/switchyard.toml (addresses, links and journal dir replaced)"
                        .to_string(),
                )
            })
            .map_err(|e| format!("the built-in config: {e:?}")),
    }
}

/// A part of the demo running on its own thread and runtime.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Running {
    fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_sim(tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> Result<Running, String> {
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = thread::Builder::new()
        .name("demo-sim".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let config = SimConfig {
                    listen: LOOPBACK_ANY,
                    // Realistic: a few declines, nothing kept in memory.
                    decline_ratio: 0.03,
                    decline_over_amount: Some(500_000),
                    record_capacity: 0,
                    tls,
                    ..SimConfig::default()
                };
                match sim::spawn(config).await {
                    Ok(h) => {
                        let _ = ready_tx.send(Ok(h.local_addr()));
                        let _ = stop_rx.await;
                        h.shutdown();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    let addr = ready_rx.recv().map_err(|e| e.to_string())??;
    Ok(Running {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

struct RunningSwitch {
    terminal: SocketAddr,
    admin: Option<SocketAddr>,
    inner: Running,
}

impl RunningSwitch {
    fn stop(self) {
        self.inner.stop();
    }
}

fn start_switch(config: Config) -> Result<RunningSwitch, String> {
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = thread::Builder::new()
        .name("demo-switch".into())
        .spawn(move || {
            let rt = match switchyard::runtime::build(&config.runtime) {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let switch = match Switch::start(config).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                // Up means signed on: wait for every link before the load
                // starts, or the first requests would get 91.
                let links: Vec<_> = switch
                    .shared
                    .acquirers
                    .iter()
                    .flat_map(|a| a.links.iter().map(|l| l.shared.clone()))
                    .collect();
                let up = tokio::time::timeout(Duration::from_secs(10), async {
                    for l in &links {
                        l.wait_for(true).await;
                    }
                })
                .await;
                if up.is_err() {
                    let _ =
                        ready_tx.send(Err("the acquirer link did not come up within 10 s".into()));
                    switch.shutdown().await;
                    return;
                }
                let _ = ready_tx.send(Ok((switch.terminal_addr, switch.admin_addr)));
                let _ = stop_rx.await;
                switch.shutdown().await;
            });
        })
        .map_err(|e| e.to_string())?;
    let (terminal, admin) = ready_rx.recv().map_err(|e| e.to_string())??;
    Ok(RunningSwitch {
        terminal,
        admin,
        inner: Running {
            addr: terminal,
            stop: Some(stop_tx),
            thread: Some(thread),
        },
    })
}
