//! Queue benchmark (not a test): embedded-queue send / receive+delete
//! throughput, and the round trip through a moto server when `moto` is
//! installed (`pip install 'moto[server]'`).
//!
//! Run: `cargo bench --bench queue`. Prints a Markdown table.

// A benchmark is a measuring harness: a failed set-up may panic where it is.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
#[path = "support/batches.rs"]
mod batches;
#[path = "support/moto.rs"]
mod moto;

use batches::{receive_delete_all, send_all};
use moto::start_moto;
use wasm_jobs::queue::embedded::EmbeddedStore;
use wasm_jobs::queue::sqs::SqsQueue;
use wasm_jobs::queue::{OutgoingMessage, Queue, QueueConfig, ReceiveRequest};

const MESSAGES: usize = 20_000;
const ROUND_TRIPS: usize = 200;

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// One message: send, receive, delete. Returns the median and p99.
async fn round_trips(q: &dyn Queue, n: usize) -> anyhow::Result<(Duration, Duration)> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        q.send(&OutgoingMessage::new(format!("rt {i}"))).await?;
        let got = q
            .receive(ReceiveRequest {
                max_messages: 1,
                wait: Duration::ZERO,
                visibility_timeout: None,
            })
            .await?;
        anyhow::ensure!(got.len() == 1, "round trip {i} received {}", got.len());
        q.delete(&got[0].receipt_handle).await?;
        samples.push(started.elapsed());
    }
    samples.sort();
    Ok((samples[n / 2], samples[n * 99 / 100]))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path())?;
    store.create_queue("bench", &QueueConfig::default())?;
    let q = store.queue("bench")?;

    println!("| measurement | value |");
    println!("|---|---|");
    let sent = send_all(&q, MESSAGES).await?;
    println!(
        "| embedded send (batches of 10), {MESSAGES} messages | {:.0} msg/s |",
        per_sec(MESSAGES, sent)
    );
    let drained = receive_delete_all(&q, MESSAGES).await?;
    println!(
        "| embedded receive + delete (batches of 10), {MESSAGES} messages | {:.0} msg/s |",
        per_sec(MESSAGES, drained)
    );
    let (p50, p99) = round_trips(&q, ROUND_TRIPS).await?;
    println!(
        "| embedded round trip (send, receive, delete one message): p50 / p99 | {:.3} / {:.3} ms |",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );

    match start_moto() {
        Some((mut child, port)) => {
            let endpoint = format!("http://127.0.0.1:{port}");
            let config = aws_sdk_sqs::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_sqs::config::Region::new("us-east-1"))
                .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                    "b", "b", None, None, "bench",
                ))
                .endpoint_url(&endpoint)
                .build();
            let client = aws_sdk_sqs::Client::from_conf(config);
            let url = SqsQueue::create(&client, "bench", &QueueConfig::default()).await?;
            let sqs = SqsQueue::new(client, url);
            let (p50, p99) = round_trips(&sqs, ROUND_TRIPS / 4).await?;
            println!(
                "| moto round trip (send, receive, delete one message): p50 / p99 | {:.2} / {:.2} ms |",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
            let _ = child.kill();
        }
        None => println!("| moto round trip | skipped: moto not installed |"),
    }
    Ok(())
}
