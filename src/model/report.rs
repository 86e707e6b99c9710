//! What the provider reports add to the analytics records: counts kept per
//! inquiry cohort (`DailyAggregate::cohort`), so a period's figures, for any
//! provider, are sums over the days its inquiries arrived on
//! (`analytics::report` defines them; README.md, "Provider reports").

use serde::{Deserialize, Serialize};

use super::analytics::ReadTally;

/// The counts of the conversations whose inquiry arrived on one day, as
/// they stand now: a reply or a read weeks later still counts on the
/// inquiry's day. Per conversation these are
/// `analytics::report::cohort_counts`; a day's are their sum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortCounts {
    /// Customer messages, and those a provider reply came after.
    #[serde(default)]
    pub customer_messages: u64,
    #[serde(default)]
    pub answered_messages: u64,
    /// Messages the provider wrote, and those sent with a quick reply.
    #[serde(default)]
    pub provider_messages: u64,
    #[serde(default)]
    pub provider_quick_replies: u64,
    /// Messages addressed to the provider, and read by them.
    #[serde(default)]
    pub to_provider: ReadTally,
    /// Booked conversations by the bucket of their first response time
    /// (`FIRST_RESPONSE_BOUNDS`; unanswered ones are in none).
    #[serde(default)]
    pub booked_by_first_response: [u64; 8],
}

impl CohortCounts {
    /// `self += other`, count by count.
    pub fn add(&mut self, other: &CohortCounts) {
        self.customer_messages += other.customer_messages;
        self.answered_messages += other.answered_messages;
        self.provider_messages += other.provider_messages;
        self.provider_quick_replies += other.provider_quick_replies;
        self.to_provider.addressed += other.to_provider.addressed;
        self.to_provider.read += other.to_provider.read;
        for (a, b) in self
            .booked_by_first_response
            .iter_mut()
            .zip(other.booked_by_first_response)
        {
            *a += b;
        }
    }

    /// `self - earlier`, count by count (counts only grow; a smaller one
    /// gives 0).
    pub fn since(&self, earlier: &CohortCounts) -> CohortCounts {
        let mut booked = [0; 8];
        for (i, slot) in booked.iter_mut().enumerate() {
            *slot = self.booked_by_first_response[i]
                .saturating_sub(earlier.booked_by_first_response[i]);
        }
        CohortCounts {
            customer_messages: self
                .customer_messages
                .saturating_sub(earlier.customer_messages),
            answered_messages: self
                .answered_messages
                .saturating_sub(earlier.answered_messages),
            provider_messages: self
                .provider_messages
                .saturating_sub(earlier.provider_messages),
            provider_quick_replies: self
                .provider_quick_replies
                .saturating_sub(earlier.provider_quick_replies),
            to_provider: ReadTally {
                addressed: self
                    .to_provider
                    .addressed
                    .saturating_sub(earlier.to_provider.addressed),
                read: self
                    .to_provider
                    .read
                    .saturating_sub(earlier.to_provider.read),
            },
            booked_by_first_response: booked,
        }
    }
}
