//! Runtime layout and process signals.

use crate::config::{RuntimeConfig, RuntimeFlavor};

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

/// Resolves on SIGINT or SIGTERM.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
