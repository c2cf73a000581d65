//! The Grafana dashboard and the metric table of docs/operations.md against a live scrape.
//!
//! The `nats-edge` binary runs in front of a real nats-server with the admin server, ACL
//! rules that deny something, a rewrite set and tagging. Traffic makes every metric family
//! appear (sessions each way, a denial, rewrites both ways, a tag, a stripped spoofed
//! header, closes, a SIGHUP reload); then `/metrics` is scraped and:
//!
//! - every series a dashboard query names (`..._total`, `..._bucket`, exactly as written) is
//!   a sample of the scrape, with every label the query filters or groups by;
//! - every family the scrape exports is on some panel;
//! - the metric table of docs/operations.md lists exactly the exported families, with their
//!   type, their labels and every value of a closed label set;
//! - the example scrape in docs/operations.md has the series of a fresh edge.
//!
//! A scrape taken before any client connected shows which series are there from start-up,
//! at zero.

mod common;
mod metrics_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use common::*;
use metrics_support::*;
use nats_edge_filters::CloseReason;

/// Labels Prometheus adds to every series it scrapes; the edge does not export them.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Labels whose values are a closed set the docs spell out.
const CLOSED_LABELS: [&str; 3] = ["reason", "direction", "result"];

/// Labels whose values depend on the configuration or the build, not on the edge's code.
const DEPLOYMENT_LABELS: [&str; 4] = ["listener", "upstream", "version", "user"];

fn rule_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("filters/rules")
        .join(rel);
    format!("{:?}", path.display().to_string())
}

/// Passthrough ACL rules (user `orders` may not publish to `orders.audit.>`), `orders`
/// mounted under `tenant.acme.`, every message tagged.
fn config(upstream: &str) -> String {
    format!(
        "[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\n\
         [upstream]\nurls = [{upstream:?}]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [auth]\nrules = [{acl}]\n\
         [rewrite]\nsets = {{ acme = {mount} }}\nusers = {{ orders = \"acme\" }}\n\
         [tagging]\nfile = {tags}\n",
        acl = rule_file("acl/passthrough.toml"),
        mount = rule_file("rewrite/tenant-mount.toml"),
        tags = rule_file("tagging/default.toml"),
    )
}

fn write_config(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
}

async fn scrape(admin: SocketAddr) -> Exposition {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    Exposition::parse(&body)
}

/// Polls `/metrics` until `ready` accepts it.
async fn scrape_until(admin: SocketAddr, ready: impl Fn(&Exposition) -> bool) -> Exposition {
    poll_http(admin, "/metrics", |_, body| {
        let e = Exposition::parse(body);
        ready(&e).then_some(e)
    })
    .await
}

const CONNECT: &[u8] =
    b"CONNECT {\"user\":\"orders\",\"pass\":\"pw\",\"verbose\":false,\"headers\":true,\"protocol\":1}\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_docs_match_a_live_scrape() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nats-edge.toml");
    write_config(&file, &config(&server.url()));
    let edge = EdgeProcess::spawn(&["-c", file.to_str().unwrap()], &[]);
    let admin = edge.admin_addr();

    // Before any client: what is there from start-up, once the first upstream check has
    // made the edge ready.
    poll_http(admin, "/readyz", |status, _| (status == 200).then_some(())).await;
    let fresh = scrape(admin).await;
    check_start_up(&fresh, &server.url());
    check_docs_example(&fresh);

    // A subscriber through the edge, in the client's view of the mount.
    let mut sub = RawConn::connect(edge.addr()).await;
    sub.read_info().await;
    let mut subscribe = CONNECT.to_vec();
    subscribe.extend_from_slice(b"SUB orders.> 1\r\n");
    let reply = sub.roundtrip(&subscribe).await;
    assert!(!reply.closed && !reply.text().contains("-ERR"), "{reply:?}");

    // A publisher: one plain message (tagged, mounted), one with a forged tag header
    // (stripped), one the ACL refuses.
    let mut publisher = RawConn::connect(edge.addr()).await;
    publisher.read_info().await;
    let forged = b"NATS/1.0\r\nNats-Edge-User: mallory\r\n\r\n";
    let mut traffic = CONNECT.to_vec();
    traffic.extend_from_slice(b"PUB orders.new 5\r\nhello\r\n");
    traffic.extend_from_slice(
        format!(
            "HPUB orders.forged {} {}\r\n",
            forged.len(),
            forged.len() + 6
        )
        .as_bytes(),
    );
    traffic.extend_from_slice(forged);
    traffic.extend_from_slice(b"forged\r\nPUB orders.audit.x 1\r\nx\r\n");
    let reply = publisher.roundtrip(&traffic).await;
    assert!(
        reply
            .text()
            .contains("-ERR 'Permissions Violation for Publish to \"orders.audit.x\"'"),
        "{}",
        reply.text()
    );
    // Both messages come back to the subscriber in its own view, tagged.
    let got = sub.read_until(b"forged\r\n").await.text();
    assert!(got.contains("HMSG orders.new 1 "), "{got}");
    assert!(got.contains("HMSG orders.forged 1 "), "{got}");
    assert!(!got.contains("mallory"), "{got}");

    // Both leave; their totals land when the sessions end.
    drop(sub);
    drop(publisher);
    scrape_until(admin, |e| {
        e.value(
            "nats_edge_connections_closed_total",
            &[("reason", "client_closed")],
        ) == Some(2.0)
    })
    .await;

    // A reload that applies.
    write_config(&file, &config(&server.url()));
    let from = edge.log().len();
    send_signal(edge.pid(), "HUP");
    edge.wait_log(from, "configuration reloaded");

    let live = scrape_until(admin, |e| {
        e.value("nats_edge_config_reloads_total", &[("result", "ok")]) == Some(1.0)
    })
    .await;
    check_counts(&live, &server.url());
    check_histograms(&live);
    check_dashboard(&live);
    check_docs_table(&live);
}

