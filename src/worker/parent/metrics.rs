//! The worker's HTTP endpoint, in the worker parent process on its tokio
//! runtime (started by `wasm-jobs worker --metrics-addr`): `GET /metrics`
//! ([`WorkerStats::render`]), `GET /healthz` (200 while the process runs),
//! `GET /readyz` (200 while a fork server is up and every queue's last call
//! succeeded, else 503 and why) and `GET /jobs.json` (the jobs running now
//! and the totals so far, as JSON, for `wasm-jobs dashboard --worker`). Any
//! other path is 404 (or, with `worker --ui`, the dashboard's: see
//! `crate::dashboard`); another method on these paths is 405.
//!
//! hyper's HTTP/1 server, kept safe from clients that hold connections: a
//! request head must arrive within [`Limits::header_read_timeout`] (idle and
//! slowloris connections are dropped); at most [`Limits::max_connections`]
//! are open, and one more closes the oldest, so holders of idle connections
//! cannot lock out a scrape; an accept that fails for want of descriptors or
//! memory pauses the loop, longer each time in a row, logged once per burst.

use super::forks::ForkServers;
use super::stats::WorkerStats;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::AbortHandle;

/// Connections waiting to be accepted (a burst beyond this is dropped by
/// the kernel and retried by the clients).
const BACKLOG: u32 = 1024;
/// Bytes a connection may buffer (the request head included).
const MAX_BUFFER: usize = 16 * 1024;
/// The longest pause after accept failures in a row.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// How much a client may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections open at once; one more closes the oldest.
    pub(crate) max_connections: usize,
    /// Time a request head (the first or the next one) may take to arrive.
    pub(crate) header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
        }
    }
}

/// What `/readyz` asks: `Err(why)` while the worker cannot take work.
pub(crate) type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the endpoint serves.
#[derive(Clone)]
pub(crate) struct Endpoints {
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) ready: Readiness,
    /// The dashboard's pages (`worker --ui`), for every other path.
    pub(crate) ui: Option<axum::Router>,
}

/// The worker's readiness: a fork server is up (not dead or being
/// replaced) and every queue's last call succeeded.
pub(crate) fn worker_readiness(forks: Arc<ForkServers>, stats: Arc<WorkerStats>) -> Readiness {
    Arc::new(move || {
        if forks.pid().is_none() {
            return Err("no fork server is up".into());
        }
        stats.queues_reached()
    })
}

/// A listener on `addr` with a deeper backlog than the default.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serve `listener` until `shutdown` resolves; then every open connection
/// is closed.
pub(crate) async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut open: VecDeque<AbortHandle> = VecDeque::new();
    let mut failures = AcceptFailures::default();
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                failures.in_a_row = 0;
                stream
            }
            Err(e) => {
                if let Some(pause) = failures.pause_after(&e) {
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                continue;
            }
        };
        open.retain(|c| !c.is_finished());
        if open.len() >= limits.max_connections
            && let Some(oldest) = open.pop_front()
        {
            oldest.abort();
        }
        let task = tokio::spawn(connection(stream, endpoints.clone(), limits));
        open.push_back(task.abort_handle());
    }
    for c in open {
        c.abort();
    }
}

/// Accept failures in a row.
#[derive(Default)]
struct AcceptFailures {
    in_a_row: u32,
}

impl AcceptFailures {
    /// How long to pause after this failure: not at all when only this
    /// connection is lost (its client gave up); else 10 ms, doubling up to
    /// [`MAX_ACCEPT_PAUSE`] (out of descriptors or memory: the queued
    /// connections stay queued, and retrying at once would spin).
    fn pause_after(&mut self, e: &std::io::Error) -> Option<Duration> {
        use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
        if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
            return None;
        }
        if self.in_a_row == 0 {
            tracing::warn!(error = %e, "the metrics endpoint cannot accept connections; pausing between tries");
        }
        let pause = Duration::from_millis(10 << self.in_a_row.min(7)).min(MAX_ACCEPT_PAUSE);
        self.in_a_row += 1;
        Some(pause)
    }
}

/// This endpoint's own paths; with `--ui`, the dashboard has the others.
const OWN: [&str; 4] = ["/metrics", "/healthz", "/readyz", "/jobs.json"];

async fn connection(stream: TcpStream, endpoints: Endpoints, limits: Limits) {
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let route = match &endpoints.ui {
            Some(ui) if !OWN.contains(&request.uri().path()) => Err(ui.clone()),
            _ => Ok(answer(&endpoints, &request)),
        };
        async move {
            let response = match route {
                Ok(own) => own.map(axum::body::Body::new),
                Err(ui) => {
                    use tower::ServiceExt;
                    match ui.oneshot(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                }
            };
            Ok::<_, Infallible>(response)
        }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUFFER)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "metrics connection ended");
    }
}

