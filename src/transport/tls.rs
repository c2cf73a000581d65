//! TLS with rustls (ring provider): the listeners' server configs, the upstream client
//! config, and loading PEM files.
//!
//! Neither config changes once built. A configuration reload (SIGHUP, `src/reload.rs`)
//! loads every file again into new `ServerTls` and `ClientTls` values and swaps them in with
//! the rest of the listener's settings, so connections already established keep the config
//! they were accepted with and new ones get the new one. A reload that fails (a missing
//! file, a key that does not match its certificate) keeps the old config.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nats_edge_filters::filter::TlsPeer;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::ReadAhead;
use crate::config::{ClientAuth, HandshakeFirst, ListenerTls, UpstreamTls};

/// The first byte of every TLS record that starts a handshake (content type 22).
pub const HANDSHAKE_RECORD: u8 = 0x16;

/// TLS material that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file that did not load; `key` is the setting that names it, once known.
    #[error("{}{}: {reason}", key.map(|k| format!("{k} ")).unwrap_or_default(), path.display())]
    File {
        key: Option<&'static str>,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        key: None,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl TlsError {
    /// Names the setting (`cert_file`, `key_file`, ...) a file error is about.
    fn at(self, setting: &'static str) -> TlsError {
        match self {
            TlsError::File {
                key: None,
                path,
                reason,
            } => TlsError::File {
                key: Some(setting),
                path,
                reason,
            },
            other => other,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, in order (the leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, pem_reason(e)))?;
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The first private key in a PEM file: PKCS#8 (RSA, ECDSA, Ed25519), PKCS#1 (RSA) or
/// SEC1 (ECDSA).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, pem_reason(e)))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(e) if e.kind() == io::ErrorKind::NotFound => "not found".into(),
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => "no PRIVATE KEY in the file".into(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// A TLS listener's server config.
pub struct ServerTls {
    settings: ListenerTls,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    pub fn load(settings: &ListenerTls) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            config: Arc::new(build_server(settings)?),
            settings: settings.clone(),
        })
    }

    /// An acceptor for one connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }

    /// TLS before INFO (clients use `tls_first`), perhaps with a fallback to INFO first.
    pub fn handshake_first(&self) -> HandshakeFirst {
        self.settings.handshake_first
    }

    /// Whether every client must present a certificate (INFO `tls_verify`).
    pub fn verify_required(&self) -> bool {
        self.settings.client_ca_file.is_some()
            && self.settings.client_auth.unwrap_or(ClientAuth::Required) == ClientAuth::Required
    }
}

fn build_server(settings: &ListenerTls) -> Result<ServerConfig, TlsError> {
    let certs = load_certs(&settings.cert_file).map_err(|e| e.at("cert_file"))?;
    // nats-server staples OCSP for such a certificate (and refuses to start without a
    // status); the edge does not staple, and clients that honour the demand would refuse
    // every connection: say so now rather than serve it.
    if certs
        .first()
        .is_some_and(|leaf| super::cert::requires_ocsp_staple(leaf))
    {
        return Err(file_error(
            &settings.cert_file,
            "demands a stapled OCSP response (OCSP Must-Staple), which nats-edge does not \
             provide: use a certificate without the TLS Feature extension",
        )
        .at("cert_file"));
    }
    let key = load_key(&settings.key_file).map_err(|e| e.at("key_file"))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(load_roots(ca).map_err(|e| e.at("client_ca_file"))?);
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            if settings.client_auth == Some(ClientAuth::Optional) {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| file_error(ca, e).at("client_ca_file"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        file_error(
            &settings.key_file,
            format!("cannot be used with {}: {e}", settings.cert_file.display()),
        )
        .at("key_file")
    })?;
    if settings.client_ca_file.is_some() {
        // A resumed session carries the client certificate it was made with, unchecked: a
        // certificate that has expired since would go on naming its user. Each connection
        // shows its certificate afresh instead (NATS connections are long-lived: resumption
        // saves little).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(config)
}

/// What `/connz` shows of a client's TLS session, as nats-server's monitor shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSession {
    /// `1.2`, `1.3`.
    pub version: String,
    /// The IANA name, as Go's `tls.CipherSuiteName` gives it (`TLS_AES_128_GCM_SHA256`).
    pub cipher_suite: String,
    /// NATS over TLS that started with the handshake (`handshake_first`).
    pub first: bool,
    /// The client's certificate chain, leaf first.
    pub peer_certs: Vec<PeerCert>,
}

/// One certificate of a client's chain, as nats-server's `tls_peer_certs` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerCert {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo, hex.
    #[serde(rename = "spki_sha256", skip_serializing_if = "String::is_empty")]
    pub spki_sha256: String,
    /// SHA-256 of the whole certificate, hex.
    #[serde(rename = "cert_sha256")]
    pub cert_sha256: String,
}

/// The session's facts once its handshake is done; `first` when it started with TLS.
pub fn session_info(conn: &rustls::ServerConnection, first: bool) -> TlsSession {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => "1.2".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3".to_string(),
        Some(other) => format!("Unknown [0x{:x}]", u16::from(other)),
        None => String::new(),
    };
    let cipher_suite = conn
        .negotiated_cipher_suite()
        .map(|suite| {
            let id = suite.suite();
            match id.as_str() {
                // rustls names TLS 1.3's suites `TLS13_...`; their IANA names, Go's, are
                // `TLS_...`. TLS 1.2's are the IANA names already.
                Some(name) => match name.strip_prefix("TLS13_") {
                    Some(rest) => format!("TLS_{rest}"),
                    None => name.to_string(),
                },
                None => format!("0x{:04X}", u16::from(id)),
            }
        })
        .unwrap_or_default();
    let peer_certs = conn
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|cert| PeerCert {
            subject: super::cert::go_subject(cert).unwrap_or_default(),
            spki_sha256: super::cert::subject_public_key_info(cert)
                .map(sha256_hex)
                .unwrap_or_default(),
            cert_sha256: sha256_hex(cert),
        })
        .collect();
    TlsSession {
        version,
        cipher_suite,
        first,
        peer_certs,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The identity in the client's verified certificate, if it sent one.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<TlsPeer> {
    conn.peer_certificates()?
        .first()
        .map(|leaf| super::cert::identity(leaf))
}

