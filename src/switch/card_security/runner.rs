//! The drivers' side of [`super::effects`]: each [`HsmCall`] a core polls
//! out runs here as a future of the driver's own task (a command through
//! the payShield client, a key store rewrite on tokio's blocking pool),
//! and its [`HsmDone`] comes back through [`HsmRunner::next`], a branch of
//! the driver's `select!`. Nothing here decides: a call the client can
//! not take fails at once (`Unavailable`), one it does not answer fails
//! with its timeout, and the core has its own deadline besides.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::NetworkHsm;
use super::effects::{HsmCall, HsmDone, HsmWork};
use crate::security::hsm::HsmError;
use crate::telemetry;

type Running = Pin<Box<dyn Future<Output = (u64, HsmDone)> + Send>>;

/// A key store rewrite (it syncs the file: blocking) on tokio's blocking
/// pool, answered as [`HsmDone::Installed`].
fn installing(id: u64, run: impl FnOnce() -> Result<(), HsmError> + Send + 'static) -> Running {
    Box::pin(async move {
        let done = tokio::task::spawn_blocking(run).await.unwrap_or_else(|e| {
            Err(HsmError::Unavailable(format!(
                "the key store write stopped: {e}"
            )))
        });
        (id, HsmDone::Installed(done))
    })
}

/// The calls of one core under way.
pub struct HsmRunner {
    network: Option<Arc<NetworkHsm>>,
    /// Made at the first call: a connection without card security work
    /// allocates nothing for it.
    running: Option<FuturesUnordered<Running>>,
}

impl HsmRunner {
    /// `network`: the HSM commands go to (none: every command fails
    /// `Unavailable`; installs still run).
    pub fn new(network: Option<Arc<NetworkHsm>>) -> HsmRunner {
        HsmRunner {
            network,
            running: None,
        }
    }

    pub fn start(&mut self, call: HsmCall) {
        let HsmCall { id, work } = call;
        let running: Running = match work {
            HsmWork::Command(command) => {
                let client = match self.network.as_deref().map(NetworkHsm::client) {
                    Some(Ok(c)) => Ok(c.clone()),
                    Some(Err(e)) => Err(HsmError::Unavailable(e.to_owned())),
                    None => Err(HsmError::Unavailable("no network HSM configured".into())),
                };
                Box::pin(async move {
                    let name = command.name();
                    let sent = std::time::Instant::now();
                    let answer = match client {
                        Ok(c) => c.call(command).await,
                        Err(e) => Err(e),
                    };
                    let result = match &answer {
                        Ok(_) => "ok",
                        Err(HsmError::Timeout(_)) => "timeout",
                        Err(HsmError::Unavailable(_)) => "unavailable",
                        Err(_) => "refused",
                    };
                    if matches!(result, "ok" | "refused") {
                        metrics::histogram!(telemetry::HSM_SECONDS, "command" => name)
                            .record(sent.elapsed().as_secs_f64());
                    }
                    metrics::counter!(telemetry::HSM_COMMANDS, "command" => name, "result" => result)
                        .increment(1);
                    (id, HsmDone::Reply(answer))
                })
            }
            HsmWork::InstallBlocks(install) => installing(id, move || install.run()),
            HsmWork::Install(install) => installing(id, move || install.run()),
        };
        self.running
            .get_or_insert_with(FuturesUnordered::new)
            .push(running);
    }

    pub fn is_empty(&self) -> bool {
        self.running.as_ref().is_none_or(FuturesUnordered::is_empty)
    }

    /// The next call done; pending while none runs (cancel-safe).
    pub async fn next(&mut self) -> (u64, HsmDone) {
        match self.running.as_mut() {
            Some(running) => match running.next().await {
                Some(done) => done,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}
