//! Outbound HTTP (`wasi:http`) as job authors use it: the JavaScript
//! example, built with componentize-js's defaults, calls `fetch()`, and the
//! Python, Rust and C examples make a wasi:http GET, against a local server the
//! test runs. Through `wasm-jobs exec --policy`: a granted
//! URL works, others are denied inside the guest, each limit is hit and
//! reported by kind, and a name resolving to 127.0.0.1 is refused unless the
//! literal is granted. Through a worker (its child locked down by Landlock
//! and seccomp): the request goes out with the job's `traceparent`.

use crate::common::{bin, data_home, example_guest};
use crate::queue_backends::Backend;
use crate::worker_harness::{Worker, config};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A small HTTP/1.1 server on 127.0.0.1: `/hello` answers a line, `/big`
/// 200 KiB, `/slow` after 3 s. It records each request's head.
struct Server {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    seen.lock().unwrap().push(head);
                    let body = match path.as_str() {
                        "/hello" => "hello from the test server".to_owned(),
                        "/big" => "x".repeat(200 * 1024),
                        "/slow" => {
                            std::thread::sleep(Duration::from_secs(3));
                            "late".to_owned()
                        }
                        _ => "not here".to_owned(),
                    };
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Server { port, heads }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn policy_file(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// The examples that make requests.
const LANGS: [&str; 4] = ["js", "python", "rust", "c"];

/// `exec` an example's `fetch` op for `url` under `policy`: (exit code,
/// the JSON report).
fn fetch(lang: &str, policy: &Path, url: &str) -> (i32, serde_json::Value) {
    exec_op(lang, policy, serde_json::json!({"op": "fetch", "url": url}))
}

/// `exec` an example with the message body `op` under `policy`.
fn exec_op(lang: &str, policy: &Path, op: serde_json::Value) -> (i32, serde_json::Value) {
    let out = Command::new(bin())
        .arg("exec")
        .arg(example_guest(lang))
        .args(["--json", "--policy"])
        .arg(policy)
        .args(["--body", &op.to_string()])
        .env("WASM_JOBS_HOME", data_home())
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); {}; stdout: {}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

fn grant(dir: &Path, grant: &str, extra: &str) -> PathBuf {
    policy_file(dir, &format!("[default]\nhttp = [\"{grant}\"]\n{extra}\n"))
}

#[test]
fn the_javascript_example_is_built_with_componentize_js_defaults_and_imports_wasi_http() {
    let home = tempfile::tempdir().unwrap();
    let wasm = example_guest("js");
    crate::common::push_module(home.path(), "js", None, &wasm);
    let out = Command::new(bin())
        .args(["module", "inspect", "js", "--json"])
        .env("WASM_JOBS_HOME", home.path())
        .output()
        .unwrap();
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let imports = inspect["imports"].to_string();
    assert!(imports.contains("wasi:http/outgoing-handler"), "{imports}");
}

#[test]
fn requests_reach_a_granted_url_and_nothing_else() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let p = grant(dir.path(), &server.url("/"), "");
    let none_dir = tempfile::tempdir().unwrap();
    let none = policy_file(none_dir.path(), "[default]\n");
    for (n, lang) in LANGS.into_iter().enumerate() {
        let (code, r) = fetch(lang, &p, &server.url("/hello"));
        assert_eq!(code, 0, "{lang}: {r}");
        let output: serde_json::Value =
            serde_json::from_str(r["output"].as_str().unwrap()).unwrap();
        assert_eq!(output["status"], 200, "{lang}");
        assert_eq!(output["body"], "hello from the test server", "{lang}");
        assert_eq!(r["http"]["requests"], 1, "{lang}");
        // Another port is another origin: denied inside the guest, never sent.
        let other = format!("http://127.0.0.1:{}/hello", server.port + 1);
        let (code, r) = fetch(lang, &p, &other);
        assert_eq!(code, 11, "{lang}: {r}");
        let reason = r["reason"].as_str().unwrap();
        assert!(reason.starts_with("fetch http://127.0.0.1"), "{r}");
        let counted = (r["http"]["requests"].as_u64(), r["http"]["denied"].as_u64());
        assert_eq!(counted, (Some(0), Some(1)), "{lang}");
        assert_eq!(server.heads().len(), n + 1, "only granted requests arrived");
        // No grant at all (the default policy): denied too.
        let (code, r) = fetch(lang, &none, &server.url("/hello"));
        assert_eq!(code, 11, "{lang}: {r}");
        assert_eq!(r["http"]["denied"], 1, "{lang}: {r}");
    }
}

#[test]
fn each_http_limit_is_hit_and_reported_by_kind() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    for (extra, path, kind) in [
        (
            "http_max_response_body = \"64KiB\"",
            "/big",
            "response_body",
        ),
        ("http_max_requests = 0", "/hello", "requests"),
        ("http_timeout_secs = 0.5", "/slow", "timeout"),
    ] {
        let p = grant(dir.path(), &server.url("/"), extra);
        for lang in LANGS {
            let (code, r) = fetch(lang, &p, &server.url(path));
            assert_eq!(code, 11, "{lang} {kind}: {r}");
            assert_eq!(
                r["http"]["limits_hit"],
                serde_json::json!([kind]),
                "{lang}: {r}"
            );
        }
    }
}

