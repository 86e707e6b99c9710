use super::*;
use crate::config::StorageConfig;
use crate::model::{ContextCard, MessageStatus, MessageType};
use crate::store::{Attempted, Failure, Held};

fn config() -> StorageConfig {
    StorageConfig {
        cache_capacity_mb: 16,
        ..StorageConfig::default()
    }
}

fn listing() -> Listing {
    Listing {
        price: Some(40.0),
        currency: Some("EUR".into()),
        availability: vec!["2026-12-01".into()],
        updated_at: "2026-11-25T00:00:00.000Z".into(),
        ..Listing::test_listing()
    }
}

fn message(conversation_id: &str, sender: &str, client_id: &str) -> NewMessage {
    NewMessage {
        conversation_id: conversation_id.into(),
        sender_id: sender.into(),
        client_id: client_id.into(),
        content: "hello".into(),
        kind: MessageType::Text,
        created_at: "2026-11-25T00:00:00.000Z".into(),
        moderation: None,
        automation: None,
        actions: Vec::new(),
        attachments: Vec::new(),
        quick_reply_id: None,
        fingerprint: Some(crate::store::send_fingerprint(conversation_id, "hello")),
    }
}

fn stored(appended: &(Stored, bool)) -> &Message {
    match &appended.0 {
        Stored::Message(m) => m,
        Stored::Blocked(_) => panic!("expected a message"),
    }
}

fn store(dir: &Path) -> Store {
    reopen(dir).unwrap()
}

/// Opens the store in `dir`, waiting while a store or raw sled handle just
/// dropped still holds the directory's lock.
fn reopen(dir: &Path) -> Result<Store, StoreError> {
    while_locked(|| Store::open(dir, &config(), Arc::new(|_: &Delivery| {})))
}

/// Runs `open` until it stops failing on the directory's lock (sled's
/// background flusher may hold it a moment after a handle is dropped), at
/// most for 2 s.
fn while_locked<T, E: std::fmt::Display>(open: impl Fn() -> Result<T, E>) -> Result<T, E> {
    let mut result = open();
    for _ in 0..100 {
        match &result {
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                result = open();
            }
            _ => break,
        }
    }
    result
}

async fn open(dir: &Path) -> (Store, Conversation) {
    let store = store(dir);
    store.put_listing(&listing()).unwrap();
    let (conversation, _) = store
        .open_conversation(&listing(), "cust", "t0")
        .await
        .unwrap();
    (store, conversation)
}

/// Number of events in the user's log.
fn logged(store: &Store, user: &str) -> u64 {
    store.cursor(user).unwrap()
}

#[tokio::test]
async fn opening_twice_returns_the_same_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let (store, first) = open(dir.path()).await;
    let (again, created) = store
        .open_conversation(&listing(), "cust", "t1")
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again.id, first.id);
    assert_eq!(logged(&store, "cust"), 1, "no second conversation event");
    assert_eq!(store.conversations_of("prov").unwrap().len(), 1);
    assert!(store.conversations_of("pro").unwrap().is_empty());
}

#[tokio::test]
async fn a_client_id_stores_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = open(dir.path()).await;
    let first = store
        .append_message(message(&c.id, "cust", "x"))
        .await
        .unwrap();
    let second = store
        .append_message(message(&c.id, "cust", "x"))
        .await
        .unwrap();
    assert!(first.1 && !second.1);
    assert_eq!(stored(&first), stored(&second));
    assert_eq!(
        logged(&store, "prov"),
        2,
        "one conversation and one message event"
    );
    // Another sender may use the same client id.
    let other = store
        .append_message(message(&c.id, "prov", "x"))
        .await
        .unwrap();
    assert!(other.1);
    assert_eq!(stored(&other).seq, 2);
}

