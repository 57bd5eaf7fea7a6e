//! `wasm-jobs dashboard` over plain HTTP: on both queue backends, one dead
//! letter is redriven or deleted by id; off loopback a token is required,
//! and actions need the form's CSRF token; a worker with `--ui` serves the
//! same pages beside its metrics; what would move dead letters on, or take
//! them from another name, is refused. The same pages in a browser are
//! `dashboard_browser.rs`.

use crate::common::{free_port, modes_path};
use crate::queue_backends::Backend;
use crate::worker_harness::{Worker, config, counts, field};
use std::process::Stdio;
use std::time::Duration;
use wasm_jobs::queue::OutgoingMessage;

/// A running dashboard and its address.
pub(crate) struct Dashboard {
    pub(crate) process: Worker,
    pub(crate) url: String,
}

impl Dashboard {
    pub(crate) fn start(b: &Backend, args: &[&str]) -> Dashboard {
        Dashboard::start_on(b, "127.0.0.1:0", args)
    }

    /// Listening on `listen` (port 0), reached through 127.0.0.1.
    fn start_on(b: &Backend, listen: &str, args: &[&str]) -> Dashboard {
        let mut cmd = b.cli();
        cmd.args(["dashboard", "--listen", listen, "--log-format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let process = Worker::spawn(cmd);
        let e = process.wait_for("dashboard listening", &[], Duration::from_secs(30));
        let port = field(&e, "addr").rsplit(':').next().unwrap().to_owned();
        let url = format!("http://127.0.0.1:{port}");
        Dashboard { process, url }
    }
}

/// A message as the worker dead-letters it: with its reason.
fn dead_letter(body: &str) -> OutgoingMessage {
    let mut m = OutgoingMessage::new(body);
    m.attributes.insert(
        "wasm-jobs.dead-letter-reason".into(),
        wasm_jobs::queue::AttributeValue::String(format!("fatal: {body}")),
    );
    m
}

/// Plain HTTP, redirects not followed.
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The CSRF token in a page's form.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_letter_is_redriven_or_deleted_by_id_on_both_backends() {
    for b in [Backend::embedded(), Backend::moto()] {
        let (q, dlq) = b.create_with_dlq("dash-one", 1, &config(30)).await;
        let queue = b.address_of(q.as_ref());
        let mut ids = Vec::new();
        for body in ["one", "two", "three"] {
            ids.push(dlq.send(&dead_letter(body)).await.unwrap());
        }
        let dash = Dashboard::start(&b, &["--queue", &format!("acme={queue}")]);
        let c = http();
        let list = page(
            &c,
            format!("{}/dead-letters?queue={}", dash.url, urlencode(&queue)),
        )
        .await;
        for id in &ids {
            assert!(list.contains(id.as_str()), "{queue}: {list}");
        }
        let confirm = page(
            &c,
            format!(
                "{}/confirm?action=redrive-one&queue={}&id={}",
                dash.url,
                urlencode(&queue),
                ids[0]
            ),
        )
        .await;
        let csrf = csrf_of(&confirm);
        let act = |action: &str, id: &str, csrf: &str| {
            let fields = [
                ("action", action),
                ("queue", queue.as_str()),
                ("id", id),
                ("csrf", csrf),
            ];
            post_form(&c, format!("{}/act", dash.url), &fields)
        };
        let forged = act("delete-one", &ids[1], "forged").await;
        assert_eq!(forged.status(), 403, "{queue}: no CSRF token, no action");
        let done = act("redrive-one", &ids[0], &csrf).await;
        assert_eq!(done.status(), 303, "{queue}");
        let done = act("delete-one", &ids[1], &csrf).await;
        assert_eq!(done.status(), 303, "{queue}");
        let back: Vec<String> = crate::worker_harness::all(q.as_ref())
            .await
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(back, ["one"], "{queue}");
        let left: Vec<String> = crate::worker_harness::all(dlq.as_ref())
            .await
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(
            left,
            ["three"],
            "{queue}: two left, and the third is visible again"
        );
    }
}

/// The page at `url`.
async fn page(c: &reqwest::Client, url: String) -> String {
    c.get(url).send().await.unwrap().text().await.unwrap()
}

/// POST a form to `url`.
fn post_form(
    c: &reqwest::Client,
    url: String,
    pairs: &[(&str, &str)],
) -> impl Future<Output = reqwest::Response> + use<> {
    let sent = c
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(pairs))
        .send();
    async move { sent.await.unwrap() }
}

