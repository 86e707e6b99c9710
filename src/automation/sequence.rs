//! The sequence state machine: what starting, stopping, re-planning, firing,
//! dead-lettering and re-driving do to an [`Instance`] and its steps. Plain
//! functions over records; each returns what to write (the store's
//! [`InstanceWrite`]: the instance after the transition, and the timers to
//! cancel and to arm), or `None` when nothing changes.
//!
//! Step states: `Pending` (armed: it has a timer) → `Sent` | `Skipped` when it
//! fires, `Dropped` when re-planning removes it, `Dead` when it failed
//! `automation.max_attempts` times (no timer; a re-drive makes it `Pending`
//! again). An instance runs while a step is `Pending` or `Dead` (a dead step
//! waits for its re-drive, or for a stop); then it is finished: its record and
//! index entries go.

use crate::domain::{Instance, PlannedStep, StepState, Timer};
use crate::store::{InstanceWrite, Written};

/// The timer of a step of `instance`.
fn timer(instance: &Instance, step: &PlannedStep) -> Timer {
    Timer {
        due_ms: step.due_ms,
        instance: instance.id.clone(),
        step: step.name.clone(),
    }
}

/// The timers of `instance`'s pending steps.
pub fn timers(instance: &Instance) -> Vec<Timer> {
    instance.pending().map(|s| timer(instance, s)).collect()
}

/// Saves `instance`, or finishes it when no step is pending or dead.
fn settle(instance: Instance, cancel: Vec<Timer>) -> InstanceWrite {
    let running = instance
        .steps
        .iter()
        .any(|s| matches!(s.state, StepState::Pending | StepState::Dead));
    InstanceWrite {
        arm: timers(&instance),
        state: if running {
            Written::Running
        } else {
            Written::Finished
        },
        instance,
        cancel,
    }
}

/// Starts `new` unless an instance with its id is `running`, or none of its
/// steps is pending.
pub fn start(running: Option<&Instance>, new: Instance) -> Option<InstanceWrite> {
    if running.is_some() || new.pending().next().is_none() {
        return None;
    }
    Some(InstanceWrite {
        arm: timers(&new),
        cancel: Vec::new(),
        state: Written::Started,
        instance: new,
    })
}

/// Stops `instance`: its pending steps will not fire, its dead ones are not
/// re-driven.
pub fn stop(instance: Instance) -> InstanceWrite {
    InstanceWrite {
        cancel: timers(&instance),
        arm: Vec::new(),
        state: Written::Finished,
        instance,
    }
}

/// Moves `instance`'s pending and dropped steps: each named in `steps` to its
/// new time (`Ok`, milliseconds since the epoch; pending again) or dropped
/// (`Err`, the reason). Steps sent, skipped or dead stay so.
pub fn replan(mut instance: Instance, steps: &[(String, Result<i64, String>)]) -> InstanceWrite {
    let cancel = timers(&instance);
    for step in instance
        .steps
        .iter_mut()
        .filter(|s| matches!(s.state, StepState::Pending | StepState::Dropped))
    {
        match steps.iter().find(|(name, _)| *name == step.name) {
            Some((_, Ok(due))) => {
                step.due_ms = *due;
                step.state = StepState::Pending;
                step.note = None;
            }
            Some((_, Err(reason))) => {
                step.state = StepState::Dropped;
                step.note = Some(reason.clone());
            }
            None => {}
        }
    }
    settle(instance, cancel)
}

/// Records that the pending step of `timer` fired with `state` (`Sent` or
/// `Skipped`, and why); `None` if the step is not pending (cancelled or fired
/// already).
pub fn fired(
    mut instance: Instance,
    timer: &Timer,
    state: StepState,
    note: Option<String>,
) -> Option<InstanceWrite> {
    let step = instance
        .steps
        .iter_mut()
        .find(|s| s.name == timer.step && s.state == StepState::Pending)?;
    step.state = state;
    step.note = note;
    Some(settle(instance, vec![timer.clone()]))
}

/// Marks the pending step of `timer` dead (moved to the dead-letter list with
/// `error`): a re-plan leaves it so, and it no longer fires.
pub fn dead(instance: Instance, timer: &Timer, error: &str) -> Option<InstanceWrite> {
    fired(instance, timer, StepState::Dead, Some(error.to_owned()))
}

