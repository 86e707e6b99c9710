//! Plugins: Rhai scripts in `plugins/` defining hook functions.
//!
//! - `on_event(event)`: called with every domain event; returns an array of
//!   actions, each `#{start: "sequence"}` (start that sequence with this event as
//!   its trigger) or `#{stop: "sequence"}` (stop its instances about this event).
//! - `template_vars(context)`: called when a step renders; returns a map whose
//!   entries templates read as `{plugin.NAME}`.
//!
//! A hook that fails or runs out of budget is logged with its file and line,
//! counted in `parleyd_plugin_errors_total{plugin}`, and skipped: the rest of the
//! pipeline goes on.

use rhai::Dynamic;
use serde::Deserialize;

use super::script::{to_json, Script, ScriptError, RULE_ERRORS};

#[derive(Debug)]
pub struct Plugin {
    /// The file name without `.rhai`.
    pub name: String,
    pub file: String,
    script: Script,
}

/// What `on_event` may ask for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PluginAction {
    Start(String),
    Stop(String),
}

pub const ON_EVENT: &str = "on_event";
pub const TEMPLATE_VARS: &str = "template_vars";

impl Plugin {
    pub fn compile(name: &str, file: &str, source: &str) -> Result<Plugin, ScriptError> {
        let script = Script::compile(source)?;
        if !script.defines(ON_EVENT, 1) && !script.defines(TEMPLATE_VARS, 1) {
            return Err(ScriptError {
                file: None,
                line: 1,
                column: 1,
                message: format!("defines neither {ON_EVENT}(event) nor {TEMPLATE_VARS}(context)"),
            });
        }
        Ok(Plugin {
            name: name.to_owned(),
            file: file.to_owned(),
            script,
        })
    }

    pub fn has(&self, hook: &str) -> bool {
        self.script.defines(hook, 1)
    }

    /// Calls a hook; a failure is logged and counted here, and given back.
    pub fn call(&self, hook: &str, argument: Dynamic) -> Result<serde_json::Value, ScriptError> {
        self.script
            .call(hook, argument)
            .and_then(|value| to_json(&value))
            .map_err(|e| ScriptError {
                file: Some(self.file.clone()),
                ..e
            })
            .inspect_err(|e| {
                metrics::counter!("parleyd_plugin_errors_total", "plugin" => self.name.clone())
                    .increment(1);
                tracing::error!(target: RULE_ERRORS, plugin = %self.name, hook,
                    "{e} (plugin hook failed; skipped)");
            })
    }

    /// `on_event`'s actions. A failing hook or a malformed answer is an error
    /// (logged and counted here): the engine counts it as a failed attempt at
    /// the event, like a rule's failing condition.
    pub fn on_event(&self, event: Dynamic) -> Result<Vec<PluginAction>, String> {
        if !self.has(ON_EVENT) {
            return Ok(Vec::new());
        }
        let value = self.call(ON_EVENT, event).map_err(|e| e.to_string())?;
        if value.is_null() {
            return Ok(Vec::new());
        }
        serde_json::from_value(value).map_err(|e| {
            metrics::counter!("parleyd_plugin_errors_total", "plugin" => self.name.clone())
                .increment(1);
            tracing::error!(target: RULE_ERRORS, plugin = %self.name, file = %self.file, error = %e,
                "on_event must return an array of #{{start: name}} or #{{stop: name}}");
            format!("{ON_EVENT} must return an array of #{{start: name}} or #{{stop: name}}: {e}")
        })
    }
}
