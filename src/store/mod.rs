//! The only module that knows sled's layout. Every write that changes what people
//! see (a message, a read, a booking) is one multi-tree transaction that also
//! appends the resulting events to each participant's event log, so after a crash
//! either all of it is there or none of it.
//!
//! Trees and keys (`\0` separates ids, which cannot contain it; numbers are
//! big-endian so keys sort numerically):
//!
//! | tree            | key                       | value                       |
//! |-----------------|---------------------------|-----------------------------|
//! | `meta`          | `schema_version`          | u32                         |
//! | `users`         | user                      | `User` JSON                 |
//! | `listings`      | listing                   | `Listing` JSON              |
//! | `conversations` | conversation              | `Conversation` JSON         |
//! | `conv_pairs`    | listing `\0` customer     | conversation id             |
//! | `user_convs`    | user `\0` conversation    | empty                       |
//! | `messages`      | conversation `\0` seq     | `Message` JSON              |
//! | `client_ids`    | sender `\0` client_id     | `0xFE` + fingerprint + conversation `\0` seq |
//! | `events`        | user `\0` cursor          | event frame JSON, or `0x01` + message key |
//! | `bookings`      | booking                   | `Booking` JSON              |
//! | `signals`       | signal (uuid v7; v8 from an Idempotency-Key) | `Signal` JSON |
//! | `flags`         | flag (uuid v7, ordered)   | `Flag` JSON                 |
//! | `replies`       | caller `\0` Idempotency-Key | `Reply` JSON (the first answer) |
//!
//! and the automation engine's trees, described in `automation.rs`, the
//! notification outbox, described in `outbox.rs`, and the analytics records,
//! described in `analytics.rs`. Every write
//! that the engine should know about queues a domain event in the same
//! transaction.
//!
//! A user's cursor is the last key of their `events` prefix; the writer keeps the
//! ones it has seen in memory.
//!
//! A `client_ids` value is the message's key, or `0xFF` + flag id for a message
//! that moderation blocked (so a retry gets the same answer), behind the
//! fingerprint of the send that used it (see [`send_fingerprint`]): a retry
//! repeats the fingerprint, another message under the same client id does not.

mod analytics;
mod automation;
mod experiments;
mod hot;
mod keys;
mod outbox;
mod platform;
mod quarantine;
mod report;
mod writer;
mod writes;

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::Tree;

use crate::config::StorageConfig;
use crate::domain::Subject;
use crate::feed::{Frame, UserEvent};
use crate::model::{
    Attachment, Automation, Booking, ContextCard, Conversation, Flag, Listing, Message,
    MessageType, Moderation, Reply, Signal, SuggestedAction, User,
};

use hot::HotConversations;
use writer::{WriteTrees, Writer, WriterConfig};
use writes::Cursors;

pub use analytics::AnalyticsTx;
pub use automation::{AutomationTx, InstanceWrite, TxError, Written};
pub use outbox::{Due, OutboxTx};
pub use quarantine::{Attempted, Failure, Held};
pub use writer::Publish;
pub use writes::booking_event;

/// Bumped whenever the layout above changes incompatibly.
pub const SCHEMA_VERSION: u32 = 4;

/// The oldest layout this version still reads. Version 2 added message
/// references to `events` (version 1 logged only frames, which 2 still reads);
/// version 3 put fingerprints in front of `client_ids` values (earlier values,
/// without one, still read); version 4 keys the `subjects` index one entry per
/// (id, instance) instead of a JSON list per id: opening an older directory
/// rebuilds it from `instances`. Then the new version is recorded: from then on
/// an older parleyd refuses the directory instead of misreading it.
const READS_SCHEMA_FROM: u32 = 1;

