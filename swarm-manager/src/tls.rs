//! mTLS for every swarm port: rustls configs rooted in the cluster CA, a reloadable
//! server certificate, a TLS accept stream for tonic servers, TLS channels for tonic
//! clients, and the caller identity handlers authorize with.
//!
//! TLS only authenticates: client certificates are optional at the TLS layer (a joining
//! node has none yet) but always verified against the root when presented. Each gRPC
//! handler authorizes with [`caller_identity`].

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::ca::{self, NodeIdentity};

/// The server name every manager certificate carries and every client checks.
pub const SERVER_NAME: &str = ca::MANAGER_OU;

const ALPN_H2: &[u8] = b"h2";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const FWD_NODE_ID: &str = "x-swarm-fwd-node-id";
const FWD_ROLE: &str = "x-swarm-fwd-role";
const FWD_CLUSTER: &str = "x-swarm-fwd-cluster";
const FWD_NOT_BEFORE: &str = "x-swarm-fwd-not-before";
const FWD_NOT_AFTER: &str = "x-swarm-fwd-not-after";
/// Set by a forwarding manager when the original caller presented no certificate.
const FWD_ANONYMOUS: &str = "x-swarm-fwd-anonymous";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid PEM in the {what}: {why}")]
    Pem { what: &'static str, why: String },
    #[error("no certificate found in the {0}; pass a PEM with at least one CERTIFICATE block")]
    NoCertificate(&'static str),
    #[error(
        "unusable private key: {0}; pass the PEM (PKCS#8, SEC1 or PKCS#1) key of the certificate"
    )]
    Key(String),
    #[error("the private key does not belong to the certificate; pass the key generated with the certificate's CSR")]
    KeyMismatch,
    #[error("invalid root CA certificate: {0}")]
    Root(String),
    #[error("TLS configuration failed: {0}")]
    Config(String),
}

/// The ring provider, also installed as the process default (idempotent).
fn provider() -> Arc<CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Key(e.to_string()))
}

fn root_store(root_ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(root_ca_pem, "root CA certificate")? {
        roots.add(cert).map_err(|e| TlsError::Root(e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = parse_certs(cert_pem, "node certificate")?;
    let key = parse_key(key_pem)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let ck = CertifiedKey::new(certs, signer);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch)
        }
        Err(e) => return Err(TlsError::Key(e.to_string())),
    }
    Ok(Arc::new(ck))
}

/// Server certificate that can be swapped at run time (renewal, promotion) without restarting the listener.
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableCert").finish_non_exhaustive()
    }
}

