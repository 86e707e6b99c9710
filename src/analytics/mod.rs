//! Analytics: conversation metrics, provider reports, the platform view and
//! experiments, kept incrementally from the domain events.
//!
//! Each domain event is folded exactly once, inside the automation engine's
//! batch write: the engine adds a `Change::Record` for every event it takes
//! from the queue, before it evaluates the rules on it, and applying it calls
//! [`record`] in the writer transaction that also acknowledges the event. So
//! an event's analytics commit with the engine's work on it, and rules that
//! fail on an event never lose its analytics (the batch so far, the record
//! with it, is written before the failed attempt is counted).
//!
//! Exactly once: the engine may push the same event again (it was recorded
//! with the batch written before a failed rule evaluation, then the drain
//! stopped and the event, not acknowledged, is taken from the queue again).
//! [`record`] keeps a watermark, the highest domain seq folded, and skips an
//! event at or below it; events are folded in seq order, so the watermark is
//! enough. An event re-driven from the dead-letter list (`redriven_at` set,
//! a new seq) was folded on its first pass and is skipped too.
//!
//! `parleyd analytics rebuild` ([`rebuild`]) clears the analytics trees and
//! folds, with the same [`record`], the events re-derived from the stored
//! history. The records carry the [`FORMAT`] they were folded by; the daemon
//! rebuilds, before it serves, analytics kept by another format
//! ([`rebuild::bring_up_to_date`]).
//!
//! Dependencies: analytics reads the store and the rules' helpers; it never
//! imports `automation`, `api` or `service`.

pub mod experiments;
pub mod metrics;
pub mod period;
pub mod platform;
pub mod rebuild;
pub mod report;

use crate::domain::DomainEvent;
use crate::store::{AnalyticsTx, TxError};

/// The analytics fold's format, kept in the analytics meta tree by the
/// fold's first write and by every rebuild. Bump it with every change to
/// the fold that records kept before would lack or count differently (a new
/// counter, a new index, a changed definition): the daemon then rebuilds a
/// data directory kept by the previous format when it starts, instead of
/// serving figures that miss what the old fold did not count.
///
/// 1: the provider reports' counts and the platform view's days.
pub const FORMAT: u64 = 1;

/// Folds `event` into the analytics records, once: an event at or below
/// the watermark, or re-driven from the dead-letter list, changes nothing.
pub fn record(tx: &AnalyticsTx<'_, '_>, event: &DomainEvent) -> Result<(), TxError> {
    let folded = tx.folded_seq()?;
    if event.redriven_at.is_some() || event.seq <= folded {
        return Ok(());
    }
    if folded == 0 {
        tx.set_format(FORMAT)?;
    }
    fold(tx, event)?;
    tx.set_folded_seq(event.seq)
}

/// Folds `event` into every analytics record it concerns, whatever the
/// watermark says (the live path is [`record`]; a rebuild calls this). A
/// record of its own that cannot be read (corrupt) is logged and counted
/// (`parleyd_analytics_skipped_events_total`) and the event is passed over
/// whole: its writes are staged ([`AnalyticsTx::staged`]) and made only once
/// every record it needs has been read, so a skipped event changes nothing
/// and one bad record never holds up the engine; sled's errors fail the
/// batch as usual.
pub fn fold(tx: &AnalyticsTx<'_, '_>, event: &DomainEvent) -> Result<(), TxError> {
    let staged = tx.staged();
    let folded = platform::record(&staged, event)
        .and_then(|()| metrics::record(&staged, event))
        .and_then(|()| experiments::record(&staged, event));
    match folded {
        Ok(()) => staged.commit(),
        Err(TxError::Store(e)) => {
            tracing::error!(seq = event.seq, event = %event.name, error = %e,
                "domain event left out of the analytics: a record it needs is unreadable");
            ::metrics::counter!("parleyd_analytics_skipped_events_total").increment(1);
            Ok(())
        }
        Err(e) => Err(e),
    }
}