/// The first version with one `subjects` key per (id, instance).
const SUBJECT_ENTRIES_FROM: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record is unreadable: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Schema(String),
    #[error("flush failed: {0}")]
    Flush(String),
    /// The write operation panicked (a defect): it changed nothing, and the
    /// other writes of its batch were applied without it.
    #[error("the write panicked: {0}")]
    Panicked(String),
    /// More writes wait for the writer than `storage.writer_queue` allows
    /// (on a refusing handle, see [`Store::for_requests`]); nothing was
    /// written, the same write may be tried again after `retry_after`.
    #[error(
        "the daemon is overloaded ({waiting} writes are waiting to be stored); try again shortly"
    )]
    Overloaded {
        waiting: usize,
        retry_after: std::time::Duration,
    },
    /// A booking with this id exists, with other details.
    #[error("booking {0} exists with other details; change it with PATCH /v1/bookings/{0}")]
    BookingExists(String),
    /// A sender used a client id again for another message.
    #[error(
        "client_id {client_id} already names another message, in conversation {conversation_id}"
    )]
    ClientIdConflict {
        client_id: String,
        conversation_id: String,
    },
}

/// A committed event that still has to reach the user's live connections.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub user_id: String,
    pub frame: Arc<Frame>,
}

/// What a new message is: who sends it, where, and with which client id.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conversation_id: String,
    pub sender_id: String,
    pub client_id: String,
    /// What the recipient sees (masked when moderation says so).
    pub content: String,
    pub kind: MessageType,
    pub created_at: String,
    pub moderation: Option<Moderated>,
    /// Set on automated messages only.
    pub automation: Option<Box<Automation>>,
    pub actions: Vec<SuggestedAction>,
    pub attachments: Vec<Attachment>,
    /// The quick reply a person used to write it.
    pub quick_reply_id: Option<String>,
    /// The sender's request ([`send_fingerprint`]), telling a retry from
    /// another message under the same client id. `None` for automation, whose
    /// client id names the step that sent it: a step that fires again after a
    /// crash renders anew and must get its first message back.
    pub fingerprint: Option<Fingerprint>,
}

/// What tells one send from another under the same client id.
pub type Fingerprint = [u8; keys::FINGERPRINT_LEN];

/// The fingerprint of a person's send: the first 16 bytes of SHA-256 over
/// `conversation_id`, a `\0` and the content as written (before moderation).
pub fn send_fingerprint(conversation_id: &str, content: &str) -> Fingerprint {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(conversation_id)
        .chain_update([0])
        .chain_update(content)
        .finalize();
    let mut fingerprint = [0; keys::FINGERPRINT_LEN];
    fingerprint.copy_from_slice(&digest[..keys::FINGERPRINT_LEN]);
    fingerprint
}

/// What contact moderation decided about a new message, to be stored with it.
#[derive(Debug, Clone)]
pub struct Moderated {
    pub note: Moderation,
    /// The record kept for operators (mask, block or review); its `message_seq`
    /// is filled in when the message is stored.
    pub flag: Option<Flag>,
    /// Told to the sender in a `moderation` event; `None` for a silent decision.
    pub notice: Option<String>,
}

/// What a sender already stored under a client id.
#[derive(Debug)]
pub enum Stored {
    Message(Message),
    Blocked(Flag),
}

impl Stored {
    fn conversation_id(&self) -> &str {
        match self {
            Stored::Message(m) => &m.conversation_id,
            Stored::Blocked(f) => &f.conversation_id,
        }
    }
}

/// What a client id already names, with the fingerprint of the send that
/// stored it (absent in directories from before schema 3).
struct PriorSend {
    stored: Stored,
    fingerprint: Option<Fingerprint>,
}

