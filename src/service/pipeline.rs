//! The automation pipeline for operators: components, backlog, dead items,
//! re-drive, fault injection, the rule set in force.

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