impl ReloadableCert {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(ReloadableCert {
            current: RwLock::new(certified_key(cert_pem, key_pem)?),
        }))
    }

    /// Serves `cert_pem`/`key_pem` from the next handshake on; the old pair stays on error.
    pub fn update(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let ck = certified_key(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = ck;
        Ok(())
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The roots client certificates are verified against, swappable at run time: a root
/// rotation adds the new root, then retires the old one, without restarting the listener.
pub struct ReloadableTrust {
    current: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for ReloadableTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableTrust").finish_non_exhaustive()
    }
}

impl ReloadableTrust {
    /// Trusts the root certificates in `root_ca_pem` (one or more).
    pub fn new(root_ca_pem: &str) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(ReloadableTrust {
            current: RwLock::new(client_verifier(root_ca_pem)?),
        }))
    }

    /// Verifies client certificates against `root_ca_pem` from the next handshake on; the
    /// old roots stay on error.
    pub fn update(&self, root_ca_pem: &str) -> Result<(), TlsError> {
        let v = client_verifier(root_ca_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = v;
        Ok(())
    }

    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn client_verifier(root_ca_pem: &str) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(root_store(root_ca_pem)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

impl ClientCertVerifier for ReloadableTrust {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: they would have to outlive a swap of the roots. Nodes hold one
    /// certificate and present it anyway.
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

/// mTLS server config: client certificates OPTIONAL at the TLS layer (joining nodes have none) but, when presented, verified against root_ca_pem; each handler authorizes. ALPN "h2".
pub fn server_config(
    root_ca_pem: &str,
    cert: Arc<ReloadableCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_trust(ReloadableTrust::new(root_ca_pem)?, cert)
}

/// Like [`server_config`], with roots that can be swapped at run time.
pub fn server_config_with_trust(
    trust: Arc<ReloadableTrust>,
    cert: Arc<ReloadableCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(trust)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(cfg))
}

/// Client config trusting only the cluster root; presents the node certificate when given. Server name checked: "swarm-manager". ALPN "h2".
pub fn client_config(
    root_ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(root_store(root_ca_pem)?);
    let mut cfg = match identity {
        Some((cert_pem, key_pem)) => {
            // Checks that the key belongs to the certificate before rustls takes them.
            certified_key(cert_pem, key_pem)?;
            builder
                .with_client_auth_cert(
                    parse_certs(cert_pem, "node certificate")?,
                    parse_key(key_pem)?,
                )
                .map_err(|e| TlsError::Key(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(cfg))
}

/// For a joining node that does not know the root CA yet: accepts any server certificate. The caller MUST check the fetched root CA against the join token's digest.
pub fn insecure_client_config() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(AcceptAnyServerCert {
        provider: provider.clone(),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports rustls' default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(cfg)
}

/// Skips the certificate chain check but still checks the handshake signatures.
#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The ALPN protocol a manager's Raft client offers after h2 (the server still picks h2, and
/// a server that does not know this one ignores it). It marks the connection as Raft's in
/// the ClientHello, which the accept loop reads before any handshake: [`incoming_split`].
pub const ALPN_RAFT: &[u8] = b"swarm-raft";

/// `cfg` for the connections Raft opens to other managers: it also offers [`ALPN_RAFT`].
pub fn raft_client_config(cfg: &ClientConfig) -> Arc<ClientConfig> {
    let mut cfg = cfg.clone();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_RAFT.to_vec()];
    Arc::new(cfg)
}

/// What [`incoming_split`] accepts: the connections of every service, handshaken, and Raft's
/// connections from other managers, still plain TCP and detached from the runtime that
/// accepted them ([`handshakes`] takes them on the runtime that serves them).
pub struct SplitIncoming {
    pub main: tokio_stream::wrappers::ReceiverStream<Accepted>,
    pub raft: tokio::sync::mpsc::Receiver<std::net::TcpStream>,
}

/// Like [`incoming`], but a connection whose ClientHello offers [`ALPN_RAFT`] goes to
/// `raft` before its handshake, as a socket that belongs to no runtime yet. Raft's calls
/// between managers are then read and answered on the Raft runtime, whatever keeps the
/// main one busy: a follower whose main runtime stalls past the election timeout would
/// otherwise not hear the leader's heartbeats and start an election.
///
/// The ClientHello is peeked, not read: the handshake that follows, on either side, reads
/// it again. A client that sends no complete ClientHello within the handshake timeout is
/// dropped, as in [`incoming`]. Must be called inside a Tokio runtime; the accept task
/// stops when `main` is dropped.
pub fn incoming_split(listener: TcpListener, cfg: Arc<ServerConfig>) -> SplitIncoming {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let (raft_tx, raft_rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(cfg),
        tx,
        Some(raft_tx),
    ));
    SplitIncoming {
        main: tokio_stream::wrappers::ReceiverStream::new(rx),
        raft: raft_rx,
    }
}

/// The handshakes of the sockets [`incoming_split`] set aside for Raft, on the runtime this
/// is called in (their I/O is registered there), as a stream for tonic's
/// `Server::serve_with_incoming`. Ends when `sockets` does.
pub fn handshakes(
    mut sockets: tokio::sync::mpsc::Receiver<std::net::TcpStream>,
    cfg: Arc<ServerConfig>,
) -> impl futures::Stream<Item = Accepted> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let acceptor = TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        while let Some(socket) = sockets.recv().await {
            let tcp = match TcpStream::from_std(socket) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "taking a Raft connection onto the Raft runtime failed");
                    continue;
                }
            };
            tokio::spawn(handshake(acceptor.clone(), tcp, tx.clone()));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Whether a ClientHello offers [`ALPN_RAFT`]; `None` while `hello` is not a whole one yet.
/// Anything that does not parse is not Raft's (its handshake then fails where it goes).
fn offers_raft(hello: &[u8]) -> Option<bool> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = hello;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Some(false),
        }
    }
    match acceptor.accept() {
        Ok(None) => None,
        Ok(Some(accepted)) => Some(
            accepted
                .client_hello()
                .alpn()
                .is_some_and(|mut protocols| protocols.any(|p| p == ALPN_RAFT)),
        ),
        Err(_) => Some(false),
    }
}

