//! WebSocket listeners: async-nats over ws:// and wss:// (publish, subscribe, request/reply
//! answered on the TCP side), raw frames (binary and text), the health-check answer, the
//! path, origins, cookies filling CONNECT, X-Forwarded-For from trusted proxies only, pings,
//! and permessage-deflate declined.

mod common;
mod transport_support;

use common::*;
use futures::{SinkExt, StreamExt};
use nats_edge::Edge;
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

    // A close frame ends the session like a TCP close.
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("the close", ws.next()).await {}
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
    let edge = ws_edge(&server, "ws = { ping_interval = \"50ms\" }").await;
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
