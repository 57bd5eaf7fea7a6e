//! Outbound HTTP for jobs: `wasi:http/outgoing-handler` from
//! `wasmtime-wasi-http`, with this host's own sender. A request leaves only
//! if its scheme, host, port and path match one of the tenant's grants
//! (policy `http = ["https://api.acme.example", "http://10.0.0.5:8080/v1/"]`);
//! anything else fails inside the guest with `HTTP-request-denied`, which
//! its HTTP library reports as an error (not a trap), and is logged with the
//! URL. Per call: at most `max_requests` requests, request and response
//! bodies of at most `max_request_body` / `max_response_body` bytes, and
//! `timeout` per request (connect to last byte); hitting one gives the guest
//! the matching error code and is logged and counted by kind.
//!
//! Names are resolved when the call's store is made, before a worker child
//! locks itself down (it can resolve nothing after), with the same rule as
//! TCP grants: a name's loopback, link-local and private addresses are
//! dropped, so only an IP literal in the grant reaches them. Connections go
//! to those addresses, whatever the request's DNS would say now. `https`
//! uses TLS with the webpki (Mozilla) roots; plain `http` only where a
//! grant says `http://`. Each request carries the job's `traceparent`.
//!
//! Runs in the process that makes the call: a worker child (after its
//! Landlock rules allow the granted ports) or the CLI for `wasm-jobs exec`.

use crate::addresses::is_internal;
use bytes::Bytes;
use http::uri::Scheme;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Defaults of a tenant's HTTP limits.
pub(crate) const DEFAULT_MAX_REQUESTS: u32 = 100;
pub(crate) const DEFAULT_MAX_REQUEST_BODY: u64 = 1024 * 1024;
pub(crate) const DEFAULT_MAX_RESPONSE_BODY: u64 = 8 * 1024 * 1024;
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One allowed origin (and path prefix).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HttpGrant {
    /// `true` for `https`.
    pub tls: bool,
    /// Lowercase host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// The port, explicit or the scheme's.
    pub port: u16,
    /// Requests' paths must start with this (`/` for any).
    pub path_prefix: String,
}

impl HttpGrant {
    /// Parse `SCHEME://HOST[:PORT][/PATH]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text
            .parse()
            .map_err(|e| format!("http grant `{text}`: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(format!(
                    "http grant `{text}`: the scheme must be http or https"
                ));
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("http grant `{text}` has no host"))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_ascii_lowercase();
        if uri.query().is_some() {
            return Err(format!("http grant `{text}`: no query string in a grant"));
        }
        Ok(HttpGrant {
            tls,
            host,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path_prefix: uri.path().to_owned(),
        })
    }

    fn matches(&self, tls: bool, host: &str, port: u16, path: &str) -> bool {
        self.tls == tls
            && self.host == host
            && self.port == port
            && path.starts_with(&self.path_prefix)
            && (self.path_prefix == "/" || !climbs(path))
    }
}

/// Whether `path` has a segment a server may resolve upwards (`..`, `.`,
/// or either percent-encoded), which could leave a granted path prefix:
/// `/v1/../admin` starts with `/v1/`.
fn climbs(path: &str) -> bool {
    path.split('/').any(|segment| {
        let s = segment.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    }) || path.to_ascii_lowercase().contains("%2f")
}

/// A tenant's outbound HTTP: what it may reach and how much.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HttpPolicy {
    /// Allowed origins; none by default.
    pub grants: Vec<HttpGrant>,
    /// Requests per call.
    pub max_requests: u32,
    /// Bytes of one request's body.
    pub max_request_body: u64,
    /// Bytes of one response's body.
    pub max_response_body: u64,
    /// One request, from connect to its body's last byte.
    pub timeout: Duration,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            grants: Vec::new(),
            max_requests: DEFAULT_MAX_REQUESTS,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            max_response_body: DEFAULT_MAX_RESPONSE_BODY,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Why a grant's host cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve the http grant's host {host}: {source}")]
pub struct ResolveError {
    host: String,
    #[source]
    source: std::io::Error,
}

