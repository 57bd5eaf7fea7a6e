//! The dashboard's pages and actions, in the CLI process serving it: each
//! handler reads what it shows fresh from the queues and the registry
//! ([`super::Dashboard`]) and renders it with [`super::html`].
//!
//! - `GET /`: every queue with its counts and its dead-letter queue's;
//! - `GET /dead-letters?queue=Q`: Q's dead letters, with why, how often
//!   received, module, tenant, the start of the body;
//! - `GET /message?queue=Q&id=ID`: one dead letter in full;
//! - `GET /confirm?...` then `POST /act`: redrive all, purge, redrive one,
//!   delete one (each logged);
//! - `GET /modules`: the registry's modules per tenant.

use super::action::Action;
use super::html::{escape, first_chars, page, post_form, query, table};
use super::{Dashboard, QueueRow};
use crate::queue::{AttributeValue, ReceivedMessage};
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use std::sync::Arc;

/// The attribute the worker records a dead letter's reason in.
const REASON: &str = "wasm-jobs.dead-letter-reason";
/// Dead letters listed on one page.
const LISTED: usize = 100;

/// An error page.
fn failed(status: StatusCode, why: &str) -> Response {
    let body = format!("<p class=\"error\">{}</p>", escape(why));
    (status, Html(page("error", "", false, &body))).into_response()
}

fn attr(m: &ReceivedMessage, name: &str) -> String {
    match m.attributes.get(name) {
        Some(AttributeValue::String(s) | AttributeValue::Number(s)) => s.clone(),
        Some(AttributeValue::Binary(b)) => format!("({} bytes)", b.len()),
        None => String::new(),
    }
}

fn counts_cells(c: &crate::queue::QueueCounts) -> [String; 3] {
    [c.visible, c.in_flight, c.delayed].map(|n| n.to_string())
}

/// How long ago `sent_ms` was, in the largest whole unit.
fn age(sent_ms: Option<u64>) -> String {
    let Some(sent_ms) = sent_ms else {
        return "–".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(sent_ms) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86400),
    }
}

pub(crate) async fn queues(State(d): State<Arc<Dashboard>>) -> Response {
    let rows = match d.queue_rows().await {
        Ok(rows) => rows,
        Err(why) => return failed(StatusCode::BAD_GATEWAY, &why),
    };
    // Which queue each dead-letter queue serves (embedded targets are
    // names; SQS ones are ARNs, which end in the queue's name).
    let serves = |address: &str| {
        let name = address.rsplit('/').next().unwrap_or(address);
        rows.iter()
            .filter(|r| {
                r.stats
                    .as_ref()
                    .ok()
                    .and_then(|(_, dlq)| dlq.as_ref())
                    .is_some_and(|(t, _)| t == name || t.ends_with(&format!(":{name}")))
            })
            .map(|r| r.address.as_str())
            .collect::<Vec<_>>()
    };
    // How the workers' calls of each queue ended, over ten minutes.
    let calls = |address: &str| {
        d.history
            .chart(&format!("queue:{address}"), 160, 24)
            .unwrap_or_else(|| "–".into())
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r: &QueueRow| {
            let head = [
                format!("<code>{}</code>", escape(&r.address)),
                escape(r.tenant.as_deref().unwrap_or("–")),
            ];
            let (counts, dlq) = match &r.stats {
                Ok(stats) => stats,
                Err(why) => {
                    let why = format!(
                        "<span class=\"error\">cannot be read: {}</span>",
                        escape(why)
                    );
                    return [head.to_vec(), vec![why], vec![String::new(); 6]].concat();
                }
            };
            let [v, f, del] = counts_cells(counts);
            let (dlq, dead) = match dlq {
                Some((name, c)) => (
                    escape(name),
                    format!(
                        "<a href=\"/dead-letters?queue={}\">{}</a>",
                        query(&r.address),
                        c.visible + c.in_flight + c.delayed
                    ),
                ),
                None => match serves(&r.address)[..] {
                    [] => ("<span class=\"muted\">none</span>".into(), "–".into()),
                    ref of => (
                        format!(
                            "<span class=\"muted\">is the dead-letter queue of {}</span>",
                            escape(&of.join(", "))
                        ),
                        "–".into(),
                    ),
                },
            };
            [
                head.to_vec(),
                vec![
                    v,
                    f,
                    del,
                    age(counts.oldest_sent_ms),
                    calls(&r.address),
                    dlq,
                    dead,
                ],
            ]
            .concat()
        })
        .collect();
    let body = if rows.is_empty() {
        "<h1>Queues</h1><p>No queues: create one with <code>wasm-jobs queue create NAME</code>, or name SQS queues with <code>--queue</code>.</p>".to_owned()
    } else {
        format!(
            "<h1>Queues</h1>{}<p class=\"muted\">Refreshed every 5 s.</p>",
            table(
                &[
                    "queue",
                    "tenant",
                    "visible",
                    "in flight",
                    "delayed",
                    "oldest",
                    "calls (from --worker)",
                    "dead-letter queue",
                    "dead letters"
                ],
                &rows,
                &[2, 3, 4, 5, 8],
            )
        )
    };
    Html(page("queues", "Queues", true, &body)).into_response()
}