/// Why a server-side handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("the client closed the connection before the TLS handshake")]
    ClosedEarly,
    #[error("the client speaks plain text (first byte {0:#04x}), not TLS: a plain NATS client on a TLS listener")]
    NotTls(u8),
    /// Classic TLS: the client read the INFO asking for TLS and left without starting it,
    /// as a plain client does that cannot do TLS (nats.py's "secure connection required").
    /// Not quiet like a close before any byte: nats-server logs it as a handshake error too.
    #[error("the client closed the connection after the INFO that requires TLS, without starting it: a plain NATS client on a TLS listener")]
    LeftAfterInfo,
    #[error("{0}")]
    Handshake(io::Error),
}

/// Runs the server side of a TLS handshake on `tcp`. The first byte is looked at first, so a
/// plain-text client is named as such instead of as a corrupt TLS record. On an HTTPS port
/// (`wss`), a plain HTTP request gets the answer Go's HTTP server in front of nats-server's
/// websocket listener gives it.
pub async fn accept(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    https: bool,
) -> Result<tokio_rustls::server::TlsStream<ReadAhead<TcpStream>>, AcceptError> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => return Err(AcceptError::ClosedEarly),
        Err(e) if is_reset(&e) => return Err(AcceptError::ClosedEarly),
        Ok(_) if first[0] != HANDSHAKE_RECORD => {
            if https {
                answer_plain_http(&tcp).await;
            }
            super::linger::discard_unread(&tcp);
            return Err(AcceptError::NotTls(first[0]));
        }
        Ok(_) => {}
        Err(e) => return Err(AcceptError::Handshake(e)),
    }
    acceptor
        .accept(ReadAhead::new(tcp))
        .await
        .map_err(AcceptError::Handshake)
}

/// The bytes that start a plain HTTP request, as Go's HTTP server tells them from a TLS
/// record (`tlsRecordHeaderLooksLikeHTTP`), and its answer to one.
const HTTP_STARTS: [&[u8; 5]; 5] = [b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO"];
const HTTP_ON_HTTPS: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Answers a plain HTTP request on an HTTPS port, as Go's HTTP server does; other plain
/// bytes get no answer. Best effort: the answer fits in any socket's send buffer.
async fn answer_plain_http(tcp: &TcpStream) {
    let mut start = [0u8; 5];
    if matches!(tcp.peek(&mut start).await, Ok(5))
        && HTTP_STARTS.contains(&&start)
        && tcp.writable().await.is_ok()
    {
        let _ = tcp.try_write(HTTP_ON_HTTPS);
    }
}

/// `handshake_first` with a fallback delay: waits up to `delay` for the client's first byte.
/// `true`: it spoke, so the TLS handshake comes first (whatever the byte is, as nats-server
/// does; [`accept`] names a plain-text client). `false`: it stayed silent, so the INFO goes
/// out in the clear and the classic upgrade follows. Nothing is consumed.
pub async fn client_speaks_within(tcp: &TcpStream, delay: Duration) -> Result<bool, AcceptError> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(delay, tcp.peek(&mut first)).await {
        Err(_) => Ok(false),
        Ok(Ok(0)) => Err(AcceptError::ClosedEarly),
        Ok(Err(e)) if is_reset(&e) => Err(AcceptError::ClosedEarly),
        Ok(Ok(_)) => Ok(true),
        Ok(Err(e)) => Err(AcceptError::Handshake(e)),
    }
}

/// A client that resets the connection before sending a byte has left, as one that closes
/// it has: a TCP health check that did not read the INFO of a classic TLS listener resets
/// rather than closes, since the kernel resets a socket closed with unread data.
pub(crate) fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// TLS toward the upstream.
pub struct ClientTls {
    settings: UpstreamTls,
    config: Arc<ClientConfig>,
}

impl ClientTls {
    pub fn load(settings: &UpstreamTls) -> Result<ClientTls, TlsError> {
        Ok(ClientTls {
            config: Arc::new(build_client(settings)?),
            settings: settings.clone(),
        })
    }

    /// A connector for one upstream connection.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.config.clone())
    }

    /// The name to verify the upstream's certificate against: the configured override, or
    /// the host of the URL dialled.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, io::Error> {
        let name = self.settings.server_name.as_deref().unwrap_or(host);
        ServerName::try_from(name.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{name}` is not a valid TLS server name"),
            )
        })
    }

    pub fn handshake_first(&self) -> bool {
        self.settings.handshake_first
    }
}

fn build_client(settings: &UpstreamTls) -> Result<ClientConfig, TlsError> {
    let roots = match &settings.ca_file {
        Some(ca) => load_roots(ca).map_err(|e| e.at("ca_file"))?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsError::Config(
                    "no CA certificates found on this system: set upstream.tls.ca_file".into(),
                ));
            }
            roots
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                load_certs(cert).map_err(|e| e.at("cert_file"))?,
                load_key(key).map_err(|e| e.at("key_file"))?,
            )
            .map_err(|e| {
                file_error(key, format!("cannot be used with {}: {e}", cert.display()))
                    .at("key_file")
            }),
        _ => Ok(builder.with_no_client_auth()),
    }
}
