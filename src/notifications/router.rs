//! From a domain event to the notifications it raises, by `rules/routing.yaml`:
//! who is told, on which channels, and when each channel falls due (read
//! grace, quiet hours, digest window, fallbacks). Called by the engine, which
//! stores the result in the transaction that acknowledges the event.

use jiff::Timestamp;
use serde_json::json;

use super::quiet;
use crate::domain::DomainEvent;
use crate::model::notification::Priority;
use crate::model::notification::{ChannelDelivery, DeliveryState, Lane, Notification};
use crate::model::{format_time, Channel, Message, User};
use crate::rules::context::{person_value, reader_zone, Loaded};
use crate::rules::routing::{QuietHoursPolicy, Recipient, Route};
use crate::rules::script::{report, Context};
use crate::rules::RuleSet;
use crate::store::{Store, StoreError};

/// Which outbound channels have an endpoint configured; in-app always works.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enabled {
    pub push: bool,
    pub email: bool,
    pub sms: bool,
    pub webhook: bool,
}

impl Enabled {
    pub fn from_config(config: &crate::config::NotifyConfig) -> Enabled {
        Enabled {
            push: config.push_url.is_some(),
            email: config.smtp_url.is_some(),
            sms: config.sms_url.is_some(),
            webhook: config.webhook_url.is_some(),
        }
    }

    pub fn has(&self, channel: Channel) -> bool {
        match channel {
            Channel::InApp => true,
            Channel::Push => self.push,
            Channel::Email => self.email,
            Channel::Sms => self.sms,
        }
    }
}

/// Whether `route` can reach anyone here: it raises `event` and one of its
/// channels is usable. Checked before anything is read for the event.
pub fn may_route(route: &Route, event: &DomainEvent, enabled: Enabled) -> bool {
    route.on.iter().any(|n| event.is(n))
        && route
            .channels
            .iter()
            .chain(route.fallback.iter().flat_map(|f| &f.channels))
            .any(|c| enabled.has(*c))
}

/// What the router reads about one event.
pub struct Input<'a> {
    pub rules: &'a RuleSet,
    pub event: &'a DomainEvent,
    pub loaded: &'a Loaded,
    pub context: &'a Context,
    pub store: &'a Store,
    pub enabled: Enabled,
    pub now: Timestamp,
}

/// Why routing an event failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A route's `when` raised an error: the engine retries the event, then
    /// dead-letters it.
    #[error("notification {route}: when: {error}")]
    Condition { route: String, error: String },
}

/// The notifications `event` raises (none when nothing routes it).
pub fn route(input: &Input<'_>) -> Result<Vec<Notification>, RouteError> {
    let Input {
        rules,
        event,
        enabled,
        ..
    } = input;
    let mut raised: Vec<Notification> = Vec::new();
    let mut told: Vec<String> = Vec::new();
    let message = message_of(input)?;
    for route in rules
        .routing
        .routes
        .iter()
        .filter(|r| may_route(r, event, *enabled))
    {
        let recipients: Vec<String> = recipients(route.to, input, message.as_ref())
            .into_iter()
            .filter(|r| !told.contains(r))
            .collect();
        if recipients.is_empty() || !condition_holds(route, input.context)? {
            continue;
        }
        for recipient in recipients {
            told.push(recipient.clone());
            // The customer and provider are loaded already; only a signal's
            // user may be someone else.
            let loaded = [&input.loaded.customer, &input.loaded.provider]
                .into_iter()
                .flatten()
                .find(|u| u.id == recipient)
                .cloned();
            let user = match loaded {
                Some(user) => Some(user),
                None => input.store.user(&recipient)?,
            };
            if route.promotional && user.as_ref().is_some_and(|u| u.unsubscribed_promotional) {
                continue;
            }
            match notification(route, input, &recipient, user.as_ref(), message.as_ref()) {
                Ok(Some(n)) => raised.push(n),
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(notification = %route.name, %recipient, %reason,
                        "notification not raised");
                    metrics::counter!("parleyd_notifications_total",
                        "type" => route.name.clone(), "result" => "skipped")
                    .increment(1);
                }
            }
        }
    }
    if enabled.webhook && rules.routing.webhooks.iter().any(|n| event.is(n)) {
        raised.push(webhook(event, input.now));
    }
    Ok(raised)
}

fn condition_holds(route: &Route, context: &Context) -> Result<bool, RouteError> {
    let Some(when) = &route.when else {
        return Ok(true);
    };
    when.test(context).map_err(|e| {
        report(&format!("notification/{}", route.name), &e);
        RouteError::Condition {
            route: route.name.clone(),
            error: e.to_string(),
        }
    })
}

/// The message a message event is about.
fn message_of(input: &Input<'_>) -> Result<Option<Message>, StoreError> {
    let (Some(conversation), Some(seq)) = (
        &input.loaded.conversation,
        input.event.data.get("seq").and_then(|s| s.as_u64()),
    ) else {
        return Ok(None);
    };
    if !matches!(
        input.event.name.as_str(),
        "message_sent" | "automated_message_sent"
    ) {
        return Ok(None);
    }
    Ok(input
        .store
        .messages(&conversation.id, seq.saturating_sub(1), 1)?
        .into_iter()
        .next())
}

