//! Fraud scoring of an authorization, and the `Request` record that
//! carries its score into the journal.

use tracing::debug;

use super::core::TerminalCore;
use super::records::{JournalAppend, request_record};
use crate::iso8583::Message;
use crate::switch::fraud::{self, Auth, Decision, Score};

impl<J: JournalAppend> TerminalCore<J> {
    /// Scores `auth` against the card's history (this generation's rules),
    /// counts the decision, and
    /// journals the request with its score and `route` (the primary
    /// acquirer, `u16::MAX` for none). `None` when the journal refused the
    /// record.
    pub(super) fn score_and_journal(
        &mut self,
        msg: &Message,
        auth: &Auth<'_>,
        route: u16,
    ) -> Option<(u64, Score, Decision)> {
        let rules = &self.shared.fraud_rules;
        let score = fraud::score(rules, auth, &self.shared.fraud_state);
        let decision = rules.decide(&score);
        self.shared.count_fraud(decision, &score);
        self.tap.scored(&score, decision);
        // The fraud map's card is the journal's: one hash per request.
        let txn = self.journal_request_hashed(msg, route, &score, auth.card.0)?;
        if decision == Decision::Decline {
            debug!(peer = %self.peer, points = score.points, "declined as suspected fraud");
        }
        Some((txn, score, decision))
    }

    /// A new transaction id and its `Request` record; `None` when the
    /// journal refused it.
    pub(super) fn journal_request(
        &mut self,
        msg: &Message,
        route: u16,
        score: &Score,
    ) -> Option<u64> {
        // No card, no hash (zeros, as the store reads them).
        let at_rest = msg
            .pan()
            .map_or([0; 16], |p| self.shared.card_hash(p.digits()));
        self.journal_request_hashed(msg, route, score, at_rest)
    }

    /// As [`TerminalCore::journal_request`], with the card's hash made
    /// already (`Shared::card_hash` of its PAN, zeros without one).
    pub(super) fn journal_request_hashed(
        &mut self,
        msg: &Message,
        route: u16,
        score: &Score,
        at_rest: [u8; 16],
    ) -> Option<u64> {
        let txn = self.shared.next_txn();
        // The one read of the business date on the hot path: a relaxed load.
        let business_date = self.shared.business_day.current().days();
        let record = request_record(
            msg,
            self.now.unix_ms,
            txn,
            route,
            score,
            at_rest,
            business_date,
            self.shared.business_day.batch_field(),
        );
        self.journal(record).then_some(txn)
    }
}
