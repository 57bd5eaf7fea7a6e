//! {{name}}: a wasm-jobs job in Rust.
//!
//! `run` gets one queue message; `Ok(())` deletes it. To fail on purpose:
//! - `Err(Failure::Fatal(why))`: dead-letter it now (retrying cannot help);
//! - `Err(Failure::Retry(RetryInfo { reason, delay_seconds: Some(30) }))`:
//!   try again in 30 s (`None`: after the queue's visibility timeout).
//!
//! A panic traps the call: the message is retried, the panic message (your
//! stderr) is the reason, and on the last attempt the queue allows the
//! worker dead-letters it with that reason.
//!
//! The body is a name; the job publishes "GREETING, NAME!" as its result
//! (GREETING from the environment when the tenant's policy passes it
//! through, else "Hello"). An empty body is fatal; "retry" asks for a retry.

wit_bindgen::generate!({ path: "wit", world: "job" });

use wasm_jobs::job::types::RetryInfo;

struct Job;

impl Guest for Job {
    fn run(msg: Message) -> Result<(), Failure> {
        let name = msg.body.trim();
        if name.is_empty() {
            return Err(Failure::Fatal("the body is empty: send a name".into()));
        }
        if name == "retry" {
            return Err(Failure::Retry(RetryInfo {
                reason: "asked to retry".into(),
                delay_seconds: Some(1),
            }));
        }
        // (name, value) pairs, all text.
        let attributes = msg.attributes.len();
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
        let result = format!("{greeting}, {name}!");
        // stdout and stderr go to the worker's log with the message id.
        println!("attempt {}, {attributes} attributes: {result}", msg.receive_count);
        // The result goes to whoever asked for the outcome (reply-to,
        // `wasm-jobs send --wait`, `wasm-jobs exec`); over the policy's size
        // limit it is refused with the reason.
        wasm_jobs::job::output::set(result.as_bytes()).map_err(Failure::Fatal)
    }

    fn on_exit(msg: Message, signal: u32) -> Result<(), String> {
        // The worker running `run` for msg was stopped by `signal`: clean up.
        eprintln!("on-exit: message {} stopped by signal {signal}", msg.id);
        Ok(())
    }
}

export!(Job);
