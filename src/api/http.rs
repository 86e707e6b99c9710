//! The JSON-over-HTTP routes of `/v1` (the stream and long-poll live in `stream`).

use std::sync::Arc;

use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::Filter;

use super::idempotency::{self, keyed_json_body, InFlight, Keyed};
use super::limits::{Action, UserLimits};
use super::{caller, json_body, respond, BodyLimits, Response};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::model::{BookingInput, BookingPatch, ListingInput, SendInput, SignalInput, UserInput};
use crate::service::App;

type Auth = Result<Caller, ApiError>;
type Body<T> = Result<T, ApiError>;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenConversation {
    pub listing_id: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadInput {
    /// Up to and including this `seq`.
    pub seq: u64,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Only messages with a greater `seq` (default 0: from the start).
    pub after: Option<u64>,
    /// At most this many (1-500, default 100; outside that range, 422).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FlagsQuery {
    /// Only records after this flag id (ids are time-ordered).
    pub after: Option<String>,
    /// At most this many (1-500, default 100; outside that range, 422).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    /// At most this many (1-500, default 50; outside that range, 422).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PeriodQuery {
    /// The first day, `YYYY-MM-DD` (UTC); default 29 days before `to`.
    pub from: Option<String>,
    /// The last day, included, `YYYY-MM-DD` (UTC); default today. At most
    /// 366 days from `from`.
    pub to: Option<String>,
}

pub fn routes(app: Arc<App>, user_limits: Arc<UserLimits>) -> BoxedFilter<(Response,)> {
    let limit = BodyLimits::of(app.config());
    let with_app = {
        let app = app.clone();
        warp::any().map(move || app.clone())
    };
    let with_limits = warp::any().map(move || user_limits.clone());
    let who = caller(app);
    let v1 = warp::path("v1");
    let in_flight = {
        let in_flight = InFlight::default();
        warp::any().map(move || in_flight.clone())
    };

    let put_user = v1
        .and(warp::path!("users" / String))
        .and(warp::put())
        .and(with_app.clone())
        .and(who.clone())
        .and(json_body(limit))
        .then(put_user);
    let put_listing = v1
        .and(warp::path!("listings" / String))
        .and(warp::put())
        .and(with_app.clone())
        .and(who.clone())
        .and(json_body(limit))
        .then(put_listing);
    let open_conversation = v1
        .and(warp::path!("conversations"))
        .and(warp::post())
        .and(with_app.clone())
        .and(who.clone())
        .and(json_body(limit))
        .then(open_conversation);
    let list_conversations = v1
        .and(warp::path!("conversations"))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .then(list_conversations);
    let get_conversation = v1
        .and(warp::path!("conversations" / String))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .then(get_conversation);
    let conversation_metrics = v1
        .and(warp::path!("conversations" / String / "metrics"))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .then(conversation_metrics);
    let provider_report = v1
        .and(warp::path!("providers" / String / "report"))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .and(warp::query::<ReportQuery>())
        .and(warp::header::optional::<String>("accept"))
        .then(provider_report);
    let list_messages = v1
        .and(warp::path!("conversations" / String / "messages"))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .and(warp::query::<PageQuery>())
        .then(list_messages);
    let send_message = v1
        .and(warp::path!("conversations" / String / "messages"))
        .and(warp::post())
        .and(with_app.clone())
        .and(who.clone())
        .and(json_body(limit))
        .then(send_message);
    let read = v1
        .and(warp::path!("conversations" / String / "read"))
        .and(warp::post())
        .and(with_app.clone())
        .and(with_limits.clone())
        .and(who.clone())
        .and(json_body(limit))
        .then(mark_read);
    let delivered = v1
        .and(warp::path!("conversations" / String / "delivered"))
        .and(warp::post())
        .and(with_app.clone())
        .and(with_limits.clone())
        .and(who.clone())
        .and(json_body(limit))
        .then(mark_delivered);
    let typing = v1
        .and(warp::path!("conversations" / String / "typing"))
        .and(warp::post())
        .and(with_app.clone())
        .and(with_limits)
        .and(who.clone())
        .then(typing);
    let create_booking = v1
        .and(warp::path!("bookings"))
        .and(warp::post())
        .and(with_app.clone())
        .and(in_flight.clone())
        .and(who.clone())
        .and(keyed_json_body(limit))
        .then(create_booking);
    let update_booking = v1
        .and(warp::path!("bookings" / String))
        .and(warp::patch())
        .and(with_app.clone())
        .and(in_flight.clone())
        .and(who.clone())
        .and(keyed_json_body(limit))
        .then(update_booking);
    let signal = v1
        .and(warp::path!("signals"))
        .and(warp::post())
        .and(with_app.clone())
        .and(in_flight)
        .and(who.clone())
        .and(keyed_json_body(limit))
        .then(post_signal);

    let analyze = v1
        .and(warp::path!("contact" / "analyze"))
        .and(warp::post())
        .and(with_app.clone())
        .and(who.clone())
        .and(json_body(limit))
        .then(analyze_contact);
    let admin_rules = v1
        .and(warp::path!("admin" / "rules"))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .then(admin_rules);
    let admin_clock = v1
        .and(warp::path!("admin" / "clock"))
        .and(warp::post())
        .and(with_app.clone())
        .and(who.clone())
        .and(json_body(limit))
        .then(admin_clock);
    let admin_flags = v1
        .and(warp::path!("admin" / "flags"))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .and(warp::query::<FlagsQuery>())
        .then(admin_flags);

    let admin_outbox = v1
        .and(warp::path!("admin" / "outbox"))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .then(admin_outbox);
    let admin_notification = v1
        .and(warp::path!("admin" / "notifications" / String))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .then(admin_notification);
    let admin_user_notifications = v1
        .and(warp::path!("admin" / "users" / String / "notifications"))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .and(warp::query::<LimitQuery>())
        .then(admin_user_notifications);
    let admin_pipeline = v1
        .and(warp::path!("admin" / "pipeline"))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .then(admin_pipeline);
    let admin_pipeline_settled = v1
        .and(warp::path!("admin" / "pipeline" / "settled"))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .and(warp::query::<SettleQuery>())
        .then(admin_pipeline_settled);
    let admin_fault = v1
        .and(warp::path!(
            "admin" / "pipeline" / "components" / String / "fault"
        ))
        .and(warp::put())
        .and(with_app.clone())
        .and(who.clone())
        .and(json_body(limit))
        .then(admin_fault);
    let admin_redrive = v1
        .and(warp::path!(
            "admin" / "outbox" / "dead" / String / String / "redrive"
        ))
        .and(warp::post())
        .and(with_app.clone())
        .and(who.clone())
        .then(admin_redrive);
    let admin_pipeline_dead = v1
        .and(warp::path!("admin" / "pipeline" / "dead"))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .and(warp::query::<LimitQuery>())
        .then(admin_pipeline_dead);
    let admin_experiments = v1
        .and(warp::path!("admin" / "experiments"))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .then(admin_experiments);
    let admin_experiment = v1
        .and(warp::path!("admin" / "experiments" / String))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .then(admin_experiment);
    let admin_analytics = v1
        .and(warp::path!("admin" / "analytics"))
        .and(warp::get())
        .and(with_app.clone())
        .and(who.clone())
        .and(warp::query::<PeriodQuery>())
        .then(admin_analytics);
    let admin_pipeline_redrive = v1
        .and(warp::path!(
            "admin" / "pipeline" / "dead" / String / "redrive"
        ))
        .and(warp::post())
        .and(with_app.clone())
        .and(who.clone())
        .then(admin_pipeline_redrive);

    // Each group is boxed: one long `.or()` chain makes a type that takes
    // rustc minutes to check.
    let people = put_user
        .or(put_listing)
        .unify()
        .or(open_conversation)
        .unify()
        .or(list_conversations)
        .unify()
        .or(get_conversation)
        .unify()
        .or(list_messages)
        .unify()
        .or(conversation_metrics)
        .unify()
        .or(provider_report)
        .unify()
        .or(send_message)
        .unify()
        .or(read)
        .unify()
        .or(delivered)
        .unify()
        .or(typing)
        .unify()
        .boxed();
    let service = create_booking
        .or(update_booking)
        .unify()
        .or(signal)
        .unify()
        .or(analyze)
        .unify()
        .boxed();
    let admin = admin_rules
        .or(admin_flags)
        .unify()
        .or(admin_clock)
        .unify()
        .or(admin_outbox)
        .unify()
        .or(admin_notification)
        .unify()
        .or(admin_redrive)
        .unify()
        .or(admin_pipeline_dead)
        .unify()
        .or(admin_pipeline_redrive)
        .unify()
        .or(admin_user_notifications)
        .unify()
        .or(admin_pipeline)
        .unify()
        .or(admin_pipeline_settled)
        .unify()
        .or(admin_fault)
        .unify()
        .or(admin_experiments)
        .unify()
        .or(admin_experiment)
        .unify()
        .or(admin_analytics)
        .unify()
        .boxed();
    people.or(service).unify().or(admin).unify().boxed()
}

/// Registers or replaces a user (the marketplace backend).
#[utoipa::path(put, path = "/v1/users/{id}", tag = "service", request_body = UserInput,
    params(("id" = String, Path, description = "the marketplace's user id")),
    responses((status = 200, body = crate::model::User)),
    security(("bearer" = [])))]
