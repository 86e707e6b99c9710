//! The Rhai sandbox. Rule conditions, template values and plugins all run in
//! one engine configured here: bounded operations, call depth, expression depth
//! and data sizes, no modules (so no file access; Rhai has no network access
//! unless a host registers it, and we register none), no `eval`, and `print`
//! going to the log. A script that breaks a limit fails with an error like any
//! other, and the caller isolates it.

use std::sync::OnceLock;

use rhai::{Dynamic, Engine, EvalAltResult, Position, Scope, AST};

/// Operations one evaluation may perform: generous for a condition or a plugin
/// hook, and stops an endless loop in about a millisecond.
pub const MAX_OPERATIONS: u64 = 100_000;

/// The shared sandboxed engine (it holds no per-script state).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut engine = Engine::new();
        engine
            .set_max_operations(MAX_OPERATIONS)
            .set_max_call_levels(32)
            .set_max_expr_depths(64, 32)
            .set_max_string_size(16 * 1024)
            .set_max_array_size(1_000)
            .set_max_map_size(1_000)
            .set_max_variables(256)
            .set_max_functions(256)
            .set_max_modules(0)
            .set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        engine.disable_symbol("eval");
        engine.on_print(|text| tracing::info!(target: "parleyd::script", "{text}"));
        engine.on_debug(|text, source, pos| {
            tracing::debug!(target: "parleyd::script", source, line = pos.line(), "{text}")
        });
        register_helpers(&mut engine);
        engine
    })
}

/// Small helpers for date arithmetic in conditions and template values; times
/// are RFC 3339 strings as everywhere else in the context.
fn register_helpers(engine: &mut Engine) {
    engine.register_fn(
        "add_hours",
        |ts: &str, hours: i64| -> Result<String, Box<EvalAltResult>> {
            let t: jiff::Timestamp = ts.parse().map_err(|e| format!("{ts:?}: {e}"))?;
            let later = t
                .checked_add(jiff::SignedDuration::from_hours(hours))
                .map_err(|e| e.to_string())?;
            Ok(crate::model::format_time(later))
        },
    );
    engine.register_fn(
        "hours_between",
        |from: &str, to: &str| -> Result<i64, Box<EvalAltResult>> {
            let from: jiff::Timestamp = from.parse().map_err(|e| format!("{from:?}: {e}"))?;
            let to: jiff::Timestamp = to.parse().map_err(|e| format!("{to:?}: {e}"))?;
            Ok(to.duration_since(from).as_hours())
        },
    );
    engine.register_fn("date_of", |ts: &str| -> String {
        ts.get(..10).unwrap_or(ts).to_owned()
    });
}

/// A compile or run-time failure, with its position in the script text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    /// 1-based; 0 when Rhai gives no position.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

fn error_at(position: Position, message: String) -> ScriptError {
    ScriptError {
        line: position.line().unwrap_or(0),
        column: position.position().unwrap_or(0),
        message,
    }
}

impl From<Box<EvalAltResult>> for ScriptError {
    fn from(e: Box<EvalAltResult>) -> ScriptError {
        let position = e.position();
        let message = match *e {
            EvalAltResult::ErrorTooManyOperations(_) => format!(
                "stopped after {MAX_OPERATIONS} operations (endless loop?): the script's budget"
            ),
            other => other.to_string(),
        };
        error_at(position, message)
    }
}

/// A compiled expression (a condition or a template value).
#[derive(Debug, Clone)]
pub struct Expr {
    ast: AST,
}

impl Expr {
    pub fn compile(source: &str) -> Result<Expr, ScriptError> {
        let ast = engine()
            .compile_expression(source)
            .map_err(|e| error_at(e.1, e.0.to_string()))?;
        Ok(Expr { ast })
    }

    pub fn eval(&self, context: &Context) -> Result<Dynamic, ScriptError> {
        let mut scope = context.scope();
        Ok(engine().eval_ast_with_scope::<Dynamic>(&mut scope, &self.ast)?)
    }

    /// Evaluates a condition: it must give `true` or `false`.
    pub fn test(&self, context: &Context) -> Result<bool, ScriptError> {
        let value = self.eval(context)?;
        value.as_bool().map_err(|type_name| ScriptError {
            line: 1,
            column: 1,
            message: format!("the condition gave a {type_name}, not true or false"),
        })
    }
}

