//! `parleyd analytics rebuild`: the analytics recomputed from the stored
//! history, with the live path's own fold ([`super::fold`]). The daemon is
//! stopped; the store is opened on its data directory.
//!
//! The history gives back the domain events the live path folded: each
//! conversation's opening, its messages (in `seq` order), each read message
//! (at its `read_at`, by its recipient), its bookings (created at
//! `created_at`, completed at `completed_at`) and its signals; and every
//! `listing_viewed` signal; each message moderation blocked (from its flag)
//! and each other signal without a conversation (an `unsubscribed`), for
//! the experiments' guardrails. They are folded in time order (ties: opening,
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
    store.mark_rebuilding(true)?;
    store.clear_analytics()?;
    crate::faults::crash_point("rebuild::after_clear", std::iter::empty());
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
                    serde_json::json!({ "flag_id": flag.id, "moderation": flag.moderation() }),
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
            None => personal.push(signal),
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
    let mut loose = Vec::with_capacity(personal.len());
    for signal in &personal {
        let listing = match &signal.listing_id {
            Some(id) => store.listing(id)?,
            None => None,
        };
        loose.push((
            0,
            signal_event(signal, signal.subject(None, listing.as_ref())),
        ));
    }
    sort(&mut loose);
    pending.extend(loose.into_iter().map(|(_, e)| e));
    rebuilt.events += fold(store, pending).await?;
    store
        .transact("rebuild", move |tx| {
            let analytics = tx.analytics();
            analytics.set_folded_seq(last_seq)?;
            analytics.set_format(super::FORMAT)
        })
        .await?;
    store.mark_rebuilding(false)?;
    Ok(rebuilt)
}

/// Why the stored analytics cannot be served as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// Kept by fold format `found`, not [`super::FORMAT`].
    Format { found: u64 },
    /// No format recorded, yet `events` domain events were given out: kept
    /// by a build from before formats were recorded, or by none.
    Unrecorded { events: u64 },
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stale::Format { found } => write!(
                f,
                "the analytics were kept by fold format {found}, this build folds format {}",
                super::FORMAT
            ),
            Stale::Unrecorded { events } => write!(
                f,
                "{events} domain events were given out, and the analytics record no fold \
                 format: kept by a build older than fold formats, or by none"
            ),
        }
    }
}

/// Whether the stored analytics were kept by another fold format than this
/// build's ([`super::FORMAT`]). A data directory without events has nothing
/// to rebuild: the fold's first write records the format.
pub fn staleness(store: &Store) -> Result<Option<Stale>, StoreError> {
    Ok(match store.analytics_format()? {
        Some(found) if found == super::FORMAT => None,
        Some(found) => Some(Stale::Format { found }),
        None => match store.last_domain_seq()? {
            0 => None,
            events => Some(Stale::Unrecorded { events }),
        },
    })
}

