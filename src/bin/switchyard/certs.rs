//! `switchyard certs --dir DIR` (hidden, for development and tests): a
//! private CA and the certificates a TLS test needs, written into DIR by
//! `tools::certs`. `scripts/test` makes the Python TLS peer's with it.

use std::path::Path;
use std::process::ExitCode;

use switchyard::tools::certs::{CertError, Pki};

/// What is written: the CA, a server certificate for localhost and
/// 127.0.0.1, a client certificate for terminal TERM0001, one that has
/// expired, and one for the switch's acquirer links (CN SWITCH01).
fn write_all(dir: &Path) -> Result<Vec<(&'static str, String)>, CertError> {
    let mut pki = Pki::new(dir, "switchyard")?;
    let server = pki.server("server", &[])?;
    let client = pki.client("client", "TERM0001", &[])?;
    let expired = pki.expired_client("expired-client", "TERM0002")?;
    let link = pki.client("link-client", "SWITCH01", &[])?;
    let show = |p: &Path| p.display().to_string();
    Ok(vec![
        ("ca", show(&pki.ca)),
        ("server cert", show(&server.cert)),
        ("server key", show(&server.key)),
        ("client cert (CN TERM0001)", show(&client.cert)),
        ("client key", show(&client.key)),
        ("expired client cert (CN TERM0002)", show(&expired.cert)),
        ("expired client key", show(&expired.key)),
        ("link client cert (CN SWITCH01)", show(&link.cert)),
        ("link client key", show(&link.key)),
    ])
}

pub fn run(dir: &Path) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("switchyard certs: --dir {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    match write_all(dir) {
        Ok(files) => {
            for (what, path) in files {
                println!("{what}: {path}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard certs: {e}");
            ExitCode::from(1)
        }
    }
}
