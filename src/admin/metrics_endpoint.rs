//! `/metrics`: every metric in the Prometheus text format (OpenMetrics flavour, as
//! prometheus-client writes it; Prometheus scrapes it as is).

use hyper::{Response, StatusCode};

use super::{respond, text, Body};
use crate::edge::EdgeShared;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn metrics(shared: &EdgeShared) -> Response<Body> {
    shared.metrics.set_ready(shared.health.ready().is_ok());
    match shared.metrics.encode() {
        Ok(body) => respond(StatusCode::OK, CONTENT_TYPE, body),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}