pub async fn put_user(id: String, app: Arc<App>, who: Auth, body: Body<UserInput>) -> Response {
    respond(StatusCode::OK, (|| app.put_user(who?, &id, body?))())
}

/// Registers or replaces a listing (the marketplace backend).
#[utoipa::path(put, path = "/v1/listings/{id}", tag = "service", request_body = ListingInput,
    params(("id" = String, Path, description = "the marketplace's listing id")),
    responses((status = 200, body = crate::model::Listing)),
    security(("bearer" = [])))]
pub async fn put_listing(
    id: String,
    app: Arc<App>,
    who: Auth,
    body: Body<ListingInput>,
) -> Response {
    respond(StatusCode::OK, (|| app.put_listing(who?, &id, body?))())
}

/// Opens the customer's pre-booking conversation about a listing, or returns it.
#[utoipa::path(post, path = "/v1/conversations", tag = "conversations", request_body = OpenConversation,
    responses((status = 201, description = "opened", body = crate::model::ConversationView),
              (status = 200, description = "already open", body = crate::model::ConversationView),
              (status = 404, description = "no such listing"),
              (status = 422, description = "invalid body, or the caller is the listing's provider")),
    security(("bearer" = [])))]
pub async fn open_conversation(app: Arc<App>, who: Auth, body: Body<OpenConversation>) -> Response {
    let result = async { app.open_conversation(who?, &body?.listing_id).await }.await;
    match result {
        Ok((view, true)) => super::json(StatusCode::CREATED, &view),
        other => respond(StatusCode::OK, other.map(|(view, _)| view)),
    }
}

