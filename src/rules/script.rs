//! The Rhai sandbox. Rule conditions, template values and plugins all run in
//! one engine configured here: bounded operations, call depth, expression depth
//! and data sizes, no modules (so no file access; Rhai has no network access
//! unless a host registers it, and we register none), no `eval`, no builtin
//! that reads the wall clock or blocks the thread (`timestamp`, `sleep`: time
//! comes only from the injected clock, as `now`), and `print` going to the log.
//!
//! Every evaluation goes through [`guarded`]: it has a wall-clock deadline on
//! top of the operation budget, and a panic inside it (a bug in a helper)
//! becomes that evaluation's error instead of unwinding into the engine. A
//! script that breaks a limit fails with an error like any other, and the
//! caller isolates it, reporting it with [`report`].

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rhai::packages::{
    ArithmeticPackage, BasicArrayPackage, BasicBlobPackage, BasicFnPackage, BasicIteratorPackage,
    BasicMapPackage, BasicMathPackage, BasicStringPackage, BitFieldPackage, LogicPackage,
    MoreStringPackage, Package,
};
use rhai::{Dynamic, Engine, EvalAltResult, Position, Scope, AST};

/// Operations one evaluation may perform: generous for a condition or a plugin
/// hook, and stops an endless loop in about a millisecond.
pub const MAX_OPERATIONS: u64 = 100_000;

/// Wall-clock time one evaluation may take. The operation budget bounds
/// most scripts far sooner; this bounds those whose operations are each slow
/// (string and array work near the size limits).
pub const DEADLINE: Duration = Duration::from_millis(250);

/// The builtins of Rhai's standard library that read the wall clock or
/// block the thread. The sandbox leaves them out (with the rest of their
/// packages, see [`engine`]), and compiling a script that calls one fails at
/// the call, so `parleyd check` rejects it rather than the script failing
/// when it runs. Rules read time from the injected clock, as `now`.
pub const UNAVAILABLE: &[&str] = &["timestamp", "sleep"];

/// Log target of every rule, template and plugin failure: `parleyd
/// test-rules` collects these events to fail the test that caused them.
pub const RULE_ERRORS: &str = "parleyd::rules";

thread_local! {
    /// When the evaluation running on this thread must stop.
    static DEADLINE_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// How often (in operations) the deadline is looked at: reading the clock
/// costs more than an operation.
const DEADLINE_EVERY: u64 = 256;

/// The shared sandboxed engine (it holds no per-script state).
///
/// Built raw with an allow-list of Rhai's packages: the standard set minus
/// `BasicTimePackage` (`timestamp`, `elapsed`) and `LanguageCorePackage`
/// (`sleep`, and `exit`, `take`, `tag`, `parse_json`, which rules do not
/// need), so those functions do not exist, not even for a call through a
/// function pointer (`call("sleep", 1)`).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut engine = Engine::new_raw();
        for package in [
            ArithmeticPackage::new().as_shared_module(),
            BasicStringPackage::new().as_shared_module(),
            BasicIteratorPackage::new().as_shared_module(),
            BasicFnPackage::new().as_shared_module(),
            BitFieldPackage::new().as_shared_module(),
            LogicPackage::new().as_shared_module(),
            BasicMathPackage::new().as_shared_module(),
            BasicArrayPackage::new().as_shared_module(),
            BasicBlobPackage::new().as_shared_module(),
            BasicMapPackage::new().as_shared_module(),
            MoreStringPackage::new().as_shared_module(),
        ] {
            engine.register_global_module(package);
        }
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
        engine.on_progress(|operations| {
            if operations % DEADLINE_EVERY != 0 {
                return None;
            }
            let passed = DEADLINE_AT
                .with(Cell::get)
                .is_some_and(|at| Instant::now() >= at);
            passed.then_some(Dynamic::UNIT)
        });
        engine.on_print(|text| tracing::info!(target: "parleyd::script", "{text}"));
        engine.on_debug(|text, source, pos| {
            tracing::debug!(target: "parleyd::script", source, line = pos.line(), "{text}")
        });
        register_helpers(&mut engine);
        engine
    })
}

