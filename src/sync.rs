//! Locking shared by the actors and threads.

use std::sync::{Mutex, MutexGuard, TryLockError};

/// Locks `m` even if a panic elsewhere poisoned it. Every mutex of the
/// switch guards plain data (counters, records, a join handle) that a
/// panic leaves usable, so refusing it would only spread the failure.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `lock` without waiting: `None` only when another holder has it.
pub fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}