/// The largest ClientHello looked at: a TLS record's header and its largest plaintext.
const MAX_HELLO: usize = 5 + 16 * 1024;

/// Peeks at `tcp` until its ClientHello is whole (or [`MAX_HELLO`] bytes came without
/// one); whether it offers [`ALPN_RAFT`].
async fn peek_offers_raft(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut buf = vec![0u8; MAX_HELLO];
    let mut seen = 0;
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(raft) = offers_raft(&buf[..n]) {
            return Ok(raft);
        }
        if n == buf.len() {
            return Ok(false);
        }
        if n == seen {
            // Readable with nothing new: the rest of the ClientHello is on its way.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen = n;
    }
}

/// Stream of accepted TLS connections for tonic's `Server::serve_with_incoming`. Handshakes run concurrently (a slow or failing client never blocks others); failed handshakes are logged with tracing at debug and skipped, never ending the stream.
///
/// Must be called inside a Tokio runtime. The accept task stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    cfg: Arc<ServerConfig>,
) -> impl futures::Stream<Item = Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>>
       + Send
       + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(accept_loop(listener, TlsAcceptor::from(cfg), tx, None));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A connection that finished its TLS handshake (or the error of one that could not be
/// accepted).
pub type Accepted = Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>;

/// Accepts until `tx` is closed. With `raft`, connections that offer [`ALPN_RAFT`] go there
/// unhandshaken ([`incoming_split`]).
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: tokio::sync::mpsc::Sender<Accepted>,
    raft: Option<tokio::sync::mpsc::Sender<std::net::TcpStream>>,
) {
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Per-connection errors (reset before accept) and fd exhaustion: keep going.
                tracing::warn!(error = %e, "accepting a TCP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let raft = raft.clone();
        tokio::spawn(async move {
            let Some(raft) = raft else {
                return handshake(acceptor, tcp, tx).await;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, peek_offers_raft(&tcp)).await {
                Ok(Ok(true)) => match tcp.into_std() {
                    Ok(socket) => {
                        let _ = raft.send(socket).await;
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "detaching a Raft connection failed")
                    }
                },
                Ok(Ok(false)) => handshake(acceptor, tcp, tx).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "reading a ClientHello failed"),
                Err(_) => tracing::debug!(%peer, "no ClientHello before the handshake timeout"),
            }
        });
    }
}

/// Runs the server side of the TLS handshake on `tcp` and sends the connection to `tx`.
async fn handshake(acceptor: TlsAcceptor, tcp: TcpStream, tx: tokio::sync::mpsc::Sender<Accepted>) {
    let peer = tcp.peer_addr().ok();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let _ = tx.send(Ok(tls)).await;
        }
        Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
    }
}

/// Opens a (lazy) mTLS channel to another manager's address.
pub type Connector = Arc<dyn Fn(&str) -> Channel + Send + Sync>;

/// Lazy tonic channel to "host:port" over TLS with this config (custom connector with tokio-rustls + hyper_util::rt::TokioIo; URI scheme http so tonic does no TLS of its own; SNI "swarm-manager"); connect timeout 3 s, HTTP/2 keepalive every 5 s with 5 s timeout, keepalive while idle.
pub fn channel(addr: &str, cfg: Arc<ClientConfig>) -> Channel {
    // The URI only names the :authority; the connector dials `addr` itself, so an
    // address the URI parser rejects still fails at connect time with a clear error.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|_| Endpoint::from_static("http://swarm-manager"))
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let connector = TlsConnector::from(cfg);
    let addr: Arc<str> = Arc::from(addr);
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        let addr = addr.clone();
        async move {
            let connect = async {
                let tcp = TcpStream::connect(&*addr).await?;
                let _ = tcp.set_nodelay(true);
                let name = ServerName::try_from(SERVER_NAME)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(r) => r.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("connecting to manager {addr}: {e}"))
                }),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to manager {addr}: timed out after {CONNECT_TIMEOUT:?}"),
                )),
            }
        }
    }))
}

/// The identity in the direct peer's verified client certificate, whatever forwarding
/// metadata the request carries.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<NodeIdentity> {
    let certs = req.peer_certs()?;
    ca::parse_node_cert_der(certs.first()?).ok()
}

