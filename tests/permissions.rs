//! Who may call what, walked from the contract rather than written by hand
//! per route: every operation `/openapi.json` documents must have a row in
//! [`ACCESS`] (a new route without one fails the test), and each is called
//! with no token (401), with every role it is not open to (403), as a person
//! outside the conversation where it concerns one (404: its existence is not
//! revealed), and with the role it is open to (its success status). The
//! stream's client frames get the same outsider treatment.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// Who an operation is open to (shared/API.md's "who" column).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Service,
    Customer,
    /// Any customer or provider.
    Person,
    /// A customer or provider taking part in the conversation in the path.
    Participant,
    /// A participant, or an operator.
    ParticipantOrOperator,
    /// The provider in the path, or an operator.
    ProviderOrOperator,
    Operator,
}

/// One documented operation: who it is open to, a valid body, and the status
/// its allowed caller gets.
struct Row {
    method: &'static str,
    path: &'static str,
    who: Who,
    body: fn(&World) -> Option<Value>,
    allowed: u16,
}

/// What the rows' paths and bodies refer to.
struct World {
    pair: Pair,
    outsider: Person,
    booking_id: String,
}

fn none(_: &World) -> Option<Value> {
    None
}

/// The roles a caller can have, with the token each presents.
fn callers() -> Vec<(&'static str, String)> {
    vec![
        ("customer", Person::new("cust-1", "customer").token),
        ("provider", Person::new("prov-1", "provider").token),
        ("operator", operator().token),
        ("service", SERVICE_KEY.to_owned()),
    ]
}

fn open_to(who: Who, role: &str) -> bool {
    match who {
        Who::Service => role == "service",
        Who::Customer => role == "customer",
        Who::Person | Who::Participant => role == "customer" || role == "provider",
        Who::Operator => role == "operator",
        Who::ParticipantOrOperator => role != "service",
        Who::ProviderOrOperator => role == "provider" || role == "operator",
    }
}

const ACCESS: &[Row] = &[
    Row {
        method: "PUT",
        path: "/v1/users/{id}",
        who: Who::Service,
        body: |_| Some(json!({"name": "Nina", "timezone": "Europe/Paris"})),
        allowed: 200,
    },
    Row {
        method: "PUT",
        path: "/v1/listings/{id}",
        who: Who::Service,
        body: |w| {
            Some(json!({"title": "Canoe", "price": 10.0, "currency": "EUR",
                        "provider_id": w.pair.provider.id}))
        },
        allowed: 200,
    },
    Row {
        method: "POST",
        path: "/v1/conversations",
        who: Who::Customer,
        body: |w| Some(json!({"listing_id": w.pair.listing_id})),
        allowed: 200,
    },
    Row {
        method: "GET",
        path: "/v1/conversations",
        who: Who::Person,
        body: none,
        allowed: 200,
    },
    Row {
        method: "GET",
        path: "/v1/conversations/{id}",
        who: Who::Participant,
        body: none,
        allowed: 200,
    },
    Row {
        method: "GET",
        path: "/v1/conversations/{id}/messages",
        who: Who::Participant,
        body: none,
        allowed: 200,
    },
    Row {
        method: "GET",
        path: "/v1/conversations/{id}/metrics",
        who: Who::ParticipantOrOperator,
        body: none,
        allowed: 200,
    },
    Row {
        method: "GET",
        path: "/v1/providers/{id}/report",
        who: Who::ProviderOrOperator,
        body: none,
        allowed: 200,
    },
    Row {
        method: "POST",
        path: "/v1/conversations/{id}/messages",
        who: Who::Participant,
        body: |_| {
            Some(json!({"client_id": uuid::Uuid::new_v4().to_string(), "content": "Still free?"}))
        },
        allowed: 201,
    },
    Row {
        method: "POST",
        path: "/v1/conversations/{id}/read",
        who: Who::Participant,
        body: |_| Some(json!({"seq": 1})),
        allowed: 200,
    },
    Row {
        method: "POST",
        path: "/v1/conversations/{id}/delivered",
        who: Who::Participant,
        body: |_| Some(json!({"seq": 1})),
        allowed: 200,
    },
    Row {
        method: "POST",
        path: "/v1/conversations/{id}/typing",
        who: Who::Participant,
        body: none,
        allowed: 202,
    },
    Row {
        method: "POST",
        path: "/v1/bookings",
        who: Who::Service,
        body: |w| {
            Some(json!({"conversation_id": w.pair.conversation,
                        "start": "2027-05-01T09:00:00Z", "end": "2027-05-01T12:00:00Z"}))
        },
        allowed: 201,
    },
    Row {
        method: "PATCH",
        path: "/v1/bookings/{id}",
        who: Who::Service,
        body: |_| Some(json!({"stage": "preparation"})),
        allowed: 200,
    },
    Row {
        method: "POST",
        path: "/v1/signals",
        who: Who::Service,
        body: |w| {
            Some(
                json!({"type": "listing_viewed", "user_id": w.pair.customer.id,
                        "listing_id": w.pair.listing_id}),
            )
        },
        allowed: 202,
    },
    Row {
        method: "POST",
        path: "/v1/contact/analyze",
        who: Who::Person,
        body: |_| Some(json!({"content": "See you at the pier"})),
        allowed: 200,
    },
    Row {
        method: "GET",
        path: "/v1/events",
        who: Who::Person,
        body: none,
        allowed: 200,
    },
    Row {
        method: "GET",
        path: "/v1/admin/rules",
        who: Who::Operator,
        body: none,
        allowed: 200,
    },
    Row {
        method: "POST",
        path: "/v1/admin/clock",
        who: Who::Operator,
        body: |_| Some(json!({"advance": "1m"})),
        allowed: 200,
    },
    Row {
        method: "GET",
        path: "/v1/admin/flags",
        who: Who::Operator,
        body: none,
        allowed: 200,
    },
    Row {
        method: "GET",
        path: "/v1/admin/outbox",
        who: Who::Operator,
        body: none,
        allowed: 200,
    },
    Row {
        method: "GET",
        path: "/v1/admin/notifications/{id}",
        who: Who::Operator,
        body: none,
        // No such notification: the operator is let through to the look-up.
        allowed: 404,
    },
    Row {
        method: "GET",
        path: "/v1/admin/users/{id}/notifications",
        who: Who::Operator,
        body: none,
        allowed: 200,
    },
    Row {
        method: "POST",
        path: "/v1/admin/outbox/dead/{id}/{channel}/redrive",
        who: Who::Operator,
        body: none,
        allowed: 404,
    },
    Row {
        method: "GET",
        path: "/v1/admin/pipeline",
        who: Who::Operator,
        body: none,
        allowed: 200,
    },
    Row {
        method: "GET",
        path: "/v1/admin/pipeline/settled",
        who: Who::Operator,
        body: none,
        allowed: 200,
    },
    Row {
        method: "PUT",
        path: "/v1/admin/pipeline/components/{name}/fault",
        who: Who::Operator,
        body: |_| Some(json!({"fail": false})),
        allowed: 200,
    },
    Row {
        method: "GET",
        path: "/v1/admin/pipeline/dead",
        who: Who::Operator,
        body: none,
        allowed: 200,
    },
    Row {
        method: "POST",
        path: "/v1/admin/pipeline/dead/{id}/redrive",
        who: Who::Operator,
        body: none,
        allowed: 404,
    },
    Row {
        method: "GET",
        path: "/v1/admin/experiments",
        who: Who::Operator,
        body: none,
        allowed: 200,
    },
    Row {
        method: "GET",
        path: "/v1/admin/experiments/{name}",
        who: Who::Operator,
        body: none,
        // No experiment named "engine" in the rules: let through to the look-up.
        allowed: 404,
    },
    Row {
        method: "GET",
        path: "/v1/admin/analytics",
        who: Who::Operator,
        body: none,
        allowed: 200,
    },
];

