//! The scheduled cutover: a small tokio task of its own (in
//! `server.rs`'s start), not the journal writer's thread (which must
//! never wait on anything but the disk) nor the terminals (whose only
//! clock is the `Now` they are given).
//!
//! It wakes at the next cutover time, and at least once a minute, and
//! asks [`BusinessDay::cutover`] whether one is due: so a wall clock
//! stepped forward or back, or a DST change, is met within a minute, and
//! the rule lives in one place. Its first look, at start, catches up a
//! date left behind by a switch stopped over a cutover time; it is made
//! before `spawn` returns, so before the listeners take a request, and
//! no request of the new day is journaled with the old date.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::cutover::{BusinessDay, CutoverRefused, Trigger};

/// The longest sleep between looks.
const LOOK_EVERY: Duration = Duration::from_secs(60);

/// Makes the first look (a cutover missed while stopped) and starts the
/// timer; `None` with `cutover_time = "off"`.
pub fn spawn(day: Arc<BusinessDay>, stop: CancellationToken) -> Option<JoinHandle<()>> {
    day.schedule().cutover?;
    let now = crate::clock::unix_now_ms();
    look(&day, Trigger::Startup, now);
    Some(tokio::spawn(run(day, stop, now)))
}

fn look(day: &BusinessDay, trigger: Trigger, now_ms: u64) {
    match day.cutover(trigger, now_ms) {
        Ok(_) | Err(CutoverRefused::NotDue { .. }) => {}
        // The journal full or stopped: the next look tries again.
        Err(e) => tracing::warn!("settlement: scheduled cutover not made: {e}"),
    }
}

async fn run(day: Arc<BusinessDay>, stop: CancellationToken, mut now: u64) {
    loop {
        let wait = sleep_for(&day, now);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        now = crate::clock::unix_now_ms();
        look(&day, Trigger::Scheduled, now);
    }
}

/// Until just past the next cutover time, at most [`LOOK_EVERY`].
pub(super) fn sleep_for(day: &BusinessDay, now_ms: u64) -> Duration {
    let next = day
        .schedule()
        .next_cutover_ms(now_ms)
        .map_or(LOOK_EVERY, |t| {
            Duration::from_millis(t.saturating_sub(now_ms).saturating_add(1))
        });
    next.clamp(Duration::from_millis(10), LOOK_EVERY)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::switch::settlement::{Schedule, SettlementConfig};

    fn day(cutover: Option<u16>) -> BusinessDay {
        let config = SettlementConfig {
            schedule: Schedule::utc(cutover),
            ..SettlementConfig::default()
        };
        BusinessDay::new(config, None, 0, Box::new(|_| true))
    }

    #[test]
    fn the_timer_wakes_just_after_the_cutover_time_and_at_least_once_a_minute() {
        // 2026-12-01T22:59:55Z: five seconds to a 23:00 cutover.
        let at = 20_788 * 86_400_000 + (23 * 3600 - 5) * 1000;
        let d = day(Some(23 * 60));
        assert_eq!(sleep_for(&d, at), Duration::from_millis(5001));
        assert_eq!(sleep_for(&d, at - 3_600_000), LOOK_EVERY);
        // At the cutover time itself the next is a day away.
        assert_eq!(sleep_for(&d, at + 5000), LOOK_EVERY);
    }

    #[tokio::test]
    async fn no_timer_runs_without_a_cutover_time() {
        let stop = CancellationToken::new();
        assert!(spawn(Arc::new(day(None)), stop.clone()).is_none());
        let task = spawn(Arc::new(day(Some(0))), stop.clone()).expect("a timer");
        stop.cancel();
        task.await.expect("ends when stopped");
    }
}