/// The caller's conversations, most recently active first.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations",
    responses((status = 200, body = [crate::model::ConversationView])),
    security(("bearer" = [])))]
pub async fn list_conversations(app: Arc<App>, who: Auth) -> Response {
    respond(StatusCode::OK, who.and_then(|c| app.list_conversations(c)))
}

/// One conversation with its listing context card.
#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "conversations",
    params(("id" = String, Path)),
    responses((status = 200, body = crate::model::ConversationView)),
    security(("bearer" = [])))]
pub async fn get_conversation(id: String, app: Arc<App>, who: Auth) -> Response {
    respond(
        StatusCode::OK,
        who.and_then(|c| app.get_conversation(c, &id)),
    )
}

/// The conversation's metrics (README.md, "Conversation metrics"): for its
/// participants and operators.
#[utoipa::path(get, path = "/v1/conversations/{id}/metrics", tag = "conversations",
    params(("id" = String, Path)),
    responses((status = 200, body = crate::analytics::metrics::ConversationMetricsView)),
    security(("bearer" = [])))]
pub async fn conversation_metrics(id: String, app: Arc<App>, who: Auth) -> Response {
    respond(
        StatusCode::OK,
        who.and_then(|c| app.conversation_metrics(c, &id)),
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// First day, `YYYY-MM-DD` in the provider's time zone (default: 29
    /// days before `to`).
    pub from: Option<String>,
    /// Last day, included (default: today on the daemon's clock, or `from`
    /// when that is later). At most 366 days from `from`.
    pub to: Option<String>,
}

/// The provider's report (README.md, "Provider reports"): for that provider
/// and operators. JSON, or with `Accept: text/csv` the conversations it
/// counted, one CSV line each after a header line.
#[utoipa::path(get, path = "/v1/providers/{id}/report", tag = "analytics",
    params(("id" = String, Path), ReportQuery),
    responses((status = 200, description = "the report; with `Accept: text/csv`, its conversations",
               content((crate::analytics::report::Report = "application/json"), (String = "text/csv"))),
              (status = 400, description = "`from` or `to` not a date (YYYY-MM-DD), `from` after `to`, a period over 366 days, or an unknown query parameter")),
    security(("bearer" = [])))]
