//! nats-server's own error texts, byte for byte.
//!
//! Client libraries match on these strings (nats.go closes on an `-ERR` it does not know), so
//! an error the edge makes itself must read exactly as the server's would. The texts were
//! checked against nats-server 2.15; some are lower case on purpose.

pub const UNKNOWN_PROTOCOL_OPERATION: &str = "Unknown Protocol Operation";
pub const MAX_CONTROL_LINE_EXCEEDED: &str = "maximum control line exceeded";
pub const MAX_PAYLOAD_VIOLATION: &str = "Maximum Payload Violation";
pub const MAX_SUBSCRIPTIONS_EXCEEDED: &str = "maximum subscriptions exceeded";
pub const AUTHENTICATION_TIMEOUT: &str = "Authentication Timeout";
pub const AUTHORIZATION_VIOLATION: &str = "Authorization Violation";
pub const INVALID_SUBJECT: &str = "Invalid Subject";
pub const INVALID_PUBLISH_SUBJECT: &str = "Invalid Publish Subject";
pub const MAX_CONNECTIONS_EXCEEDED: &str = "maximum connections exceeded";
