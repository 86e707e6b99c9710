//! Provider reports end to end: a month of conversations for three
//! providers in three time zones is scripted on the manual clock; every
//! figure of `GET /v1/providers/{id}/report` (the period, the previous one,
//! the change, the score and percentile, the platform comparison, the rows
//! and their CSV) is computed by the test from what it scripted, by the
//! definitions in README.md ("Provider reports"), without parleyd's code;
//! then `parleyd analytics rebuild` and a restart give the same reports.

mod common;

use std::collections::BTreeMap;

use common::*;
use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

const ZONES: [&str; 3] = ["Europe/Paris", "America/New_York", "Asia/Tokyo"];

/// What happens to one inquiry (the script of one conversation).
#[derive(Clone)]
struct Plan {
    provider: usize,
    customer: String,
    inquiry_at: Timestamp,
    /// The provider's first reply, after the inquiry; none: never answered.
    reply_after: Option<SignedDuration>,
    quick_reply: bool,
    /// The customer writes again 10 minutes after the reply (or 2 h after
    /// the inquiry when there is none), and the provider answers that an
    /// hour later when `answer_follow_up`.
    follow_up: bool,
    answer_follow_up: bool,
    /// The provider reads what the customer wrote, a minute before their
    /// first reply (2 h after the inquiry when there is none).
    reads: bool,
    /// Booked 3 days after the inquiry.
    booked: bool,
}

enum Act {
    Send {
        conv: usize,
        customer: bool,
        quick: bool,
    },
    Read {
        conv: usize,
    },
    Book {
        conv: usize,
    },
}

/// The conversation's figures as the test counts them.
#[derive(Default, Clone, Debug)]
struct Tally {
    customer_messages: u64,
    answered_messages: u64,
    provider_messages: u64,
    quick: u64,
    to_provider: u64,
    read: u64,
    first_response: Option<i64>,
    first_response_seq: Option<u64>,
    booked: bool,
    /// Customer messages since the provider last wrote.
    waiting: u64,
    seq: u64,
}

fn minutes(m: i64) -> SignedDuration {
    SignedDuration::from_mins(m)
}

fn plans(t0: Timestamp) -> Vec<Plan> {
    // Per provider: fast, medium, slow; a reply pattern per conversation.
    let replies: [[Option<i64>; 4]; 3] = [
        [Some(20), Some(45), Some(180), None],
        [Some(120), Some(300), Some(1_800), Some(50)],
        [Some(1_560), None, Some(600), Some(60)],
    ];
    let mut plans = Vec::new();
    for (provider, pattern) in replies.iter().enumerate() {
        for k in 0..8usize {
            // Spread over 29 days, at hours that cross midnight in some zones.
            let offset = minutes(k as i64 * 5_160 + provider as i64 * 310 + 30);
            plans.push(Plan {
                provider,
                customer: format!("cust-{provider}-{k}"),
                inquiry_at: t0 + offset,
                reply_after: pattern[k % 4].map(minutes),
                quick_reply: (k + provider) % 3 == 0,
                follow_up: k % 3 == 0,
                answer_follow_up: k % 2 == 0,
                reads: (k + provider) % 2 == 0,
                booked: (k + 2 * provider) % 3 == 0,
            });
        }
    }
    plans
}

/// Every action of every plan, in time order.
fn timeline(plans: &[Plan]) -> Vec<(Timestamp, Act)> {
    let mut acts = Vec::new();
    for (conv, p) in plans.iter().enumerate() {
        let send = |customer, quick| Act::Send {
            conv,
            customer,
            quick,
        };
        acts.push((p.inquiry_at, send(true, false)));
        let reply_at = p.reply_after.map(|after| p.inquiry_at + after);
        if p.reads {
            let at = reply_at.map_or(p.inquiry_at + minutes(120), |r| r - minutes(1));
            acts.push((at, Act::Read { conv }));
        }
        if let Some(reply_at) = reply_at {
            acts.push((reply_at, send(false, p.quick_reply)));
        }
        if p.follow_up {
            let at = reply_at.map_or(p.inquiry_at + minutes(121), |r| r + minutes(10));
            acts.push((at, send(true, false)));
            if p.answer_follow_up {
                acts.push((at + minutes(60), send(false, false)));
            }
        }
        if p.booked {
            acts.push((p.inquiry_at + minutes(3 * 1_440), Act::Book { conv }));
        }
    }
    acts.sort_by_key(|(at, _)| *at);
    acts
}

