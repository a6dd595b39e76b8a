//! SLOs as code: deploy/prometheus/rules.yaml passes its promtool unit tests, and every metric
//! the Grafana dashboard (deploy/grafana/upres.json) and the rules name is one upres exports
//! (`Metrics::series_names` and the families a real server's registry holds, checked against
//! its scrape) or a recording rule.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use upres::telemetry::Metrics;

use crate::support::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `promtool`, or why not (the test then prints SKIPPED with it).
fn promtool() -> Result<PathBuf, String> {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(PathBuf::from("promtool")),
        Ok(o) => Err(format!("`promtool --version` failed: {}", String::from_utf8_lossy(&o.stderr))),
        Err(e) => Err(format!("promtool not found ({e}); scripts/install-test-tools.sh installs Debian's `prometheus`")),
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?}:\n{text}");
    text
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let promtool = match promtool() {
        Ok(p) => p,
        Err(why) => return eprintln!("SKIPPED alert_rules_pass_their_promtool_unit_tests: {why}"),
    };
    let dir = repo().join("deploy/prometheus");
    run(Command::new(&promtool).args(["check", "rules"]).arg(dir.join("rules.yaml")));
    let out = run(Command::new(&promtool).args(["test", "rules"]).arg(dir.join("rules.test.yaml")));
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert has at least one test that expects it to fire.
    let tests = std::fs::read_to_string(dir.join("rules.test.yaml")).unwrap();
    for alert in rules_yaml()["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        if let Some(name) = alert["alert"].as_str() {
            let fires = tests.split("alertname: ").skip(1).any(|t| t.starts_with(name) && t.contains("exp_labels"));
            assert!(fires, "no promtool test expects {name} to fire");
        }
    }
}

/// rules.yaml as JSON (PyYAML, the reader tests/it/deploy.rs uses).
fn rules_yaml() -> Value {
    let out = Command::new(python())
        .args(["-c", "import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
        .arg(repo().join("deploy/prometheus/rules.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The metric names a PromQL expression reads: identifiers outside label matchers, ranges,
/// strings and grouping clauses, that are not a function, an aggregation or a keyword.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let strip = |s: &str, re: &str| regex::Regex::new(re).unwrap().replace_all(s, " ").into_owned();
    let mut e = strip(expr, r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"#);
    e = strip(&e, r"\{[^}]*\}");
    e = strip(&e, r"\[[^\]]*\]");
    e = strip(&e, r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)");
    const KEYWORDS: &[&str] =
        &["and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "inf", "nan"];
    let ident = regex::Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*").unwrap();
    let mut names = BTreeSet::new();
    for m in ident.find_iter(&e) {
        let before = e[..m.start()].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_digit() || c == '.') {
            continue; // the exponent or unit of a number
        }
        let called = e[m.end()..].trim_start().starts_with('(');
        if !called && !KEYWORDS.contains(&m.as_str().to_ascii_lowercase().as_str()) {
            names.insert(m.as_str().to_string());
        }
    }
    names
}

#[test]
fn metric_names_come_out_of_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(upres_request_seconds_bucket{job=~"$job",cache=~"a|b"}[5m]))) / on(job) group_left upres:x:y > 1e3 and bool up"#,
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["up", "upres:x:y", "upres_request_seconds_bucket"]);
}

/// Every PromQL expression of the dashboard (panel targets, also inside rows, and the `job`
/// variable's `label_values(<metric>, …)` query).
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = panels.pop() {
        panels.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("every target has an expr").to_string());
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            let metric = q.strip_prefix("label_values(").and_then(|r| r.split(',').next()).expect("label_values(<metric>, <label>)");
            exprs.push(metric.trim().to_string());
        }
    }
    exprs
}

