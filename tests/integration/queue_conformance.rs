//! One conformance suite, run against both queue backends: the embedded
//! SQLite queue and a real moto server. Each scenario is an async fn taking
//! a [`Backend`]; the macro at the bottom makes one test per backend.

use crate::queue_backends::Backend;
use std::time::{Duration, Instant};
use wasm_jobs::queue::{
    AttributeValue, Attributes, OutgoingMessage, Queue, QueueConfig, QueueError, ReceiveRequest,
    ReceivedMessage, VisibilityChange,
};

fn config(visibility_secs: u64) -> QueueConfig {
    QueueConfig {
        visibility_timeout: Duration::from_secs(visibility_secs),
        ..QueueConfig::default()
    }
}

fn fifo_config(visibility_secs: u64) -> QueueConfig {
    QueueConfig {
        fifo: true,
        ..config(visibility_secs)
    }
}

async fn recv(q: &dyn Queue, max: usize, visibility: Option<u64>) -> Vec<ReceivedMessage> {
    q.receive(ReceiveRequest {
        max_messages: max,
        wait: Duration::ZERO,
        visibility_timeout: visibility.map(Duration::from_secs),
    })
    .await
    .unwrap()
}

/// Receive until something comes (a message whose visibility timeout or
/// delay ran out), polling; fail after `timeout`.
async fn recv_when_visible(
    q: &dyn Queue,
    max: usize,
    visibility: Option<u64>,
    timeout: Duration,
) -> Vec<ReceivedMessage> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = recv(q, max, visibility).await;
        if !got.is_empty() {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "nothing became visible in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(q: &dyn Queue, body: &str) -> String {
    q.send(&OutgoingMessage::new(body)).await.unwrap()
}

fn grouped(body: &str, group: &str) -> OutgoingMessage {
    OutgoingMessage {
        group_id: Some(group.into()),
        ..OutgoingMessage::new(body)
    }
}

async fn visibility_hides_and_expiry_redelivers_with_count_plus_one(b: Backend) {
    let (q, _) = b.create("vis", &config(30)).await;
    let id = send(q.as_ref(), "hello").await;
    let first = recv(q.as_ref(), 10, Some(1)).await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0].message_id.as_str(), first[0].receive_count),
        (id.as_str(), 1)
    );
    assert!(first[0].sent_timestamp_ms > 0);
    assert!(
        recv(q.as_ref(), 10, None).await.is_empty(),
        "hidden while in flight"
    );
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.visible, counts.in_flight), (0, 1));
    let again = recv_when_visible(q.as_ref(), 10, Some(30), Duration::from_secs(15)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, 2);
    assert_ne!(again[0].receipt_handle, first[0].receipt_handle);
    assert_eq!(again[0].body, "hello");
}