/// A limit an HTTP request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpLimit {
    /// The call's request count (`http_max_requests`).
    Requests,
    /// A request body's size (`http_max_request_body`).
    RequestBody,
    /// A response body's size (`http_max_response_body`).
    ResponseBody,
    /// A request's time (`http_timeout_secs`).
    Timeout,
    /// A granted name with only internal addresses.
    InternalAddress,
}

/// What one call's requests did (in the call's report, a worker's outcome
/// message, and the logs).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HttpUsage {
    /// Requests sent.
    pub requests: u32,
    /// Requests refused: not granted, or over the request limit.
    pub denied: u32,
    /// Limits hit, in order, at most 16.
    pub limits_hit: Vec<HttpLimit>,
}

impl HttpUsage {
    fn hit(&mut self, kind: HttpLimit) {
        if self.limits_hit.len() < 16 {
            self.limits_hit.push(kind);
        }
    }
}

/// The host side of one call's `wasi:http`: its grants resolved, its
/// limits, the job's `traceparent`, and what it has used.
pub(crate) struct HttpHooks {
    grants: Vec<(HttpGrant, Arc<Vec<SocketAddr>>)>,
    policy: HttpPolicy,
    traceparent: Option<String>,
    usage: Arc<Mutex<HttpUsage>>,
}

impl HttpHooks {
    /// Resolve `policy`'s grants (names to their public addresses only).
    pub(crate) fn new(policy: &HttpPolicy) -> Result<Self, ResolveError> {
        let mut grants = Vec::new();
        for g in &policy.grants {
            let addrs = match g.host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, g.port)],
                Err(_) => (g.host.as_str(), g.port)
                    .to_socket_addrs()
                    .map_err(|source| ResolveError {
                        host: g.host.clone(),
                        source,
                    })?
                    .filter(|a| {
                        let internal = is_internal(a.ip());
                        if internal {
                            tracing::warn!(host = %g.host, address = %a.ip(), "http grant resolved to an internal address; refused (grant the IP literal to allow it)");
                        }
                        !internal
                    })
                    .collect(),
            };
            grants.push((g.clone(), Arc::new(addrs)));
        }
        Ok(HttpHooks {
            grants,
            policy: policy.clone(),
            traceparent: None,
            usage: Arc::default(),
        })
    }

    /// Send `traceparent` on every request.
    pub(crate) fn set_traceparent(&mut self, traceparent: String) {
        self.traceparent = Some(traceparent);
    }

    /// What the call's requests did so far.
    pub(crate) fn usage(&self) -> HttpUsage {
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The addresses a request may go to, or why it may not leave.
    fn admit(&mut self, uri: &http::Uri) -> Result<Arc<Vec<SocketAddr>>, Error> {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let tls = uri.scheme() == Some(&Scheme::HTTPS);
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(|c| c == '[' || c == ']')
            .to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let Some((_, addrs)) = self
            .grants
            .iter()
            .find(|(g, _)| g.matches(tls, &host, port, uri.path()))
        else {
            usage.denied += 1;
            tracing::warn!(url = %uri, "http request denied: the tenant's policy does not grant it");
            return Err(Error::HttpRequestDenied);
        };
        if usage.requests >= self.policy.max_requests {
            usage.denied += 1;
            usage.hit(HttpLimit::Requests);
            tracing::warn!(url = %uri, limit = self.policy.max_requests, "http request denied: the call's request limit is reached");
            return Err(Error::HttpRequestDenied);
        }
        if addrs.is_empty() {
            usage.hit(HttpLimit::InternalAddress);
            tracing::warn!(url = %uri, "http request refused: its host has only internal addresses");
            return Err(Error::DestinationIpProhibited);
        }
        usage.requests += 1;
        tracing::info!(url = %uri, "http request");
        Ok(Arc::clone(addrs))
    }
}

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let admitted = self.admit(request.uri());
        if let Some(tp) = &self.traceparent
            && let Ok(value) = http::HeaderValue::from_str(tp)
        {
            request.headers_mut().insert("traceparent", value);
        }
        let policy = self.policy.clone();
        let usage = Arc::clone(&self.usage);
        Box::new(async move {
            let addrs = admitted?;
            send(request, &addrs, options, &policy, usage).await
        })
    }

    /// A request body cut off at its limit reaches the guest as
    /// `HTTP-request-body-size` (hyper wraps the body's error).
    fn p2_error_from_hyper(&mut self, err: &hyper::Error) -> ErrorCode {
        use std::error::Error as _;
        match err.source().and_then(|cause| cause.downcast_ref::<Error>()) {
            Some(Error::HttpRequestBodySize(limit)) => ErrorCode::HttpRequestBodySize(*limit),
            _ => ErrorCode::HttpProtocolError,
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

/// Connect to the first of `addrs` that answers within `timeout`.
async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<tokio::net::TcpStream, Error> {
    let mut last = Error::ConnectionRefused;
    for addr in addrs {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = Error::Connect(e),
            Err(_) => last = Error::ConnectionTimeout,
        }
    }
    Err(last)
}

fn tls_config() -> Arc<tokio_rustls::rustls::ClientConfig> {
    use std::sync::OnceLock;
    use tokio_rustls::rustls;
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }))
}

