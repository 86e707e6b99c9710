//! Idempotent replies (`Idempotency-Key`): remembered first answers.

use crate::error::ApiError;
use crate::model::Reply;

use super::App;

impl App {
    /// The first answer given under an idempotency record key, unless it is
    /// older than `storage.idempotency_retention`.
    pub fn replay(&self, key: &[u8]) -> Result<Option<Reply>, ApiError> {
        let kept_since = self.replies_kept_since();
        Ok(self.store.reply(key)?.filter(|r| r.at_ms >= kept_since))
    }

    /// Remembers the first answer under an idempotency record key, now.
    pub fn remember(
        &self,
        key: &[u8],
        fingerprint: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> Result<(), ApiError> {
        let reply = Reply {
            fingerprint: fingerprint.to_owned(),
            status,
            body: body.clone(),
            at_ms: self.clock.now().as_millisecond(),
        };
        Ok(self.store.keep_reply(key, &reply)?)
    }

    /// Forgets idempotent answers past their retention; called periodically.
    pub fn forget_old_replies(&self) -> Result<usize, ApiError> {
        Ok(self.store.forget_replies(self.replies_kept_since())?)
    }

    fn replies_kept_since(&self) -> i64 {
        let now = self.clock.now();
        now.checked_sub(self.config.storage.idempotency_retention)
            .unwrap_or(now)
            .as_millisecond()
    }
}
