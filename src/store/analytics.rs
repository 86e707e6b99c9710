//! The analytics trees: what `analytics` folds the domain events into. The
//! store keeps and reads these records; every decision about them (what an
//! event counts for) is `analytics`'s.
//!
//! | tree                      | key                                   | value                        |
//! |---------------------------|---------------------------------------|------------------------------|
//! | `analytics_conversations` | conversation                          | `ConversationMetrics` JSON   |
//! | `analytics_views`         | listing `\0` customer                 | first `listing_viewed` time (RFC 3339) |
//! | `analytics_by_provider`   | provider `\0` inquiry ms (u64) `\0` conversation | empty             |
//! | `analytics_daily`         | provider `\0` day (`YYYY-MM-DD`, provider's zone) | `DailyAggregate` JSON |
//! | `analytics_meta`          | `folded_seq`                          | u64: the highest domain event seq folded |
//! | `analytics_meta`          | `format`                              | u64: the `analytics::FORMAT` the records were folded by |
//! | `analytics_meta`          | `provider` `\0` provider             | time zone of their first inquiry (`store::report`) |
//! | `analytics_platform`      | see `store::platform`                 | the platform view's days     |
//!
//! Written only inside the writer's transactions, through [`AnalyticsTx`]
//! (the engine's `Change::Record`, and `parleyd analytics rebuild`), so an
//! event's analytics commit together with the engine's acknowledgement of it.

use std::cell::RefCell;

use sled::transaction::TransactionalTree;
use sled::Tree;

use super::automation::{AutomationTx, TxError};
use super::writes::Tx;
use super::{decode, encode, keys, Store, StoreError};
use crate::model::analytics::{ConversationMetrics, DailyAggregate};
use crate::model::{Booking, Conversation, Listing, Signal, User};

const FOLDED_SEQ: &[u8] = b"folded_seq";
const FORMAT: &[u8] = b"format";

/// The analytics trees (see the module doc).
#[derive(Clone)]
pub struct AnalyticsTrees {
    pub(super) conversations: Tree,
    views: Tree,
    by_provider: Tree,
    daily: Tree,
    pub(super) meta: Tree,
    pub(super) platform: Tree,
}

impl AnalyticsTrees {
    pub(super) fn open(db: &sled::Db) -> Result<AnalyticsTrees, StoreError> {
        Ok(AnalyticsTrees {
            conversations: db.open_tree("analytics_conversations")?,
            views: db.open_tree("analytics_views")?,
            by_provider: db.open_tree("analytics_by_provider")?,
            daily: db.open_tree("analytics_daily")?,
            meta: db.open_tree("analytics_meta")?,
            platform: db.open_tree("analytics_platform")?,
        })
    }

    /// Every tree, in the order [`AnalyticsViews::over`] takes their views.
    pub(super) fn all(&self) -> [&Tree; 6] {
        [
            &self.conversations,
            &self.views,
            &self.by_provider,
            &self.daily,
            &self.meta,
            &self.platform,
        ]
    }
}

/// The analytics trees' views in one writer transaction.
pub struct AnalyticsViews<'a> {
    conversations: &'a TransactionalTree,
    views: &'a TransactionalTree,
    by_provider: &'a TransactionalTree,
    daily: &'a TransactionalTree,
    pub(super) meta: &'a TransactionalTree,
    pub(super) platform: &'a TransactionalTree,
}

impl<'a> AnalyticsViews<'a> {
    /// The views of [`AnalyticsTrees::all`], in its order.
    pub(super) fn over(views: &'a [TransactionalTree]) -> AnalyticsViews<'a> {
        let [conversations, views, by_provider, daily, meta, platform] = views else {
            unreachable!("AnalyticsTrees::all lists every analytics tree");
        };
        AnalyticsViews {
            conversations,
            views,
            by_provider,
            daily,
            meta,
            platform,
        }
    }
}

/// Writes held back by a staged [`AnalyticsTx`]: tree, key, value, in the
/// order made.
type Staged<'a> = RefCell<Vec<(&'a TransactionalTree, Vec<u8>, Vec<u8>)>>;

/// Typed reads and writes of the analytics records in one writer
/// transaction ([`AutomationTx::analytics`]).
pub struct AnalyticsTx<'a, 'b> {
    pub(super) tx: &'a Tx<'b>,
    /// `Some` when writes wait for [`AnalyticsTx::commit`] ([`AnalyticsTx::staged`]).
    staged: Option<Staged<'a>>,
}

impl<'b> AutomationTx<'_, 'b> {
    /// The analytics records in this transaction.
    pub fn analytics(&self) -> AnalyticsTx<'_, 'b> {
        AnalyticsTx {
            tx: self.tx,
            staged: None,
        }
    }
}

