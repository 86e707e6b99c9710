//! Marketplace signals (`POST /v1/signals`) and what they are about.

use crate::auth::{Caller, Role};
use crate::domain::Subject;
use crate::error::ApiError;
use crate::model::{Signal, SignalInput};

use super::App;

impl App {
    pub async fn signal(&self, caller: Caller, input: SignalInput) -> Result<Signal, ApiError> {
        caller.require(&[Role::Service])?;
        input.validate()?;
        let signal = Signal {
            id: input.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            kind: input.kind,
            user_id: input.user_id,
            listing_id: input.listing_id,
            conversation_id: input.conversation_id,
            data: if input.data.is_null() {
                serde_json::json!({})
            } else {
                input.data
            },
            received_at: self.now(),
        };
        let subject = self.signal_subject(&signal)?;
        Ok(self.store.put_signal(signal, subject).await?)
    }

    /// What a signal is about, for the engine: the ids it names, and whether its
    /// user is the customer or the provider (the listing's owner).
    fn signal_subject(&self, signal: &Signal) -> Result<Subject, ApiError> {
        let conversation = match &signal.conversation_id {
            Some(id) => self.store.conversation(id)?,
            None => None,
        };
        let listing = match (&conversation, &signal.listing_id) {
            (None, Some(id)) => self.store.listing(id)?,
            _ => None,
        };
        Ok(signal.subject(conversation.as_ref(), listing.as_ref()))
    }
}
