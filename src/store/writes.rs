//! The transactional operations the writer applies. Each one reads and checks
//! everything first and writes last: an operation that fails must fail before its
//! first write, because the batch's transaction goes on without it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use sled::transaction::{TransactionalTree, UnabortableTransactionError};
use sled::Tree;

use super::analytics::AnalyticsViews;
use super::hot::HotWrites;
use super::writer::OpResult;
use super::{decode, encode, keys, Delivery, NewMessage, PriorSend, StoreError, Stored};
use crate::domain::{DomainEvent, Emitted, Subject};
use crate::feed::{Frame, UserEvent};
use crate::model::{
    Booking, ContextCard, Conversation, Flag, Listing, Message, MessageStatus, MessageType,
    ParticipantState, Phase, Signal, SYSTEM_SENDER,
};

/// The trees of one write transaction.
pub struct Tx<'a> {
    pub conversations: &'a TransactionalTree,
    pub conv_pairs: &'a TransactionalTree,
    pub user_convs: &'a TransactionalTree,
    pub messages: &'a TransactionalTree,
    pub client_ids: &'a TransactionalTree,
    pub events: &'a TransactionalTree,
    pub cursors: &'a Cursors,
    /// Conversations as this transaction sees them (`hot.rs`).
    pub hot: &'a HotWrites,
    pub bookings: &'a TransactionalTree,
    pub flags: &'a TransactionalTree,
    pub signals: &'a TransactionalTree,
    /// The automation engine's queue of domain events.
    pub domain: &'a TransactionalTree,
    pub domain_seq: &'a DomainSeq,
    pub instances: &'a TransactionalTree,
    pub timers: &'a TransactionalTree,
    pub subjects: &'a TransactionalTree,
    /// Notifications and their delivery queues (`outbox.rs`).
    pub outbox: &'a TransactionalTree,
    /// Read only (see `WriteTrees`).
    pub users: &'a TransactionalTree,
    pub listings: &'a TransactionalTree,
    /// Experiment assignments and tallies (`experiments.rs`).
    pub experiments: &'a TransactionalTree,
    /// The analytics trees (`analytics.rs`).
    pub analytics: AnalyticsViews<'a>,
}

impl<'a> Tx<'a> {
    /// The transaction over `views`, the views of `WriteTrees::all` in its
    /// order.
    pub fn over(
        views: &'a [TransactionalTree],
        cursors: &'a Cursors,
        hot: &'a HotWrites,
        domain_seq: &'a DomainSeq,
    ) -> Tx<'a> {
        let [conversations, conv_pairs, user_convs, messages, client_ids, events, bookings, flags, signals, domain, instances, timers, subjects, outbox, users, listings, experiments, analytics @ ..] =
            views
        else {
            unreachable!("WriteTrees::all lists every tree of a Tx");
        };
        Tx {
            conversations,
            conv_pairs,
            user_convs,
            messages,
            client_ids,
            events,
            cursors,
            hot,
            bookings,
            flags,
            signals,
            domain,
            domain_seq,
            instances,
            timers,
            subjects,
            outbox,
            users,
            listings,
            experiments,
            analytics: AnalyticsViews::over(analytics),
        }
    }
}

/// Each user's last cursor. Only the writer appends to event logs, so it keeps
/// them all in memory, read once from the logs at start-up (sled deadlocks if a
/// transaction reads its trees outside the transaction). `pending` holds what the
/// transaction being built has taken: a retried transaction starts it afresh,
/// and only a commit merges it into `committed`.
pub struct Cursors {
    committed: HashMap<String, u64>,
    pending: RefCell<HashMap<String, u64>>,
}

