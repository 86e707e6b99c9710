//! Conversations: opening, listing, reading their messages, read and
//! delivery receipts, typing.

use std::sync::Arc;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::feed::Frame;
use crate::model::{page_limit, validate_id, ConversationView, Message};

use super::App;

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReadReply {
    pub conversation_id: String,
    pub last_read_seq: u64,
    pub unread_count: u64,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeliveredReply {
    pub conversation_id: String,
    pub delivered_seq: u64,
}

impl App {
    /// Opens the customer's conversation about a listing (or returns it).
    pub async fn open_conversation(
        &self,
        caller: Caller,
        listing_id: &str,
    ) -> Result<(ConversationView, bool), ApiError> {
        let caller = caller.require(&[Role::Customer])?;
        validate_id("listing_id", listing_id)?;
        let listing = self
            .store
            .listing(listing_id)?
            .ok_or_else(|| ApiError::not_found("listing"))?;
        if listing.provider_id == caller.user_id {
            return Err(ApiError::Unprocessable(
                "a provider cannot open a conversation about their own listing".into(),
            ));
        }
        let (conversation, created) = self
            .store
            .open_conversation(&listing, &caller.user_id, &self.now())
            .await?;
        Ok((self.view(&caller, &conversation)?, created))
    }

    pub fn list_conversations(&self, caller: Caller) -> Result<Vec<ConversationView>, ApiError> {
        let caller = caller.require_person()?;
        self.store
            .conversations_of(&caller.user_id)?
            .iter()
            .map(|c| self.view(&caller, c))
            .collect()
    }

    pub fn get_conversation(&self, caller: Caller, id: &str) -> Result<ConversationView, ApiError> {
        let caller = caller.require_person()?;
        let conversation = self.conversation_of(&caller, id)?;
        self.view(&caller, &conversation)
    }

    pub fn messages(
        &self,
        caller: Caller,
        id: &str,
        after: u64,
        limit: Option<usize>,
    ) -> Result<Vec<Message>, ApiError> {
        let caller = caller.require_person()?;
        let limit = page_limit(limit, 100)?;
        self.conversation_of(&caller, id)?;
        Ok(self.store.messages(id, after, limit)?)
    }

    pub async fn read(
        &self,
        caller: Caller,
        conversation_id: &str,
        seq: u64,
    ) -> Result<ReadReply, ApiError> {
        let caller = caller.require_person()?;
        let (last_read_seq, unread_count) = self
            .store
            .mark_read(conversation_id, &caller.user_id, seq, &self.now())
            .await?;
        Ok(ReadReply {
            conversation_id: conversation_id.to_owned(),
            last_read_seq,
            unread_count,
        })
    }

    /// The caller's device received the conversation up to `seq`.
    pub async fn delivered(
        &self,
        caller: Caller,
        conversation_id: &str,
        seq: u64,
    ) -> Result<DeliveredReply, ApiError> {
        let caller = caller.require_person()?;
        let delivered_seq = self
            .store
            .mark_delivered(conversation_id, &caller.user_id, seq, &self.now())
            .await?;
        Ok(DeliveredReply {
            conversation_id: conversation_id.to_owned(),
            delivered_seq,
        })
    }

    /// Tells the other participants' live connections that `caller` is typing
    /// (coalesced per connection: see [`crate::hub::TypingSlots`]).
    pub fn typing(&self, caller: Caller, conversation_id: &str) -> Result<(), ApiError> {
        let caller = caller.require_person()?;
        let conversation = self.conversation_of(&caller, conversation_id)?;
        let frame = Arc::new(Frame::typing(conversation_id, &caller.user_id));
        for p in &conversation.participants {
            if p.user_id != caller.user_id {
                self.hub
                    .publish_typing(&p.user_id, conversation_id, &caller.user_id, &frame);
            }
        }
        Ok(())
    }
}
