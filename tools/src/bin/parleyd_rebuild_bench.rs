//! `parleyd-rebuild-bench`: the cost of `parleyd analytics rebuild`.
//!
//! Writes a data directory through the store directly (no HTTP, no engine):
//! `--messages` messages over conversations of `--per-conversation` each
//! (one automated step message first, then the customer and the provider in
//! turn, the customer reading each provider reply, every fifth conversation
//! booked, one in ten provider replies naming a price), spread over
//! providers of `--per-provider` conversations. Then runs the rebuild the
//! command runs (`analytics::rebuild::rebuild`) on it and prints the elapsed
//! seconds and the domain events folded per second.
//!
//! The store runs with `durability: periodic` while it is filled (the fill
//! is not what is measured); the rebuild's own writes are what they are in
//! the daemon.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use tokio::task::JoinSet;

use parleyd::config::{Durability, StorageConfig};
use parleyd::domain::Stage;
use parleyd::model::{Automation, Booking, Listing, MessageType, SYSTEM_SENDER};
use parleyd::store::{NewMessage, Store};

#[derive(Parser, Debug)]
#[command(
    name = "parleyd-rebuild-bench",
    about = "Time `parleyd analytics rebuild` over a generated data directory"
)]
struct Cli {
    /// Messages to write (people's and automated).
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// Messages per conversation.
    #[arg(long, default_value_t = 20)]
    per_conversation: usize,
    /// Conversations per provider.
    #[arg(long, default_value_t = 50)]
    per_provider: usize,
    /// Conversations written at once while filling.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Data directory (default: a temporary one, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Sled cache, MiB.
    #[arg(long, default_value_t = 512)]
    cache_mb: u64,
}

/// Virtual time of the first conversation; each starts a minute later.
const EPOCH_S: i64 = 1_893_456_000; // 2030-01-01T00:00:00Z

fn at(secs: i64) -> String {
    jiff::Timestamp::from_second(EPOCH_S + secs)
        .map(parleyd::model::format_time)
        .unwrap_or_default()
}

fn listing(i: usize, per_provider: usize) -> Listing {
    Listing {
        id: format!("l-{i}"),
        title: format!("Kayak tour {i}"),
        price: Some(80.0),
        currency: Some("EUR".into()),
        provider_id: format!("p-{}", i / per_provider),
        primary_image: None,
        badges: vec![],
        response_time: None,
        availability: vec![],
        included: vec![],
        address: None,
        timezone: None,
        updated_at: at(0),
    }
}

fn message(conversation: &str, sender: &str, n: usize, text: String, when: String) -> NewMessage {
    NewMessage {
        conversation_id: conversation.to_owned(),
        sender_id: sender.to_owned(),
        client_id: format!("{conversation}-{n}"),
        content: text,
        kind: MessageType::Text,
        created_at: when,
        moderation: None,
        automation: None,
        actions: Vec::new(),
        attachments: Vec::new(),
        quick_reply_id: None,
        fingerprint: None,
    }
}

/// Writes conversation `i` whole.
async fn conversation(store: &Store, i: usize, cli: &Cli) -> Result<(), String> {
    let listing = listing(i, cli.per_provider);
    let customer = format!("c-{i}");
    let start = i64::try_from(i).unwrap_or(0) * 60;
    let (c, _) = store
        .open_conversation(&listing, &customer, &at(start))
        .await
        .map_err(|e| e.to_string())?;
    let mut clock = start;
    for n in 0..cli.per_conversation {
        clock += 600;
        let new = if n == 0 {
            NewMessage {
                kind: MessageType::Automated,
                automation: Some(Box::new(Automation {
                    rule: "inquiry_follow_up".into(),
                    step: "acknowledge".into(),
                    template: "inquiry_ack".into(),
                    recipient_id: customer.clone(),
                    experiment: None,
                    variant: None,
                })),
                ..message(
                    &c.id,
                    SYSTEM_SENDER,
                    n,
                    "Thanks for asking!".into(),
                    at(clock),
                )
            }
        } else if n % 2 == 1 {
            message(
                &c.id,
                &customer,
                n,
                format!("Question {n} about the tour?"),
                at(clock),
            )
        } else {
            let text = match n % 10 {
                2 => format!("It is €{} per person.", 60 + n),
                _ => format!("Answer {n}: yes, that works."),
            };
            message(&c.id, &listing.provider_id, n, text, at(clock))
        };
        let from_provider = new.sender_id == listing.provider_id;
        let (stored, _) = store.append_message(new).await.map_err(|e| e.to_string())?;
        if from_provider {
            if let parleyd::store::Stored::Message(m) = stored {
                store
                    .mark_read(&c.id, &customer, m.seq, &at(clock + 60))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    if i % 5 == 0 {
        let booking = Booking {
            id: format!("b-{i}"),
            conversation_id: c.id.clone(),
            listing_id: listing.id.clone(),
            customer_id: customer.clone(),
            provider_id: listing.provider_id.clone(),
            start: at(clock + 86_400 * 30),
            end: at(clock + 86_400 * 30 + 7_200),
            stage: Stage::Confirmed,
            created_at: at(clock + 300),
            updated_at: at(clock + 300),
            completed_at: None,
        };
        store
            .create_booking(&booking, &listing.card())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let cli = Arc::new(Cli::parse());
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = cli.dir.clone().unwrap_or_else(|| scratch.path().to_owned());
    let config = StorageConfig {
        durability: Durability::Periodic,
        cache_capacity_mb: cli.cache_mb,
        ..StorageConfig::default()
    };
    let store = Store::open(&dir, &config, Arc::new(|_| {})).map_err(|e| e.to_string())?;
    let conversations = cli.messages.div_ceil(cli.per_conversation.max(1));
    for i in 0..conversations {
        store
            .put_listing(&listing(i, cli.per_provider))
            .map_err(|e| e.to_string())?;
    }
    let fill = Instant::now();
    let mut workers = JoinSet::new();
    for w in 0..cli.concurrency.max(1) {
        let (store, cli) = (store.clone(), cli.clone());
        workers.spawn(async move {
            for i in (w..conversations).step_by(cli.concurrency.max(1)) {
                conversation(&store, i, &cli).await?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    println!(
        "filled: {conversations} conversations, {} messages in {:.1} s ({})",
        conversations * cli.per_conversation,
        fill.elapsed().as_secs_f64(),
        dir.display()
    );

    let started = Instant::now();
    let rebuilt = parleyd::analytics::rebuild::rebuild(&store)
        .await
        .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "rebuild: {} conversations, {} events in {secs:.2} s ({:.0} events/s)",
        rebuilt.conversations,
        rebuilt.events,
        rebuilt.events as f64 / secs
    );
    Ok(())
}
