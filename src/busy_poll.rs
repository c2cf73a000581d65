//! Busy-polling: a worker that keeps polling its sockets for a short window after its last
//! read, instead of going to sleep in `epoll_wait` as soon as it has nothing to do.
//!
//! Why: a request/reply round trip through the edge crosses it four times, and each crossing
//! ordinarily wakes a worker thread that was asleep. On a virtual machine, waking a thread
//! whose vCPU has halted costs tens of microseconds, far more than the edge's own work per
//! crossing. A worker that is still polling when the reply arrives never pays that, and
//! neither does anything else on its core: the vCPU never halts.
//!
//! How: on each worker thread [`run`] is the runtime's root future. It sleeps until the
//! worker reads something ([`note_read`], called by the forwarders), then spins until no
//! read has come for the window. Each turn of the spin yields to the runtime (which, with a
//! task ready to run again, polls the sockets with a zero timeout and runs whatever they
//! woke) and then yields the CPU to the kernel (`sched_yield`), so a thread waiting for
//! this core (nats-server, a client) gets it at every turn. That is giving way, not
//! priority: the spinner still competes for its fair share while it spins. Spinning with
//! the core kept (no `sched_yield`) was measured and made round trips three times slower
//! on two vCPUs: it takes the core the next hop needs.
//!
//! Cost: CPU. A worker that reads at least once per window never sleeps, so an edge with
//! steady light traffic shows its workers busy, and any client that sends a byte per
//! window can keep its worker spinning. Off by default (`busy_poll = 0`); under a CPU quota
//! (a Kubernetes limit) the spin is charged like any other work.

use std::cell::{Cell, OnceCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One worker thread's busy-poll state.
#[derive(Default)]
struct Poller {
    /// Reads so far on this thread; a change means traffic since the poller last looked.
    reads: Cell<u64>,
    /// Whether the poller sleeps until the next read (and must be woken by it).
    parked: Cell<bool>,
    wake: Notify,
}

/// Nanoseconds all workers have spent in busy-poll windows, for `nats_edge_busy_poll_seconds`:
/// added once per window, when the worker goes back to sleep.
static POLLING_NANOS: AtomicU64 = AtomicU64::new(0);

/// Time all workers have spent awake in busy-poll windows, from the first read of a window
/// to its end (the work done meanwhile included). Zero while `busy_poll` is off.
pub fn polling_time() -> Duration {
    Duration::from_nanos(POLLING_NANOS.load(Ordering::Relaxed))
}

thread_local! {
    /// Set on a worker thread whose runtime runs [`run`]; unset everywhere else.
    static POLLER: OnceCell<Rc<Poller>> = const { OnceCell::new() };
}

/// A forwarder read data on this thread. Costs a thread-local lookup per read (not per
/// message) where busy-polling is off.
#[inline]
pub fn note_read() {
    POLLER.with(|poller| {
        if let Some(poller) = poller.get() {
            poller.reads.set(poller.reads.get().wrapping_add(1));
            if poller.parked.replace(false) {
                poller.wake.notify_one();
            }
        }
    });
}

/// The busy-poller of the current worker thread, for ever: the root future of a worker's
/// single-threaded runtime. `window` is how long it keeps polling after the last read.
pub async fn run(window: Duration) {
    let poller = POLLER.with(|p| p.get_or_init(Rc::default).clone());
    loop {
        poller.parked.set(true);
        poller.wake.notified().await;
        poller.spin(window).await;
    }
}

/// Whether this thread's poller is asleep until the next read (`None`: no poller here).
#[cfg(test)]
fn is_parked() -> Option<bool> {
    POLLER.with(|p| p.get().map(|poller| poller.parked.get()))
}

impl Poller {
    /// Polls until `window` has passed without a read.
    async fn spin(&self, window: Duration) {
        let started = Instant::now();
        let mut seen = self.reads.get();
        let mut deadline = started + window;
        loop {
            tokio::task::yield_now().await;
            std::thread::yield_now();
            let now = Instant::now();
            let reads = self.reads.get();
            if reads != seen {
                seen = reads;
                deadline = now + window;
            } else if now >= deadline {
                let nanos = u64::try_from((now - started).as_nanos()).unwrap_or(u64::MAX);
                POLLING_NANOS.fetch_add(nanos, Ordering::Relaxed);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields to the runtime until the poller is parked (or not), for at most `limit`.
    async fn until_parked(parked: bool, limit: Duration) {
        let started = Instant::now();
        while is_parked() != Some(parked) {
            assert!(
                started.elapsed() < limit,
                "poller never became parked={parked}"
            );
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn spins_for_the_window_after_each_read_then_sleeps() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        // Long enough that the check 5% of the way in cannot be overtaken by the deadline
        // even when a loaded machine stalls this thread for most of a second.
        let window = Duration::from_secs(1);
        let limit = Duration::from_secs(10);
        tokio::task::LocalSet::new().block_on(&runtime, async move {
            assert_eq!(is_parked(), None, "no poller before one runs");
            tokio::task::spawn_local(run(window));
            // Idle: asleep, not spinning.
            until_parked(true, limit).await;
            note_read();
            assert_eq!(is_parked(), Some(false), "a read wakes the poller");
            let started = Instant::now();
            until_parked(false, limit).await;
            // A second read within the window restarts it.
            while started.elapsed() < window / 20 {
                tokio::task::yield_now().await;
            }
            assert_eq!(is_parked(), Some(false), "still spinning within the window");
            note_read();
            let second = Instant::now();
            until_parked(true, limit).await;
            assert!(
                second.elapsed() >= window,
                "spun {:?} after the last read, less than the window",
                second.elapsed()
            );
            // The time awake is counted once the window ends: at least the window after
            // the second read.
            assert!(polling_time() >= window, "{:?}", polling_time());
            // And a read after it slept wakes it again.
            note_read();
            assert_eq!(is_parked(), Some(false));
        });
    }
}