async fn send(
    mut request: http::Request<WasiBody>,
    addrs: &[SocketAddr],
    options: Option<RequestOptions>,
    policy: &HttpPolicy,
    usage: Arc<Mutex<HttpUsage>>,
) -> Sent {
    let deadline = tokio::time::Instant::now() + policy.timeout;
    let bounded = |t: Option<Duration>| t.map_or(policy.timeout, |t| t.min(policy.timeout));
    let options = options.unwrap_or_default();
    let uri = request.uri().clone();
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(|c| c == '[' || c == ']');
    let tcp = connect(addrs, bounded(options.connect_timeout)).await?;
    let stream: Box<dyn Stream> = if uri.scheme() == Some(&Scheme::HTTPS) {
        use tokio_rustls::rustls::pki_types::ServerName;
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::from(ip),
            Err(_) => {
                ServerName::try_from(host.to_owned()).map_err(|_| Error::HttpRequestUriInvalid)?
            }
        };
        let tls = tokio_rustls::TlsConnector::from(tls_config());
        Box::new(tls.connect(name, tcp).await.map_err(Error::Tls)?)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(Error::from)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // Only the path and query go on the wire (the host is in `Host`).
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
    let limit = policy.max_request_body;
    let request = request.map(|body| {
        Limited {
            inner: body,
            left: limit,
            too_big: move || Error::HttpRequestBodySize(Some(limit)),
            kind: HttpLimit::RequestBody,
            usage: Arc::clone(&usage),
            deadline: None,
        }
        .boxed_unsync()
    });
    let first_byte = bounded(options.first_byte_timeout);
    let response = match tokio::time::timeout(first_byte, sender.send_request(request)).await {
        Ok(r) => r.map_err(Error::from)?,
        Err(_) => {
            usage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .hit(HttpLimit::Timeout);
            return Err(Error::ConnectionReadTimeout);
        }
    };
    let limit = policy.max_response_body;
    let response = response.map(|body| {
        Limited {
            inner: body.map_err(Error::from),
            left: limit,
            too_big: move || Error::HttpResponseBodySize(Some(limit)),
            kind: HttpLimit::ResponseBody,
            usage,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        .boxed_unsync()
    });
    let done: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async { Ok(()) });
    Ok((response, done))
}

/// A body cut off past `left` bytes (and, when given, at `deadline`).
struct Limited<B, F> {
    inner: B,
    left: u64,
    too_big: F,
    kind: HttpLimit,
    usage: Arc<Mutex<HttpUsage>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B, F> Body for Limited<B, F>
where
    B: Body<Data = Bytes, Error = Error> + Unpin,
    F: Fn() -> Error + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if let Some(d) = &mut this.deadline
            && d.as_mut().poll(cx).is_ready()
        {
            this.usage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .hit(HttpLimit::Timeout);
            return Poll::Ready(Some(Err(Error::HttpResponseTimeout)));
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            let n = data.len() as u64;
            if n > this.left {
                this.left = 0;
                this.usage
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .hit(this.kind);
                tracing::warn!(limit = ?this.kind, "http body over its limit; cut off");
                return Poll::Ready(Some(Err((this.too_big)())));
            }
            this.left -= n;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