#[tokio::test]
async fn strangers_cannot_append() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = open(dir.path()).await;
    let err = store
        .append_message(message(&c.id, "eve", "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)));
    // Only automation speaks as the platform's sender: a message from
    // `system` that no automation sent is a stranger's too.
    let err = store
        .append_message(message(&c.id, crate::model::SYSTEM_SENDER, "z"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)));
    assert!(store.messages(&c.id, 0, 10).unwrap().is_empty());
    // The failed operation did not disturb the others in its batch.
    store
        .append_message(message(&c.id, "cust", "y"))
        .await
        .unwrap();
    assert_eq!(store.messages(&c.id, 0, 10).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_gap_free_seqs_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = open(dir.path()).await;
    let mut tasks = Vec::new();
    for sender in ["cust", "prov"] {
        for i in 0..100 {
            let (store, id) = (store.clone(), c.id.clone());
            tasks.push(tokio::spawn(async move {
                let client = format!("{sender}-{i}");
                store
                    .append_message(message(&id, sender, &client))
                    .await
                    .unwrap();
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let messages = store.messages(&c.id, 0, 500).unwrap();
    let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    let c = store.conversation(&c.id).unwrap().unwrap();
    assert_eq!(c.last_seq, 200);
    for p in &c.participants {
        assert_eq!(p.unread_count, 100, "{}", p.user_id);
    }
    // Each participant's log: the conversation event, then 200 message events.
    for user in ["cust", "prov"] {
        let frames = store.events_between(user, 0, u64::MAX, 1000).unwrap();
        let cursors: Vec<u64> = frames.iter().filter_map(|f| f.cursor).collect();
        assert_eq!(cursors, (1..=201).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn reading_counts_only_the_other_sides_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = open(dir.path()).await;
    for (sender, id) in [("cust", "a"), ("prov", "b"), ("cust", "c"), ("cust", "d")] {
        store
            .append_message(message(&c.id, sender, id))
            .await
            .unwrap();
    }
    let before = (logged(&store, "cust"), logged(&store, "prov"));
    let state = store.mark_read(&c.id, "prov", 3, "t2").await.unwrap();
    assert_eq!(state, (3, 1));
    assert_eq!(
        (logged(&store, "cust"), logged(&store, "prov")),
        (before.0 + 1, before.1 + 1),
        "a receipt for each participant"
    );
    let messages = store.messages(&c.id, 0, 10).unwrap();
    assert_eq!(messages[0].status, MessageStatus::Read);
    assert_eq!(messages[0].read_at.as_deref(), Some("t2"));
    assert_eq!(messages[1].status, MessageStatus::Sent, "own message");
    assert_eq!(messages[3].status, MessageStatus::Sent, "after seq 3");
    // Reading backwards changes nothing; reading past the end stops at the end.
    assert_eq!(
        store.mark_read(&c.id, "prov", 1, "t3").await.unwrap(),
        (3, 1)
    );
    assert_eq!(logged(&store, "prov"), before.1 + 1);
    assert_eq!(
        store.mark_read(&c.id, "prov", 99, "t4").await.unwrap(),
        (4, 0)
    );
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let (store, c) = open(dir.path()).await;
        store
            .append_message(message(&c.id, "cust", "a"))
            .await
            .unwrap();
        store.flush().unwrap();
        c.id
    };
    let store = store(dir.path());
    assert_eq!(store.messages(&id, 0, 10).unwrap().len(), 1);
    assert_eq!(logged(&store, "prov"), 2);
    let appended = store
        .append_message(message(&id, "prov", "b"))
        .await
        .unwrap();
    assert_eq!(stored(&appended).seq, 2);
    assert_eq!(logged(&store, "prov"), 3);
}

/// Opens a closed store's database directly.
fn open_raw(dir: &Path) -> sled::Db {
    while_locked(|| sled::open(dir)).unwrap()
}

/// Writes `version` as the data directory's schema version.
fn set_schema_version(dir: &Path, version: u32) {
    let db = open_raw(dir);
    let meta = db.open_tree("meta").unwrap();
    meta.insert("schema_version", &version.to_be_bytes())
        .unwrap();
    db.flush().unwrap();
}

#[tokio::test]
async fn another_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(store(dir.path()));
    set_schema_version(dir.path(), 99);
    let err = reopen(dir.path()).err().unwrap().to_string();
    assert!(err.contains("schema version 99"), "{err}");
}

/// Opens a directory written at schema `version` (its `client_ids` values
/// without fingerprints, as versions 1 and 2 wrote them) and checks that it
/// reads as it did and is marked current once opened. (Real directories
/// written by old releases: tests/upgrade.rs.)
async fn an_older_directory_is_read_and_marked_current(version: u32) {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = open(dir.path()).await;
    store
        .append_message(message(&c.id, "cust", "before"))
        .await
        .unwrap();
    let before = store.events_between("cust", 0, u64::MAX, 100).unwrap();
    drop(store);
    {
        let db = open_raw(dir.path());
        let client_ids = db.open_tree("client_ids").unwrap();
        let key = keys::client("cust", "before");
        let value = client_ids.get(&key).unwrap().unwrap();
        let (_, target) = keys::parse_client_entry(&value);
        client_ids.insert(&key, target).unwrap();
        db.flush().unwrap();
    }
    set_schema_version(dir.path(), version);

    let store = reopen(dir.path()).unwrap();
    let after = store.events_between("cust", 0, u64::MAX, 100).unwrap();
    let json = |frames: &[Frame]| {
        frames
            .iter()
            .map(|f| f.json.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(json(&after), json(&before));
    // A client id recorded without a fingerprint is still a retry in its own
    // conversation, and a conflict in another.
    let (retried, created) = store
        .append_message(message(&c.id, "cust", "before"))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(stored(&(retried, created)).seq, 1);
    let elsewhere = store
        .append_message(message("another", "cust", "before"))
        .await;
    assert!(
        matches!(elsewhere, Err(StoreError::ClientIdConflict { ref conversation_id, .. }) if *conversation_id == c.id),
        "{elsewhere:?}"
    );
    drop(store);
    let db = open_raw(dir.path());
    let version = db.open_tree("meta").unwrap().get("schema_version").unwrap();
    assert_eq!(version.as_deref(), Some(&SCHEMA_VERSION.to_be_bytes()[..]));
}

#[tokio::test]
async fn a_version_2_directory_is_read_and_marked_current() {
    an_older_directory_is_read_and_marked_current(2).await;
}

/// An instance `id` about conversation `conversation` of provider `prov`,
/// with one step pending at `due_ms`.
fn running(id: &str, conversation: &str, due_ms: i64) -> crate::domain::Instance {
    use crate::domain::Subject;
    let subject = Subject {
        conversation_id: Some(conversation.into()),
        listing_id: Some("l1".into()),
        customer_id: Some(format!("cust-{conversation}")),
        provider_id: Some("prov".into()),
        user_id: None,
        booking_id: None,
    };
    crate::domain::test_instance(id, subject, due_ms)
}

/// A directory of schema 3 kept its subject index as one JSON list per id;
/// opened now, the index is rebuilt as one entry per (id, instance) and an
/// event finds the instances of its own conversation only.
#[tokio::test]
async fn a_version_3_subject_index_is_rebuilt_on_open() {
    use crate::domain::DomainEvent;
    let dir = tempfile::tempdir().unwrap();
    drop(store(dir.path()));
    {
        let db = open_raw(dir.path());
        let (instances, subjects) = (
            db.open_tree("instances").unwrap(),
            db.open_tree("subjects").unwrap(),
        );
        for (id, conversation) in [("r/c:c1", "c1"), ("r/c:c2", "c2")] {
            instances
                .insert(id, encode(&running(id, conversation, 1_000)))
                .unwrap();
            subjects
                .insert(format!("c\0{conversation}"), encode(&[id]))
                .unwrap();
        }
        subjects
            .insert("u\0prov", encode(&["r/c:c1", "r/c:c2"]))
            .unwrap();
        subjects
            .insert("l\0l1", encode(&["r/c:c1", "r/c:c2"]))
            .unwrap();
        db.flush().unwrap();
    }
    set_schema_version(dir.path(), 3);

    let store = store(dir.path());
    let event = DomainEvent {
        subject: crate::domain::Subject {
            user_id: Some("prov".into()),
            ..running("x", "c1", 0).subject
        },
        ..running("x", "c1", 0).trigger
    };
    let found: Vec<String> = store
        .instances_about(&event)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(found, ["r/c:c1"]);
    // The provider's broad events still reach both.
    let provider_wide = DomainEvent {
        subject: crate::domain::Subject {
            user_id: Some("prov".into()),
            ..crate::domain::Subject::default()
        },
        ..event
    };
    assert_eq!(store.instances_about(&provider_wide).unwrap().len(), 2);
    assert!(
        store.trees.subjects.iter().all(|e| e.unwrap().1.is_empty()),
        "no JSON list is left"
    );
}

#[tokio::test]
async fn a_client_id_is_a_retry_only_with_the_same_conversation_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = open(dir.path()).await;
    store
        .append_message(message(&c.id, "cust", "x1"))
        .await
        .unwrap();
    let edited = NewMessage {
        content: "hello?".into(),
        fingerprint: Some(send_fingerprint(&c.id, "hello?")),
        ..message(&c.id, "cust", "x1")
    };
    assert!(matches!(
        store.append_message(edited).await,
        Err(StoreError::ClientIdConflict { .. })
    ));
    // Masked content is stored, but the fingerprint is of what was written:
    // a retry of a masked message is still a retry.
    let masked = NewMessage {
        content: "[contact hidden]".into(),
        ..message(&c.id, "cust", "x1")
    };
    let (_, created) = store.append_message(masked).await.unwrap();
    assert!(!created);
    assert_eq!(store.messages(&c.id, 0, 10).unwrap().len(), 1);
}

#[tokio::test]
async fn foreign_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert("something", "else").unwrap();
        db.flush().unwrap();
    }
    let err = reopen(dir.path()).err().unwrap().to_string();
    assert!(err.contains("without a parleyd schema version"), "{err}");
}

#[tokio::test]
async fn bookings_move_the_conversation_after_booking() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = open(dir.path()).await;
    let booking = Booking {
        id: "b1".into(),
        conversation_id: c.id.clone(),
        listing_id: c.listing_id.clone(),
        customer_id: "cust".into(),
        provider_id: "prov".into(),
        start: "2026-12-01T10:00:00Z".into(),
        end: "2026-12-01T12:00:00Z".into(),
        stage: crate::model::Stage::Confirmed,
        created_at: "t".into(),
        updated_at: "t".into(),
        completed_at: None,
    };
    let card: ContextCard = listing().card();
    let updated = store.put_booking(&booking, &card).await.unwrap();
    assert_eq!(updated.phase, crate::model::Phase::PostBooking);
    assert_eq!(logged(&store, "cust"), 2);
    assert_eq!(store.booking("b1").unwrap().unwrap(), booking);
}

#[tokio::test]
async fn events_are_published_in_commit_order_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let store = Store::open(
        dir.path(),
        &config(),
        Arc::new(move |d: &Delivery| {
            sink.lock()
                .unwrap()
                .push((d.user_id.clone(), d.frame.cursor))
        }),
    )
    .unwrap();
    store.put_listing(&listing()).unwrap();
    let (c, _) = store
        .open_conversation(&listing(), "cust", "t")
        .await
        .unwrap();
    store
        .append_message(message(&c.id, "cust", "a"))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let prov: Vec<_> = seen
        .iter()
        .filter(|(u, _)| u == "prov")
        .map(|(_, c)| *c)
        .collect();
    assert_eq!(prov, vec![Some(1), Some(2)]);
    assert_eq!(seen.len(), 4);
}

/// A panic inside one write operation fails its batch alone; the writer goes
/// on (the panic counted as a restart), and the store keeps no trace of it.
#[tokio::test]
async fn a_panicking_write_fails_alone_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (store, conversation) = open(dir.path()).await;
    let health = store.writer_health();
    let stuck_after = std::time::Duration::from_secs(60);
    assert_eq!(health.report(stuck_after).restarts, 0);
    let panicked = store
        .writer
        .run("broken", |_, _| -> writer::OpResult<()> {
            panic!("a broken operation")
        })
        .await;
    assert!(panicked.is_err(), "{panicked:?}");
    let report = health.report(stuck_after);
    assert_eq!(report.state, crate::supervisor::State::Up);
    assert_eq!(report.restarts, 1);
    assert!(report
        .last_error
        .is_some_and(|e| e.contains("a broken operation")));
    let (stored, created) = store
        .append_message(message(&conversation.id, "cust", "after"))
        .await
        .unwrap();
    assert!(created);
    assert!(matches!(stored, Stored::Message(m) if m.seq == 1));
    assert_eq!(store.write_queue_depth(), 0);
}

/// Starts `new` on its own task, as a request would.
fn spawn_append(
    store: &Store,
    new: NewMessage,
) -> tokio::task::JoinHandle<Result<(Stored, bool), StoreError>> {
    let store = store.clone();
    tokio::spawn(async move { store.append_message(new).await })
}

/// Waits until `n` writes are queued behind the stalled writer.
async fn queued(store: &Store, n: usize) {
    while store.write_queue_depth() < n {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// A panic inside one write of a batch fails that write alone: the batch is
/// applied again one write per transaction, and the other writes commit.
#[tokio::test]
async fn a_panicking_write_in_a_batch_fails_alone_and_the_others_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (store, conversation) = open(dir.path()).await;
    let health = store.writer_health();
    // Stalled (the dev fault), the writer lets the three writes queue up
    // into one batch.
    health.inject_fault(true);
    let first = spawn_append(&store, message(&conversation.id, "cust", "first"));
    let broken = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .writer
                .run("broken", |_, _| -> writer::OpResult<()> {
                    panic!("a broken operation")
                })
                .await
        })
    };
    let last = spawn_append(&store, message(&conversation.id, "prov", "last"));
    queued(&store, 3).await;
    health.inject_fault(false);

    let broken = broken.await.unwrap();
    assert!(
        matches!(&broken, Err(StoreError::Panicked(m)) if m.contains("a broken operation")),
        "{broken:?}"
    );
    for appended in [first.await.unwrap(), last.await.unwrap()] {
        assert!(
            appended.unwrap().1,
            "a good write of the batch was not stored"
        );
    }
    let mut client_ids: Vec<String> = store
        .messages(&conversation.id, 0, 10)
        .unwrap()
        .into_iter()
        .map(|m| m.client_id)
        .collect();
    client_ids.sort();
    assert_eq!(client_ids, ["first", "last"]);
    let report = health.report(std::time::Duration::from_secs(60));
    assert_eq!(report.state, crate::supervisor::State::Up);
    assert_eq!(report.restarts, 1, "one panic, counted once");
}

