//! The example wasm-jobs job in Rust.
//!
//! Body: JSON `{"op": ...}`
//! - `{"op": "count", "text": "..."}`: publish `{"words": N}` as the result
//!   (and print it to stdout), ok
//! - `{"op": "retry", "delay": S, "reason": R}`: ask for a retry after S seconds
//! - `{"op": "fail", "reason": R}`: fatal, dead-letter now
//! - `{"op": "fetch", "url": U}`: GET U through wasi:http and publish
//!   `{"status": S, "body": the first 200 characters}`; a refused or failed
//!   request is fatal
//!
//! Malformed JSON or an unknown op is fatal: retrying cannot help.

// The job world plus wasi:http (guest-examples/wit-http/world.wit).
wit_bindgen::generate!({ path: "../wit-http", world: "job-with-http", generate_all });

use serde_json::Value;
use wasm_jobs::job::types::RetryInfo;

struct Job;

impl Guest for Job {
    fn run(msg: Message) -> Result<(), Failure> {
        let job: Value = serde_json::from_str(&msg.body)
            .map_err(|e| Failure::Fatal(format!("malformed JSON: {e}")))?;
        let Some(job) = job.as_object() else {
            return Err(Failure::Fatal("malformed JSON: expected an object".into()));
        };
        let text = |key: &str, default: &str| {
            job.get(key)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        match job.get("op").and_then(Value::as_str) {
            Some("count") => {
                let words = text("text", "").split_whitespace().count();
                let result = format!("{{\"words\": {words}}}");
                println!("{result}");
                // The result goes to whoever asked for the outcome; `set`
                // refuses one over the policy's size limit.
                wasm_jobs::job::output::set(result.as_bytes()).map_err(Failure::Fatal)
            }
            Some("retry") => Err(Failure::Retry(RetryInfo {
                reason: text("reason", "asked to retry"),
                delay_seconds: job
                    .get("delay")
                    .and_then(Value::as_u64)
                    .map(|d| d.min(u32::MAX as u64) as u32),
            })),
            Some("fail") => Err(Failure::Fatal(text("reason", "asked to fail"))),
            Some("fetch") => {
                let url = text("url", "");
                let (status, body) = http_get(&url)
                    .map_err(|e| Failure::Fatal(format!("fetch {url} failed: {e}")))?;
                let body: String = String::from_utf8_lossy(&body).chars().take(200).collect();
                let result = serde_json::json!({"status": status, "body": body}).to_string();
                wasm_jobs::job::output::set(result.as_bytes()).map_err(Failure::Fatal)
            }
            other => Err(Failure::Fatal(format!("unknown op {other:?}"))),
        }
    }

    fn on_exit(msg: Message, signal: u32) -> Result<(), String> {
        eprintln!("on-exit: message {} stopped by signal {signal}", msg.id);
        Ok(())
    }
}

/// GET `url` through wasi:http: the host sends only what the tenant's
/// policy grants (`http = [...]`); anything else fails with an error code.
fn http_get(url: &str) -> Result<(u16, Vec<u8>), String> {
    use wasi::http::types::{Fields, OutgoingRequest, Scheme};
    use wasi::io::streams::StreamError;
    let (scheme, rest) = url.split_once("://").ok_or("not an absolute URL")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    let scheme = if scheme == "https" { Scheme::Https } else { Scheme::Http };
    request.set_scheme(Some(&scheme)).map_err(|()| "bad scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "bad authority")?;
    let path = if path.is_empty() { "/" } else { path };
    request.set_path_with_query(Some(path)).map_err(|()| "bad path")?;
    let future = wasi::http::outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or("no response")?
        .map_err(|()| "the response was taken already")?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response.consume().map_err(|()| "the body was taken already")?;
    let stream = body.stream().map_err(|()| "the stream was taken already")?;
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(e) => return Err(format!("reading the response: {e:?}")),
        }
    }
    Ok((status, data))
}

export!(Job);
