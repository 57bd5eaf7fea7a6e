//! The workers a dashboard is pointed at (`--worker http://HOST:PORT`, a
//! worker's `--metrics-addr`), in the CLI process serving it: their running
//! jobs and totals from `GET /jobs.json`, read when the page is asked for, and
//! the jobs each finished over the last ten minutes, sampled every 5 s by
//! [`sample`] for the page's small chart.

use super::html::{escape, page, table};
use super::{Dashboard, WorkerSource};
use crate::worker::parent::running::RunningJob;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the totals are sampled.
const EVERY: Duration = Duration::from_secs(5);
/// Samples kept per worker: ten minutes.
const KEPT: usize = 120;

/// What a worker's `GET /jobs.json` answers.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct WorkerJobs {
    running: Vec<RunningJob>,
    totals: Totals,
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

impl Totals {
    fn ended(&self) -> u64 {
        [
            self.left_for_redelivery,
            self.dead_lettered,
            self.requeued_on_signal,
        ]
        .iter()
        .fold(self.succeeded, |sum, n| sum.saturating_add(*n))
    }
}

/// Each worker's samples: (seconds since the epoch, jobs ended so far).
#[derive(Debug, Default)]
pub(crate) struct History(Mutex<HashMap<String, VecDeque<(u64, u64)>>>);

impl History {
    /// The samples (what a panicking holder left is still samples).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<(u64, u64)>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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

    fn record(&self, url: &str, totals: &Totals) {
        let sample = (now_ms() / 1000, totals.ended());
        let mut history = self.history.lock();
        let samples = history.entry(url.to_owned()).or_default();
        samples.push_back(sample);
        while samples.len() > KEPT {
            samples.pop_front();
        }
    }
}

/// Sample every worker's totals every [`EVERY`], for the charts.
pub(crate) async fn sample(dashboard: Arc<Dashboard>) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        for worker in &dashboard.workers {
            if let Ok(jobs) = dashboard.worker_jobs(worker).await {
                dashboard.record(worker.label(), &jobs.totals);
            }
        }
    }
}

/// Jobs ended per second between samples, as a small SVG line.
fn chart(samples: &VecDeque<(u64, u64)>) -> String {
    let rates: Vec<f64> = samples
        .iter()
        .zip(samples.iter().skip(1))
        .map(|((t0, n0), (t1, n1))| {
            n1.saturating_sub(*n0) as f64 / (t1.saturating_sub(*t0)).max(1) as f64
        })
        .collect();
    if rates.is_empty() {
        return "<span class=\"muted\">collecting…</span>".into();
    }
    let top = rates.iter().copied().fold(1.0, f64::max);
    let (w, h) = (360.0, 60.0);
    let step = w / (KEPT - 1) as f64;
    let points: Vec<String> = rates
        .iter()
        .enumerate()
        // The newest at the right edge.
        .map(|(i, r)| {
            let x = w - (rates.len() - 1 - i) as f64 * step;
            format!("{x:.1},{:.1}", h - r / top * (h - 4.0))
        })
        .collect();
    format!(
        "<svg width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"jobs ended per second\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#fff\" stroke=\"#e3e6eb\"/>\
         <polyline fill=\"none\" stroke=\"#2d6cdf\" stroke-width=\"2\" points=\"{}\"/></svg> \
         <span class=\"muted\">jobs ended per second, last {} min (peak {top:.1})</span>",
        points.join(" "),
        KEPT * EVERY.as_secs() as usize / 60
    )
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
        if let Some(samples) = d.history.lock().get(url) {
            body.push_str(&format!("<p>{}</p>", chart(samples)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_plots_jobs_per_second_between_samples() {
        let samples: VecDeque<(u64, u64)> = [(0, 0), (5, 50), (10, 50)].into();
        let svg = chart(&samples);
        // 10/s then 0/s: the first point at the top, the second at the bottom.
        assert!(svg.contains("points=\"357.0,4.0 360.0,60.0\""), "{svg}");
        assert!(svg.contains("peak 10.0"), "{svg}");
        assert!(chart(&[(0, 0)].into()).contains("collecting"));
        // A worker's totals cannot overflow the sum.
        let hostile = Totals {
            succeeded: u64::MAX,
            dead_lettered: u64::MAX,
            ..Totals::default()
        };
        assert_eq!(hostile.ended(), u64::MAX);
    }
}
