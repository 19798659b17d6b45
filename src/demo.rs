//! `switchyard demo`: the acquirer simulator, the switch and a load test on
//! free loopback ports, in this process, each on its own thread; then the
//! report, and an orderly stop.
//!
//! Each part gets its own runtime so that the load generator never shares
//! a scheduler with what it measures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::Config;
use crate::loadgen::{self, cli::LoadArgs};
use crate::server::Switch;
use crate::sim::{self, SimConfig};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Switch config to start from (listen addresses and links are
    /// replaced by free loopback ports). Without it, the built-in
    /// defaults; `config/switchyard.toml` when it exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Journal durability for the demo's switch: `fsync` (as in
    /// production: forwards and answers wait for the group commit) or
    /// `none` (records are written but not synced; faster).
    #[arg(long, value_name = "fsync|none", default_value = "fsync")]
    pub journal_durability: String,
    /// The load test's options; `--target` is ignored (the demo's own
    /// switch is the target).
    #[command(flatten)]
    pub load: LoadArgs,
}

const LOOPBACK_ANY: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

pub fn run(mut args: DemoArgs) -> ExitCode {
    let mut config = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard demo: {e}");
            return ExitCode::from(2);
        }
    };

    println!("switchyard demo: starting the acquirer simulator, the switch and a load test");
    let sim = match start_sim() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard demo: simulator: {e}");
            return ExitCode::from(1);
        }
    };
    println!("  acquirer simulator  {}", sim.addr);

    config.journal.durability = match args.journal_durability.as_str() {
        "fsync" => crate::config::Durability::Fsync,
        "none" => crate::config::Durability::None,
        other => {
            eprintln!("switchyard demo: --journal-durability is `fsync` or `none`, not `{other}`");
            return ExitCode::from(2);
        }
    };
    // A journal of its own, so the demo never mixes with a real one.
    config.journal.dir =
        std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&config.journal.dir);
    config.terminals.listen = LOOPBACK_ANY;
    config.admin.listen = Some(LOOPBACK_ANY);
    config.acquirers.truncate(1);
    if let Some(a) = config.acquirers.first_mut() {
        a.links = vec![sim.addr];
    }
    let journal_dir = config.journal.dir.clone();
    let switch = match start_switch(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard demo: switch: {e}");
            sim.stop();
            return ExitCode::from(1);
        }
    };
    println!(
        "  journal             {} (durability {}; removed at the end)",
        journal_dir.display(),
        args.journal_durability
    );
    println!(
        "  switch              {} (metrics http://{}/metrics)",
        switch.terminal,
        switch.admin.map_or_else(|| "off".into(), |a| a.to_string())
    );

    if args.load.html.is_none() {
        args.load.html = Some(PathBuf::from("target/demo-report.html"));
    }
    args.load.target = switch.terminal.to_string();
    let load = match args.load.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard demo: {e}");
            switch.stop();
            sim.stop();
            return ExitCode::from(2);
        }
    };
    println!(
        "  load test           {} connections, {:?}\n",
        load.connections, load.duration
    );
    let report = loadgen::run(load);

    switch.stop();
    sim.stop();
    let _ = std::fs::remove_dir_all(&journal_dir);

    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard demo: load test failed: {e}");
            return ExitCode::from(1);
        }
    };
    let stdout = std::io::stdout();
    let _ = report.print_human(&mut stdout.lock());
    let mut ok = true;
    let paths = [&args.load.html, &args.load.json, &args.load.hgrm];
    for dir in paths.into_iter().flatten().filter_map(|p| p.parent()) {
        if !dir.as_os_str().is_empty() {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    for (what, path, written) in loadgen::cli::write_outputs(&report, &args.load) {
        match written {
            Ok(()) => println!("{what}: {}", path.display()),
            Err(e) => {
                eprintln!("switchyard demo: can not write {}: {e}", path.display());
                ok = false;
            }
        }
    }
    if report.answered() == 0 {
        eprintln!("switchyard demo: no request was answered");
        return ExitCode::from(1);
    }
    if !report.is_clean() || !ok {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, String> {
    let default = std::path::Path::new("config/switchyard.toml");
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None if default.exists() => Config::load(default).map_err(|e| e.to_string()),
        None => Config::parse("").map_err(|e| format!("{e:?}")),
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

fn start_sim() -> Result<Running, String> {
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
            let rt = match crate::runtime::build(&config.runtime) {
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
