//! `cargo bench --bench edge -- --filter-cost`: what the policy filters cost, on their own.
//! 128 B pub→sub through a plain edge and through the same edge with the shipped tenant
//! mount and default tagging on, interleaved over rounds, as a median ratio. Shorter than a
//! full run, so a change to a filter can be checked in a minute.

use serde_json::{json, Value};

use super::{load, median, targets};

const ROUNDS: usize = 7;
const MSGS: u64 = 1_000_000;

pub fn run(edge_bin: &str) -> Value {
    let server = targets::start_nats_server();
    let plain = targets::start_edge(edge_bin, server.addr, &[]);
    let filtered = targets::start_edge_rewrite_tag(edge_bin, server.addr);
    let (mut plain_rates, mut filtered_rates) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}", round + 1);
        let r = load::pub_sub(plain.addr, 1, 1, MSGS, 128).expect("pub/sub via the edge");
        plain_rates.push(r.msgs_per_sec());
        let r = load::pub_sub(filtered.addr, 1, 1, MSGS, 128)
            .expect("pub/sub via the rewriting and tagging edge");
        filtered_rates.push(r.msgs_per_sec());
    }
    let ratios: Vec<f64> = plain_rates
        .iter()
        .zip(&filtered_rates)
        .map(|(p, f)| f / p)
        .collect();
    json!({
        "workload": "pubsub_128B_msgs_per_s",
        "edge": median(&plain_rates),
        "edge+rewrite+tag": median(&filtered_rates),
        "ratio_median_of_rounds": median(&ratios),
    })
}
