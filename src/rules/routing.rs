//! Notification routing (`rules/routing.yaml`): which events notify whom, how
//! urgently, on which channels and when. Rules are tried in order; for each
//! event and recipient the first rule that matches decides (so a specific rule,
//! "booking confirmation", goes before a general one, "any automated message").
//!
//! ```yaml
//! notifications:
//!   - name: new_message
//!     on: [message_sent]
//!     to: recipient
//!     priority: high
//!     channels: [in_app, push, email]
//!     read_grace: 2m
//!     template: notify_new_message
//! digest:
//!   template: notify_digest
//! webhooks: [booking_created, message_sent]
//! ```

use serde::Deserialize;

use super::script::Expr;
use super::sequences::{condition, is_name, KnownEvents, SpecError};
use crate::model::notification::{Priority, Unless};
use crate::model::Channel;

/// The routing file, relative to the rules directory.
pub const ROUTING_FILE: &str = "routing.yaml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSpec {
    /// Signal types the rules may listen to, as in a sequence file.
    #[serde(default)]
    pub signals: Vec<String>,
    #[serde(default)]
    pub notifications: Vec<RouteSpec>,
    #[serde(default)]
    pub digest: Option<DigestSpec>,
    /// Domain events (names or aliases) posted, signed, to the marketplace
    /// backend's webhook.
    #[serde(default)]
    pub webhooks: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestSpec {
    pub template: String,
}

