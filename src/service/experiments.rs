//! A/B experiment results for operators (`GET /v1/admin/experiments`,
//! `GET /v1/admin/experiments/{name}`): the experiments of the rules in force,
//! each with its variants' tallies ([`crate::analytics::experiments::results`]).

use crate::analytics::experiments::{results, ExperimentResults};
use crate::auth::{Caller, Role};
use crate::error::ApiError;

use super::App;

impl App {
    /// Every experiment of the rules in force, with its results.
    pub fn experiments(&self, caller: Caller) -> Result<Vec<ExperimentResults>, ApiError> {
        caller.require(&[Role::Operator])?;
        let rules = self.rules.current();
        let now = self.clock.now();
        rules
            .experiments
            .iter()
            .map(|e| Ok(results(e, &self.store.tallies(&e.name)?, now)))
            .collect()
    }

    /// One experiment's results; 404 if the rules in force have none by that
    /// name.
    pub fn experiment(&self, caller: Caller, name: &str) -> Result<ExperimentResults, ApiError> {
        caller.require(&[Role::Operator])?;
        let rules = self.rules.current();
        let experiment = rules
            .experiment(name)
            .ok_or_else(|| ApiError::NotFound(format!("no experiment {name:?} in the rules")))?;
        let tallies = self.store.tallies(name)?;
        Ok(results(experiment, &tallies, self.clock.now()))
    }
}