pub async fn provider_report(
    id: String,
    app: Arc<App>,
    who: Auth,
    query: ReportQuery,
    accept: Option<String>,
) -> Response {
    // Thousands of records read and summed: off the runtime's workers.
    let report = tokio::task::spawn_blocking(move || {
        app.provider_report(who?, &id, query.from.as_deref(), query.to.as_deref())
    })
    .await
    .unwrap_or_else(|e| Err(ApiError::Internal(format!("the report failed: {e}"))));
    let csv = accept.is_some_and(|a| {
        a.split(',')
            .any(|t| t.trim().to_ascii_lowercase().starts_with("text/csv"))
    });
    match report {
        Ok(report) if csv => match crate::analytics::report::csv(&report.conversations) {
            Ok(text) => warp::Reply::into_response(warp::reply::with_header(
                text,
                "content-type",
                "text/csv; charset=utf-8",
            )),
            Err(e) => respond::<()>(
                StatusCode::OK,
                Err(ApiError::Internal(format!("cannot write the CSV: {e}"))),
            ),
        },
        other => respond(StatusCode::OK, other),
    }
}

/// Messages in `seq` order.
#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "conversations",
    params(("id" = String, Path), PageQuery),
    responses((status = 200, body = [crate::model::Message]), (status = 422, description = "`limit` outside 1-500")),
    security(("bearer" = [])))]
pub async fn list_messages(id: String, app: Arc<App>, who: Auth, page: PageQuery) -> Response {
    let result = who.and_then(|c| app.messages(c, &id, page.after.unwrap_or(0), page.limit));
    respond(StatusCode::OK, result)
}

/// Stores and delivers a message; the same `client_id` again returns the stored one.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages", tag = "conversations", request_body = SendInput,
    params(("id" = String, Path)),
    responses((status = 201, description = "stored", body = crate::service::SendReply),
              (status = 200, description = "already stored under this client_id", body = crate::service::SendReply),
              (status = 409, description = "this client_id names another message (code `client_id_conflict`)"),
              (status = 422, description = "invalid body (code `invalid`), or refused by contact moderation (code `blocked`)"),
              (status = 429, description = "over the sender's message rate (code `rate_limited`)"),
              (status = 503, description = "overloaded (code `overloaded`): `storage.writer_queue` writes wait to be stored; nothing was stored, send the same request again after Retry-After seconds")),
    security(("bearer" = [])))]