/// What the traffic above must have counted.
fn check_counts(e: &Exposition, upstream: &str) {
    let v = |name: &str, labels: &[(&str, &str)]| {
        e.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    };
    let c2u = [("direction", "client_to_upstream")];
    let u2c = [("direction", "upstream_to_client")];
    assert_eq!(v("nats_edge_messages_total", &c2u), 3.0);
    assert_eq!(v("nats_edge_messages_total", &u2c), 2.0);
    assert!(v("nats_edge_bytes_total", &c2u) > 0.0);
    assert!(v("nats_edge_bytes_total", &u2c) > 0.0);
    assert_eq!(
        v(
            "nats_edge_acl_denials_total",
            &[("user", "orders"), ("direction", "publish")]
        ),
        1.0
    );
    // The SUB and two PUBs on the way in (the denied one never reaches the rewrite), the
    // two deliveries on the way out.
    assert_eq!(v("nats_edge_rewrites_total", &c2u), 3.0);
    assert_eq!(v("nats_edge_rewrites_total", &u2c), 2.0);
    assert_eq!(v("nats_edge_tags_applied_total", &[]), 2.0);
    assert_eq!(v("nats_edge_tag_spoofs_total", &[]), 1.0);
    assert_eq!(
        v("nats_edge_connections_total", &[("listener", "default")]),
        2.0
    );
    assert_eq!(
        v("nats_edge_connections_open", &[("listener", "default")]),
        0.0
    );
    assert_eq!(
        v("nats_edge_upstream_dials_total", &[("upstream", upstream)]),
        2.0
    );
    assert_eq!(
        v(
            "nats_edge_upstream_dial_failures_total",
            &[("upstream", upstream)]
        ),
        0.0
    );
    assert_eq!(
        v(
            "nats_edge_handshake_duration_seconds_count",
            &[("transport", "tcp")]
        ),
        2.0
    );
    assert!(v("nats_edge_filter_duration_seconds_count", &[]) > 0.0);
    assert_eq!(
        v("nats_edge_config_reloads_total", &[("result", "failed")]),
        0.0
    );
    assert_eq!(v("nats_edge_draining", &[]), 0.0);
}

/// Every histogram's buckets are cumulative, as `histogram_quantile` needs: they never fall
/// as `le` grows, and `+Inf` equals `_count`.
fn check_histograms(e: &Exposition) {
    for (family, f) in e.families.iter().filter(|(_, f)| f.kind == "histogram") {
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(String, f64)>> = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for s in &f.samples {
            let mut labels = s.labels.clone();
            if s.name == format!("{family}_bucket") {
                let le = labels.remove("le").expect("a bucket without le");
                series.entry(labels).or_default().push((le, s.value));
            } else if s.name == format!("{family}_count") {
                counts.insert(labels, s.value);
            }
        }
        assert!(!series.is_empty(), "{family}: no buckets");
        for (labels, buckets) in series {
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family} {labels:?}: buckets fall: {buckets:?}"
            );
            let (le, inf) = buckets.last().expect("at least one bucket");
            assert_eq!(le, "+Inf", "{family} {labels:?}: last bucket");
            assert_eq!(
                Some(inf),
                counts.get(&labels),
                "{family} {labels:?}: +Inf against _count"
            );
        }
    }
}

/// Every series a dashboard query names is in the scrape with the labels the query uses,
/// and every exported family is on some panel.
fn check_dashboard(e: &Exposition) {
    let dashboard = dashboard();
    let exported = e.series_names();
    let mut problems = Vec::new();
    for query in dashboard_queries(&dashboard) {
        let mut labels_of_query = BTreeSet::new();
        for (series, matchers) in selectors_in(&query) {
            if !exported.contains(&series) {
                problems.push(format!("`{series}` is not in the scrape (query `{query}`)"));
                continue;
            }
            let labels = e.label_names(&series);
            for label in matchers {
                if !labels.contains(&label) && !TARGET_LABELS.contains(&label.as_str()) {
                    problems.push(format!(
                        "`{series}` has no label `{label}` (query `{query}`)"
                    ));
                }
            }
            labels_of_query.extend(labels);
        }
        for label in grouping_labels_in(&query) {
            if !labels_of_query.contains(&label) && !TARGET_LABELS.contains(&label.as_str()) {
                problems.push(format!(
                    "no series of the query has the label `{label}` (query `{query}`)"
                ));
            }
        }
    }
    let used = dashboard_metric_names(&dashboard);
    for (family, f) in &e.families {
        let name = Exposition::documented_name(family, &f.kind);
        if !used.contains(&name) {
            problems.push(format!("`{name}` is exported but no panel shows it"));
        }
    }
    assert!(
        problems.is_empty(),
        "the dashboard and the live scrape disagree:\n{}",
        problems.join("\n")
    );
}