async fn change_visibility_extends_and_shortens(b: Backend) {
    let (q, _) = b.create("chg", &config(30)).await;
    send(q.as_ref(), "m").await;
    let m = recv(q.as_ref(), 1, Some(1)).await.remove(0);
    q.change_visibility(&m.receipt_handle, Duration::from_secs(4))
        .await
        .unwrap();
    // Past the first 1 s timeout the message stays hidden: checked all along.
    let past = Instant::now() + Duration::from_millis(1600);
    loop {
        assert!(
            recv(q.as_ref(), 10, None).await.is_empty(),
            "extended past 1 s"
        );
        if Instant::now() >= past {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    q.change_visibility(&m.receipt_handle, Duration::ZERO)
        .await
        .unwrap();
    let back = recv(q.as_ref(), 10, None).await;
    assert_eq!(back.len(), 1, "visibility 0 makes it visible now");
    assert_eq!(back[0].receive_count, 2);
}

async fn stale_receipt_handles_fail_clearly(b: Backend) {
    let embedded = matches!(b, Backend::Embedded { .. });
    let (q, _) = b.create("stale", &config(30)).await;
    send(q.as_ref(), "m").await;
    let old = recv(q.as_ref(), 1, Some(1)).await.remove(0);
    let new = recv_when_visible(q.as_ref(), 1, Some(30), Duration::from_secs(15))
        .await
        .remove(0);
    if embedded {
        assert_eq!(
            q.change_visibility(&old.receipt_handle, Duration::from_secs(60))
                .await,
            Err(QueueError::StaleReceipt)
        );
        assert_eq!(
            q.delete(&old.receipt_handle).await,
            Err(QueueError::StaleReceipt)
        );
        // The redelivered message is untouched and still ours.
        q.change_visibility(&new.receipt_handle, Duration::from_secs(30))
            .await
            .unwrap();
    }
    // moto is not used for the stale calls: it accepts a stale handle and
    // even deletes the redelivered message with it, where real SQS rejects
    // ChangeMessageVisibility and documents DeleteMessage as "succeeds, but
    // the message will not be deleted".
    q.delete(&new.receipt_handle).await.unwrap();
    let c = q.counts().await.unwrap();
    assert_eq!((c.visible, c.in_flight, c.delayed), (0, 0, 0));
}

async fn redrive_moves_to_the_dlq_after_max_receives(b: Backend) {
    let (q, dlq) = b.create_with_dlq("redrive", 2, &config(1)).await;
    let mut attrs = Attributes::new();
    attrs.insert("module".into(), AttributeValue::String("wc".into()));
    let id = q
        .send(&OutgoingMessage {
            attributes: attrs.clone(),
            ..OutgoingMessage::new("poison")
        })
        .await
        .unwrap();
    let got = recv(q.as_ref(), 1, None).await;
    assert_eq!(got.len(), 1, "receive 1");
    assert_eq!(got[0].receive_count, 1);
    // Back after its 1 s visibility timeout.
    let got = recv_when_visible(q.as_ref(), 1, None, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1, "receive 2");
    assert_eq!(got[0].receive_count, 2);
    // Once visible again, a third receive redrives it: no receive ever
    // returns it, and it turns up in the dead-letter queue.
    let deadline = Instant::now() + Duration::from_secs(15);
    let dead = loop {
        assert!(
            recv(q.as_ref(), 10, None).await.is_empty(),
            "a third receive redrives it"
        );
        let dead = recv(dlq.as_ref(), 10, None).await;
        if !dead.is_empty() {
            break dead;
        }
        assert!(Instant::now() < deadline, "never redriven");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].message_id.as_str(), dead[0].body.as_str()),
        (id.as_str(), "poison")
    );
    assert_eq!(dead[0].attributes, attrs);
    let attrs = q.attributes().await.unwrap();
    assert_eq!(attrs.redrive.map(|r| r.max_receive_count), Some(2));
    assert!(q.dead_letter_queue().await.unwrap().is_some());
}

/// Twice on one handle: the second long poll reuses what the first set up.
async fn long_poll_wakes_on_a_send_from_another_process(b: Backend) {
    let (q, address) = b.create("poll", &config(30)).await;
    for round in 0..2 {
        let body = format!("from another process, round {round}");
        let mut sender = b.cli();
        sender.args(["send", "--queue", &address, &body]);
        let started = Instant::now();
        let send_later = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(700));
            let out = sender.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        });
        let got = q
            .receive(ReceiveRequest {
                max_messages: 1,
                wait: Duration::from_secs(15),
                visibility_timeout: None,
            })
            .await
            .unwrap();
        let took = started.elapsed();
        send_later.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, body);
        assert!(
            took < Duration::from_secs(8),
            "long poll returned after {took:?}"
        );
    }
}