/// Past `storage.writer_queue` waiting writes, the requests' handle is
/// refused at once and writes nothing; the background components' handle
/// still queues; once the queue drains, requests are let in again.
#[tokio::test]
async fn past_the_bound_requests_are_refused_and_background_writes_wait() {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig {
        writer_queue: 2,
        ..config()
    };
    let store = Store::open(dir.path(), &config, Arc::new(|_: &Delivery| {})).unwrap();
    store.put_listing(&listing()).unwrap();
    let (conversation, _) = store
        .open_conversation(&listing(), "cust", "t0")
        .await
        .unwrap();
    let requests = store.for_requests();
    store.writer_health().inject_fault(true);
    let queued_first = spawn_append(&requests, message(&conversation.id, "cust", "a"));
    let queued_second = spawn_append(&requests, message(&conversation.id, "cust", "b"));
    queued(&store, 2).await;

    let refused = requests
        .append_message(message(&conversation.id, "cust", "c"))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Overloaded { waiting: 2, .. })),
        "{refused:?}"
    );
    let background = spawn_append(&store, message(&conversation.id, "prov", "d"));
    queued(&store, 3).await;
    store.writer_health().inject_fault(false);

    for appended in [queued_first, queued_second, background] {
        assert!(appended.await.unwrap().unwrap().1);
    }
    let again = requests
        .append_message(message(&conversation.id, "cust", "c"))
        .await;
    assert!(again.is_ok(), "{again:?}");
    let client_ids: Vec<String> = store
        .messages(&conversation.id, 0, 10)
        .unwrap()
        .into_iter()
        .map(|m| m.client_id)
        .collect();
    assert_eq!(client_ids.len(), 4, "{client_ids:?}");
    assert_eq!(client_ids.last().map(String::as_str), Some("c"));
}

