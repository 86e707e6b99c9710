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
//!
//! Written only inside the writer's transactions, through [`AnalyticsTx`]
//! (the engine's `Change::Record`, and `parleyd analytics rebuild`), so an
//! event's analytics commit together with the engine's acknowledgement of it.

use sled::transaction::TransactionalTree;
use sled::Tree;

use super::automation::{AutomationTx, TxError};
use super::writes::Tx;
use super::{decode, encode, keys, Store, StoreError};
use crate::model::analytics::{ConversationMetrics, DailyAggregate};
use crate::model::{Booking, Conversation, Listing, Signal, User};

const FOLDED_SEQ: &[u8] = b"folded_seq";

/// The analytics trees (see the module doc).
#[derive(Clone)]
pub struct AnalyticsTrees {
    conversations: Tree,
    views: Tree,
    by_provider: Tree,
    daily: Tree,
    meta: Tree,
}

impl AnalyticsTrees {
    pub(super) fn open(db: &sled::Db) -> Result<AnalyticsTrees, StoreError> {
        Ok(AnalyticsTrees {
            conversations: db.open_tree("analytics_conversations")?,
            views: db.open_tree("analytics_views")?,
            by_provider: db.open_tree("analytics_by_provider")?,
            daily: db.open_tree("analytics_daily")?,
            meta: db.open_tree("analytics_meta")?,
        })
    }

    /// Every tree, in the order [`AnalyticsViews::over`] takes their views.
    pub(super) fn all(&self) -> [&Tree; 5] {
        [
            &self.conversations,
            &self.views,
            &self.by_provider,
            &self.daily,
            &self.meta,
        ]
    }
}

/// The analytics trees' views in one writer transaction.
pub struct AnalyticsViews<'a> {
    conversations: &'a TransactionalTree,
    views: &'a TransactionalTree,
    by_provider: &'a TransactionalTree,
    daily: &'a TransactionalTree,
    meta: &'a TransactionalTree,
}

impl<'a> AnalyticsViews<'a> {
    /// The views of [`AnalyticsTrees::all`], in its order.
    pub(super) fn over(views: &'a [TransactionalTree]) -> AnalyticsViews<'a> {
        let [conversations, views, by_provider, daily, meta] = views else {
            unreachable!("AnalyticsTrees::all lists every analytics tree");
        };
        AnalyticsViews {
            conversations,
            views,
            by_provider,
            daily,
            meta,
        }
    }
}

fn get<T: serde::de::DeserializeOwned>(
    tree: &TransactionalTree,
    key: &[u8],
) -> Result<Option<T>, TxError> {
    Ok(tree.get(key)?.map(|v| decode(&v)).transpose()?)
}

/// Typed reads and writes of the analytics records in one writer
/// transaction ([`AutomationTx::analytics`]).
pub struct AnalyticsTx<'a, 'b> {
    pub(super) tx: &'a Tx<'b>,
}

impl<'b> AutomationTx<'_, 'b> {
    /// The analytics records in this transaction.
    pub fn analytics(&self) -> AnalyticsTx<'_, 'b> {
        AnalyticsTx { tx: self.tx }
    }
}

impl AnalyticsTx<'_, '_> {
    fn views(&self) -> &AnalyticsViews<'_> {
        &self.tx.analytics
    }

    /// The highest domain event seq folded (0 before the first).
    pub fn folded_seq(&self) -> Result<u64, TxError> {
        Ok(self
            .views()
            .meta
            .get(FOLDED_SEQ)?
            .map_or(0, |v| keys::read_u64(&v)))
    }

    pub fn set_folded_seq(&self, seq: u64) -> Result<(), TxError> {
        self.views().meta.insert(FOLDED_SEQ, &seq.to_be_bytes())?;
        Ok(())
    }

    pub fn conversation(&self, id: &str) -> Result<Option<ConversationMetrics>, TxError> {
        get(self.views().conversations, id.as_bytes())
    }

    pub fn put_conversation(&self, metrics: &ConversationMetrics) -> Result<(), TxError> {
        self.views()
            .conversations
            .insert(metrics.conversation_id.as_bytes(), encode(metrics))?;
        Ok(())
    }

    /// When `customer_id` first viewed the listing, if they did.
    pub fn viewed(&self, listing_id: &str, customer_id: &str) -> Result<Option<String>, TxError> {
        let key = keys::pair(listing_id, customer_id);
        Ok(self
            .views()
            .views
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn put_viewed(&self, listing_id: &str, customer_id: &str, at: &str) -> Result<(), TxError> {
        let key = keys::pair(listing_id, customer_id);
        self.views().views.insert(key, at.as_bytes())?;
        Ok(())
    }

    /// The conversation between a customer and a listing's provider, if open.
    pub fn conversation_between(
        &self,
        listing_id: &str,
        customer_id: &str,
    ) -> Result<Option<String>, TxError> {
        Ok(self
            .tx
            .conv_pairs
            .get(keys::pair(listing_id, customer_id))?
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
        self.views().by_provider.insert(key, &[])?;
        Ok(())
    }

    /// The provider's figures for `day` (`YYYY-MM-DD`).
    pub fn daily(&self, provider_id: &str, day: &str) -> Result<Option<DailyAggregate>, TxError> {
        get(self.views().daily, &keys::pair(provider_id, day))
    }

    pub fn put_daily(
        &self,
        provider_id: &str,
        day: &str,
        aggregate: &DailyAggregate,
    ) -> Result<(), TxError> {
        self.views()
            .daily
            .insert(keys::pair(provider_id, day), encode(aggregate))?;
        Ok(())
    }

    pub fn user(&self, id: &str) -> Result<Option<User>, TxError> {
        get(self.tx.users, id.as_bytes())
    }

    pub fn listing(&self, id: &str) -> Result<Option<Listing>, TxError> {
        get(self.tx.listings, id.as_bytes())
    }
}

/// The `meta` key present while an analytics rebuild is under way.
const REBUILDING: &str = "analytics_rebuilding";

impl Store {
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
