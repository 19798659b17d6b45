//! Locking shared by the actors and threads.

use std::sync::{Mutex, MutexGuard};

/// Locks `m` even if a panic elsewhere poisoned it. Every mutex of the
/// switch guards plain data (counters, records, a join handle) that a
/// panic leaves usable, so refusing it would only spread the failure.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
