//! Replays every kept fuzz input in `fuzz/regressions/{client,server}/` through the same
//! decode loop the cargo-fuzz targets run, so CI exercises the seeds and past crash inputs
//! on a stable toolchain. See docs/testing.md for running the fuzzer itself.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod decode_loop;

use std::path::{Path, PathBuf};

use nats_edge::proto::Direction;

fn inputs(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", root.display());
    files
}

fn replay(dir: &str, direction: Direction) {
    for file in inputs(dir) {
        let data = std::fs::read(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let decoded = std::panic::catch_unwind(|| decode_loop::decode_stream(direction, &data))
            .unwrap_or_else(|_| panic!("{dir}/{name}: the decode loop panicked"));
        // Seeds named `pipeline*` are valid streams: every byte must decode.
        if name.starts_with("pipeline") {
            assert_eq!(
                decoded.consumed,
                data.len(),
                "{dir}/{name}: stopped after {} frames",
                decoded.frames
            );
        }
    }
}

#[test]
fn client_regressions_decode_without_panicking() {
    replay("client", Direction::ClientToServer);
}

#[test]
fn server_regressions_decode_without_panicking() {
    replay("server", Direction::ServerToClient);
}

/// The kept inputs of the `proxy_header` target. Those named after a header the edge reads
/// (`v1_tcp4`, `v2_local`, ...) must parse as one; the others (bad ports, a bare LF, a length
/// past the limit, a cut, no header at all) must not.
#[test]
fn proxy_header_regressions_parse_without_panicking() {
    for file in inputs("proxy") {
        let data = std::fs::read(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let parsed = std::panic::catch_unwind(|| decode_loop::proxy_header(&data))
            .unwrap_or_else(|_| panic!("proxy/{name}: the parser panicked"));
        let valid = [
            "v1_tcp4",
            "v1_tcp6",
            "v1_tcp6_mapped",
            "v1_unknown",
            "v2_tcp4",
            "v2_tcp4_tlv",
            "v2_tcp6",
            "v2_local",
        ];
        assert_eq!(
            parsed.is_some(),
            valid.contains(&name.as_str()),
            "proxy/{name}: {parsed:?}"
        );
    }
}

#[test]
fn the_limits_match_the_fuzz_targets() {
    assert_eq!(decode_loop::LIMITS.max_control_line, 4096);
    assert_eq!(decode_loop::LIMITS.max_payload, 1 << 20);
}
