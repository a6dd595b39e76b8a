//! The playground in a real browser: Debian's headless Chromium driven by playwright-core
//! (`tests/browser/playground.mjs`; `scripts/test.sh` installs both). Without them the test
//! fails, unless `TEST_SKIP_BROWSER` is set, when it says it skipped.

use std::path::Path;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_playground_works_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let driver = root.join("tests/browser/node_modules/playwright-core");
    if !Path::new(&chromium).exists() || !driver.exists() {
        let why = format!("needs {chromium} and {} (run scripts/test.sh, or `npm ci` in tests/browser)", driver.display());
        assert!(std::env::var_os("TEST_SKIP_BROWSER").is_some(), "browser test: {why}; TEST_SKIP_BROWSER=1 skips it");
        eprintln!("SKIPPED the_playground_works_in_headless_chromium: {why}");
        return;
    }
    let slow = SlowEngine::gated();
    let mut models = lanczos();
    models.push(entry("slow", slow.clone()));
    let s = Setup::new().models(models).config(|c| c.ml.warm_up = false).start().await;
    s.put_source("shop/cat.png", &png(64, 48));
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("browser");
    let _ = std::fs::remove_file(artifacts.join("playground.png"));
    let (base, out) = (s.url(""), artifacts.clone());
    let script = root.join("tests/browser/playground.mjs");
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .args(["180", "node"])
            .arg(&script)
            .args([base.as_str(), out.to_str().unwrap(), "256x192", "slow"])
            .env("CHROMIUM", &chromium)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let log = format!("{}\n{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "the browser checks failed:\n{log}");
    eprintln!("{log}");
    assert!(artifacts.join("playground.png").exists(), "a screenshot is saved");
    // The page's Cancel stopped the slow model: nobody else waited for that result.
    slow.cancelled().await; // cancel in the page stopped the engine
    s.stop().await;
}
