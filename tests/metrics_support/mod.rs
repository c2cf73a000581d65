//! Reading what the edge's metrics look like from three places: a Prometheus text exposition
//! (a live `/metrics` scrape), the Grafana dashboard's PromQL, and the metric table of
//! docs/operations.md. The tests compare them, so a panel never queries a series the edge
//! does not export and the table never lists a family the scrape lacks.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The file a path inside the repository names, read whole.
pub fn read_repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The shipped Grafana dashboard.
pub fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read_repo_file("deploy/grafana/nats-edge-dashboard.json"))
        .expect("deploy/grafana/nats-edge-dashboard.json is JSON")
}

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One metric family: its `# TYPE` and the samples that follow it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Family {
    pub kind: String,
    pub samples: Vec<Sample>,
}

/// A parsed Prometheus (OpenMetrics flavour) text exposition, keyed by family name as its
/// `# TYPE` line names it (a counter's family has no `_total`; its samples do).
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
                families.entry(name.to_string()).or_default().kind = kind.to_string();
                current = Some(name.to_string());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let sample = parse_sample(line);
            let family = current
                .as_ref()
                .unwrap_or_else(|| panic!("sample before any TYPE line: {line:?}"));
            assert!(
                sample.name.starts_with(family.as_str()),
                "sample {line:?} under family {family}"
            );
            families.get_mut(family).unwrap().samples.push(sample);
        }
        Exposition { families }
    }

    /// Every sample, with its family.
    pub fn samples(&self) -> impl Iterator<Item = (&String, &Family, &Sample)> {
        self.families
            .iter()
            .flat_map(|(name, f)| f.samples.iter().map(move |s| (name, f, s)))
    }

    /// The samples called `name` (a series name: `x_total`, `x_bucket`, `x`).
    pub fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples()
            .filter(|(_, _, s)| s.name == name)
            .map(|(_, _, s)| s)
            .collect()
    }

    /// Every distinct sample name.
    pub fn series_names(&self) -> BTreeSet<String> {
        self.samples().map(|(_, _, s)| s.name.clone()).collect()
    }

    /// The label names the samples called `name` carry, over all of them.
    pub fn label_names(&self, name: &str) -> BTreeSet<String> {
        self.series(name)
            .iter()
            .flat_map(|s| s.labels.keys().cloned())
            .collect()
    }

    /// The one sample called `name` whose labels include every pair of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self
            .series(name)
            .into_iter()
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        match found.as_slice() {
            [] => None,
            [one] => Some(one.value),
            many => panic!(
                "{} samples of {name} match {labels:?}: {many:?}",
                many.len()
            ),
        }
    }

    /// The name a user queries a family by, and which docs/operations.md lists: a counter's
    /// with `_total`, any other's as it is.
    pub fn documented_name(family: &str, kind: &str) -> String {
        if kind == "counter" {
            format!("{family}_total")
        } else {
            family.to_string()
        }
    }
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("bad sample line {line:?}"));
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("bad sample value in {line:?}"));
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
            (name, parse_labels(body, line))
        }
    };
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// `a="x",b="y\"z"` into pairs, undoing the exposition's escapes.
fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad labels in {line:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("bad escape in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        out.insert(key.trim_start_matches(',').to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    out
}

/// The family one series name belongs to: histogram series (`_bucket`, `_sum`, `_count`)
/// name their histogram.
pub fn metric_family(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .unwrap_or(series)
}

/// Every PromQL text of a Grafana dashboard: its panels' `expr` fields and its template
/// variables' queries.
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "query" | "definition", serde_json::Value::String(s))
                            if s.contains("nats_edge_") =>
                        {
                            out.push(s.clone());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// Every `nats_edge_*` metric family a Grafana dashboard queries, histogram suffixes
/// stripped.
pub fn dashboard_metric_names(dashboard: &serde_json::Value) -> BTreeSet<String> {
    dashboard_queries(dashboard)
        .iter()
        .flat_map(|q| metric_names_in(q))
        .collect()
}

/// The `nats_edge_*` metric families named in one PromQL expression.
pub fn metric_names_in(expr: &str) -> BTreeSet<String> {
    series_in(expr)
        .into_iter()
        .map(|s| metric_family(&s).to_string())
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The `nats_edge_*` series named in one PromQL expression, exactly as written
/// (`..._bucket`, `..._total`).
pub fn series_in(expr: &str) -> BTreeSet<String> {
    selectors_in(expr)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// Each `nats_edge_*` series an expression selects, with the label names its matchers use
/// (`x{instance=~"$i", listener=~"$l"}` gives `x` and `instance`, `listener`).
pub fn selectors_in(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("nats_edge_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        let name = &tail[..len];
        rest = &tail[len..];
        if before.is_some_and(is_ident) {
            continue;
        }
        let mut labels = BTreeSet::new();
        if let Some(body) = rest.strip_prefix('{') {
            let end = body.find('}').expect("a closed label matcher");
            for matcher in body[..end].split(',') {
                let key = matcher.split(['=', '!']).next().unwrap_or_default().trim();
                if !key.is_empty() {
                    labels.insert(key.to_string());
                }
            }
            rest = &body[end..];
        }
        out.push((name.to_string(), labels));
    }
    out
}

/// The label names an expression groups or reads by: `by (a, b)`, `without (a)`, and the
/// label of Grafana's `label_values(series, label)`.
pub fn grouping_labels_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for keyword in ["by", "without"] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            let before = rest[..at].chars().next_back();
            let after = rest[at + keyword.len()..].trim_start();
            rest = &rest[at + keyword.len()..];
            if before.is_some_and(is_ident) {
                continue;
            }
            let Some(list) = after.strip_prefix('(') else {
                continue;
            };
            let end = list.find(')').expect("a closed label list");
            out.extend(
                list[..end]
                    .split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
        }
    }
    if let Some(args) = expr
        .trim()
        .strip_prefix("label_values(")
        .and_then(|a| a.strip_suffix(')'))
    {
        if let Some((_, label)) = args.rsplit_once(',') {
            out.insert(label.trim().to_string());
        }
    }
    out
}

/// One row of the metric table in docs/operations.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMetric {
    pub name: String,
    pub kind: String,
    pub labels: BTreeSet<String>,
    pub meaning: String,
}

/// The rows of the `| Metric | Type | Labels | Meaning |` table of a Markdown text.
pub fn doc_metric_table(markdown: &str) -> Vec<DocMetric> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in markdown.lines() {
        if line.starts_with("| Metric | Type | Labels | Meaning |") {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        if line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(cells.len(), 4, "a metric table row of four cells: {line}");
        rows.push(DocMetric {
            name: cells[0].trim_matches('`').to_string(),
            kind: cells[1].to_string(),
            labels: backticked(cells[2]),
            meaning: cells[3].to_string(),
        });
    }
    assert!(!rows.is_empty(), "no metric table found");
    rows
}

/// The `code` spans of a Markdown fragment.
pub fn backticked(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}
