//! Acquirer reconciliation: after each cutover, per acquirer (those with
//! `reconciliation = true`, the default) and currency, the closed business
//! date's totals go to the host in an 0520 through store-and-forward; the
//! host's 0530 says with DE66 whether its own totals agree (1) or not (2).
//! Both are kept in the store's `reconciliations` table; out of balance is
//! counted (`switchyard_reconciliation_out_of_balance_total`) and logged as
//! a warning.
//!
//! # Where the totals come from
//!
//! From the store, once the exporter has passed the point where the closed
//! date can no longer change: `[settlement] reconciliation_delay_ms` after
//! the cutover (the date's requests still in flight get their final
//! answers), then the journal's durable end at that moment exported. The
//! store is what `switchyard settle report` and `switchyard recon` read,
//! classified once by [`Day`]: the 0520 carries the very figures the
//! report shows for the acquirer, reversals by terminals and by the
//! switch netted the same way. A ledger of its own, folded from the
//! journal like the terminal batch ledger, would be a second account of
//! the same day to keep in step with the first; and unlike a terminal's
//! 0500, an 0520 is not waited for by anyone, so the store's lag (one
//! export batch) costs nothing. Without the store (`[store] enabled =
//! false`) no 0520 is made, and the start says so.
//!
//! # The 0520 (ISO 8583:1987)
//!
//! DE7 (transmission time), DE11, DE15 (settlement date: the business
//! date's MMDD), DE41 ([`RECON_TERMINAL_ID`], so the answer is matched like
//! any other), DE50 (settlement currency), DE74-DE77 (credits, credit
//! reversals, debits, debit reversals: numbers), DE78-DE80 (transfers,
//! their reversals, inquiries: 0, the switch settles none), DE81
//! (authorizations approved and standing), DE82-DE85 (fees: 0, none are
//! charged), DE86-DE89 (the amounts of DE74-DE77), DE97 (net settlement:
//! `D` debits exceed credits, `C` otherwise) and DE99 (settlement
//! institution, `[settlement] institution_id`, when set). Debits and
//! credits count every approved financial transaction by its processing
//! code; one reversed since (by its terminal or by the switch) counts in
//! the reversal fields too, so the net is what settles.
//!
//! # Durability
//!
//! A row is written before its 0520 is queued; the answer completes it.
//! A row without an answer is queued again at the next start (the same
//! STAN: a repeat, as the host may have seen it). Store-and-forward keeps
//! the 0520 behind the acquirer's reversals and advices, resends it every
//! `retry_interval_ms`, and holds it while no link is up.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::BusinessDay;
use super::batch::{Side, Totals};
use super::date::BusinessDate;
use super::day::{Class, Day, Status};
use crate::iso8583::{Message, MessageBuilder, Mti, Spec};
use crate::switch::acquirer::MatchKey;
use crate::switch::saf::{SafEntry, SafKind};
use crate::switch::store::{self, Backend, Reconciliation, Store, StoreError};

/// DE41 of the 0520: not a terminal's; the host echoes it, and the link
/// matches the 0530 on it and DE11 like any answer.
pub const RECON_TERMINAL_ID: &str = "SWRECON1";

/// Metric: reconciliations answered, by acquirer and `result`
/// (`in_balance`, `out_of_balance`, `no_verdict`).
pub const RECONCILIATIONS_METRIC: &str = "switchyard_reconciliations_total";
/// Metric: 0530s with DE66 = 2, by acquirer: the alert.
pub const OUT_OF_BALANCE_METRIC: &str = "switchyard_reconciliation_out_of_balance_total";

/// 0520s in flight at once: acquirers times currencies, far below.
const MAX_PENDING: usize = 4096;
/// After a database server did not answer, the next try.
const STORE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// One acquirer's figures of a date in one currency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcquirerTotals {
    pub totals: Totals,
    /// Authorizations approved and standing (DE81).
    pub authorizations: u64,
}

/// The totals of a classified day, per (acquirer, currency).
pub fn totals_of(day: &Day) -> BTreeMap<(String, u16), AcquirerTotals> {
    let mut out: BTreeMap<(String, u16), AcquirerTotals> = BTreeMap::new();
    for e in &day.entries {
        if !matches!(e.class, Class::Financial | Class::Authorization) {
            continue;
        }
        let slot = out.entry((e.acquirer.clone(), e.currency)).or_default();
        if e.class == Class::Authorization {
            if e.status == Status::Authorized {
                slot.authorizations += 1;
            }
            continue;
        }
        let side = match e.txn_type.sign() {
            1 => Side::Debit,
            -1 => Side::Credit,
            _ => continue,
        };
        match e.status {
            Status::Settled => slot.totals.add(side, false, e.amount),
            Status::ReversedByTerminal(_) | Status::ReversedBySwitch => {
                slot.totals.add(side, false, e.amount);
                slot.totals.add(side, true, e.amount);
            }
            _ => {}
        }
    }
    out
}

