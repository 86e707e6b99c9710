//! The index the provider reports enumerate providers with: one
//! `analytics_meta` key per provider who ever received an inquiry,
//! `provider` `\0` id, holding the time zone of their first inquiry's
//! conversation. A report's percentile reads it (a prefix read of a tree
//! with one key per provider, not of the history) and then each provider's
//! days by range.

use super::automation::TxError;
use super::{keys, AnalyticsTx, Store, StoreError};

const PROVIDER: &str = "provider";

impl AnalyticsTx<'_, '_> {
    /// Lists `provider_id` among the providers with inquiries, in `zone`
    /// (the zone of the first one listed: later ones do not move it).
    pub fn index_provider(&self, provider_id: &str, zone: &str) -> Result<(), TxError> {
        let key = keys::pair(PROVIDER, provider_id);
        if self.views().meta.get(&key)?.is_some() {
            return Ok(());
        }
        self.put(self.views().meta, key, zone.as_bytes())
    }
}

impl Store {
    /// Every provider who ever received an inquiry, with the time zone of
    /// their first, in id order.
    pub fn report_providers(&self) -> Result<Vec<(String, String)>, StoreError> {
        let prefix = keys::pair(PROVIDER, "");
        self.trees
            .analytics
            .meta
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, zone) = entry?;
                Ok((
                    String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
                    String::from_utf8_lossy(&zone).into_owned(),
                ))
            })
            .collect()
    }

    /// The stored bytes of a conversation's metrics (a report decodes only
    /// the fields it needs: most of its cost).
    pub fn conversation_metrics_bytes(&self, id: &str) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.trees.analytics.conversations.get(id.as_bytes())?)
    }

    /// The zone `provider_id` is listed in, if they ever received an inquiry.
    pub fn report_provider_zone(&self, provider_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .trees
            .analytics
            .meta
            .get(keys::pair(PROVIDER, provider_id))?
            .map(|zone| String::from_utf8_lossy(&zone).into_owned()))
    }
}
