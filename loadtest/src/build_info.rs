//! What this build is, for the reports: version and the commit it was
//! built from (`build.rs`, the switch's own build script, sets the commit).

/// The package version; the load generator's version follows the switch's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit (12 hex digits), or "unknown" outside a checkout.
pub const COMMIT: &str = env!("SWITCHYARD_COMMIT");
