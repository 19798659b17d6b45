//! The business date every terminal reads, and the one place that moves
//! it: [`BusinessDay::cutover`], whatever started the cutover.
//!
//! Cutovers take a lock of their own (never touched by the hot path,
//! which reads the date with one relaxed load), so two triggers at the
//! same moment (the timer and a host's 0800/201, or two links of one
//! acquirer) are decided one after the other, each against the date the
//! other left: the date advances once. The `Cutover` record is appended
//! to the journal before the new date is published, so every `Request`
//! record carrying the new date comes after it in the journal.
//!
//! The rules, by trigger (the clock's date is [`Schedule::date_at`]):
//! - scheduled (and at start): only when the business date is behind the
//!   clock's, and then to the clock's (after a stop over several
//!   cutover times, one cutover to today, not one per missed day);
//! - operator: one day on, unless the business date is already ahead of
//!   the clock's (a second cutover the same day would close a day that
//!   has not begun);
//! - host: one day on, unless the date is already ahead of the clock's or
//!   the last cutover was less than `host_cutover_guard_minutes` ago
//!   (every link of an acquirer, and every acquirer, may announce the
//!   same cutover).

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::config::SettlementConfig;
use super::date::{BusinessDate, Schedule};
use crate::switch::journal::{CutoverReason, Journal, LastCutover, Record};

/// What starts a cutover: the journal's reason.
pub type Trigger = CutoverReason;

/// A cutover that happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutoverDone {
    pub at_ms: u64,
    /// The date before; `NONE` for one recovered from the journal.
    pub from: BusinessDate,
    pub to: BusinessDate,
    pub reason: CutoverReason,
}

/// Why a trigger changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CutoverRefused {
    #[error("not due: the business date {current} is not behind the clock's ({clock})")]
    NotDue {
        current: BusinessDate,
        clock: BusinessDate,
    },
    #[error(
        "the business date {current} is already ahead of the clock's ({clock}): this day's \
         cutover was done"
    )]
    AheadOfClock {
        current: BusinessDate,
        clock: BusinessDate,
    },
    #[error("the last cutover (to {current}) was {ago_s} s ago, within the host guard")]
    TooSoon { current: BusinessDate, ago_s: u64 },
    #[error("the journal refused the cutover record (full or stopped); nothing changed")]
    JournalRefused,
}

/// Appends a record to the journal; false when it refused.
type Sink = Box<dyn Fn(Record) -> bool + Send + Sync>;

pub struct BusinessDay {
    /// Days since the epoch: the date requests are accepted in.
    date: AtomicU32,
    config: SettlementConfig,
    /// Held while a cutover is decided and journaled; the last one.
    last: Mutex<Option<CutoverDone>>,
    sink: Sink,
    /// Terminal batch totals: shared by every generation, as the date is.
    ledger: Arc<super::batch::Ledger>,
    /// Each cutover of this run, as it is made: what acquirer
    /// reconciliation waits on.
    done: tokio::sync::watch::Sender<Option<CutoverDone>>,
}

impl fmt::Debug for BusinessDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusinessDay")
            .field("date", &self.current())
            .finish_non_exhaustive()
    }
}

impl BusinessDay {
    /// The date of the last cutover recovered from the journal, or the
    /// clock's at `now_ms` when there is none.
    pub fn new(
        config: SettlementConfig,
        recovered: Option<LastCutover>,
        now_ms: u64,
        sink: Sink,
    ) -> BusinessDay {
        let last = recovered
            .filter(|c| c.business_date != 0)
            .map(|c| CutoverDone {
                at_ms: c.at_ms,
                from: BusinessDate::NONE,
                to: BusinessDate(c.business_date),
                reason: c.reason,
            });
        let date = last.map_or_else(|| config.schedule.date_at(now_ms), |c| c.to);
        BusinessDay {
            date: AtomicU32::new(date.days()),
            last: Mutex::new(last),
            sink,
            ledger: Arc::new(super::batch::Ledger::new(config.max_open_batches)),
            done: tokio::sync::watch::Sender::new(None),
            config,
        }
    }

    /// With the batch totals recovery folded from the journal.
    pub fn with_ledger(mut self, ledger: Arc<super::batch::Ledger>) -> BusinessDay {
        ledger.set_max_batches(self.config.max_open_batches);
        self.ledger = ledger;
        self
    }

    /// The terminal batch totals.
    pub fn ledger(&self) -> &super::batch::Ledger {
        &self.ledger
    }

    /// DE3 of the two 0500s: the switch's, or those of the terminal's
    /// profile (`[[security.terminals]]` name) where it has its own.
    pub fn close_codes(&self, profile: Option<&str>) -> super::batch::CloseCodes {
        profile
            .and_then(|name| {
                (self.config.profile_close_codes.iter())
                    .find(|(n, _)| n == name)
                    .map(|(_, c)| *c)
            })
            .unwrap_or(self.config.close_codes)
    }