pub async fn send_message(id: String, app: Arc<App>, who: Auth, body: Body<SendInput>) -> Response {
    let result = async { app.send(who?, &id, body?).await }.await;
    let status = match &result {
        Ok(reply) if reply.created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    respond(status, result)
}

/// Marks the other side's messages up to `seq` read.
#[utoipa::path(post, path = "/v1/conversations/{id}/read", tag = "conversations", request_body = ReadInput,
    params(("id" = String, Path)),
    responses((status = 200, body = crate::service::ReadReply),
        (status = 429, description = "past `limits.read_rate` (code `rate_limited`)")),
    security(("bearer" = [])))]
pub async fn mark_read(
    id: String,
    app: Arc<App>,
    limits: Arc<UserLimits>,
    who: Auth,
    body: Body<ReadInput>,
) -> Response {
    let result = async {
        let caller = limits.admit(Action::Read, who)?;
        app.read(caller, &id, body?.seq).await
    };
    respond(StatusCode::OK, result.await)
}

/// Confirms the caller's device received the conversation up to `seq` (the
/// senders get a delivery receipt).
#[utoipa::path(post, path = "/v1/conversations/{id}/delivered", tag = "conversations", request_body = ReadInput,
    params(("id" = String, Path)),
    responses((status = 200, body = crate::service::DeliveredReply),
        (status = 429, description = "past `limits.delivered_rate` (code `rate_limited`)")),
    security(("bearer" = [])))]
pub async fn mark_delivered(
    id: String,
    app: Arc<App>,
    limits: Arc<UserLimits>,
    who: Auth,
    body: Body<ReadInput>,
) -> Response {
    let result = async {
        let caller = limits.admit(Action::Delivered, who)?;
        app.delivered(caller, &id, body?.seq).await
    };
    respond(StatusCode::OK, result.await)
}

/// Shows the other side that the caller is typing (live only, never stored).
#[utoipa::path(post, path = "/v1/conversations/{id}/typing", tag = "conversations",
    params(("id" = String, Path)),
    responses((status = 202, description = "sent to the other side's live connections (each gets at most one per second, the latest)", body = super::StatusReply),
        (status = 429, description = "past `limits.typing_rate` (code `rate_limited`)")),
    security(("bearer" = [])))]
pub async fn typing(id: String, app: Arc<App>, limits: Arc<UserLimits>, who: Auth) -> Response {
    let result = limits
        .admit(Action::Typing, who)
        .and_then(|caller| app.typing(caller, &id));
    respond(
        StatusCode::ACCEPTED,
        result.map(|()| super::StatusReply { status: "sent" }),
    )
}

/// Creates a booking; its conversation moves to post-booking.
#[utoipa::path(post, path = "/v1/bookings", tag = "service", request_body = BookingInput,
    responses((status = 201, body = crate::model::Booking),
              (status = 404, description = "no such conversation or listing"),
              (status = 409, description = "a booking with this id exists with other details (change it with PATCH), or its Idempotency-Key is in flight")),
    security(("bearer" = [])))]
pub async fn create_booking(
    app: Arc<App>,
    in_flight: InFlight,
    who: Auth,
    request: Keyed<BookingInput>,
) -> Response {
    let op = |caller, input: BookingInput, derived: Option<String>| {
        let app = &app;
        async move {
            let input = BookingInput {
                id: input.id.or(derived),
                ..input
            };
            let booking = app.create_booking(caller, input).await?;
            Ok((StatusCode::CREATED, to_json(&booking)))
        }
    };
    idempotency::answer(&app, &in_flight, who, request, op).await
}

/// Reschedules a booking or moves it to another stage.
#[utoipa::path(patch, path = "/v1/bookings/{id}", tag = "service", request_body = BookingPatch,
    params(("id" = String, Path)),
    responses((status = 200, body = crate::model::Booking)),
    security(("bearer" = [])))]
pub async fn update_booking(
    id: String,
    app: Arc<App>,
    in_flight: InFlight,
    who: Auth,
    request: Keyed<BookingPatch>,
) -> Response {
    let op = |caller, patch, _| {
        let (app, id) = (&app, &id);
        async move {
            let booking = app.update_booking(caller, id, patch).await?;
            Ok((StatusCode::OK, to_json(&booking)))
        }
    };
    idempotency::answer(&app, &in_flight, who, request, op).await
}