/// `MMDD` of a `YYYY-MM-DD` date.
fn month_day(date: &str) -> Option<[u8; 4]> {
    let d = BusinessDate::parse(date)?;
    let (_, m, day) = d.ymd();
    let text = format!("{m:02}{day:02}");
    text.as_bytes().try_into().ok()
}

/// The 0520 of `r` in the host's spec, sent at `now_s` (Unix seconds);
/// `None` if it can not be packed (a date that does not parse).
pub fn message(
    r: &Reconciliation,
    institution_id: &str,
    spec: &'static Spec,
    now_s: u64,
) -> Option<(Bytes, MatchKey)> {
    let mti = Mti::new(520)?;
    let de15 = month_day(&r.business_date)?;
    let de7 = crate::iso8583::datetime::transmission_time(now_s);
    let de50 = format!("{:03}", r.currency);
    let de97 = r.totals.de97();
    let mut b = MessageBuilder::new(spec, mti);
    b.set(7, &de7)
        .set_number(11, u64::from(r.stan))
        .set(15, &de15)
        .set(41, RECON_TERMINAL_ID.as_bytes())
        .set(50, de50.as_bytes());
    r.totals.write(&mut b, &de97);
    for n in [78, 79, 80, 82, 83, 84, 85] {
        b.set_number(n, 0);
    }
    b.set_number(81, r.authorizations);
    if !institution_id.is_empty() {
        b.set(99, institution_id.as_bytes());
    }
    let key = MatchKey::new(mti, RECON_TERMINAL_ID.as_bytes(), r.stan)?;
    Some((b.to_bytes().ok()?.freeze(), key))
}

/// What the 0530 says: DE39, and DE66 when it carries one.
pub fn verdict(body: &Bytes, spec: &'static Spec) -> Option<([u8; 2], Option<u8>)> {
    let msg = Message::parse(body.clone(), spec).ok()?;
    let code = msg.response_code()?;
    let balance = msg.number(66).and_then(|v| u8::try_from(v).ok());
    Some((code, balance))
}

/// What the reconciler needs from the switch.
pub struct Settings {
    pub day: Arc<BusinessDay>,
    pub control: Arc<crate::switch::reload::Control>,
    pub backend: Backend,
    pub node_id: String,
    /// The journal's durable end, and the store's export position.
    pub durable: watch::Receiver<u64>,
    pub exported: watch::Receiver<u64>,
    /// Acquirers (by name) that take an 0520.
    pub acquirers: Vec<String>,
}

/// Starts the reconciler; it stops with `stop` (store-and-forward's).
pub fn spawn(settings: Settings, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    // Subscribed now, not when the task first runs: a cutover made in
    // between (the catch-up at start) is not missed.
    let cutovers = settings.day.cutovers();
    // The day before the one the switch starts in: reconciled at start
    // if it never was (a stop between its cutover and its rows' write).
    let before = BusinessDate(settings.day.current().days().saturating_sub(1));
    tokio::spawn(run(settings, cutovers, before, stop))
}

struct Reconciler {
    s: Settings,
    store: Option<Box<dyn Store>>,
    answers_tx: mpsc::Sender<(u64, Bytes)>,
    /// 0520s queued and not answered, by their store-and-forward number.
    pending: HashMap<u64, Reconciliation>,
    next_id: u64,
}