    /// The request field holding the terminal's batch number
    /// (`[settlement] batch_field`; 0: none), read with each `Request`
    /// record.
    pub fn batch_field(&self) -> u16 {
        self.config.batch_field
    }

    /// [`BusinessDay::new`], journaling to `journal`.
    pub fn with_journal(
        config: SettlementConfig,
        recovered: Option<LastCutover>,
        now_ms: u64,
        journal: Journal,
    ) -> BusinessDay {
        let sink: Sink = Box::new(move |r| journal.append(r).is_ok());
        BusinessDay::new(config, recovered, now_ms, sink)
    }

    /// The business date now: the hot path's one relaxed load. Relaxed
    /// is enough: a request that reads the old date an instant after a
    /// cutover was accepted before it as far as anyone can tell.
    #[inline]
    pub fn current(&self) -> BusinessDate {
        BusinessDate(self.date.load(Ordering::Relaxed))
    }

    pub fn schedule(&self) -> &Schedule {
        &self.config.schedule
    }

    /// The cutovers of this run as they are made (`None` before the first).
    pub fn cutovers(&self) -> tokio::sync::watch::Receiver<Option<CutoverDone>> {
        self.done.subscribe()
    }

    /// The settlement config the day was made with.
    pub fn config(&self) -> &SettlementConfig {
        &self.config
    }

    /// The last cutover (this run's, or the one recovered).
    pub fn last(&self) -> Option<CutoverDone> {
        *crate::sync::lock(&self.last)
    }

