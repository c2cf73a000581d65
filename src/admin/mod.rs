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

pub use varz::start_cpu_sampling;

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
/// The bytes of built answers (`/connz`, `/varz`, `/metrics`) held at once, in KiB, until
/// each is written or its connection goes: a client that asks for a large `/connz` page on
/// every slot and reads none would otherwise hold 64 of them. One answer larger than this
/// is served alone.
const ANSWER_BUDGET_KIB: u32 = 64 * 1024;
/// Answers built at once: the budget counts an answer once it is built, so what is being
/// built (a `/connz` page of every connection, a `/metrics` walk of the registry) is bounded
/// by this many answers; the other requests wait their turn.
const BUILDS_AT_ONCE: usize = 2;

pub type Body = Full<Bytes>;

/// A response body that holds its share of [`ANSWER_BUDGET_KIB`] until hyper is done with
/// it (written, or dropped with its connection).
struct BudgetedBody {
    inner: Body,
    _held: Option<OwnedSemaphorePermit>,
}

impl hyper::body::Body for BudgetedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// `response` with its body's share of `budget` taken, or `503` when the budget is spent.
fn within_budget(response: Response<Body>, budget: &Arc<Semaphore>) -> Response<BudgetedBody> {
    let bytes = hyper::body::Body::size_hint(response.body()).lower();
    let kib = u32::try_from(bytes.div_ceil(1024))
        .unwrap_or(u32::MAX)
        .clamp(1, ANSWER_BUDGET_KIB);
    match budget.clone().try_acquire_many_owned(kib) {
        Ok(permit) => response.map(|inner| BudgetedBody {
            inner,
            _held: Some(permit),
        }),
        Err(_) => {
            tracing::warn!(
                bytes,
                "admin answer refused: earlier large answers are still being written"
            );
            unbudgeted(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "admin server busy: large answers still being written\n",
            ))
        }
    }
}

fn unbudgeted(response: Response<Body>) -> Response<BudgetedBody> {
    response.map(|inner| BudgetedBody { inner, _held: None })
}

/// Serves the admin endpoints until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<EdgeShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let full = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let budget = Arc::new(Semaphore::new(ANSWER_BUDGET_KIB as usize));
    let builders = Arc::new(Semaphore::new(BUILDS_AT_ONCE));
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
        tokio::spawn(serve_connection(
            stream,
            shared.clone(),
            slot,
            budget.clone(),
            builders.clone(),
        ));
    }
}

/// What an admin connection may ask for; its semaphore permit is given back when it ends.
struct Slot {
    probes_only: bool,
    _permit: OwnedSemaphorePermit,
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    shared: Arc<EdgeShared>,
    slot: Slot,
    budget: Arc<Semaphore>,
    builders: Arc<Semaphore>,
) {
    let probes_only = slot.probes_only;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let budget = budget.clone();
        let builders = builders.clone();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        async move {
            let response = match path.as_str() {
                _ if method != Method::GET && method != Method::HEAD => unbudgeted(not_allowed()),
                "/healthz" | "/readyz" => unbudgeted(probe(&shared, &path)),
                _ if probes_only => unbudgeted(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "admin server busy: health probes only\n",
                )),
                _ => {
                    // Never closed, so the permit always comes. Held by the build itself, which
                    // runs on even if the request is dropped (its client left).
                    let building = builders.acquire_owned().await;
                    let built = tokio::task::spawn_blocking(move || {
                        let _building = building;
                        route(&shared, &path, &query)
                    })
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "admin request failed");
                        text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                    });
                    within_budget(built, &budget)
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Built answers hold their bytes' share of the budget until hyper drops their bodies;
    /// one that finds the budget spent gets a 503 instead of being held too.
    #[test]
    fn built_answers_hold_their_share_of_the_budget() {
        let budget = Arc::new(Semaphore::new(3));
        let answer = || text(StatusCode::OK, &"x".repeat(1500));
        let first = within_budget(answer(), &budget);
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(budget.available_permits(), 1, "1,500 bytes take 2 KiB");
        let second = within_budget(answer(), &budget);
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(first);
        assert_eq!(budget.available_permits(), 3);
        assert_eq!(within_budget(answer(), &budget).status(), StatusCode::OK);
    }
}
