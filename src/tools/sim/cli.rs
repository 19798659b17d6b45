//! `switchyard sim`: the simulator as a process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use switchyard_protocol::tls::{ServerSettings, TlsError};

use crate::frame::{DEFAULT_MAX_FRAME, LengthHeader};
use crate::iso8583::specs;

use super::{Latency, SimConfig};

/// Run an acquirer host simulator.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9583")]
    pub listen: SocketAddr,
    /// Spec: a built-in name (iso87ascii, iso87binary) or a TOML spec file.
    #[arg(long, default_value = "iso87ascii")]
    pub spec: String,
    /// Length header (binary2, ascii4, binary2-inclusive, binary4).
    #[arg(long, default_value = "binary2")]
    pub framing: LengthHeader,
    /// Largest frame body accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME)]
    pub max_frame: usize,
    /// Delay before each answer: N or MIN-MAX milliseconds (uniform).
    #[arg(long, value_name = "MS", value_parser = Latency::parse_ms)]
    pub latency_ms: Option<Latency>,
    /// Decline 0100/0200 with an amount (DE4, minor units) above this: 51.
    #[arg(long, value_name = "AMOUNT")]
    pub decline_over: Option<u64>,
    /// Decline 0100/0200 for PANs starting with this: 05. Repeatable.
    #[arg(long, value_name = "PREFIX")]
    pub decline_prefix: Vec<String>,
    /// Decline this share (0.0 to 1.0) of the other 0100/0200 at random: 05.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub decline_ratio: f64,
    /// Seed for the random declines and latencies.
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
    /// Drop every Nth transaction answer (never answered).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub drop_every: u64,
    /// Start without answering anything (resume on the control port).
    #[arg(long)]
    pub stopped: bool,
    /// Answer transactions with a wrong STAN (DE11 + 1).
    #[arg(long)]
    pub wrong_stan: bool,
    /// Close every connection as soon as it is accepted.
    #[arg(long)]
    pub refuse_connections: bool,
    /// Address of the line-based control port (commands: latency,
    /// drop-every, stop, resume, close, wrong-stan, stats, settlement,
    /// cutover, skew).
    #[arg(long, value_name = "ADDR")]
    pub control: Option<SocketAddr>,
    /// Requests to keep in memory for inspection. Off by default in the
    /// process: nothing outside it can read them, and a load test would
    /// fill them in seconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub record_capacity: usize,
    /// TLS on every connection, with --cert and --key. Handshakes run in
    /// each connection's task (10 s at most); a failed one is logged and
    /// counted, and disturbs no other connection.
    #[arg(long)]
    pub tls: bool,
    /// With --tls: the server's certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// With --tls: the private key (PEM) of --cert.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// With --tls: require a client certificate that chains to this CA
    /// (PEM); clients without one are refused in the handshake.
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// The key store holding the zone keys (with --lmk-file, or
    /// $SWITCHYARD_LMK_FILE).
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
    /// The LMK file of --keys.
    #[arg(long, value_name = "FILE")]
    pub lmk_file: Option<PathBuf>,
    /// Zone MAC key (ZAK) in --keys: transaction requests must carry a
    /// MAC under it (63 otherwise), answers carry one.
    #[arg(long, value_name = "NAME")]
    pub zak: Option<String>,
    /// The MAC algorithm of --zak: retail, tdes-cbc or aes-cmac.
    #[arg(long, default_value = "retail")]
    pub mac_algorithm: String,
    /// With --zak: the MACs cover these fields' data, in this order
    /// (`2,3,4,11,41`, as the acquirer's `mac_fields`); default: the
    /// whole message.
    #[arg(long, value_name = "N,N,...", value_delimiter = ',')]
    pub mac_fields: Vec<u16>,
    /// Zone PIN key (ZPK) in --keys: DE52 of 0100/0200 must decrypt to a
    /// valid PIN block under it (81 otherwise).
    #[arg(long, value_name = "NAME")]
    pub zpk: Option<String>,
    /// With --zpk: every card's PIN; another PIN gets 55.
    #[arg(long, value_name = "PIN")]
    pub expect_pin: Option<String>,
    /// Keep a settlement file (CSV) of the financial transactions
    /// approved and not reversed since start or the last `cutover`:
    /// written on the control commands settlement, cutover and skew N,
    /// and at stop.
    #[arg(long, value_name = "FILE")]
    pub settlement_file: Option<PathBuf>,
}