async fn run(
    s: Settings,
    mut cutovers: watch::Receiver<Option<super::CutoverDone>>,
    catch_up: BusinessDate,
    stop: CancellationToken,
) {
    let (answers_tx, mut answers) = mpsc::channel(MAX_PENDING);
    let mut r = Reconciler {
        s,
        store: None,
        answers_tx,
        pending: HashMap::new(),
        next_id: 1,
    };
    // Owed from before a restart.
    let node = r.s.node_id.clone();
    match r
        .with_store(move |st| st.reconciliations(&node, None, MAX_PENDING))
        .await
    {
        Ok(rows) => {
            if !rows.is_empty() {
                info!(
                    count = rows.len(),
                    "settlement: reconciliations not answered before the stop are queued again"
                );
            }
            for row in rows {
                r.queue(row);
            }
        }
        Err(e) => {
            error!(error = %e, "settlement: reading unanswered reconciliations failed; they are not resent")
        }
    }
    // Only rows not made yet are made: a day reconciled before, or with
    // nothing of an acquirer, sends nothing.
    if !catch_up.is_none() && !r.close_date(catch_up, &mut answers, &stop).await {
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = cutovers.changed() => {
                if changed.is_err() {
                    return;
                }
                let done = *cutovers.borrow_and_update();
                let Some(done) = done else { continue };
                if done.from.is_none() {
                    continue;
                }
                if !r.close_date(done.from, &mut answers, &stop).await {
                    return;
                }
            }
            Some((id, body)) = answers.recv() => r.answered(id, body).await,
        }
    }
}

impl Reconciler {
    /// Closes `date` (see [`Reconciler::close`]) and queues its 0520s,
    /// taking answers meanwhile; false when stopped.
    async fn close_date(
        &mut self,
        date: BusinessDate,
        answers: &mut mpsc::Receiver<(u64, Bytes)>,
        stop: &CancellationToken,
    ) -> bool {
        let closing = self.close(date.to_string(), stop);
        tokio::pin!(closing);
        loop {
            tokio::select! {
                made = &mut closing => {
                    if let Some((rows, date)) = made {
                        if rows.is_empty() {
                            info!(date, "settlement: no acquirer reconciliation to send for {date}");
                        }
                        for row in rows {
                            self.queue(row);
                        }
                    }
                    return !stop.is_cancelled();
                }
                Some((id, body)) = answers.recv() => self.answered(id, body).await,
            }
        }
    }