/// The metric table of docs/operations.md lists exactly what the scrape exports.
fn check_docs_table(e: &Exposition) {
    let table = doc_metric_table(&read_repo_file("docs/operations.md"));
    let documented: BTreeMap<String, &DocMetric> =
        table.iter().map(|m| (m.name.clone(), m)).collect();
    assert_eq!(documented.len(), table.len(), "a metric listed twice");
    let exported: BTreeMap<String, (&String, &Family)> = e
        .families
        .iter()
        .map(|(name, f)| (Exposition::documented_name(name, &f.kind), (name, f)))
        .collect();
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        exported.keys().collect::<Vec<_>>(),
        "docs/operations.md's metric table against the families of the scrape"
    );
    for (name, (_, family)) in &exported {
        let doc = documented[name];
        assert_eq!(doc.kind, family.kind, "the type of {name}");
        let labels: BTreeSet<String> = family
            .samples
            .iter()
            .flat_map(|s| s.labels.keys())
            .filter(|l| *l != "le")
            .cloned()
            .collect();
        assert_eq!(doc.labels, labels, "the labels of {name}");
        let spelled_out = backticked(&doc.meaning);
        for sample in &family.samples {
            for label in CLOSED_LABELS {
                if let Some(value) = sample.labels.get(label) {
                    assert!(
                        spelled_out.contains(value),
                        "docs/operations.md does not name {label} `{value}` of {name}"
                    );
                }
            }
        }
    }
}

/// Right after start-up, before any client: every family but the ACL denials (one series
/// per user, made by the first denial) is there, every counter at zero; closed label sets
/// and the configured upstream are there in full.
fn check_start_up(e: &Exposition, upstream: &str) {
    let table = doc_metric_table(&read_repo_file("docs/operations.md"));
    for doc in &table {
        let name = doc.name.as_str();
        let present = e
            .samples()
            .any(|(f, fam, _)| Exposition::documented_name(f, &fam.kind) == name);
        if name == "nats_edge_acl_denials_total" {
            assert!(!present, "{name} has a series before any denial");
        } else {
            assert!(present, "{name} has no series at start-up");
        }
    }
    for (family, f, s) in e.samples() {
        let expected = match f.kind.as_str() {
            "counter" | "histogram" => 0.0,
            _ if family == "nats_edge_build_info" || family == "nats_edge_ready" => 1.0,
            _ => 0.0,
        };
        assert_eq!(s.value, expected, "{s:?} at start-up");
    }
    for reason in CloseReason::ALL {
        assert_eq!(
            e.value(
                "nats_edge_connections_closed_total",
                &[("reason", reason.as_str())]
            ),
            Some(0.0),
            "close reason {}",
            reason.as_str()
        );
    }
    for result in ["ok", "failed"] {
        assert_eq!(
            e.value("nats_edge_config_reloads_total", &[("result", result)]),
            Some(0.0)
        );
    }
    for name in [
        "nats_edge_upstream_dials_total",
        "nats_edge_upstream_dial_failures_total",
    ] {
        assert_eq!(
            e.value(name, &[("upstream", upstream)]),
            Some(0.0),
            "{name} for the configured upstream"
        );
    }
}

/// A sample with the values of labels that depend on the deployment left out.
fn shape(s: &Sample) -> (String, Vec<(String, String)>) {
    let labels = s
        .labels
        .iter()
        .map(|(k, v)| {
            let v = if DEPLOYMENT_LABELS.contains(&k.as_str()) {
                "*".to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    (s.name.clone(), labels)
}

/// The example scrape in docs/operations.md (an edge with one tcp listener and one
/// upstream) has the same series as a fresh edge with one tcp listener and one upstream.
fn check_docs_example(fresh: &Exposition) {
    let doc = read_repo_file("docs/operations.md");
    let start = doc
        .find("$ curl http://127.0.0.1:8222/metrics\n")
        .expect("the example scrape in docs/operations.md");
    let body = &doc[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let body = &body[..body.find("```").expect("the end of the example")];
    let example = Exposition::parse(body);
    let shapes = |e: &Exposition| -> BTreeSet<(String, Vec<(String, String)>)> {
        e.samples().map(|(_, _, s)| shape(s)).collect()
    };
    let (documented, live) = (shapes(&example), shapes(fresh));
    let missing: Vec<_> = live.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&live).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the example scrape in docs/operations.md is out of date:\n\
         series the edge exports that it lacks: {missing:?}\n\
         series it shows that the edge does not export: {extra:?}"
    );
    for (family, f) in &example.families {
        assert_eq!(
            fresh.families.get(family).map(|l| &l.kind),
            Some(&f.kind),
            "the type of {family} in the example"
        );
    }
}
