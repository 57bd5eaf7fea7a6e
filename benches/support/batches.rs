//! Shared by the queue and worker benchmarks: a queue filled and drained
//! in batches of ten, as fast as one client goes.

use std::time::{Duration, Instant};
use wasm_jobs::queue::{OutgoingMessage, Queue, ReceiveRequest};

/// Send `n` messages (a multiple of ten) in batches of ten; how long it took.
pub(crate) async fn send_all(q: &dyn Queue, n: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let batch: Vec<OutgoingMessage> = (0..10)
        .map(|i| OutgoingMessage::new(format!("{{\"op\":\"count\",\"n\":{i}}}")))
        .collect();
    for _ in 0..n / 10 {
        for r in q.send_batch(&batch).await? {
            r.result?;
        }
    }
    Ok(started.elapsed())
}

/// Receive up to ten messages and delete them in one batch; how many.
pub(crate) async fn receive_delete_ten(q: &dyn Queue) -> anyhow::Result<usize> {
    let got = q
        .receive(ReceiveRequest {
            max_messages: 10,
            wait: Duration::ZERO,
            visibility_timeout: None,
        })
        .await?;
    if got.is_empty() {
        return Ok(0);
    }
    let receipts: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
    for r in q.delete_batch(&receipts).await? {
        r.result?;
    }
    Ok(got.len())
}

/// Receive `n` messages ten at a time and delete each ten in one batch;
/// how long it took. Fails if the queue runs dry first.
pub(crate) async fn receive_delete_all(q: &dyn Queue, n: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let got = receive_delete_ten(q).await?;
        anyhow::ensure!(got > 0, "queue ran dry at {done}");
        done += got;
    }
    Ok(started.elapsed())
}