    /// Runs `f` on the store on a blocking thread (opened the first time).
    async fn with_store<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let held = self.store.take();
        let backend = self.s.backend.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut st = match held {
                Some(st) => st,
                None => match store::open(&backend) {
                    Ok(st) => st,
                    Err(e) => return (None, Err(e)),
                },
            };
            let out = f(&mut *st);
            (Some(st), out)
        })
        .await;
        match joined {
            Ok((st, out)) => {
                self.store = st;
                out
            }
            Err(e) => Err(StoreError::Spawn(std::io::Error::other(e.to_string()))),
        }
    }

    /// Waits until `date` can no longer change in the store, then totals
    /// it and writes a row per acquirer and currency not reconciled yet;
    /// the rows to queue. `None`: stopped.
    fn close(
        &self,
        date: String,
        stop: &CancellationToken,
    ) -> impl std::future::Future<Output = Option<(Vec<Reconciliation>, String)>> + 'static {
        let delay = self.s.day.config().reconciliation_delay;
        let durable = self.s.durable.clone();
        let mut exported = self.s.exported.clone();
        let stop = stop.clone();
        let backend = self.s.backend.clone();
        let node = self.s.node_id.clone();
        let acquirers = self.s.acquirers.clone();
        async move {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            let end = *durable.borrow();
            tokio::select! {
                _ = stop.cancelled() => return None,
                r = exported.wait_for(|&p| p >= end) => {
                    if r.is_err() {
                        warn!(date, "settlement: the store's exporter stopped; no reconciliation for {date}");
                        return None;
                    }
                }
            }
            loop {
                let (d, backend, node, acquirers) = (
                    date.clone(),
                    backend.clone(),
                    node.clone(),
                    acquirers.clone(),
                );
                let made = tokio::task::spawn_blocking(move || {
                    let mut st = store::open_to_read(&backend)?;
                    make_rows(&mut *st, &node, &d, &acquirers, crate::clock::unix_now_ms())
                })
                .await;
                match made {
                    Ok(Ok(rows)) => return Some((rows, date)),
                    // A database server away: tried again, as the exporter does.
                    Ok(Err(e)) if e.is_retryable() => {
                        warn!(date, error = %e, "settlement: the store is not reachable for the acquirer reconciliation of {date}; trying again in {} s", STORE_RETRY.as_secs());
                        tokio::select! {
                            _ = stop.cancelled() => return None,
                            _ = tokio::time::sleep(STORE_RETRY) => {}
                        }
                    }
                    Ok(Err(e)) => {
                        error!(date, error = %e, "settlement: totals for the acquirer reconciliation of {date} could not be made");
                        return None;
                    }
                    Err(e) => {
                        error!(date, error = %e, "settlement: the reconciliation task failed");
                        return None;
                    }
                }
            }
        }
    }

    /// Into the acquirer's store-and-forward queue.
    fn queue(&mut self, row: Reconciliation) {
        if self.pending.len() >= MAX_PENDING {
            error!(acquirer = %row.acquirer, date = %row.business_date,
                "settlement: too many reconciliations in flight; this one waits for the next start");
            return;
        }
        let current = self.s.control.current();
        let Some(a) = current.acquirers.iter().find(|a| a.name == row.acquirer) else {
            warn!(acquirer = %row.acquirer, date = %row.business_date,
                "settlement: the acquirer of a reconciliation is no longer configured; not sent");
            return;
        };
        let institution = &self.s.day.config().institution_id;
        let now_s = crate::clock::unix_now_ms() / 1000;
        let Some((body, key)) = message(&row, institution, a.spec, now_s) else {
            error!(acquirer = %row.acquirer, date = %row.business_date,
                "settlement: the 0520 could not be packed in the acquirer's spec");
            return;
        };
        let id = self.next_id;
        self.next_id += 1;
        let entry = SafEntry {
            answer_to: Some(self.answers_tx.clone()),
            ..SafEntry::new(
                id,
                SafKind::Reconciliation,
                body,
                key,
                crate::clock::unix_now_ms(),
            )
        };
        if a.saf.push(entry).is_err() {
            error!(acquirer = %row.acquirer, date = %row.business_date,
                "settlement: store-and-forward refused the 0520 (queue full); it is sent at the next start");
            return;
        }
        info!(acquirer = %row.acquirer, date = %row.business_date, currency = row.currency,
            net = %String::from_utf8_lossy(&row.totals.de97()),
            "settlement: acquirer reconciliation (0520) queued");
        self.pending.insert(id, row);
    }

    async fn answered(&mut self, id: u64, body: Bytes) {
        let Some(mut row) = self.pending.remove(&id) else {
            return;
        };
        if body.is_empty() {
            warn!(acquirer = %row.acquirer, date = %row.business_date,
                "settlement: store-and-forward gave up on the 0520 (expired or out of attempts); \
                 it is sent again at the next start");
            return;
        }
        let spec = self
            .s
            .control
            .current()
            .acquirers
            .iter()
            .find(|a| a.name == row.acquirer)
            .map(|a| a.spec);
        let Some((code, balance)) = spec.and_then(|spec| verdict(&body, spec)) else {
            warn!(acquirer = %row.acquirer, date = %row.business_date,
                "settlement: the 0530 could not be read; the reconciliation stays unanswered");
            return;
        };
        row.answered_at_ms = Some(crate::clock::unix_now_ms());
        row.response_code = Some(String::from_utf8_lossy(&code).into_owned());
        row.balance = balance;
        let result = match balance {
            Some(1) => "in_balance",
            Some(2) => "out_of_balance",
            _ => "no_verdict",
        };
        metrics::counter!(RECONCILIATIONS_METRIC, "acquirer" => row.acquirer.clone(), "result" => result)
            .increment(1);
        match balance {
            Some(1) => {
                info!(acquirer = %row.acquirer, date = %row.business_date, currency = row.currency,
                "settlement: the acquirer's totals agree (0530, DE66 1: in balance)")
            }
            Some(2) => {
                metrics::counter!(OUT_OF_BALANCE_METRIC, "acquirer" => row.acquirer.clone())
                    .increment(1);
                warn!(acquirer = %row.acquirer, date = %row.business_date, currency = row.currency,
                    net = %String::from_utf8_lossy(&row.totals.de97()),
                    "settlement: OUT OF BALANCE with the acquirer (0530, DE66 2); reconcile its \
                     settlement file with `switchyard recon`");
            }
            other => {
                warn!(acquirer = %row.acquirer, date = %row.business_date, de39 = %String::from_utf8_lossy(&code),
                de66 = ?other, "settlement: the acquirer answered the 0520 without a verdict (DE66 neither 1 nor 2)")
            }
        }
        let saved = row.clone();
        if let Err(e) = self
            .with_store(move |st| st.save_reconciliation(&saved))
            .await
        {
            error!(acquirer = %row.acquirer, date = %row.business_date, error = %e,
                "settlement: the acquirer's answer could not be stored; the 0520 is sent again at the next start");
        }
    }
}

