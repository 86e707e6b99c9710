//! Upgrades from real old data: each directory under tests/fixtures/data/
//! was written by the last parleyd of its schema version (its README.txt says
//! which commit, and how), beside `expected.json`, what that daemon served
//! before it was stopped. Today's daemon opens a copy and must log the
//! upgrade, record the current version, and serve the same history, unread
//! counts, read cursors and event log. Each schema bump adds its fixture.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

/// A copy of the fixture's data directory, to be changed by the test.
fn copy_of(name: &str) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    let from = fixture(name).join("data");
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    copy
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Asserts that everything the old daemon served (`old`) is served the
/// same now (`new`): objects may have gained fields, nothing else changed.
fn assert_served_as_before(old: &Value, new: &Value, at: &str) {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            for (key, value) in old {
                let now = new
                    .get(key)
                    .unwrap_or_else(|| panic!("{at}.{key} is gone (was {value})"));
                assert_served_as_before(value, now, &format!("{at}.{key}"));
            }
        }
        (Value::Array(old), Value::Array(new)) => {
            assert_eq!(old.len(), new.len(), "{at}: {new:#?}");
            for (i, (o, n)) in old.iter().zip(new).enumerate() {
                assert_served_as_before(o, n, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(old, new, "{at}"),
    }
}

/// The version recorded in a (stopped) daemon's data directory.
fn stored_version(dir: &Path) -> u32 {
    let db = sled::open(dir).unwrap();
    let meta = db.open_tree("meta").unwrap();
    let bytes = meta.get("schema_version").unwrap().expect("a version");
    u32::from_be_bytes(bytes.as_ref().try_into().unwrap())
}

/// Opens a copy of fixture `name` (written at schema `from`) with today's
/// daemon (`launch` set up on the copy), checks the upgrade was logged and
/// everything `expected.json` holds reads back the same; returns the daemon,
/// the expectations and the copy.
async fn opened(name: &str, from: u32, launch: Launch) -> (Daemon, Value, tempfile::TempDir) {
    let copy = copy_of(name);
    let mut config = launch.config;
    // JSON logs, to read the upgrade's fields.
    config.push(("format", "json".into()));
    let d = Daemon::launch(Launch {
        data_dir: Some(copy.path().to_owned()),
        config,
        ..launch
    })
    .await;
    let log = d.log();
    let upgraded: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "data directory upgraded")
        .unwrap_or_else(|| panic!("no upgrade in the log:\n{log}"));
    assert_eq!(upgraded["fields"]["from"], from, "{upgraded}");
    assert_eq!(
        upgraded["fields"]["to"],
        parleyd::store::SCHEMA_VERSION,
        "{upgraded}"
    );
    let expected = expected(name);
    for (id, old) in expected["people"].as_object().unwrap() {
        let role = if id.starts_with("prov") {
            "provider"
        } else {
            "customer"
        };
        let who = Person::new(id, role);
        let listed = d.get("/v1/conversations", &who.token).await;
        listed.expect(200);
        assert_served_as_before(&old["conversations"], &listed.body, &format!("{id}'s list"));
        for (conversation, messages) in old["messages"].as_object().unwrap() {
            let now = Value::Array(d.messages(&who, conversation).await);
            assert_served_as_before(messages, &now, &format!("{id}'s {conversation}"));
        }
        // Replay by cursor: from the start, and from the middle of the log.
        let (events, cursor) = d.poll(&who, 0, 0).await;
        assert_eq!(cursor, old["events"]["cursor"], "{id}'s cursor");
        assert_served_as_before(
            &old["events"]["events"],
            &json!(events),
            &format!("{id}'s log"),
        );
        let (tail, _) = d.poll(&who, 2, 0).await;
        assert_eq!(tail.as_slice(), &events[2..], "{id}'s log from cursor 2");
    }
    (d, expected, copy)
}

/// A person's (unread count, read cursor) in `conversation`, from what the
/// old daemon listed for them.
/// The scenario's conversations `a`, `b` and `c`, as the old daemon named them.
fn conversations(expected: &Value) -> [&str; 3] {
    ["a", "b", "c"].map(|key| expected["conversations"][key].as_str().unwrap())
}

/// Asserts what README.txt records of the old daemon's answers: each
/// person's (unread count, last read seq) in conversation `a`, `b` or `c`,
/// and each person's event-log cursor.
fn assert_recorded(
    expected: &Value,
    unread_in: &[(&str, usize, (u64, u64))],
    cursors: &[(&str, u64)],
) {
    let ids = conversations(expected);
    let people = &expected["people"];
    for &(who, conversation, counts) in unread_in {
        let conversation = ids[conversation];
        assert_eq!(
            unread(&people[who], conversation),
            counts,
            "{who} in {conversation}"
        );
    }
    for &(who, cursor) in cursors {
        assert_eq!(people[who]["events"]["cursor"], cursor, "{who}");
    }
}