/// Plays the timeline against the daemon, counting what each step means.
async fn play(d: &Daemon, plans: &[Plan], acts: &[(Timestamp, Act)]) -> Vec<(String, Tally)> {
    let providers: Vec<Person> = (0..3)
        .map(|p| Person::new(&format!("prov-{p}"), "provider"))
        .collect();
    let mut conversations: Vec<Option<String>> = vec![None; plans.len()];
    let mut tallies = vec![Tally::default(); plans.len()];
    let mut now = Timestamp::UNIX_EPOCH;
    let mut sent = 0;
    for (at, act) in acts {
        if *at > now {
            d.post(
                "/v1/admin/clock",
                &operator().token,
                json!({"to": at.to_string()}),
            )
            .await
            .expect(200);
            now = *at;
        }
        match *act {
            Act::Send {
                conv,
                customer,
                quick,
            } => {
                let plan = &plans[conv];
                let customer_person = Person::new(&plan.customer, "customer");
                if conversations[conv].is_none() {
                    let listing = format!("listing-{}", plan.provider);
                    conversations[conv] = Some(d.open(&customer_person, &listing).await);
                }
                let id = conversations[conv].clone().unwrap();
                let who = if customer {
                    &customer_person
                } else {
                    &providers[plan.provider]
                };
                sent += 1;
                let mut body =
                    json!({"client_id": format!("m-{sent}"), "content": "Hello, about the dates"});
                if quick {
                    body["quick_reply_id"] = json!("qr-dates");
                }
                d.post(
                    &format!("/v1/conversations/{id}/messages"),
                    &who.token,
                    body,
                )
                .await
                .expect(201);
                let t = &mut tallies[conv];
                t.seq += 1;
                if customer {
                    t.customer_messages += 1;
                    t.to_provider += 1;
                    t.waiting += 1;
                } else {
                    t.provider_messages += 1;
                    t.quick += u64::from(quick);
                    if t.waiting > 0 && t.first_response.is_none() {
                        t.first_response = Some(at.duration_since(plan.inquiry_at).as_secs());
                        t.first_response_seq = Some(t.seq);
                    }
                    t.answered_messages += std::mem::take(&mut t.waiting);
                }
            }
            Act::Read { conv } => {
                let id = conversations[conv].clone().unwrap();
                let t = &mut tallies[conv];
                d.read(&providers[plans[conv].provider], &id, t.seq)
                    .await
                    .expect(200);
                t.read = t.to_provider;
            }
            Act::Book { conv } => {
                let id = conversations[conv].clone().unwrap();
                book(d, &id, "2040-01-05T10:00:00Z", "2040-01-05T12:00:00Z").await;
                tallies[conv].booked = true;
            }
        }
    }
    conversations
        .into_iter()
        .map(Option::unwrap)
        .zip(tallies)
        .collect()
}

/// The figures of the conversations `rows`, by README's definitions.
#[derive(Debug, PartialEq)]
struct Expected {
    conversations: u64,
    booked: u64,
    answered: u64,
    answered_within_24h: u64,
    median: Option<f64>,
    average: Option<f64>,
    read: (u64, u64),
    reply: (u64, u64),
    quick: (u64, u64),
}