impl Cursors {
    /// Reads every user's last cursor: one seek to each user's first and last
    /// event.
    pub fn load(events: &Tree) -> Result<Cursors, StoreError> {
        let mut committed = HashMap::new();
        let mut from = Vec::new();
        while let Some(entry) = events.range(from.as_slice()..).next() {
            let (key, _) = entry?;
            let user = keys::user_of_event(&key);
            let last = match events
                .scan_prefix(keys::event_prefix_bytes(user))
                .next_back()
            {
                Some(entry) => keys::cursor_of_event(&entry?.0),
                None => 0,
            };
            committed.insert(String::from_utf8_lossy(user).into_owned(), last);
            from = keys::after_user(user);
        }
        Ok(Cursors {
            committed,
            pending: RefCell::default(),
        })
    }

    /// Takes the user's next cursor for the transaction being built.
    fn next(&self, user_id: &str) -> u64 {
        let mut pending = self.pending.borrow_mut();
        let last = pending
            .get(user_id)
            .or_else(|| self.committed.get(user_id))
            .copied()
            .unwrap_or(0);
        pending.insert(user_id.to_owned(), last + 1);
        last + 1
    }

    /// A transaction is (re)starting: forget what a failed attempt took.
    pub fn begin(&self) {
        self.pending.borrow_mut().clear();
    }

    /// The transaction committed: what it took is now in the logs.
    pub fn commit(&mut self) {
        let pending = std::mem::take(self.pending.get_mut());
        self.committed.extend(pending);
    }
}

/// The last domain event number, kept by the writer like [`Cursors`]. The engine
/// removes the events it has processed, but failed attempts and dead letters
/// name events by number, so numbers are never reused: the last one given is
/// kept in `domain` ([`super::quarantine::LAST_SEQ`]) and numbering goes on
/// from it after a restart, even with an empty queue.
pub struct DomainSeq {
    committed: u64,
    pending: Cell<Option<u64>>,
}

impl DomainSeq {
    pub fn load(domain: &Tree) -> DomainSeq {
        // The queue only: the dead-letter list lives behind it (`quarantine.rs`).
        let queued = match domain.range(..super::quarantine::QUEUE_END).next_back() {
            Some(Ok((key, _))) => keys::domain_seq(&key),
            _ => 0,
        };
        let given = match domain.get(super::quarantine::LAST_SEQ) {
            Ok(Some(value)) => keys::read_u64(&value),
            _ => 0,
        };
        let committed = queued.max(given);
        DomainSeq {
            committed,
            pending: Cell::new(None),
        }
    }

    fn next(&self) -> u64 {
        let next = self.pending.get().unwrap_or(self.committed) + 1;
        self.pending.set(Some(next));
        next
    }

    pub fn begin(&self) {
        self.pending.set(None);
    }

    pub fn commit(&mut self) {
        if let Some(last) = self.pending.take() {
            self.committed = last;
        }
    }
}

/// Queues a domain event for the automation engine, in this transaction.
pub fn emit(tx: &Tx<'_>, mut event: DomainEvent) -> Result<(), UnabortableTransactionError> {
    event.seq = tx.domain_seq.next();
    tx.domain.insert(&keys::domain(event.seq), encode(&event))?;
    tx.domain
        .insert(&super::quarantine::LAST_SEQ, &event.seq.to_be_bytes())?;
    Ok(())
}

/// Unwraps an operation's own result, or returns its failure (sled errors pass
/// through `?` as usual).
macro_rules! check {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        }
    };
}

fn get<T: DeserializeOwned>(tree: &TransactionalTree, key: &[u8]) -> OpResult<Option<T>> {
    Ok(tree.get(key)?.map(|bytes| decode(&bytes)).transpose())
}

/// A conversation as this transaction sees it: from the writer's memory when it
/// is there, else from sled (remembered from then on, once this commits).
fn read_conversation(tx: &Tx<'_>, id: &str) -> OpResult<Option<Conversation>> {
    if let Some(conversation) = tx.hot.get(id) {
        return Ok(Ok(Some(conversation)));
    }
    let read = check!(get::<Conversation>(tx.conversations, id.as_bytes())?);
    if let Some(conversation) = &read {
        tx.hot.touch(conversation);
    }
    Ok(Ok(read))
}

