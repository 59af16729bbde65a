//! rustls configuration for mutual TLS between cluster members.
//!
//! - Server side (accepting): the client must present a certificate chaining
//!   to the cluster CA, with the `clientAuth` usage, that names exactly one
//!   cluster member other than ourselves (`node-<id>`). This is checked inside
//!   the TLS handshake, so a stranger never gets a stream opened.
//! - Client side (dialling): the server must present a certificate chaining
//!   to the cluster CA, with the `serverAuth` usage, valid for the DNS name
//!   `node-<dialled id>` (rustls's standard server-name check).
//! - TLS 1.3 only (QUIC requires it), ring as the crypto provider, no 0-RTT.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use crate::certs::{cert_member, ClusterTrust, NodeIdentity};
use crate::error::NetError;
use crate::PeerId;

/// The ALPN protocol id both sides require.
pub const ALPN: &[u8] = b"paxos-net/1";

/// The crypto provider used everywhere in this crate: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The ids of the peers that may connect, shared by the transport (which
/// adds peers at run time) and the TLS verifier (which reads them on every
/// handshake).
#[derive(Clone, Debug)]
pub(crate) struct Members(Arc<parking_lot::RwLock<Arc<[PeerId]>>>);

impl Members {
    pub(crate) fn new(ids: Vec<PeerId>) -> Members {
        Members(Arc::new(parking_lot::RwLock::new(ids.into())))
    }

    /// The ids now (a cheap shared copy).
    pub(crate) fn get(&self) -> Arc<[PeerId]> {
        self.0.read().clone()
    }

    /// Adds `id` (no-op if present).
    pub(crate) fn add(&self, id: PeerId) {
        let mut ids = self.0.write();
        if !ids.contains(&id) {
            let mut v = ids.to_vec();
            v.push(id);
            *ids = v.into();
        }
    }
}

/// The cluster member named by the peer certificate of an established connection.
pub(crate) fn connection_peer(conn: &quinn::Connection, members: &[PeerId]) -> Option<PeerId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    cert_member(certs.first()?, members)
}

/// Client-certificate verifier: the cluster CA chain (delegated to rustls's
/// WebPKI verifier) plus "names exactly one member".
#[derive(Debug)]
struct MemberClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    /// Members allowed to connect to us (our own id is never among them).
    members: Members,
    own_id: PeerId,
}

impl ClientCertVerifier for MemberClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now).inspect_err(|e| {
            tracing::warn!(node = %self.own_id, error = %e, "refused peer: client certificate does not verify");
        })?;
        match cert_member(end_entity, &self.members.get()).filter(|m| *m != self.own_id) {
            Some(_) => Ok(verified),
            None => {
                tracing::warn!(node = %self.own_id, "refused peer: client certificate names no single cluster member");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn root_store(trust: &ClusterTrust) -> Result<Arc<RootCertStore>, NetError> {
    let mut roots = RootCertStore::empty();
    for ca in trust.roots() {
        roots.add(ca.clone()).map_err(|e| NetError::Tls {
            context: "adding cluster CA to the root store",
            source: e,
        })?;
    }
    Ok(Arc::new(roots))
}

/// The rustls server configuration of a node accepting connections from
/// `members` (the transport adds to them at run time).
pub(crate) fn server_crypto(
    identity: &NodeIdentity,
    trust: &ClusterTrust,
    members: Members,
) -> Result<rustls::ServerConfig, NetError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(root_store(trust)?, provider.clone())
        .build()
        .map_err(|e| NetError::Config {
            problem: format!("client verifier: {e}"),
        })?;
    let verifier = MemberClientVerifier {
        inner,
        members,
        own_id: identity.id(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls {
            context: "server protocol versions",
            source: e,
        })?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(identity.chain().to_vec(), identity.key().clone_key())
        .map_err(|e| NetError::Tls {
            context: "server certificate",
            source: e,
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// The rustls client configuration of a node dialling cluster members.
pub fn client_crypto(
    identity: &NodeIdentity,
    trust: &ClusterTrust,
) -> Result<rustls::ClientConfig, NetError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls {
            context: "client protocol versions",
            source: e,
        })?
        .with_root_certificates(root_store(trust)?)
        .with_client_auth_cert(identity.chain().to_vec(), identity.key().clone_key())
        .map_err(|e| NetError::Tls {
            context: "client certificate",
            source: e,
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// Wraps [`client_crypto`] as a quinn client configuration with `transport`.
pub fn quinn_client_config(
    identity: &NodeIdentity,
    trust: &ClusterTrust,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, NetError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_crypto(identity, trust)?)
        .map_err(|e| NetError::Config {
            problem: format!("client TLS config unusable for QUIC: {e}"),
        })?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}
