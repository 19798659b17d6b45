//! Runtime layout and process signals.

use crate::switch::config::{Section, table};

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

/// SIGHUP, which asks the switch to re-read its TLS material. Installed
/// before the switch announces itself: SIGHUP's default action ends the
/// process.
pub struct Hangups {
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Installs the handler; inside a runtime.
    pub fn install() -> Hangups {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Hangups {
                hangup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Hangups {}
        }
    }

    /// Resolves on each SIGHUP (never without a handler).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(h) = &mut self.hangup {
            h.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}

/// Resolves on SIGINT or SIGTERM, saying which came. Handlers are
/// installed on the first poll; use [`StopSignals::install`] to have them
/// in place before announcing readiness.
pub async fn stop_signal() -> StopSignal {
    StopSignals::install().recv().await
}

// ---------------------------------------------------------------------------
// Its config: the `[runtime]` table.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeFlavor {
    /// One tokio work-stealing runtime over `worker_threads` threads.
    MultiThread,
    /// One single-threaded runtime; the fastest on small machines where
    /// the load generator and the acquirer share the cores.
    CurrentThread,
}

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub flavor: RuntimeFlavor,
    /// 0 means one per core.
    pub worker_threads: usize,
}

table! {
    pub(crate) RuntimeFile {
        flavor: String = "current-thread".into();
        worker_threads: usize = 0, in 0..=1024;
    }
}

impl RuntimeFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> RuntimeConfig {
        self.check_ranges(s);
        let flavor = match self.flavor.as_str() {
            "current-thread" => RuntimeFlavor::CurrentThread,
            "multi-thread" => RuntimeFlavor::MultiThread,
            other => {
                let message = format!("`{other}`: expected \"current-thread\" or \"multi-thread\"");
                s.problem("flavor", message);
                RuntimeFlavor::CurrentThread
            }
        };
        RuntimeConfig {
            flavor,
            worker_threads: self.worker_threads,
        }
    }
}