/// A compiled script file (a plugin).
#[derive(Debug, Clone)]
pub struct Script {
    source: String,
    ast: AST,
}

impl Script {
    pub fn compile(source: &str) -> Result<Script, ScriptError> {
        let ast = engine()
            .compile(source)
            .map_err(|e| error_at(e.1, e.0.to_string()))?;
        Ok(Script {
            source: source.to_owned(),
            ast,
        })
    }

    /// Whether the script defines `name` taking `params` arguments.
    pub fn defines(&self, name: &str, params: usize) -> bool {
        self.ast
            .iter_functions()
            .any(|f| f.name == name && f.params.len() == params)
    }

    /// Calls function `name`. An error Rhai gives no position for (running out
    /// of operations) is placed at the function's definition.
    pub fn call(&self, name: &str, argument: Dynamic) -> Result<Dynamic, ScriptError> {
        let mut scope = Scope::new();
        engine()
            .call_fn::<Dynamic>(&mut scope, &self.ast, name, (argument,))
            .map_err(|e| {
                let mut error = ScriptError::from(e);
                if error.line == 0 {
                    (error.line, error.column) = super::locate(&self.source, &format!("fn {name}"));
                }
                error
            })
    }
}

/// What scripts and templates can read: named JSON values (`event`,
/// `customer`, `listing`…), each a constant in a script's scope.
#[derive(Debug, Clone, Default)]
pub struct Context {
    json: serde_json::Map<String, serde_json::Value>,
    values: Vec<(&'static str, Dynamic)>,
}

impl Context {
    pub fn with(mut self, name: &'static str, value: &serde_json::Value) -> Context {
        let dynamic = rhai::serde::to_dynamic(value).unwrap_or(Dynamic::UNIT);
        self.values.retain(|(n, _)| *n != name);
        self.values.push((name, dynamic));
        self.json.insert(name.to_owned(), value.clone());
        self
    }

    /// The value at a dotted path (`listing.title`), if it is there.
    pub fn lookup(&self, path: &[String]) -> Option<&serde_json::Value> {
        let (root, rest) = path.split_first()?;
        rest.iter()
            .try_fold(self.json.get(root)?, |value, key| value.get(key))
    }

    fn scope(&self) -> Scope<'static> {
        let mut scope = Scope::new();
        for (name, value) in &self.values {
            scope.push_constant_dynamic(*name, value.clone());
        }
        scope
    }

    /// The whole context as one map (the argument of plugin hooks).
    pub fn as_map(&self) -> Dynamic {
        let map: rhai::Map = self
            .values
            .iter()
            .map(|(name, value)| ((*name).into(), value.clone()))
            .collect();
        map.into()
    }
}

/// A script's value as JSON (maps, arrays, strings, numbers, booleans).
pub fn to_json(value: &Dynamic) -> Result<serde_json::Value, ScriptError> {
    rhai::serde::from_dynamic(value).map_err(|e| ScriptError {
        line: 0,
        column: 0,
        message: format!("cannot use the script's value: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_read_the_context() {
        let context = Context::default().with("listing", &serde_json::json!({"open_dates": 3}));
        assert!(Expr::compile("listing.open_dates > 2")
            .unwrap()
            .test(&context)
            .unwrap());
        assert!(Expr::compile("listing.open_dates")
            .unwrap()
            .test(&context)
            .is_err());
    }

    #[test]
    fn the_sandbox_stops_loops_and_refuses_eval_and_imports() {
        let spin = Script::compile("fn on_event(e) { loop { } }").unwrap();
        let err = spin.call("on_event", Dynamic::UNIT).unwrap_err();
        assert!(err.message.contains("budget"), "{err}");
        assert_eq!(err.line, 1);
        assert!(Script::compile("eval(\"1\")").is_err());
        let import = Script::compile("import \"x\" as x; fn f(a) { 1 }");
        assert!(
            import.is_err() || import.unwrap().call("f", Dynamic::UNIT).is_err(),
            "imports must not load files"
        );
        let big = Script::compile("fn f(a) { let s = \"x\"; loop { s += s; } }").unwrap();
        assert!(big.call("f", Dynamic::UNIT).is_err());
    }

    #[test]
    fn compile_errors_have_positions() {
        let err = Expr::compile("listing.open_dates >").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.column > 0);
    }
}