#[tokio::test]
async fn the_dashboard_and_rules_name_only_exported_metrics() {
    // What a real server exports after a miss, a hit and an error: every scraped series is in
    // `series_names`, the list the expressions are checked against.
    let s = Setup::new().start().await;
    s.put_source("a.png", &png(8, 8));
    for path in ["/x2/format=png/a.png", "/x2/format=png/a.png", "/x2/missing.png", "/healthz"] {
        client().get(s.url(path)).send().await.unwrap();
    }
    let scrape = client().get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    // `series_names` lists what `Metrics::new` registers, empty label sets included; families
    // other modules register into the same registry count as exported once the server has them.
    let mut exported: BTreeSet<String> = Metrics::new().series_names().iter().cloned().collect();
    for family in s.app.metrics.registry.gather() {
        let name = family.name().to_string();
        match family.get_field_type() {
            prometheus::proto::MetricType::HISTOGRAM | prometheus::proto::MetricType::SUMMARY => {
                exported.extend(["_bucket", "_sum", "_count", ""].map(|suffix| format!("{name}{suffix}")));
            }
            _ => {
                exported.insert(name);
            }
        }
    }
    s.stop().await;
    let mut scraped = BTreeSet::new();
    for line in scrape.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(exported.contains(name), "{name} is scraped but not in Metrics::series_names");
        scraped.insert(name.to_string());
    }
    // Labels come sorted by name.
    for (what, want) in [
        ("a miss", r#"upres_request_seconds_bucket\{cache="miss",model="lanczos-x2@[^"]+",route="transform""#),
        ("a memory hit", r#"upres_request_seconds_bucket\{cache="hit-memory",model="lanczos-x2@[^"]+",route="transform""#),
        ("an error", r#"upres_request_seconds_bucket\{cache="none",model="none",route="transform""#),
        ("the scrape itself", r#"upres_request_seconds_count\{cache="none",model="none",route="healthz"\} 1"#),
        ("the build", r#"upres_build_info\{cuda="(true|false)",version="[0-9.]+"\} 1"#),
        ("the queue's capacity", "upres_engine_queue_capacity 100"),
        ("the process", r"process_resident_memory_bytes [1-9]"),
    ] {
        assert!(regex::Regex::new(want).unwrap().is_match(&scrape), "{what}: no `{want}` in\n{scrape}");
    }
    assert!(scraped.len() > 10, "{scraped:?}");

    let rules = rules_yaml();
    let all_rules: Vec<&Value> = rules["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    let recorded: BTreeSet<String> = all_rules.iter().filter_map(|r| r["record"].as_str().map(String::from)).collect();
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/grafana/upres.json")).unwrap()).unwrap();
    let mut exprs: Vec<(String, String)> = dashboard_exprs(&dashboard).into_iter().map(|e| ("upres.json".to_string(), e)).collect();
    assert!(exprs.len() >= 20, "{exprs:?}");
    exprs.extend(all_rules.iter().map(|r| ("rules.yaml".to_string(), r["expr"].as_str().unwrap().to_string())));
    let mut used = BTreeSet::new();
    for (file, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{file}: `{expr}` names no metric");
        for name in names {
            let known = if name.contains(':') { recorded.contains(&name) } else { exported.contains(&name) };
            assert!(known, "{file}: `{expr}` reads `{name}`, which upres does not export and no rule records");
            used.insert(name);
        }
    }
    // The dashboard shows every recording rule.
    for r in &recorded {
        assert!(dashboard_exprs(&dashboard).iter().any(|e| metric_names(e).contains(r)), "the dashboard never shows {r}");
    }

    // With promtool at hand, every dashboard expression also parses as PromQL.
    match promtool() {
        Err(why) => eprintln!("SKIPPED (the PromQL parse of the dashboard only): {why}"),
        Ok(promtool) => {
            let dir = tempfile::tempdir().unwrap();
            let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
            for (i, e) in dashboard_exprs(&dashboard).iter().enumerate() {
                let e = e.replace("$job", ".*");
                file.push_str(&format!("      - record: dashboard:expr{i}\n        expr: {}\n", serde_json::to_string(&e).unwrap()));
            }
            let path = dir.path().join("dashboard.yaml");
            std::fs::write(&path, file).unwrap();
            run(Command::new(&promtool).args(["check", "rules"]).arg(&path));
        }
    }
}