/// A request body over `http_max_request_body` is cut off before it is
/// all sent (the JavaScript example POSTs N bytes); one within it arrives.
#[test]
fn a_request_body_over_its_limit_is_cut_off() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let p = grant(
        dir.path(),
        &server.url("/"),
        "http_max_request_body = \"1KiB\"",
    );
    let post = |n: u64| serde_json::json!({"op": "fetch", "url": server.url("/hello"), "post": n});
    let (code, r) = exec_op("js", &p, post(512));
    assert_eq!(code, 0, "{r}");
    assert!(
        server.heads()[0].starts_with("POST /hello"),
        "{:?}",
        server.heads()
    );
    let (code, r) = exec_op("js", &p, post(4096));
    assert_eq!(code, 11, "{r}");
    assert_eq!(
        r["http"]["limits_hit"],
        serde_json::json!(["request_body"]),
        "{r}"
    );
}

#[test]
fn a_name_that_resolves_to_loopback_is_refused_unless_the_literal_is_granted() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let by_name = format!("http://localhost:{}/", server.port);
    let p = grant(dir.path(), &by_name, "");
    for lang in LANGS {
        let (code, r) = fetch(lang, &p, &format!("{by_name}hello"));
        assert_eq!(code, 11, "{lang}: {r}");
        let hit = &r["http"]["limits_hit"];
        assert_eq!(*hit, serde_json::json!(["internal_address"]), "{lang}");
    }
    assert!(server.heads().is_empty());
}

/// `https` verifies the server's certificate against the webpki roots: a
/// self-signed one (an `openssl s_server` the test starts) is refused, and
/// nothing is fetched.
#[test]
fn https_refuses_a_certificate_no_root_vouches_for() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let port = crate::common::free_port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            &port.to_string(),
            "-key",
        ])
        .arg(&key)
        .arg("-cert")
        .arg(&cert)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "s_server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("https://127.0.0.1:{port}/");
    let p = policy_file(dir.path(), &format!("[default]\nhttp = [\"{url}\"]\n"));
    let (code, r) = fetch("js", &p, &url);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(code, 11, "{r}");
    assert_eq!(r["http"]["requests"], 1, "it was granted and tried: {r}");
    assert!(r.get("output").is_none(), "{r}");
}

/// Through a worker: its child is confined (Landlock allows only the
/// granted port), and the request carries the job's span as `traceparent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_child_fetches_with_the_jobs_traceparent() {
    let server = Server::start();
    let b = Backend::embedded();
    let dir = tempfile::tempdir().unwrap();
    let p = grant(dir.path(), &server.url("/"), "");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for (n, lang) in LANGS.into_iter().enumerate() {
        let (q, _dlq) = b
            .create_with_dlq(&format!("http-{lang}"), 3, &config(60))
            .await;
        let addr = b.address_of(q.as_ref());
        let module = example_guest(lang);
        let args = ["--queue", &addr, "--module", module.to_str().unwrap()];
        let policy = ["--wait", "1", "--policy", p.to_str().unwrap()];
        let w = Worker::with_args(&b, &[&args[..], &policy[..]].concat());
        let body = serde_json::json!({"op": "fetch", "url": server.url("/hello")});
        let out = b
            .cli()
            .args(["send", "--queue", &addr, "--wait", "--timeout", "120"])
            .arg("--attr")
            .arg(format!("traceparent=00-{trace}-00f067aa0ba902b7-01"))
            .arg(body.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{lang}: {stdout}\n{}", w.log());
        let outcome: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let output = outcome["output"].as_str().unwrap();
        assert!(output.contains("hello from the test server"), "{outcome}");
        let heads = server.heads();
        assert_eq!(heads.len(), n + 1, "{heads:?}");
        let tp = heads[n]
            .lines()
            .find_map(|l| l.strip_prefix("traceparent: "))
            .unwrap_or_else(|| panic!("no traceparent in {}", heads[n]))
            .trim();
        assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
        assert!(
            !tp.contains("00f067aa0ba902b7"),
            "the job's span is the parent: {tp}"
        );
        assert_eq!(outcome["http"]["requests"], 1, "{outcome}");
        // A denied request is in the outcome too, typed.
        let port = server.port + 1;
        let denied = serde_json::json!({"op": "fetch", "url": format!("http://127.0.0.1:{port}/")});
        let out = b
            .cli()
            .args(["send", "--queue", &addr, "--wait", "--timeout", "120"])
            .arg(denied.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(11), "{lang}: {stdout}\n{}", w.log());
        let outcome: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(outcome["outcome"], "fatal", "{outcome}");
        assert_eq!(outcome["http"]["denied"], 1, "{outcome}");
        w.signal(libc::SIGTERM);
        let _ = w.wait(Duration::from_secs(30));
    }
}
