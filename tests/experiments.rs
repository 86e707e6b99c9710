//! A/B experiments end to end: the daemon runs the shipped rules plus an
//! experiment that swaps the inquiry acknowledgement's template, on a manual
//! clock. Customers are assigned as GrowthBook's hash says, keep their
//! variant across a reload that changes the weights and across a restart,
//! their automated messages name experiment and variant, conversions are
//! reported per variant, and a split that does not follow the weights raises
//! the sample-ratio alarm.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use parleyd::analytics::experiments::hash::hash_v2;
use serde_json::{json, Value};

const EXPERIMENT: &str = "ack_wording";

/// The experiment, with control and `brief` weighted `weights`.
fn experiment_file(weights: (u32, u32)) -> String {
    format!(
        r#"experiments:
  - name: ack_wording
    sequence: inquiry_follow_up
    unit: customer
    metric: {{ booked_within: 7d }}
    guardrails: [unsubscribes, blocked_messages]
    min_sample: 4
    variants:
      - {{ name: control, weight: {} }}
      - name: brief
        weight: {}
        swap:
          - {{ step: acknowledge, template: inquiry_ack_brief }}
"#,
        weights.0, weights.1
    )
}

/// A copy of the shipped rules with the experiment at `weights` and its
/// template; the config edits that point a daemon at it.
fn rules_with_experiment(dir: &Path, weights: (u32, u32)) -> Vec<(&'static str, String)> {
    rules_with(dir, &experiment_file(weights))
}

/// A copy of the shipped rules with `experiments` (a rule file) and the
/// brief acknowledgement template.
fn rules_with(dir: &Path, experiments: &str) -> Vec<(&'static str, String)> {
    let edits = copy_rules(dir);
    std::fs::write(
        dir.join("templates/experiment.yaml"),
        "inquiry_ack_brief:\n  text: \"Got it, {customer.name}. {provider.name} answers soon.\"\n",
    )
    .unwrap();
    write_experiments(dir, experiments);
    edits
}

/// Writes the experiment at `weights` whole.
fn set_weights(dir: &Path, weights: (u32, u32)) {
    write_experiments(dir, &experiment_file(weights));
}

/// Writes the experiments file by a rename: a reload never sees it half
/// written.
fn write_experiments(dir: &Path, text: &str) {
    let scratch = dir.join("experiments.yaml.next");
    std::fs::write(&scratch, text).unwrap();
    std::fs::rename(scratch, dir.join("rules/experiments.yaml")).unwrap();
}

