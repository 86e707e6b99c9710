//! `parleyd analytics rebuild`: the analytics recomputed from the stored
//! history, with the live path's own fold ([`super::fold`]). The daemon is
//! stopped; the store is opened on its data directory.
//!
//! The history gives back the domain events the live path folded: each
//! conversation's opening, its messages (in `seq` order), each read message
//! (at its `read_at`, by its recipient), its bookings (created at
//! `created_at`, completed at `completed_at`) and its signals; and every
//! `listing_viewed` signal; each message moderation blocked (from its flag)
//! and each signal about a person only (an `unsubscribed` without a
//! conversation), for the experiments' guardrails. They are folded in time order (ties: opening,
//! messages, reads, bookings, signals; messages by `seq`), views first, as
//! a view only records a time that the conversation takes in when its
//! record is made. Afterwards the watermark is the last domain seq ever
//! given out: every event up to it is in the history just folded, so the
//! engine does not fold a queued one again.
//!
//! Experiments keep who was exposed to which variant (the history does not
//! hold it); their conversions and guardrail counts are forgotten and folded
//! again ([`super::experiments::reset_outcomes`]).

use std::collections::HashMap;

use crate::domain::{DomainEvent, Emitted, Stage, Subject};
use crate::model::{Booking, Conversation, Message, MessageType, Signal};
use crate::store::{booking_event, Store, StoreError};

use super::metrics::LISTING_VIEWED;

/// Events folded per writer transaction.
const CHUNK: usize = 4096;

/// What a rebuild folded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub conversations: usize,
    pub events: usize,
}

/// Clears the analytics trees and folds the stored history again (see the
/// module doc).
pub async fn rebuild(store: &Store) -> Result<Rebuilt, StoreError> {
    let last_seq = store.last_domain_seq()?;
    store.clear_analytics()?;
    super::experiments::reset_outcomes(store)?;
    let mut blocked: HashMap<String, Vec<DomainEvent>> = HashMap::new();
    for flag in store.every_flag() {
        let flag = flag?;
        // A flag without a delivered message is a block.
        if flag.message_seq.is_none() {
            blocked
                .entry(flag.conversation_id.clone())
                .or_default()
                .push(event(
                    Emitted::MessageBlocked.to_string(),
                    &flag.created_at,
                    Subject {
                        user_id: Some(flag.sender_id.clone()),
                        ..Subject::default()
                    },
                    serde_json::json!({ "flag_id": flag.id }),
                ));
        }
    }
    let mut bookings: HashMap<String, Vec<Booking>> = HashMap::new();
    for booking in store.every_booking() {
        let booking = booking?;
        bookings
            .entry(booking.conversation_id.clone())
            .or_default()
            .push(booking);
    }
    let mut signals: HashMap<String, Vec<Signal>> = HashMap::new();
    let mut views = Vec::new();
    let mut personal = Vec::new();
    for signal in store.every_signal() {
        let signal = signal?;
        match &signal.conversation_id {
            _ if signal.kind == LISTING_VIEWED => views.push(signal),
            Some(id) => signals.entry(id.clone()).or_default().push(signal),
            None if signal.listing_id.is_none() => personal.push(signal),
            None => {}
        }
    }
    let mut rebuilt = Rebuilt::default();
    let mut pending = Vec::new();
    let mut viewed = Vec::new();
    for signal in views {
        let conversation = match &signal.conversation_id {
            Some(id) => store.conversation(id)?,
            None => None,
        };
        let listing = match (&conversation, &signal.listing_id) {
            (None, Some(id)) => store.listing(id)?,
            _ => None,
        };
        let subject = signal.subject(conversation.as_ref(), listing.as_ref());
        viewed.push((0, signal_event(&signal, subject)));
    }
    sort(&mut viewed);
    pending.extend(viewed.into_iter().map(|(_, e)| e));
    for conversation in store.every_conversation() {
        let conversation = conversation?;
        let messages = store.messages(&conversation.id, 0, usize::MAX)?;
        let mut events = history(
            &conversation,
            &messages,
            bookings
                .get(&conversation.id)
                .map_or(&[][..], Vec::as_slice),
            signals.get(&conversation.id).map_or(&[][..], Vec::as_slice),
        );
        let ranked_last = u64::MAX;
        for mut block in blocked.remove(&conversation.id).unwrap_or_default() {
            block.subject = Subject {
                user_id: block.subject.user_id.take(),
                ..conversation.subject()
            };
            events.push((ranked_last, block));
        }
        sort(&mut events);
        pending.extend(events.into_iter().map(|(_, e)| e));
        rebuilt.conversations += 1;
        if pending.len() >= CHUNK {
            rebuilt.events += fold(store, std::mem::take(&mut pending)).await?;
        }
    }
    let mut loose: Vec<(u64, DomainEvent)> = personal
        .iter()
        .map(|s| (0, signal_event(s, s.subject(None, None))))
        .collect();
    sort(&mut loose);
    pending.extend(loose.into_iter().map(|(_, e)| e));
    rebuilt.events += fold(store, pending).await?;
    store
        .transact("rebuild", move |tx| tx.analytics().set_folded_seq(last_seq))
        .await?;
    Ok(rebuilt)
}

