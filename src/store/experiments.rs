//! Experiment records (`model::experiment`), in one tree:
//!
//! | tree          | key                                 | value                |
//! |---------------|-------------------------------------|----------------------|
//! | `experiments` | `u` `\0` unit kind `\0` unit id     | `UnitExposures` JSON |
//! | `experiments` | `t` `\0` experiment `\0` variant    | `Tally` JSON         |
//!
//! One record per unit holds all its exposures, so folding an event reads one
//! key per unit it names; tallies are counters, so results read one key per
//! variant. What to write is decided by `analytics::experiments`.

use std::collections::BTreeMap;

use super::automation::TxError;
use super::AnalyticsTx;
use super::{decode, encode, Store, StoreError};
use crate::model::experiment::{Tally, UnitExposures, UnitKind};

const SEP: u8 = 0;

fn unit_key(kind: UnitKind, id: &str) -> Vec<u8> {
    [
        b"u".as_slice(),
        &[SEP],
        kind.name().as_bytes(),
        &[SEP],
        id.as_bytes(),
    ]
    .concat()
}

fn tally_prefix(experiment: &str) -> Vec<u8> {
    [b"t".as_slice(), &[SEP], experiment.as_bytes(), &[SEP]].concat()
}

fn tally_key(experiment: &str, variant: &str) -> Vec<u8> {
    [tally_prefix(experiment).as_slice(), variant.as_bytes()].concat()
}

impl AnalyticsTx<'_, '_> {
    /// The exposures of unit `id` of `kind`.
    pub fn unit_exposures(&self, kind: UnitKind, id: &str) -> Result<UnitExposures, TxError> {
        Ok(self
            .get(self.tx.experiments, &unit_key(kind, id))?
            .unwrap_or_default())
    }

    pub fn put_unit_exposures(
        &self,
        kind: UnitKind,
        id: &str,
        exposures: &UnitExposures,
    ) -> Result<(), TxError> {
        self.put(self.tx.experiments, unit_key(kind, id), encode(exposures))
    }

    /// What `variant` of `experiment` counted so far.
    pub fn tally(&self, experiment: &str, variant: &str) -> Result<Tally, TxError> {
        Ok(self
            .get(self.tx.experiments, &tally_key(experiment, variant))?
            .unwrap_or_default())
    }

    pub fn put_tally(&self, experiment: &str, variant: &str, tally: &Tally) -> Result<(), TxError> {
        self.put(
            self.tx.experiments,
            tally_key(experiment, variant),
            encode(tally),
        )
    }
}

impl Store {
    /// The exposures of unit `id` of `kind` (outside a transaction).
    pub fn unit_exposures(&self, kind: UnitKind, id: &str) -> Result<UnitExposures, StoreError> {
        Ok(self
            .get(&self.trees.experiments, &unit_key(kind, id))?
            .unwrap_or_default())
    }

    /// Every variant's tally of `experiment`, by variant name (one key per
    /// variant that has one).
    pub fn tallies(&self, experiment: &str) -> Result<BTreeMap<String, Tally>, StoreError> {
        let prefix = tally_prefix(experiment);
        self.trees
            .experiments
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, value) = entry?;
                let variant = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                Ok((variant, decode(&value)?))
            })
            .collect()
    }
}

impl Store {
    /// Rewrites every unit's exposures record with `change` (outside the
    /// writer: for `parleyd analytics rebuild`, the daemon stopped).
    pub fn map_unit_exposures(
        &self,
        change: impl Fn(UnitExposures) -> UnitExposures,
    ) -> Result<(), StoreError> {
        self.map_experiment_records(b"u", change)
    }

    /// Rewrites every variant's tally with `change` (as
    /// [`Store::map_unit_exposures`]).
    pub fn map_tallies(&self, change: impl Fn(Tally) -> Tally) -> Result<(), StoreError> {
        self.map_experiment_records(b"t", change)
    }

    /// Every moderation record, in id order (for a rebuild).
    pub fn every_flag(&self) -> impl Iterator<Item = Result<crate::model::Flag, StoreError>> + '_ {
        Store::every(&self.trees.flags)
    }

    fn map_experiment_records<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        kind: &[u8],
        change: impl Fn(T) -> T,
    ) -> Result<(), StoreError> {
        let prefix = [kind, &[SEP]].concat();
        for entry in self.trees.experiments.scan_prefix(&prefix) {
            let (key, value) = entry?;
            let changed = change(decode(&value)?);
            self.trees.experiments.insert(key, encode(&changed))?;
        }
        Ok(())
    }
}