async fn long_poll_waits_out_its_time_when_nothing_comes(b: Backend) {
    let (q, _) = b.create("idle", &config(30)).await;
    let started = Instant::now();
    let got = q
        .receive(ReceiveRequest {
            max_messages: 1,
            wait: Duration::from_secs(1),
            visibility_timeout: None,
        })
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

async fn fifo_keeps_order_and_holds_a_group_in_flight(b: Backend) {
    let (q, _) = b.create("order.fifo", &fifo_config(30)).await;
    for (body, group) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("a3", "a")] {
        q.send(&grouped(body, group)).await.unwrap();
    }
    let first = recv(q.as_ref(), 1, None).await;
    assert_eq!(first[0].body, "a1");
    assert_eq!(first[0].group_id.as_deref(), Some("a"));
    // Group "a" is held while a1 is in flight: only b1 may come.
    let next = recv(q.as_ref(), 10, None).await;
    let bodies: Vec<&str> = next.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["b1"]);
    q.delete(&first[0].receipt_handle).await.unwrap();
    q.delete(&next[0].receipt_handle).await.unwrap();
    let rest = recv(q.as_ref(), 10, None).await;
    let bodies: Vec<&str> = rest.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["a2", "a3"], "the rest of the group, in order");
}

/// A group held by a message in flight, with a backlog longer than any
/// page the queue reads at once, hides nothing behind it: a receive skips
/// the whole group and hands out the other group's message, promptly.
async fn fifo_a_long_held_group_hides_no_other_group(b: Backend) {
    let (q, _) = b.create("held.fifo", &fifo_config(30)).await;
    let held: Vec<OutgoingMessage> = (1..=250)
        .map(|i| OutgoingMessage {
            dedup_id: Some(format!("a{i}")),
            ..grouped(&format!("a{i}"), "a")
        })
        .collect();
    for batch in held.chunks(10) {
        let sent = q.send_batch(batch).await.unwrap();
        assert!(sent.iter().all(|e| e.result.is_ok()));
    }
    q.send(&grouped("b1", "b")).await.unwrap();
    assert_eq!(recv(q.as_ref(), 1, None).await[0].body, "a1");
    let next = tokio::time::timeout(Duration::from_secs(20), recv(q.as_ref(), 10, None))
        .await
        .expect("a receive behind a held group must end");
    let bodies: Vec<&str> = next.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["b1"]);
}

async fn fifo_deduplicates_within_the_window(b: Backend) {
    let (q, _) = b.create("dedup.fifo", &fifo_config(30)).await;
    let m = OutgoingMessage {
        dedup_id: Some("d-1".into()),
        ..grouped("once", "g")
    };
    q.send(&m).await.unwrap();
    q.send(&m).await.unwrap();
    q.send(&grouped("content", "g")).await.unwrap();
    q.send(&grouped("content", "g")).await.unwrap();
    let got = recv(q.as_ref(), 10, None).await;
    let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["once", "content"]);
}

async fn attributes_of_all_three_types_round_trip(b: Backend) {
    let (q, _) = b.create("attrs", &config(30)).await;
    let mut attrs = Attributes::new();
    attrs.insert("s".into(), AttributeValue::String("text ✓".into()));
    attrs.insert("n".into(), AttributeValue::Number("-12.5".into()));
    attrs.insert("bin".into(), AttributeValue::Binary(vec![0, 1, 2, 255]));
    q.send(&OutgoingMessage {
        attributes: attrs.clone(),
        ..OutgoingMessage::new("with attributes")
    })
    .await
    .unwrap();
    let got = recv(q.as_ref(), 1, None).await.remove(0);
    assert_eq!(got.attributes, attrs);
    assert_eq!(got.attributes["bin"].as_text(), "AAEC/w==");
}

async fn delayed_messages_wait_their_delay(b: Backend) {
    let (q, _) = b.create("delay", &config(30)).await;
    q.send(&OutgoingMessage {
        delay: Some(Duration::from_secs(2)),
        ..OutgoingMessage::new("later")
    })
    .await
    .unwrap();
    assert_eq!(q.counts().await.unwrap().delayed, 1);
    assert!(recv(q.as_ref(), 10, None).await.is_empty());
    let later = recv_when_visible(q.as_ref(), 10, None, Duration::from_secs(15)).await;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].body, "later");
}