impl PriorSend {
    /// The first answer, when `(conversation_id, fingerprint)` repeats the send
    /// that stored it; a conflict naming the conversation that holds the client
    /// id otherwise. Without a recorded fingerprint only the conversation is
    /// compared.
    fn replay(
        self,
        client_id: &str,
        conversation_id: &str,
        fingerprint: Option<&Fingerprint>,
    ) -> Result<Stored, StoreError> {
        let same_content = match (&self.fingerprint, fingerprint) {
            (Some(stored), Some(new)) => stored == new,
            _ => true,
        };
        if self.stored.conversation_id() == conversation_id && same_content {
            return Ok(self.stored);
        }
        Err(StoreError::ClientIdConflict {
            client_id: client_id.to_owned(),
            conversation_id: self.stored.conversation_id().to_owned(),
        })
    }
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    users: Tree,
    listings: Tree,
    /// First answers to requests made with an `Idempotency-Key`.
    replies: Tree,
    /// The trees the writer's transactions cover (reads go to them directly).
    trees: WriteTrees,
    writer: Writer,
    /// Recently active conversations, kept by the writer.
    hot: Arc<HotConversations>,
    /// Woken after every committed write batch.
    committed: Arc<tokio::sync::Notify>,
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our records are plain data (strings, numbers, maps with string keys):
    // serialising them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl Store {
    /// Opens (or creates) the data directory. `publish` receives every committed
    /// event once it is durable, in commit order.
    pub fn open(dir: &Path, config: &StorageConfig, publish: Publish) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Schema(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(config.cache_capacity_mb * 1024 * 1024)
            .flush_every_ms(Some(config.flush_every_ms.max(1)))
            .open()?;
        let upgrading_from = check_schema(&db, dir)?;
        let tree = |name: &str| db.open_tree(name);
        let trees = WriteTrees {
            conversations: tree("conversations")?,
            conv_pairs: tree("conv_pairs")?,
            user_convs: tree("user_convs")?,
            messages: tree("messages")?,
            client_ids: tree("client_ids")?,
            events: tree("events")?,
            bookings: tree("bookings")?,
            flags: tree("flags")?,
            signals: tree("signals")?,
            domain: tree("domain")?,
            instances: tree("instances")?,
            timers: tree("timers")?,
            subjects: tree("subjects")?,
            outbox: tree("outbox")?,
            users: tree("users")?,
            listings: tree("listings")?,
            analytics: analytics::AnalyticsTrees::open(&db)?,
            experiments: tree("experiments")?,
        };
        if let Some(found) = upgrading_from {
            if found < SUBJECT_ENTRIES_FROM {
                let indexed = automation::rebuild_subject_index(&trees.instances, &trees.subjects)?;
                tracing::info!(instances = indexed, "subject index rebuilt");
            }
            let meta = db.open_tree("meta")?;
            meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
            db.flush()?;
            tracing::info!(from = found, to = SCHEMA_VERSION, "data directory upgraded");
        }
        let committed = Arc::new(tokio::sync::Notify::new());
        let hot = Arc::new(HotConversations::new(config.hot_conversations));
        let store = Store {
            users: tree("users")?,
            listings: tree("listings")?,
            replies: tree("replies")?,
            writer: Writer::start(
                db.clone(),
                trees.clone(),
                Cursors::load(&trees.events)?,
                Arc::clone(&hot),
                WriterConfig {
                    durability: config.durability,
                    bound: config.writer_queue,
                },
                publish,
                Arc::clone(&committed),
            ),
            hot,
            committed,
            trees,
            db,
        };
        Ok(store)
    }

