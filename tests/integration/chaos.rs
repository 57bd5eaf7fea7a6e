//! Chaos, in the worker as a whole: the parent (restarted here), the fork
//! server and job children are SIGKILLed at random until a few hundred jobs
//! are done. Nothing is lost and nothing is dead-lettered: every kill is a
//! passing failure, never a verdict on a message.

use crate::common::hostile_path;
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::time::{Duration, Instant};
use wasm_jobs::queue::OutgoingMessage;

crate::on_both_backends!(chaos_kills_lose_and_dead_letter_nothing);

/// A small deterministic generator, so a failing run can be replayed from
/// the seed it prints.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

const CHAOS_MESSAGES: usize = 300;

/// Several hundred short jobs at concurrency 4 while the parent (restarted
/// here), the fork server and job children are SIGKILLed at random every
/// 0.3-1.5 s until the queue is drained: 0 lost, 0 dead-lettered.
async fn chaos_kills_lose_and_dead_letter_nothing(b: Backend) {
    let (q, dlq) = b.create_with_dlq("chaos", 10, &config(2)).await;
    let batch: Vec<OutgoingMessage> = (0..10)
        .map(|_| OutgoingMessage::new("sleep-ms:120"))
        .collect();
    for _ in 0..CHAOS_MESSAGES / 10 {
        for r in q.send_batch(&batch).await.unwrap() {
            r.result.unwrap();
        }
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Lcg(seed);
    let module = hostile_path();
    let addr = b.address_of(q.as_ref());
    let args = [
        "--queue",
        &addr,
        "--module",
        module.to_str().unwrap(),
        "--concurrency",
        "4",
        "--wait",
        "0",
        "--visibility-timeout",
        "2",
        "--heartbeat",
        "0.5",
        "--exit-timeout",
        "2",
        "--drain",
    ];
    let (mut parents, mut servers, mut children, mut runs) = (0, 0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut logs = String::new();
    'runs: loop {
        runs += 1;
        let w = Worker::with_args(&b, &args);
        loop {
            let pause = Duration::from_millis(300 + rng.next(1200));
            let until = Instant::now() + pause;
            while Instant::now() < until {
                if !alive(w.child.id() as i32) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                Instant::now() < deadline,
                "chaos did not drain in time (seed {seed})"
            );
            if !alive(w.child.id() as i32) {
                let (status, log) = w.wait(Duration::from_secs(10));
                logs.push_str(&log);
                assert!(status.success(), "seed {seed}: {log}");
                break 'runs;
            }
            let events = w.events();
            // Pids from the log are killed only while they are still this
            // worker's: a process that ended long ago may have its pid
            // reused by any other process of the test suite by now.
            let server = events
                .iter()
                .rev()
                .find(|e| message(e) == "fork server ready")
                .map(|e| field(e, "pid").parse::<i32>().unwrap())
                .filter(|p| alive(*p) && parent_of(*p) == Some(w.child.id() as i32));
            match rng.next(3) {
                0 => {
                    parents += 1;
                    w.signal(libc::SIGKILL);
                    let (_, log) = w.wait(Duration::from_secs(10));
                    logs.push_str(&log);
                    continue 'runs;
                }
                1 => {
                    if let Some(pid) = server {
                        servers += 1;
                        kill(pid, libc::SIGKILL);
                    }
                }
                _ => {
                    let child = events
                        .iter()
                        .rev()
                        .filter(|e| message(e) == "worker child started")
                        .map(|e| field(e, "pid").parse::<i32>().unwrap())
                        .find(|p| alive(*p) && server.is_some() && parent_of(*p) == server);
                    if let Some(pid) = child {
                        children += 1;
                        kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }
    eprintln!(
        "chaos (seed {seed}): {runs} worker runs, SIGKILLed {parents} parents, {servers} fork servers, {children} job children"
    );
    assert!(parents + servers + children > 0, "chaos killed nothing");
    let dead = all(dlq.as_ref()).await;
    // Why each was dead-lettered, after the logs: a failing run's output is
    // read from its end. A copy the queue's redrive policy moved has no
    // reason and keeps its id; one the worker copied names the original.
    let why: Vec<String> = dead
        .iter()
        .map(|m| {
            let get = |k: &str| m.attributes.get(k).map(|v| v.as_text());
            format!(
                "message {}: {}",
                get("wasm-jobs.original-message-id").unwrap_or_else(|| m.message_id.clone()),
                get("wasm-jobs.dead-letter-reason")
                    .unwrap_or_else(|| "no reason: moved by the redrive policy".into())
            )
        })
        .collect();
    assert!(
        dead.is_empty(),
        "{logs}\nseed {seed}: dead-lettered {why:#?}"
    );
    assert_eq!(
        counts(q.as_ref()).await,
        (0, 0, 0),
        "seed {seed}: lost messages"
    );
    let succeeded = count_in(&logs, "job succeeded; message deleted", &[]);
    assert!(
        succeeded >= CHAOS_MESSAGES.saturating_sub(parents * 4),
        "seed {seed}: {succeeded} successes logged"
    );
}