/// The only way a conversation record is written, so the writer's memory of it
/// never differs from sled.
fn put_conversation(
    tx: &Tx<'_>,
    conversation: &Conversation,
) -> Result<(), UnabortableTransactionError> {
    tx.conversations
        .insert(conversation.id.as_bytes(), encode(conversation))?;
    tx.hot.touch(conversation);
    Ok(())
}

/// Appends `event` to the user's log with the user's next cursor: log order is
/// commit order.
pub(super) fn log_event(
    tx: &Tx<'_>,
    user_id: &str,
    event: &UserEvent,
    out: &mut Vec<Delivery>,
) -> Result<(), UnabortableTransactionError> {
    let cursor = tx.cursors.next(user_id);
    let frame = Frame::logged(cursor, event);
    let key = keys::event(user_id, cursor);
    match event {
        UserEvent::Message { message } => tx.events.insert(
            key,
            keys::message_ref(&message.conversation_id, message.seq),
        )?,
        _ => tx.events.insert(key, frame.json.as_bytes())?,
    };
    out.push(Delivery {
        user_id: user_id.to_owned(),
        frame: Arc::new(frame),
    });
    Ok(())
}

pub fn open_conversation(
    tx: &Tx<'_>,
    listing: &Listing,
    customer_id: &str,
    now: &str,
    new_id: &str,
    out: &mut Vec<Delivery>,
) -> OpResult<(Conversation, bool)> {
    let pair = keys::pair(&listing.id, customer_id);
    if let Some(id) = tx.conv_pairs.get(&pair)? {
        let id = String::from_utf8_lossy(&id);
        let existing = check!(read_conversation(tx, &id)?);
        return Ok(existing
            .map(|c| (c, false))
            .ok_or_else(|| StoreError::Corrupt("conversation index points at nothing".into())));
    }
    let participant = |user_id: &str| ParticipantState {
        user_id: user_id.to_owned(),
        last_read_seq: 0,
        unread_count: 0,
        delivered_seq: 0,
    };
    let card = listing.card();
    let conversation = Conversation {
        id: new_id.to_owned(),
        listing_id: listing.id.clone(),
        customer_id: customer_id.to_owned(),
        provider_id: listing.provider_id.clone(),
        phase: Phase::PreBooking,
        stage: None,
        booking_id: None,
        last_seq: 0,
        last_message: None,
        participants: vec![participant(customer_id), participant(&listing.provider_id)],
        listing_snapshot: card.clone(),
        created_at: now.to_owned(),
        updated_at: now.to_owned(),
        inquiry_at: None,
    };
    put_conversation(tx, &conversation)?;
    tx.conv_pairs.insert(pair.as_slice(), new_id.as_bytes())?;
    for p in &conversation.participants {
        tx.user_convs
            .insert(keys::user_conv(&p.user_id, new_id), &[])?;
        let event = UserEvent::Conversation {
            conversation: Box::new(conversation.view_for(&p.user_id, Some(card.clone()))),
        };
        log_event(tx, &p.user_id, &event, out)?;
    }
    emit(
        tx,
        DomainEvent {
            seq: 0,
            name: Emitted::ConversationOpened.to_string(),
            aliases: Vec::new(),
            at: now.to_owned(),
            redriven_at: None,
            subject: Subject {
                user_id: Some(customer_id.to_owned()),
                ..conversation.subject()
            },
            data: serde_json::Value::Null,
        },
    )?;
    Ok(Ok((conversation, true)))
}

/// What a sender's earlier send stored under a client id, if anything.
fn prior_send(tx: &Tx<'_>, client_key: &[u8]) -> OpResult<Option<PriorSend>> {
    let Some(value) = tx.client_ids.get(client_key)? else {
        return Ok(Ok(None));
    };
    let (fingerprint, target) = keys::parse_client_entry(&value);
    let stored = match keys::blocked_flag(target) {
        Some(flag_id) => check!(get(tx.flags, flag_id)?).map(Stored::Blocked),
        None => check!(get(tx.messages, target)?).map(Stored::Message),
    };
    Ok(stored
        .map(|stored| {
            Some(PriorSend {
                stored,
                fingerprint,
            })
        })
        .ok_or_else(|| StoreError::Corrupt("client_id index points at nothing".into())))
}