/// Folds `events` in one writer transaction.
async fn fold(store: &Store, events: Vec<DomainEvent>) -> Result<usize, StoreError> {
    let count = events.len();
    store
        .transact("rebuild", move |tx| {
            let analytics = tx.analytics();
            events.iter().try_for_each(|e| super::fold(&analytics, e))
        })
        .await?;
    Ok(count)
}

/// Sorts events by time, then by their rank (see [`history`]).
fn sort(events: &mut [(u64, DomainEvent)]) {
    events.sort_by_key(|(rank, e)| (e.at.parse::<jiff::Timestamp>().ok(), *rank));
}

fn event(name: String, at: &str, subject: Subject, data: serde_json::Value) -> DomainEvent {
    DomainEvent {
        seq: 0,
        name,
        aliases: Vec::new(),
        at: at.to_owned(),
        redriven_at: None,
        subject,
        data,
    }
}

fn signal_event(signal: &Signal, subject: Subject) -> DomainEvent {
    event(
        signal.kind.clone(),
        &signal.received_at,
        subject,
        signal.data.clone(),
    )
}

/// The domain events of one conversation's stored history, each with its
/// rank among events at the same time: opening, messages by `seq`, reads,
/// bookings, signals.
pub fn history(
    conversation: &Conversation,
    messages: &[Message],
    bookings: &[Booking],
    signals: &[Signal],
) -> Vec<(u64, DomainEvent)> {
    const MESSAGES: u64 = 1;
    let reads = MESSAGES + messages.len() as u64;
    let (bookings_rank, signals_rank) = (reads + 1, reads + 2);
    let about = |user: &str| Subject {
        user_id: Some(user.to_owned()),
        ..conversation.subject()
    };
    let mut events = vec![(
        0,
        event(
            Emitted::ConversationOpened.to_string(),
            &conversation.created_at,
            about(&conversation.customer_id),
            serde_json::Value::Null,
        ),
    )];
    for message in messages {
        let name = match message.kind {
            MessageType::Text => Emitted::MessageSent,
            MessageType::Nudge | MessageType::Automated => Emitted::AutomatedMessageSent,
        };
        events.push((
            MESSAGES + message.seq,
            event(
                name.to_string(),
                &message.created_at,
                about(&message.sender_id),
                message.event_data(),
            ),
        ));
        let reader = conversation
            .participants
            .iter()
            .map(|p| p.user_id.as_str())
            .find(|p| message.is_for(p));
        if let (Some(read_at), Some(reader)) = (&message.read_at, reader) {
            events.push((
                reads,
                event(
                    Emitted::MessageRead.to_string(),
                    read_at,
                    about(reader),
                    serde_json::json!({"seq": message.seq, "count": 1}),
                ),
            ));
        }
    }
    for booking in bookings {
        let created = Booking {
            stage: match booking.completed_at == Some(booking.created_at.clone()) {
                true => Stage::Completed,
                false => Stage::Confirmed,
            },
            updated_at: booking.created_at.clone(),
            ..booking.clone()
        };
        events.push((bookings_rank, booking_event(&created, None)));
        if let Some(completed_at) = booking
            .completed_at
            .as_ref()
            .filter(|_| created.stage != Stage::Completed)
        {
            let completed = Booking {
                stage: Stage::Completed,
                updated_at: completed_at.clone(),
                ..booking.clone()
            };
            events.push((bookings_rank, booking_event(&completed, Some(&created))));
        }
    }
    for signal in signals.iter().filter(|s| s.kind != LISTING_VIEWED) {
        events.push((
            signals_rank,
            signal_event(signal, signal.subject(Some(conversation), None)),
        ));
    }
    events
}
