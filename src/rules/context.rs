//! What rules, templates and plugins can read about an event or an instance:
//! the conversation, listing, booking and people it concerns, as the store has
//! them now.

use jiff::tz::TimeZone;
use serde_json::{json, Value};

use super::script::Context;
use crate::clock::Clock;
use crate::domain::{DomainEvent, Subject};
use crate::model::{format_time, Booking, Conversation, Listing, User};
use crate::store::{Store, StoreError};

/// The records a subject names, read once per evaluation.
#[derive(Debug, Default)]
pub struct Loaded {
    pub conversation: Option<Conversation>,
    pub listing: Option<Listing>,
    pub booking: Option<Booking>,
    pub customer: Option<User>,
    pub customer_id: Option<String>,
    pub provider_id: Option<String>,
    pub provider: Option<User>,
    pub trigger: Option<DomainEvent>,
}

fn read<T>(
    id: Option<&String>,
    get: impl Fn(&str) -> Result<Option<T>, StoreError>,
) -> Result<Option<T>, StoreError> {
    id.map_or(Ok(None), |id| get(id))
}

impl Loaded {
    pub fn read(
        store: &Store,
        subject: &Subject,
        trigger: &DomainEvent,
    ) -> Result<Loaded, StoreError> {
        let conversation = read(subject.conversation_id.as_ref(), |id| {
            store.conversation(id)
        })?;
        let c = conversation.as_ref();
        let listing_id = subject
            .listing_id
            .clone()
            .or_else(|| c.map(|c| c.listing_id.clone()));
        let booking_id = subject
            .booking_id
            .clone()
            .or_else(|| c.and_then(|c| c.booking_id.clone()));
        let listing = read(listing_id.as_ref(), |id| store.listing(id))?;
        let customer_id = subject
            .customer_id
            .clone()
            .or_else(|| c.map(|c| c.customer_id.clone()));
        let provider_id = subject
            .provider_id
            .clone()
            .or_else(|| c.map(|c| c.provider_id.clone()))
            .or_else(|| listing.as_ref().map(|l| l.provider_id.clone()));
        Ok(Loaded {
            booking: read(booking_id.as_ref(), |id| store.booking(id))?,
            customer: read(customer_id.as_ref(), |id| store.user(id))?,
            provider: read(provider_id.as_ref(), |id| store.user(id))?,
            conversation,
            listing,
            customer_id,
            provider_id,
            trigger: Some(trigger.clone()),
        })
    }

    /// The subject of a sequence started by `event`: everything known about it.
    pub fn subject(&self, event: &DomainEvent) -> Subject {
        Subject {
            conversation_id: self.conversation.as_ref().map(|c| c.id.clone()),
            listing_id: self.listing.as_ref().map(|l| l.id.clone()),
            booking_id: self.booking.as_ref().map(|b| b.id.clone()),
            customer_id: self.customer_id.clone(),
            provider_id: self.provider_id.clone(),
            user_id: None,
        }
        .or(&event.subject)
    }

    /// The context scripts and templates read.
    pub fn script_context(&self, clock: &dyn Clock) -> Context {
        let person = |id: &Option<String>, user: &Option<User>| match (id, user) {
            (_, Some(u)) => person_value(u),
            (Some(id), None) => json!({"id": id, "name": null, "email": null, "timezone": null}),
            (None, None) => Value::Null,
        };
        let listing = self.listing.as_ref().map_or(Value::Null, |l| {
            json!({
                "id": l.id, "title": l.title, "price": l.price, "currency": l.currency,
                "response_time": l.response_time, "open_dates": l.availability.len(),
                "address": l.address, "availability": l.availability,
                "timezone": l.timezone,
            })
        });
        let booking = self.booking.as_ref().map_or(Value::Null, booking_value);
        let conversation = self.conversation.as_ref().map_or(Value::Null, |c| {
            json!({
                "id": c.id, "phase": c.phase, "stage": c.stage,
                "inquiry_at": c.inquiry_at, "last_seq": c.last_seq,
            })
        });
        let event = self
            .trigger
            .as_ref()
            .map_or(Value::Null, |e| serde_json::to_value(e).unwrap_or_default());
        Context::default()
            .with("customer", &person(&self.customer_id, &self.customer))
            .with("provider", &person(&self.provider_id, &self.provider))
            .with("listing", &listing)
            .with("booking", &booking)
            .with("conversation", &conversation)
            .with("event", &event)
            .with("now", &Value::String(format_time(clock.now())))
    }
}