/// An `application/x-www-form-urlencoded` body.
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn off_loopback_a_token_is_required() {
    let b = Backend::embedded();
    let refused = b
        .cli()
        .args(["dashboard", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("other than loopback need --token-file")
    );

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = "s3cret-token-0123456789";
    std::fs::write(&token_file, token).unwrap();
    // On every address: a request without the token is refused.
    let dash = Dashboard::start_on(
        &b,
        "0.0.0.0:0",
        &["--token-file", token_file.to_str().unwrap()],
    );
    let c = http();
    let anonymous = c.get(format!("{}/", dash.url)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let browser = c
        .get(format!("{}/", dash.url))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 303, "a browser is sent to the login form");
    assert_eq!(browser.headers()["location"], "/login");
    let bearer = c
        .get(format!("{}/", dash.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    assert_eq!(bearer.headers()["x-frame-options"], "DENY", "never framed");
    assert!(
        bearer.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let wrong = post_form(&c, format!("{}/login", dash.url), &[("token", "guess")]).await;
    assert_eq!(wrong.status(), 401);
    let login = post_form(&c, format!("{}/login", dash.url), &[("token", token)]).await;
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(token),
        "the cookie is not the token: {cookie}"
    );
    let session = cookie.split(';').next().unwrap();
    let with_cookie = c
        .get(format!("{}/modules", dash.url))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(with_cookie.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_ui_serves_the_pages_beside_its_metrics() {
    let b = Backend::embedded();
    let (q, dlq) = b.create_with_dlq("dash-ui", 1, &config(30)).await;
    let queue = b.address_of(q.as_ref());
    dlq.send(&dead_letter("kept")).await.unwrap();
    let modes = modes_path();
    let served = format!("acme={queue}");
    let args = |metrics: &str| {
        [
            "--queue",
            &served,
            "--module",
            modes.to_str().unwrap(),
            "--metrics-addr",
            metrics,
            "--ui",
        ]
        .map(str::to_owned)
    };
    let refused = Worker::command(&b, &args("0.0.0.0:0").each_ref().map(String::as_str), &[])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("need --ui-token-file"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let metrics = format!("127.0.0.1:{}", free_port());
    let worker = Worker::spawn(Worker::command(
        &b,
        &args(&metrics).each_ref().map(String::as_str),
        &[],
    ));
    worker.wait_for(
        "serving /metrics, /healthz and /readyz",
        &[("ui", "true")],
        Duration::from_secs(30),
    );
    let c = http();
    let base = format!("http://{metrics}");
    let home = page(&c, format!("{base}/")).await;
    assert!(home.contains(&queue) && home.contains("acme"), "{home}");
    let dead = page(
        &c,
        format!("{base}/dead-letters?queue={}", urlencode(&queue)),
    )
    .await;
    assert!(dead.contains("fatal: kept"), "{dead}");
    let jobs = page(&c, format!("{base}/jobs")).await;
    assert!(
        jobs.contains("this worker") && jobs.contains("received"),
        "{jobs}"
    );
    // Its own endpoints answer as before.
    let scraped = page(&c, format!("{base}/metrics")).await;
    assert!(
        scraped.contains("wasm_jobs_messages_received_total"),
        "{scraped}"
    );
    let running = page(&c, format!("{base}/jobs.json")).await;
    let running: serde_json::Value = serde_json::from_str(&running).unwrap();
    assert_eq!(running["running"], serde_json::json!([]));

    // Calls that end are counted per queue, and the queues page charts
    // them once two samples (5 s apart) are in.
    for _ in 0..3 {
        q.send(&OutgoingMessage::new("o")).await.unwrap();
    }
    q.send(&OutgoingMessage::new("f")).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = page(&c, format!("{base}/jobs.json")).await;
        let jobs: serde_json::Value = serde_json::from_str(&jobs).unwrap();
        let home = page(&c, format!("{base}/")).await;
        if jobs["by_queue"][&queue] == serde_json::json!({"ok": 3, "failed": 1})
            && home.contains("/s ok")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{jobs}\n{home}\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn what_would_move_dead_letters_on_or_come_from_another_name_is_refused() {
    let b = Backend::embedded();
    // A dead-letter queue with a redrive policy of its own.
    let (dlq, _dlq2) = b.create_with_dlq("dash-chain-dlq", 1, &config(30)).await;
    let dlq_name = b.address_of(dlq.as_ref());
    let (q, _) = b
        .create(
            "dash-chain",
            &wasm_jobs::queue::QueueConfig {
                dead_letter: Some((dlq_name.clone(), 3)),
                ..config(30)
            },
        )
        .await;
    let queue = b.address_of(q.as_ref());
    let id = dlq.send(&dead_letter("stays")).await.unwrap();
    dlq.send(&dead_letter("also stays")).await.unwrap();
    let dash = Dashboard::start(&b, &[]);
    let c = http();
    let confirm = page(
        &c,
        format!("{}/confirm?action=purge&queue={queue}", dash.url),
    )
    .await;
    let csrf = csrf_of(&confirm);
    let fields = [
        ("action", "delete-one"),
        ("queue", queue.as_str()),
        ("id", "elsewhere"),
        ("csrf", &csrf),
    ];
    let refused = post_form(&c, format!("{}/act", dash.url), &fields).await;
    assert_eq!(refused.status(), 502);
    let why = refused.text().await.unwrap();
    assert!(why.contains("redrive policy of its own"), "{why}");
    assert_eq!(
        counts(dlq.as_ref()).await,
        (2, 0, 0),
        "nothing received, nothing moved on"
    );
    let listed = page(&c, format!("{}/dead-letters?queue={queue}", dash.url)).await;
    assert!(
        listed.contains(&id),
        "looking at an embedded queue changes nothing: {listed}"
    );

    // DNS rebinding: without a token, another name is not answered.
    let rebound = c
        .get(format!("{}/", dash.url))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 421);
}
