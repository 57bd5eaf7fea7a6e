//! The example wasm-jobs job in Rust.
//!
//! Body: JSON `{"op": ...}`
//! - `{"op": "count", "text": "..."}`: publish `{"words": N}` as the result
//!   (and print it to stdout), ok
//! - `{"op": "retry", "delay": S, "reason": R}`: ask for a retry after S seconds
//! - `{"op": "fail", "reason": R}`: fatal, dead-letter now
//!
//! Malformed JSON or an unknown op is fatal: retrying cannot help.

wit_bindgen::generate!({ path: "../../wit", world: "job" });

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
            other => Err(Failure::Fatal(format!("unknown op {other:?}"))),
        }
    }

    fn on_exit(msg: Message, signal: u32) -> Result<(), String> {
        eprintln!("on-exit: message {} stopped by signal {signal}", msg.id);
        Ok(())
    }
}

export!(Job);
