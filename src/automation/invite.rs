//! The calendar invite (.ics, RFC 5545) attached to a booking confirmation.

use icalendar::{Calendar, Component, EventLike};

use crate::model::{Attachment, Booking};

/// The iTIP method (RFC 5546 §1.4): the invite is published for the reader's
/// calendar, not a request for a reply. The text/calendar registration (RFC
/// 5545 §8.1) wants the MIME type's `method` parameter and the calendar's
/// METHOD property (§3.7.2) both present and equal, so both come from here.
const METHOD: &str = "PUBLISH";

fn ics_time(rfc3339: &str) -> Option<String> {
    let t: jiff::Timestamp = rfc3339.parse().ok()?;
    Some(t.strftime("%Y%m%dT%H%M%SZ").to_string())
}

/// The booking as a one-event calendar, or `None` if its times are unreadable.
pub fn invite(
    booking: &Booking,
    title: &str,
    address: Option<&str>,
    now: &str,
) -> Option<Attachment> {
    let mut event = icalendar::Event::new();
    event
        .uid(&format!("booking-{}@parleyd", booking.id))
        .summary(title)
        .add_property("DTSTAMP", ics_time(now)?)
        .add_property("DTSTART", ics_time(&booking.start)?)
        .add_property("DTEND", ics_time(&booking.end)?);
    if let Some(address) = address {
        event.location(address);
    }
    let calendar = Calendar::new()
        .append_property(("METHOD", METHOD))
        .push(event.done())
        .done();
    Some(Attachment {
        filename: "booking.ics".into(),
        content_type: format!("text/calendar; charset=utf-8; method={METHOD}"),
        content: calendar.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Stage;

    #[test]
    fn the_invite_carries_the_booking_period() {
        let booking = Booking {
            id: "b1".into(),
            conversation_id: "c1".into(),
            listing_id: "l1".into(),
            customer_id: "u1".into(),
            provider_id: "p1".into(),
            start: "2026-12-01T10:00:00Z".into(),
            end: "2026-12-01T12:30:00Z".into(),
            stage: Stage::Confirmed,
            created_at: "2026-11-20T09:00:00Z".into(),
            updated_at: "2026-11-20T09:00:00Z".into(),
            completed_at: None,
        };
        let ics = invite(
            &booking,
            "Pottery class",
            Some("1 Rue X"),
            "2026-11-20T09:00:00Z",
        )
        .unwrap()
        .content;
        assert!(ics.starts_with("BEGIN:VCALENDAR"), "{ics}");
        // The email's Content-Type says method=PUBLISH; the calendar must too.
        assert!(ics.contains("\r\nMETHOD:PUBLISH\r\n"), "{ics}");
        assert!(ics.contains("DTSTART:20261201T100000Z"), "{ics}");
        assert!(ics.contains("DTEND:20261201T123000Z"), "{ics}");
        assert!(ics.contains("SUMMARY:Pottery class"), "{ics}");
        assert!(ics.contains("UID:booking-b1@parleyd"), "{ics}");
    }
}