/// A panic outside the operations (here in publishing, after the commit)
/// ends the writer thread: it is not restarted, but reported down, and
/// writes fail with an error instead of waiting for ever.
#[tokio::test]
async fn a_writer_thread_that_dies_is_reported_down() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        &config(),
        Arc::new(|_: &Delivery| panic!("publishing failed")),
    )
    .unwrap();
    store.put_listing(&listing()).unwrap();
    let health = store.writer_health();
    let stuck_after = std::time::Duration::from_secs(60);
    assert_eq!(health.state(stuck_after), crate::supervisor::State::Up);
    // Opening a conversation publishes an event after the commit: the
    // thread dies there.
    let _ = store.open_conversation(&listing(), "cust", "t0").await;
    // The caller's answer is dropped while the thread unwinds, a moment
    // before the thread's end is recorded.
    for _ in 0..500 {
        if health.state(stuck_after) == crate::supervisor::State::Down {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let report = health.report(stuck_after);
    assert_eq!(report.state, crate::supervisor::State::Down);
    assert_eq!(
        report.last_error.as_deref(),
        Some("the writer thread panicked")
    );
    assert!(store.durable().await.is_err());
}

#[tokio::test]
async fn a_failing_event_is_dead_at_the_last_attempt_kept_across_a_reopen_and_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let failure = Failure {
        rule: Some("seq".into()),
        error: "boom".into(),
    };
    let (id, dead_seq) = {
        let (store, c) = open(dir.path()).await;
        // Drop the conversation_opened event: one message's event is queued.
        ack_all(&store).await;
        store
            .append_message(message(&c.id, "cust", "a"))
            .await
            .unwrap();
        let event = store.domain_events(10).unwrap().remove(0);
        let held = Held::Event(event.seq);
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            outcomes.push(
                store
                    .record_failure(
                        held.clone(),
                        Some(event.clone()),
                        failure.clone(),
                        3,
                        "t1".into(),
                    )
                    .await
                    .unwrap(),
            );
            if outcomes.len() == 2 {
                assert_eq!(store.attempts_of(&held).unwrap(), Some(2));
                assert_eq!(
                    store.domain_events(10).unwrap(),
                    std::slice::from_ref(&event)
                );
            }
        }
        let Attempted::Dead(id) = &outcomes[2] else {
            panic!("{outcomes:?}");
        };
        assert_eq!(outcomes[..2], [Attempted::Again(1), Attempted::Again(2)]);
        assert!(store.domain_events(10).unwrap().is_empty());
        assert_eq!(store.attempts_of(&held).unwrap(), None);
        // Off the queue: a late attempt changes nothing.
        let late = store
            .record_failure(held, Some(event.clone()), failure.clone(), 3, "t2".into())
            .await
            .unwrap();
        assert_eq!(late, Attempted::Gone);
        store.flush().unwrap();
        (id.clone(), event.seq)
    };
    // Reopened, the list is there and the queue does not read it as events;
    // numbering goes on without reusing a queued seq.
    let store = store(dir.path());
    let dead = store.dead_items(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(store.dead_count(), 1);
    let entry = &dead[0];
    assert_eq!((entry.id.as_str(), entry.attempts), (id.as_str(), 3));
    assert_eq!(entry.rule.as_deref(), Some("seq"));
    assert_eq!(entry.error, "boom");
    assert_eq!(
        (entry.first_failed_at.as_str(), entry.failed_at.as_str()),
        ("t1", "t1")
    );
    assert_eq!(entry.event.seq, dead_seq);
    assert!(store.domain_events(10).unwrap().is_empty());

    let redrive = |id: String| {
        store.transact("redrive", move |tx| {
            tx.redrive(&id, "t3", |_| unreachable!("an event, not a step"))
        })
    };
    let redriven = redrive(id.clone()).await.unwrap().unwrap();
    assert_eq!(redriven.id, id);
    let queued = store.domain_events(10).unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].name, entry.event.name);
    assert_eq!(queued[0].subject, entry.event.subject);
    assert!(queued[0].seq > dead_seq);
    assert_eq!(queued[0].redriven_at.as_deref(), Some("t3"));
    assert_eq!(store.dead_count(), 0);
    assert!(redrive(id).await.unwrap().is_none());
}

