//! What the writer remembers about recently active conversations: each one's
//! record and its senders' last messages (moderation's history), shared
//! read-only with the send path. A send to an active conversation then checks
//! participation and moderates without reading sled, so it needs neither the
//! blocking pool nor sled's read lock, which the writer holds while it commits.
//!
//! Only the writer changes a record, and only after its transaction commits, so
//! an entry is always a committed state. Readers fill in the message history
//! (the writer cannot scan a tree inside its transaction), and only when the
//! scan matches the entry's last `seq`: a scan that raced a newer message is
//! dropped rather than stored.
//!
//! Eviction is by generations: when the current map is full it becomes the
//! previous one, and an entry the writer touches again moves back. That keeps
//! the conversations in use for the cost of one extra lookup on a miss.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use crate::model::{Conversation, Message};

/// Messages remembered per sender; a longer history is read from sled.
const KEPT_PER_SENDER: usize = 8;

/// One conversation as last committed.
#[derive(Debug)]
pub struct HotConversation {
    pub conversation: Arc<Conversation>,
    /// Each sender's last messages, oldest first; `None` until a reader has
    /// filled it in.
    recent: Option<Vec<(String, VecDeque<String>)>>,
}

impl HotConversation {
    /// The sender's last `n` messages, oldest first, if remembered.
    pub fn recent(&self, sender_id: &str, n: usize) -> Option<Vec<String>> {
        if n > KEPT_PER_SENDER {
            return None;
        }
        let recent = self.recent.as_ref()?;
        let mine = recent.iter().find(|(s, _)| s == sender_id);
        Some(mine.map_or_else(Vec::new, |(_, messages)| {
            messages
                .iter()
                .skip(messages.len().saturating_sub(n))
                .cloned()
                .collect()
        }))
    }

    fn with_messages(&self, conversation: Conversation, appended: &[(String, String)]) -> Self {
        // The history stays valid only if it ended where these messages begin.
        let continues = self.conversation.last_seq + appended.len() as u64 == conversation.last_seq;
        let recent = self.recent.clone().filter(|_| continues).map(|mut recent| {
            for (sender, content) in appended {
                push_recent(&mut recent, sender, content.clone());
            }
            recent
        });
        HotConversation {
            conversation: Arc::new(conversation),
            recent,
        }
    }
}

fn push_recent(recent: &mut Vec<(String, VecDeque<String>)>, sender: &str, content: String) {
    let index = match recent.iter().position(|(s, _)| s == sender) {
        Some(index) => index,
        None => {
            recent.push((sender.to_owned(), VecDeque::new()));
            recent.len() - 1
        }
    };
    let messages = &mut recent[index].1;
    messages.push_back(content);
    if messages.len() > KEPT_PER_SENDER {
        messages.pop_front();
    }
}

#[derive(Default)]
struct Generations {
    current: HashMap<String, Arc<HotConversation>>,
    previous: HashMap<String, Arc<HotConversation>>,
}

impl Generations {
    fn insert(&mut self, id: String, entry: Arc<HotConversation>, capacity: usize) {
        if self.current.len() >= capacity.div_ceil(2) && !self.current.contains_key(&id) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.previous.remove(&id);
        self.current.insert(id, entry);
    }

    fn get(&self, id: &str) -> Option<&Arc<HotConversation>> {
        self.current.get(id).or_else(|| self.previous.get(id))
    }
}

/// The shared, committed side.
pub struct HotConversations {
    entries: RwLock<Generations>,
    capacity: usize,
}