fn unread(served: &Value, conversation: &str) -> (u64, u64) {
    let listed = served["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == conversation)
        .unwrap_or_else(|| panic!("{conversation} not listed"));
    (
        listed["unread_count"].as_u64().unwrap(),
        listed["last_read_seq"].as_u64().unwrap(),
    )
}

/// The last schema-1 parleyd's data (tests/fixtures/data/schema-1/README.txt):
/// three conversations, their messages, read receipts and a booking. A
/// change that misreads schema 1's copied frames, its client ids without
/// fingerprints, or its unread counters, fails this.
#[tokio::test]
async fn a_schema_1_directory_reads_back_as_the_old_daemon_served_it() {
    let (d, expected, copy) = opened("schema-1", 1, Launch::default()).await;
    let [a, _, _] = conversations(&expected);
    assert_recorded(
        &expected,
        &[
            ("cust-1", 0, (0, 3)),
            ("cust-1", 1, (0, 0)),
            ("cust-2", 2, (1, 0)),
            ("prov-1", 0, (1, 1)),
            ("prov-1", 1, (1, 0)),
            ("prov-1", 2, (0, 3)),
        ],
        &[("cust-1", 9), ("cust-2", 5), ("prov-1", 14)],
    );

    // The directory goes on: a retried client id (recorded without a
    // fingerprint) is a retry, a new message takes the next seq and cursor.
    let carla = Person::new("cust-1", "customer");
    let retry = d.send(&carla, a, "a-2", "We are two adults.").await;
    retry.expect(200);
    assert_eq!(retry.body["message"]["seq"], 2);
    let next = d.send(&carla, a, "a-4", "See you on Friday").await;
    next.expect(201);
    assert_eq!(next.body["message"]["seq"], 4);
    let pablo = Person::new("prov-1", "provider");
    let (events, cursor) = d.poll(&pablo, 14, 0).await;
    assert_eq!(cursor, 15);
    assert_eq!(message_seqs(&events), [4]);
    d.stop().await;
    assert_eq!(stored_version(copy.path()), parleyd::store::SCHEMA_VERSION);
}

/// The last schema-3 parleyd's data (tests/fixtures/data/schema-3/README.txt),
/// written with the shipped rules on a manual clock in 2100: besides the
/// history, sequences still running. Schema 4 rebuilds their subject index
/// on open. Conversation B's inquiry is running, its provider reminder due 4
/// hours after it; conversation A is booked, its milestones due in March 2100.
/// The provider answers in B: the rebuilt index must lead that event to B's
/// instance and stop it, so no reminder comes. A lost or misbuilt index (the
/// reply finding no instance) sends the reminder and fails this.
#[tokio::test]
async fn a_schema_3_directory_keeps_its_running_sequences() {
    let launch = Launch {
        automation: true,
        config: vec![("clock", "manual".into())],
        ..Launch::default()
    };
    let (d, expected, copy) = opened("schema-3", 3, launch).await;
    let [a, b, _] = conversations(&expected);
    assert_recorded(
        &expected,
        &[
            ("cust-1", 0, (2, 3)),
            ("cust-1", 1, (1, 0)),
            ("cust-2", 2, (1, 0)),
            ("prov-1", 0, (1, 1)),
            ("prov-1", 1, (1, 0)),
            ("prov-1", 2, (0, 3)),
        ],
        &[("cust-1", 12), ("cust-2", 5), ("prov-1", 16)],
    );

    let pablo = Person::new("prov-1", "provider");
    let carla = Person::new("cust-1", "customer");
    let (_, head) = d.poll(&pablo, 0, 0).await;
    d.post(
        "/v1/admin/clock",
        &operator().token,
        json!({"to": "2100-01-01T10:00:00Z"}),
    )
    .await
    .expect(200);
    d.send(&pablo, b, "b-2", "Yes, beginners are welcome.")
        .await
        .expect(201);
    // The engine takes the reply before the next due steps (README, "Exactly
    // once"), and the scheduler fires due steps earliest first: once A's
    // reminder for the day before its booking (4 March 2100) is there, B's
    // reminder (1 January) would have come before it.
    advance(&d, "1500h").await;
    guard("A's day-before reminder", async {
        loop {
            let messages = d.messages(&carla, a).await;
            if messages
                .iter()
                .any(|m| m["automation"]["template"] == "booking_day_before")
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    settled(&d).await;
    let in_b = d.messages(&carla, b).await;
    assert!(
        in_b.iter()
            .all(|m| m["automation"]["template"] != "provider_reply_reminder"),
        "the reply stopped B's sequence: {in_b:#?}"
    );
    let (events, _) = d.poll(&pablo, head, 0).await;
    assert_consecutive(&events, head + 1);
    d.stop().await;
    assert_eq!(stored_version(copy.path()), parleyd::store::SCHEMA_VERSION);
}