/// Who a notification is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipient {
    /// A message's addressee: the other participant(s) of a person's message,
    /// the recipient an automated message names.
    Recipient,
    Customer,
    Provider,
    /// The user the event names (`user_id`, e.g. a signal's).
    User,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuietHoursPolicy {
    /// Held until the recipient's quiet hours end.
    #[default]
    Respect,
    /// Sent at any hour (critical notifications only).
    Ignore,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSpec {
    pub after: String,
    pub unless: Unless,
    pub channels: Vec<Channel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Event names or aliases that raise it.
    pub on: Vec<String>,
    /// Rhai condition on the event's context (as for sequences).
    #[serde(default)]
    pub when: Option<String>,
    pub to: Recipient,
    pub priority: Priority,
    pub channels: Vec<Channel>,
    pub template: String,
    #[serde(default)]
    pub quiet_hours: QuietHoursPolicy,
    /// Push, email and SMS wait this long and are not sent if the recipient
    /// has read the message by then (in-app goes at once).
    #[serde(default)]
    pub read_grace: Option<String>,
    /// Collected into the recipient's digest instead of sent one by one.
    #[serde(default)]
    pub batch: bool,
    /// The longest the router holds it (read grace, digest window); quiet
    /// hours may hold it longer.
    #[serde(default)]
    pub max_delay: Option<String>,
    /// Not sent to users unsubscribed from promotional notifications.
    #[serde(default)]
    pub promotional: bool,
    #[serde(default)]
    pub fallback: Option<FallbackSpec>,
}

#[derive(Debug)]
pub struct Fallback {
    pub after: jiff::SignedDuration,
    pub unless: Unless,
    pub channels: Vec<Channel>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub on: Vec<String>,
    pub when: Option<Expr>,
    pub to: Recipient,
    pub priority: Priority,
    pub channels: Vec<Channel>,
    pub template: String,
    pub quiet_hours: QuietHoursPolicy,
    pub read_grace: Option<jiff::SignedDuration>,
    pub batch: bool,
    pub max_delay: Option<jiff::SignedDuration>,
    pub promotional: bool,
    pub fallback: Option<Fallback>,
}

#[derive(Debug, Default)]
pub struct Routing {
    pub routes: Vec<Route>,
    pub digest_template: Option<String>,
    pub webhooks: Vec<String>,
}

fn duration(
    text: &Option<String>,
    key: &str,
    what: &str,
    errors: &mut Vec<SpecError>,
) -> Option<jiff::SignedDuration> {
    let text = text.as_ref()?;
    match crate::clock::parse_duration(text) {
        Ok(d) if !d.is_negative() => Some(d),
        Ok(_) => {
            errors.push(SpecError::at(
                format!("{key}: {text}"),
                format!("{what}: {key} cannot be negative"),
            ));
            None
        }
        Err(e) => {
            errors.push(SpecError::at(
                format!("{key}: {text}"),
                format!("{what}: {key}: {e}"),
            ));
            None
        }
    }
}

fn unique(channels: &[Channel]) -> bool {
    channels
        .iter()
        .enumerate()
        .all(|(i, c)| !channels[..i].contains(c))
}

impl Route {
    fn compile(
        spec: RouteSpec,
        template_exists: &impl Fn(&str) -> bool,
        events: &KnownEvents,
    ) -> Result<Route, Vec<SpecError>> {
        let what = format!("notification {}", spec.name);
        let mut errors = Vec::new();
        let at_name = |message: String| SpecError::at(format!("name: {}", spec.name), message);
        if !is_name(&spec.name) {
            errors.push(at_name(format!(
                "{what}: the name must be lower_snake_case"
            )));
        }
        if spec.on.is_empty() {
            errors.push(at_name(format!("{what}: `on` names no event")));
        }
        for event in spec.on.iter().filter(|e| !is_name(e)) {
            errors.push(SpecError::at(
                event.clone(),
                format!("{what}: {event:?} is not an event name"),
            ));
        }
        let prefix = format!("{what}: ");
        errors.extend(
            spec.on
                .iter()
                .filter_map(|e| events.check(e, &prefix, "on")),
        );
        if spec.channels.is_empty() || !unique(&spec.channels) {
            errors.push(at_name(format!(
                "{what}: channels must name at least one channel, each once"
            )));
        }
        if !template_exists(&spec.template) {
            errors.push(SpecError::at(
                format!("template: {}", spec.template),
                format!("{what}: no template {:?} in templates/", spec.template),
            ));
        }
        if spec.quiet_hours == QuietHoursPolicy::Ignore && spec.priority != Priority::Critical {
            errors.push(at_name(format!(
                "{what}: only a critical notification may ignore quiet hours"
            )));
        }
        let read_grace = duration(&spec.read_grace, "read_grace", &what, &mut errors);
        let max_delay = duration(&spec.max_delay, "max_delay", &what, &mut errors);
        if spec.batch && max_delay.is_none() {
            errors.push(at_name(format!(
                "{what}: a batched notification needs max_delay (its digest window)"
            )));
        }
        if let (Some(grace), Some(max)) = (read_grace, max_delay) {
            if grace > max {
                errors.push(at_name(format!(
                    "{what}: read_grace is longer than max_delay"
                )));
            }
        }
        let fallback = spec.fallback.and_then(|f| {
            let after = duration(&Some(f.after.clone()), "after", &what, &mut errors)?;
            if f.channels.is_empty()
                || !unique(&f.channels)
                || f.channels.iter().any(|c| spec.channels.contains(c))
            {
                errors.push(at_name(format!(
                    "{what}: fallback channels must name at least one channel, each once, \
                     none of them already in `channels`"
                )));
            }
            Some(Fallback {
                after,
                unless: f.unless,
                channels: f.channels,
            })
        });
        let when = condition(&spec.when, &what, &mut errors);
        if !errors.is_empty() {
            SpecError::scope(&mut errors, &spec.name);
            return Err(errors);
        }
        Ok(Route {
            name: spec.name,
            on: spec.on,
            when,
            to: spec.to,
            priority: spec.priority,
            channels: spec.channels,
            template: spec.template,
            quiet_hours: spec.quiet_hours,
            read_grace,
            batch: spec.batch,
            max_delay,
            promotional: spec.promotional,
            fallback,
        })
    }
}

impl Routing {
    /// Its Rhai conditions, to place them in their file.
    pub fn scripts_mut(&mut self) -> impl Iterator<Item = &mut Expr> {
        self.routes.iter_mut().flat_map(|r| r.when.iter_mut())
    }

    /// Compiles the routing file; `template_exists` checks templates,
    /// `events` the names of `on` and `webhooks`.
    pub fn compile(
        spec: RoutingSpec,
        template_exists: impl Fn(&str) -> bool,
        events: &KnownEvents,
    ) -> Result<Routing, Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut routes: Vec<Route> = Vec::new();
        for route in spec.notifications {
            let name = route.name.clone();
            match Route::compile(route, &template_exists, events) {
                Ok(_) if routes.iter().any(|r| r.name == name) => errors.push(SpecError::at(
                    format!("name: {name}"),
                    format!("notification {name} is defined twice"),
                )),
                Ok(route) => routes.push(route),
                Err(e) => errors.extend(e),
            }
        }
        if let Some(digest) = &spec.digest {
            if !template_exists(&digest.template) {
                errors.push(SpecError::at(
                    format!("template: {}", digest.template),
                    format!("digest: no template {:?} in templates/", digest.template),
                ));
            }
        } else if routes.iter().any(|r| r.batch) {
            errors.push(SpecError::at(
                "batch: true",
                "batched notifications need `digest: {template: …}`".into(),
            ));
        }
        for event in spec.webhooks.iter().filter(|e| !is_name(e)) {
            errors.push(SpecError::at(
                event.clone(),
                format!("webhooks: {event:?} is not an event name"),
            ));
        }
        errors.extend(
            spec.webhooks
                .iter()
                .filter_map(|e| events.check(e, "", "webhooks")),
        );
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Routing {
            routes,
            digest_template: spec.digest.map(|d| d.template),
            webhooks: spec.webhooks,
        })
    }
}