pub fn append_message(
    tx: &Tx<'_>,
    new: &NewMessage,
    message_id: &str,
    out: &mut Vec<Delivery>,
) -> OpResult<(Stored, bool)> {
    let client_key = keys::client(&new.sender_id, &new.client_id);
    if let Some(prior) = check!(prior_send(tx, &client_key)?) {
        let replayed = prior.replay(
            &new.client_id,
            &new.conversation_id,
            new.fingerprint.as_ref(),
        );
        return Ok(replayed.map(|stored| (stored, false)));
    }
    let conversation = check!(read_conversation(tx, &new.conversation_id)?);
    let may_send = |c: &Conversation| {
        c.is_participant(&new.sender_id)
            || (new.automation.is_some() && new.sender_id == SYSTEM_SENDER)
    };
    let Some(mut conversation) = conversation.filter(may_send) else {
        return Ok(Err(StoreError::NotFound("conversation")));
    };
    let blocked = new.moderation.as_ref().is_some_and(|m| m.note.blocks());
    if blocked {
        // Checked before the first write: a block must leave its record.
        let Some(flag) = new.moderation.as_ref().and_then(|m| m.flag.clone()) else {
            return Ok(Err(StoreError::Corrupt(
                "a blocked message needs a moderation record".into(),
            )));
        };
        record_moderation(tx, new, None, out)?;
        let entry = keys::client_entry(&keys::blocked(&flag.id), new.fingerprint.as_ref());
        tx.client_ids.insert(client_key.as_slice(), entry)?;
        emit(
            tx,
            DomainEvent {
                seq: 0,
                name: Emitted::MessageBlocked.to_string(),
                aliases: Vec::new(),
                at: new.created_at.clone(),
                redriven_at: None,
                subject: Subject {
                    user_id: Some(new.sender_id.clone()),
                    ..conversation.subject()
                },
                data: serde_json::json!({
                    "flag_id": flag.id,
                    "moderation": new.moderation.as_ref().map(|m| &m.note),
                }),
            },
        )?;
        return Ok(Ok((Stored::Blocked(flag), true)));
    }
    let seq = conversation.last_seq + 1;
    record_moderation(tx, new, Some(seq), out)?;
    let message = Message {
        id: message_id.to_owned(),
        seq,
        conversation_id: new.conversation_id.clone(),
        sender_id: new.sender_id.clone(),
        client_id: new.client_id.clone(),
        content: new.content.clone(),
        kind: new.kind,
        status: MessageStatus::Sent,
        created_at: new.created_at.clone(),
        read_at: None,
        moderation: new.moderation.as_ref().map(|m| m.note.clone()),
        automation: new.automation.clone(),
        actions: new.actions.clone(),
        attachments: new.attachments.clone(),
        quick_reply_id: new.quick_reply_id.clone(),
    };
    let message_key = keys::message(&new.conversation_id, seq);
    tx.messages
        .insert(message_key.as_slice(), encode(&message))?;
    let entry = keys::client_entry(&message_key, new.fingerprint.as_ref());
    tx.client_ids.insert(client_key.as_slice(), entry)?;
    conversation.last_seq = seq;
    conversation.last_message = Some(message.summary());
    conversation.updated_at = new.created_at.clone();
    for p in &mut conversation.participants {
        if message.is_for(&p.user_id) {
            p.unread_count += 1;
        }
    }
    let names = message_event_names(&mut conversation, &message);
    put_conversation(tx, &conversation)?;
    tx.hot.appended(&message);
    let event = UserEvent::Message {
        message: Box::new(message.clone()),
    };
    for p in &conversation.participants {
        log_event(tx, &p.user_id, &event, out)?;
    }
    let (name, aliases) = names;
    emit(
        tx,
        DomainEvent {
            seq: 0,
            name,
            aliases,
            at: message.created_at.clone(),
            redriven_at: None,
            subject: Subject {
                user_id: Some(message.sender_id.clone()),
                ..conversation.subject()
            },
            data: message.event_data(),
        },
    )?;
    Ok(Ok((Stored::Message(message), true)))
}