/// Records a marketplace signal (listing viewed, checkout abandoned, …).
#[utoipa::path(post, path = "/v1/signals", tag = "service", request_body = SignalInput,
    responses((status = 202, body = crate::model::Signal)),
    security(("bearer" = [])))]
pub async fn post_signal(
    app: Arc<App>,
    in_flight: InFlight,
    who: Auth,
    request: Keyed<SignalInput>,
) -> Response {
    let op = |caller, input, derived| {
        let app = &app;
        async move {
            let input = SignalInput {
                id: derived,
                ..input
            };
            let signal = app.signal(caller, input).await?;
            Ok((StatusCode::ACCEPTED, to_json(&signal)))
        }
    };
    idempotency::answer(&app, &in_flight, who, request, op).await
}

/// Live composer check: what sending this would do. Nothing is stored.
#[utoipa::path(post, path = "/v1/contact/analyze", tag = "conversations", request_body = crate::service::AnalyzeInput,
    responses((status = 200, body = crate::service::AnalyzeReply),
              (status = 404, description = "`conversation_id` is not one of the caller's conversations")),
    security(("bearer" = [])))]
pub async fn analyze_contact(
    app: Arc<App>,
    who: Auth,
    body: Body<crate::service::AnalyzeInput>,
) -> Response {
    respond(StatusCode::OK, (|| app.analyze(who?, body?))())
}

/// The loaded rule set: version, when, files, and the errors of the last failed reload.
#[utoipa::path(get, path = "/v1/admin/rules", tag = "operator",
    responses((status = 200, body = crate::rules::RulesStatus)),
    security(("bearer" = [])))]
pub async fn admin_rules(app: Arc<App>, who: Auth) -> Response {
    respond(StatusCode::OK, who.and_then(|c| app.rules_status(c)))
}

/// The A/B experiments of the rules in force, each with per-variant results.
#[utoipa::path(get, path = "/v1/admin/experiments", tag = "operator",
    responses((status = 200, body = [crate::analytics::experiments::ExperimentResults])),
    security(("bearer" = [])))]
pub async fn admin_experiments(app: Arc<App>, who: Auth) -> Response {
    respond(StatusCode::OK, who.and_then(|c| app.experiments(c)))
}

/// One experiment's per-variant results: exposures, conversions, rate with
/// its Wilson 95% interval, uplift, chance to beat control, guardrails, the
/// sample-ratio check.
#[utoipa::path(get, path = "/v1/admin/experiments/{name}", tag = "operator",
    params(("name" = String, Path, description = "the experiment's name")),
    responses((status = 200, body = crate::analytics::experiments::ExperimentResults),
              (status = 404, description = "no experiment by that name in the rules in force")),
    security(("bearer" = [])))]
pub async fn admin_experiment(name: String, app: Arc<App>, who: Auth) -> Response {
    respond(StatusCode::OK, who.and_then(|c| app.experiment(c, &name)))
}

/// The platform's figures over a period of UTC days (README.md, "Platform
/// analytics"): the funnel, first response times, off-platform attempts and
/// per-step nudge performance.
#[utoipa::path(get, path = "/v1/admin/analytics", tag = "operator", params(PeriodQuery),
    responses((status = 200, body = crate::analytics::platform::PlatformView),
              (status = 400, description = "`from` or `to` not a `YYYY-MM-DD` date, `from` after `to`, \
               a period over 366 days, or an unknown parameter")),
    security(("bearer" = [])))]
pub async fn admin_analytics(app: Arc<App>, who: Auth, query: PeriodQuery) -> Response {
    let result =
        who.and_then(|c| app.platform_analytics(c, query.from.as_deref(), query.to.as_deref()));
    respond(StatusCode::OK, result)
}

