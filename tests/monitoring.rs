//! End to end: what the package ships for monitoring, packaging/prometheus/reelspool-alerts.yml
//! and packaging/grafana/reelspool-dashboard.json. The rules load in Prometheus's own checker
//! and fire as designed (`promtool test rules`, tests/monitoring/alerts_test.yml); every query
//! of the dashboard parses as PromQL; and every metric either names is one a real daemon serves
//! at /metrics.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{wait_for, Farm};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

fn rules_file() -> PathBuf {
    repo().join("packaging/prometheus/reelspool-alerts.yml")
}

fn dashboard_file() -> PathBuf {
    repo().join("packaging/grafana/reelspool-dashboard.json")
}

/// Runs promtool; it must be installed (Debian's `prometheus` package, scripts/install-deps.sh).
fn promtool(args: &[&str], file: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .arg(file)
        .output()
        .expect("promtool (apt install prometheus; scripts/install-deps.sh does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?} {}:\n{text}",
        file.display()
    );
    text
}

/// The rules' expressions, by alert name.
fn rule_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(rules_file()).expect("the rules file");
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let mut found = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            found.push((
                rule["alert"].as_str().expect("an alert name").to_string(),
                rule["expr"].as_str().expect("an expression").to_string(),
            ));
        }
    }
    found
}

/// Every PromQL expression in the dashboard: panel targets and template queries.
fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
    fn walk(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, item) in map {
                    match (key.as_str(), item) {
                        ("expr" | "definition", Value::String(text)) => found.push(text.clone()),
                        ("query", Value::String(text)) if text.contains('(') => {
                            found.push(text.clone())
                        }
                        _ => walk(item, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(dashboard, &mut found);
    found
}

/// The `reelspool_…` names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut at = 0;
    while let Some(found) = expr[at..].find("reelspool_") {
        let start = at + found;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(expr[start..end].to_string());
        }
        at = end;
    }
    names
}

/// The names a scrape holds: every sample's, plus what each family's type implies
/// (`_total` of a counter, `_bucket`/`_sum`/`_count` of a histogram), so a family with no
/// sample yet (no label set seen) still counts.
fn served_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            match kind {
                "counter" if !name.ends_with("_total") => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {}
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[test]
fn the_alert_rules_load_and_fire_as_designed() {
    let checked = promtool(&["check", "rules"], &rules_file());
    assert!(checked.contains("SUCCESS: 4 rules found"), "{checked}");
    let alerts: Vec<String> = rule_expressions()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        alerts,
        [
            "ReelspoolCardDrained",
            "ReelspoolJobFailed",
            "ReelspoolNoticeOutboxBackingUp",
            "ReelspoolQueueStale"
        ]
    );
    let tested = promtool(
        &["test", "rules"],
        &repo().join("tests/monitoring/alerts_test.yml"),
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_dashboard_query_is_promql() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(dashboard_file()).expect("the dashboard file"),
    )
    .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "reelspool-farm");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.iter().filter(|p| p["type"] != "row").count() >= 20);
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {} picks its data source from the variable",
            panel["title"]
        );
        assert!(
            panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has no query",
            panel["title"]
        );
    }
    // Prometheus's own parser reads each query, as a recording rule, with the template
    // variables Grafana would fill in.
    let scratch = tempfile::tempdir().expect("temp dir");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, expr) in dashboard_expressions(&dashboard).iter().enumerate() {
        if expr.starts_with("label_values(") {
            continue;
        }
        let expr = expr.replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard_query_{n}\n        expr: {}\n",
            serde_json::to_string(&expr).expect("quoted")
        ));
    }
    let file = scratch.path().join("dashboard-queries.yml");
    std::fs::write(&file, rules).expect("write");
    promtool(&["check", "rules"], &file);
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_is_served() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    // Simulated cards report what NVML cards do (utilisation included); CPU slots would not.
    let farm = Farm::new(&format!(
        "gpu_pool: {{ kind: simulated, gpus: [{{name: \"RTX 4090\", memory_gb: 24}}] }}\n\
         http: {{ listen: \"127.0.0.1:{port}\" }}\n"
    ));
    let _daemon = farm.start_daemon();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let exposition = wait_for("the metrics", Duration::from_secs(30), || {
        ureq::get(&url)
            .timeout(Duration::from_secs(5))
            .call()
            .ok()?
            .into_string()
            .ok()
    });
    let served = served_names(&exposition);
    assert!(served.contains("reelspool_build_info"), "{exposition}");

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(dashboard_file()).expect("the dashboard file"),
    )
    .expect("JSON");
    let mut named: Vec<(String, String)> = Vec::new();
    for (alert, expr) in rule_expressions() {
        let names = metric_names(&expr);
        assert!(
            !names.is_empty(),
            "{alert} names no reelspool metric: {expr}"
        );
        named.extend(
            names
                .into_iter()
                .map(|name| (format!("rule {alert}"), name)),
        );
    }
    let queries = dashboard_expressions(&dashboard);
    assert!(queries.len() >= 20, "{queries:?}");
    for expr in &queries {
        named.extend(
            metric_names(expr)
                .into_iter()
                .map(|name| (format!("dashboard query `{expr}`"), name)),
        );
    }
    let missing: Vec<&(String, String)> = named
        .iter()
        .filter(|(_, name)| !served.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "named but not served at /metrics: {missing:?}\n{exposition}"
    );
    // The alerts' own gauges, by name.
    for name in [
        "reelspool_gpu_drained",
        "reelspool_queue_oldest_timestamp_seconds",
        "reelspool_notice_outbox_oldest_timestamp_seconds",
        "reelspool_jobs_finished_total",
    ] {
        assert!(served.contains(name), "{name} not served:\n{exposition}");
    }
}

#[test]
fn names_are_found_whole() {
    assert_eq!(
        metric_names(
            "sum(rate(reelspool_a_total[5m])) / xreelspool_b + reelspool_c{x=\"reelspool_d\"}"
        ),
        ["reelspool_a_total", "reelspool_c", "reelspool_d"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let served = served_names(
        "# HELP reelspool_x x\n# TYPE reelspool_x counter\n# TYPE reelspool_h histogram\nreelspool_g{a=\"1\"} 2\n",
    );
    for name in [
        "reelspool_x_total",
        "reelspool_h_bucket",
        "reelspool_h_count",
        "reelspool_g",
    ] {
        assert!(served.contains(name), "{name}");
    }
}
