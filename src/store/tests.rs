use super::*;
use crate::config::StorageConfig;
use crate::model::{ContextCard, MessageType};

fn config() -> StorageConfig {
    StorageConfig {
        cache_capacity_mb: 16,
        ..StorageConfig::default()
    }
}

fn listing() -> Listing {
    Listing {
        id: "l1".into(),
        title: "Kayak tour".into(),
        price: Some(40.0),
        currency: Some("EUR".into()),
        provider_id: "prov".into(),
        primary_image: None,
        badges: vec![],
        response_time: None,
        availability: vec!["2026-12-01".into()],
        included: vec![],
        address: None,
        updated_at: "2026-11-25T00:00:00.000Z".into(),
    }
}

fn message<'a>(conversation_id: &'a str, sender: &'a str, client_id: &'a str) -> NewMessage<'a> {
    NewMessage {
        conversation_id,
        sender_id: sender,
        client_id,
        content: "hello",
        kind: MessageType::Text,
        created_at: "2026-11-25T00:00:00.000Z".into(),
        moderation: None,
    }
}

fn stored(appended: &Appended) -> &Message {
    match &appended.stored {
        Stored::Message(m) => m,
        Stored::Blocked(_) => panic!("expected a message"),
    }
}

fn open(dir: &Path) -> (Store, Conversation) {
    let store = Store::open(dir, &config()).unwrap();
    store.put_listing(&listing()).unwrap();
    let (conversation, _, _) = store.open_conversation(&listing(), "cust", "t0").unwrap();
    (store, conversation)
}

#[test]
fn opening_twice_returns_the_same_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let (store, first) = open(dir.path());
    let (again, created, deliveries) = store.open_conversation(&listing(), "cust", "t1").unwrap();
    assert!(!created);
    assert!(deliveries.is_empty());
    assert_eq!(again.id, first.id);
    assert_eq!(store.conversations_of("prov").unwrap().len(), 1);
    assert!(store.conversations_of("pro").unwrap().is_empty());
}

#[test]
fn a_client_id_stores_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = open(dir.path());
    let first = store.append_message(&message(&c.id, "cust", "x")).unwrap();
    let second = store.append_message(&message(&c.id, "cust", "x")).unwrap();
    assert!(first.created && !second.created);
    assert_eq!(stored(&first), stored(&second));
    assert!(second.deliveries.is_empty());
    // Another sender may use the same client id.
    let other = store.append_message(&message(&c.id, "prov", "x")).unwrap();
    assert!(other.created);
    assert_eq!(stored(&other).seq, 2);
}

#[test]
fn strangers_cannot_append() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = open(dir.path());
    let err = store
        .append_message(&message(&c.id, "eve", "x"))
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)));
    assert!(store.messages(&c.id, 0, 10).unwrap().is_empty());
}

#[test]
fn concurrent_appends_get_gap_free_seqs_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = open(dir.path());
    std::thread::scope(|s| {
        for sender in ["cust", "prov"] {
            for t in 0..4 {
                let (store, id) = (&store, &c.id);
                s.spawn(move || {
                    for i in 0..25 {
                        let client = format!("{t}-{i}");
                        store.append_message(&message(id, sender, &client)).unwrap();
                    }
                });
            }
        }
    });
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
        assert_eq!(store.cursor(user).unwrap(), 201);
    }
}

#[test]
fn reading_counts_only_the_other_sides_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = open(dir.path());
    for (sender, id) in [("cust", "a"), ("prov", "b"), ("cust", "c"), ("cust", "d")] {
        store.append_message(&message(&c.id, sender, id)).unwrap();
    }
    let state = store.mark_read(&c.id, "prov", 3, "t2").unwrap();
    assert_eq!((state.last_read_seq, state.unread_count), (3, 1));
    assert_eq!(state.deliveries.len(), 2, "a receipt for each participant");
    let messages = store.messages(&c.id, 0, 10).unwrap();
    assert_eq!(messages[0].status, MessageStatus::Read);
    assert_eq!(messages[0].read_at.as_deref(), Some("t2"));
    assert_eq!(messages[1].status, MessageStatus::Sent, "own message");
    assert_eq!(messages[3].status, MessageStatus::Sent, "after seq 3");
    // Reading backwards changes nothing; reading past the end stops at the end.
    assert!(store
        .mark_read(&c.id, "prov", 1, "t3")
        .unwrap()
        .deliveries
        .is_empty());
    let state = store.mark_read(&c.id, "prov", 99, "t4").unwrap();
    assert_eq!((state.last_read_seq, state.unread_count), (4, 0));
}

#[test]
fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let (store, c) = open(dir.path());
        store.append_message(&message(&c.id, "cust", "a")).unwrap();
        store.flush().unwrap();
        c.id
    };
    let store = Store::open(dir.path(), &config()).unwrap();
    assert_eq!(store.messages(&id, 0, 10).unwrap().len(), 1);
    assert_eq!(store.cursor("prov").unwrap(), 2);
    let appended = store.append_message(&message(&id, "prov", "b")).unwrap();
    assert_eq!(stored(&appended).seq, 2);
    assert_eq!(appended.deliveries[0].frame.cursor, Some(3));
}

#[test]
fn another_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), &config()).unwrap());
    {
        let db = sled::open(dir.path()).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("schema_version", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path(), &config())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("schema version 99"), "{err}");
}

#[test]
fn foreign_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert("something", "else").unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path(), &config())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("without a parleyd schema version"), "{err}");
}

#[test]
fn bookings_move_the_conversation_after_booking() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = open(dir.path());
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
    };
    let card: ContextCard = listing().card();
    let (updated, deliveries) = store.put_booking(&booking, &card).unwrap();
    assert_eq!(updated.phase, Phase::PostBooking);
    assert_eq!(deliveries.len(), 2);
    assert_eq!(store.booking("b1").unwrap().unwrap(), booking);
}