/// Re-drives the dead step `name` of `instance`: pending again, due at
/// `due_ms`; `None` if it is not dead (stopped or re-driven already).
pub fn redrive(mut instance: Instance, name: &str, due_ms: i64) -> Option<InstanceWrite> {
    let step = instance
        .steps
        .iter_mut()
        .find(|s| s.name == name && s.state == StepState::Dead)?;
    step.state = StepState::Pending;
    step.due_ms = due_ms;
    step.note = None;
    Some(settle(instance, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Subject;

    fn instance(steps: &[(&str, i64, StepState)]) -> Instance {
        Instance {
            steps: steps
                .iter()
                .map(|(name, due_ms, state)| PlannedStep {
                    name: (*name).into(),
                    due_ms: *due_ms,
                    state: *state,
                    note: None,
                })
                .collect(),
            ..crate::domain::test_instance("r/c:c1", Subject::default(), 0)
        }
    }

    fn t(step: &str, due_ms: i64) -> Timer {
        Timer {
            due_ms,
            instance: "r/c:c1".into(),
            step: step.into(),
        }
    }

    fn states(write: &InstanceWrite) -> Vec<StepState> {
        write.instance.steps.iter().map(|s| s.state).collect()
    }

    use StepState::*;

    #[test]
    fn a_start_arms_the_pending_steps_once() {
        let new = instance(&[("a", 10, Pending), ("b", 0, Dropped)]);
        let write = start(None, new.clone()).unwrap();
        assert_eq!(write.state, Written::Started);
        assert_eq!(write.arm, [t("a", 10)]);
        assert_eq!(start(Some(&new), new.clone()), None, "already running");
        assert_eq!(start(None, instance(&[("b", 0, Dropped)])), None);
    }

    #[test]
    fn a_fired_step_is_marked_once_and_its_timer_goes() {
        let running = instance(&[("a", 10, Pending), ("b", 20, Pending)]);
        let write = fired(running, &t("a", 10), Sent, None).unwrap();
        assert_eq!(states(&write), [Sent, Pending], "only the step that fired");
        assert_eq!(write.cancel, [t("a", 10)]);
        assert_eq!(write.state, Written::Running);
        // Fired already, or not a step of the instance: nothing to write.
        assert_eq!(fired(write.instance.clone(), &t("a", 10), Sent, None), None);
        assert_eq!(fired(write.instance, &t("zz", 10), Sent, None), None);
    }

    #[test]
    fn a_stop_cancels_every_pending_timer_and_finishes() {
        let write = stop(instance(&[("a", 10, Sent), ("b", 20, Pending)]));
        assert_eq!(write.state, Written::Finished);
        assert_eq!(write.cancel, [t("b", 20)]);
    }

    #[test]
    fn a_replan_moves_pending_and_dropped_steps_and_leaves_the_rest() {
        let running = instance(&[
            ("a", 10, Sent),
            ("b", 20, Pending),
            ("c", 0, Dropped),
            ("d", 40, Dead),
        ]);
        let steps = [
            ("a".to_owned(), Ok(15)),
            ("b".to_owned(), Err("gone".to_owned())),
            ("c".to_owned(), Ok(35)),
            ("d".to_owned(), Ok(45)),
        ];
        let write = replan(running, &steps);
        assert_eq!(states(&write), [Sent, Dropped, Pending, Dead]);
        assert_eq!(write.cancel, [t("b", 20)]);
        assert_eq!(write.arm, [t("c", 35)], "the dead step is not re-armed");
        assert_eq!(write.state, Written::Running);
    }

    #[test]
    fn firing_the_last_pending_step_finishes_the_instance() {
        let running = instance(&[("a", 10, Pending), ("b", 20, Pending)]);
        let write = fired(running, &t("a", 10), Sent, None).unwrap();
        assert_eq!(
            (write.state, write.cancel.clone()),
            (Written::Running, vec![t("a", 10)])
        );
        let write = fired(write.instance, &t("b", 20), Skipped, Some("no".into())).unwrap();
        assert_eq!(write.state, Written::Finished);
        assert_eq!(
            fired(write.instance, &t("b", 20), Sent, None),
            None,
            "fired already"
        );
    }

    #[test]
    fn a_dead_step_waits_for_its_redrive_then_fires_again() {
        let running = instance(&[("a", 10, Pending)]);
        let write = dead(running, &t("a", 10), "boom").unwrap();
        assert_eq!(states(&write), [Dead]);
        assert_eq!(write.state, Written::Running, "kept for the re-drive");
        assert!(write.arm.is_empty());
        let write = redrive(write.instance, "a", 99).unwrap();
        assert_eq!(states(&write), [Pending]);
        assert_eq!(write.arm, [t("a", 99)]);
        assert_eq!(redrive(write.instance, "a", 99), None, "not dead any more");
    }
}
