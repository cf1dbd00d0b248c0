//! QUIC endpoints: rustls (ring provider, TLS 1.3 only, ALPN `p2pfs/5`) with
//! a throwaway self-signed certificate on the server, and a client that
//! accepts any certificate but checks the handshake signature — the node
//! identity is proved by Noise, not by TLS (`docs/PROTOCOL.md`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

use super::{NetError, ALPN};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn setup<E: std::fmt::Display>(e: E) -> NetError {
    NetError::Setup(e.to_string())
}

/// Connection-level receive window of a server connection until its peer
/// is authenticated and authorised: all it may have buffered here.
pub const PRE_AUTH_WINDOW: u32 = 64 << 10;
/// Connection-level receive window once authorised (a trusted peer): what
/// keeps a fast transfer streaming. 8 MiB, not 16: with the disk queue at
/// 8 chunks, a 1 GiB receive peaked at 46-57 MiB instead of 70-78 MiB,
/// at the same speed within the noise of a shared machine (293/324/243
/// against 291/317/306 MiB/s, interleaved runs). A LAN's bandwidth-delay
/// product is far below it (10 Gbit/s at 1 ms: 1.2 MiB).
pub const RECEIVE_WINDOW: u32 = 8 << 20;
/// The same for a peer that is not trusted (`--accept any` / `ask`): what
/// anyone can obtain is kept smaller.
pub const UNTRUSTED_RECEIVE_WINDOW: u32 = 8 << 20;

/// The largest UDP payload this node sends or accepts, and the ceiling of
/// QUIC's path MTU discovery. quinn starts every path at 1200 bytes and
/// probes upwards; on a 1500-byte Ethernet the probes above 1452 are lost
/// and it stays there, on loopback or a jumbo-frame LAN it climbs to this.
/// Fewer, larger datagrams cut the per-packet cost (syscalls, headers,
/// ACKs, packet protection set-up) on both ends: a 1 GiB send over
/// loopback went from 204-220 to 279-292 MiB/s and from 8.6-9.1 to
/// 6.0-6.3 CPU seconds (both ends) against 1452 (docs/PROTOCOL.md,
/// *Connection*; measured with scripts/bench-net.sh).
///
/// It must stay below 65,507 / `GSO_BATCH`: quinn hands the kernel up to
/// that many datagrams in one GSO send, whose sum may not exceed the 64 KiB
/// UDP limit. Above it every batch fails with EMSGSIZE, which quinn-udp
/// treats as a lost MTU probe and drops silently: the MTU probes (single
/// datagrams) succeed, the transfer that follows collapses (8000 bytes:
/// 256 MiB in 70 s with 37% of packets lost, instead of 1.6 s).
pub const MAX_UDP_PAYLOAD: u16 = 6500;
/// quinn 0.11's `MAX_TRANSMIT_SEGMENTS`: datagrams per GSO send.
const GSO_BATCH: usize = 10;
// A full GSO batch of the largest datagrams fits in one UDP send: 65,535
// minus the IPv4 (20) and UDP (8) headers.
const _: () = assert!(GSO_BATCH * MAX_UDP_PAYLOAD as usize <= 65_507);

/// Transport settings shared by both ends.
fn transport() -> Arc<quinn::TransportConfig> {
    Arc::new(transport_config())
}

/// A server's connections start small: one bidirectional stream (the
/// control stream), no data streams, a 64 KiB receive window, until
/// [`authorise`] opens them up.
fn server_transport() -> Arc<quinn::TransportConfig> {
    let mut t = transport_config();
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
    t.receive_window(quinn::VarInt::from_u32(PRE_AUTH_WINDOW));
    Arc::new(t)
}

/// Gives an authorised peer's connection its data streams and window.
pub fn authorise(conn: &quinn::Connection, trusted: bool) {
    let window = if trusted {
        RECEIVE_WINDOW
    } else {
        UNTRUSTED_RECEIVE_WINDOW
    };
    conn.set_receive_window(quinn::VarInt::from_u32(window));
    conn.set_max_concurrent_uni_streams(quinn::VarInt::from_u32(
        super::wire::MAX_UNI_STREAMS as u32,
    ));
}

/// Silence after which a connection is given up.
pub const IDLE: Duration = Duration::from_secs(5);

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // A peer that dies (kill -9, power, cable) is noticed after IDLE of
    // silence. A live peer is never silent that long: keep-alives go every
    // second and QUIC acknowledges them however slow or busy the link is
    // (issue 12: a sender took 20-25 s to notice a killed receiver).
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE).unwrap_or(quinn::VarInt::from_u32(5_000).into()),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(super::wire::MAX_UNI_STREAMS as u32));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4));
    t.stream_receive_window(quinn::VarInt::from_u32(4 << 20));
    t.receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW));
    t.send_window(32 << 20);
    // p2pfs sends no datagrams: a peer's would only be buffered here.
    t.datagram_receive_buffer_size(None);
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtud));
    // Cubic's default first window, 14,720 bytes, is two datagrams once
    // the path is at 6,500 bytes (and its floor is two datagrams). One MTU
    // probe in flight then blocks every other packet, a CONNECTION_CLOSE
    // too, until the probe is acknowledged or declared lost: about every
    // other `remote list` took 200 ms more (the client's close wait) and
    // the server held the connection's place for its close. Ten datagrams
    // of the largest size: more than RFC 9002 (7.2) allows before the path
    // is known (max(14,720 B, two datagrams)), a deliberate choice for a
    // LAN, where a first burst of 64 KB costs nothing.
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(10 * u64::from(MAX_UDP_PAYLOAD));
    t.congestion_controller_factory(Arc::new(cubic));
    t
}

