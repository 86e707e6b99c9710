//! The OpenAPI 3 document served at `/openapi.json`, generated from the route
//! annotations so it cannot drift from the handlers. The annotations give each
//! route's successes and the failures only it has; [`ErrorStatuses`] adds the
//! failures every route of the same shape shares, so none is forgotten.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, ObjectBuilder, Ref, RefOr, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "parleyd",
        description = "Messaging engine for two-sided marketplaces. Errors are `{\"error\": {\"code\", \"message\"}}`; every operation lists every status it can return. The WebSocket `GET /v1/stream?since=CURSOR` carries the same event frames as `GET /v1/events`; see README.md for its frames."
    ),
    paths(
        super::http::put_user,
        super::http::put_listing,
        super::http::open_conversation,
        super::http::list_conversations,
        super::http::get_conversation,
        super::http::list_messages,
        super::http::conversation_metrics,
        super::http::provider_report,
        super::http::send_message,
        super::http::mark_read,
        super::http::mark_delivered,
        super::http::typing,
        super::http::create_booking,
        super::http::update_booking,
        super::http::post_signal,
        super::http::analyze_contact,
        super::http::admin_rules,
        super::http::admin_flags,
        super::http::admin_clock,
        super::http::admin_outbox,
        super::http::admin_notification,
        super::http::admin_redrive,
        super::http::admin_pipeline_dead,
        super::http::admin_pipeline_redrive,
        super::http::admin_user_notifications,
        super::http::admin_pipeline,
        super::http::admin_pipeline_settled,
        super::http::admin_fault,
        super::http::admin_experiments,
        super::http::admin_experiment,
        super::http::admin_analytics,
        super::stream::long_poll,
        stream_doc,
        healthz_doc,
        metrics_doc,
        openapi_doc,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&BearerAuth, &ErrorStatuses)
)]
struct Document;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT (HS256) or the service key")
                    .description(Some(format!(
                        "An HS256 JWT with `sub`, `role` and `exp` (accepted up to {} s past \
                         `exp`), or the service key.",
                        crate::auth::CLOCK_SKEW_LEEWAY_SECONDS
                    )))
                    .build(),
            ),
        );
    }
}

/// Completes each operation's responses with the statuses its shape makes the
/// code return, and gives every error response the `ErrorBody` schema:
///
/// - every route: 429 and 503 from the connection layer (`server::admission`:
///   a client address past its limits, every connection slot taken); a
///   secured route also 503 `overloaded` when `storage.writer_queue` writes
///   wait for the writer (`store::writer`);
/// - secured (every `/v1` route): 401 from `Authenticator::authenticate`, 403
///   from `Caller::require` (every `/v1` route serves only some roles), 500
///   when storage fails;
/// - a request body (`json_body`): 400 malformed JSON, 408 not arrived within
///   `connections.body_read_timeout`, 413 larger than `limits.max_body_bytes`,
///   422 well-formed but of the wrong shape or value;
/// - query parameters (`warp::query` with `deny_unknown_fields`): 400 for a
///   value of the wrong type or an unknown parameter;
/// - path parameters: 404, whether nothing has that id (or nothing the caller
///   may see) or the segment is empty and no route matches;
/// - 429 and 503 carry `Retry-After` (but for a route that describes its own
///   failure body, `/healthz`); POSTs and PATCHes of the `service` tag take an
///   `Idempotency-Key` header (`api::idempotency`), with its 409 and 422.
struct ErrorStatuses;

impl Modify for ErrorStatuses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in [&mut item.post, &mut item.patch].into_iter().flatten() {
                if has_tag(op, "service") {
                    add_idempotency_key(op);
                }
            }
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                complete(op);
            }
        }
    }
}

/// What a failure status means, for a response the annotation did not describe.
fn meaning(status: u16) -> &'static str {
    match status {
        400 => "malformed request: bad JSON, or a query parameter of the wrong type or unknown",
        401 => "no bearer token, or a malformed, invalid or expired one",
        403 => "the caller's role may not use this route",
        404 => "no such resource, or none the caller may see",
        408 => "the request body did not arrive within connections.body_read_timeout",
        409 => "conflicts with the current state",
        413 => "request body larger than limits.max_body_bytes",
        422 => "well-formed but invalid: a body of the wrong shape, or an invalid value",
        429 => "too many requests; retry after Retry-After seconds",
        500 => "internal error (details in the daemon's log)",
        503 => {
            "unavailable (every connection slot taken, or shutting down), or overloaded \
                (code `overloaded`: the writer's queue is full, nothing was stored); \
                retry after Retry-After seconds"
        }
        _ => "error",
    }
}

