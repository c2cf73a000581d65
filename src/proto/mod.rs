//! The NATS wire codec for both directions.
//!
//! [`scan`] finds the next complete frame in a byte buffer without copying or allocating: it
//! returns a [`Frame`] of offsets. [`build`] turns a frame into a filter op by slicing a frozen
//! buffer (zero copy), and [`encode`] writes a changed op back to bytes. A forwarder that no
//! filter wants to see a frame never builds an op at all: it forwards the frame's original
//! bytes.

pub mod build;
pub mod connect;
pub mod encode;
pub mod scan;

pub use build::{build_client_op, build_connect_over, build_server_op};
pub use encode::{
    encode_client_head, encode_client_op, encode_server_head, encode_server_op, PAYLOAD_END,
};
pub use scan::{
    ignored_line_verb_len, pending_frame_len, plain_messages, scan, Args, Direction, Frame,
    ScanLimits, Verb,
};

/// A protocol violation found while decoding, named by how nats-server reacts to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// An unknown verb, a verb that needs arguments with nothing after it (not even a
    /// blank), or a payload not followed by CRLF.
    /// nats-server answers `-ERR 'Unknown Protocol Operation'` and closes.
    #[error("unknown protocol operation")]
    UnknownOperation,
    /// A control line longer than max_control_line, even before its newline arrived.
    /// nats-server answers `-ERR 'maximum control line exceeded'` and closes.
    #[error("maximum control line exceeded")]
    MaxControlLine,
    /// A PUB/HPUB announcing more than max_payload. nats-server answers
    /// `-ERR 'Maximum Payload Violation'` on the control line alone and closes.
    #[error("maximum payload violation")]
    MaxPayload,
    /// Wrong argument count, a size that is not a number, a header size over the total.
    /// nats-server closes without an `-ERR`.
    #[error("malformed arguments")]
    BadArguments,
    /// CONNECT or INFO JSON that does not parse. nats-server closes without an `-ERR`.
    #[error("malformed JSON")]
    BadJson,
    /// HPUB from a client that did not negotiate headers (before its CONNECT too).
    /// nats-server closes without an `-ERR`, whatever the sizes.
    #[error("HPUB without negotiated headers")]
    HeadersNotNegotiated,
}

impl ProtoError {
    /// The `-ERR` text nats-server sends for this violation, if it sends one.
    pub fn server_error_text(self) -> Option<&'static str> {
        use nats_edge_filters::errors;
        match self {
            ProtoError::UnknownOperation => Some(errors::UNKNOWN_PROTOCOL_OPERATION),
            ProtoError::MaxControlLine => Some(errors::MAX_CONTROL_LINE_EXCEEDED),
            ProtoError::MaxPayload => Some(errors::MAX_PAYLOAD_VIOLATION),
            ProtoError::BadArguments | ProtoError::BadJson | ProtoError::HeadersNotNegotiated => {
                None
            }
        }
    }

    /// The close reason this violation is counted under.
    pub fn close_reason(self) -> nats_edge_filters::CloseReason {
        use nats_edge_filters::CloseReason;
        match self {
            ProtoError::MaxControlLine => CloseReason::MaxControlLineExceeded,
            ProtoError::MaxPayload => CloseReason::MaxPayloadExceeded,
            _ => CloseReason::ProtocolViolation,
        }
    }
}

#[cfg(test)]
mod tests;