fn expected(rows: &[&Tally]) -> Expected {
    let mut firsts: Vec<i64> = rows.iter().filter_map(|t| t.first_response).collect();
    firsts.sort_unstable();
    let n = firsts.len();
    let median = match n {
        0 => None,
        _ if n % 2 == 1 => Some(firsts[n / 2] as f64),
        _ => Some((firsts[n / 2 - 1] + firsts[n / 2]) as f64 / 2.0),
    };
    let sum = |f: fn(&Tally) -> u64| rows.iter().map(|t| f(t)).sum::<u64>();
    Expected {
        conversations: rows.len() as u64,
        booked: rows.iter().filter(|t| t.booked).count() as u64,
        answered: n as u64,
        answered_within_24h: firsts.iter().filter(|&&s| s <= 86_400).count() as u64,
        median,
        average: (n > 0).then(|| firsts.iter().sum::<i64>() as f64 / n as f64),
        read: (sum(|t| t.read), sum(|t| t.to_provider)),
        reply: (sum(|t| t.answered_messages), sum(|t| t.customer_messages)),
        quick: (sum(|t| t.quick), sum(|t| t.provider_messages)),
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn close(a: &Value, b: Option<f64>, what: &str) {
    match b {
        None => assert!(a.is_null(), "{what}: {a} is not null"),
        Some(b) => {
            let a = a
                .as_f64()
                .unwrap_or_else(|| panic!("{what}: {a} is no number"));
            assert!((a - b).abs() < 1e-9, "{what}: {a} != {b}");
        }
    }
}

fn check_figures(f: &Value, e: &Expected, what: &str) {
    assert_eq!(f["conversations"], e.conversations, "{what}: {f}");
    assert_eq!(f["booked"], e.booked, "{what}: {f}");
    assert_eq!(f["answered"], e.answered, "{what}: {f}");
    assert_eq!(
        f["answered_within_24h"], e.answered_within_24h,
        "{what}: {f}"
    );
    close(&f["booking_rate"], ratio(e.booked, e.conversations), what);
    close(
        &f["response_rate"],
        ratio(e.answered_within_24h, e.conversations),
        what,
    );
    close(&f["median_first_response_seconds"], e.median, what);
    close(&f["average_first_response_seconds"], e.average, what);
    assert_eq!(
        (
            f["read_by_provider"].clone(),
            f["messages_to_provider"].clone()
        ),
        (json!(e.read.0), json!(e.read.1)),
        "{what}"
    );
    close(&f["read_rate"], ratio(e.read.0, e.read.1), what);
    assert_eq!(
        (
            f["answered_messages"].clone(),
            f["customer_messages"].clone()
        ),
        (json!(e.reply.0), json!(e.reply.1)),
        "{what}"
    );
    close(&f["reply_rate"], ratio(e.reply.0, e.reply.1), what);
    assert_eq!(
        (
            f["provider_quick_replies"].clone(),
            f["provider_messages"].clone()
        ),
        (json!(e.quick.0), json!(e.quick.1)),
        "{what}"
    );
    close(&f["quick_reply_rate"], ratio(e.quick.0, e.quick.1), what);
}

/// The score's points by README's bands (config.yaml's defaults).
fn score_of(e: &Expected) -> Option<f64> {
    let rate_points = |r: Option<f64>, [ex, good, avg]: [f64; 3]| {
        r.map(|r| {
            if r >= ex {
                100.0
            } else if r >= good {
                75.0
            } else if r >= avg {
                50.0
            } else {
                25.0
            }
        })
    };
    let time = e.average.map(|s| {
        if s <= 3_600.0 {
            100.0
        } else if s <= 10_800.0 {
            75.0
        } else if s <= 86_400.0 {
            50.0
        } else {
            25.0
        }
    });
    let points: Vec<f64> = [
        time,
        rate_points(ratio(e.booked, e.conversations), [0.3, 0.2, 0.1]),
        rate_points(ratio(e.read.0, e.read.1), [0.95, 0.85, 0.7]),
        rate_points(ratio(e.reply.0, e.reply.1), [0.9, 0.75, 0.5]),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!points.is_empty()).then(|| points.iter().sum::<f64>() / points.len() as f64)
}

fn day_in(at: Timestamp, zone: &str) -> Date {
    at.in_tz(zone).unwrap().date()
}

async fn report(d: &Daemon, who: &Person, provider: usize, from: Date, to: Date) -> Value {
    let reply = d
        .get(
            &format!("/v1/providers/prov-{provider}/report?from={from}&to={to}"),
            &who.token,
        )
        .await;
    reply.expect(200);
    reply.body
}

async fn csv_of(d: &Daemon, provider: usize, from: Date, to: Date) -> (String, String) {
    let response = d
        .http
        .get(d.url(&format!(
            "/v1/providers/prov-{provider}/report?from={from}&to={to}"
        )))
        .bearer_auth(&operator().token)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (kind, response.text().await.unwrap())
}

#[tokio::test]
async fn a_scripted_month_gives_the_reports_figures_and_a_rebuild_keeps_them() {
    let data = tempfile::tempdir().unwrap();
    let launch = || Launch {
        data_dir: Some(data.path().to_owned()),
        config: vec![("clock", "manual".to_owned())],
        ..Launch::default()
    };
    let d = Daemon::launch(launch()).await;
    let t0 = pin_to_midsummer(&d).await;
    for (p, zone) in ZONES.iter().enumerate() {
        d.put(
            &format!("/v1/users/prov-{p}"),
            SERVICE_KEY,
            json!({"name": format!("P{p}"), "timezone": zone}),
        )
        .await
        .expect(200);
        d.put(
            &format!("/v1/listings/listing-{p}"),
            SERVICE_KEY,
            json!({"title": "Boat", "price": 50.0, "currency": "EUR", "provider_id": format!("prov-{p}")}),
        )
        .await
        .expect(200);
    }
    let plans = plans(t0);
    let played = play(&d, &plans, &timeline(&plans)).await;
    settled(&d).await;

    // The second half of the month in each provider's zone; the previous
    // period is the first half.
    let first = day_in(t0, "UTC");
    let (from, to) = (
        first + jiff::ToSpan::days(15),
        first + jiff::ToSpan::days(29),
    );
    let (prev_from, prev_to) = (first, first + jiff::ToSpan::days(14));
    let in_period = |conv: usize, from: Date, to: Date| {
        let plan = &plans[conv];
        let day = day_in(plan.inquiry_at, ZONES[plan.provider]);
        from <= day && day <= to
    };
    let mut scores = BTreeMap::new();
    let mut reports = Vec::new();
    for (p, zone) in ZONES.iter().enumerate() {
        let rows: Vec<usize> = (0..plans.len())
            .filter(|&c| plans[c].provider == p && in_period(c, from, to))
            .collect();
        let previous: Vec<usize> = (0..plans.len())
            .filter(|&c| plans[c].provider == p && in_period(c, prev_from, prev_to))
            .collect();
        assert!(
            !rows.is_empty() && !previous.is_empty(),
            "the script fills both halves"
        );
        let now = expected(&rows.iter().map(|&c| &played[c].1).collect::<Vec<_>>());
        let before = expected(&previous.iter().map(|&c| &played[c].1).collect::<Vec<_>>());
        let who = Person::new(&format!("prov-{p}"), "provider");
        let r = report(&d, &who, p, from, to).await;
        assert_eq!(r["time_zone"], *zone, "{r}");
        assert_eq!(r["period"]["from"], from.to_string());
        assert_eq!(r["previous_period"]["from"], prev_from.to_string());
        assert_eq!(r["previous_period"]["to"], prev_to.to_string());
        check_figures(&r["figures"], &now, &format!("prov-{p}"));
        check_figures(&r["previous"], &before, &format!("prov-{p} previous"));
        // The trend.
        assert_eq!(
            r["change"]["conversations"],
            now.conversations as i64 - before.conversations as i64
        );
        let minus = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        close(
            &r["change"]["median_first_response_seconds"],
            minus(now.median, before.median),
            "change",
        );
        close(
            &r["change"]["reply_rate"],
            minus(
                ratio(now.reply.0, now.reply.1),
                ratio(before.reply.0, before.reply.1),
            ),
            "change",
        );
        // The rows: the period's conversations in inquiry order, with the
        // messages each figure took.
        let listed = r["conversations"].as_array().unwrap();
        let ids: Vec<&str> = listed
            .iter()
            .map(|row| row["conversation_id"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = rows.iter().map(|&c| played[c].0.as_str()).collect();
        assert_eq!(ids, want);
        for (row, &c) in listed.iter().zip(&rows) {
            let t = &played[c].1;
            assert_eq!(row["inquiry_seq"], 1, "{row}");
            assert_eq!(
                row["first_response_seq"],
                json!(t.first_response_seq),
                "{row}"
            );
            assert_eq!(
                row["first_response_seconds"],
                json!(t.first_response),
                "{row}"
            );
            assert_eq!(row["booked"], t.booked, "{row}");
            assert_eq!(row["read_by_provider"], t.read, "{row}");
        }
        // The same rows as CSV.
        let (kind, text) = csv_of(&d, p, from, to).await;
        assert!(kind.starts_with("text/csv"), "{kind}");
        let mut csv = csv::Reader::from_reader(text.as_bytes());
        let header = csv.headers().unwrap().clone();
        let column = |name: &str| header.iter().position(|h| h == name).unwrap();
        let records: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), rows.len());
        for (record, &c) in records.iter().zip(&rows) {
            let t = &played[c].1;
            assert_eq!(&record[column("conversation_id")], played[c].0);
            assert_eq!(
                &record[column("customer_messages")],
                t.customer_messages.to_string()
            );
            let first = t.first_response.map(|s| s.to_string()).unwrap_or_default();
            assert_eq!(&record[column("first_response_seconds")], first);
        }
        scores.insert(p, (score_of(&now), rows));
        reports.push(r);
    }
    // The score, and the percentile rank among the three providers.
    let all: Vec<f64> = scores.values().filter_map(|(s, _)| *s).collect();
    for (p, r) in reports.iter().enumerate() {
        let own = scores[&p].0.unwrap();
        close(&r["score"]["overall"], Some(own), "overall");
        let below = all.iter().filter(|&&s| s < own).count() as f64;
        let equal = all.iter().filter(|&&s| s == own).count() as f64;
        close(
            &r["score"]["percentile"],
            Some(100.0 * (below + equal / 2.0) / 3.0),
            "percentile",
        );
        assert_eq!(r["score"]["providers"], 3);
    }
    // The platform comparison: booking rates of inquiries answered within
    // an hour and later, over every provider's period.
    let answered: Vec<&Tally> = scores
        .values()
        .flat_map(|(_, rows)| rows.iter().map(|&c| &played[c].1))
        .filter(|t| t.first_response.is_some())
        .collect();
    let (fast, slow): (Vec<&Tally>, Vec<&Tally>) = answered
        .iter()
        .partition(|t| t.first_response <= Some(3_600));
    let booked = |ts: &[&Tally]| ts.iter().filter(|t| t.booked).count() as u64;
    let fast_rate = ratio(booked(&fast), fast.len() as u64);
    let slow_rate = ratio(booked(&slow), slow.len() as u64);
    for r in &reports {
        close(
            &r["platform"]["booking_rate_answered_within_1h"],
            fast_rate,
            "fast",
        );
        close(
            &r["platform"]["booking_rate_answered_later"],
            slow_rate,
            "later",
        );
    }
    // The slow provider is told how much faster answers book here.
    let slow_median = reports[2]["figures"]["median_first_response_seconds"]
        .as_f64()
        .unwrap();
    let advice: Vec<&str> = reports[2]["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    let multiple = fast_rate
        .zip(slow_rate)
        .filter(|(_, s)| *s > 0.0)
        .map(|(f, s)| f / s);
    assert_eq!(
        advice.contains(&"answer_within_an_hour"),
        slow_median > 3_600.0 && multiple.is_some_and(|m| m > 1.0),
        "{advice:?}, median {slow_median}, multiple {multiple:?}"
    );
    if let Some(text) = reports[2]["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "answer_within_an_hour")
    {
        let shown = format!("book {:.1}× more", multiple.unwrap());
        assert!(text["text"].as_str().unwrap().contains(&shown), "{text}");
    }
    // An operator reads the same report.
    assert_eq!(report(&d, &operator(), 0, from, to).await, reports[0]);

    // Stopped, rebuilt from history, restarted: the same reports.
    d.stop().await;
    rebuild_analytics(data.path());
    let d = Daemon::launch(launch()).await;
    for (p, before) in reports.iter().enumerate() {
        let after = report(&d, &operator(), p, from, to).await;
        assert_eq!(&after, before, "prov-{p} after the rebuild");
    }
    d.stop().await;
}

/// Dates that are no dates, reversed, or too far apart are 400 with a
/// message; an id that is no provider is 404 for an operator too; another
/// provider's report is 404 (not revealed) and a customer is refused.
#[tokio::test]
async fn bad_periods_and_unknown_providers_are_refused_clearly() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let path = |query: &str| format!("/v1/providers/{}/report{query}", p.provider.id);
    for (query, says) in [
        ("?from=2030-13-01", "not a date"),
        ("?from=2030-07-10&to=2030-07-01", "after"),
        ("?from=2029-01-01&to=2030-07-01", "at most 366"),
    ] {
        let reply = d.get(&path(query), &p.provider.token).await;
        assert_eq!(
            reply.expect_error(400),
            "bad_request",
            "{query}: {:?}",
            reply.body
        );
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{query}: {message}");
    }
    let reply = d.get(&path("?since=2030-01-01"), &p.provider.token).await;
    assert_eq!(reply.status, 400, "{:?}", reply.body);
    // Without dates: the last 30 days, ending today in the provider's zone.
    let reply = d.get(&path(""), &p.provider.token).await;
    reply.expect(200);
    assert_eq!(reply.body["period"]["days"], 30);
    let today = jiff::Timestamp::now()
        .in_tz("Europe/Paris")
        .unwrap()
        .date()
        .to_string();
    let to = reply.body["period"]["to"].as_str().unwrap();
    assert!(to == today || to > today.as_str(), "{to} {today}");
    let reply = d
        .get("/v1/providers/nobody/report", &operator().token)
        .await;
    assert_eq!(reply.expect_error(404), "not_found");
    let other = Person::new("prov-2", "provider");
    assert_eq!(d.get(&path(""), &other.token).await.status, 404);
    assert_eq!(d.get(&path(""), &p.customer.token).await.status, 403);
    d.stop().await;
}

/// The recommendations are data: an edit of `templates/reports.yaml` is in
/// force at the next report; an invalid one is refused with its place in
/// the file, and the recommendations before it keep serving.
#[tokio::test]
async fn recommendations_reload_with_the_templates_and_a_bad_edit_keeps_the_last_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::with_config(copy_rules(dir.path())).await;
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "c-1", "Hi, free on Friday?")
        .await
        .expect(201);
    settled(&d).await;
    let path = format!("/v1/providers/{}/report", p.provider.id);
    let advice = |report: &Value| -> Vec<String> {
        report["recommendations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let shipped = d.get(&path, &p.provider.token).await;
    shipped.expect(200);
    assert!(
        advice(&shipped.body)
            .iter()
            .any(|a| a.contains("0% of your inquiries")),
        "{:?}",
        advice(&shipped.body)
    );
    let version = rules_after(&d, |_| true).await["version"].as_u64().unwrap();
    let file = dir.path().join("templates/reports.yaml");
    std::fs::write(
        &file,
        "recommendations:\n  - id: count\n    when: figures.conversations > 0\n    text: \"You had {figures.conversations} inquiries, {figures.response_rate_percent} answered.\"\n",
    )
    .unwrap();
    rules_after(&d, |s| s["version"].as_u64() > Some(version)).await;
    let edited = d.get(&path, &p.provider.token).await;
    assert_eq!(advice(&edited.body), ["You had 1 inquiries, 0% answered."]);

    std::fs::write(
        &file,
        "recommendations:\n  - id: count\n    when: \"true\"\n    text: \"{figures.no_such_figure}\"\n",
    )
    .unwrap();
    let status = rules_after(&d, |s| !s["last_failure"].is_null()).await;
    let error = &status["last_failure"]["errors"][0];
    assert!(
        error["file"].as_str().unwrap().ends_with("reports.yaml"),
        "{status}"
    );
    assert_eq!(error["line"], 4, "{status}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no_such_figure"),
        "{status}"
    );
    let kept = d.get(&path, &p.provider.token).await;
    assert_eq!(advice(&kept.body), ["You had 1 inquiries, 0% answered."]);
    d.expect_log_errors("reports.yaml");
    d.stop().await;
}