    /// Decides and, when due, makes a cutover at `now_ms` (Unix ms).
    pub fn cutover(&self, trigger: Trigger, now_ms: u64) -> Result<CutoverDone, CutoverRefused> {
        let mut last = crate::sync::lock(&self.last);
        let current = BusinessDate(self.date.load(Ordering::Acquire));
        let clock = self.config.schedule.date_at(now_ms);
        let to = match trigger {
            CutoverReason::Scheduled | CutoverReason::Startup => {
                if current >= clock {
                    return Err(CutoverRefused::NotDue { current, clock });
                }
                clock
            }
            CutoverReason::Operator | CutoverReason::Host { .. } => {
                if current > clock {
                    return Err(CutoverRefused::AheadOfClock { current, clock });
                }
                if let (CutoverReason::Host { .. }, Some(prev)) = (trigger, *last) {
                    let ago_ms = now_ms.saturating_sub(prev.at_ms);
                    if u128::from(ago_ms) < self.config.host_guard.as_millis() {
                        return Err(CutoverRefused::TooSoon {
                            current,
                            ago_s: ago_ms / 1000,
                        });
                    }
                }
                current.next()
            }
        };
        let record = Record::Cutover {
            at_ms: now_ms,
            business_date: to.days(),
            reason: trigger,
        };
        if !(self.sink)(record) {
            return Err(CutoverRefused::JournalRefused);
        }
        self.date.store(to.days(), Ordering::Release);
        let done = CutoverDone {
            at_ms: now_ms,
            from: current,
            to,
            reason: trigger,
        };
        *last = Some(done);
        self.done.send_replace(Some(done));
        metrics::counter!(crate::telemetry::CUTOVERS, "reason" => trigger.name()).increment(1);
        tracing::info!(from = %current, to = %to, reason = trigger.name(),
            "settlement: cutover; the business date is now {to}");
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    const HOUR: u64 = 3_600_000;
    /// 2026-12-01T00:00:00Z.
    const DEC_1: u64 = 20_788 * 86_400_000;

    fn date(s: &str) -> BusinessDate {
        BusinessDate::parse(s).expect("date")
    }

    fn day(recovered: Option<LastCutover>, now_ms: u64) -> (BusinessDay, Arc<Mutex<Vec<Record>>>) {
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink_records = records.clone();
        let config = SettlementConfig {
            schedule: Schedule::utc(Some(23 * 60)),
            host_guard: Duration::from_secs(3600),
            ..SettlementConfig::default()
        };
        let sink: Sink = Box::new(move |r| {
            sink_records.lock().expect("lock").push(r);
            true
        });
        (BusinessDay::new(config, recovered, now_ms, sink), records)
    }

    #[test]
    fn the_constant_is_the_first_of_december() {
        assert_eq!(Schedule::utc(None).date_at(DEC_1), date("2026-12-01"));
    }

    #[test]
    fn the_timer_moves_the_date_once_at_the_cutover_time() {
        let (d, records) = day(None, DEC_1 + 12 * HOUR);
        assert_eq!(d.current(), date("2026-12-01"));
        let not_yet = d.cutover(Trigger::Scheduled, DEC_1 + 22 * HOUR);
        assert!(matches!(not_yet, Err(CutoverRefused::NotDue { .. })));
        let done = d
            .cutover(Trigger::Scheduled, DEC_1 + 23 * HOUR)
            .expect("due");
        assert_eq!(
            (done.from, done.to),
            (date("2026-12-01"), date("2026-12-02"))
        );
        assert_eq!(d.current(), date("2026-12-02"));
        // Looking again a minute later (the timer does) changes nothing.
        assert!(
            d.cutover(Trigger::Scheduled, DEC_1 + 23 * HOUR + 60_000)
                .is_err()
        );
        assert_eq!(
            *records.lock().expect("lock"),
            vec![Record::Cutover {
                at_ms: DEC_1 + 23 * HOUR,
                business_date: date("2026-12-02").days(),
                reason: CutoverReason::Scheduled,
            }]
        );
    }

    #[test]
    fn an_early_host_cutover_is_not_repeated_by_the_timer_or_other_links() {
        let (d, records) = day(None, DEC_1 + 12 * HOUR);
        let host = Trigger::Host { acquirer: 0 };
        d.cutover(host, DEC_1 + 21 * HOUR).expect("host cutover");
        assert_eq!(d.current(), date("2026-12-02"));
        // Another link a second later: the date is ahead of the clock.
        assert!(matches!(
            d.cutover(host, DEC_1 + 21 * HOUR + 1000),
            Err(CutoverRefused::AheadOfClock { .. })
        ));
        // The timer at 23:00: the clock has caught up with the date.
        assert!(d.cutover(Trigger::Scheduled, DEC_1 + 23 * HOUR).is_err());
        // A host announcing it again after the timer did it: the guard.
        let (d2, _) = day(None, DEC_1 + 12 * HOUR);
        d2.cutover(Trigger::Scheduled, DEC_1 + 23 * HOUR)
            .expect("timer");
        assert!(matches!(
            d2.cutover(host, DEC_1 + 23 * HOUR + 10 * 60_000),
            Err(CutoverRefused::TooSoon { .. })
        ));
        assert_eq!(records.lock().expect("lock").len(), 1);
    }

    #[test]
    fn an_operator_cuts_over_once_a_day() {
        let (d, _) = day(None, DEC_1 + 12 * HOUR);
        let done = d
            .cutover(Trigger::Operator, DEC_1 + 13 * HOUR)
            .expect("cutover");
        assert_eq!(done.to, date("2026-12-02"));
        assert!(matches!(
            d.cutover(Trigger::Operator, DEC_1 + 14 * HOUR),
            Err(CutoverRefused::AheadOfClock { .. })
        ));
    }

    #[test]
    fn racing_triggers_advance_the_date_once() {
        for _ in 0..50 {
            let (d, records) = day(None, DEC_1 + 12 * HOUR);
            let d = Arc::new(d);
            let at = DEC_1 + 23 * HOUR;
            let threads: Vec<_> = [
                Trigger::Scheduled,
                Trigger::Host { acquirer: 0 },
                Trigger::Host { acquirer: 1 },
                Trigger::Scheduled,
            ]
            .into_iter()
            .map(|t| {
                let d = d.clone();
                std::thread::spawn(move || d.cutover(t, at).is_ok())
            })
            .collect();
            let ok = threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .filter(|&ok| ok)
                .count();
            assert_eq!(ok, 1);
            assert_eq!(d.current(), date("2026-12-02"));
            assert_eq!(records.lock().expect("lock").len(), 1);
        }
    }

    #[test]
    fn a_restart_continues_with_the_recorded_date_and_catches_up_once() {
        let recovered = LastCutover {
            seq: 9,
            at_ms: DEC_1 + 23 * HOUR,
            business_date: date("2026-12-02").days(),
            reason: CutoverReason::Operator,
        };
        // Restarted at noon on 2 December: the recorded date holds.
        let (d, _) = day(Some(recovered), DEC_1 + 36 * HOUR);
        assert_eq!(d.current(), date("2026-12-02"));
        assert_eq!(d.last().map(|l| l.reason), Some(CutoverReason::Operator));
        // Restarted on 5 December: one cutover, straight to the clock's.
        let (d, records) = day(Some(recovered), DEC_1 + 4 * 24 * HOUR + HOUR);
        assert_eq!(d.current(), date("2026-12-02"));
        let done = d
            .cutover(Trigger::Startup, DEC_1 + 4 * 24 * HOUR + HOUR)
            .expect("catch up");
        assert_eq!(done.to, date("2026-12-05"));
        assert_eq!(records.lock().expect("lock").len(), 1);
        // Nothing on record: the clock's date.
        let (d, _) = day(None, DEC_1 + 23 * HOUR + 1);
        assert_eq!(d.current(), date("2026-12-02"));
    }

    #[test]
    fn a_journal_that_refuses_leaves_the_date() {
        let config = SettlementConfig::default();
        let d = BusinessDay::new(config, None, DEC_1, Box::new(|_| false));
        assert_eq!(
            d.cutover(Trigger::Operator, DEC_1 + HOUR),
            Err(CutoverRefused::JournalRefused)
        );
        assert_eq!(d.current(), date("2026-12-01"));
        assert_eq!(d.last(), None);
    }
}
