//! The benchmark harness in smoke mode: every workload runs briefly, over TCP, TLS and
//! WebSocket (plain and with permessage-deflate), direct, through the edge (also with
//! busy-polling on) and through HAProxy when installed. It asserts completion with no loss and no error (the harness
//! panics otherwise), never a speed; and that the compressed workload did compress.

#[path = "../benches/harness/mod.rs"]
#[allow(dead_code)]
mod harness;

#[test]
fn every_benchmark_workload_completes_without_loss() {
    let report = harness::run_groups(
        harness::Mode::Smoke,
        env!("CARGO_BIN_EXE_nats-edge"),
        harness::Groups::ALL,
        None,
    );
    let results = report["results"].as_object().expect("results");
    for payload in harness::PAYLOADS {
        let row = &results[&format!("pubsub_{payload}B_msgs_per_s")];
        assert!(row["direct"].as_f64().is_some_and(|v| v > 0.0), "{row}");
        assert!(row["edge"].as_f64().is_some_and(|v| v > 0.0), "{row}");
    }
    for payload in harness::TRANSPORT_PAYLOADS {
        for transport in ["tls", "ws", "wsdeflate"] {
            let row = &results[&format!("{transport}_pubsub_{payload}B_msgs_per_s")];
            assert!(row["direct"].as_f64().is_some_and(|v| v > 0.0), "{row}");
            assert!(row["edge"].as_f64().is_some_and(|v| v > 0.0), "{row}");
        }
        // Compressed both ways, direct and through the edge: fewer bytes on the wire per
        // message than its payload alone.
        for side in ["pub", "sub"] {
            let row = &results[&format!("wsdeflate_pubsub_{payload}B_{side}_wire_bytes_per_msg")];
            for target in ["direct", "edge"] {
                let bytes = row[target].as_f64().unwrap_or(f64::NAN);
                assert!(
                    bytes > 0.0 && bytes < payload as f64,
                    "{side} {target}: {row}"
                );
            }
        }
    }
    let row = &results["pubsub_128B_msgs_per_s"];
    assert!(
        row["edge+rewrite+tag"].as_f64().is_some_and(|v| v > 0.0),
        "{row}"
    );
    assert!(
        row["edge+busy_poll"].as_f64().is_some_and(|v| v > 0.0),
        "{row}"
    );
    // Request/reply through every target, the busy-polling edge included.
    let row = &results["reqrep_p99_us"];
    for target in ["direct", "edge", "edge+busy_poll"] {
        assert!(
            row[target].as_f64().is_some_and(|v| v > 0.0),
            "{target}: {row}"
        );
    }
    assert!(results["reqrep_p99_added_us"]["edge+busy_poll"].is_f64());
    assert!(results.contains_key("idle_100_conns_bytes_per_conn"));
    println!("{}", harness::table(&report));
}
