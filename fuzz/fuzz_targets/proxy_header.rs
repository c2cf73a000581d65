//! Arbitrary bytes at the start of a connection on a listener with `proxy_protocol = true`:
//! the PROXY header parser must never panic, never claim bytes it was not given, and hand on
//! the address it read intact.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nats_edge_fuzz::proxy_header(data);
});