/// Runs one evaluation under the sandbox's deadline, with any panic inside
/// it caught and given back as its error (the panic hook has already logged
/// it). Nested evaluations keep the outer deadline.
fn guarded<T>(evaluate: impl FnOnce() -> Result<T, Box<EvalAltResult>>) -> Result<T, ScriptError> {
    let outer = DEADLINE_AT.with(Cell::get);
    DEADLINE_AT.with(|d| d.set(Some(outer.unwrap_or_else(|| Instant::now() + DEADLINE))));
    let outcome = catch_unwind(AssertUnwindSafe(evaluate));
    DEADLINE_AT.with(|d| d.set(outer));
    match outcome {
        Ok(result) => result.map_err(ScriptError::from),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(ScriptError {
                file: None,
                line: 0,
                column: 0,
                message: format!("the evaluation panicked ({what}); this is a bug in parleyd, and only this evaluation failed"),
            })
        }
    }
}

/// Logs a rule's failed evaluation (at [`RULE_ERRORS`], with the error's
/// `file:line:column`) and counts it in `parleyd_rule_errors_total{rule}`,
/// `rule` being what failed: `sequence/NAME`, `notification/NAME` or
/// `template/ID` (the engine adds `step/SEQUENCE.STEP` and `event` for a
/// panic outside a script).
pub fn report(rule: &str, error: &dyn std::fmt::Display) {
    metrics::counter!("parleyd_rule_errors_total", "rule" => rule.to_owned()).increment(1);
    tracing::error!(target: RULE_ERRORS, rule, "{error}");
}

/// Runs `evaluate` (rule evaluation, with the store reads it needs: CPU-bound
/// or blocking, bounded by [`DEADLINE`] per script) without holding up the
/// other tasks of an async worker: on a multi-threaded tokio runtime the
/// worker hands them to another thread for the duration
/// (`tokio::task::block_in_place`); elsewhere it simply runs.
pub fn off_the_workers<T>(evaluate: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(evaluate),
        _ => evaluate(),
    }
}

/// Small helpers for date arithmetic in conditions and template values; times
/// are RFC 3339 strings as everywhere else in the context. Each checks its
/// arithmetic and fails with an error, never a panic, on an input out of
/// range.
fn register_helpers(engine: &mut Engine) {
    engine.register_fn("add_hours", add_hours);
    engine.register_fn("hours_between", hours_between);
    engine.register_fn("date_of", date_of);
}

fn parse_time(ts: &str) -> Result<jiff::Timestamp, Box<EvalAltResult>> {
    ts.parse()
        .map_err(|e| format!("{ts:?} is not an RFC 3339 time: {e}").into())
}

/// `ts` plus `hours` (negative: earlier), RFC 3339; an error when the result
/// is outside the times jiff represents (years -9999 to 9999).
fn add_hours(ts: &str, hours: i64) -> Result<String, Box<EvalAltResult>> {
    let out_of_range = || -> Box<EvalAltResult> {
        format!("add_hours({ts:?}, {hours}): the time is out of range").into()
    };
    let by = jiff::SignedDuration::try_from_hours(hours).ok_or_else(out_of_range)?;
    let later = parse_time(ts)?
        .checked_add(by)
        .map_err(|_| out_of_range())?;
    Ok(crate::model::format_time(later))
}

/// Whole hours from `from` to `to` (negative when `to` is earlier),
/// truncated toward zero.
fn hours_between(from: &str, to: &str) -> Result<i64, Box<EvalAltResult>> {
    Ok(parse_time(to)?.duration_since(parse_time(from)?).as_hours())
}

/// The date part (`YYYY-MM-DD`) of an RFC 3339 time; the text itself when it
/// is shorter.
fn date_of(ts: &str) -> String {
    ts.get(..10).unwrap_or(ts).to_owned()
}

/// A compile or run-time failure, with its position: in the script text, or
/// in the rule file once the script knows where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    /// The rule file, when known.
    pub file: Option<String>,
    /// 1-based; 0 when Rhai gives no position.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}:")?;
        }
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

fn error_at(position: Position, message: String) -> ScriptError {
    ScriptError {
        file: None,
        line: position.line().unwrap_or(0),
        column: position.position().unwrap_or(0),
        message,
    }
}