/// Moves the manual clock (config `clock: manual`, started with `--dev`); steps
/// that fall due fire at once. 409 with the system clock.
#[utoipa::path(post, path = "/v1/admin/clock", tag = "operator", request_body = crate::service::ClockInput,
    responses((status = 200, body = crate::service::ClockReply),
              (status = 409, description = "the daemon runs on the system clock")),
    security(("bearer" = [])))]
pub async fn admin_clock(
    app: Arc<App>,
    who: Auth,
    body: Body<crate::service::ClockInput>,
) -> Response {
    respond(StatusCode::OK, (|| app.move_clock(who?, body?))())
}

/// Masked, blocked and flagged messages with their original text (operators only).
#[utoipa::path(get, path = "/v1/admin/flags", tag = "operator", params(FlagsQuery),
    responses((status = 200, body = [crate::model::Flag]), (status = 422, description = "`limit` outside 1-500")),
    security(("bearer" = [])))]
pub async fn admin_flags(app: Arc<App>, who: Auth, query: FlagsQuery) -> Response {
    let result = who.and_then(|c| app.flags(c, query.after.as_deref(), query.limit));
    respond(StatusCode::OK, result)
}

/// The notification outbox: entries waiting per lane, and the dead-letter list.
#[utoipa::path(get, path = "/v1/admin/outbox", tag = "operator",
    responses((status = 200, body = crate::service::OutboxReport)),
    security(("bearer" = [])))]
pub async fn admin_outbox(app: Arc<App>, who: Auth) -> Response {
    respond(StatusCode::OK, who.and_then(|c| app.outbox(c)))
}

/// One notification and the state of each of its channels.
#[utoipa::path(get, path = "/v1/admin/notifications/{id}", tag = "operator",
    params(("id" = String, Path, description = "notification id")),
    responses((status = 200, body = crate::model::notification::Notification)),
    security(("bearer" = [])))]
pub async fn admin_notification(id: String, app: Arc<App>, who: Auth) -> Response {
    respond(StatusCode::OK, who.and_then(|c| app.notification(c, &id)))
}

/// A user's latest notifications (oldest first) with each channel's state.
#[utoipa::path(get, path = "/v1/admin/users/{id}/notifications", tag = "operator",
    params(("id" = String, Path, description = "user id"), LimitQuery),
    responses((status = 200, body = [crate::model::notification::Notification]), (status = 422, description = "`limit` outside 1-500")),
    security(("bearer" = [])))]
pub async fn admin_user_notifications(
    id: String,
    app: Arc<App>,
    who: Auth,
    query: LimitQuery,
) -> Response {
    respond(
        StatusCode::OK,
        who.and_then(|c| app.notifications_of(c, &id, query.limit)),
    )
}

/// Each background component's state and what waits in the pipeline: domain
/// events, the writer's queue, due timers, due outbox entries per channel,
/// dead letters. Ages in seconds on the daemon's clock.
#[utoipa::path(get, path = "/v1/admin/pipeline", tag = "operator",
    responses((status = 200, body = crate::service::PipelineReport)),
    security(("bearer" = [])))]
pub async fn admin_pipeline(app: Arc<App>, who: Auth) -> Response {
    let result = match who {
        // Counting what is due scans it: off the async workers.
        Ok(caller) => tokio::task::spawn_blocking(move || app.pipeline(caller))
            .await
            .unwrap_or_else(|e| Err(ApiError::Internal(e.to_string()))),
        Err(e) => Err(e),
    };
    respond(StatusCode::OK, result)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SettleQuery {
    /// Wait up to this many seconds for the pipeline to settle (default 0:
    /// answer at once; more than 60 waits 60).
    pub wait: Option<u64>,
}

/// Whether the pipeline has settled: every domain event committed before the
/// answer processed, every timer due on the daemon's clock fired, every due
/// outbox entry attempted and no delivery in flight (dead letters count as
/// done). Waits up to `wait` seconds for it; answers 200 either way, with
/// `settled` and, if not, what still waits. For tests and operators who need
/// to know that something did *not* happen.
#[utoipa::path(get, path = "/v1/admin/pipeline/settled", tag = "operator", params(SettleQuery),
    responses((status = 200, body = crate::service::SettledReport)),
    security(("bearer" = [])))]