impl SimArgs {
    /// The zone keys the flags name, read from the key store now.
    pub fn zone_keys(&self) -> Result<Option<Arc<super::zone::ZoneKeys>>, String> {
        use crate::security::lmk::Lmk;
        use crate::security::store::KeyStore;
        if self.zak.is_none() && self.zpk.is_none() {
            if self.expect_pin.is_some() {
                return Err("--expect-pin needs --zpk".into());
            }
            if !self.mac_fields.is_empty() {
                return Err("--mac-fields needs --zak".into());
            }
            return Ok(None);
        }
        let Some(path) = &self.keys else {
            return Err("--zak and --zpk need --keys FILE (a key store)".into());
        };
        let lmk = Lmk::path_from(self.lmk_file.as_deref())
            .and_then(|p| Lmk::load(&p))
            .map_err(|e| format!("--lmk-file: {e}"))?;
        let store = KeyStore::open(path, &lmk).map_err(|e| format!("--keys: {e}"))?;
        let get = |flag: &str, name: &str| {
            store
                .get(name, &lmk)
                .map(|(_, k)| k)
                .map_err(|e| format!("{flag}: {e}"))
        };
        let algorithm =
            crate::security::hsm::MacAlgorithm::parse(&self.mac_algorithm).ok_or_else(|| {
                format!(
                    "--mac-algorithm {}: retail, tdes-cbc or aes-cmac",
                    self.mac_algorithm
                )
            })?;
        let mac = match &self.zak {
            Some(n) => {
                let key = get("--zak", n)?;
                let prepared = crate::security::mac::MacKey::new(&key)
                    .ok_or_else(|| format!("--zak {n}: not a MAC key ({})", key.describe()))?;
                Some((algorithm, prepared))
            }
            None => None,
        };
        let pin_key = match &self.zpk {
            Some(n) => Some(get("--zpk", n)?),
            None => None,
        };
        if let Some(p) = &self.expect_pin
            && crate::security::pinblock::Pin::new(p).is_err()
        {
            return Err("--expect-pin: 4 to 12 digits".into());
        }
        if let Some(n) = self
            .mac_fields
            .iter()
            .find(|&&n| !(2..=127).contains(&n) || n == 64)
        {
            return Err(format!(
                "--mac-fields: {n}: a data element 2..=127 other than 64"
            ));
        }
        if mac.is_none() && !self.mac_fields.is_empty() {
            return Err("--mac-fields needs --zak".into());
        }
        Ok(Some(Arc::new(super::zone::ZoneKeys {
            mac_fields: self.mac_fields.clone(),
            mac,
            pin_key,
            expected_pin: self.expect_pin.clone(),
        })))
    }

    /// The TLS flags as a server configuration, every file read now: a
    /// bad one is refused at start, named with its flag.
    pub fn tls_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
        if !self.tls {
            let given = [
                ("--cert", self.cert.is_some()),
                ("--key", self.key.is_some()),
                ("--client-ca", self.client_ca.is_some()),
            ];
            return match given.into_iter().find(|(_, given)| *given) {
                Some((flag, _)) => Err(format!("{flag} needs --tls")),
                None => Ok(None),
            };
        }
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Err(
                "--tls needs --cert FILE and --key FILE: the server's certificate and its key"
                    .into(),
            );
        };
        let settings = ServerSettings {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.client_ca.clone(),
            require_client_cert: self.client_ca.is_some(),
            ..ServerSettings::default()
        };
        settings.build().map(Some).map_err(|e| {
            let flags = [
                ("--cert", Some(cert)),
                ("--key", Some(key)),
                ("--client-ca", self.client_ca.as_ref()),
            ];
            match &e {
                TlsError::File { path, .. } => match flags.iter().find(|(_, p)| *p == Some(path)) {
                    Some((flag, _)) => format!("{flag} {e}"),
                    None => format!("--tls: {e}"),
                },
                TlsError::Config(_) => format!("--tls: {e}"),
            }
        })
    }

    /// What the startup line says about TLS.
    fn tls_summary(&self) -> &'static str {
        match (self.tls, self.client_ca.is_some()) {
            (false, _) => "",
            (true, false) => ", TLS",
            (true, true) => ", TLS with client certificates required",
        }
    }
}

