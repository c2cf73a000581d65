//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/connz` and `/varz`.
//!
//! It runs on the main runtime with the accept loops, never on the session workers, and
//! reads only shared state (metrics, the connection registry, health), so a scrape costs
//! the data path nothing beyond the Relaxed loads it makes.

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
use tokio::sync::{watch, Semaphore};

use crate::edge::EdgeShared;

/// Admin connections served at once; more wait in the accept queue.
const MAX_ADMIN_CONNECTIONS: usize = 64;
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
    let permits = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = crate::edge::until_stopped(&mut shutdown) => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
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
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = route(&shared, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
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
            drop(permit);
        });
    }
}

fn route(shared: &EdgeShared, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let query = req.uri().query().unwrap_or("");
    match req.uri().path() {
        "/metrics" => metrics_endpoint::metrics(shared),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match shared.health.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {}\n", why.as_str()),
            ),
        },
        "/connz" => connz::connz(shared, query),
        "/varz" => varz::varz(shared),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
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
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