fn recipients(to: Recipient, input: &Input<'_>, message: Option<&Message>) -> Vec<String> {
    let loaded = input.loaded;
    match to {
        Recipient::Customer => loaded.customer_id.iter().cloned().collect(),
        Recipient::Provider => loaded.provider_id.iter().cloned().collect(),
        Recipient::User => input.event.subject.user_id.iter().cloned().collect(),
        Recipient::Recipient => match (message, &loaded.conversation) {
            (Some(m), Some(c)) => c
                .participants
                .iter()
                .filter(|p| m.is_for(&p.user_id))
                .map(|p| p.user_id.clone())
                .collect(),
            (Some(m), None) => m
                .automation
                .iter()
                .map(|a| a.recipient_id.clone())
                .collect(),
            _ => Vec::new(),
        },
    }
}

/// Whether the user may be reached on `channel`: not opted out, and with an
/// address for it.
fn reachable(user: Option<&User>, channel: Channel) -> bool {
    let Some(user) = user else {
        // Unknown to the directory: only their devices can be told.
        return channel == Channel::InApp;
    };
    if user.channels.get(&channel) == Some(&false) {
        return false;
    }
    match channel {
        Channel::Email => user.email.is_some(),
        Channel::Sms => user.phone.is_some(),
        Channel::InApp | Channel::Push => true,
    }
}

fn notification(
    route: &Route,
    input: &Input<'_>,
    recipient: &str,
    user: Option<&User>,
    message: Option<&Message>,
) -> Result<Option<Notification>, String> {
    let now_ms = input.now.as_millisecond();
    let hold = |at: Timestamp| match (route.quiet_hours, user) {
        (QuietHoursPolicy::Respect, Some(u)) => quiet::release(at, u),
        _ => at,
    };
    let after = |d: Option<jiff::SignedDuration>| {
        d.and_then(|d| input.now.checked_add(d).ok())
            .unwrap_or(input.now)
    };
    let usable = |c: &Channel| input.enabled.has(*c) && reachable(user, *c);
    let mut deliveries = Vec::new();
    for &channel in route.channels.iter().filter(|c| usable(c)) {
        let lane = Lane::from(channel);
        let delivery = if channel == Channel::InApp {
            ChannelDelivery::new(lane, now_ms)
        } else if route.batch {
            ChannelDelivery {
                state: DeliveryState::Batched,
                quiet_hours: route.quiet_hours == QuietHoursPolicy::Respect,
                ..ChannelDelivery::new(lane, hold(after(route.max_delay)).as_millisecond())
            }
        } else {
            ChannelDelivery {
                quiet_hours: route.quiet_hours == QuietHoursPolicy::Respect,
                suppress_if_read: route.read_grace.is_some() && message.is_some(),
                ..ChannelDelivery::new(lane, hold(after(route.read_grace)).as_millisecond())
            }
        };
        deliveries.push(delivery);
    }
    if let Some(fallback) = &route.fallback {
        for &channel in fallback.channels.iter().filter(|c| usable(c)) {
            deliveries.push(ChannelDelivery {
                quiet_hours: route.quiet_hours == QuietHoursPolicy::Respect,
                unless: Some(fallback.unless),
                ..ChannelDelivery::new(
                    Lane::from(channel),
                    hold(after(Some(fallback.after))).as_millisecond(),
                )
            });
        }
    }
    if deliveries.is_empty() {
        return Ok(None);
    }
    let Some(template) = input.rules.templates.get(&route.template) else {
        return Err(format!("no template {}", route.template));
    };
    let sender_name = message.map(|m| {
        [&input.loaded.customer, &input.loaded.provider]
            .into_iter()
            .flatten()
            .find(|u| u.id == m.sender_id)
            .and_then(|u| u.name.clone())
            .unwrap_or_else(|| m.sender_id.clone())
    });
    let context = input
        .context
        .clone()
        .with(
            "recipient",
            &user.map_or_else(|| json!({"id": recipient}), person_value),
        )
        .with(
            "message",
            &message.map_or(
                serde_json::Value::Null,
                |m| json!({"content": m.content, "seq": m.seq, "sender_name": sender_name}),
            ),
        )
        .with(
            "notification",
            &json!({"type": route.name, "priority": route.priority}),
        );
    let zone = reader_zone(user, input.loaded.listing.as_ref());
    let rendered = template.render_all(&context, &zone)?;
    Ok(Some(Notification {
        id: uuid::Uuid::now_v7().to_string(),
        kind: route.name.clone(),
        priority: route.priority,
        user_id: Some(recipient.to_owned()),
        created_at: format_time(input.now),
        event: input.event.name.clone(),
        conversation_id: input.loaded.conversation.as_ref().map(|c| c.id.clone()),
        message_seq: message.map(|m| m.seq),
        title: rendered
            .subject
            .unwrap_or_else(|| route.name.replace('_', " ")),
        text: rendered.text,
        html: rendered.html,
        attachments: message.map(|m| m.attachments.clone()).unwrap_or_default(),
        payload: serde_json::Value::Null,
        deliveries,
    }))
}

/// A signed post of the event to the marketplace backend.
fn webhook(event: &DomainEvent, now: Timestamp) -> Notification {
    let id = uuid::Uuid::now_v7().to_string();
    Notification {
        payload: json!({
            "id": id,
            "type": event.name,
            "aliases": event.aliases,
            "occurred_at": event.at,
            "subject": event.subject,
            "data": event.data,
        }),
        id,
        kind: "webhook".into(),
        priority: Priority::Medium,
        user_id: None,
        created_at: format_time(now),
        event: event.name.clone(),
        conversation_id: event.subject.conversation_id.clone(),
        message_seq: None,
        title: event.name.clone(),
        text: String::new(),
        html: None,
        attachments: Vec::new(),
        deliveries: vec![ChannelDelivery::new(Lane::Webhook, now.as_millisecond())],
    }
}
