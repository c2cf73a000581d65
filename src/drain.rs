//! Graceful drain (SIGTERM, SIGINT), as nats-server's lame-duck mode does it: stop accepting,
//! tell every client (an INFO with `ldm: true`, so client libraries can reconnect elsewhere),
//! give them `drain.grace_period` to leave, then close the rest one by one, spread over what
//! is left of `drain.timeout` (so their reconnects do not all land on the other edges at
//! once), and wait for their sessions, all within `drain.timeout`.

use std::time::{Duration, Instant};

use crate::edge::{Edge, EdgeShared};
use crate::session::CLOSE_GRACE;

/// The longest pause between two closes, as nats-server's lame-duck mode: a few clients are
/// not spread over the whole window.
const MAX_CLOSE_INTERVAL: Duration = Duration::from_secs(1);

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open when the grace period ended, closed by the edge.
    pub closed_by_edge: usize,
    /// Whether sessions were still ending when the timeout came.
    pub timed_out: bool,
}

pub async fn drain(edge: &mut Edge, grace_period: Duration, timeout: Duration) -> Drained {
    let started = Instant::now();
    let shared = edge.shared().clone();
    shared.health.set_draining();
    shared.metrics.set_draining(true);
    shared.stop_accepting();
    shared.enter_lame_duck();
    tracing::info!(
        clients = shared.registry.len(),
        grace_period_ms = grace_period.as_millis() as u64,
        "draining: stopped accepting, lame-duck INFO sent to clients"
    );
    let _ = tokio::time::timeout(grace_period, until_no_connections(&shared)).await;
    let remaining = shared.registry.snapshot();
    let closed_by_edge = remaining.len();
    if closed_by_edge > 0 {
        // The last sessions closed need their close grace before the timeout.
        let window = timeout
            .saturating_sub(started.elapsed())
            .saturating_sub(CLOSE_GRACE);
        let interval = close_interval(window, closed_by_edge);
        tracing::info!(
            clients = closed_by_edge,
            interval_ms = interval.as_secs_f64() * 1e3,
            "grace period over: closing the remaining clients"
        );
        let closing = async {
            let start = tokio::time::Instant::now();
            for (i, entry) in remaining.iter().enumerate() {
                tokio::time::sleep_until(start + interval * i as u32).await;
                entry.request_close();
            }
        };
        // Clients that leave meanwhile shorten it.
        tokio::select! {
            () = closing => {}
            () = shared.registry.until_empty() => {}
        }
    }
    let left = timeout.saturating_sub(started.elapsed());
    // Whatever is left (sessions that were still in their handshake, or not done yet).
    let _ = edge.shutdown_handle().send(true);
    let timed_out = tokio::time::timeout(left, edge.wait()).await.is_err();
    if timed_out {
        tracing::warn!(
            clients = shared.registry.len(),
            "drain timeout: exiting with sessions still ending"
        );
    }
    Drained {
        closed_by_edge,
        timed_out,
    }
}

/// How often a drain looks again at connections in their transport handshake.
const HANDSHAKE_POLL: Duration = Duration::from_millis(20);

/// Resolves once no client connection is left: no session, and none in its transport
/// handshake (a TLS handshake, a WebSocket upgrade, a PROXY header), which is not in the
/// registry yet and whose session would start with the lame-duck INFO. Sessions are waited
/// for on the registry's notification; a handshake that fails leaves without one, so those
/// are looked at again every [`HANDSHAKE_POLL`].
async fn until_no_connections(shared: &EdgeShared) {
    loop {
        shared.registry.until_empty().await;
        if shared.open_connections() == 0 {
            return;
        }
        tokio::time::sleep(HANDSHAKE_POLL).await;
    }
}

/// The pause between two of the `clients` closes that spreads them evenly over `window`, at
/// most [`MAX_CLOSE_INTERVAL`]; zero (all at once) when there is no window left.
fn close_interval(window: Duration, clients: usize) -> Duration {
    let clients = u32::try_from(clients).unwrap_or(u32::MAX).max(1);
    (window / clients).min(MAX_CLOSE_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_spread_over_the_window_at_most_a_second_apart() {
        let ms = Duration::from_millis;
        assert_eq!(close_interval(ms(3000), 10_000), Duration::from_micros(300));
        assert_eq!(close_interval(ms(3000), 4), ms(750));
        assert_eq!(close_interval(ms(60_000), 3), MAX_CLOSE_INTERVAL);
        assert_eq!(close_interval(Duration::ZERO, 5), Duration::ZERO);
        assert_eq!(close_interval(ms(10), 0), ms(10));
    }
}
