//! WebSocket listeners: async-nats over ws:// and wss:// (publish, subscribe, request/reply
//! answered on the TCP side), raw frames (binary and text), the health-check answer, the
//! path, origins, cookies filling CONNECT, X-Forwarded-For from trusted proxies only, pings,
//! and permessage-deflate: negotiated per offer and config, compressed messages both ways
//! (frames written by hand, as tungstenite's client does not compress), a decompression
//! bomb refused with 1009, the compressed bit without the extension refused with 1002.

mod common;
mod transport_support;

use std::net::SocketAddr;

use common::*;
use futures::{SinkExt, StreamExt};
use nats_edge::Edge;
use nats_edge_filters::CloseReason;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use transport_support::*;

type Ws = WebSocketStream<TcpStream>;

/// An edge with a `tcp` listener and a `ws` listener (with `ws_extra` in its table).
async fn ws_edge(server: &NatsServer, ws_extra: &str) -> Edge {
    start_edge_toml(&format!(
        "[[listeners]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\nkind = \"ws\"\n{ws_extra}\n\
         [upstream]\nurls = [{:?}]\n",
        server.url()
    ))
    .await
}

fn ws_url(edge: &Edge, path: &str) -> String {
    format!("ws://{}{path}", edge.addr("ws").unwrap())
}

