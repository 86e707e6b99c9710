//! The outbound channels, each a real protocol: email over SMTP (lettre), and
//! push, SMS and webhooks as JSON POSTs (reqwest). Every request carries the
//! delivery's idempotency key (`Idempotency-Key` header; an email's
//! `Message-ID`), so a receiver can drop the duplicate an at-least-once retry
//! may produce after a crash.
//!
//! Webhooks are signed: `Parleyd-Signature: v1=<hex>` is the HMAC-SHA256, keyed
//! with the webhook secret, of `<Parleyd-Timestamp>.<body>` (the timestamp is
//! Unix seconds). A receiver recomputes it over the raw body, compares in
//! constant time, and rejects old timestamps to stop replays.

use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::json;
use sha2::Sha256;

use crate::config::NotifyConfig;
use crate::model::notification::{Lane, Notification};
use crate::model::User;

/// Why an attempt failed: worth retrying, or not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
}

pub struct Channels {
    http: reqwest::Client,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    push_url: Option<String>,
    sms_url: Option<String>,
    webhook_url: Option<String>,
    webhook_secret: Vec<u8>,
}

/// The key a receiver de-duplicates on.
pub fn idempotency_key(notification: &Notification, lane: Lane) -> String {
    format!("{}:{}", notification.id, lane.name())
}

/// `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        // HMAC takes keys of any length.
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

impl Channels {
    pub fn new(config: &NotifyConfig) -> Result<Channels, String> {
        // reqwest and lettre are built on rustls without a default provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = crate::clock::parse_duration(&config.timeout)?
            .try_into()
            .unwrap_or(Duration::from_secs(10));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let smtp = config
            .smtp_url
            .as_deref()
            .map(|url| {
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map(|b| b.timeout(Some(timeout)).build())
                    .map_err(|e| format!("notify.smtp_url: {e}"))
            })
            .transpose()?;
        Ok(Channels {
            http,
            smtp,
            from: config
                .email_from
                .parse()
                .map_err(|e| format!("notify.email_from: {e}"))?,
            push_url: config.push_url.clone(),
            sms_url: config.sms_url.clone(),
            webhook_url: config.webhook_url.clone(),
            webhook_secret: config
                .webhook_secret
                .clone()
                .unwrap_or_default()
                .into_bytes(),
        })
    }

    /// One attempt to deliver `notification` on `lane` (not in-app, which the
    /// store delivers).
    pub async fn send(
        &self,
        lane: Lane,
        notification: &Notification,
        user: Option<&User>,
        now: jiff::Timestamp,
    ) -> Result<(), SendError> {
        let key = idempotency_key(notification, lane);
        let missing = |what: &str| SendError::Permanent(format!("no {what} configured"));
        match lane {
            Lane::Email => {
                let to = user
                    .and_then(|u| u.email.as_deref())
                    .ok_or_else(|| SendError::Permanent("the user has no email".into()))?;
                self.email(notification, to).await
            }
            Lane::Push => {
                let url = self
                    .push_url
                    .as_deref()
                    .ok_or_else(|| missing("push_url"))?;
                let body = json!({
                    "id": key,
                    "notification_id": notification.id,
                    "user_id": notification.user_id,
                    "type": notification.kind,
                    "priority": notification.priority,
                    "title": notification.title,
                    "body": notification.text,
                    "conversation_id": notification.conversation_id,
                    "message_seq": notification.message_seq,
                    "created_at": notification.created_at,
                });
                self.post(url, &key, body.to_string().into_bytes(), Vec::new())
                    .await
            }
            Lane::Sms => {
                let url = self.sms_url.as_deref().ok_or_else(|| missing("sms_url"))?;
                let to = user
                    .and_then(|u| u.phone.as_deref())
                    .ok_or_else(|| SendError::Permanent("the user has no phone".into()))?;
                let body = json!({
                    "id": key,
                    "to": to,
                    "text": notification.text,
                    "priority": notification.priority,
                });
                self.post(url, &key, body.to_string().into_bytes(), Vec::new())
                    .await
            }
            Lane::Webhook => {
                let url = self
                    .webhook_url
                    .as_deref()
                    .ok_or_else(|| missing("webhook_url"))?;
                let body = notification.payload.to_string().into_bytes();
                let timestamp = now.as_second();
                let headers = vec![
                    ("Parleyd-Event", notification.event.clone()),
                    ("Parleyd-Timestamp", timestamp.to_string()),
                    (
                        "Parleyd-Signature",
                        signature(&self.webhook_secret, timestamp, &body),
                    ),
                ];
                self.post(url, &key, body, headers).await
            }
            Lane::InApp | Lane::Digest => Err(SendError::Permanent(format!(
                "{} is not an outbound channel",
                lane.name()
            ))),
        }
    }

    async fn post(
        &self,
        url: &str,
        key: &str,
        body: Vec<u8>,
        headers: Vec<(&'static str, String)>,
    ) -> Result<(), SendError> {
        let mut request = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", key)
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| SendError::Transient(format!("POST {url}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let error = format!("POST {url}: HTTP {status}");
        // Timeouts, throttling and server errors pass; any other refusal is
        // the request's fault and would be refused again.
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(SendError::Transient(error))
        } else {
            Err(SendError::Permanent(error))
        }
    }

    async fn email(&self, notification: &Notification, to: &str) -> Result<(), SendError> {
        let smtp = self
            .smtp
            .as_ref()
            .ok_or_else(|| SendError::Permanent("no smtp_url configured".into()))?;
        let to: Mailbox = to
            .parse()
            .map_err(|e| SendError::Permanent(format!("recipient {to:?}: {e}")))?;
        let builder = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(notification.title.clone())
            .message_id(Some(format!("<{}.email@parleyd>", notification.id)));
        let text = notification.text.clone();
        let attachments: Vec<SinglePart> = notification
            .attachments
            .iter()
            .map(|a| {
                let kind = ContentType::parse(&a.content_type).unwrap_or(ContentType::TEXT_PLAIN);
                Attachment::new(a.filename.clone()).body(a.content.clone(), kind)
            })
            .collect();
        // Plain text, or text and HTML as alternatives; attachments wrap
        // either in multipart/mixed.
        let built = match (&notification.html, attachments.is_empty()) {
            (None, true) => builder.singlepart(SinglePart::plain(text)),
            (Some(html), true) => {
                builder.multipart(MultiPart::alternative_plain_html(text, html.clone()))
            }
            (html, false) => {
                let mixed = match html {
                    Some(html) => MultiPart::mixed()
                        .multipart(MultiPart::alternative_plain_html(text, html.clone())),
                    None => MultiPart::mixed().singlepart(SinglePart::plain(text)),
                };
                builder.multipart(attachments.into_iter().fold(mixed, MultiPart::singlepart))
            }
        };
        let email =
            built.map_err(|e| SendError::Permanent(format!("cannot build the email: {e}")))?;
        match smtp.send(email).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("SMTP: {e}"))),
            Err(e) => Err(SendError::Transient(format!("SMTP: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: Python's hmac over b'1700000000.{"a":1}'.
        assert_eq!(
            signature(b"secret", 1_700_000_000, b"{\"a\":1}"),
            "v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
