//! The workers a dashboard is pointed at (`--worker http://HOST:PORT`, a
//! worker's `--metrics-addr`), in the CLI process serving it: their running
//! jobs and totals from `GET /jobs.json`, read when the page is asked for,
//! and every 5 s ([`sample`]) how their calls ended, per worker and per
//! queue, for the charts ([`super::chart`]).

use super::chart::EVERY;
use super::html::{escape, page, table};
use super::{Dashboard, WorkerSource};
use crate::worker::parent::running::{Ended, RunningJob};
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a worker's `GET /jobs.json` answers.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct WorkerJobs {
    running: Vec<RunningJob>,
    totals: Totals,
    /// How calls ended, per queue.
    #[serde(default)]
    by_queue: BTreeMap<String, Ended>,
}

/// A worker's totals since it started.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
struct Totals {
    received: u64,
    succeeded: u64,
    left_for_redelivery: u64,
    dead_lettered: u64,
    requeued_on_signal: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Dashboard {
    /// A worker's running jobs and totals.
    async fn worker_jobs(&self, source: &WorkerSource) -> Result<WorkerJobs, String> {
        let url = match source {
            WorkerSource::Local(stats) => {
                return serde_json::from_str(&stats.jobs_json()).map_err(|e| e.to_string());
            }
            WorkerSource::Remote(url) => url,
        };
        let answer = self
            .http
            .get(format!("{}/jobs.json", url.trim_end_matches('/')))
            .send()
            .await
            .map_err(|e| crate::registry::error_chain(&e))?;
        if !answer.status().is_success() {
            return Err(format!("HTTP {}", answer.status()));
        }
        let body = answer.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&body).map_err(|e| format!("not a worker's /jobs.json: {e}"))
    }
}

/// Every [`EVERY`], how each worker's calls and each queue's ended so far
/// (a queue's summed over the workers that answered), for the charts.
pub(crate) async fn sample(dashboard: Arc<Dashboard>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = now_ms() / 1000;
        let mut queues: BTreeMap<String, Ended> = BTreeMap::new();
        for worker in &dashboard.workers {
            let Ok(jobs) = dashboard.worker_jobs(worker).await else {
                continue;
            };
            let mut all = Ended::default();
            for (queue, e) in jobs.by_queue {
                all.ok = all.ok.saturating_add(e.ok);
                all.failed = all.failed.saturating_add(e.failed);
                let q = queues.entry(queue).or_default();
                q.ok = q.ok.saturating_add(e.ok);
                q.failed = q.failed.saturating_add(e.failed);
            }
            let series = format!("worker:{}", worker.label());
            dashboard.history.record(&series, (now, all.ok, all.failed));
        }
        for (queue, e) in queues {
            let series = format!("queue:{queue}");
            dashboard.history.record(&series, (now, e.ok, e.failed));
        }
    }
}

pub(crate) async fn jobs(State(d): State<Arc<Dashboard>>) -> Response {
    let mut body = String::from("<h1>Running jobs</h1>");
    if d.workers.is_empty() {
        body.push_str("<p>No workers: start the dashboard with <code>--worker http://HOST:PORT</code> (a worker's <code>--metrics-addr</code>).</p>");
    }
    // Asked all at once: a worker that does not answer costs one timeout.
    let asked: Vec<_> = (0..d.workers.len())
        .map(|i| {
            let d = Arc::clone(&d);
            tokio::spawn(async move { d.worker_jobs(&d.workers[i]).await })
        })
        .collect();
    let now = now_ms();
    for (worker, answer) in d.workers.iter().zip(asked) {
        let url = worker.label();
        body.push_str(&format!("<h2>Worker <code>{}</code></h2>", escape(url)));
        let answer = answer.await.unwrap_or_else(|e| Err(e.to_string()));
        let jobs = match answer {
            Ok(jobs) => jobs,
            Err(why) => {
                body.push_str(&format!(
                    "<p class=\"error\">cannot be read: {}</p>",
                    escape(&why)
                ));
                continue;
            }
        };
        let t = jobs.totals;
        body.push_str(&format!(
            "<p>{} received · {} succeeded · {} left for redelivery · {} dead-lettered · {} returned on exit signals</p>",
            t.received, t.succeeded, t.left_for_redelivery, t.dead_lettered, t.requeued_on_signal
        ));
        if let Some(chart) = d.history.chart(&format!("worker:{url}"), 360, 60) {
            body.push_str(&format!("<p>{chart}</p>"));
        }
        let rows: Vec<Vec<String>> = jobs
            .running
            .iter()
            .map(|j| {
                vec![
                    format!("<code>{}</code>", escape(&j.message_id)),
                    escape(&j.tenant),
                    format!("<code>{}</code>", escape(&j.module)),
                    j.attempt.to_string(),
                    format!("{:.1} s", now.saturating_sub(j.started_ms) as f64 / 1000.0),
                    j.pid.to_string(),
                    format!("<code>{}</code>", escape(&j.queue)),
                ]
            })
            .collect();
        body.push_str(&if rows.is_empty() {
            "<p class=\"muted\">Nothing running.</p>".to_owned()
        } else {
            table(
                &[
                    "message",
                    "tenant",
                    "module",
                    "attempt",
                    "running for",
                    "pid",
                    "queue",
                ],
                &rows,
                &[3, 4, 5],
            )
        });
    }
    Html(page("jobs", "Jobs", true, &body)).into_response()
}
