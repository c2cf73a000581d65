//! The forwarding hot path allocates nothing per message when no filter changes it.
//!
//! The edge runs on its own single-threaded runtime in this process, and a counting global
//! allocator counts only allocations made on that thread. After a warm-up run, 200,000
//! messages of 128 B are published through the edge to a subscriber (both raw-protocol
//! clients on other threads, nats-server in its own process); the allocations the edge made
//! meanwhile are per connection (two new sessions), not per message.

#[path = "../benches/harness/mod.rs"]
#[allow(dead_code)]
mod harness;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static EDGE_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static ON_EDGE_THREAD: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON_EDGE_THREAD.with(Cell::get) {
            EDGE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON_EDGE_THREAD.with(Cell::get) {
            EDGE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn forwarding_unchanged_messages_allocates_nothing_per_message() {
    let server = harness::targets::start_nats_server();
    let config = nats_edge::Config::from_toml_str(&format!(
        "[[listeners]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\n[upstream]\nurls = [\"nats://{}\"]\n",
        server.addr
    ))
    .expect("config");

    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let edge_thread = std::thread::spawn(move || {
        ON_EDGE_THREAD.with(|c| c.set(true));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let edge = nats_edge::Edge::start(config).await.expect("edge starts");
            addr_tx
                .send(edge.addr("default").expect("bound"))
                .expect("send addr");
            let _ = stop_rx.await;
            edge.shutdown().await;
        });
    });
    let addr = addr_rx.recv().expect("edge address");

    let endpoint = harness::load::Endpoint::tcp(addr);
    harness::load::pub_sub(addr, 1, 1, 20_000, 128).expect("warm-up run");
    // Plain messages, and messages that each carry a header block of their own (HPUB in,
    // HMSG out), as JetStream publishers send.
    let mut counted = Vec::new();
    for (content, messages) in [
        (harness::load::Content::Filler, 200_000),
        (harness::load::Content::Headers, 100_000),
    ] {
        let before = EDGE_ALLOCS.load(Ordering::Relaxed);
        harness::load::pub_sub_content(&endpoint, 1, 1, messages, 128, content)
            .expect("measured run");
        counted.push((
            content,
            messages,
            EDGE_ALLOCS.load(Ordering::Relaxed) - before,
        ));
    }

    let _ = stop_tx.send(());
    edge_thread.join().expect("edge thread");
    for (content, messages, during) in counted {
        println!(
            "edge allocations while forwarding {messages} {content:?} messages (2 new sessions): {during}"
        );
        assert!(
            during < 1_000,
            "{during} allocations for {messages} {content:?} messages: the hot path allocates per message"
        );
    }
}