async fn start(rules: &[(&'static str, String)], data: &Path) -> Daemon {
    let mut config = vec![("clock", "manual".to_owned())];
    config.extend(rules.iter().cloned());
    Daemon::launch(Launch {
        data_dir: Some(data.to_owned()),
        config,
        automation: true,
        ..Launch::default()
    })
    .await
}

/// The variant GrowthBook's SDK gives `customer` at weights
/// (control, brief): its v2 hash seeded with the experiment's name, in
/// [0, control share) for control.
fn expected_variant(customer: &str, weights: (u32, u32)) -> &'static str {
    let control_share = f64::from(weights.0) / f64::from(weights.0 + weights.1);
    if hash_v2(EXPERIMENT, customer) < control_share {
        "control"
    } else {
        "brief"
    }
}

/// A provider with `listings` listings, `l-1`, `l-2`, ….
async fn provider_with_listings(d: &Daemon, listings: usize) -> Person {
    let provider = Person::new("prov", "provider");
    d.put(
        "/v1/users/prov",
        SERVICE_KEY,
        json!({"name": "Pablo", "timezone": "Europe/Paris"}),
    )
    .await
    .expect(200);
    for i in 1..=listings {
        d.put(
            &format!("/v1/listings/l-{i}"),
            SERVICE_KEY,
            json!({"title": format!("Kayak tour {i}"), "provider_id": "prov",
                   "response_time": "within an hour"}),
        )
        .await
        .expect(200);
    }
    provider
}

/// `customer` asks about `listing`; the conversation and the acknowledgement
/// automation sent there.
async fn inquire(d: &Daemon, customer: &Person, listing: &str) -> (String, Value) {
    d.put(
        &format!("/v1/users/{}", customer.id),
        SERVICE_KEY,
        json!({"name": "Carla", "timezone": "Europe/Paris"}),
    )
    .await
    .expect(200);
    let conversation = d.open(customer, listing).await;
    d.send(
        customer,
        &conversation,
        format!("q-{listing}"),
        "Hi! Is it free on Saturday?",
    )
    .await
    .expect(201);
    let ack = guard("the acknowledgement", async {
        loop {
            let messages = d.messages(customer, &conversation).await;
            if let Some(m) = messages
                .iter()
                .find(|m| m["automation"]["step"] == "acknowledge")
            {
                return m.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    (conversation, ack)
}

/// The variant an acknowledgement names, checked against its template.
fn variant_of(ack: &Value) -> String {
    let automation = &ack["automation"];
    assert_eq!(automation["experiment"], EXPERIMENT, "{ack}");
    let variant = automation["variant"].as_str().unwrap().to_owned();
    let template = if variant == "brief" {
        "inquiry_ack_brief"
    } else {
        "inquiry_ack"
    };
    assert_eq!(automation["template"], template, "{ack}");
    variant
}

async fn results(d: &Daemon) -> Value {
    results_of(d, EXPERIMENT).await
}

async fn results_of(d: &Daemon, name: &str) -> Value {
    let reply = d
        .get(&format!("/v1/admin/experiments/{name}"), &operator().token)
        .await;
    reply.expect(200);
    reply.body.clone()
}

fn variant<'a>(results: &'a Value, name: &str) -> &'a Value {
    results["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap()
}

fn customers(prefix: &str, n: usize) -> Vec<Person> {
    (1..=n)
        .map(|i| Person::new(&format!("{prefix}-{i:02}"), "customer"))
        .collect()
}

/// Catches: assignment other than GrowthBook's hash and bucketing; a variant
/// recomputed from the weights in force instead of the stored first
/// exposure (after a reload that changes them, or a restart); messages
/// without their experiment and variant; a unit exposed twice.
#[tokio::test]
async fn customers_keep_their_variant_across_a_reload_of_the_weights_and_a_restart() {
    let (dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rules = rules_with_experiment(dir.path(), (50, 50));
    let d = start(&rules, data.path()).await;
    provider_with_listings(&d, 3).await;

    let first = customers("cust", 10);
    let mut assigned = BTreeMap::new();
    for customer in &first {
        let (_, ack) = inquire(&d, customer, "l-1").await;
        let variant = variant_of(&ack);
        assert_eq!(
            variant,
            expected_variant(&customer.id, (50, 50)),
            "{}",
            customer.id
        );
        assigned.insert(customer.id.clone(), variant);
    }
    // With 99% for brief, the hash would move every control customer whose
    // hash is past 0.01: the test needs some.
    let moved = first
        .iter()
        .filter(|c| assigned[&c.id] != expected_variant(&c.id, (1, 99)))
        .count();
    assert!(moved > 0, "no customer would move: pick other ids");
    let shown = results(&d).await;
    let count = |v: &str| assigned.values().filter(|a| *a == v).count() as u64;
    assert_eq!(variant(&shown, "control")["exposures"], count("control"));
    assert_eq!(variant(&shown, "brief")["exposures"], count("brief"));
    assert_eq!(shown["status"], "running");
    for v in ["control", "brief"] {
        let series = format!(
            "parleyd_experiment_exposures_total{{experiment=\"{EXPERIMENT}\",variant=\"{v}\"}}"
        );
        assert_eq!(d.metric(&series).await, count(v) as f64, "{series}");
    }

    set_weights(dir.path(), (1, 99));
    rules_after(&d, |s| s["version"] == 2).await;
    for customer in &first {
        let (_, ack) = inquire(&d, customer, "l-2").await;
        assert_eq!(variant_of(&ack), assigned[&customer.id], "{}", customer.id);
    }
    // Customers never exposed get the new weights.
    let newcomers = customers("new", 4);
    for customer in &newcomers {
        let (_, ack) = inquire(&d, customer, "l-1").await;
        let variant = variant_of(&ack);
        assert_eq!(
            variant,
            expected_variant(&customer.id, (1, 99)),
            "{}",
            customer.id
        );
        assigned.insert(customer.id.clone(), variant);
    }
    d.stop().await;

    let d = start(&rules, data.path()).await;
    for customer in first.iter().chain(&newcomers) {
        let (_, ack) = inquire(&d, customer, "l-3").await;
        assert_eq!(variant_of(&ack), assigned[&customer.id], "{}", customer.id);
    }
    settled(&d).await;
    // Each customer counts once, in the variant of their first exposure.
    let shown = results(&d).await;
    let count = |v: &str| assigned.values().filter(|a| *a == v).count() as u64;
    assert_eq!(variant(&shown, "control")["exposures"], count("control"));
    assert_eq!(variant(&shown, "brief")["exposures"], count("brief"));
    let listed = d.get("/v1/admin/experiments", &operator().token).await;
    listed.expect(200);
    assert_eq!(listed.body[0]["name"], EXPERIMENT);
    d.stop().await;
}

/// Catches: a mismatch check that compares exposures with anything but the
/// weights in force, a p-value that is not the chi-squared one, an alarm on
/// a split that follows the weights.
#[tokio::test]
async fn exposures_that_do_not_follow_the_weights_raise_the_sample_ratio_alarm() {
    let (dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Nearly everyone gets brief while the weights say so: no alarm.
    let rules = rules_with_experiment(dir.path(), (1, 99));
    let d = start(&rules, data.path()).await;
    provider_with_listings(&d, 1).await;
    let crowd = customers("srm", 16);
    for customer in &crowd {
        inquire(&d, customer, "l-1").await;
    }
    let shown = results(&d).await;
    let (control, brief) = (
        variant(&shown, "control")["exposures"].as_u64().unwrap(),
        variant(&shown, "brief")["exposures"].as_u64().unwrap(),
    );
    assert_eq!(control + brief, 16);
    assert_eq!(shown["sample_ratio"]["mismatch"], false, "{shown}");

    // The same exposures against 50/50 (weights changed mid-run): the
    // split is far from what the weights say now.
    set_weights(dir.path(), (50, 50));
    rules_after(&d, |s| s["version"] == 2).await;
    let shown = results(&d).await;
    let p = shown["sample_ratio"]["p_value"].as_f64().unwrap();
    // Pearson's χ² with one degree of freedom, p = erfc(√(χ²/2)).
    let expected_count = 8.0;
    let chi2 = ((control as f64 - expected_count).powi(2)
        + (brief as f64 - expected_count).powi(2))
        / expected_count;
    assert!(chi2 > 10.83, "χ² {chi2}: the split must be past p = 0.001");
    assert!(p < 0.001, "{shown}");
    assert_eq!(shown["sample_ratio"]["mismatch"], true, "{shown}");
    d.stop().await;
}

/// Catches: conversions not counted, counted outside the metric's window or
/// twice, counted in a variant other than the unit's; guardrails not counted;
/// rates, intervals and uplift not derived from the counts; no note under
/// `min_sample`; a rebuild that loses or doubles them.
#[tokio::test]
async fn bookings_within_the_window_are_conversions_of_the_variant_and_guardrails_count() {
    let (dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rules = rules_with_experiment(dir.path(), (50, 50));
    let d = start(&rules, data.path()).await;
    provider_with_listings(&d, 1).await;
    let people = customers("conv", 10);
    let mut assigned = BTreeMap::new();
    let mut conversations = BTreeMap::new();
    for customer in &people {
        let (conversation, ack) = inquire(&d, customer, "l-1").await;
        assigned.insert(customer.id.clone(), variant_of(&ack));
        conversations.insert(customer.id.clone(), conversation);
    }
    // Both variants need a converting and a non-converting customer; the
    // ids are fixed, so this checks the test, not the daemon.
    let ids: Vec<&String> = assigned.keys().collect();
    let in_variant = |v: &str| ids.iter().filter(|id| assigned[**id] == v).count();
    assert!(
        in_variant("control") >= 3 && in_variant("brief") >= 3,
        "{assigned:?}"
    );

    // Two days on, the first two of each variant book (conversions); a
    // second booking of the same customer counts no more.
    advance(&d, "48h").await;
    let mut converted = Vec::new();
    for v in ["control", "brief"] {
        for id in ids.iter().filter(|id| assigned[**id] == v).take(2) {
            book(
                &d,
                &conversations[*id],
                "2031-06-01T10:00:00Z",
                "2031-06-01T12:00:00Z",
            )
            .await;
            converted.push((*id).clone());
        }
    }
    let again = &converted[0];
    book(
        &d,
        &conversations[again],
        "2031-07-01T10:00:00Z",
        "2031-07-01T12:00:00Z",
    )
    .await;
    // The third of control unsubscribes and writes a phone number (blocked).
    let third = ids
        .iter()
        .filter(|id| assigned[**id] == "control")
        .nth(2)
        .unwrap();
    d.post(
        "/v1/signals",
        SERVICE_KEY,
        json!({"type": "unsubscribed", "user_id": third}),
    )
    .await
    .expect(202);
    let who = people.iter().find(|p| &&p.id == third).unwrap();
    d.send(
        who,
        &conversations[*third],
        "phone-1",
        "text me on 415 867 2671",
    )
    .await
    .expect_error(422);
    // Eight days after exposure the third of brief books: past the window.
    advance(&d, "6d").await;
    let late = ids
        .iter()
        .filter(|id| assigned[**id] == "brief")
        .nth(2)
        .unwrap();
    book(
        &d,
        &conversations[*late],
        "2031-06-02T10:00:00Z",
        "2031-06-02T12:00:00Z",
    )
    .await;
    settled(&d).await;

    let shown = results(&d).await;
    for v in ["control", "brief"] {
        let row = variant(&shown, v);
        let exposures = in_variant(v) as u64;
        assert_eq!(row["exposures"], exposures, "{v}: {shown}");
        assert_eq!(row["conversions"], 2, "{v}: {shown}");
        let rate = 2.0 / exposures as f64;
        assert!((row["conversion_rate"].as_f64().unwrap() - rate).abs() < 1e-12);
        let [low, high] =
            [&row["interval_95"][0], &row["interval_95"][1]].map(|x| x.as_f64().unwrap());
        assert!(low < rate && rate < high, "{row}");
    }
    let control = variant(&shown, "control");
    assert_eq!(control["unsubscribes"], 1, "{shown}");
    assert_eq!(control["blocked_messages"], 1, "{shown}");
    assert_eq!(variant(&shown, "brief")["unsubscribes"], 0, "{shown}");
    assert!(control["uplift"].is_null() && control["chance_to_beat_control"].is_null());
    let brief = variant(&shown, "brief");
    let (rc, rb) = (
        2.0 / in_variant("control") as f64,
        2.0 / in_variant("brief") as f64,
    );
    assert!(
        (brief["uplift"].as_f64().unwrap() - (rb - rc) / rc).abs() < 1e-12,
        "{brief}"
    );
    let chance = brief["chance_to_beat_control"].as_f64().unwrap();
    assert!(chance > 0.0 && chance < 1.0, "{brief}");
    // min_sample is 4 per variant: a variant under it carries a note.
    for v in ["control", "brief"] {
        let row = variant(&shown, v);
        assert_eq!(row["note"].is_string(), in_variant(v) < 4, "{row}");
    }
    d.stop().await;

    // A rebuild from the stored history gives the same figures: exposures
    // kept, conversions and guardrails folded again, not twice.
    rebuild_analytics(data.path());
    let d = start(&rules, data.path()).await;
    assert_eq!(results(&d).await["variants"], shown["variants"]);
    d.stop().await;
}

/// A variant that replaces a whole step (`replace:`: another template and a
/// delay) under a `replied_within` metric. Catches: the replacement not
/// sent (or sent at the written step's time or with its template) to the
/// units of its variant; replies not counted as conversions, counted from
/// before exposure, past the window, twice, or for the wrong variant.
#[tokio::test]
async fn a_variant_replacing_a_whole_step_is_sent_and_replies_within_the_window_convert() {
    const NAME: &str = "ack_step";
    let experiment = format!(
        r#"experiments:
  - name: {NAME}
    sequence: inquiry_follow_up
    unit: customer
    metric: {{ replied_within: 24h }}
    min_sample: 1
    variants:
      - {{ name: control, weight: 50 }}
      - name: later
        weight: 50
        swap:
          - step: acknowledge
            replace: {{ name: acknowledge, after: 1h, template: inquiry_ack_brief, to: customer }}
"#
    );
    let (dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rules = rules_with(dir.path(), &experiment);
    let d = start(&rules, data.path()).await;
    provider_with_listings(&d, 1).await;
    let people = customers("step", 10);
    let variant_for = |id: &str| {
        if hash_v2(NAME, id) < 0.5 {
            "control"
        } else {
            "later"
        }
    };
    let in_variant = |v: &str| people.iter().filter(|p| variant_for(&p.id) == v).count();
    assert!(
        in_variant("control") >= 3 && in_variant("later") >= 3,
        "the fixed ids give both variants three customers"
    );
    let mut conversations = BTreeMap::new();
    let asked = advance(&d, "1s").await;
    for customer in &people {
        d.put(
            &format!("/v1/users/{}", customer.id),
            SERVICE_KEY,
            json!({"name": "Carla", "timezone": "Europe/Paris"}),
        )
        .await
        .expect(200);
        let c = d.open(customer, "l-1").await;
        d.send(customer, &c, "q-1", "Hi! Is it free on Saturday?")
            .await
            .expect(201);
        conversations.insert(customer.id.clone(), c);
    }
    settled(&d).await;
    for who in &people {
        let sent = acks(&d, who, &conversations[&who.id]).await;
        let expected = usize::from(variant_for(&who.id) == "control");
        assert_eq!(sent.len(), expected, "{}: {sent:?}", who.id);
    }
    advance(&d, "1h").await;
    settled(&d).await;
    for who in &people {
        let sent = acks(&d, who, &conversations[&who.id]).await;
        let [ack] = &sent[..] else {
            panic!("{}: {sent:?}", who.id)
        };
        let v = variant_for(&who.id);
        assert_eq!(ack["automation"]["variant"], v, "{ack}");
        assert_eq!(ack["automation"]["experiment"], NAME, "{ack}");
        let (template, after) = match v {
            "control" => ("inquiry_ack", 0),
            _ => ("inquiry_ack_brief", 3600),
        };
        assert_eq!(ack["automation"]["template"], template, "{ack}");
        let at: jiff::Timestamp = ack["created_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(at.duration_since(asked).as_secs(), after, "{ack}");
    }
    // In each variant: the first two reply twice within the day (one
    // conversion each), the third only 30 hours after the inquiry.
    advance(&d, "2h").await;
    for v in ["control", "later"] {
        for who in people.iter().filter(|p| variant_for(&p.id) == v).take(2) {
            for n in 1..=2 {
                d.send(who, &conversations[&who.id], format!("r-{n}"), "Any news?")
                    .await
                    .expect(201);
            }
        }
    }
    advance(&d, "27h").await;
    for v in ["control", "later"] {
        let late = people
            .iter()
            .filter(|p| variant_for(&p.id) == v)
            .nth(2)
            .unwrap();
        d.send(late, &conversations[&late.id], "r-late", "Still free?")
            .await
            .expect(201);
    }
    settled(&d).await;
    let shown = results_of(&d, NAME).await;
    assert_eq!(shown["metric"]["kind"], "replied", "{shown}");
    for v in ["control", "later"] {
        let row = variant(&shown, v);
        assert_eq!(row["exposures"], in_variant(v), "{v}: {shown}");
        assert_eq!(row["conversions"], 2, "{v}: {shown}");
    }
    d.stop().await;
}

/// The acknowledgements in `who`'s conversation `c`.
async fn acks(d: &Daemon, who: &Person, c: &str) -> Vec<Value> {
    d.messages(who, c)
        .await
        .into_iter()
        .filter(|m| m["automation"]["step"] == "acknowledge")
        .collect()
}
