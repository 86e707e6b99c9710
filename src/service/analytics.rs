//! Analytics reads: a conversation's metrics.

use crate::analytics::metrics::{self, ConversationMetricsView};
use crate::auth::{Caller, Role};
use crate::error::ApiError;

use super::App;

impl App {
    /// The conversation's metrics, for its participants (anyone else: 404)
    /// and operators. A conversation nothing was folded into yet has
    /// zeros.
    pub fn conversation_metrics(
        &self,
        caller: Caller,
        id: &str,
    ) -> Result<ConversationMetricsView, ApiError> {
        let caller = caller.require(&[Role::Customer, Role::Provider, Role::Operator])?;
        let conversation = match caller.role {
            Role::Operator => self
                .store
                .conversation(id)?
                .ok_or_else(|| ApiError::not_found("conversation"))?,
            _ => self.conversation_of(&caller, id)?,
        };
        let kept = self.store.conversation_metrics(id)?;
        Ok(metrics::view(
            &kept.unwrap_or_else(|| metrics::empty(&conversation)),
        ))
    }
}