/// A server endpoint listening on `addr`.
pub fn server(addr: SocketAddr) -> Result<quinn::Endpoint, NetError> {
    let cert = rcgen::generate_simple_self_signed(vec!["p2pfs".to_string()]).map_err(setup)?;
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup)?
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .map_err(setup)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(setup)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(server_transport());
    let socket = listening_socket(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => NetError::Setup(format!(
            "{addr} is already in use: is another p2pfs serve running? Use --listen to pick another port"
        )),
        _ => NetError::Setup(format!("cannot listen on {addr}: {e}")),
    })?;
    endpoint(socket, Some(cfg))
}

/// The server's UDP socket. `[::]` is dual-stack, IPv4 and IPv6 on one
/// socket (IPV6_V6ONLY off, whatever `net.ipv6.bindv6only` says), so the
/// default listen address answers at `127.0.0.1` and `[::1]` alike; on a
/// host without IPv6 it falls back to `0.0.0.0` on the same port.
fn listening_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let SocketAddr::V6(v6) = addr else {
        return std::net::UdpSocket::bind(addr);
    };
    let dual = (|| {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        if v6.ip().is_unspecified() {
            s.set_only_v6(false)?;
        }
        s.bind(&addr.into())?;
        Ok::<_, std::io::Error>(std::net::UdpSocket::from(s))
    })();
    match dual {
        // No IPv6 on this host (disabled, or no such address family).
        Err(e)
            if v6.ip().is_unspecified()
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
                ) =>
        {
            tracing::info!("no IPv6 here ({e}): listening on IPv4 only");
            std::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], addr.port())))
        }
        r => r,
    }
}

/// Builds an endpoint on a bound socket with larger socket buffers: fewer
/// datagrams dropped while a side is briefly busy (each drop costs a
/// retransmission and a congestion-window cut).
fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, NetError> {
    use std::os::fd::AsRawFd;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        let size: libc::c_int = 8 << 20;
        // SAFETY: a valid socket and a c_int option value of the right size.
        // A failure only leaves the system default.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    let mut ep_cfg = quinn::EndpointConfig::default();
    // What the peer may send us (its MTU discovery stops here too); quinn
    // sizes its receive buffers from it (32 x 64 GRO slots, touched only
    // as far as datagrams fill them).
    ep_cfg
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| NetError::Setup(format!("max UDP payload: {e}")))?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| NetError::Setup("no async runtime".into()))?;
    quinn::Endpoint::new(ep_cfg, server, socket, runtime)
        .map_err(|e| NetError::Setup(e.to_string()))
}

#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The identity is authenticated by Noise over the exporter value.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client endpoint on an ephemeral port of the matching address family.
pub fn client(for_peer: SocketAddr) -> Result<quinn::Endpoint, NetError> {
    let bind: SocketAddr = if for_peer.is_ipv6() {
        "[::]:0".parse().map_err(setup)?
    } else {
        "0.0.0.0:0".parse().map_err(setup)?
    };
    client_at(bind)
}

/// A client endpoint bound to `bind`.
pub fn client_at(bind: SocketAddr) -> Result<quinn::Endpoint, NetError> {
    let p = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(p)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    let crypto = QuicClientConfig::try_from(tls).map_err(setup)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    let socket = std::net::UdpSocket::bind(bind).map_err(|e| NetError::Setup(e.to_string()))?;
    let mut ep = endpoint(socket, None)?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// Connects to `addr` within `timeout`.
pub async fn connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<quinn::Connection, NetError> {
    let unreachable = |detail: String| NetError::Unreachable {
        addr: addr.to_string(),
        detail,
    };
    let connecting = ep
        .connect(addr, "p2pfs")
        .map_err(|e| unreachable(e.to_string()))?;
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(unreachable(format!(
            "no answer within {} s",
            timeout.as_secs()
        ))),
        Ok(Err(quinn::ConnectionError::ConnectionClosed(c)))
            if c.error_code == quinn::TransportErrorCode::crypto(0x78) =>
        {
            Err(NetError::Protocol(
                "peer speaks another p2pfs protocol version (ALPN): upgrade p2pfs on both ends"
                    .into(),
            ))
        }
        Ok(Err(quinn::ConnectionError::ConnectionClosed(c)))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            Err(NetError::Refused {
                code: super::wire::RefuseCode::Busy,
                message: "the receiver is busy (too many connections being set up); try again in a moment".into(),
            })
        }
        Ok(Err(e)) => Err(unreachable(crate::text::from_peer(&e.to_string()))),
        Ok(Ok(c)) => Ok(c),
    }
}
