//! A real browser: headless Chromium (driven by playwright-core) loads a page that uses
//! nats.ws to reach the edge's ws:// and wss:// listeners, subscribes, publishes, and makes a
//! request answered by an async-nats responder on the edge's TCP listener. The page's report
//! is checked here and a screenshot is saved under target/.
//!
//! Needs Debian's chromium and the npm packages in tests/browser (`bash .ci/install`).

mod common;
mod transport_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use transport_support::*;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Serves the test page and nats.ws's ESM bundle on 127.0.0.1 until the test ends.
async fn serve_page() -> std::net::SocketAddr {
    let page = std::fs::read(browser_dir().join("page.html")).unwrap();
    let bundle = std::fs::read(browser_dir().join("node_modules/nats.ws/esm/nats.js"))
        .expect("nats.ws is installed in tests/browser (run: bash .ci/install)");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (page, bundle) = (page.clone(), bundle.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or("/");
                let (status, kind, body) = match path {
                    "/" | "/page.html" => ("200 OK", "text/html; charset=utf-8", page),
                    "/nats.js" => ("200 OK", "text/javascript; charset=utf-8", bundle),
                    _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                     Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_ws_in_headless_chromium() {
    assert!(
        Path::new(&chromium()).exists(),
        "{} is missing (run: bash .ci/install)",
        chromium()
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in tests/browser (run: bash .ci/install)"
    );

    let pki = Pki::new();
    let ca = pki.ca("ca");
    let cert = pki.leaf(&ca, "edge", Leaf::server("edge"));
    let page_addr = serve_page().await;
    let origin = format!("http://{page_addr}");
    let server = NatsServer::start();
    let edge = start_edge_toml(&format!(
        "[[listeners]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\nkind = \"ws\"\n\
         ws = {{ allowed_origins = [{origin:?}] }}\n\
         [[listeners]]\nname = \"wss\"\nbind = \"127.0.0.1:0\"\nkind = \"wss\"\n\
         tls = {{ cert_file = {}, key_file = {} }}\nws = {{ same_origin = false, allowed_origins = [{origin:?}] }}\n\
         [upstream]\nurls = [{:?}]\n",
        toml_path(&cert.cert),
        toml_path(&cert.key),
        server.url()
    ))
    .await;

    // The TCP side: a responder that first pushes a message to the requester's subject,
    // then replies; and a subscriber for what the page publishes.
    let tcp_client = client(&format!("nats://{}", edge.addr("tcp").unwrap())).await;
    let mut requests = tcp_client.subscribe("browser.echo").await.unwrap();
    let mut hellos = tcp_client.subscribe("browser.hello").await.unwrap();
    round_trip(&tcp_client).await;
    let responder = tcp_client.clone();
    tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            let name = String::from_utf8_lossy(&msg.payload).into_owned();
            let _ = responder
                .publish(
                    format!("browser.{name}.in"),
                    format!("from tcp to {name}").into(),
                )
                .await;
            let _ = responder
                .publish(msg.reply.unwrap(), format!("echo: {name}").into())
                .await;
        }
    });

    // The wss URL names a path, as one behind an ingress that routes `/nats` would: the edge
    // upgrades any path, as nats-server does.
    let page_url = format!(
        "http://{page_addr}/page.html?ws=ws://{}&wss=wss://{}/nats",
        edge.addr("ws").unwrap(),
        edge.addr("wss").unwrap()
    );
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&shots).unwrap();
    let screenshot = shots.join("nats-ws.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut cmd = Command::new("node");
    cmd.current_dir(browser_dir())
        .arg("run.mjs")
        .arg(&page_url)
        .arg(&cert.cert)
        .arg(&screenshot)
        .env("CHROMIUM", chromium())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("run node");
    let pid = child.id();
    let mut run = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(std::time::Duration::from_secs(90), &mut run).await {
        Ok(out) => out.unwrap().unwrap(),
        Err(_) => {
            // On SIGTERM playwright closes the browser it started (a process group of its
            // own, which a SIGKILL to node would leave behind), then node exits.
            signal_if_running(pid, libc::SIGTERM);
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut run)
                .await
                .is_err()
            {
                signal_if_running(pid, libc::SIGKILL);
            }
            panic!("the browser run did not finish within 90s");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node run.mjs failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("page report: {e}\n{stdout}\n{stderr}"));

    for name in ["ws", "wss"] {
        let r = &report[name];
        assert_eq!(r["connected"], true, "{name}: {r}\n{stderr}");
        assert_eq!(r["reply"], format!("echo: {name}"), "{name}: {r}");
        assert_eq!(r["pushed"], format!("from tcp to {name}"), "{name}: {r}");
        assert_eq!(r["client_ip"], "127.0.0.1", "{name}: {r}");
        assert_eq!(r["tls_required"], name == "wss", "{name}: {r}");
        assert!(r.get("error").is_none(), "{name}: {r}");
    }
    let mut got = vec![
        String::from_utf8_lossy(&next_msg(&mut hellos).await.payload).into_owned(),
        String::from_utf8_lossy(&next_msg(&mut hellos).await.payload).into_owned(),
    ];
    got.sort();
    assert_eq!(got, ["hello from ws", "hello from wss"]);
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    eprintln!("screenshot: {}", screenshot.display());
}
