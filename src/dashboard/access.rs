//! Who may use the dashboard, in the CLI process serving it. Without a
//! token (allowed only on a loopback address) anyone who can connect may;
//! with one (`--token-file`, required on any other address), a request
//! must carry it as `Authorization: Bearer TOKEN` or as the session cookie
//! the login form sets (HttpOnly, SameSite=Strict; its value is derived
//! from the token and a secret of this process, never the token itself).
//!
//! Every state-changing request is a POST carrying this process's CSRF
//! token in a hidden form field (another site's page cannot read it), and
//! one whose `Origin` names another host is refused. Without a token, only
//! requests whose `Host` is a loopback name are answered (DNS rebinding);
//! every answer forbids framing and script (clickjacking, XSS in depth).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "wasm_jobs_session";
/// The shortest token accepted.
const MIN_TOKEN: usize = 16;

/// The dashboard's access rules.
#[derive(Debug)]
pub(crate) struct Access {
    token: Option<String>,
    /// A secret of this process: the CSRF token, and the session's key.
    secret: String,
}

/// A token file that cannot serve.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// It could not be read.
    #[error("token file {0}: {1}")]
    Unreadable(String, std::io::Error),
    /// It holds too short a token.
    #[error("token file {0}: the token must be at least {MIN_TOKEN} characters")]
    TooShort(String),
}

impl Access {
    /// Rules with `token` (or none).
    pub(crate) fn new(token: Option<String>) -> Access {
        let secret: [u8; 32] = rand::random();
        Access {
            token,
            secret: hex::encode(secret),
        }
    }

    /// The token in `path`, trimmed.
    pub(crate) fn read_token(path: &std::path::Path) -> Result<String, TokenError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| TokenError::Unreadable(shown.clone(), e))?;
        let token = text.trim().to_owned();
        if token.chars().count() < MIN_TOKEN {
            return Err(TokenError::TooShort(shown));
        }
        Ok(token)
    }

    /// Whether a token is required.
    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The CSRF token every form carries.
    pub(crate) fn csrf(&self) -> &str {
        &self.secret
    }

    /// The session cookie's value for the token.
    fn session(&self, token: &str) -> String {
        hex::encode(Sha256::digest(format!("{}\n{token}", self.secret)))
    }

    /// Whether `given` is the token.
    pub(crate) fn is_token(&self, given: &str) -> bool {
        self.token
            .as_deref()
            .is_some_and(|t| same(t.as_bytes(), given.as_bytes()))
    }

    /// Whether the request may be served.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_some_and(|b| self.is_token(b.trim())) {
            return true;
        }
        let session = self.session(token);
        cookie(headers, COOKIE).is_some_and(|c| same(c.as_bytes(), session.as_bytes()))
    }

    /// The `Set-Cookie` value after a good login.
    pub(crate) fn login_cookie(&self) -> Option<String> {
        let token = self.token.as_deref()?;
        Some(format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            self.session(token)
        ))
    }

    /// Whether a POST's form may change state: its CSRF field is ours and
    /// its `Origin`, when sent, is this host.
    pub(crate) fn allows_post(&self, headers: &HeaderMap, csrf: &str) -> bool {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            None => true,
            Some(origin) => {
                let origin_host = origin.split_once("://").map(|(_, h)| h);
                origin_host.is_some() && origin_host == host
            }
        };
        origin_ok && same(csrf.as_bytes(), self.secret.as_bytes())
    }
}

/// Compare without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name`, if sent.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Whether the request's `Host` names a loopback address or `localhost`:
/// without a token the pages answer only to those, so a page of another
/// site whose name is made to resolve to 127.0.0.1 (DNS rebinding) cannot
/// use them.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// Headers on every answer: never framed (clickjacking), no script at
/// all, no referrer to other sites (with `no-referrer`, a browser sends
/// `Origin: null` on the dashboard's own forms), no content sniffing.
fn harden(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}

/// The middleware: serve the request, or send a browser to the login form
/// (and anything else a 401).
pub(crate) async fn require(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    harden(admit(&access, request, next).await)
}

async fn admit(access: &Access, request: Request, next: Next) -> Response {
    if !access.has_token() && !loopback_host(request.headers()) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "without a token this dashboard answers only to loopback names (localhost, 127.0.0.1, [::1])\n",
        )
            .into_response();
    }
    let path = request.uri().path();
    if path == "/login" || access.admits(request.headers()) {
        return next.run(request).await;
    }
    let wants_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if wants_html && request.method() == axum::http::Method::GET {
        Redirect::to("/login").into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a token is required: Authorization: Bearer TOKEN, or log in at /login\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_token_is_asked_for_and_accepted_as_bearer_or_session() {
        let open = Access::new(None);
        assert!(open.admits(&HeaderMap::new()));
        let a = Access::new(Some("0123456789abcdef".into()));
        assert!(!a.admits(&HeaderMap::new()));
        assert!(a.admits(&headers(&[(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdef"
        )])));
        assert!(!a.admits(&headers(&[(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdeX"
        )])));
        let cookie = a.login_cookie().unwrap();
        let value = cookie.split(';').next().unwrap();
        assert!(
            !value.contains("0123456789abcdef"),
            "never the token itself"
        );
        assert!(a.admits(&headers(&[(header::COOKIE, &format!("x=1; {value}"))])));
        assert!(!a.admits(&headers(&[(
            header::COOKIE,
            "wasm_jobs_session=0123456789abcdef"
        )])));
        // Another process's session is not this one's.
        let b = Access::new(Some("0123456789abcdef".into()));
        assert!(!b.admits(&headers(&[(header::COOKIE, value)])));
    }

    #[test]
    fn without_a_token_only_loopback_names_are_answered() {
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "127.0.0.2",
        ] {
            assert!(loopback_host(&headers(&[(header::HOST, host)])), "{host}");
        }
        for host in [
            "evil.example:8080",
            "10.0.0.1:8080",
            "localhost.evil.example",
            "[::2]:80",
        ] {
            assert!(!loopback_host(&headers(&[(header::HOST, host)])), "{host}");
        }
        assert!(!loopback_host(&HeaderMap::new()));
    }

    #[test]
    fn posts_need_the_csrf_token_and_this_hosts_origin() {
        let a = Access::new(None);
        let csrf = a.csrf().to_owned();
        let host = (header::HOST, "127.0.0.1:8080");
        assert!(a.allows_post(&headers(std::slice::from_ref(&host)), &csrf));
        assert!(!a.allows_post(&headers(std::slice::from_ref(&host)), "forged"));
        assert!(a.allows_post(
            &headers(&[host.clone(), (header::ORIGIN, "http://127.0.0.1:8080")]),
            &csrf
        ));
        assert!(!a.allows_post(
            &headers(&[host, (header::ORIGIN, "https://evil.example")]),
            &csrf
        ));
    }
}
