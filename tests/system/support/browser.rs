//! A real browser: Debian's Chromium, headless, as a process. It renders a
//! page with its scripts run, then gives the DOM it ended with, or a
//! screenshot.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use super::BINARY;

/// How much (virtual) time the page's scripts get before the DOM is taken:
/// time for the first reads of `/status` and a refresh or two. Virtual
/// time stands still while a request is in flight, so a slow answer is
/// waited for.
const BUDGET_MS: u64 = 3000;
/// How long one run of the browser may take in all.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// The browser: `FLOTILLA_CHROMIUM`, or `chromium` on the PATH (Debian's
/// package, which scripts/install-test-tools installs). A missing browser
/// fails the test; it is never skipped.
fn chromium() -> PathBuf {
    let path = std::env::var_os("FLOTILLA_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("chromium"))
                    .find(|p| p.exists())
            })
        });
    match path {
        Some(p) if p.exists() => p,
        _ => panic!(
            "Chromium is missing (FLOTILLA_CHROMIUM, or `chromium` on the PATH): run scripts/install-test-tools (scripts/test does), which installs Debian's package"
        ),
    }
}

/// Runs the browser headless on `url` with `args` after the common ones;
/// returns its standard output. A run that fails or does not end in time
/// fails the test with what the browser said.
async fn run(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--virtual-time-budget={BUDGET_MS}"),
        ])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("Chromium starts");
    let out = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("Chromium did not render {url} within {RUN_LIMIT:?}"))
        .unwrap();
    assert!(
        out.status.success(),
        "Chromium on {url} exited with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the DOM is UTF-8")
}

/// The DOM of the page at `url` once its scripts have run, serialized.
pub async fn rendered_dom(url: &str) -> String {
    run(url, &["--dump-dom"]).await
}

/// A screenshot of the page at `url`, 1280 × 2000 px, written to `path`.
pub async fn screenshot(url: &str, path: &Path) {
    let _ = std::fs::remove_file(path);
    run(
        url,
        &[
            "--window-size=1280,2000",
            &format!("--screenshot={}", path.display()),
        ],
    )
    .await;
    let png =
        std::fs::read(path).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "{} is not a PNG image ({} bytes)",
        path.display(),
        png.len()
    );
}

/// Where a test leaves what a reviewer looks at (a screenshot):
/// `FLOTILLA_TEST_OUTPUT`, or `test-output/` in the target directory the
/// tests were built in; `name` is a folder of it, made if missing.
pub fn test_output(name: &str) -> PathBuf {
    let root = std::env::var_os("FLOTILLA_TEST_OUTPUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // BINARY is <target>/<profile>/flotilla.
            Path::new(BINARY)
                .ancestors()
                .nth(2)
                .expect("the binary is in a target directory")
                .join("test-output")
        });
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The table rows of `dom` whose `attribute` is `value` (the status page
/// marks its rows with `data-member`, `data-instance`, `data-client`), as
/// markup.
pub fn rows<'a>(dom: &'a str, attribute: &str, value: &str) -> Vec<&'a str> {
    let mark = format!("{attribute}=\"{value}\"");
    dom.match_indices(&mark)
        .map(|(start, _)| {
            let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
            &dom[start..end]
        })
        .collect()
}