/// The rows of `date` to send: one per enabled acquirer and currency the
/// day has rows of and the store has no reconciliation of yet, written
/// before they are returned.
fn make_rows(
    st: &mut dyn Store,
    node: &str,
    date: &str,
    acquirers: &[String],
    now_ms: u64,
) -> Result<Vec<Reconciliation>, StoreError> {
    let day = Day::load(st, date)?;
    let done = st.reconciliations(node, Some(date), MAX_PENDING)?;
    let mut rows = Vec::new();
    for (i, ((acquirer, currency), t)) in totals_of(&day).into_iter().enumerate() {
        if !acquirers.contains(&acquirer)
            || done
                .iter()
                .any(|r| r.acquirer == acquirer && r.currency == currency)
        {
            continue;
        }
        let row = Reconciliation {
            node_id: node.to_owned(),
            acquirer,
            business_date: date.to_owned(),
            currency,
            // Distinct within the run's second and across its acquirers.
            stan: ((now_ms / 1000 + i as u64) % 1_000_000) as u32,
            totals: t.totals,
            authorizations: t.authorizations,
            queued_at_ms: now_ms,
            answered_at_ms: None,
            response_code: None,
            balance: None,
        };
        st.save_reconciliation(&row)?;
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::specs::iso87ascii;
    use crate::switch::settlement::day::tests::entry;
    use crate::switch::store::SafState;

    #[test]
    fn totals_count_what_settles_and_what_was_reversed() {
        let mut refund = entry(3, 200, "R3", Some("00"));
        refund.txn_type = super::super::day::TxnType::Refund;
        refund.amount = 400;
        let mut switch_reversed = entry(5, 200, "R5", Some("00"));
        switch_reversed.reversal.state = Some(SafState::Acked);
        let mut other_acquirer = entry(7, 200, "R7", Some("00"));
        other_acquirer.acquirer = "other".into();
        let day = Day::classify(
            "2026-12-01",
            vec![
                entry(1, 200, "R1", Some("00")),
                entry(2, 200, "R2", Some("00")),
                refund,
                entry(4, 400, "R2", Some("00")),
                switch_reversed,
                entry(6, 100, "R6", Some("00")),
                other_acquirer,
                entry(8, 200, "R8", Some("51")),
            ],
        );
        let t = totals_of(&day);
        let acq = t[&("acq".to_owned(), 840)];
        assert_eq!(
            acq.totals,
            Totals {
                credits: 1,
                credits_amount: 400,
                credit_reversals: 0,
                credit_reversals_amount: 0,
                debits: 3,
                debits_amount: 3000,
                debit_reversals: 2,
                debit_reversals_amount: 2000,
            }
        );
        assert_eq!(acq.authorizations, 1);
        // 1000 settles as a debit, 400 as a credit.
        assert_eq!(acq.totals.net(), 600);
        assert_eq!(t[&("other".to_owned(), 840)].totals.debits, 1);
    }

    #[test]
    fn the_0520_carries_the_totals_in_their_iso_fields() {
        let r = Reconciliation {
            node_id: "node-1".into(),
            acquirer: "acq".into(),
            business_date: "2026-12-01".into(),
            currency: 978,
            stan: 42,
            totals: Totals {
                credits: 1,
                credits_amount: 400,
                debits: 3,
                debits_amount: 3000,
                debit_reversals: 2,
                debit_reversals_amount: 2000,
                ..Default::default()
            },
            authorizations: 5,
            queued_at_ms: 0,
            answered_at_ms: None,
            response_code: None,
            balance: None,
        };
        let (body, key) = message(&r, "12345", iso87ascii(), 1_764_590_400).expect("packs");
        let m = Message::parse(body, iso87ascii()).expect("parses");
        assert_eq!(m.mti().value(), 520);
        assert_eq!(key.stan(), 42);
        assert_eq!(
            m.text(15).map(|t| t.as_bytes().to_vec()),
            Some(b"1201".to_vec())
        );
        assert_eq!(
            m.text(50).map(|t| t.as_bytes().to_vec()),
            Some(b"978".to_vec())
        );
        assert_eq!(m.number(76), Some(3));
        assert_eq!(m.number(77), Some(2));
        assert_eq!(m.number(81), Some(5));
        assert_eq!(m.number(84), Some(0));
        assert_eq!(m.number(88), Some(3000));
        assert_eq!(
            m.text(97).map(|t| t.as_bytes().to_vec()),
            Some(b"D0000000000000600".to_vec())
        );
        assert_eq!(Totals::read(&m), Ok(r.totals));
        assert_eq!(m.number(99), Some(12345));
        let (no_de99, _) = message(&r, "", iso87ascii(), 0).expect("packs");
        assert!(
            !Message::parse(no_de99, iso87ascii())
                .expect("parses")
                .has(99)
        );
    }
}