/// Open to anyone, whatever token comes with the request.
const PUBLIC: &[&str] = &["/healthz", "/metrics", "/openapi.json"];

/// The concrete path of `row` in `world`.
fn concrete(row: &Row, world: &World) -> String {
    let id = if row.path.starts_with("/v1/conversations/") {
        world.pair.conversation.clone()
    } else if row.path.starts_with("/v1/bookings/") {
        world.booking_id.clone()
    } else if row.path.starts_with("/v1/users/") || row.path.starts_with("/v1/admin/users/") {
        world.pair.customer.id.clone()
    } else if row.path.starts_with("/v1/providers/") {
        world.pair.provider.id.clone()
    } else if row.path.starts_with("/v1/listings/") {
        world.pair.listing_id.clone()
    } else {
        "no-such-id".to_owned()
    };
    let path = row
        .path
        .replace("{id}", &id)
        .replace("{name}", "engine")
        .replace("{channel}", "email");
    if row.path == "/v1/events" {
        format!("{path}?since=0&wait=0")
    } else {
        path
    }
}

async fn call(d: &Daemon, row: &Row, world: &World, token: Option<&str>) -> Reply {
    let method = Method::from_bytes(row.method.as_bytes()).unwrap();
    let body = (row.body)(world);
    d.call(method, &concrete(row, world), token, body.as_ref())
        .await
}