impl From<Box<EvalAltResult>> for ScriptError {
    fn from(mut e: Box<EvalAltResult>) -> ScriptError {
        // Taken out, so the message does not repeat it.
        let position = e.take_position();
        let message = match *e {
            EvalAltResult::ErrorTooManyOperations(_) => format!(
                "stopped after {MAX_OPERATIONS} operations (endless loop?): the script's budget"
            ),
            EvalAltResult::ErrorTerminated(..) => format!(
                "stopped after {} ms: the script's time limit",
                DEADLINE.as_millis()
            ),
            // A helper's error: its own words.
            EvalAltResult::ErrorRuntime(value, _) => value.to_string(),
            other => other.to_string(),
        };
        error_at(position, message)
    }
}

/// A compile error at its position.
fn compile_error(e: rhai::ParseError) -> ScriptError {
    error_at(e.1, e.0.to_string())
}

/// Compiling's last step: the first call in `ast` of an [`UNAVAILABLE`]
/// builtin is an error at the call.
fn refuse_unavailable(ast: AST) -> Result<AST, ScriptError> {
    let mut refused = None;
    ast.walk(&mut |path: &[rhai::ASTNode]| {
        use rhai::{ASTNode, Expr, Stmt};
        if let Some(
            ASTNode::Expr(Expr::FnCall(call, position) | Expr::MethodCall(call, position))
            | ASTNode::Stmt(Stmt::FnCall(call, position)),
        ) = path.last()
        {
            if UNAVAILABLE.contains(&call.name.as_str()) {
                refused = Some(error_at(
                    *position,
                    format!(
                        "`{}` is not available in rules: scripts cannot read the wall clock or block (use `now`, the daemon's clock)",
                        call.name
                    ),
                ));
            }
        }
        refused.is_none()
    });
    refused.map_or(Ok(ast), Err)
}

/// Where a script was written: its file, and the line and column its text
/// starts at.
#[derive(Debug, Clone)]
struct Origin {
    file: String,
    line: usize,
    column: usize,
}

/// A compiled expression (a condition or a template value).
#[derive(Debug, Clone)]
pub struct Expr {
    source: String,
    ast: AST,
    origin: Option<Origin>,
}

impl Expr {
    pub fn compile(source: &str) -> Result<Expr, ScriptError> {
        let ast = engine()
            .compile_expression(source)
            .map_err(compile_error)
            .and_then(refuse_unavailable)?;
        Ok(Expr {
            source: source.to_owned(),
            ast,
            origin: None,
        })
    }

    /// Records where the expression is written (its first occurrence in
    /// `text`, the content of `file`), so its run-time errors name the file's
    /// line and column.
    pub fn place(&mut self, file: &str, text: &str) {
        let (line, column) = super::locate(text, &self.source);
        self.origin = Some(Origin {
            file: file.to_owned(),
            line,
            column,
        });
    }

    /// `error`, positioned in the rule file when the expression knows it.
    fn located(&self, mut error: ScriptError) -> ScriptError {
        if let Some(origin) = &self.origin {
            (error.line, error.column) = match (error.line, error.column) {
                (0, _) => (origin.line, origin.column),
                (1, c) => (origin.line, origin.column + c.max(1) - 1),
                (l, c) => (origin.line + l - 1, c),
            };
            error.file = Some(origin.file.clone());
        }
        error
    }

    pub fn eval(&self, context: &Context) -> Result<Dynamic, ScriptError> {
        let mut scope = context.scope();
        guarded(|| engine().eval_ast_with_scope::<Dynamic>(&mut scope, &self.ast))
            .map_err(|e| self.located(e))
    }