pub fn run(args: SimArgs) -> ExitCode {
    let spec = match specs::resolve(&args.spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard sim: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = match args.tls_config() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("switchyard sim: {e}");
            return ExitCode::from(2);
        }
    };
    let zone = match args.zone_keys() {
        Ok(z) => z,
        Err(e) => {
            eprintln!("switchyard sim: {e}");
            return ExitCode::from(2);
        }
    };
    let tls_summary = args.tls_summary();
    // Failed handshakes and failed accepts are logged (stderr).
    crate::telemetry::init_logging(crate::telemetry::LogFormat::Text);
    let config = SimConfig {
        listen: args.listen,
        spec,
        framing: args.framing,
        max_frame: args.max_frame,
        latency: args.latency_ms.unwrap_or(Latency::None),
        decline_over_amount: args.decline_over,
        decline_prefixes: args.decline_prefix,
        decline_ratio: args.decline_ratio,
        seed: args.seed,
        drop_every: args.drop_every,
        stopped: args.stopped,
        wrong_stan: args.wrong_stan,
        refuse_connections: args.refuse_connections,
        control: args.control,
        record_capacity: args.record_capacity,
        tls,
        zone,
        settlement_file: args.settlement_file,
        ..SimConfig::default()
    };
    // One thread is plenty for a host stand-in, and leaves the other cores
    // to the switch and the load generator.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard sim: can not start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let (spec_name, framing) = (&spec.name, config.framing);
        let (listen, control) = (config.listen, config.control);
        let handle = match super::spawn(config).await {
            Ok(h) => h,
            Err(e) => {
                let control = control.map_or(String::new(), |c| format!(" (control {c})"));
                eprintln!("switchyard sim: can not listen on {listen}{control}: {e}");
                return ExitCode::from(1);
            }
        };
        let control = handle
            .control_addr()
            .map_or(String::new(), |c| format!(", control on {c}"));
        println!(
            "switchyard sim: listening on {} (spec {spec_name}, framing {framing}{tls_summary}{control})",
            handle.local_addr()
        );
        crate::runtime::stop_signal().await;
        let stats = handle.stats();
        handle.shutdown();
        eprintln!("switchyard sim: stopped; {stats}");
        match handle.write_settlement() {
            Ok(said) => eprintln!("switchyard sim: settlement file: {said}"),
            // Without --settlement-file there is none to write.
            Err(_) if handle.settled().is_none() => {}
            Err(e) => {
                eprintln!("switchyard sim: settlement file: {e}");
                return ExitCode::from(1);
            }
        }
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn parse(args: &[&str]) -> Result<SimArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("sim").chain(args.iter().copied())).map(|c| c.sim)
    }

    #[test]
    fn defaults_match_the_config_defaults() {
        let a = parse(&[]).expect("parses");
        let d = SimConfig::default();
        assert_eq!(a.listen, d.listen);
        assert_eq!(a.spec, "iso87ascii");
        assert_eq!(a.framing, d.framing);
        assert_eq!(a.max_frame, d.max_frame);
        assert_eq!(a.latency_ms, None);
        assert_eq!(a.seed, d.seed);
        assert!(!a.stopped && !a.wrong_stan && !a.refuse_connections);
        assert_eq!(a.control, None);
        assert!(!a.tls && a.cert.is_none() && a.key.is_none() && a.client_ca.is_none());
        assert_eq!(a.tls_config().map(|t| t.is_none()), Ok(true));
        assert_eq!(d.tls_handshake_timeout, std::time::Duration::from_secs(10));
    }

    #[test]
    fn every_flag_parses() {
        let a = parse(&[
            "--listen=0.0.0.0:7000",
            "--spec=iso87binary",
            "--framing=ascii4",
            "--latency-ms=10-100",
            "--decline-over=5000",
            "--decline-prefix=5555",
            "--decline-prefix=4000",
            "--decline-ratio=0.1",
            "--seed=9",
            "--drop-every=5",
            "--stopped",
            "--wrong-stan",
            "--refuse-connections",
            "--control=127.0.0.1:7001",
            "--record-capacity=10",
            "--tls",
            "--cert=server.pem",
            "--key=server.key",
            "--client-ca=ca.pem",
        ])
        .expect("parses");
        assert!(a.tls);
        assert_eq!(a.cert.as_deref(), Some(std::path::Path::new("server.pem")));
        assert_eq!(a.key.as_deref(), Some(std::path::Path::new("server.key")));
        assert_eq!(a.client_ca.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(a.tls_summary(), ", TLS with client certificates required");
        assert_eq!(a.framing, LengthHeader::Ascii4);
        assert_eq!(
            a.latency_ms,
            Some(Latency::Uniform(
                Duration::from_millis(10),
                Duration::from_millis(100)
            ))
        );
        assert_eq!(a.decline_over, Some(5000));
        assert_eq!(a.decline_prefix, ["5555", "4000"]);
        assert_eq!(a.drop_every, 5);
        assert!(a.stopped && a.wrong_stan && a.refuse_connections);
        assert_eq!(a.control.map(|c| c.port()), Some(7001));
        assert_eq!(
            parse(&["--latency-ms=25"]).expect("parses").latency_ms,
            Some(Latency::Fixed(Duration::from_millis(25)))
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--latency-ms=slow"]).is_err());
        assert!(parse(&["--framing=binary3"]).is_err());
        assert!(parse(&["--listen=nowhere"]).is_err());
    }
}