pub async fn admin_pipeline_settled(app: Arc<App>, who: Auth, query: SettleQuery) -> Response {
    let result = match who {
        Ok(caller) => app.settled(caller, query.wait).await,
        Err(e) => Err(e),
    };
    respond(StatusCode::OK, result)
}

/// Development only (404 unless the daemon runs on the manual clock, which
/// needs `--dev`): `{"fail": true}` ends a component's current run as a
/// failure and fails its restarts until `{"fail": false}`, to watch
/// supervision, `/healthz` and the restart counter at work.
#[utoipa::path(put, path = "/v1/admin/pipeline/components/{name}/fault", tag = "operator",
    request_body = crate::service::FaultInput,
    params(("name" = String, Path, description = "a component, e.g. `engine`")),
    responses((status = 200, body = crate::supervisor::ComponentReport),
              (status = 404, description = "no such component, or not a --dev daemon on the manual clock")),
    security(("bearer" = [])))]
pub async fn admin_fault(
    name: String,
    app: Arc<App>,
    who: Auth,
    body: Body<crate::service::FaultInput>,
) -> Response {
    respond(StatusCode::OK, (|| app.inject_fault(who?, &name, body?))())
}

/// Re-drives a dead delivery: back in its channel's queue, due now, attempts reset.
#[utoipa::path(post, path = "/v1/admin/outbox/dead/{id}/{channel}/redrive", tag = "operator",
    params(("id" = String, Path, description = "notification id"),
           ("channel" = String, Path, description = "push, email, sms or webhook")),
    responses((status = 200, body = crate::model::notification::Notification),
              (status = 404, description = "no such notification, or its delivery on that channel is not dead"),
              (status = 422, description = "not a channel name")),
    security(("bearer" = [])))]
pub async fn admin_redrive(id: String, channel: String, app: Arc<App>, who: Auth) -> Response {
    let result = match who {
        Ok(caller) => app.redrive(caller, &id, &channel).await,
        Err(e) => Err(e),
    };
    respond(StatusCode::OK, result)
}

/// The automation pipeline's dead-letter list, oldest first: domain events
/// whose evaluation, and due steps whose preparation, failed
/// `automation.max_attempts` times, each with the rule and the last error.
#[utoipa::path(get, path = "/v1/admin/pipeline/dead", tag = "operator", params(LimitQuery),
    responses((status = 200, body = [crate::model::pipeline::DeadItem]),
              (status = 422, description = "`limit` outside 1-500")),
    security(("bearer" = [])))]
pub async fn admin_pipeline_dead(app: Arc<App>, who: Auth, query: LimitQuery) -> Response {
    respond(
        StatusCode::OK,
        who.and_then(|c| app.pipeline_dead(c, query.limit)),
    )
}

/// Re-drives a dead event or step (after the rules are fixed): off the list,
/// queued again with fresh attempts and evaluated with the rules in force. An
/// event goes behind those waiting now; a step is due at once. Answers the
/// entry as it was.
#[utoipa::path(post, path = "/v1/admin/pipeline/dead/{id}/redrive", tag = "operator",
    params(("id" = String, Path, description = "the dead entry's id")),
    responses((status = 200, body = crate::model::pipeline::DeadItem),
              (status = 404, description = "no such entry on the dead-letter list")),
    security(("bearer" = [])))]
pub async fn admin_pipeline_redrive(id: String, app: Arc<App>, who: Auth) -> Response {
    let result = match who {
        Ok(caller) => app.redrive_pipeline(caller, &id).await,
        Err(e) => Err(e),
    };
    respond(StatusCode::OK, result)
}

fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    // Our replies are plain records: serialising them cannot fail.
    serde_json::to_value(value).unwrap_or_default()
}