/// Rebuilds the analytics ([`rebuild`], unfinished-rebuild mark included)
/// when they were kept by another fold format ([`staleness`]), logging why,
/// what was folded and how long it took; `None` when they are current.
pub async fn bring_up_to_date(store: &Store) -> Result<Option<(Stale, Rebuilt)>, StoreError> {
    let Some(stale) = staleness(store)? else {
        return Ok(None);
    };
    tracing::warn!(reason = %stale, format = super::FORMAT,
        "rebuilding the analytics from the stored history before serving");
    let started = std::time::Instant::now();
    let rebuilt = rebuild(store).await?;
    tracing::info!(
        conversations = rebuilt.conversations,
        events = rebuilt.events,
        elapsed_ms = started.elapsed().as_millis() as u64,
        format = super::FORMAT,
        "analytics rebuilt"
    );
    Ok(Some((stale, rebuilt)))
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
    events.sort_by_cached_key(|(rank, e)| (e.at.parse::<jiff::Timestamp>().ok(), *rank));
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
        // A booking stored before `completed_at` was recorded, and completed
        // (or reviewed) since, was completed by its last update at the latest.
        let completed_at = booking.completed_at.clone().or_else(|| {
            matches!(booking.stage, Stage::Completed | Stage::Review)
                .then(|| booking.updated_at.clone())
        });
        let created = Booking {
            stage: match completed_at == Some(booking.created_at.clone()) {
                true => Stage::Completed,
                false => Stage::Confirmed,
            },
            updated_at: booking.created_at.clone(),
            ..booking.clone()
        };
        events.push((bookings_rank, booking_event(&created, None)));
        if let Some(completed_at) = completed_at
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::analytics::metrics::QUOTE;
    use crate::model::{Listing, Signal};
    use crate::store::NewMessage;

    fn at(day: u32, hour: u32) -> String {
        format!("2030-07-{day:02}T{hour:02}:00:00.000Z")
    }

    async fn say(store: &Store, conversation: &str, who: &str, text: &str, when: String) {
        let new = NewMessage {
            conversation_id: conversation.into(),
            sender_id: who.into(),
            client_id: format!("{who}-{when}"),
            content: text.into(),
            kind: MessageType::Text,
            created_at: when,
            moderation: None,
            automation: None,
            actions: Vec::new(),
            attachments: Vec::new(),
            quick_reply_id: (who == "prov").then(|| "qr-1".to_owned()),
            fingerprint: None,
        };
        store.append_message(new).await.unwrap();
    }

    async fn signal(store: &Store, kind: &str, conversation: Option<&str>, when: String) {
        let signal = Signal {
            id: uuid::Uuid::now_v7().to_string(),
            kind: kind.into(),
            user_id: Some("cust".into()),
            listing_id: Some("l1".into()),
            conversation_id: conversation.map(str::to_owned),
            data: serde_json::json!({}),
            received_at: when,
        };
        let conversation = match conversation {
            Some(id) => store.conversation(id).unwrap(),
            None => None,
        };
        let subject = signal.subject(conversation.as_ref(), Some(&Listing::test_listing()));
        store.put_signal(signal, subject).await.unwrap();
    }

    /// Everything the live path keeps: the conversation's record, the
    /// provider's days and index, the platform's days and steps.
    fn kept(store: &Store, conversation: &str) -> impl PartialEq + std::fmt::Debug {
        (
            store.conversation_metrics(conversation).unwrap(),
            store
                .provider_days("prov", "2000-01-01", "2100-01-01")
                .unwrap(),
            store.provider_conversations("prov", 0, i64::MAX).unwrap(),
            store.platform_days("2000-01-01", "2100-01-01").unwrap(),
            store.step_days("2000-01-01", "2100-01-01").unwrap(),
        )
    }

    /// A booking stored before `completed_at` was recorded, completed since:
    /// the rebuild completes it at its last update, so a directory upgraded
    /// and rebuilt keeps its completions.
    #[tokio::test]
    async fn a_booking_completed_before_completion_times_were_kept_completes_at_its_last_update() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::StorageConfig {
            cache_capacity_mb: 16,
            ..Default::default()
        };
        let store = Store::open(dir.path(), &config, Arc::new(|_| {})).unwrap();
        let listing = Listing::test_listing();
        store.put_listing(&listing).unwrap();
        let (c, _) = store
            .open_conversation(&listing, "cust", &at(1, 2))
            .await
            .unwrap();
        let legacy = |stage| Booking {
            id: "b1".into(),
            conversation_id: c.id.clone(),
            listing_id: listing.id.clone(),
            customer_id: "cust".into(),
            provider_id: listing.provider_id.clone(),
            start: at(9, 10),
            end: at(9, 12),
            stage,
            created_at: at(3, 10),
            updated_at: at(9, 13),
            completed_at: None,
        };
        let completions = |booking: Booking| -> Vec<String> {
            history(&c, &[], &[booking], &[])
                .into_iter()
                .map(|(_, e)| e)
                .filter(|e| e.is("booking_completed"))
                .map(|e| e.at)
                .collect()
        };
        assert_eq!(completions(legacy(Stage::Completed)), [at(9, 13)]);
        assert_eq!(completions(legacy(Stage::Review)), [at(9, 13)]);
        assert!(completions(legacy(Stage::Active)).is_empty());
        assert!(completions(legacy(Stage::Cancelled)).is_empty());
    }

    /// Folds every queued domain event as the live path does.
    async fn record_queued(store: &Store) {
        let events = store.domain_events(1000).unwrap();
        store
            .transact("test", move |tx| {
                let analytics = tx.analytics();
                events
                    .iter()
                    .try_for_each(|e| crate::analytics::record(&analytics, e))
            })
            .await
            .unwrap();
    }

    /// The live path (each queued event through `analytics::record`) and a
    /// rebuild from the stored history keep the same records, daily
    /// aggregates and index included.
    #[tokio::test]
    async fn a_rebuild_keeps_what_the_live_path_kept() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::StorageConfig {
            cache_capacity_mb: 16,
            ..Default::default()
        };
        let store = Store::open(dir.path(), &config, Arc::new(|_| {})).unwrap();
        let listing = Listing {
            timezone: Some("America/New_York".into()),
            ..Listing::test_listing()
        };
        store.put_listing(&listing).unwrap();
        signal(&store, LISTING_VIEWED, None, at(1, 1)).await;
        let (c, _) = store
            .open_conversation(&listing, "cust", &at(1, 2))
            .await
            .unwrap();
        say(&store, &c.id, "cust", "Hi, free Friday?", at(1, 3)).await;
        say(&store, &c.id, "cust", "Two of us", at(1, 4)).await;
        say(&store, &c.id, "prov", "Yes, $80 each", at(2, 5)).await;
        store.mark_read(&c.id, "cust", 3, &at(2, 6)).await.unwrap();
        say(&store, &c.id, "cust", "Booking!", at(3, 7)).await;
        store.mark_read(&c.id, "prov", 4, &at(3, 8)).await.unwrap();
        signal(&store, QUOTE, Some(&c.id), at(3, 9)).await;
        let booking = Booking {
            id: "b1".into(),
            conversation_id: c.id.clone(),
            listing_id: "l1".into(),
            customer_id: "cust".into(),
            provider_id: "prov".into(),
            start: at(9, 10),
            end: at(9, 12),
            stage: Stage::Confirmed,
            created_at: at(3, 10),
            updated_at: at(3, 10),
            completed_at: None,
        };
        let card = listing.card();
        store.create_booking(&booking, &card).await.unwrap();
        let done = Booking {
            stage: Stage::Completed,
            updated_at: at(9, 13),
            completed_at: Some(at(9, 13)),
            ..booking
        };
        store.put_booking(&done, &card).await.unwrap();
        signal(&store, LISTING_VIEWED, None, at(10, 1)).await;

        record_queued(&store).await;
        let live = kept(&store, &c.id);
        let m = store.conversation_metrics(&c.id).unwrap().unwrap();
        assert_eq!(m.zone, "America/New_York");
        assert_eq!(m.response_secs, [26 * 3600]);
        assert_eq!((m.to_customer.read, m.to_provider.read), (1, 3));
        assert_eq!(m.viewed_at.as_deref(), Some(at(1, 1).as_str()));
        assert_eq!(m.completed_at.as_deref(), Some(at(9, 13).as_str()));

        // The provider's index: by inquiry time, `[from, to)`.
        let inquiry: jiff::Timestamp = at(1, 3).parse().unwrap();
        let ms = inquiry.as_millisecond();
        let range = |from, to| store.provider_conversations("prov", from, to).unwrap();
        assert_eq!(range(ms, ms + 1), std::slice::from_ref(&c.id));
        assert!(range(ms + 1, i64::MAX).is_empty());
        assert!(range(0, ms).is_empty());
        assert!(store
            .provider_conversations("other", 0, i64::MAX)
            .unwrap()
            .is_empty());
        // New York's days: the inquiry at 03:00 UTC on 1 July is on 30 June
        // there, the second message at 04:00 UTC on 1 July.
        let days = store
            .provider_days("prov", "2030-06-30", "2030-07-01")
            .unwrap();
        let figures: Vec<(&str, u64, u64)> = days
            .iter()
            .map(|(day, d)| (day.as_str(), d.inquiries, d.messages.customer))
            .collect();
        assert_eq!(figures, [("2030-06-30", 1, 1), ("2030-07-01", 0, 1)]);

        let rebuilt = rebuild(&store).await.unwrap();
        assert_eq!(rebuilt.conversations, 1);
        assert!(!store.rebuild_unfinished().unwrap(), "a finished rebuild");
        assert_eq!(kept(&store, &c.id), live);
        // Folded already: the queued events do not count again.
        record_queued(&store).await;
        assert_eq!(kept(&store, &c.id), live);
    }
}