/// The domain event names of a new message: `message_sent` with who replied, or
/// `inquiry_received` for the customer's first message before booking (recorded
/// in `conversation`); `automated_message_sent` for automation's own.
fn message_event_names(
    conversation: &mut Conversation,
    message: &Message,
) -> (String, Vec<String>) {
    if message.kind != MessageType::Text {
        return (Emitted::AutomatedMessageSent.to_string(), Vec::new());
    }
    let alias = if message.sender_id == conversation.provider_id {
        Emitted::ProviderReplied
    } else if conversation.inquiry_at.is_none() && conversation.phase == Phase::PreBooking {
        conversation.inquiry_at = Some(message.created_at.clone());
        Emitted::InquiryReceived
    } else {
        Emitted::CustomerReplied
    };
    (Emitted::MessageSent.to_string(), vec![alias.to_string()])
}

/// Stores what moderation decided about a new message: the operators' record
/// (pointing at `seq`, the stored message, absent when blocked) and the sender's
/// `moderation` event.
fn record_moderation(
    tx: &Tx<'_>,
    new: &NewMessage,
    seq: Option<u64>,
    out: &mut Vec<Delivery>,
) -> Result<(), UnabortableTransactionError> {
    let Some(moderated) = &new.moderation else {
        return Ok(());
    };
    if let Some(flag) = &moderated.flag {
        let flag = Flag {
            message_seq: seq,
            ..flag.clone()
        };
        tx.flags.insert(flag.id.as_bytes(), encode(&flag))?;
    }
    if let Some(notice) = &moderated.notice {
        let event = UserEvent::Moderation {
            conversation_id: new.conversation_id.clone(),
            client_id: new.client_id.clone(),
            message_seq: seq,
            action: moderated.note.action,
            types: moderated.note.types.clone(),
            notice: notice.clone(),
        };
        log_event(tx, &new.sender_id, &event, out)?;
    }
    Ok(())
}