/// `?queue=Q`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct QueueParam {
    queue: String,
    /// What the last action did.
    #[serde(default)]
    done: Option<String>,
}

pub(crate) async fn dead_letters(
    State(d): State<Arc<Dashboard>>,
    Query(p): Query<QueueParam>,
) -> Response {
    let dlq = match d.dead_letter_queue(&p.queue, false).await {
        Ok(q) => q,
        Err(why) => return failed(StatusCode::BAD_REQUEST, &why),
    };
    let messages = match dlq.peek(LISTED).await {
        Ok(m) => m,
        Err(e) => return failed(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let q = query(&p.queue);
    let rows: Vec<Vec<String>> = messages
        .iter()
        .map(|m| {
            vec![
                format!(
                    "<a href=\"/message?queue={q}&amp;id={}\"><code>{}</code></a>",
                    query(&m.message_id),
                    escape(&m.message_id)
                ),
                escape(&first_chars(&attr(m, REASON), 300)),
                m.receive_count.to_string(),
                escape(&first_chars(&attr(m, "module"), 80)),
                escape(&first_chars(&attr(m, "tenant"), 80)),
                format!("<code>{}</code>", escape(&first_chars(&m.body, 80))),
            ]
        })
        .collect();
    let flash = p
        .done
        .map(|done| format!("<p class=\"flash\">{}</p>", escape(&done)))
        .unwrap_or_default();
    let actions = if messages.is_empty() {
        String::new()
    } else {
        format!(
            "<p>{}{}</p>",
            confirm_link(&Action::RedriveAll, &p.queue, "Redrive all"),
            confirm_link(&Action::Purge, &p.queue, "Purge")
        )
    };
    let shown = if dlq.is_local() { LISTED } else { 10 };
    let list = if messages.is_empty() {
        "<p>No dead letters.</p>".to_owned()
    } else {
        let more = if messages.len() >= shown {
            format!(
                "<p class=\"muted\">The first {shown} are shown{}.</p>",
                if dlq.is_local() {
                    ""
                } else {
                    " (SQS shows at most 10 per look, and each look counts as a receive)"
                }
            )
        } else {
            String::new()
        };
        more + &table(
            &["message", "reason", "receives", "module", "tenant", "body"],
            &rows,
            &[2],
        )
    };
    let body = format!(
        "<h1>Dead letters of <code>{}</code></h1>{flash}{actions}{list}",
        escape(&p.queue)
    );
    Html(page("dead letters", "Queues", false, &body)).into_response()
}

/// `?queue=Q&id=ID`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct MessageParam {
    queue: String,
    id: String,
}

pub(crate) async fn message(
    State(d): State<Arc<Dashboard>>,
    Query(p): Query<MessageParam>,
) -> Response {
    let dlq = match d.dead_letter_queue(&p.queue, false).await {
        Ok(q) => q,
        Err(why) => return failed(StatusCode::BAD_REQUEST, &why),
    };
    let found = match dlq.peek(1000).await {
        Ok(all) => all.into_iter().find(|m| m.message_id == p.id),
        Err(e) => return failed(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let Some(m) = found else {
        return failed(
            StatusCode::NOT_FOUND,
            &format!(
                "no dead letter {} of {} (moved, deleted, or in flight)",
                p.id, p.queue
            ),
        );
    };
    let attributes: Vec<Vec<String>> = m
        .attributes
        .keys()
        .map(|k| vec![format!("<code>{}</code>", escape(k)), escape(&attr(&m, k))])
        .collect();
    let q = query(&p.queue);
    let body = format!(
        "<h1>Dead letter <code>{}</code></h1>\
         <p>of <a href=\"/dead-letters?queue={q}\"><code>{}</code></a>; received {} times; sent {}</p>\
         <p>{}{}</p>\
         <h2>Body</h2><pre>{}</pre><h2>Attributes</h2>{}",
        escape(&m.message_id),
        escape(&p.queue),
        m.receive_count,
        escape(&crate::units::rfc3339(m.sent_timestamp_ms)),
        confirm_link(&Action::RedriveOne(p.id.clone()), &p.queue, "Redrive"),
        confirm_link(&Action::DeleteOne(p.id.clone()), &p.queue, "Delete"),
        escape(&m.body),
        table(&["name", "value"], &attributes, &[])
    );
    Html(page("dead letter", "Queues", false, &body)).into_response()
}

/// A button that leads to the confirmation of `action` on `queue`'s dead
/// letters (red when it destroys messages).
fn confirm_link(action: &Action, queue: &str, label: &str) -> String {
    let id = action
        .id()
        .map(|id| format!("&amp;id={}", query(id)))
        .unwrap_or_default();
    let class = if action.destroys() {
        " class=\"danger\""
    } else {
        ""
    };
    format!(
        "<a href=\"/confirm?action={}&amp;queue={}{id}\"><button{class}>{}</button></a>",
        action.name(),
        query(queue),
        escape(label)
    )
}

/// What an action names: `action`, `queue`, and `id` for one message.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct ActionParam {
    action: String,
    queue: String,
    #[serde(default)]
    id: Option<String>,
}

impl ActionParam {
    /// The action it names, parsed once.
    fn parsed(&self) -> Result<Action, String> {
        Action::parse(&self.action, self.id.as_deref())
    }
}

pub(crate) async fn confirm(
    State(d): State<Arc<Dashboard>>,
    Query(p): Query<ActionParam>,
) -> Response {
    let action = match p.parsed() {
        Ok(a) => a,
        Err(why) => return failed(StatusCode::BAD_REQUEST, &why),
    };
    let mut fields = vec![("action", action.name()), ("queue", p.queue.as_str())];
    if let Some(id) = action.id() {
        fields.push(("id", id));
    }
    let body = format!(
        "<h1>Confirm</h1><p>This will {}.</p><p>{}<a href=\"/dead-letters?queue={}\">Cancel</a></p>",
        escape(&action.describe(&p.queue)),
        post_form(
            "/act",
            d.access.csrf(),
            &fields,
            "Yes, do it",
            action.destroys()
        ),
        query(&p.queue)
    );
    Html(page("confirm", "Queues", false, &body)).into_response()
}

/// The action form: the action and the CSRF token.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ActionForm {
    #[serde(flatten)]
    action: ActionParam,
    csrf: String,
}

pub(crate) async fn act(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Form(f): Form<ActionForm>,
) -> Response {
    if !d.access.allows_post(&headers, &f.csrf) {
        tracing::warn!(action = %f.action.action, queue = %f.action.queue, "dashboard action refused: no CSRF token of this dashboard, or another origin");
        return failed(
            StatusCode::FORBIDDEN,
            "refused: the form did not come from this dashboard (CSRF check)",
        );
    }
    let p = f.action;
    let action = match p.parsed() {
        Ok(a) => a,
        Err(why) => return failed(StatusCode::BAD_REQUEST, &why),
    };
    let (name, id) = (action.name(), action.id().unwrap_or(""));
    let done = match d.act(&action, &p.queue).await {
        Ok(done) => done,
        Err(why) => {
            tracing::warn!(action = name, queue = %p.queue, message_id = id, %why, "dashboard action failed");
            return failed(StatusCode::BAD_GATEWAY, &why);
        }
    };
    tracing::info!(action = name, queue = %p.queue, message_id = id, result = %done, "dashboard action");
    Redirect::to(&format!(
        "/dead-letters?queue={}&done={}",
        query(&p.queue),
        query(&done)
    ))
    .into_response()
}

pub(crate) async fn modules(State(d): State<Arc<Dashboard>>) -> Response {
    let modules = match d.modules().await {
        Ok(m) => m,
        Err(why) => return failed(StatusCode::BAD_GATEWAY, &why),
    };
    let rows: Vec<Vec<String>> = modules
        .iter()
        .map(|(v, compiled)| {
            vec![
                escape(&v.tenant),
                format!("<code>{}</code>", escape(&v.name)),
                format!(
                    "<code>sha256:{}</code>",
                    escape(&first_chars(&v.digest, 16))
                ),
                v.size.to_string(),
                escape(&crate::units::rfc3339(v.pushed_at_ms)),
                match compiled {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "<span class=\"muted\">not on this host</span>".into(),
                },
            ]
        })
        .collect();
    let body = format!(
        "<h1>Modules</h1><p class=\"muted\">Registry: <code>{}</code></p>{}",
        escape(&d.registry_name),
        if rows.is_empty() {
            "<p>No modules: push one with <code>wasm-jobs module push FILE --name NAME</code>.</p>"
                .to_owned()
        } else {
            table(
                &[
                    "tenant",
                    "name",
                    "digest",
                    "bytes",
                    "pushed",
                    "compiled here",
                ],
                &rows,
                &[3],
            )
        }
    );
    Html(page("modules", "Modules", false, &body)).into_response()
}

pub(crate) async fn login_form(State(d): State<Arc<Dashboard>>) -> Response {
    if !d.access.has_token() {
        return Redirect::to("/").into_response();
    }
    let body = "<h1>Log in</h1><form method=\"post\" action=\"/login\">\
                <p><label>Token <input type=\"password\" name=\"token\" autofocus></label></p>\
                <p><button type=\"submit\">Log in</button></p></form>";
    Html(page("log in", "", false, body)).into_response()
}

/// The login form's field.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

pub(crate) async fn login(State(d): State<Arc<Dashboard>>, Form(f): Form<LoginForm>) -> Response {
    match d.access.login_cookie() {
        Some(cookie) if d.access.is_token(f.token.trim()) => {
            tracing::info!("dashboard login");
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        _ => {
            tracing::warn!("dashboard login refused");
            failed(StatusCode::UNAUTHORIZED, "wrong token")
        }
    }
}
