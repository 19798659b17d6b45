//! Runtime layout and process signals.

use crate::switch::config::{RuntimeConfig, RuntimeFlavor};

/// Builds the tokio runtime the config asks for.
pub fn build(config: &RuntimeConfig) -> std::io::Result<tokio::runtime::Runtime> {
    match config.flavor {
        RuntimeFlavor::CurrentThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        RuntimeFlavor::MultiThread => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if config.worker_threads > 0 {
                b.worker_threads(config.worker_threads);
            }
            b.enable_all().build()
        }
    }
}

/// The signal that asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// Ctrl-C.
    Interrupt,
    /// `kill`, systemd, Kubernetes.
    Terminate,
}

impl std::fmt::Display for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        })
    }
}

/// SIGINT and SIGTERM handlers, installed when this is made: a signal
/// that comes before anyone awaits [`StopSignals::recv`] is kept, not
/// fatal (the default action of SIGTERM is to end the process at once).
pub struct StopSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Installs the handlers; inside a runtime.
    pub fn install() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            StopSignals {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            StopSignals {}
        }
    }

    /// Resolves on SIGINT or SIGTERM, saying which came.
    pub async fn recv(&mut self) -> StopSignal {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            if self.interrupt.is_none() && self.terminate.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return StopSignal::Interrupt;
            }
            tokio::select! {
                _ = next(&mut self.interrupt) => StopSignal::Interrupt,
                _ = next(&mut self.terminate) => StopSignal::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            StopSignal::Interrupt
        }
    }
}

/// Resolves on SIGINT or SIGTERM, saying which came. Handlers are
/// installed on the first poll; use [`StopSignals::install`] to have them
/// in place before announcing readiness.
pub async fn stop_signal() -> StopSignal {
    StopSignals::install().recv().await
}