/// Upgrades a raw connection with extra request headers.
async fn ws_connect(edge: &Edge, path: &str, headers: &[(&str, &str)]) -> (Ws, http::Response) {
    let mut request = ws_url(edge, path).into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let stream = tcp(edge.addr("ws").unwrap()).await;
    let (ws, response) = within(
        "the WebSocket upgrade",
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .expect("the upgrade succeeds");
    (ws, response)
}

mod http {
    pub use tokio_tungstenite::tungstenite::http::HeaderName;
    pub type Response = tokio_tungstenite::tungstenite::handshake::client::Response;
}

/// The next data frame's text; pings and pongs are skipped.
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let frame = within("a frame", ws.next())
            .await
            .expect("the connection ended")
            .expect("a valid frame");
        match frame {
            Message::Binary(b) => return String::from_utf8(b.to_vec()).unwrap(),
            Message::Text(t) => panic!("the edge sent a text frame: {t}"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads frames until their concatenation contains `needle`.
async fn read_until(ws: &mut Ws, needle: &str) -> String {
    let mut got = String::new();
    while !got.contains(needle) {
        got.push_str(&next_text(ws).await);
    }
    got
}

async fn info(ws: &mut Ws) -> serde_json::Value {
    let text = next_text(ws).await;
    let json = text
        .strip_prefix("INFO ")
        .and_then(|t| t.strip_suffix("\r\n"))
        .unwrap_or_else(|| panic!("expected one INFO frame, got {text:?}"));
    serde_json::from_str(json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_nats_over_ws_and_wss_with_a_tcp_responder() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let server = NatsServer::start();
    let edge = start_edge_toml(&format!(
        "[[listeners]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\nkind = \"ws\"\n\
         [[listeners]]\nname = \"wss\"\nbind = \"127.0.0.1:0\"\nkind = \"wss\"\n\
         tls = {{ cert_file = {}, key_file = {} }}\n\
         [upstream]\nurls = [{:?}]\n",
        toml_path(&cert.cert),
        toml_path(&cert.key),
        server.url()
    ))
    .await;

    let responder = client(&format!("nats://{}", edge.addr("tcp").unwrap())).await;
    let mut requests = responder.subscribe("svc.echo").await.unwrap();
    round_trip(&responder).await;
    let replier = responder.clone();
    tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            let reply = format!("echo: {}", String::from_utf8_lossy(&msg.payload));
            let _ = replier.publish(msg.reply.unwrap(), reply.into()).await;
        }
    });

    let ws = client(&format!("ws://{}", edge.addr("ws").unwrap())).await;
    let wss = within(
        "async-nats over wss",
        client_options()
            .add_root_certificates(ca.cert.clone())
            .connect(format!("wss://{}", edge.addr("wss").unwrap())),
    )
    .await
    .expect("wss connects");

    for (name, c) in [("ws", &ws), ("wss", &wss)] {
        let mut sub = c.subscribe(format!("from.tcp.{name}")).await.unwrap();
        round_trip(c).await;
        responder
            .publish(format!("from.tcp.{name}"), "to the browser".into())
            .await
            .unwrap();
        assert_eq!(next_msg(&mut sub).await.payload, "to the browser");

        let mut tcp_sub = responder.subscribe(format!("from.{name}")).await.unwrap();
        round_trip(&responder).await;
        c.publish(format!("from.{name}"), "from the browser".into())
            .await
            .unwrap();
        assert_eq!(next_msg(&mut tcp_sub).await.payload, "from the browser");

        let reply = within(
            "a request over the WebSocket",
            c.request("svc.echo", name.into()),
        )
        .await
        .expect("a reply");
        assert_eq!(reply.payload, format!("echo: {name}"));

        // A message larger than one read buffer, both ways.
        let big = vec![b'z'; 300 * 1024];
        let mut big_sub = responder.subscribe(format!("big.{name}")).await.unwrap();
        round_trip(&responder).await;
        c.publish(format!("big.{name}"), big.clone().into())
            .await
            .unwrap();
        assert_eq!(next_msg(&mut big_sub).await.payload.len(), big.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frames_binary_out_text_accepted_in() {
    let server = NatsServer::start();
    let edge = ws_edge(&server, "").await;
    let (mut ws, response) = ws_connect(&edge, "/", &[]).await;
    assert_eq!(response.status(), 101);
    let info = info(&mut ws).await;
    assert_eq!(info["client_ip"], "127.0.0.1");
    assert!(info.get("tls_required").is_none(), "{info}");
    assert_eq!(info["port"], edge.addr("ws").unwrap().port());

    ws.send(Message::text("CONNECT {\"verbose\":false}\r\nSUB t 1\r\n"))
        .await
        .unwrap();
    ws.send(Message::Binary("PUB t 2\r\nhi\r\nPING\r\n".into()))
        .await
        .unwrap();
    let got = read_until(&mut ws, "PONG\r\n").await;
    assert_eq!(got, "MSG t 1 2\r\nhi\r\nPONG\r\n");

    // A NATS op split across frames.
    ws.send(Message::Binary("PUB t 5\r\nhel".into()))
        .await
        .unwrap();
    ws.send(Message::Binary("lo\r\nPI".into())).await.unwrap();
    ws.send(Message::Binary("NG\r\n".into())).await.unwrap();
    assert_eq!(
        read_until(&mut ws, "PONG\r\n").await,
        "MSG t 1 5\r\nhello\r\nPONG\r\n"
    );

    // A close frame ends the session like a TCP close: the edge answers it, and the
    // session ends as closed by the client.
    ws.close(None).await.unwrap();
    let mut last = None;
    while let Some(Ok(m)) = within("the close", ws.next()).await {
        last = Some(m);
    }
    assert!(matches!(last, Some(Message::Close(_))), "{last:?}");
    within("the session's end", edge.shared().registry.until_empty()).await;
    assert_eq!(edge.metrics().closes(CloseReason::ClientClosed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_get_is_a_health_check() {
    let server = NatsServer::start();
    let edge = ws_edge(&server, "").await;
    let addr = edge.addr("ws").unwrap();
    let answer = http(
        tcp(addr).await,
        "GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
    let head = http(tcp(addr).await, "HEAD / HTTP/1.1\r\nHost: edge\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "{head}");
    let post = http(tcp(addr).await, "POST / HTTP/1.1\r\nHost: edge\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    // A refused HEAD (an upgrade asked with it) gets its status without a body.
    let head_upgrade = http(
        tcp(addr).await,
        "HEAD / HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(head_upgrade.starts_with("HTTP/1.1 405 "), "{head_upgrade}");
    assert!(head_upgrade.ends_with("\r\n\r\n"), "{head_upgrade}");
    // No session, no upstream connection.
    let m = edge.metrics();
    assert_eq!(m.connections_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_path() {
    let server = NatsServer::start();
    let edge = ws_edge(&server, "ws = { path = \"/nats\" }").await;
    let (mut ws, _) = ws_connect(&edge, "/nats", &[]).await;
    info(&mut ws).await;
    let request = ws_url(&edge, "/").into_client_request().unwrap();
    let refused =
        tokio_tungstenite::client_async(request, tcp(edge.addr("ws").unwrap()).await).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected a 404, got {other:?}"),
    }
    let client = client(&ws_url(&edge, "/nats")).await;
    round_trip(&client).await;
}

async fn upgrade_status(edge: &Edge, headers: &[(&str, &str)]) -> u16 {
    let mut request = ws_url(edge, "/").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let stream = tcp(edge.addr("ws").unwrap()).await;
    match within(
        "an upgrade",
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_and_same_origin() {
    let server = NatsServer::start();
    let edge = ws_edge(
        &server,
        "ws = { allowed_origins = [\"https://app.example.com\"] }",
    )
    .await;
    assert_eq!(
        upgrade_status(&edge, &[("Origin", "https://app.example.com")]).await,
        101
    );
    assert_eq!(
        upgrade_status(&edge, &[("Origin", "https://evil.example.com")]).await,
        403
    );
    assert_eq!(
        upgrade_status(&edge, &[("Origin", "http://app.example.com")]).await,
        403
    );
    // Not a browser: no Origin header, no origin check.
    assert_eq!(upgrade_status(&edge, &[]).await, 101);

    let edge = ws_edge(&server, "ws = { same_origin = true }").await;
    let host = edge.addr("ws").unwrap().to_string();
    let same = format!("http://{host}");
    assert_eq!(upgrade_status(&edge, &[("Origin", &same)]).await, 101);
    assert_eq!(
        upgrade_status(&edge, &[("Origin", "http://elsewhere:1")]).await,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_fill_an_empty_connect() {
    let server = NatsServer::start_with_config(
        "authorization {\n  users = [ { user: alice, password: s3cret } ]\n}\n",
    );
    let edge = ws_edge(
        &server,
        "ws = { user_cookie = \"nats_user\", pass_cookie = \"nats_pass\" }",
    )
    .await;

    let (mut ws, _) = ws_connect(
        &edge,
        "/",
        &[("Cookie", "theme=dark; nats_user=alice; nats_pass=s3cret")],
    )
    .await;
    assert_eq!(info(&mut ws).await["auth_required"], true);
    ws.send(Message::Binary(
        "CONNECT {\"verbose\":false}\r\nPING\r\n".into(),
    ))
    .await
    .unwrap();
    assert_eq!(read_until(&mut ws, "\r\n").await, "PONG\r\n");

    // Credentials in CONNECT win over cookies.
    let (mut ws, _) = ws_connect(
        &edge,
        "/",
        &[("Cookie", "nats_user=alice; nats_pass=s3cret")],
    )
    .await;
    info(&mut ws).await;
    ws.send(Message::Binary(
        "CONNECT {\"verbose\":false,\"user\":\"alice\",\"pass\":\"wrong\"}\r\nPING\r\n".into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        read_until(&mut ws, "\r\n").await,
        "-ERR 'Authorization Violation'\r\n"
    );

    // No cookies, no credentials.
    let (mut ws, _) = ws_connect(&edge, "/", &[]).await;
    info(&mut ws).await;
    ws.send(Message::Binary(
        "CONNECT {\"verbose\":false}\r\nPING\r\n".into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        read_until(&mut ws, "\r\n").await,
        "-ERR 'Authorization Violation'\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_jwt_cookies() {
    let server = NatsServer::start_with_config("authorization {\n  token: \"t0ken\"\n}\n");
    let edge = ws_edge(
        &server,
        "ws = { token_cookie = \"tok\", jwt_cookie = \"jwt\" }",
    )
    .await;
    let (mut ws, _) = ws_connect(&edge, "/", &[("Cookie", "tok=t0ken")]).await;
    info(&mut ws).await;
    ws.send(Message::Binary(
        "CONNECT {\"verbose\":false}\r\nPING\r\n".into(),
    ))
    .await
    .unwrap();
    assert_eq!(read_until(&mut ws, "\r\n").await, "PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_only_from_trusted_proxies() {
    let server = NatsServer::start();
    let trusted = ws_edge(&server, "ws = { trusted_proxies = [\"127.0.0.1\"] }").await;
    let (mut ws, _) = ws_connect(
        &trusted,
        "/",
        &[("X-Forwarded-For", "203.0.113.50, 198.51.100.7")],
    )
    .await;
    assert_eq!(info(&mut ws).await["client_ip"], "198.51.100.7");

    let untrusted = ws_edge(&server, "ws = { trusted_proxies = [\"10.0.0.0/8\"] }").await;
    let (mut ws, _) = ws_connect(&untrusted, "/", &[("X-Forwarded-For", "198.51.100.7")]).await;
    assert_eq!(info(&mut ws).await["client_ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_no_compression() {
    let server = NatsServer::start();
    let edge = ws_edge(
        &server,
        "ws = { ping_interval = \"1s\", compression = false }",
    )
    .await;
    let (mut ws, response) = ws_connect(
        &edge,
        "/",
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    )
    .await;
    assert!(
        response.headers().get("sec-websocket-extensions").is_none(),
        "{response:?}"
    );
    info(&mut ws).await;
    let ping = within("a WebSocket ping", async {
        loop {
            if let Message::Ping(p) = ws.next().await.unwrap().unwrap() {
                return p;
            }
        }
    })
    .await;
    assert!(ping.is_empty());
    // The session goes on after pings (tungstenite answers them with pongs).
    ws.send(Message::Binary("CONNECT {}\r\nPING\r\n".into()))
        .await
        .unwrap();
    assert_eq!(read_until(&mut ws, "PONG\r\n").await, "+OK\r\nPONG\r\n");
}

/// A raw upgrade, offering `extensions`: the stream and the response head.
async fn raw_upgrade(edge: &Edge, extensions: Option<&str>) -> (TcpStream, String) {
    raw_upgrade_at(edge.addr("ws").unwrap(), extensions).await
}

async fn raw_upgrade_at(addr: SocketAddr, extensions: Option<&str>) -> (TcpStream, String) {
    raw_upgrade_over(tcp(addr).await, extensions).await
}

async fn raw_upgrade_over(mut stream: TcpStream, extensions: Option<&str>) -> (TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let offer = extensions.map_or(String::new(), |e| {
        format!("Sec-WebSocket-Extensions: {e}\r\n")
    });
    let request = format!(
        "GET / HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Byte by byte up to the blank line, so no frame byte is read with the head.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = within("the upgrade response", stream.read_u8())
            .await
            .unwrap();
        head.push(b);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (stream, head)
}

fn extensions_header(head: &str) -> Option<&str> {
    head.lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
}

/// A masked client frame; `rsv1` marks a compressed message.
fn frame(opcode: u8, rsv1: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode | if rsv1 { 0x40 } else { 0 }];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else if payload.len() <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Raw deflate of one message, its trailing `00 00 ff ff` removed (RFC 7692 7.2.1). At the
/// best level, so a bomb is as small as it can be.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() + 128);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .unwrap();
    out
}

/// The next server frame: (first byte, payload).
async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    within("a frame", async {
        let mut h = [0u8; 2];
        stream.read_exact(&mut h).await.unwrap();
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7f {
            126 => u64::from(stream.read_u16().await.unwrap()),
            127 => stream.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).await.unwrap();
        (h[0], payload)
    })
    .await
}

/// Data frames, inflated when compressed, until their text holds `needle`; also whether
/// any of them came compressed.
async fn read_data_until(stream: &mut TcpStream, needle: &str) -> (String, bool) {
    let mut got = String::new();
    let mut compressed = false;
    while !got.contains(needle) {
        let (b0, payload) = read_frame(stream).await;
        match b0 & 0x0f {
            0x2 => {}
            0x9 | 0xA => continue,
            op => panic!("unexpected opcode {op:#x} waiting for {needle:?} after {got:?}"),
        }
        let bytes = if b0 & 0x40 != 0 {
            compressed = true;
            inflate(&payload)
        } else {
            payload
        };
        got.push_str(&String::from_utf8(bytes).unwrap());
    }
    (got, compressed)
}

/// The close code of the next close frame, data frames skipped.
async fn close_code(stream: &mut TcpStream) -> u16 {
    loop {
        let (b0, payload) = read_frame(stream).await;
        if b0 & 0x0f == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_negotiation() {
    let server = NatsServer::start();
    let answer = Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    let on = ws_edge(&server, "ws = { compression = true }").await;
    let (_, head) = raw_upgrade(&on, Some("permessage-deflate; client_max_window_bits")).await;
    assert_eq!(extensions_header(&head), answer, "{head}");
    let (_, head) = raw_upgrade(
        &on,
        Some("permessage-deflate; server_max_window_bits=10, permessage-deflate"),
    )
    .await;
    assert_eq!(extensions_header(&head), answer, "{head}");
    // An offer the edge cannot honour is declined; the upgrade goes on.
    let (_, head) = raw_upgrade(&on, Some("permessage-deflate; server_max_window_bits=9")).await;
    assert_eq!(extensions_header(&head), None, "{head}");
    let (_, head) = raw_upgrade(&on, None).await;
    assert_eq!(extensions_header(&head), None, "{head}");

    // Off by default, as nats-server's.
    for off in ["", "ws = { compression = false }"] {
        let off = ws_edge(&server, off).await;
        let (_, head) = raw_upgrade(&off, Some("permessage-deflate")).await;
        assert_eq!(extensions_header(&head), None, "{head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_both_ways() {
    use tokio::io::AsyncWriteExt;
    let server = NatsServer::start();
    let edge = ws_edge(&server, "ws = { compression = true }").await;
    let (mut ws, _) = raw_upgrade(&edge, Some("permessage-deflate; client_max_window_bits")).await;
    let (info, _) = read_data_until(&mut ws, "} \r\n").await;
    assert!(info.starts_with("INFO {"), "{info}");

    let hello = deflate(b"CONNECT {\"verbose\":false}\r\nSUB orders.> 1\r\nPING\r\n");
    ws.write_all(&frame(0x2, true, &hello)).await.unwrap();
    read_data_until(&mut ws, "PONG\r\n").await;

    // A compressed PUB in two frames; the MSG comes back compressed.
    let payload = "{\"item\":\"widget\",\"qty\":1}".repeat(40);
    let publish = deflate(format!("PUB orders.new {}\r\n{payload}\r\n", payload.len()).as_bytes());
    let (a, b) = publish.split_at(publish.len() / 2);
    let mut first = frame(0x2, true, a);
    first[0] &= 0x7f; // not the last frame
    let second = frame(0x0, false, b);
    ws.write_all(&first).await.unwrap();
    ws.write_all(&second).await.unwrap();
    let want = format!("MSG orders.new 1 {}\r\n{payload}\r\n", payload.len());
    let (got, compressed) = read_data_until(&mut ws, &want).await;
    assert_eq!(got, want);
    assert!(compressed, "the MSG came uncompressed");

    // An uncompressed message on the same connection is read as it is.
    ws.write_all(&frame(0x2, false, b"PING\r\n")).await.unwrap();
    read_data_until(&mut ws, "PONG\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bomb_and_stray_compressed_bit() {
    use tokio::io::AsyncWriteExt;
    let server = NatsServer::start();
    let edge = ws_edge(
        &server,
        "ws = { max_message_size = \"64KiB\", compression = true }",
    )
    .await;
    let (mut ws, _) = raw_upgrade(&edge, Some("permessage-deflate")).await;
    read_data_until(&mut ws, "} \r\n").await;
    // 16 MiB of PINGs in a few KiB: refused once 64 KiB have inflated.
    let bomb = b"PING\r\n".repeat((16 << 20) / 6);
    let bomb = deflate(&bomb);
    assert!(bomb.len() < 64 * 1024);
    ws.write_all(&frame(0x2, true, &bomb)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1009);

    // Without the extension the compressed bit is a protocol error.
    let (mut ws, head) = raw_upgrade(&edge, None).await;
    assert_eq!(extensions_header(&head), None);
    read_data_until(&mut ws, "} \r\n").await;
    ws.write_all(&frame(0x2, true, &deflate(b"PING\r\n")))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, 1002);
}

/// A client's close frame is answered as nats-server's websocket port answers it: its
/// status and reason echoed, an empty close with an empty one, a reason that is not UTF-8
/// with 1007 and nats-server's text. Sent to both, compared byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_frames_are_answered_as_nats_server_answers_them() {
    use tokio::io::AsyncWriteExt;
    let server = NatsServer::start_with_config(
        "websocket {\n  listen: \"127.0.0.1:-1\"\n  no_tls: true\n}\n",
    );
    let direct = SocketAddr::from(([127, 0, 0, 1], server.websocket_port()));
    let edge = ws_edge(&server, "").await;
    let edge_addr = edge.addr("ws").unwrap();
    let bodies: [&[u8]; 3] = [b"\x03\xE9bye", b"", b"\x03\xE8\xff\xfe"];
    for body in bodies {
        let mut replies = Vec::new();
        for addr in [direct, edge_addr] {
            let (mut ws, _) = raw_upgrade_at(addr, None).await;
            read_data_until(&mut ws, "} \r\n").await;
            ws.write_all(&frame(0x8, false, body)).await.unwrap();
            replies.push(read_frame(&mut ws).await);
        }
        assert_eq!(
            replies[0], replies[1],
            "close body {body:?}: nats-server, then the edge"
        );
        assert_eq!(replies[0].0, 0x88);
    }
}

/// An edge with a `ws` listener whose only upstream accepts and never says a word, so that
/// every session stays in its dial (for up to 30 s).
async fn ws_edge_before_a_silent_upstream() -> (tokio::net::TcpListener, Edge) {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge = start_edge_toml(&format!(
        "[[listeners]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\nkind = \"ws\"\n\
         [upstream]\nurls = [\"nats://{}\"]\nconnect_timeout = \"30s\"\n",
        silent.local_addr().unwrap()
    ))
    .await;
    (silent, edge)
}

/// A shutdown while the upstream is still being dialled for a WebSocket client closes it at
/// once, with nats-server's close frame for a shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_the_dial_sends_the_close_frame() {
    let (silent, edge) = ws_edge_before_a_silent_upstream().await;
    let (mut ws, _) = raw_upgrade(&edge, None).await;
    let (_dialled, _) = within("the edge's dial", silent.accept()).await.unwrap();
    within_for(
        std::time::Duration::from_secs(3),
        "edge shutdown",
        edge.shutdown(),
    )
    .await;
    assert_eq!(
        close_frame(&mut ws).await,
        (1001, "Server Shutdown".to_string())
    );
}

/// The close frame and its payload, skipping data frames before it.
async fn close_frame(stream: &mut TcpStream) -> (u16, String) {
    loop {
        let (b0, payload) = read_frame(stream).await;
        if b0 & 0x0f == 0x8 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
        }
    }
}

/// When the edge ends a WebSocket session, its close frame says why, with nats-server's
/// status and text: a client that sent no CONNECT in time (to a server that asks for auth),
/// one cut off by a shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_close_frame_says_why_like_nats_server() {
    use tokio::io::AsyncWriteExt;
    let server = NatsServer::start_with_args(&["--user", "u", "--pass", "p"]);
    let edge = ws_edge(&server, "[limits]\nhandshake_timeout = \"1s\"").await;
    let (mut silent, _) = raw_upgrade(&edge, None).await;
    assert_eq!(
        close_frame(&mut silent).await,
        (1008, "Authentication Timeout".to_string())
    );

    let (mut ws, _) = raw_upgrade(&edge, None).await;
    let hello = b"CONNECT {\"verbose\":false,\"user\":\"u\",\"pass\":\"p\"}\r\nPING\r\n";
    ws.write_all(&frame(0x2, false, hello)).await.unwrap();
    read_data_until(&mut ws, "PONG\r\n").await;
    let shutdown = tokio::spawn(edge.shutdown());
    assert_eq!(
        close_frame(&mut ws).await,
        (1001, "Server Shutdown".to_string())
    );
    shutdown.await.unwrap();
}

/// An upstream that refuses a WebSocket client's credentials sends `-ERR 'Authorization
/// Violation'` and closes; the client then gets the close frame nats-server would have sent
/// it directly (1008 `Authentication Failure`), not that of a server going away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_refusal_closes_with_nats_servers_frame() {
    use tokio::io::AsyncWriteExt;
    let server = NatsServer::start_with_args(&["--user", "app", "--pass", "right"]);
    let edge = ws_edge(&server, "").await;
    let (mut ws, _) = raw_upgrade(&edge, None).await;
    read_data_until(&mut ws, "} \r\n").await;
    let hello = b"CONNECT {\"verbose\":false,\"user\":\"app\",\"pass\":\"wrong\"}\r\nPING\r\n";
    ws.write_all(&frame(0x2, false, hello)).await.unwrap();
    read_data_until(&mut ws, "-ERR 'Authorization Violation'\r\n").await;
    assert_eq!(
        close_frame(&mut ws).await,
        (1008, "Authentication Failure".to_string())
    );
}

/// Past the listener's `max_connections`, a WebSocket client gets the INFO and nats-server's
/// `-ERR` in frames, then nats-server's close frame for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_gets_the_close_frame_nats_server_sends() {
    let server = NatsServer::start();
    let edge = ws_edge(&server, "max_connections = 1").await;
    let (mut kept, _) = raw_upgrade(&edge, None).await;
    read_data_until(&mut kept, "} \r\n").await;
    let (mut refused, _) = raw_upgrade(&edge, None).await;
    read_data_until(&mut refused, "-ERR 'maximum connections exceeded'\r\n").await;
    assert_eq!(
        close_frame(&mut refused).await,
        (1008, "Maximum Connections Exceeded".to_string())
    );
}

/// A WebSocket client that leaves while its upstream is still being dialled (a browser tab
/// closed during an upstream outage) ends the dial, as a TCP client does, rather than holding
/// its slot and an upstream connection for the whole connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ws_client_that_leaves_ends_the_dial() {
    use tokio::io::AsyncReadExt;
    let (silent, edge) = ws_edge_before_a_silent_upstream().await;
    let (client, _) = raw_upgrade(&edge, None).await;
    let (mut dialled, _) = within("the edge dials the upstream", silent.accept())
        .await
        .unwrap();
    drop(client);
    let mut byte = [0u8; 1];
    let read = within("the edge closes the dial", dialled.read(&mut byte)).await;
    assert_eq!(read.unwrap(), 0, "the dial is closed, not written to");
}

/// A request head over 32 KiB (large cookies) gets nats-server's 431, read in full by the
/// client: the rest of the head it had sent does not turn the close into a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_its_431() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = NatsServer::start();
    let edge = ws_edge(&server, "").await;
    let mut stream = tcp(edge.addr("ws").unwrap()).await;
    let cookie = format!("Cookie: big={}\r\n", "c".repeat(1000));
    let head = format!(
        "GET / HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{}\r\n",
        cookie.repeat(64)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    within("the refusal", stream.read_to_end(&mut response))
        .await
        .expect("the refusal is read, not reset");
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{response}"
    );
}

/// nats.go refuses a frame over 8 times the `max_payload` of its INFO ("websocket frame too
/// large"): a burst of messages for a client told 1 KiB comes in frames of 8 KiB at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_held_to_eight_times_the_max_payload() {
    use tokio::io::AsyncWriteExt;
    let server = NatsServer::start_with_config("max_payload: 1024\n");
    let edge = ws_edge(&server, "").await;
    // A 4 KiB receive window: the edge's writes stall at once, so what nats-server delivers
    // meanwhile queues at the edge and leaves in batches far larger than a frame may be.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = within("connecting", socket.connect(edge.addr("ws").unwrap()))
        .await
        .unwrap();
    let (mut ws, _) = raw_upgrade_over(stream, None).await;
    let (info, _) = read_data_until(&mut ws, "} \r\n").await;
    assert!(info.contains("\"max_payload\":1024"), "{info}");
    ws.write_all(&frame(
        0x2,
        false,
        b"CONNECT {\"verbose\":false}\r\nSUB burst 1\r\nPING\r\n",
    ))
    .await
    .unwrap();
    read_data_until(&mut ws, "PONG\r\n").await;
    // 128 KiB of messages in one frame, then a PING; nothing is read meanwhile.
    let message = format!("PUB burst 1000\r\n{}\r\n", "x".repeat(1000));
    let mut burst = message.repeat(128);
    burst.push_str("PING\r\n");
    ws.write_all(&frame(0x2, false, burst.as_bytes()))
        .await
        .unwrap();
    let mut got = String::new();
    let mut largest = 0;
    while !got.ends_with("PONG\r\n") {
        let (b0, payload) = read_frame(&mut ws).await;
        assert_eq!(b0 & 0x0f, 0x2, "a data frame");
        largest = largest.max(payload.len());
        assert!(
            payload.len() <= 8 * 1024,
            "a frame of {} bytes",
            payload.len()
        );
        got.push_str(&String::from_utf8(payload).unwrap());
    }
    assert_eq!(got.matches("MSG burst 1 1000\r\n").count(), 128);
    assert!(
        largest > 4 * 1024,
        "frames of {largest} bytes at most: no batch was framed"
    );
}
