//! What this binary is: version and the commit it was built from.

/// The package version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit (12 hex digits), or "unknown" outside a checkout.
pub const COMMIT: &str = env!("SWITCHYARD_COMMIT");