async fn batch_calls_report_each_entry(b: Backend) {
    let (q, _) = b.create("batch", &config(30)).await;
    let mut bad = OutgoingMessage::new("bad attribute");
    bad.attributes
        .insert("AWS.reserved".into(), AttributeValue::String("x".into()));
    let sent = q
        .send_batch(&[
            OutgoingMessage::new("one"),
            bad,
            OutgoingMessage::new("two"),
        ])
        .await
        .unwrap();
    assert_eq!(sent.len(), 3);
    assert!(sent[0].result.is_ok() && sent[2].result.is_ok());
    assert!(
        matches!(sent[1].result, Err(QueueError::InvalidInput(_))),
        "{:?}",
        sent[1]
    );

    let got = recv(q.as_ref(), 10, None).await;
    assert_eq!(got.len(), 2);
    let changes = vec![
        VisibilityChange {
            receipt_handle: got[0].receipt_handle.clone(),
            timeout: Duration::from_secs(60),
        },
        VisibilityChange {
            receipt_handle: "bogus-receipt".into(),
            timeout: Duration::from_secs(60),
        },
    ];
    let changed = q.change_visibility_batch(&changes).await.unwrap();
    assert!(changed[0].result.is_ok());
    assert!(changed[1].result.is_err());
    let deleted = q
        .delete_batch(&[
            got[0].receipt_handle.clone(),
            "bogus-receipt".into(),
            got[1].receipt_handle.clone(),
        ])
        .await
        .unwrap();
    assert!(deleted[0].result.is_ok() && deleted[2].result.is_ok());
    assert!(deleted[1].result.is_err());

    let eleven: Vec<OutgoingMessage> = (0..11)
        .map(|i| OutgoingMessage::new(format!("m{i}")))
        .collect();
    assert!(matches!(
        q.send_batch(&eleven).await,
        Err(QueueError::InvalidInput(_))
    ));
    assert!(matches!(
        q.delete_batch(&[]).await,
        Err(QueueError::InvalidInput(_))
    ));
}

async fn bad_input_gets_a_clear_error(b: Backend) {
    let (q, _) = b.create("bad", &config(30)).await;
    let big = OutgoingMessage::new("x".repeat(256 * 1024 + 1));
    let err = q.send(&big).await.unwrap_err();
    assert!(err.to_string().contains("256 KiB"), "{err}");
    for name in ["AWS.x", "Amazon.y", "a..b", ".lead", "sp ace"] {
        let mut m = OutgoingMessage::new("b");
        m.attributes
            .insert(name.into(), AttributeValue::String("v".into()));
        assert!(
            matches!(q.send(&m).await, Err(QueueError::InvalidInput(_))),
            "{name}"
        );
    }
    let req = ReceiveRequest {
        max_messages: 11,
        wait: Duration::ZERO,
        visibility_timeout: None,
    };
    assert!(matches!(
        q.receive(req).await,
        Err(QueueError::InvalidInput(_))
    ));
    assert_eq!(q.counts().await.unwrap().visible, 0, "nothing half-sent");
}

async fn purge_empties_the_queue(b: Backend) {
    let (q, _) = b.create("purge", &config(30)).await;
    for i in 0..5 {
        send(q.as_ref(), &format!("m{i}")).await;
    }
    q.purge().await.unwrap();
    assert!(recv(q.as_ref(), 10, None).await.is_empty());
}

crate::on_both_backends!(
    visibility_hides_and_expiry_redelivers_with_count_plus_one,
    change_visibility_extends_and_shortens,
    stale_receipt_handles_fail_clearly,
    redrive_moves_to_the_dlq_after_max_receives,
    long_poll_wakes_on_a_send_from_another_process,
    long_poll_waits_out_its_time_when_nothing_comes,
    fifo_keeps_order_and_holds_a_group_in_flight,
    fifo_a_long_held_group_hides_no_other_group,
    fifo_deduplicates_within_the_window,
    attributes_of_all_three_types_round_trip,
    delayed_messages_wait_their_delay,
    batch_calls_report_each_entry,
    bad_input_gets_a_clear_error,
    purge_empties_the_queue,
);
