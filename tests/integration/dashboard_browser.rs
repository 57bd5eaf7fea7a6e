//! The dashboard in headless Chromium (driven through chromedriver): a job
//! dead-lettered by a real worker is listed with its reason and redriven
//! from the page, the queue counts change, and a body with `<script>` in it
//! is shown as text; a running job appears on the jobs page while it runs.

use crate::common::{free_port, modes_path};
use crate::dashboard::Dashboard;
use crate::queue_backends::Backend;
use crate::worker_harness::{Worker, config, counts};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use wasm_jobs::queue::OutgoingMessage;

/// How long a page may take to show what a test looks for (a click that
/// submits a form comes back before the next page is there).
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Click what `locator` finds, once the page shows it.
async fn click(browser: &fantoccini::Client, locator: fantoccini::Locator<'_>) {
    browser
        .wait()
        .at_most(PAGE_TIMEOUT)
        .for_element(locator)
        .await
        .unwrap_or_else(|e| panic!("{locator:?}: {e}"))
        .click()
        .await
        .unwrap();
}

/// The text of the first element `css` selects, once the page shows it.
async fn text(browser: &fantoccini::Client, css: &str) -> String {
    browser
        .wait()
        .at_most(PAGE_TIMEOUT)
        .for_element(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Run a worker over `queue` until it is drained (fatal jobs are
/// dead-lettered).
fn drain(b: &Backend, queue: &str) {
    let modes = modes_path();
    let cmd = Worker::command(
        b,
        &[
            "--queue",
            queue,
            "--module",
            modes.to_str().unwrap(),
            "--drain",
            "--wait",
            "0",
        ],
        &[],
    );
    let (status, log) = Worker::spawn(cmd).wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
}

/// chromedriver on a free port, killed when dropped.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    fn start() -> Chromedriver {
        let port = crate::common::free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/install-test-deps installs chromium-driver)");
        crate::common::until_listening(port, "chromedriver");
        Chromedriver { child, port }
    }

    async fn browser(&self) -> fantoccini::Client {
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,800"],
            }
        });
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        fantoccini::ClientBuilder::new(connector)
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_with_its_reason_and_redriven_from_the_page() {
    use fantoccini::Locator;
    let b = Backend::embedded();
    let (q, dlq) = b.create_with_dlq("dash", 1, &config(30)).await;
    let queue = b.address_of(q.as_ref());
    // `e`: the job fails with its body as the reason.
    let script = "e<script>document.title='pwned'</script>";
    q.send(&OutgoingMessage::new(script)).await.unwrap();
    drain(&b, &queue);
    assert_eq!(counts(dlq.as_ref()).await, (1, 0, 0));

    let dash = Dashboard::start(&b, &[]);
    let driver = Chromedriver::start();
    let browser = driver.browser().await;
    browser.goto(&format!("{}/", dash.url)).await.unwrap();
    click(&browser, Locator::LinkText("1")).await;
    let row = text(&browser, "tbody tr").await;
    assert!(row.contains("fatal"), "the reason is listed: {row}");
    assert!(row.contains(script), "the body is shown as text: {row}");
    assert_eq!(
        browser.title().await.unwrap(),
        "wasm-jobs · dead letters",
        "no script from a message ran"
    );

    click(&browser, Locator::LinkText("Redrive all")).await;
    click(&browser, Locator::XPath("//button[text()='Yes, do it']")).await;
    let flash = text(&browser, ".flash").await;
    assert!(flash.contains("moved 1 dead letters back"), "{flash}");
    assert_eq!(counts(dlq.as_ref()).await, (0, 0, 0));
    assert_eq!(counts(q.as_ref()).await, (1, 0, 0), "back in its queue");
    browser.goto(&format!("{}/", dash.url)).await.unwrap();
    let cells = text(&browser, "tbody tr").await;
    assert!(
        cells.contains(&format!("{queue} – 1 0 0")),
        "the page's counts: {cells}"
    );
    browser.close().await.unwrap();
    dash.process.wait_for(
        "dashboard action",
        &[("action", "redrive-all")],
        Duration::from_secs(5),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_appears_while_it_runs() {
    let b = Backend::embedded();
    let (q, _dlq) = b.create_with_dlq("dash-run", 3, &config(30)).await;
    let queue = b.address_of(q.as_ref());
    // `l`: loops until its timeout.
    let id = q.send(&OutgoingMessage::new("l")).await.unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let modes = modes_path();
    let worker = Worker::spawn(Worker::command(
        &b,
        &[
            "--queue",
            &queue,
            "--module",
            modes.to_str().unwrap(),
            "--metrics-addr",
            &metrics,
            "--timeout",
            "120",
        ],
        &[],
    ));
    let pid = worker.child_pid(Duration::from_secs(30));
    let dash = Dashboard::start(&b, &["--worker", &format!("http://{metrics}")]);
    let driver = Chromedriver::start();
    let browser = driver.browser().await;
    browser.goto(&format!("{}/jobs", dash.url)).await.unwrap();
    let row = text(&browser, "tbody tr").await;
    for shown in [id.as_str(), "default", "1", &pid.to_string(), &queue] {
        assert!(row.contains(shown), "{shown} in {row}");
    }
    let totals = text(&browser, "main p").await;
    assert!(totals.contains("1 received"), "{totals}");
    browser.close().await.unwrap();
    drop(worker);
}