/// Marks the messages up to `seq` that are for `reader_id` (see
/// [`Message::is_for`]) read. The receipt goes to the reader's own devices
/// and to the people whose messages were read; messages for someone else (an
/// automated note to the other side, the reader's own) stay as they are.
/// Returns the reader's `(last_read_seq, unread_count)` afterwards.
pub fn mark_read(
    tx: &Tx<'_>,
    conversation_id: &str,
    reader_id: &str,
    seq: u64,
    now: &str,
    out: &mut Vec<Delivery>,
) -> OpResult<(u64, u64)> {
    let conversation = check!(read_conversation(tx, conversation_id)?);
    let Some(mut conversation) = conversation.filter(|c| c.is_participant(reader_id)) else {
        return Ok(Err(StoreError::NotFound("conversation")));
    };
    let last_seq = conversation.last_seq;
    let Some(reader) = conversation.participant(reader_id) else {
        return Ok(Err(StoreError::NotFound("conversation")));
    };
    let (read_before, unread_before) = (reader.last_read_seq, reader.unread_count);
    let target = seq.min(last_seq);
    if target <= read_before {
        return Ok(Ok((read_before, unread_before)));
    }
    let newly_read = check!(messages_for(
        tx,
        conversation_id,
        reader_id,
        read_before + 1..=target
    )?);
    let unread = match unread_before.checked_sub(newly_read.len() as u64) {
        Some(unread) => unread,
        None => {
            // The count and the messages disagree: a bug in whatever wrote the
            // count. Say so loudly, and repair it from the messages themselves.
            let later = check!(messages_for(
                tx,
                conversation_id,
                reader_id,
                target + 1..=last_seq
            )?);
            tracing::error!(
                conversation_id,
                reader_id,
                unread_before,
                newly_read = newly_read.len(),
                recounted = later.len(),
                "unread count was lower than the unread messages; recounted"
            );
            metrics::counter!("parleyd_unread_count_repairs_total").increment(1);
            later.len() as u64
        }
    };

    // Checks done: write.
    let Some(reader) = conversation.participant_mut(reader_id) else {
        return Ok(Err(StoreError::NotFound("conversation")));
    };
    reader.last_read_seq = target;
    reader.delivered_seq = reader.delivered_seq.max(target);
    reader.unread_count = unread;
    let state = (target, unread);
    let mut told = vec![reader_id.to_owned()];
    let count = newly_read.len();
    for (key, mut message) in newly_read {
        if conversation.is_participant(&message.sender_id) && !told.contains(&message.sender_id) {
            told.push(message.sender_id.clone());
        }
        message.status = MessageStatus::Read;
        message.read_at = Some(now.to_owned());
        tx.messages.insert(key.as_slice(), encode(&message))?;
    }
    put_conversation(tx, &conversation)?;
    let event = UserEvent::Receipt {
        conversation_id: conversation_id.to_owned(),
        reader_id: reader_id.to_owned(),
        seq: target,
        read_at: now.to_owned(),
        unread_count: unread,
    };
    for user_id in &told {
        log_event(tx, user_id, &event, out)?;
    }
    if count > 0 {
        emit(
            tx,
            DomainEvent {
                seq: 0,
                name: Emitted::MessageRead.to_string(),
                aliases: Vec::new(),
                at: now.to_owned(),
                redriven_at: None,
                subject: Subject {
                    user_id: Some(reader_id.to_owned()),
                    ..conversation.subject()
                },
                data: serde_json::json!({"seq": target, "count": count}),
            },
        )?;
    }
    Ok(Ok(state))
}

/// The messages in `seqs` that are for `user_id`, with their keys.
fn messages_for(
    tx: &Tx<'_>,
    conversation_id: &str,
    user_id: &str,
    seqs: std::ops::RangeInclusive<u64>,
) -> OpResult<Vec<(Vec<u8>, Message)>> {
    let mut found = Vec::new();
    for s in seqs {
        let key = keys::message(conversation_id, s);
        let Some(message) = check!(get::<Message>(tx.messages, &key)?) else {
            return Ok(Err(StoreError::Corrupt(format!(
                "message {s} of {conversation_id} is missing"
            ))));
        };
        if message.is_for(user_id) {
            found.push((key, message));
        }
    }
    Ok(Ok(found))
}

/// Records that `recipient_id` received the conversation up to `seq` and tells
/// the others. Returns the recipient's delivered `seq` afterwards.
pub fn mark_delivered(
    tx: &Tx<'_>,
    conversation_id: &str,
    recipient_id: &str,
    seq: u64,
    now: &str,
    out: &mut Vec<Delivery>,
) -> OpResult<u64> {
    let conversation = check!(read_conversation(tx, conversation_id)?);
    let Some(mut conversation) = conversation else {
        return Ok(Err(StoreError::NotFound("conversation")));
    };
    let last_seq = conversation.last_seq;
    let Some(recipient) = conversation.participant_mut(recipient_id) else {
        return Ok(Err(StoreError::NotFound("conversation")));
    };
    let target = seq.min(last_seq);
    if target <= recipient.delivered_seq {
        return Ok(Ok(recipient.delivered_seq));
    }
    recipient.delivered_seq = target;
    put_conversation(tx, &conversation)?;
    let event = UserEvent::DeliveryReceipt {
        conversation_id: conversation_id.to_owned(),
        recipient_id: recipient_id.to_owned(),
        seq: target,
        delivered_at: now.to_owned(),
        status: "delivered",
    };
    for p in &conversation.participants {
        if p.user_id != recipient_id {
            log_event(tx, &p.user_id, &event, out)?;
        }
    }
    Ok(Ok(target))
}