impl HotConversations {
    /// Remembers up to `capacity` conversations (0 turns the cache off).
    pub fn new(capacity: usize) -> HotConversations {
        HotConversations {
            entries: RwLock::default(),
            capacity,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Generations> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Generations> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Arc<HotConversation>> {
        self.read().get(id).cloned()
    }

    pub fn conversation(&self, id: &str) -> Option<Arc<Conversation>> {
        self.get(id).map(|hot| Arc::clone(&hot.conversation))
    }

    /// Stores the history a reader scanned (its messages oldest first), if the
    /// scan saw the conversation as it is remembered: up to `last_seq`.
    pub fn fill_recent(&self, id: &str, last_seq: u64, scanned: &[(String, String)]) {
        let mut entries = self.write();
        let Some(hot) = entries.get(id) else {
            return;
        };
        if hot.recent.is_some() || hot.conversation.last_seq != last_seq {
            return;
        }
        let mut recent = Vec::new();
        for (sender, content) in scanned {
            push_recent(&mut recent, sender, content.clone());
        }
        let filled = Arc::new(HotConversation {
            conversation: Arc::clone(&hot.conversation),
            recent: Some(recent),
        });
        entries.insert(id.to_owned(), filled, self.capacity);
    }
}

/// What one transaction has read and written.
struct Touched {
    conversation: Conversation,
    /// `(sender, content)` of the messages it appended, in `seq` order.
    appended: Vec<(String, String)>,
}

/// The writer's side: the transaction's reads and writes, applied to the shared
/// side only when it commits (a retried transaction starts afresh).
pub struct HotWrites {
    shared: Arc<HotConversations>,
    pending: RefCell<HashMap<String, Touched>>,
}

impl HotWrites {
    pub fn new(shared: Arc<HotConversations>) -> HotWrites {
        HotWrites {
            shared,
            pending: RefCell::default(),
        }
    }

    /// The conversation as this transaction sees it, if remembered.
    pub fn get(&self, id: &str) -> Option<Conversation> {
        if let Some(touched) = self.pending.borrow().get(id) {
            return Some(touched.conversation.clone());
        }
        self.shared
            .conversation(id)
            .map(|c| Conversation::clone(&c))
    }

    /// Records a conversation the transaction read from sled or wrote.
    pub fn touch(&self, conversation: &Conversation) {
        let mut pending = self.pending.borrow_mut();
        match pending.get_mut(&conversation.id) {
            Some(touched) => touched.conversation = conversation.clone(),
            None => {
                pending.insert(
                    conversation.id.clone(),
                    Touched {
                        conversation: conversation.clone(),
                        appended: Vec::new(),
                    },
                );
            }
        }
    }

    /// Records a message appended to a conversation already touched.
    pub fn appended(&self, message: &Message) {
        if let Some(touched) = self.pending.borrow_mut().get_mut(&message.conversation_id) {
            touched
                .appended
                .push((message.sender_id.clone(), message.content.clone()));
        }
    }

    pub fn begin(&self) {
        self.pending.borrow_mut().clear();
    }

    /// The transaction committed: what it touched is the committed state now.
    pub fn commit(&mut self) {
        let pending = std::mem::take(self.pending.get_mut());
        if pending.is_empty() || self.shared.capacity == 0 {
            return;
        }
        let mut entries = self.shared.write();
        for (id, touched) in pending {
            let entry = match entries.get(&id) {
                Some(hot) => hot.with_messages(touched.conversation, &touched.appended),
                None => HotConversation {
                    conversation: Arc::new(touched.conversation),
                    recent: None,
                },
            };
            entries.insert(id, Arc::new(entry), self.shared.capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(id: &str, last_seq: u64) -> Conversation {
        let mut c: Conversation = serde_json::from_value(serde_json::json!({
            "id": id, "listing_id": "l", "customer_id": "c", "provider_id": "p",
            "phase": "pre_booking", "stage": null, "booking_id": null, "last_seq": 0,
            "last_message": null, "participants": [],
            "listing_snapshot": {
                "listing_id": "l", "title": "t", "badges": [], "open_dates": 0, "included": [],
            },
            "created_at": "", "updated_at": "",
        }))
        .unwrap();
        c.last_seq = last_seq;
        c
    }

    fn message(conversation: &Conversation, sender: &str, content: &str) -> Message {
        serde_json::from_value(serde_json::json!({
            "id": "m", "seq": conversation.last_seq, "conversation_id": conversation.id,
            "sender_id": sender, "client_id": "x", "content": content, "type": "text",
            "status": "sent", "created_at": "",
        }))
        .unwrap()
    }

    /// One committed transaction appending `contents` from `sender`.
    fn send(writes: &mut HotWrites, id: &str, sender: &str, contents: &[&str]) {
        writes.begin();
        let mut c = writes.get(id).unwrap_or_else(|| conversation(id, 0));
        for content in contents {
            c.last_seq += 1;
            writes.touch(&c);
            writes.appended(&message(&c, sender, content));
        }
        writes.commit();
    }

    fn recent(shared: &HotConversations, sender: &str, n: usize) -> Option<Vec<String>> {
        shared.get("c1")?.recent(sender, n)
    }

    #[test]
    fn history_is_kept_only_from_a_scan_that_matches() {
        let shared = Arc::new(HotConversations::new(100));
        let mut writes = HotWrites::new(Arc::clone(&shared));
        send(&mut writes, "c1", "ann", &["one", "two"]);
        assert_eq!(shared.conversation("c1").unwrap().last_seq, 2);
        assert_eq!(recent(&shared, "ann", 3), None, "not filled yet");

        // A scan that saw only the first message raced the second: dropped.
        shared.fill_recent("c1", 1, &[("ann".into(), "one".into())]);
        assert_eq!(recent(&shared, "ann", 3), None);

        let scanned = [("ann".into(), "one".into()), ("ann".into(), "two".into())];
        shared.fill_recent("c1", 2, &scanned);
        assert_eq!(recent(&shared, "ann", 3).unwrap(), ["one", "two"]);
        assert_eq!(recent(&shared, "bob", 3).unwrap(), Vec::<String>::new());

        send(&mut writes, "c1", "ann", &["three", "four"]);
        assert_eq!(recent(&shared, "ann", 3).unwrap(), ["two", "three", "four"]);
        assert_eq!(recent(&shared, "ann", KEPT_PER_SENDER + 1), None);
    }

    #[test]
    fn an_abandoned_transaction_leaves_nothing() {
        let shared = Arc::new(HotConversations::new(100));
        let mut writes = HotWrites::new(Arc::clone(&shared));
        send(&mut writes, "c1", "ann", &["one"]);
        writes.begin();
        let mut c = writes.get("c1").unwrap();
        c.last_seq = 9;
        writes.touch(&c);
        writes.begin(); // sled retries: the attempt above never happened
        writes.commit();
        assert_eq!(shared.conversation("c1").unwrap().last_seq, 1);
    }

    #[test]
    fn a_full_cache_forgets_the_least_recent_generation() {
        let shared = Arc::new(HotConversations::new(4));
        let mut writes = HotWrites::new(Arc::clone(&shared));
        for id in ["a", "b", "c", "d", "e"] {
            send(&mut writes, id, "ann", &["hi"]);
        }
        // a and b moved to the previous generation when c arrived, then c and d
        // to it when e arrived: a and b are gone.
        assert!(shared.conversation("a").is_none());
        assert!(shared.conversation("b").is_none());
        for id in ["c", "d", "e"] {
            assert!(shared.conversation(id).is_some(), "{id}");
        }
    }
}