    /// Waits until everything written before the call is on disk (under
    /// `group_commit`; committed under `periodic`): an empty operation in the
    /// writer's next batch.
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.writer.run("durable", |_, _| Ok(Ok(()))).await
    }

    /// The same store for request handlers (people and the marketplace's
    /// backend): its writes are refused with [`StoreError::Overloaded`] while
    /// `storage.writer_queue` writes wait for the writer, where the store
    /// [`Store::open`] gives (for the background components) waits its turn
    /// instead (see `store::writer`).
    pub fn for_requests(&self) -> Store {
        Store {
            writer: self.writer.refusing(),
            ..self.clone()
        }
    }

    /// The writer thread's health (the component `writer`).
    pub fn writer_health(&self) -> Arc<crate::supervisor::Component> {
        self.writer.health()
    }

    /// Write operations queued for the writer and not yet in a batch.
    pub fn write_queue_depth(&self) -> usize {
        self.writer.queue_depth()
    }

    /// See [`writer::Writer::generation`].
    pub fn write_generation(&self) -> u64 {
        self.writer.generation()
    }

    /// Flushes synchronously; used at shutdown.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, tree: &Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
        tree.get(key)?.map(|v| decode(&v)).transpose()
    }

    pub fn put_user(&self, user: &User) -> Result<(), StoreError> {
        self.users.insert(user.id.as_bytes(), encode(user))?;
        Ok(())
    }

    pub fn put_listing(&self, listing: &Listing) -> Result<(), StoreError> {
        self.listings
            .insert(listing.id.as_bytes(), encode(listing))?;
        Ok(())
    }

    /// The first answer given to a request under `key` (see `api::idempotency`).
    pub fn reply(&self, key: &[u8]) -> Result<Option<Reply>, StoreError> {
        self.get(&self.replies, key)
    }

    /// Remembers the answer to a request under `key`.
    pub fn keep_reply(&self, key: &[u8], reply: &Reply) -> Result<(), StoreError> {
        self.replies.insert(key, encode(reply))?;
        Ok(())
    }

    /// Forgets answers given before `before_ms` (Unix milliseconds); returns
    /// how many. An unreadable record is forgotten too: nothing can replay it.
    pub fn forget_replies(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut forgotten = 0;
        for entry in self.replies.iter() {
            let (key, value) = entry?;
            let expired = decode::<Reply>(&value).map_or(true, |r| r.at_ms < before_ms);
            if expired
                && self
                    .replies
                    .compare_and_swap(&key, Some(value), None::<&[u8]>)?
                    .is_ok()
            {
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    pub fn listing(&self, id: &str) -> Result<Option<Listing>, StoreError> {
        self.get(&self.listings, id.as_bytes())
    }

    /// The live context card of a conversation: the listing as it is now, or the
    /// snapshot taken when the conversation was opened if the listing is gone.
    pub fn card(&self, conversation: &Conversation) -> Result<ContextCard, StoreError> {
        Ok(match self.listing(&conversation.listing_id)? {
            Some(listing) => listing.card(),
            None => conversation.listing_snapshot.clone(),
        })
    }

    pub fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        if let Some(conversation) = self.hot.conversation(id) {
            return Ok(Some(Conversation::clone(&conversation)));
        }
        self.get(&self.trees.conversations, id.as_bytes())
    }

    /// Opens the conversation between `customer_id` and the listing's provider, or
    /// returns the one that exists. `created` tells which.
    pub async fn open_conversation(
        &self,
        listing: &Listing,
        customer_id: &str,
        now: &str,
    ) -> Result<(Conversation, bool), StoreError> {
        let (listing, customer_id, now) = (listing.clone(), customer_id.to_owned(), now.to_owned());
        let new_id = uuid::Uuid::now_v7().to_string();
        self.writer
            .run("open_conversation", move |tx, out| {
                writes::open_conversation(tx, &listing, &customer_id, &now, &new_id, out)
            })
            .await
    }

    /// Conversations `user_id` takes part in, most recently active first.
    pub fn conversations_of(&self, user_id: &str) -> Result<Vec<Conversation>, StoreError> {
        let prefix = keys::user_conv_prefix(user_id);
        let mut list = Vec::new();
        for entry in self.trees.user_convs.scan_prefix(&prefix) {
            let (key, _) = entry?;
            let id = &key[prefix.len()..];
            if let Some(c) = self.get::<Conversation>(&self.trees.conversations, id)? {
                list.push(c);
            }
        }
        list.sort_by(|a, b| b.updated_at.cmp(&a.updated_at));
        Ok(list)
    }

    /// Messages with `seq > after`, in order, at most `limit`.
    pub fn messages(
        &self,
        conversation_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let start = keys::message(conversation_id, after.saturating_add(1));
        let end = keys::message(conversation_id, u64::MAX);
        self.trees
            .messages
            .range(start..=end)
            .take(limit)
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    /// The first answer to a retried send: what `sender_id` stored under
    /// `client_id` before, if anything, or [`StoreError::ClientIdConflict`]
    /// when the client id names another message than `conversation_id` and
    /// `fingerprint` describe.
    pub fn replay_send(
        &self,
        sender_id: &str,
        client_id: &str,
        conversation_id: &str,
        fingerprint: &Fingerprint,
    ) -> Result<Option<Stored>, StoreError> {
        let Some(value) = self
            .trees
            .client_ids
            .get(keys::client(sender_id, client_id))?
        else {
            return Ok(None);
        };
        let (recorded, target) = keys::parse_client_entry(&value);
        let stored = match keys::blocked_flag(target) {
            Some(flag_id) => self.get(&self.trees.flags, flag_id)?.map(Stored::Blocked),
            None => self.get(&self.trees.messages, target)?.map(Stored::Message),
        };
        let Some(stored) = stored else {
            return Err(StoreError::Corrupt(
                "client_id index points at nothing".into(),
            ));
        };
        PriorSend {
            stored,
            fingerprint: recorded,
        }
        .replay(client_id, conversation_id, Some(fingerprint))
        .map(Some)
    }

    /// Stores a message with the next `seq` of its conversation, updates the
    /// conversation summary and unread counts, and logs a `message` event for every
    /// participant, all in one transaction; with it go the moderation record for
    /// operators and the sender's `moderation` event. A message moderation blocks
    /// stores only those two. A `client_id` the sender already used returns what
    /// was stored under it (`created` false) and writes nothing.
    pub async fn append_message(&self, new: NewMessage) -> Result<(Stored, bool), StoreError> {
        let message_id = uuid::Uuid::now_v7().to_string();
        self.writer
            .run("send", move |tx, out| {
                writes::append_message(tx, &new, &message_id, out)
            })
            .await
    }

    /// The sender's last `n` messages in a conversation, oldest first (for
    /// detecting contact details split across messages): from memory for an
    /// active conversation, else from among its last messages on disk.
    pub fn recent_from(
        &self,
        conversation_id: &str,
        sender_id: &str,
        n: usize,
    ) -> Result<Vec<String>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let remembered = self.hot.get(conversation_id);
        if let Some(recent) = remembered.and_then(|hot| hot.recent(sender_id, n)) {
            return Ok(recent);
        }
        // Enough to find n of the sender's messages in a lively conversation
        // without reading a long monologue of the other side.
        const SCAN: usize = 20;
        let start = keys::message(conversation_id, 0);
        let end = keys::message(conversation_id, u64::MAX);
        /// Only the fields needed, so the rest is skipped, not allocated.
        #[derive(serde::Deserialize)]
        struct Brief {
            seq: u64,
            sender_id: String,
            content: String,
        }
        let mut last_seq = 0;
        let mut scanned = Vec::new();
        for entry in self.trees.messages.range(start..=end).rev().take(SCAN) {
            let message: Brief = decode(&entry?.1)?;
            last_seq = last_seq.max(message.seq);
            scanned.push((message.sender_id, message.content));
        }
        scanned.reverse();
        self.hot.fill_recent(conversation_id, last_seq, &scanned);
        let mine: Vec<String> = scanned
            .into_iter()
            .filter(|(sender, _)| sender == sender_id)
            .map(|(_, content)| content)
            .collect();
        Ok(mine[mine.len().saturating_sub(n)..].to_vec())
    }

    /// A send's context if it is all in memory: the conversation and the
    /// sender's last `n` messages. `None` means it has to be read from disk.
    pub fn send_context(
        &self,
        conversation_id: &str,
        sender_id: &str,
        n: usize,
    ) -> Option<(Arc<Conversation>, Vec<String>)> {
        let hot = self.hot.get(conversation_id)?;
        let recent = match n {
            0 => Vec::new(),
            n => hot.recent(sender_id, n)?,
        };
        Some((Arc::clone(&hot.conversation), recent))
    }

    /// Moderation records in id (time) order after `after`, at most `limit`.
    pub fn flags(&self, after: Option<&str>, limit: usize) -> Result<Vec<Flag>, StoreError> {
        let iter = match after {
            Some(after) => self.trees.flags.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.trees.flags.iter(),
        };
        iter.take(limit).map(|entry| decode(&entry?.1)).collect()
    }

    /// Marks the other participants' messages up to `seq` read for `reader_id`,
    /// recomputes the reader's unread count and logs a `receipt` for everyone.
    /// Reading backwards (a `seq` at or below what was already read) changes
    /// nothing. Returns the reader's `(last_read_seq, unread_count)`.
    pub async fn mark_read(
        &self,
        conversation_id: &str,
        reader_id: &str,
        seq: u64,
        now: &str,
    ) -> Result<(u64, u64), StoreError> {
        let (conversation_id, reader_id, now) = (
            conversation_id.to_owned(),
            reader_id.to_owned(),
            now.to_owned(),
        );
        self.writer
            .run("read", move |tx, out| {
                writes::mark_read(tx, &conversation_id, &reader_id, seq, &now, out)
            })
            .await
    }

    /// Records that `recipient_id` received the conversation up to `seq`; the
    /// other participants get a delivery `receipt`. Returns the delivered `seq`.
    pub async fn mark_delivered(
        &self,
        conversation_id: &str,
        recipient_id: &str,
        seq: u64,
        now: &str,
    ) -> Result<u64, StoreError> {
        let (conversation_id, recipient_id, now) = (
            conversation_id.to_owned(),
            recipient_id.to_owned(),
            now.to_owned(),
        );
        self.writer
            .run("delivered", move |tx, out| {
                writes::mark_delivered(tx, &conversation_id, &recipient_id, seq, &now, out)
            })
            .await
    }

    pub fn booking(&self, id: &str) -> Result<Option<Booking>, StoreError> {
        self.get(&self.trees.bookings, id.as_bytes())
    }

    /// Stores a booking and moves its conversation to post-booking at the booking's
    /// stage, telling both participants with a `conversation` event.
    pub async fn put_booking(
        &self,
        booking: &Booking,
        card: &ContextCard,
    ) -> Result<Conversation, StoreError> {
        let (booking, card) = (booking.clone(), card.clone());
        self.writer
            .run("booking", move |tx, out| {
                writes::put_booking(tx, &booking, &card, out)
            })
            .await
    }

    /// Stores a new booking ([`writes::create_booking`]); returns the stored
    /// one and whether this call created it.
    pub async fn create_booking(
        &self,
        booking: &Booking,
        card: &ContextCard,
    ) -> Result<(Booking, bool), StoreError> {
        let (booking, card) = (booking.clone(), card.clone());
        self.writer
            .run("booking", move |tx, out| {
                writes::create_booking(tx, &booking, &card, out)
            })
            .await
    }

    /// Stores a signal and queues it for the engine as a domain event about
    /// `subject`; resolves once durable. A signal whose id is already stored
    /// is not stored or queued again: the stored one is returned.
    pub async fn put_signal(&self, signal: Signal, subject: Subject) -> Result<Signal, StoreError> {
        self.writer
            .run("signal", move |tx, _| {
                writes::put_signal(tx, &signal, &subject)
            })
            .await
    }

    /// The customer's conversation about a listing, if one is open.
    pub fn conversation_between(
        &self,
        listing_id: &str,
        customer_id: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        match self
            .trees
            .conv_pairs
            .get(keys::pair(listing_id, customer_id))?
        {
            Some(id) => self.get(&self.trees.conversations, &id),
            None => Ok(None),
        }
    }

    pub fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.get(&self.users, id.as_bytes())
    }

    /// Woken after every committed write batch: the engine waits on it for new
    /// domain events.
    pub fn committed(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.committed)
    }

    /// The user's last cursor (0 when nothing was ever logged for them).
    pub fn cursor(&self, user_id: &str) -> Result<u64, StoreError> {
        last_cursor(&self.trees.events, user_id)
    }

    /// The user's last cursor, once everything up to it is on disk: readers of the
    /// log never hand out an event a crash could still take back (and whose cursor
    /// would then be reused).
    pub async fn durable_cursor(&self, user_id: &str) -> Result<u64, StoreError> {
        let head = self.cursor(user_id)?;
        self.durable().await?;
        Ok(head)
    }

    /// Logged events with cursor in `(after, until]`, at most `limit`, in order.
    pub fn events_between(
        &self,
        user_id: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<Frame>, StoreError> {
        if after >= until {
            return Ok(Vec::new());
        }
        let start = keys::event(user_id, after + 1);
        let end = keys::event(user_id, until);
        let mut frames = Vec::new();
        for entry in self.trees.events.range(start..=end).take(limit) {
            let (key, value) = entry?;
            let cursor = keys::cursor_of_event(&key);
            let frame = match keys::referenced_message(&value) {
                Some(message_key) => {
                    let message: Message = self
                        .get(&self.trees.messages, message_key)?
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!(
                                "event {cursor} of {user_id} points at no message"
                            ))
                        })?;
                    Frame::logged(
                        cursor,
                        &UserEvent::Message {
                            message: Box::new(message),
                        },
                    )
                }
                None => Frame {
                    cursor: Some(cursor),
                    json: std::str::from_utf8(&value)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?
                        .into(),
                    ends_typing: None,
                },
            };
            frames.push(frame);
        }
        Ok(frames)
    }
}