impl<'a, 'b> AnalyticsTx<'a, 'b> {
    /// The same records, with writes held back (reads see them) until
    /// [`AnalyticsTx::commit`]: dropped uncommitted, it writes nothing. A
    /// sled transaction cannot undo a write, so this is how a fold that
    /// finds a record unreadable halfway leaves no half of itself behind.
    pub fn staged(&self) -> AnalyticsTx<'a, 'b> {
        AnalyticsTx {
            tx: self.tx,
            staged: Some(RefCell::default()),
        }
    }

    /// Writes what a staged transaction held back (nothing otherwise).
    pub fn commit(self) -> Result<(), TxError> {
        for (tree, key, value) in self.staged.map(RefCell::into_inner).unwrap_or_default() {
            tree.insert(key, value)?;
        }
        Ok(())
    }

    /// The value at `key` of `tree`, as this transaction (staged writes
    /// included) sees it.
    pub(super) fn read(
        &self,
        tree: &'a TransactionalTree,
        key: &[u8],
    ) -> Result<Option<sled::IVec>, TxError> {
        if let Some(staged) = &self.staged {
            let staged = staged.borrow();
            let held = staged
                .iter()
                .rev()
                .find(|(t, k, _)| std::ptr::eq(*t, tree) && k == key);
            if let Some((_, _, value)) = held {
                return Ok(Some(value.as_slice().into()));
            }
        }
        Ok(tree.get(key)?)
    }

    /// Decodes the record at `key` of `tree` (see [`AnalyticsTx::read`]).
    pub(super) fn get<T: serde::de::DeserializeOwned>(
        &self,
        tree: &'a TransactionalTree,
        key: &[u8],
    ) -> Result<Option<T>, TxError> {
        Ok(self.read(tree, key)?.map(|v| decode(&v)).transpose()?)
    }

    /// Writes `value` at `key` of `tree`, or holds it back if staged.
    pub(super) fn put(
        &self,
        tree: &'a TransactionalTree,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), TxError> {
        match &self.staged {
            Some(staged) => staged.borrow_mut().push((tree, key.into(), value.into())),
            None => {
                tree.insert(key.into(), value.into())?;
            }
        }
        Ok(())
    }

    pub(super) fn views(&self) -> &'a AnalyticsViews<'b> {
        &self.tx.analytics
    }

    /// The highest domain event seq folded (0 before the first).
    pub fn folded_seq(&self) -> Result<u64, TxError> {
        Ok(self
            .read(self.views().meta, FOLDED_SEQ)?
            .map_or(0, |v| keys::read_u64(&v)))
    }

    pub fn set_folded_seq(&self, seq: u64) -> Result<(), TxError> {
        self.put(self.views().meta, FOLDED_SEQ, seq.to_be_bytes())
    }

    /// Records that the analytics were folded by fold format `format`
    /// (`analytics::FORMAT`; read back by [`Store::analytics_format`]).
    pub fn set_format(&self, format: u64) -> Result<(), TxError> {
        self.put(self.views().meta, FORMAT, format.to_be_bytes())
    }

    pub fn conversation(&self, id: &str) -> Result<Option<ConversationMetrics>, TxError> {
        self.get(self.views().conversations, id.as_bytes())
    }

    pub fn put_conversation(&self, metrics: &ConversationMetrics) -> Result<(), TxError> {
        self.put(
            self.views().conversations,
            metrics.conversation_id.as_bytes(),
            encode(metrics),
        )
    }