/// Acknowledges every queued domain event.
async fn ack_all(store: &Store) {
    let queued: Vec<u64> = store
        .domain_events(100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    store
        .transact("automation", move |tx| {
            queued.iter().try_for_each(|seq| tx.ack(*seq))
        })
        .await
        .unwrap();
}

/// Failed attempts are kept by event number: an acknowledged event's go with
/// it, and a number is never given twice, even after a restart with an empty
/// queue, so a new event cannot inherit an old one's attempts.
#[tokio::test]
async fn attempts_go_with_their_event_whose_number_is_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let failure = Failure {
        rule: None,
        error: "transient".into(),
    };
    let first = {
        let (store, c) = open(dir.path()).await;
        store
            .append_message(message(&c.id, "cust", "a"))
            .await
            .unwrap();
        let last = store.domain_events(10).unwrap().pop().unwrap();
        let attempted = store
            .record_failure(
                Held::Event(last.seq),
                Some(last.clone()),
                failure,
                3,
                "t1".into(),
            )
            .await
            .unwrap();
        assert_eq!(attempted, Attempted::Again(1));
        ack_all(&store).await;
        assert_eq!(store.attempts_of(&Held::Event(last.seq)).unwrap(), None);
        store.flush().unwrap();
        last.seq
    };
    let (store, c) = open(dir.path()).await;
    assert!(store.domain_events(10).unwrap().is_empty());
    store
        .append_message(message(&c.id, "cust", "b"))
        .await
        .unwrap();
    let next = store.domain_events(10).unwrap().remove(0);
    assert!(next.seq > first, "{} reuses {first}", next.seq);
}