/// The time zone a reader sees times in: their own `timezone`, else the
/// listing's (where the booking takes place), else UTC. A name the tz
/// database does not know (validated on input, so only from an older
/// database) counts as absent.
pub fn reader_zone(reader: Option<&User>, listing: Option<&Listing>) -> TimeZone {
    [
        reader.and_then(|u| u.timezone.as_deref()),
        listing.and_then(|l| l.timezone.as_deref()),
    ]
    .into_iter()
    .flatten()
    .find_map(|name| TimeZone::get(name).ok())
    .unwrap_or(TimeZone::UTC)
}

/// A person as templates see them (`{customer.name}`, `{recipient.email}`).
pub fn person_value(u: &User) -> Value {
    json!({"id": u.id, "name": u.name, "email": u.email, "timezone": u.timezone})
}

/// A booking with its times also split into date and time of day, in UTC
/// (for conditions; templates show them on the reader's clock).
fn booking_value(b: &Booking) -> Value {
    let split = |ts: &str| -> (Value, Value) {
        match ts.parse::<jiff::Timestamp>() {
            Ok(t) => (
                t.strftime("%Y-%m-%d").to_string().into(),
                t.strftime("%H:%M").to_string().into(),
            ),
            Err(_) => (Value::Null, Value::Null),
        }
    };
    let (start_date, start_time) = split(&b.start);
    let (end_date, end_time) = split(&b.end);
    let hours = match (
        b.start.parse::<jiff::Timestamp>(),
        b.end.parse::<jiff::Timestamp>(),
    ) {
        (Ok(s), Ok(e)) => json!(e.duration_since(s).as_secs_f64() / 3600.0),
        _ => Value::Null,
    };
    json!({
        "id": b.id, "start": b.start, "end": b.end, "stage": b.stage,
        "start_date": start_date, "start_time": start_time,
        "end_date": end_date, "end_time": end_time, "duration_hours": hours,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(timezone: Option<&str>) -> User {
        User {
            id: "u".into(),
            name: None,
            email: None,
            phone: None,
            timezone: timezone.map(str::to_owned),
            quiet_hours: None,
            channels: Default::default(),
            unsubscribed_promotional: false,
            updated_at: String::new(),
        }
    }

    fn listing(timezone: Option<&str>) -> Listing {
        Listing {
            id: "l".into(),
            title: "Loft".into(),
            provider_id: "p".into(),
            timezone: timezone.map(str::to_owned),
            updated_at: String::new(),
            ..Listing::test_listing()
        }
    }

    #[test]
    fn the_reader_s_zone_then_the_listing_s_then_utc() {
        let paris = TimeZone::get("Europe/Paris").unwrap();
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        let zone =
            |u: Option<&str>, l: Option<&str>| reader_zone(Some(&user(u)), Some(&listing(l)));
        assert_eq!(zone(Some("Europe/Paris"), Some("Asia/Tokyo")), paris);
        assert_eq!(zone(None, Some("Asia/Tokyo")), tokyo);
        assert_eq!(zone(None, None), TimeZone::UTC);
        assert_eq!(reader_zone(None, Some(&listing(Some("Asia/Tokyo")))), tokyo);
        assert_eq!(reader_zone(None, None), TimeZone::UTC);
        // A name the database does not know is skipped, not an error.
        assert_eq!(zone(Some("Mars/Olympus"), Some("Asia/Tokyo")), tokyo);
    }
}
