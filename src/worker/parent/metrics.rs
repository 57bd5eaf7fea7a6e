//! The worker's metrics: [`render`] writes [`WorkerStats`] in the Prometheus
//! text exposition format; [`serve`] answers `GET /metrics` on a TCP address
//! (a minimal HTTP/1.1 responder on the worker's tokio runtime; anything
//! else gets 404). Started by `wasm-jobs worker --metrics-addr`.

use super::stats::{Histogram, WorkerStats};
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    let _ = writeln!(out, "# HELP wasm_jobs_{name} {help}");
    let _ = writeln!(out, "# TYPE wasm_jobs_{name} counter");
    let _ = writeln!(out, "wasm_jobs_{name} {}", value.load(Ordering::Relaxed));
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let (buckets, sum, count) = h.snapshot();
    let _ = writeln!(out, "# HELP wasm_jobs_{name} {help}");
    let _ = writeln!(out, "# TYPE wasm_jobs_{name} histogram");
    for (bound, n) in buckets {
        let _ = writeln!(out, "wasm_jobs_{name}_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "wasm_jobs_{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "wasm_jobs_{name}_sum {sum}");
    let _ = writeln!(out, "wasm_jobs_{name}_count {count}");
}

/// The metrics in Prometheus text format.
pub(crate) fn render(s: &WorkerStats) -> String {
    let mut out = String::new();
    counter(
        &mut out,
        "messages_received_total",
        "Messages received from the queue.",
        &s.received,
    );
    counter(
        &mut out,
        "jobs_succeeded_total",
        "Jobs whose run returned ok (message deleted).",
        &s.succeeded,
    );
    let _ = writeln!(
        out,
        "# HELP wasm_jobs_jobs_failed_total Jobs that did not succeed, by reason (retry, fatal, trap, timeout, crash, signal, unloadable, refused, not_started) and trap kind."
    );
    let _ = writeln!(out, "# TYPE wasm_jobs_jobs_failed_total counter");
    for ((reason, kind), n) in s.failures() {
        let _ = writeln!(
            out,
            "wasm_jobs_jobs_failed_total{{reason=\"{reason}\",kind=\"{}\"}} {n}",
            escape(&kind)
        );
    }
    let _ = writeln!(
        out,
        "# HELP wasm_jobs_messages_refused_total Messages refused at admission and dead-lettered, by reason (tenant_mismatch, bad_signature, policy, module)."
    );
    let _ = writeln!(out, "# TYPE wasm_jobs_messages_refused_total counter");
    for (reason, n) in s.refusals() {
        let _ = writeln!(
            out,
            "wasm_jobs_messages_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
    counter(
        &mut out,
        "over_cap_returned_total",
        "Shared-queue messages made visible again because their tenant was at its cap.",
        &s.over_cap,
    );
    counter(
        &mut out,
        "fork_server_restarts_total",
        "Fork servers started to replace one that died.",
        &s.fork_server_restarts,
    );
    counter(
        &mut out,
        "dead_lettered_total",
        "Messages copied to the dead-letter queue by the worker.",
        &s.dead_lettered,
    );
    counter(
        &mut out,
        "requeued_on_signal_total",
        "Messages returned to the queue by exit handling.",
        &s.requeued,
    );
    counter(
        &mut out,
        "released_on_signal_total",
        "Messages received after an exit signal and released at once.",
        &s.released,
    );
    counter(
        &mut out,
        "heartbeat_calls_total",
        "Visibility-extension calls (a batch counts once).",
        &s.heartbeat_calls,
    );
    counter(
        &mut out,
        "heartbeats_sent_total",
        "Message visibilities extended.",
        &s.heartbeats_sent,
    );
    counter(
        &mut out,
        "heartbeats_failed_total",
        "Visibility extensions that failed.",
        &s.heartbeats_failed,
    );
    counter(
        &mut out,
        "queue_errors_total",
        "Queue calls that failed.",
        &s.queue_errors,
    );
    counter(
        &mut out,
        "stale_receipts_total",
        "Queue calls refused for a stale receipt handle.",
        &s.stale_receipts,
    );
    histogram(
        &mut out,
        "job_duration_seconds",
        "Worker child run time, fork to exit.",
        &s.job_duration,
    );
    histogram(
        &mut out,
        "queue_to_start_seconds",
        "From the message's SentTimestamp to its worker child's start.",
        &s.queue_to_start,
    );
    let _ = writeln!(
        out,
        "# HELP wasm_jobs_jobs_in_flight Worker children running now, by module and tenant."
    );
    let _ = writeln!(out, "# TYPE wasm_jobs_jobs_in_flight gauge");
    for ((module, tenant), n) in s.in_flight() {
        let _ = writeln!(
            out,
            "wasm_jobs_jobs_in_flight{{module=\"{}\",tenant=\"{}\"}} {n}",
            escape(&module),
            escape(&tenant)
        );
    }
    out
}

/// Bind `addr` and serve `GET /metrics` until the runtime stops. Returns the
/// bound address (useful with port 0).
pub(crate) async fn serve(
    addr: SocketAddr,
    stats: Arc<WorkerStats>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let stats = Arc::clone(&stats);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut len = 0;
                // Read the request head (we need only its first line).
                while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                    match conn.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]);
                let first = head.lines().next().unwrap_or("");
                let (status, body) =
                    if first.starts_with("GET /metrics ") || first == "GET /metrics" {
                        ("200 OK", render(&stats))
                    } else {
                        ("404 Not Found", "only GET /metrics is served\n".to_owned())
                    };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    tracing::info!(addr = %bound, "serving metrics at /metrics");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn render_has_every_family_with_labels() {
        let s = Arc::new(WorkerStats::default());
        s.received.fetch_add(3, Ordering::Relaxed);
        s.job_failed("trap", "out_of_memory");
        s.job_duration.observe(Duration::from_millis(2));
        let _guard = s.job_started("wc \"v2\"", "acme");
        let text = render(&s);
        assert!(
            text.contains("wasm_jobs_messages_received_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "wasm_jobs_jobs_failed_total{reason=\"trap\",kind=\"out_of_memory\"} 1\n"
            )
        );
        assert!(text.contains("wasm_jobs_job_duration_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("wasm_jobs_job_duration_seconds_count 1\n"));
        assert!(
            text.contains("wasm_jobs_jobs_in_flight{module=\"wc \\\"v2\\\"\",tenant=\"acme\"} 1\n")
        );
        for family in [
            "heartbeat_calls_total",
            "queue_to_start_seconds",
            "dead_lettered_total",
            "requeued_on_signal_total",
            "queue_errors_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE wasm_jobs_{family}")),
                "{family}"
            );
        }
    }
}
