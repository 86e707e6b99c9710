//! Bookings from the marketplace's backend: create, update, move the
//! conversation to post-booking.

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::model::{
    validate_id, validate_period, Booking, BookingInput, BookingPatch, Conversation, Stage,
};

use super::App;

impl App {
    pub async fn create_booking(
        &self,
        caller: Caller,
        input: BookingInput,
    ) -> Result<Booking, ApiError> {
        caller.require(&[Role::Service])?;
        let id = match input.id.clone() {
            Some(id) => {
                validate_id("id", &id)?;
                id
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        validate_period(&input.start, &input.end)?;
        let conversation = match (input.conversation_id, input.listing_id, input.customer_id) {
            (Some(cid), _, _) => {
                validate_id("conversation_id", &cid)?;
                self.store
                    .conversation(&cid)?
                    .ok_or_else(|| ApiError::not_found("conversation"))?
            }
            (None, Some(listing_id), Some(customer_id)) => {
                validate_id("listing_id", &listing_id)?;
                validate_id("customer_id", &customer_id)?;
                let listing = self
                    .store
                    .listing(&listing_id)?
                    .ok_or_else(|| ApiError::not_found("listing"))?;
                let (conversation, _) = self
                    .store
                    .open_conversation(&listing, &customer_id, &self.now())
                    .await?;
                conversation
            }
            _ => {
                return Err(ApiError::Unprocessable(
                    "give conversation_id, or listing_id and customer_id".into(),
                ))
            }
        };
        let now = self.now();
        let booking = Booking {
            id,
            conversation_id: conversation.id.clone(),
            listing_id: conversation.listing_id.clone(),
            customer_id: conversation.customer_id.clone(),
            provider_id: conversation.provider_id.clone(),
            start: input.start,
            end: input.end,
            stage: input.stage,
            completed_at: (input.stage == Stage::Completed).then(|| now.clone()),
            created_at: now.clone(),
            updated_at: now,
        };
        // The writer decides whether the id is new, so that concurrent
        // creations of one booking are one: the others get it back.
        let card = self.store.card(&conversation)?;
        let (booking, _) = self.store.create_booking(&booking, &card).await?;
        Ok(booking)
    }

    pub async fn update_booking(
        &self,
        caller: Caller,
        id: &str,
        patch: BookingPatch,
    ) -> Result<Booking, ApiError> {
        caller.require(&[Role::Service])?;
        validate_id("booking id", id)?;
        let stored = self
            .store
            .booking(id)?
            .ok_or_else(|| ApiError::not_found("booking"))?;
        let mut booking = stored.clone();
        if let Some(start) = patch.start {
            booking.start = start;
        }
        if let Some(end) = patch.end {
            booking.end = end;
        }
        if let Some(stage) = patch.stage {
            booking.stage = stage;
        }
        validate_period(&booking.start, &booking.end)?;
        if booking == stored {
            // Nothing changes (a retry of a patch that was applied): nothing
            // is written, and no booking_updated fires twice.
            return Ok(stored);
        }
        booking.updated_at = self.now();
        if booking.stage == Stage::Completed && booking.completed_at.is_none() {
            booking.completed_at = Some(booking.updated_at.clone());
        }
        let conversation = self
            .store
            .conversation(&booking.conversation_id)?
            .ok_or_else(|| ApiError::not_found("conversation"))?;
        self.save_booking(&booking, &conversation).await?;
        Ok(booking)
    }

    async fn save_booking(
        &self,
        booking: &Booking,
        conversation: &Conversation,
    ) -> Result<(), ApiError> {
        let card = self.store.card(conversation)?;
        self.store.put_booking(booking, &card).await?;
        Ok(())
    }
}
