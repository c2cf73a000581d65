//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/connz` and `/varz`.
//!
//! It runs on the main runtime with the accept loops, never on the session workers, and
//! reads only shared state (metrics, the connection registry, health), so a scrape costs
//! the data path nothing beyond the Relaxed loads it makes. The answers that walk every
//! connection (`/connz`, `/varz`, `/metrics`) are built on the blocking pool, so a large
//! one holds up neither the accept loops nor the probes.

mod connz;
mod metrics_endpoint;
mod time;
mod varz;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::edge::EdgeShared;

/// Admin connections served in full at once.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// Past [`MAX_ADMIN_CONNECTIONS`], connections still accepted and answered for the health
/// probes alone (one request each, its headers within [`PROBE_HEADER_READ_TIMEOUT`]), so
/// connections that hold every full slot do not starve the probes; more than these wait in
/// the accept queue.
const MAX_PROBE_ONLY_CONNECTIONS: usize = 256;
const PROBE_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one admin connection may stay open (keep-alive included); then it ends after
/// the response in progress, within [`LIFETIME_GRACE`].
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
const LIFETIME_GRACE: Duration = Duration::from_secs(5);
/// How long a connection may take to send a request's headers, idle keep-alive included:
/// connections that send nothing give their slot back soon, so they cannot hold every slot
/// and starve the health probes.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

pub type Body = Full<Bytes>;

/// Serves the admin endpoints until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<EdgeShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let full = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let probes_only = Arc::new(Semaphore::new(MAX_PROBE_ONLY_CONNECTIONS));
    loop {
        // A full slot if one is free, else whichever frees first.
        let slot = match full.clone().try_acquire_owned() {
            Ok(permit) => Slot {
                probes_only: false,
                _permit: permit,
            },
            Err(_) => tokio::select! {
                _ = crate::edge::until_stopped(&mut shutdown) => return,
                permit = full.clone().acquire_owned() => match permit {
                    Ok(permit) => Slot { probes_only: false, _permit: permit },
                    Err(_) => return,
                },
                permit = probes_only.clone().acquire_owned() => match permit {
                    Ok(permit) => Slot { probes_only: true, _permit: permit },
                    Err(_) => return,
                },
            },
        };
        let stream = tokio::select! {
            _ = crate::edge::until_stopped(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A probes-only slot taken while every full one was busy: a full one freed during
        // the wait for this connection serves it in full.
        let upgraded = slot
            .probes_only
            .then(|| full.clone().try_acquire_owned().ok())
            .flatten();
        let slot = match upgraded {
            Some(permit) => Slot {
                probes_only: false,
                _permit: permit,
            },
            None => slot,
        };
        tokio::spawn(serve_connection(stream, shared.clone(), slot));
    }
}

/// What an admin connection may ask for; its semaphore permit is given back when it ends.
struct Slot {
    probes_only: bool,
    _permit: OwnedSemaphorePermit,
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<EdgeShared>, slot: Slot) {
    let probes_only = slot.probes_only;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        async move {
            let response = match path.as_str() {
                _ if method != Method::GET && method != Method::HEAD => not_allowed(),
                "/healthz" | "/readyz" => probe(&shared, &path),
                _ if probes_only => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "admin server busy: health probes only\n",
                ),
                _ => tokio::task::spawn_blocking(move || route(&shared, &path, &query))
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "admin request failed");
                        text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                    }),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    if probes_only {
        builder
            .header_read_timeout(PROBE_HEADER_READ_TIMEOUT)
            .keep_alive(false);
    } else {
        builder.header_read_timeout(HEADER_READ_TIMEOUT);
    }
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let served = match tokio::time::timeout(CONNECTION_LIFETIME, conn.as_mut()).await {
        Ok(served) => served,
        Err(_) => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(LIFETIME_GRACE, conn)
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "admin connection failed");
    }
    drop(slot);
}

/// `/healthz` and `/readyz`: answered at once, on any connection.
fn probe(shared: &EdgeShared, path: &str) -> Response<Body> {
    if path == "/healthz" {
        // nats-server's body, so tools that read its `/healthz` (prometheus-nats-exporter's
        // `-healthz`) read the edge's.
        return respond(StatusCode::OK, "application/json", r#"{"status":"ok"}"#);
    }
    match shared.health.ready() {
        Ok(()) => text(StatusCode::OK, "ready\n"),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not ready: {}\n", why.as_str()),
        ),
    }
}

/// The endpoints that read every connection or metric, on the blocking pool.
fn route(shared: &EdgeShared, path: &str, query: &str) -> Response<Body> {
    match path {
        "/metrics" => metrics_endpoint::metrics(shared),
        "/connz" => connz::connz(shared, query),
        "/varz" => varz::varz(shared),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// 405, with the methods that are served (RFC 9110 asks for them).
fn not_allowed() -> Response<Body> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    response.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static("GET, HEAD"),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body.to_string())
}

/// A refused query, answered as nats-server's monitor answers one: 400 with the error
/// text as a plain-text body, no newline added. The text may quote the request's bytes
/// as they came, so it is bytes, not a `str`.
fn bad_request(body: Vec<u8>) -> Response<Body> {
    respond(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", body)
}

fn json(value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_string_pretty(value) {
        Ok(body) => respond(StatusCode::OK, "application/json", body),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    // As nats-server's monitor: pages served from elsewhere may read the answers.
    headers.insert(
        hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        hyper::header::HeaderValue::from_static("*"),
    );
    response
}
