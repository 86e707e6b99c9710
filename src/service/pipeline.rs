//! The automation pipeline for operators: components, backlog, whether it has
//! settled, dead items, re-drive, fault injection, the rule set in force.

use std::time::Duration;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::model::page_limit;
use crate::model::pipeline::DeadItem;
use crate::pipeline::Backlog;
use crate::rules::RulesStatus;
use crate::supervisor::{ComponentReport, State};

use super::App;

/// `GET /v1/admin/pipeline`: each background component's state, and what
/// waits in the pipeline.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PipelineReport {
    /// By name: `engine`, `scheduler`, `outbox.<channel>`, `outbox.retention`,
    /// `rules.reload`, `upkeep`, `writer`.
    pub components: Vec<ComponentReport>,
    #[serde(flatten)]
    pub backlog: Backlog,
}

/// The longest `GET /v1/admin/pipeline/settled` waits, in seconds.
pub const SETTLE_MAX_WAIT_SECONDS: u64 = 60;
/// How often a waiting settle call looks again: a handful of key reads.
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// `GET /v1/admin/pipeline/settled`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SettledReport {
    /// Nothing waits: every domain event committed before the answer is
    /// processed (or dead), every timer due on the daemon's clock has fired
    /// (or is dead), every due outbox entry has been attempted (a retry or a
    /// quiet-hours hold for later is done for now) and no delivery is in
    /// flight.
    pub settled: bool,
    /// The daemon's clock when it answered (RFC 3339).
    pub now: String,
    /// What still waited when the wait ran out, e.g. `event 42`,
    /// `timer <due ms> <instance> <step>`, `entry <due ms> <notification>`,
    /// `push: 1 in flight`; absent when settled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// `PUT /v1/admin/pipeline/components/{name}/fault` (dev only).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultInput {
    /// `true` ends the component's current run as a failure and fails every
    /// restart; `false` lets the next restart run (at once). For `writer`,
    /// which is not restarted, `true` stalls it (it takes no batch, as if the
    /// disk hung) and `false` lets it go on.
    pub fail: bool,
}

impl App {
    /// The components that are down or stuck (empty when all is well).
    pub fn unhealthy(&self) -> Vec<(String, State)> {
        self.supervisor.unhealthy()
    }

    /// What waits in the pipeline now (scans what is due: see
    /// [`Backlog::observe`]).
    pub fn backlog(&self) -> Result<Backlog, crate::store::StoreError> {
        Backlog::observe(&self.store, self.clock.now())
    }

    /// The pipeline for operators; also refreshes its gauges.
    pub fn pipeline(&self, caller: Caller) -> Result<PipelineReport, ApiError> {
        caller.require(&[Role::Operator])?;
        let backlog = self.backlog()?;
        backlog.record();
        Ok(PipelineReport {
            components: self.supervisor.report(),
            backlog,
        })
    }

    /// Waits up to `wait_seconds` (capped at [`SETTLE_MAX_WAIT_SECONDS`];
    /// 0: answers at once) for the pipeline to settle
    /// ([`crate::pipeline::unsettled`]), so that a test or an operator can
    /// assert that something did *not* happen once everything due has run.
    pub async fn settled(
        &self,
        caller: Caller,
        wait_seconds: Option<u64>,
    ) -> Result<SettledReport, ApiError> {
        caller.require(&[Role::Operator])?;
        let wait = wait_seconds.unwrap_or(0).min(SETTLE_MAX_WAIT_SECONDS);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        let wakers = self.engine.as_ref().map(|e| e.outbox_wakers());
        loop {
            let now = self.clock.now();
            let waiting = crate::pipeline::unsettled(&self.store, wakers.as_deref(), now)?;
            if waiting.is_none() || tokio::time::Instant::now() >= deadline {
                return Ok(SettledReport {
                    settled: waiting.is_none(),
                    now: crate::model::format_time(now),
                    waiting,
                });
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// Makes a component fail (the writer: stall) on purpose, to see
    /// supervision and back-pressure at work. Only on the manual clock
    /// (`clock: manual`, which needs `--dev`): 404 otherwise, as for an
    /// unknown component.
    pub fn inject_fault(
        &self,
        caller: Caller,
        name: &str,
        input: FaultInput,
    ) -> Result<ComponentReport, ApiError> {
        caller.require(&[Role::Operator])?;
        let component = self
            .manual_clock
            .as_ref()
            .and_then(|_| self.supervisor.component(name))
            .ok_or_else(|| ApiError::not_found("component"))?;
        component.inject_fault(input.fail);
        Ok(component.report(self.config.pipeline.stuck_after))
    }

    /// The automation pipeline's dead-letter list, oldest first.
    pub fn pipeline_dead(
        &self,
        caller: Caller,
        limit: Option<usize>,
    ) -> Result<Vec<DeadItem>, ApiError> {
        caller.require(&[Role::Operator])?;
        Ok(self.store.dead_items(page_limit(limit, 50)?)?)
    }

    /// Takes a dead event or step off the list and queues it again with fresh
    /// attempts, to be evaluated with the rules in force now; the entry as it
    /// was. 404 if `id` is not on the list.
    pub async fn redrive_pipeline(&self, caller: Caller, id: &str) -> Result<DeadItem, ApiError> {
        caller.require(&[Role::Operator])?;
        let now = crate::model::format_time(self.clock.now());
        let item = crate::automation::changes::redrive(&self.store, id, now)
            .await?
            .ok_or_else(|| ApiError::not_found("dead letter"))?;
        crate::automation::count_dead(&self.store);
        if let Some(engine) = &self.engine {
            engine.wake_scheduler();
        }
        Ok(item)
    }

    pub fn rules_status(&self, caller: Caller) -> Result<RulesStatus, ApiError> {
        caller.require(&[Role::Operator])?;
        Ok(self.rules.status())
    }
}
