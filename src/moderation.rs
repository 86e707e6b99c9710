//! Contact moderation on the send path: the detector finds contact details, the
//! running rule set's policy decides for the conversation's phase and stage, and
//! the outcome says what the recipient sees, what operators keep, and what the
//! sender is told. Nothing here writes; the store stores the outcome with the
//! message in one transaction.

use crate::contact::{mask, Action, Analysis, ContactKind, ContactPolicy, Decision, Detector};
use crate::model::{Conversation, Flag, Moderation, Phase, Stage};
use crate::store::Moderated;

/// A message's fate under the policy.
pub struct Outcome {
    /// The content the recipient gets.
    pub content: String,
    /// `None` when no contact detail was found.
    pub moderated: Option<Moderated>,
}

pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::PreBooking => "pre_booking",
        Phase::PostBooking => "post_booking",
    }
}

/// The policy's decision for a conversation as it is now.
pub fn decide(
    policy: &ContactPolicy,
    conversation: &Conversation,
    analysis: &Analysis,
) -> Decision {
    policy.decide(
        phase_name(conversation.phase),
        conversation.stage.map(Stage::name),
        analysis,
    )
}

/// What the sender is told; `None` when the message went through untouched.
pub fn notice(action: Action, types: &[ContactKind]) -> Option<String> {
    let what = types
        .iter()
        .map(|t| match t {
            ContactKind::Phone => "a phone number",
            ContactKind::Email => "an email address",
            ContactKind::Url => "a link",
            ContactKind::Social => "a social media account",
            ContactKind::MessagingApp => "a messaging app",
            ContactKind::Payment => "a payment account",
        })
        .collect::<Vec<_>>()
        .join(", ");
    match action {
        Action::Allow => None,
        Action::Warn => Some(format!(
            "Your message mentions {what}. For your protection, keep conversations and payments on the platform."
        )),
        Action::Mask => Some(format!(
            "Your message was delivered with {what} hidden: contact details can't be shared at this stage."
        )),
        Action::Block => Some(format!(
            "Your message was not delivered: it contains {what}, which can't be shared at this stage."
        )),
    }
}

/// A type's or an action's name as the API and `rules/contact.yaml` write
/// it (`messaging_app`, `block`): the label values of the contact metrics.
/// Both are unit enums, written as strings; anything else would be labelled
/// `other` rather than make a series per value.
fn api_name(value: impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "other".to_owned(),
    }
}

pub struct Moderator {
    detector: Detector,
    history: usize,
}

/// Who sent what where, for the operators' record.
pub struct Submission<'a> {
    pub conversation: &'a Conversation,
    pub sender_id: &'a str,
    pub client_id: &'a str,
    pub content: &'a str,
    pub at: &'a str,
}

impl Moderator {
    pub fn new(detector: Detector, history: usize) -> Moderator {
        Moderator { detector, history }
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// How many of the sender's previous messages detection looks at.
    pub fn history_len(&self) -> usize {
        self.history
    }

    /// Decides what happens to a message. `history` is the sender's previous
    /// messages (oldest first); `listing_address` (asked for only when a contact
    /// detail was found) is never one itself.
    pub fn moderate(
        &self,
        policy: &ContactPolicy,
        submission: &Submission<'_>,
        history: &[String],
        listing_address: impl FnOnce() -> Option<String>,
    ) -> Outcome {
        let history: Vec<&str> = history.iter().map(String::as_str).collect();
        let mut analysis = self
            .detector
            .analyze_with_history(submission.content, &history);
        if analysis.has_contact {
            if let Some(address) = listing_address() {
                analysis = self.detector.analyze_with_context(
                    submission.content,
                    &history,
                    Some(&address),
                );
            }
        }
        if !analysis.has_contact {
            return Outcome {
                content: submission.content.to_owned(),
                moderated: None,
            };
        }
        let decision = decide(policy, submission.conversation, &analysis);
        let types = crate::model::kinds_found(&analysis.detections);
        for t in &types {
            metrics::counter!("parleyd_contact_detections_total", "type" => api_name(t))
                .increment(1);
        }
        metrics::counter!("parleyd_contact_actions_total", "action" => api_name(decision.action))
            .increment(1);
        let content = if decision.action == Action::Mask {
            mask(
                submission.content,
                &decision.masked,
                &policy.mask_replacement,
            )
        } else {
            submission.content.to_owned()
        };
        let keep_original =
            decision.flag || matches!(decision.action, Action::Mask | Action::Block);
        let flag = keep_original.then(|| Flag {
            id: uuid::Uuid::now_v7().to_string(),
            conversation_id: submission.conversation.id.clone(),
            sender_id: submission.sender_id.to_owned(),
            client_id: submission.client_id.to_owned(),
            message_seq: None,
            action: decision.action,
            review: decision.flag,
            original: submission.content.to_owned(),
            detections: analysis.detections.clone(),
            reasons: decision.reasons.clone(),
            created_at: submission.at.to_owned(),
        });
        Outcome {
            content,
            moderated: Some(Moderated {
                notice: notice(decision.action, &types),
                note: Moderation {
                    action: decision.action,
                    types,
                    flagged: decision.flag,
                },
                flag,
            }),
        }
    }
}