/// Whether the request carries forwarded-identity metadata (a manager calling on behalf of
/// another caller), well-formed or not.
pub fn is_forwarded<T>(req: &tonic::Request<T>) -> bool {
    let md = req.metadata();
    [FWD_ANONYMOUS, FWD_NODE_ID, FWD_ROLE, FWD_CLUSTER]
        .iter()
        .any(|k| md.contains_key(*k))
}

/// The identity of the caller: its verified client certificate (via request.peer_certs()). If the direct peer is a MANAGER and the request carries forwarded-identity metadata (set by with_forwarded_identity on a follower that forwards to the leader), the forwarded identity is returned instead.
///
/// A manager that forwards a call from a caller without a certificate marks it anonymous
/// ([`forwarded_request`]); such a call has no identity.
///
/// This only reads certificates: the services check the result (and the forwarding
/// manager, [`peer_identity`]) against the store, where removed and demoted nodes show.
pub fn caller_identity<T>(req: &tonic::Request<T>) -> Option<NodeIdentity> {
    let direct = peer_identity(req)?;
    if direct.is_manager() {
        if let Some(forwarded) = forwarded_identity(req.metadata(), &direct) {
            return forwarded;
        }
    }
    Some(direct)
}

/// None: no forwarding metadata. Some(None): forwarded for an anonymous caller, or the
/// metadata is malformed. Some(Some(id)): the original caller.
fn forwarded_identity(md: &MetadataMap, direct: &NodeIdentity) -> Option<Option<NodeIdentity>> {
    let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
    if md.contains_key(FWD_ANONYMOUS) {
        return Some(None);
    }
    let node_id = get(FWD_NODE_ID);
    let role = get(FWD_ROLE);
    let cluster = get(FWD_CLUSTER);
    if node_id.is_none() && role.is_none() && cluster.is_none() {
        return None;
    }
    let parsed = (|| {
        let node_id = node_id.filter(|s| !s.is_empty())?;
        let role = match role? {
            ca::MANAGER_OU => proto::NodeRole::Manager,
            ca::WORKER_OU => proto::NodeRole::Worker,
            _ => return None,
        };
        // A manager only vouches for callers of its own cluster.
        let cluster_id = cluster.filter(|c| *c == direct.cluster_id)?;
        let time = |k: &str, default: SystemTime| {
            get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(default, |s| UNIX_EPOCH + Duration::from_secs(s))
        };
        Some(NodeIdentity {
            node_id: node_id.to_string(),
            role,
            cluster_id: cluster_id.to_string(),
            not_before: time(FWD_NOT_BEFORE, direct.not_before),
            not_after: time(FWD_NOT_AFTER, direct.not_after),
        })
    })();
    Some(parsed)
}

/// Copies the caller identity into metadata of a request about to be forwarded (keys "x-swarm-fwd-node-id", "x-swarm-fwd-role", "x-swarm-fwd-cluster").
pub fn with_forwarded_identity<T>(req: &mut tonic::Request<T>, id: &NodeIdentity) {
    let md = req.metadata_mut();
    md.remove(FWD_ANONYMOUS);
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string()
    };
    for (key, value) in [
        (FWD_NODE_ID, id.node_id.clone()),
        (FWD_ROLE, ca::role_ou(id.role).to_string()),
        (FWD_CLUSTER, id.cluster_id.clone()),
        (FWD_NOT_BEFORE, secs(id.not_before)),
        (FWD_NOT_AFTER, secs(id.not_after)),
    ] {
        match MetadataValue::try_from(value.as_str()) {
            Ok(v) => {
                md.insert(key, v);
            }
            // An incomplete identity reads as none on the receiving side.
            Err(_) => {
                md.remove(key);
            }
        }
    }
}

/// A clean copy of `req` to forward to the leader: the message, its deadline, and the
/// caller identity ([`with_forwarded_identity`]) or the anonymous mark when the caller
/// has none. Other metadata (including forged `x-swarm-fwd-*` keys) is dropped.
pub fn forwarded_request<T>(req: tonic::Request<T>) -> tonic::Request<T> {
    let id = caller_identity(&req);
    let timeout = req.metadata().get("grpc-timeout").cloned();
    let mut out = tonic::Request::new(req.into_inner());
    if let Some(t) = timeout {
        out.metadata_mut().insert("grpc-timeout", t);
    }
    match id {
        Some(id) => with_forwarded_identity(&mut out, &id),
        None => {
            out.metadata_mut()
                .insert(FWD_ANONYMOUS, MetadataValue::from_static("1"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