/// The statuses an operation returns because of its shape (see [`ErrorStatuses`]).
fn implied_statuses(op: &Operation) -> Vec<u16> {
    let mut statuses = vec![429, 503];
    if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
        statuses.extend([401, 403, 500]);
    }
    if op.request_body.is_some() {
        statuses.extend([400, 408, 413, 422]);
    }
    let params = op.parameters.iter().flatten();
    for p in params {
        match p.parameter_in {
            ParameterIn::Query => statuses.push(400),
            ParameterIn::Path => statuses.push(404),
            _ => {}
        }
    }
    statuses
}

fn has_tag(op: &Operation, tag: &str) -> bool {
    op.tags.iter().flatten().any(|t| t == tag)
}

/// Adds the implied statuses, then gives every error response the error body
/// (and 429 and 503 their `Retry-After`).
fn complete(op: &mut Operation) {
    let implied = implied_statuses(op);
    let responses = &mut op.responses.responses;
    for status in implied {
        responses
            .entry(status.to_string())
            .or_insert_with(|| ResponseBuilder::new().description(meaning(status)).into());
    }
    for (status, response) in responses.iter_mut() {
        let (Ok(code), RefOr::T(response)) = (status.parse::<u16>(), response) else {
            continue;
        };
        if code < 400 {
            continue;
        }
        if response.description.is_empty() {
            response.description = meaning(code).to_owned();
        }
        // A route that describes its own failure body (`/healthz`) keeps it.
        let own_body = response.content.contains_key("application/json");
        response
            .content
            .entry("application/json".to_owned())
            .or_insert_with(|| Content::new(Some(Ref::from_schema_name("ErrorBody"))));
        if code == 429 || (code == 503 && !own_body) {
            response.headers.insert(
                "Retry-After".to_owned(),
                HeaderBuilder::new()
                    .schema(
                        ObjectBuilder::new()
                            .schema_type(SchemaType::Type(Type::Integer))
                            .minimum(Some(1)),
                    )
                    .description(Some("seconds to wait before trying again"))
                    .build(),
            );
        }
    }
}

/// Declares the `Idempotency-Key` header of a write the service makes, and
/// the statuses it adds.
fn add_idempotency_key(op: &mut Operation) {
    let responses = &mut op.responses.responses;
    for (status, meaning) in [
        (409, "a request with this Idempotency-Key was still being answered after 10 s (code `idempotency_key_in_flight`)"),
        (422, "invalid body (code `invalid`), or an Idempotency-Key used for another request (code `idempotency_key_reused`)"),
    ] {
        responses
            .entry(status.to_string())
            .or_insert_with(|| ResponseBuilder::new().description(meaning).into());
    }
    let header = ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "1-255 visible ASCII characters; the same key with the same request replays the first answer (`Idempotent-Replayed: true`); with another request, 422",
        ))
        .schema(Some(
            ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)),
        ))
        .build();
    op.parameters.get_or_insert_with(Vec::new).push(header);
}

pub fn document() -> utoipa::openapi::OpenApi {
    Document::openapi()
}

// Routes served outside the `/v1` JSON handlers, declared here so the document
// covers every route.

/// WebSocket stream of the caller's events; replays after `since`, then live.
#[utoipa::path(get, path = "/v1/stream",
    tag = "stream",
    params(("since" = Option<u64>, Query, description = "resume after this cursor"),
           ("token" = Option<String>, Query, description = "bearer token for clients that cannot set headers")),
    responses((status = 101, description = "switching to WebSocket"),
              (status = 400, description = "not a WebSocket (version 13) handshake, or a bad query parameter"),
              (status = 503, description = "connection limit reached, or shutting down; retry later")),
    security(("bearer" = [])))]
#[allow(dead_code)]
fn stream_doc() {}

/// Health: 200 `{"status":"ok"}` while every background component runs and
/// none is stuck (work waiting for it for `pipeline.stuck_after` without
/// moving); 503 naming the components down or stuck otherwise.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses(
    (status = 200, body = super::StatusReply),
    (status = 503, body = super::UnhealthyReply,
     description = "a background component is down or stuck (named in the body); or, with an error body, every connection slot is taken")))]
#[allow(dead_code)]
fn healthz_doc() {}

/// Prometheus metrics in text format.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
#[allow(dead_code)]
fn metrics_doc() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3 document", body = Object)))]
#[allow(dead_code)]
fn openapi_doc() {}
