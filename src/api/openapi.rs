//! The OpenAPI 3 document served at `/openapi.json`, generated from the route
//! annotations so it cannot drift from the handlers.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "parleyd",
        description = "Messaging engine for two-sided marketplaces. Errors are `{\"error\": {\"code\", \"message\"}}`. The WebSocket `GET /v1/stream?since=CURSOR` carries the same event frames as `GET /v1/events`; see README.md for its frames."
    ),
    paths(
        super::http::put_user,
        super::http::put_listing,
        super::http::open_conversation,
        super::http::list_conversations,
        super::http::get_conversation,
        super::http::list_messages,
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
        super::http::admin_user_notifications,
        super::stream::long_poll,
        stream_doc,
        healthz_doc,
        metrics_doc,
        openapi_doc,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&BearerAuth)
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
                    .build(),
            ),
        );
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    Document::openapi()
}

// Routes served outside the `/v1` JSON handlers, declared here so the document
// covers every route.

/// WebSocket stream of the caller's events; replays after `since`, then live.
#[utoipa::path(get, path = "/v1/stream",
    params(("since" = Option<u64>, Query, description = "resume after this cursor"),
           ("token" = Option<String>, Query, description = "bearer token for clients that cannot set headers")),
    responses((status = 101, description = "switching to WebSocket"), (status = 401), (status = 503, description = "connection limit reached")),
    security(("bearer" = [])))]
#[allow(dead_code)]
fn stream_doc() {}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "`{\"status\":\"ok\"}`")))]
#[allow(dead_code)]
fn healthz_doc() {}

/// Prometheus metrics in text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
#[allow(dead_code)]
fn metrics_doc() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3 document")))]
#[allow(dead_code)]
fn openapi_doc() {}