/// Every `(method, path)` the contract documents, but the stream's upgrade.
async fn documented(d: &Daemon) -> Vec<(String, String)> {
    let reply = d.call(Method::GET, "/openapi.json", None, None).await;
    reply.expect(200);
    let mut operations = Vec::new();
    for (path, item) in reply.body["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "patch", "delete"].contains(&method.as_str()) {
                operations.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

#[tokio::test]
async fn every_documented_operation_refuses_whom_it_is_not_for_and_serves_whom_it_is() {
    let d = Daemon::with_config(vec![("clock", "manual".to_owned())]).await;
    let pair = pair(&d).await;
    let outsider = Person::new("cust-9", "customer");
    d.put(
        &format!("/v1/users/{}", outsider.id),
        SERVICE_KEY,
        json!({"name": "Olga", "timezone": "Europe/Paris"}),
    )
    .await
    .expect(200);
    d.send(
        &pair.customer,
        &pair.conversation,
        "q-1",
        "Hi! Free in May?",
    )
    .await
    .expect(201);
    let booking_id = book(
        &d,
        &pair.conversation,
        "2027-06-01T09:00:00Z",
        "2027-06-01T12:00:00Z",
    )
    .await;
    let world = World {
        booking_id,
        pair,
        outsider,
    };

    let documented = documented(&d).await;
    for (method, path) in &documented {
        let listed = ACCESS.iter().any(|r| r.method == method && r.path == path)
            || (method == "GET" && (PUBLIC.contains(&path.as_str()) || path == "/v1/stream"));
        assert!(
            listed,
            "{method} {path} is documented but has no row in ACCESS: say who it is for"
        );
    }
    for row in ACCESS {
        assert!(
            documented
                .iter()
                .any(|(m, p)| m == row.method && p == row.path),
            "{} {} has a row but is not in /openapi.json",
            row.method,
            row.path
        );
        let what = format!("{} {}", row.method, row.path);

        let reply = call(&d, row, &world, None).await;
        assert_eq!(
            reply.status, 401,
            "{what} without a token: {:?}",
            reply.body
        );
        assert_eq!(reply.body["error"]["code"], "unauthorized", "{what}");

        for (role, token) in callers() {
            if open_to(row.who, role) {
                continue;
            }
            let reply = call(&d, row, &world, Some(&token)).await;
            assert_eq!(reply.status, 403, "{what} as {role}: {:?}", reply.body);
            assert_eq!(reply.body["error"]["code"], "forbidden", "{what} as {role}");
        }

        let participants = matches!(row.who, Who::Participant | Who::ParticipantOrOperator);
        if participants {
            let reply = call(&d, row, &world, Some(&world.outsider.token)).await;
            assert_eq!(
                reply.status, 404,
                "{what} by someone outside the conversation: {:?}",
                reply.body
            );
        }
        if row.who == Who::ProviderOrOperator {
            let other = Person::new("prov-9", "provider");
            let reply = call(&d, row, &world, Some(&other.token)).await;
            assert_eq!(
                reply.status, 404,
                "{what} by another provider: {:?}",
                reply.body
            );
        }

        let allowed = match row.who {
            Who::Service => SERVICE_KEY.to_owned(),
            Who::Customer | Who::Person | Who::Participant | Who::ParticipantOrOperator => {
                world.pair.customer.token.clone()
            }
            Who::Operator => operator().token,
            Who::ProviderOrOperator => world.pair.provider.token.clone(),
        };
        let reply = call(&d, row, &world, Some(&allowed)).await;
        assert_eq!(
            reply.status, row.allowed,
            "{what} as allowed: {:?}",
            reply.body
        );
        if participants {
            let reply = call(&d, row, &world, Some(&world.pair.provider.token)).await;
            assert_eq!(
                reply.status, row.allowed,
                "{what} by the provider: {:?}",
                reply.body
            );
        }
        if matches!(
            row.who,
            Who::ParticipantOrOperator | Who::ProviderOrOperator
        ) {
            let reply = call(&d, row, &world, Some(&operator().token)).await;
            assert_eq!(
                reply.status, row.allowed,
                "{what} by an operator: {:?}",
                reply.body
            );
        }
    }
}

/// Stream frames into a conversation the sender is not part of are answered
/// as if it did not exist, and change nothing its participants can see.
#[tokio::test]
async fn stream_frames_into_someone_elses_conversation_are_not_found() {
    let d = Daemon::start().await;
    let pair = pair(&d).await;
    d.send(&pair.customer, &pair.conversation, "q-1", "Hi!")
        .await
        .expect(201);
    let outsider = Person::new("cust-9", "customer");
    let mut ws = d.ws(&outsider, None).await;
    let c = &pair.conversation;
    ws.send_json(
        json!({"type": "send", "conversation_id": c, "client_id": "x-1", "content": "psst"}),
    )
    .await;
    let error = ws.next_of("error").await;
    assert_eq!(error["client_id"], "x-1", "{error}");
    assert_eq!(error["error"]["code"], "not_found", "{error}");
    for frame in [
        json!({"type": "read", "conversation_id": c, "seq": 1}),
        json!({"type": "delivered", "conversation_id": c, "seq": 1}),
        json!({"type": "typing", "conversation_id": c}),
    ] {
        ws.send_json(frame.clone()).await;
        let error = ws.next_of("error").await;
        assert_eq!(error["error"]["code"], "not_found", "{frame} -> {error}");
    }

    let messages = d.messages(&pair.customer, c).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0]["read_at"].is_null(), "{messages:?}");
    let listed = d.listed(&pair.provider, c).await;
    assert_eq!(listed["unread_count"], 1, "{listed}");

    // Only people have a stream.
    for (role, token) in [
        ("operator", operator().token),
        ("service", SERVICE_KEY.to_owned()),
    ] {
        let refused = d.try_ws(&token, None).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 403, "{role}")
            }
            other => panic!("{role} opened a stream: {:?}", other.map(|_| ())),
        }
    }
    match d.try_ws("", None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        other => panic!("a stream without a token: {:?}", other.map(|_| ())),
    }
}
