//! Fault points: places where a test can make the daemon die abruptly (as by
//! `kill -9`, or a machine losing power) at the moments a crash matters, to
//! check what README promises across one. They exist only in a build with the
//! `failpoints` feature (tikv's fail-rs); without it [`crash_point`] is empty
//! and [`arm`] refuses a `FAILPOINTS` it could not honour.
//!
//! `FAILPOINTS` holds `name=actions` pairs separated by `;`, with fail-rs's
//! actions (`[count*]task[->task…]`). The task that matters here is `return`:
//! it aborts the process (SIGABRT, nothing flushed), first writing
//! `fault point NAME: aborting` to stderr. A point is reached as its own name
//! and, once for each kind of thing it is doing at that moment, as
//! `NAME:KIND`: `writer::before_flush:send=2*off->return` aborts the third
//! time a writer batch holding a person's send is about to be flushed.
//!
//! | point | where |
//! |---|---|
//! | `scheduler::after_fire` | a due step's transaction (its message stored, its timer removed) committed, before the scheduler goes on; kind: the step's name |
//! | `writer::before_flush` | a writer batch applied by sled, before the flush and the answers; kinds: its operations (`send`, `step`, `read`, `automation`, `outbox`, …) |
//! | `outbox::after_send` | a channel accepted a delivery (2xx), before it is recorded; kinds: the channel and the notification type (`push`, `email`, `digest`, …) |
//! | `digest::before_flush` | a digest opened, its items read and rendered, before it is queued and its items marked |
//! | `rebuild::after_clear` | `parleyd analytics rebuild` cleared the analytics, before it folds the history again |

/// Arms the fault points named in `FAILPOINTS`; returns the names armed
/// (empty when it is unset).
///
/// # Errors
/// A malformed `FAILPOINTS`, or one set for a build without fault points.
pub fn arm() -> Result<Vec<String>, String> {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return Ok(Vec::new());
    };
    let pairs: Vec<(&str, &str)> = spec
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(name, actions)| (name.trim(), actions.trim()))
                .ok_or_else(|| format!("FAILPOINTS: {pair:?} is not name=actions"))
        })
        .collect::<Result<_, _>>()?;
    configure(&pairs)?;
    Ok(pairs.iter().map(|(name, _)| (*name).to_owned()).collect())
}

#[cfg(feature = "failpoints")]
fn configure(pairs: &[(&str, &str)]) -> Result<(), String> {
    for (name, actions) in pairs {
        fail::cfg(*name, actions).map_err(|e| format!("FAILPOINTS: {name}: {e}"))?;
    }
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
fn configure(pairs: &[(&str, &str)]) -> Result<(), String> {
    if pairs.is_empty() {
        return Ok(());
    }
    Err("FAILPOINTS is set, but this parleyd was built without fault points (cargo feature `failpoints`)".into())
}

/// Reaches the fault point `point`, then `point:kind` for each distinct
/// `kind` (see the module doc), aborting the process at one that is armed to
/// `return`; does nothing in a build without fault points.
#[cfg(feature = "failpoints")]
pub fn crash_point<'a>(point: &str, kinds: impl IntoIterator<Item = &'a str>) {
    let mut kinds: Vec<&str> = kinds.into_iter().collect();
    kinds.sort_unstable();
    kinds.dedup();
    let names =
        std::iter::once(point.to_owned()).chain(kinds.iter().map(|k| format!("{point}:{k}")));
    for name in names {
        fail::fail_point!(&name, |_| {
            eprintln!("fault point {name}: aborting");
            std::process::abort();
        });
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn crash_point<'a>(_point: &str, _kinds: impl IntoIterator<Item = &'a str>) {}