    /// Evaluates a condition: it must give `true` or `false`.
    pub fn test(&self, context: &Context) -> Result<bool, ScriptError> {
        let value = self.eval(context)?;
        value.as_bool().map_err(|type_name| {
            self.located(ScriptError {
                file: None,
                line: 1,
                column: 1,
                message: format!("the condition gave a {type_name}, not true or false"),
            })
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
            .map_err(compile_error)
            .and_then(refuse_unavailable)?;
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
    /// of operations or time, a panic) is placed at the function's definition.
    pub fn call(&self, name: &str, argument: Dynamic) -> Result<Dynamic, ScriptError> {
        let mut scope = Scope::new();
        guarded(|| engine().call_fn::<Dynamic>(&mut scope, &self.ast, name, (argument,))).map_err(
            |mut error| {
                if error.line == 0 {
                    (error.line, error.column) = super::locate(&self.source, &format!("fn {name}"));
                }
                error
            },
        )
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
        file: None,
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

    fn eval(source: &str) -> Result<Dynamic, ScriptError> {
        let context = Context::default().with("now", &serde_json::json!("2030-01-07T09:00:00Z"));
        Expr::compile(source)?.eval(&context)
    }

    #[test]
    fn date_helpers_fail_with_an_error_out_of_range() {
        assert_eq!(
            eval("add_hours(now, 48)").unwrap().into_string().unwrap(),
            "2030-01-09T09:00:00.000Z"
        );
        for source in [
            "add_hours(now, 9223372036854775807)",
            "add_hours(now, -9223372036854775808)",
            // Within a duration, beyond the times jiff represents.
            "add_hours(now, 100000000)",
            "add_hours(\"9999-12-30T00:00:00Z\", 48)",
        ] {
            let err = eval(source).unwrap_err();
            assert!(err.message.contains("out of range"), "{source}: {err}");
        }
        assert!(eval("add_hours(\"soon\", 1)").is_err());
        // The widest span there is still fits.
        let (min, max) = (jiff::Timestamp::MIN, jiff::Timestamp::MAX);
        let widest = eval(&format!("hours_between(\"{min}\", \"{max}\")"))
            .unwrap()
            .as_int()
            .unwrap();
        assert_eq!(widest, max.duration_since(min).as_hours());
        assert!(eval("hours_between(now, \"later\")").is_err());
        assert_eq!(
            eval("date_of(\"2030\")").unwrap().into_string().unwrap(),
            "2030"
        );
        // Rhai's own arithmetic is checked too.
        assert!(eval("9223372036854775807 + 1").is_err());
        assert!(eval("1 / 0").is_err());
    }

    #[test]
    fn the_wall_clock_and_sleep_are_not_there() {
        for source in ["timestamp()", "sleep(1)", "sleep(0.5)", "1.sleep()"] {
            let err = Expr::compile(source).unwrap_err();
            assert!(err.message.contains("not available"), "{source}: {err}");
            assert_eq!(err.line, 1, "{source}");
        }
        let err = Script::compile("fn f(a) {\n  let t = timestamp();\n}").unwrap_err();
        assert_eq!((err.line, err.column), (2, 11), "{err}");
        // Nor through a function pointer, which the parser cannot see.
        for source in [
            "call(\"sleep\", 1)",
            "Fn(\"times\" + \"tamp\").call()",
            "exit()",
        ] {
            assert!(eval(source).is_err(), "{source}");
        }
    }

    #[test]
    fn an_evaluation_past_its_deadline_stops() {
        let spin = Script::compile("fn f(a) { let n = 0; while n < 10000 { n += 1; } n }").unwrap();
        assert!(spin.call("f", Dynamic::UNIT).is_ok());
        // As if the deadline had passed while it ran.
        DEADLINE_AT.with(|d| d.set(Some(Instant::now())));
        let err = spin.call("f", Dynamic::UNIT).unwrap_err();
        DEADLINE_AT.with(|d| d.set(None));
        assert!(err.message.contains("time limit"), "{err}");
        assert_eq!(err.line, 1);
    }

    #[test]
    fn a_panic_inside_an_evaluation_is_its_error() {
        let err = guarded::<()>(|| panic!("a helper's bug")).unwrap_err();
        assert!(err.message.contains("a helper's bug"), "{err}");
        // The deadline it set is gone with it.
        assert_eq!(DEADLINE_AT.with(Cell::get), None);
    }

    #[test]
    fn a_placed_expression_s_errors_name_its_file_line_and_column() {
        let text = "steps:\n  - when: add_hours(now, 9223372036854775807) > now\n";
        let mut expr = Expr::compile("add_hours(now, 9223372036854775807) > now").unwrap();
        expr.place("rules/x.yaml", text);
        let context = Context::default().with("now", &serde_json::json!("2030-01-07T09:00:00Z"));
        let err = expr.test(&context).unwrap_err();
        assert_eq!(err.file.as_deref(), Some("rules/x.yaml"));
        assert_eq!(err.line, 2);
        assert!(err.to_string().starts_with("rules/x.yaml:2:"), "{err}");
    }

    #[test]
    fn compile_errors_have_positions() {
        let err = Expr::compile("listing.open_dates >").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.column > 0);
    }
}