/// The cursor of the user's newest event: the last key under their prefix.
fn last_cursor(events: &Tree, user_id: &str) -> Result<u64, StoreError> {
    Ok(
        match events.scan_prefix(keys::event_prefix(user_id)).next_back() {
            Some(entry) => keys::cursor_of_event(&entry?.0),
            None => 0,
        },
    )
}

/// Checks the directory's schema version; records it in a fresh directory.
/// `Some(version)` when the directory is older and must be upgraded (the
/// caller records the new version once it has).
fn check_schema(db: &sled::Db, dir: &Path) -> Result<Option<u32>, StoreError> {
    let meta = db.open_tree("meta")?;
    match meta.get("schema_version")? {
        Some(v) => {
            let found = v
                .as_ref()
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::Schema("schema_version is unreadable".into()))?;
            if (READS_SCHEMA_FROM..SCHEMA_VERSION).contains(&found) {
                return Ok(Some(found));
            } else if found != SCHEMA_VERSION {
                return Err(StoreError::Schema(format!(
                    "data directory {} has schema version {found}; this parleyd reads versions {READS_SCHEMA_FROM} to {SCHEMA_VERSION}. Use a parleyd that matches it, or another data_dir",
                    dir.display()
                )));
            }
        }
        None => {
            // A fresh directory gets the current version; one that already holds
            // data without a version was not written by parleyd and is not touched.
            let has_data = db
                .tree_names()
                .iter()
                .filter(|n| n.as_ref() != b"meta" && n.as_ref() != b"__sled__default")
                .any(|n| db.open_tree(n).map(|t| !t.is_empty()).unwrap_or(true));
            if has_data || !db.is_empty() {
                return Err(StoreError::Schema(format!(
                    "data directory {} holds data without a parleyd schema version; refusing to use it",
                    dir.display()
                )));
            }
            meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
            db.flush()?;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
