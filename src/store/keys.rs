//! Key encoding. Ids never contain `\0` (see `model::validate_id`; client ids are
//! printable ASCII), so `\0` separates the parts and a prefix scan for one id never
//! matches another that merely starts with it. Numbers are big-endian so that byte
//! order is numeric order.

use crate::domain::Subject;

const SEP: u8 = 0;

fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEP);
        }
        key.extend_from_slice(part);
    }
    key
}

pub fn pair(listing_id: &str, customer_id: &str) -> Vec<u8> {
    join(&[listing_id.as_bytes(), customer_id.as_bytes()])
}

pub fn user_conv_prefix(user_id: &str) -> Vec<u8> {
    join(&[user_id.as_bytes(), b""])
}

pub fn user_conv(user_id: &str, conversation_id: &str) -> Vec<u8> {
    join(&[user_id.as_bytes(), conversation_id.as_bytes()])
}

pub fn message(conversation_id: &str, seq: u64) -> Vec<u8> {
    join(&[conversation_id.as_bytes(), &seq.to_be_bytes()])
}

pub fn client(sender_id: &str, client_id: &str) -> Vec<u8> {
    join(&[sender_id.as_bytes(), client_id.as_bytes()])
}

/// Marks a `client_ids` value as "blocked, see this flag"; message keys start with
/// a conversation id, which never contains this byte.
const BLOCKED: u8 = 0xFF;

pub fn blocked(flag_id: &str) -> Vec<u8> {
    join(&[&[BLOCKED], flag_id.as_bytes()])
}

/// The flag id of a `client_ids` value written by [`blocked`].
pub fn blocked_flag(value: &[u8]) -> Option<&[u8]> {
    value.strip_prefix(&[BLOCKED, SEP])
}

/// How long a request fingerprint is: the first 16 bytes of a SHA-256.
pub const FINGERPRINT_LEN: usize = 16;

/// Starts a `client_ids` value that carries the fingerprint of the request that
/// used the client id (schema 3); values without it (schemas 1 and 2) start
/// with a conversation id or [`BLOCKED`], neither of which is this byte.
const FINGERPRINTED: u8 = 0xFE;

/// A `client_ids` value: what the client id names (a message key, or
/// [`blocked`]), with the fingerprint of the request that stored it.
pub fn client_entry(target: &[u8], fingerprint: Option<&[u8; FINGERPRINT_LEN]>) -> Vec<u8> {
    let Some(fingerprint) = fingerprint else {
        return target.to_vec();
    };
    let mut value = Vec::with_capacity(1 + FINGERPRINT_LEN + target.len());
    value.push(FINGERPRINTED);
    value.extend_from_slice(fingerprint);
    value.extend_from_slice(target);
    value
}

/// Splits a `client_ids` value written by [`client_entry`] (or by an earlier
/// schema, without a fingerprint) into its fingerprint and its target.
pub fn parse_client_entry(value: &[u8]) -> (Option<[u8; FINGERPRINT_LEN]>, &[u8]) {
    match value.split_first() {
        Some((&FINGERPRINTED, rest)) if rest.len() >= FINGERPRINT_LEN => {
            let (fingerprint, target) = rest.split_at(FINGERPRINT_LEN);
            (fingerprint.try_into().ok(), target)
        }
        _ => (None, value),
    }
}

/// Marks an `events` value as "the message stored under this key": a message
/// event is logged for every participant, and a reference instead of two
/// copies of the message keeps the log's values small (sled copies a node's
/// values whenever it rewrites the node). Other events are JSON frames, which
/// start with `{`.
const MESSAGE_REF: u8 = 0x01;

pub fn message_ref(conversation_id: &str, seq: u64) -> Vec<u8> {
    let key = message(conversation_id, seq);
    let mut value = Vec::with_capacity(1 + key.len());
    value.push(MESSAGE_REF);
    value.extend_from_slice(&key);
    value
}

/// The message key of an `events` value written by [`message_ref`].
pub fn referenced_message(value: &[u8]) -> Option<&[u8]> {
    value.strip_prefix(&[MESSAGE_REF])
}

pub fn event_prefix(user_id: &str) -> Vec<u8> {
    event_prefix_bytes(user_id.as_bytes())
}

pub fn event_prefix_bytes(user_id: &[u8]) -> Vec<u8> {
    join(&[user_id, b""])
}

/// The user id at the front of an `event` key.
pub fn user_of_event(key: &[u8]) -> &[u8] {
    &key[..key.len().saturating_sub(9)]
}

/// The smallest key after every `event` key of `user_id` (ids never contain
/// the separator, so no other id starts with `user_id` + separator + 1).
pub fn after_user(user_id: &[u8]) -> Vec<u8> {
    let mut key = user_id.to_vec();
    key.push(SEP + 1);
    key
}

