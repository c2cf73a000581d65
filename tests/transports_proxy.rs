//! The PROXY protocol: headers a load balancer puts in front of a client connection (v1 and
//! v2, in front of TCP, TLS and WebSocket), and the header the edge sends to nats-server so
//! the real client's address shows in the server's own monitoring.

mod common;
mod transport_support;

use common::*;
use nats_edge::transport::proxy_protocol::{encode_v1, encode_v2, ProxyAddrs, V2_SIGNATURE};
use tokio::io::AsyncWriteExt;
use transport_support::*;

fn addrs(src: &str, dst: &str) -> ProxyAddrs {
    ProxyAddrs {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
    }
}

async fn proxy_edge(server: &NatsServer, listener_extra: &str, extra: &str) -> nats_edge::Edge {
    start_edge_toml(&edge_toml(
        &[server.url()],
        &format!("proxy_protocol = true\n{listener_extra}"),
        extra,
    ))
    .await
}

/// Sends `header` on a new connection to the edge and returns the INFO's client_ip, after
/// checking the connection then works.
async fn client_ip_after(edge: &nats_edge::Edge, header: &[u8]) -> String {
    let mut raw = RawConn::connect(edge_addr(edge)).await;
    raw.send(header).await;
    let info = raw.read_info().await;
    assert!(!raw.roundtrip(b"CONNECT {}\r\n").await.closed);
    info["client_ip"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_headers_name_the_client() {
    let server = NatsServer::start();
    let edge = proxy_edge(&server, "", "").await;
    let v4 = addrs("203.0.113.9:40000", "192.0.2.1:4222");
    let v6 = addrs("[2001:db8::9]:40000", "[2001:db8::1]:4222");
    assert_eq!(
        client_ip_after(&edge, &encode_v1(Some(v4))).await,
        "203.0.113.9"
    );
    assert_eq!(
        client_ip_after(&edge, &encode_v1(Some(v6))).await,
        "2001:db8::9"
    );
    assert_eq!(
        client_ip_after(&edge, &encode_v2(Some(v4))).await,
        "203.0.113.9"
    );
    assert_eq!(
        client_ip_after(&edge, &encode_v2(Some(v6))).await,
        "2001:db8::9"
    );
    // An IPv4 client written as IPv6-mapped is shown as nats-server shows it, as IPv4.
    assert_eq!(
        client_ip_after(
            &edge,
            b"PROXY TCP6 ::ffff:203.0.113.9 2001:db8::1 40000 4222\r\n"
        )
        .await,
        "203.0.113.9"
    );

    // A header with TLVs after the addresses (as AWS and others send).
    let mut with_tlv = encode_v2(Some(v4));
    let extra = [0x04, 0x00, 0x03, b'a', b'b', b'c'];
    let len = u16::from_be_bytes([with_tlv[14], with_tlv[15]]) + extra.len() as u16;
    with_tlv[14..16].copy_from_slice(&len.to_be_bytes());
    with_tlv.extend_from_slice(&extra);
    assert_eq!(client_ip_after(&edge, &with_tlv).await, "203.0.113.9");

    // The header in pieces, one byte at a time.
    let mut raw = RawConn::connect(edge_addr(&edge)).await;
    for b in encode_v1(Some(v4)) {
        raw.send(&[b]).await;
    }
    assert_eq!(raw.read_info().await["client_ip"], "203.0.113.9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_unknown_headers_keep_the_socket_peer() {
    let server = NatsServer::start();
    let edge = proxy_edge(&server, "", "").await;
    assert_eq!(
        client_ip_after(&edge, b"PROXY UNKNOWN\r\n").await,
        "127.0.0.1"
    );
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    assert_eq!(client_ip_after(&edge, &local).await, "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_in_front_of_tls_and_websocket() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let cert = pki.leaf(&ca, "server", Leaf::server("edge"));
    let server = NatsServer::start();
    let v4 = addrs("203.0.113.9:40000", "192.0.2.1:4222");

    // TLS first: the ClientHello right behind the header.
    let edge = proxy_edge(
        &server,
        &format!(
            "kind = \"tls\"\ntls = {{ cert_file = {}, key_file = {}, handshake_first = true }}",
            toml_path(&cert.cert),
            toml_path(&cert.key)
        ),
        "",
    )
    .await;
    let mut stream = tcp(edge_addr(&edge)).await;
    stream.write_all(&encode_v2(Some(v4))).await.unwrap();
    let tls = tls_over(stream, client_config(&ca.cert, None))
        .await
        .unwrap();
    let mut raw = Raw::new(tls);
    assert_eq!(raw.read_info().await["client_ip"], "203.0.113.9");
    assert!(raw.connect_and_ping().await);

    // WebSocket: the HTTP upgrade behind the header.
    let edge = proxy_edge(&server, "kind = \"ws\"", "").await;
    let mut stream = tcp(edge_addr(&edge)).await;
    stream.write_all(&encode_v1(Some(v4))).await.unwrap();
    let url = format!("ws://{}/", edge_addr(&edge));
    let (mut ws, _) = within(
        "the WebSocket upgrade",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .unwrap();
    use futures::StreamExt;
    let first = within("the INFO frame", ws.next()).await.unwrap().unwrap();
    let text = String::from_utf8(first.into_data().to_vec()).unwrap();
    assert!(text.contains("\"client_ip\":\"203.0.113.9\""), "{text}");
}

/// nats-server accepting PROXY headers, with its monitoring port.
fn proxied_server() -> (NatsServer, u16) {
    server_with_monitor("proxy_protocol: true\n")
}

fn only_connection(connz: &serde_json::Value) -> &serde_json::Value {
    let conns = connz["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{connz}");
    &conns[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_sees_the_real_client() {
    // An IPv4 client, and an IPv6 one: the edge's own address (127.0.0.1) is then of the
    // other family, which the header sent upstream must still carry in one.
    for (client_addr, client_ip) in [
        ("203.0.113.9:40000", "203.0.113.9"),
        ("[2001:db8::9]:40000", "2001:db8::9"),
    ] {
        for version in ["v1", "v2"] {
            let (server, monitor) = proxied_server();
            let edge = start_edge_toml(&edge_toml(
                &[server.url()],
                "proxy_protocol = true",
                &format!("proxy_protocol = {version:?}"),
            ))
            .await;
            // Behind a load balancer that names the client.
            let mut raw = RawConn::connect(edge_addr(&edge)).await;
            let balancer = if client_addr.starts_with('[') {
                addrs(client_addr, "[2001:db8::1]:4222")
            } else {
                addrs(client_addr, "192.0.2.1:4222")
            };
            raw.send(&encode_v2(Some(balancer))).await;
            let info = raw.read_info().await;
            assert_eq!(info["client_ip"], client_ip);
            assert!(
                !raw.roundtrip(b"CONNECT {\"name\":\"proxied\"}\r\n")
                    .await
                    .closed
            );
            let connz = connz(monitor).await;
            let conn = only_connection(&connz);
            assert_eq!(conn["ip"], client_ip, "{version}: {conn}");
            assert_eq!(conn["port"], 40000, "{version}: {conn}");
            assert_eq!(conn["name"], "proxied", "{version}: {conn}");
        }
    }
}

/// The header the edge sends for a connection of its own (its readiness check): nats-server
/// accepts it and keeps the socket's own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edges_own_connection_names_no_client() {
    for header in [encode_v1(None), encode_v2(None)] {
        let (server, monitor) = proxied_server();
        let mut raw = RawConn::connect(server.addr()).await;
        raw.send(&header).await;
        raw.read_info().await;
        let reply = raw.roundtrip(b"CONNECT {\"name\":\"own\"}\r\n").await;
        assert!(!reply.closed, "{}", reply.text());
        let connz = connz(monitor).await;
        let conn = only_connection(&connz);
        assert_eq!(conn["ip"], "127.0.0.1", "{conn}");
        assert_eq!(conn["name"], "own", "{conn}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_sees_a_direct_client_and_async_nats_works() {
    let (server, monitor) = proxied_server();
    let edge = start_edge(&[server.url()], "proxy_protocol = \"v2\"").await;
    let mut raw = RawConn::connect(edge_addr(&edge)).await;
    let client_port = raw.stream().local_addr().unwrap().port();
    raw.read_info().await;
    assert!(!raw.roundtrip(b"CONNECT {}\r\n").await.closed);
    let connz = connz(monitor).await;
    let conn = only_connection(&connz);
    assert_eq!(conn["ip"], "127.0.0.1", "{conn}");
    assert_eq!(conn["port"], client_port, "{conn}");

    let client = client(&edge_url(&edge)).await;
    let mut sub = client.subscribe("pp").await.unwrap();
    client.publish("pp", "x".into()).await.unwrap();
    next_msg(&mut sub).await;
}

/// A nats-server without `proxy_protocol: true` reads the header as NATS and closes the
/// connection: with authorization on, as `Authorization Violation`, which nats.go takes for
/// final after two in a row. Its INFO names the edge's own address as `client_ip` where the
/// header named the client, so the edge fails the dial with the reason. Another nats-edge
/// reading PROXY headers names the header's client, and works as an upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_read_proxy_headers_is_unavailable() {
    let server = NatsServer::start_with_config("authorization { user: a, password: b }\n");
    let behind_a_balancer = addrs("203.0.113.9:40000", "192.0.2.1:4222");
    for version in ["v1", "v2"] {
        let edge = start_edge_toml(&edge_toml(
            &[format!("nats://a:b@{}", server.addr())],
            "proxy_protocol = true",
            &format!("proxy_protocol = {version:?}"),
        ))
        .await;
        let mut raw = RawConn::connect(edge_addr(&edge)).await;
        raw.send(&encode_v2(Some(behind_a_balancer))).await;
        let got = raw.read_to_close().await;
        let (info, rest) = split_info(&got);
        assert_eq!(info["client_ip"], "203.0.113.9", "{version}");
        assert_eq!(
            String::from_utf8_lossy(rest),
            "-ERR 'Upstream Unavailable: PROXY protocol not enabled'\r\n",
            "{version}"
        );

        // The same header through a second edge that reads it, in front of that server.
        let second = start_edge_toml(&edge_toml(
            &[format!("nats://a:b@{}", server.addr())],
            "proxy_protocol = true",
            "",
        ))
        .await;
        let first = start_edge_toml(&edge_toml(
            &[edge_url(&second)],
            "proxy_protocol = true",
            &format!("proxy_protocol = {version:?}"),
        ))
        .await;
        let mut raw = RawConn::connect(edge_addr(&first)).await;
        raw.send(&encode_v2(Some(behind_a_balancer))).await;
        let info = raw.read_info().await;
        assert_eq!(info["client_ip"], "203.0.113.9", "{version}");
        let reply = raw.roundtrip(b"CONNECT {\"verbose\":false}\r\n").await;
        assert!(!reply.closed, "{version}: {}", reply.text());
    }
}