fn answer<B>(endpoints: &Endpoints, request: &Request<B>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let known = OWN.contains(&path);
    let (status, body) = if !known {
        (
            StatusCode::NOT_FOUND,
            "not found: GET /metrics, /healthz, /readyz or /jobs.json\n".to_owned(),
        )
    } else if request.method() != Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".into(),
        )
    } else {
        match path {
            "/metrics" => (StatusCode::OK, endpoints.stats.render()),
            "/jobs.json" => (StatusCode::OK, endpoints.stats.jobs_json()),
            "/readyz" => match (endpoints.ready)() {
                Ok(()) => (StatusCode::OK, "ready\n".into()),
                Err(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            _ => (StatusCode::OK, "ok\n".into()),
        }
    };
    let content_type = match (path, status) {
        ("/metrics", StatusCode::OK) => prometheus_text::CONTENT_TYPE,
        ("/jobs.json", StatusCode::OK) => "application/json",
        _ => "text/plain; charset=utf-8",
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn render_has_every_family_with_labels() {
        let s = Arc::new(WorkerStats::default());
        s.received.inc_by(3);
        s.job_failed("trap", "out_of_memory");
        s.job_duration
            .observe(Duration::from_millis(2).as_secs_f64());
        let _guard = s.job_started("wc \"v2\"", "acme");
        let text = s.render();
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

    /// A server on a free port with these limits, answering `/readyz` with `ready`.
    async fn server(limits: Limits, ready: Result<(), String>) -> SocketAddr {
        serve_stats(Arc::default(), limits, ready).await
    }

    async fn serve_stats(
        stats: Arc<WorkerStats>,
        limits: Limits,
        ready: Result<(), String>,
    ) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoints = Endpoints {
            stats,
            ready: Arc::new(move || ready.clone()),
            ui: None,
        };
        tokio::spawn(serve(listener, endpoints, limits, std::future::pending()));
        addr
    }

    /// Send `request` on a new connection; the status line and body.
    async fn ask(addr: SocketAddr, request: &str) -> (String, String) {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        c.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    }

    #[tokio::test]
    async fn routes_methods_and_readiness() {
        let addr = server(Limits::default(), Err("the queue is down".into())).await;
        let (status, body) = ask(addr, &get("/metrics")).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("# TYPE wasm_jobs_messages_received_total counter\n"));
        assert_eq!(ask(addr, &get("/healthz")).await.1, "ok\n");
        let (status, body) = ask(addr, &get("/readyz")).await;
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        assert_eq!(body, "not ready: the queue is down\n");
        assert_eq!(ask(addr, &get("/nope")).await.0, "HTTP/1.1 404 Not Found");
        let post =
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert_eq!(ask(addr, post).await.0, "HTTP/1.1 405 Method Not Allowed");
        let ready = server(Limits::default(), Ok(())).await;
        assert_eq!(ask(ready, &get("/readyz")).await.0, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn metrics_larger_than_the_connection_buffer_are_sent_whole() {
        let stats = Arc::new(WorkerStats::default());
        let _jobs: Vec<_> = (0..1000)
            .map(|i| stats.job_started(&format!("module-{i}"), "acme"))
            .collect();
        let expected = stats.render();
        assert!(expected.len() > 4 * MAX_BUFFER);
        let addr = serve_stats(Arc::clone(&stats), Limits::default(), Ok(())).await;
        let (status, body) = ask(addr, &get("/metrics")).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, expected);
    }

    #[tokio::test]
    async fn idle_connections_time_out_and_the_oldest_make_room() {
        let limits = Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_millis(300),
        };
        let addr = server(limits, Ok(())).await;
        let mut idle = Vec::new();
        for _ in 0..2 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Both slots are held by idle connections: a request still gets in,
        // and the oldest idle connection is closed for it.
        assert_eq!(ask(addr, &get("/healthz")).await.0, "HTTP/1.1 200 OK");
        let started = std::time::Instant::now();
        for mut c in idle {
            let mut buf = [0u8; 64];
            assert_eq!(c.read(&mut buf).await.unwrap(), 0, "closed by the server");
        }
        // The newer one waited for the head timeout, not for ever.
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn accept_failures_pause_longer_each_time_unless_a_client_gave_up() {
        let mut f = AcceptFailures::default();
        let gone = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(f.pause_after(&gone), None);
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let pauses: Vec<Duration> = (0..10).filter_map(|_| f.pause_after(&emfile)).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(pauses[9], MAX_ACCEPT_PAUSE);
    }
}