pub fn event(user_id: &str, cursor: u64) -> Vec<u8> {
    join(&[user_id.as_bytes(), &cursor.to_be_bytes()])
}

/// The cursor at the end of an `event` key.
pub fn cursor_of_event(key: &[u8]) -> u64 {
    read_u64(&key[key.len().saturating_sub(8)..])
}

/// A big-endian u64; a short value (never written by us) reads as 0.
pub fn read_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

pub fn domain(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn domain_seq(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// A timer: due time first, so the tree is ordered by when things fire.
/// Times before the epoch sort as the epoch (nothing is planned that early).
pub fn timer(due_ms: i64, instance: &str, step: &str) -> Vec<u8> {
    let due = u64::try_from(due_ms).unwrap_or(0).to_be_bytes();
    let mut key = Vec::with_capacity(8 + instance.len() + 1 + step.len());
    key.extend_from_slice(&due);
    key.extend_from_slice(instance.as_bytes());
    key.push(SEP);
    key.extend_from_slice(step.as_bytes());
    key
}

/// The first key of timers due after `due_ms`.
pub fn timers_after(due_ms: i64) -> [u8; 8] {
    (u64::try_from(due_ms).unwrap_or(0).saturating_add(1)).to_be_bytes()
}

/// `(due_ms, instance, step)` of a timer key.
pub fn parse_timer(key: &[u8]) -> Option<(i64, String, String)> {
    let (due, rest) = key.split_at_checked(8)?;
    let due = i64::try_from(u64::from_be_bytes(due.try_into().ok()?)).ok()?;
    let split = rest.iter().rposition(|&b| b == SEP)?;
    let instance = std::str::from_utf8(&rest[..split]).ok()?;
    let step = std::str::from_utf8(&rest[split + 1..]).ok()?;
    Some((due, instance.to_owned(), step.to_owned()))
}

/// The scope of a subject-index entry: the most specific thing its instance is
/// about. `c` conversation, or `lc` listing and customer (a customer who viewed
/// a listing but never wrote), or `-` anything broader. An event about a
/// conversation reads only its own scope and the broader ones, so a provider's
/// other conversations cost it nothing.
fn scope(subject: &Subject) -> Vec<&[u8]> {
    match (
        &subject.conversation_id,
        &subject.listing_id,
        &subject.customer_id,
    ) {
        (Some(c), _, _) => vec![b"c", c.as_bytes()],
        (None, Some(l), Some(u)) => vec![b"lc", l.as_bytes(), u.as_bytes()],
        _ => vec![b"-"],
    }
}

/// The `subjects` keys of an instance about `subject`: one per id it names
/// (`Subject::index_keys`), each followed by the instance's scope and its id:
/// `kind \0 id \0 scope… \0 instance`.
pub fn subject_entries(subject: &Subject, instance: &str) -> Vec<Vec<u8>> {
    let scope = scope(subject);
    subject
        .index_keys()
        .iter()
        .map(|key| {
            let mut parts: Vec<&[u8]> = vec![key.as_bytes()];
            parts.extend(&scope);
            parts.push(instance.as_bytes());
            join(&parts)
        })
        .collect()
}

/// The `subjects` prefixes that hold every instance an event about `subject`
/// can concern (`Subject::concerns`: they agree on every id both name), and
/// few others: under each id of the event, the scope of its conversation (all
/// conversations when it names none), of its listing and customer, and the
/// broad scope.
pub fn subject_scans(subject: &Subject) -> Vec<Vec<u8>> {
    let conversation: Vec<&[u8]> = match &subject.conversation_id {
        Some(c) => vec![b"c", c.as_bytes(), b""],
        None => vec![b"c", b""],
    };
    let viewed: Vec<&[u8]> = match (&subject.listing_id, &subject.customer_id) {
        (Some(l), Some(u)) => vec![b"lc", l.as_bytes(), u.as_bytes(), b""],
        (Some(l), None) => vec![b"lc", l.as_bytes(), b""],
        _ => vec![b"lc", b""],
    };
    let broad: Vec<&[u8]> = vec![b"-", b""];
    let mut scans = Vec::new();
    for key in subject.index_keys() {
        for scope in [&conversation, &viewed, &broad] {
            let mut parts: Vec<&[u8]> = vec![key.as_bytes()];
            parts.extend(scope);
            scans.push(join(&parts));
        }
    }
    scans
}

/// The instance id at the end of a `subjects` key.
pub fn instance_of_subject_entry(key: &[u8]) -> &[u8] {
    key.iter()
        .rposition(|&b| b == SEP)
        .map_or(key, |at| &key[at + 1..])
}

/// An `analytics_by_provider` key: the provider, the inquiry time (Unix
/// milliseconds; times before 1970 sort as 0) and the conversation.
pub fn provider_conversation(provider_id: &str, at_ms: i64, conversation_id: &str) -> Vec<u8> {
    let at = u64::try_from(at_ms).unwrap_or(0).to_be_bytes();
    join(&[provider_id.as_bytes(), &at, conversation_id.as_bytes()])
}

/// The conversation of an [`provider_conversation`] key: what follows the
/// time's 8 bytes and their separator.
pub fn conversation_of_provider_entry(key: &[u8]) -> String {
    let start = key
        .iter()
        .position(|&b| b == SEP)
        .map_or(key.len(), |p| p + 1 + 8 + 1)
        .min(key.len());
    String::from_utf8_lossy(&key[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_do_not_leak_between_ids() {
        assert!(!user_conv("ann2", "c").starts_with(&user_conv_prefix("ann")));
        assert!(user_conv("ann", "c").starts_with(&user_conv_prefix("ann")));
    }

    #[test]
    fn a_message_reference_is_never_a_frame() {
        let value = message_ref("c1", 7);
        assert_eq!(
            referenced_message(&value),
            Some(message("c1", 7).as_slice())
        );
        assert_eq!(referenced_message(br#"{"cursor":1}"#), None);
    }

    #[test]
    fn client_entries_keep_their_target_with_or_without_a_fingerprint() {
        let fingerprint = [7u8; FINGERPRINT_LEN];
        for target in [message("c1", 0xFE), blocked("flag-1")] {
            let value = client_entry(&target, Some(&fingerprint));
            assert_eq!(
                parse_client_entry(&value),
                (Some(fingerprint), target.as_slice())
            );
            // As schemas 1 and 2 wrote them.
            assert_eq!(parse_client_entry(&target), (None, target.as_slice()));
        }
        assert_eq!(
            blocked_flag(parse_client_entry(&client_entry(&blocked("f"), Some(&fingerprint))).1),
            Some(b"f".as_slice())
        );
    }

    #[test]
    fn numbers_sort_numerically() {
        assert!(message("c", 9) < message("c", 10));
        assert!(event("u", 255) < event("u", 256));
        assert_eq!(cursor_of_event(&event("u", 300)), 300);
        assert_eq!(user_of_event(&event("ann", 7)), b"ann");
        assert!(after_user(b"ann") > event("ann", u64::MAX));
        assert!(after_user(b"ann") < event("ann2", 1));
    }

    fn subject(conversation: Option<&str>, listing: &str, customer: &str) -> Subject {
        Subject {
            conversation_id: conversation.map(str::to_owned),
            listing_id: Some(listing.into()),
            customer_id: Some(customer.into()),
            provider_id: Some("p".into()),
            ..Subject::default()
        }
    }

    /// Which of `instances` an event about `event` finds by its scans.
    fn found<'a>(event: &Subject, instances: &[(&'a str, Subject)]) -> Vec<&'a str> {
        let scans = subject_scans(event);
        instances
            .iter()
            .filter(|(id, subject)| {
                subject_entries(subject, id)
                    .iter()
                    .any(|e| scans.iter().any(|s| e.starts_with(s)))
            })
            .map(|(id, _)| *id)
            .collect()
    }

    #[test]
    fn an_event_reads_only_the_instances_that_can_concern_it() {
        let instances = [
            ("in-c1", subject(Some("c1"), "l1", "u1")),
            ("in-c2", subject(Some("c2"), "l1", "u2")),
            ("in-c10", subject(Some("c10"), "l1", "u3")),
            ("viewed-l1-u1", subject(None, "l1", "u1")),
            ("viewed-l1-u2", subject(None, "l1", "u2")),
            (
                "provider-wide",
                Subject {
                    provider_id: Some("p".into()),
                    ..Subject::default()
                },
            ),
        ];
        // A message in c1: its own conversation, what its customer viewed of
        // its listing, and the provider's broad instances; never c2 or c10.
        assert_eq!(
            found(&subject(Some("c1"), "l1", "u1"), &instances),
            ["in-c1", "viewed-l1-u1", "provider-wide"]
        );
        // A signal naming only the provider reaches all of them.
        let provider = Subject {
            user_id: Some("p".into()),
            ..Subject::default()
        };
        assert_eq!(found(&provider, &instances).len(), instances.len());
        // Every instance it finds is one `concerns` may accept, and it misses
        // none that `concerns` accepts.
        for (_, event) in &instances {
            let reached = found(event, &instances);
            for (id, instance) in &instances {
                if event.concerns(instance) {
                    assert!(reached.contains(id), "{id} missed by {event:?}");
                }
            }
        }
    }

    #[test]
    fn a_subject_entry_ends_with_its_instance() {
        for entry in subject_entries(&subject(Some("c1"), "l1", "u1"), "rule/c:c1") {
            assert_eq!(instance_of_subject_entry(&entry), b"rule/c:c1");
        }
    }
}