    /// When `customer_id` first viewed the listing, if they did.
    pub fn viewed(&self, listing_id: &str, customer_id: &str) -> Result<Option<String>, TxError> {
        let key = keys::pair(listing_id, customer_id);
        Ok(self
            .read(self.views().views, &key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn put_viewed(&self, listing_id: &str, customer_id: &str, at: &str) -> Result<(), TxError> {
        let key = keys::pair(listing_id, customer_id);
        self.put(self.views().views, key, at.as_bytes())
    }

    /// The conversation between a customer and a listing's provider, if open.
    pub fn conversation_between(
        &self,
        listing_id: &str,
        customer_id: &str,
    ) -> Result<Option<String>, TxError> {
        Ok(self
            .read(self.tx.conv_pairs, &keys::pair(listing_id, customer_id))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Lists the conversation under its provider at its inquiry time
    /// (Unix milliseconds).
    pub fn index_inquiry(
        &self,
        provider_id: &str,
        inquiry_ms: i64,
        conversation_id: &str,
    ) -> Result<(), TxError> {
        let key = keys::provider_conversation(provider_id, inquiry_ms, conversation_id);
        self.put(self.views().by_provider, key, [])
    }

    /// The provider's figures for `day` (`YYYY-MM-DD`).
    pub fn daily(&self, provider_id: &str, day: &str) -> Result<Option<DailyAggregate>, TxError> {
        self.get(self.views().daily, &keys::pair(provider_id, day))
    }

    pub fn put_daily(
        &self,
        provider_id: &str,
        day: &str,
        aggregate: &DailyAggregate,
    ) -> Result<(), TxError> {
        self.put(
            self.views().daily,
            keys::pair(provider_id, day),
            encode(aggregate),
        )
    }

    pub fn user(&self, id: &str) -> Result<Option<User>, TxError> {
        self.get(self.tx.users, id.as_bytes())
    }

    pub fn listing(&self, id: &str) -> Result<Option<Listing>, TxError> {
        self.get(self.tx.listings, id.as_bytes())
    }
}

/// The `meta` key present while an analytics rebuild is under way.
const REBUILDING: &str = "analytics_rebuilding";

impl Store {
    /// Overwrites the provider's figures for `day` with bytes that do not
    /// decode.
    #[cfg(test)]
    pub fn corrupt_daily(&self, provider_id: &str, day: &str) -> Result<(), StoreError> {
        let key = keys::pair(provider_id, day);
        self.trees.analytics.daily.insert(key, &b"{not json"[..])?;
        Ok(())
    }

    /// The conversation's metrics as folded so far.
    pub fn conversation_metrics(
        &self,
        id: &str,
    ) -> Result<Option<ConversationMetrics>, StoreError> {
        self.get(&self.trees.analytics.conversations, id.as_bytes())
    }

    /// The conversations whose inquiry reached `provider_id` in
    /// `[from_ms, to_ms)` (Unix milliseconds), in inquiry order: one range
    /// read of the provider's index, no scan of other providers'.
    pub fn provider_conversations(
        &self,
        provider_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let start = keys::provider_conversation(provider_id, from_ms, "");
        let end = keys::provider_conversation(provider_id, to_ms, "");
        self.trees
            .analytics
            .by_provider
            .range(start..end)
            .map(|entry| {
                let (key, _) = entry?;
                Ok(keys::conversation_of_provider_entry(&key))
            })
            .collect()
    }

    /// The provider's daily figures for the days `from..=to` (`YYYY-MM-DD`),
    /// in day order; days without activity are absent.
    pub fn provider_days(
        &self,
        provider_id: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, DailyAggregate)>, StoreError> {
        let (start, end) = (keys::pair(provider_id, from), keys::pair(provider_id, to));
        let prefix = keys::pair(provider_id, "").len();
        self.trees
            .analytics
            .daily
            .range(start..=end)
            .map(|entry| {
                let (key, value) = entry?;
                let day = String::from_utf8_lossy(&key[prefix..]).into_owned();
                Ok((day, decode(&value)?))
            })
            .collect()
    }

    /// Every record of `tree`, in key order (the history a rebuild reads).
    pub(super) fn every<T: serde::de::DeserializeOwned>(
        tree: &Tree,
    ) -> impl Iterator<Item = Result<T, StoreError>> + '_ {
        tree.iter().map(|entry| decode(&entry?.1))
    }

    /// Every conversation, in id order.
    pub fn every_conversation(
        &self,
    ) -> impl Iterator<Item = Result<Conversation, StoreError>> + '_ {
        Store::every(&self.trees.conversations)
    }

    /// Every booking, in id order.
    pub fn every_booking(&self) -> impl Iterator<Item = Result<Booking, StoreError>> + '_ {
        Store::every(&self.trees.bookings)
    }

    /// Every signal, in id order.
    pub fn every_signal(&self) -> impl Iterator<Item = Result<Signal, StoreError>> + '_ {
        Store::every(&self.trees.signals)
    }

    /// Marks an analytics rebuild as under way (`true`) or finished, on disk
    /// before it returns: the mark is set before the rebuild clears anything
    /// and removed once it has folded everything, so a rebuild cut short
    /// leaves it (see [`Store::rebuild_unfinished`]).
    pub fn mark_rebuilding(&self, under_way: bool) -> Result<(), StoreError> {
        let meta = self.db.open_tree("meta")?;
        if under_way {
            meta.insert(REBUILDING, &[1])?;
        } else {
            meta.remove(REBUILDING)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// The fold format the analytics were kept by ([`AnalyticsTx::set_format`]);
    /// `None` when no fold or rebuild by a build that records it wrote them.
    pub fn analytics_format(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .trees
            .analytics
            .meta
            .get(FORMAT)?
            .map(|v| keys::read_u64(&v)))
    }

    /// Whether an analytics rebuild started and did not finish: the figures
    /// are partial, and the daemon refuses to start on them.
    pub fn rebuild_unfinished(&self) -> Result<bool, StoreError> {
        Ok(self.db.open_tree("meta")?.contains_key(REBUILDING)?)
    }

    /// Empties every analytics tree (for a rebuild, daemon stopped).
    pub fn clear_analytics(&self) -> Result<(), StoreError> {
        for tree in self.trees.analytics.all() {
            tree.clear()?;
        }
        Ok(())
    }

    /// The highest domain event seq ever assigned: every event up to it is in
    /// the stored history a rebuild reads.
    pub fn last_domain_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .trees
            .domain
            .get(super::quarantine::LAST_SEQ)?
            .map_or(0, |v| keys::read_u64(&v)))
    }
}
