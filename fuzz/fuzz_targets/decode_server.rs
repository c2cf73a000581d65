//! Arbitrary bytes from an upstream server: the scanner, op builder and encoder must never
//! panic, and a frame never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nats_edge::proto::Direction;

fuzz_target!(|data: &[u8]| {
    nats_edge_fuzz::decode_stream(Direction::ServerToClient, data);
});