/// Stores a new booking as [`put_booking`] does, unless its id is taken: a
/// booking with the same details is returned as it is (`false`: nothing
/// written, no event), so that concurrent and retried creations are one;
/// other details are [`StoreError::BookingExists`].
pub fn create_booking(
    tx: &Tx<'_>,
    booking: &Booking,
    card: &ContextCard,
    out: &mut Vec<Delivery>,
) -> OpResult<(Booking, bool)> {
    if let Some(existing) = check!(get::<Booking>(tx.bookings, booking.id.as_bytes())?) {
        if existing.same_details(booking) {
            return Ok(Ok((existing, false)));
        }
        return Ok(Err(StoreError::BookingExists(booking.id.clone())));
    }
    check!(put_booking(tx, booking, card, out)?);
    Ok(Ok((booking.clone(), true)))
}

pub fn put_booking(
    tx: &Tx<'_>,
    booking: &Booking,
    card: &ContextCard,
    out: &mut Vec<Delivery>,
) -> OpResult<Conversation> {
    let conversation = check!(read_conversation(tx, &booking.conversation_id)?);
    let Some(mut conversation) = conversation else {
        return Ok(Err(StoreError::NotFound("conversation")));
    };
    let previous = check!(get::<Booking>(tx.bookings, booking.id.as_bytes())?);
    tx.bookings.insert(booking.id.as_bytes(), encode(booking))?;
    conversation.phase = Phase::PostBooking;
    conversation.stage = Some(booking.stage);
    conversation.booking_id = Some(booking.id.clone());
    conversation.updated_at = booking.updated_at.clone();
    put_conversation(tx, &conversation)?;
    for p in &conversation.participants {
        let event = UserEvent::Conversation {
            conversation: Box::new(conversation.view_for(&p.user_id, Some(card.clone()))),
        };
        log_event(tx, &p.user_id, &event, out)?;
    }
    emit(tx, booking_event(booking, previous.as_ref()))?;
    Ok(Ok(conversation))
}

/// `booking_created` or `booking_updated`, with aliases saying what changed:
/// `booking_rescheduled` for a new period, `booking_{stage}` for a (new) stage.
pub fn booking_event(booking: &Booking, previous: Option<&Booking>) -> DomainEvent {
    let stage = Emitted::BookingStage(booking.stage);
    let (name, mut aliases) = match previous {
        None => (Emitted::BookingCreated, vec![stage.to_string()]),
        Some(before) => {
            let mut aliases = Vec::new();
            if before.start != booking.start || before.end != booking.end {
                aliases.push(Emitted::BookingRescheduled.to_string());
            }
            if before.stage != booking.stage {
                aliases.push(stage.to_string());
            }
            (Emitted::BookingUpdated, aliases)
        }
    };
    aliases.dedup();
    DomainEvent {
        seq: 0,
        name: name.to_string(),
        aliases,
        at: booking.updated_at.clone(),
        redriven_at: None,
        subject: booking.subject(),
        data: serde_json::json!({
            "start": booking.start,
            "end": booking.end,
            "stage": booking.stage,
            "previous": previous.map(|b| serde_json::json!({
                "start": b.start, "end": b.end, "stage": b.stage,
            })),
        }),
    }
}

/// Stores a marketplace signal and queues it for the engine, unless a signal
/// with its id is stored already; returns the stored one.
pub fn put_signal(tx: &Tx<'_>, signal: &Signal, subject: &Subject) -> OpResult<Signal> {
    if let Some(stored) = check!(get::<Signal>(tx.signals, signal.id.as_bytes())?) {
        return Ok(Ok(stored));
    }
    tx.signals.insert(signal.id.as_bytes(), encode(signal))?;
    emit(
        tx,
        DomainEvent {
            seq: 0,
            name: signal.kind.clone(),
            aliases: Vec::new(),
            at: signal.received_at.clone(),
            redriven_at: None,
            subject: subject.clone(),
            data: signal.data.clone(),
        },
    )?;
    Ok(Ok(signal.clone()))
}
