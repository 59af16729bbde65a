//! TLS on the client port: the client's configuration ([`ClientTlsConfig`],
//! [`ClientSecurity`]) and the node's ([`client_port_server_config`]).
//!
//! Both sides use rustls with the ring provider, TLS 1.3 only, the ALPN id
//! [`ALPN`], and the cluster CA as the only trust anchor:
//!
//! - The node presents its node certificate (`node-<id>`) and requires a
//!   client certificate (mandatory client authentication): rustls's
//!   `WebPkiClientVerifier` checks the chain to the cluster CA, the validity
//!   window and the `clientAuth` usage, then the certificate must name one
//!   client principal ([`Principal::from_certificate`]); a node certificate
//!   names none and is refused. No session resumption: every connection
//!   presents and has checked its certificate.
//! - The client checks that the node's certificate chains to the cluster CA,
//!   is valid now, has the `serverAuth` usage and names a node
//!   (`node-<id>`, any id: a client reaches any member). Client certificates
//!   have no `serverAuth` usage, so no client can pose as a node.
//!
//! A refusal by the node arrives as a TLS alert, which the client library
//! turns into [`crate::client::ClientError::Tls`] with words for it
//! ([`describe_tls_error`]).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore,
    SignatureScheme,
};

use crate::auth::{AuthError, Principal, Role};

/// The ALPN protocol id of the client port.
pub const ALPN: &[u8] = b"paxos-kv/1";

/// The read buffer under a TLS stream (node and client): rustls itself
/// reads at most 4 KiB per call, so without it a burst of pipelined frames
/// costs one system call per 4 KiB.
pub const TLS_READ_BUFFER_BYTES: usize = 64 * 1024;

/// The TLS record type of a handshake message: the first byte a TLS client
/// sends.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A failure to build a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM input held no certificate or key, or was malformed.
    #[error("{origin}: {problem}")]
    Pem {
        /// Where it came from.
        origin: String,
        /// What was wrong.
        problem: String,
    },
    /// rustls refused the configuration (a key that does not match, an
    /// unusable CA certificate).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being set up.
        context: &'static str,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The client certificate names no principal.
    #[error("client certificate: {0}")]
    Principal(#[from] AuthError),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Parses every certificate of a PEM input (at least one).
pub fn parse_certs(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut reader = pem;
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            origin: origin.to_string(),
            problem: format!("malformed PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            origin: origin.to_string(),
            problem: "no CERTIFICATE block".to_string(),
        });
    }
    Ok(certs)
}

/// Parses the first private key of a PEM input (PKCS#8, PKCS#1 or SEC1).
pub fn parse_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut reader = pem;
    rustls_pemfile::private_key(&mut reader)
        .map_err(|e| TlsError::Pem {
            origin: origin.to_string(),
            problem: format!("malformed PEM private key: {e}"),
        })?
        .ok_or_else(|| TlsError::Pem {
            origin: origin.to_string(),
            problem: "no PRIVATE KEY block".to_string(),
        })
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for ca in roots {
        store.add(ca.clone()).map_err(|source| TlsError::Rustls {
            context: "adding the cluster CA to the trust store",
            source,
        })?;
    }
    Ok(Arc::new(store))
}

/// A client's TLS settings for the nodes' client ports: the cluster CA it
/// trusts, its certificate and key, and the principal its certificate
/// names. Cheap to clone (shared).
#[derive(Clone)]
pub struct ClientTlsConfig {
    config: Arc<rustls::ClientConfig>,
    principal: Arc<Principal>,
}

impl std::fmt::Debug for ClientTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTlsConfig")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl ClientTlsConfig {
    /// From PEM text: the cluster CA certificate(s), the client's
    /// certificate chain (leaf first) and its private key. The leaf must
    /// name a principal ([`Principal::from_certificate`]).
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let roots = parse_certs(ca_pem.as_bytes(), "CA certificate")?;
        let chain = parse_certs(cert_pem.as_bytes(), "client certificate")?;
        let key = parse_key(key_pem.as_bytes(), "client key")?;
        Self::from_der(&roots, chain, key)
    }

    /// From PEM files (see [`from_pem`](Self::from_pem)).
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let roots = parse_certs(&read_file(ca)?, &ca.display().to_string())?;
        let chain = parse_certs(&read_file(cert)?, &cert.display().to_string())?;
        let key = parse_key(&read_file(key)?, &key.display().to_string())?;
        Self::from_der(&roots, chain, key)
    }

    /// From a certificate directory written by `paxos-node certs`:
    /// `ca.pem`, `client-<name>.pem` and `client-<name>.key.pem`.
    pub fn from_dir(dir: &Path, name: &str) -> Result<Self, TlsError> {
        Self::from_files(
            &dir.join("ca.pem"),
            &dir.join(format!("client-{name}.pem")),
            &dir.join(format!("client-{name}.key.pem")),
        )
    }

    /// From DER parts.
    pub fn from_der(
        roots: &[CertificateDer<'static>],
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or_else(|| TlsError::Pem {
            origin: "client certificate".to_string(),
            problem: "empty chain".to_string(),
        })?;
        let principal = Principal::from_certificate(leaf)?;
        let config = client_builder(roots)?
            .with_client_auth_cert(chain, key)
            .map_err(|source| TlsError::Rustls {
                context: "client certificate and key",
                source,
            })?;
        Ok(Self::finish(config, principal))
    }

    /// Like [`from_pem`](Self::from_pem) but without requiring the
    /// certificate to name a principal (a node's certificate, say). Nodes
    /// refuse such a certificate; this exists to test and diagnose that
    /// refusal. Its principal is [`Principal::anonymous`].
    pub fn from_pem_any_certificate(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, TlsError> {
        let roots = parse_certs(ca_pem.as_bytes(), "CA certificate")?;
        let chain = parse_certs(cert_pem.as_bytes(), "client certificate")?;
        let key = parse_key(key_pem.as_bytes(), "client key")?;
        let config = client_builder(&roots)?
            .with_client_auth_cert(chain, key)
            .map_err(|source| TlsError::Rustls {
                context: "client certificate and key",
                source,
            })?;
        Ok(Self::finish(config, Principal::anonymous()))
    }

    /// A configuration that presents no client certificate. Every node
    /// refuses it (client authentication is mandatory); it exists to test
    /// and diagnose that refusal. Its principal is [`Principal::anonymous`].
    pub fn without_certificate(ca_pem: &str) -> Result<Self, TlsError> {
        let roots = parse_certs(ca_pem.as_bytes(), "CA certificate")?;
        let config = client_builder(&roots)?.with_no_client_auth();
        Ok(Self::finish(config, Principal::anonymous()))
    }

    fn finish(mut config: rustls::ClientConfig, principal: Principal) -> Self {
        config.alpn_protocols = vec![ALPN.to_vec()];
        // The server name is a placeholder (any node is accepted), so it is
        // not sent.
        config.enable_sni = false;
        config.enable_early_data = false;
        ClientTlsConfig {
            config: Arc::new(config),
            principal: Arc::new(principal),
        }
    }

    /// The name of the principal this client's certificate names.
    pub fn principal(&self) -> &str {
        self.principal.name()
    }

    /// The role this client's certificate grants.
    pub fn role(&self) -> Role {
        self.principal.role()
    }

    /// The rustls configuration.
    pub fn rustls_config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// The server name handed to rustls (not sent, not checked: the
    /// verifier accepts any node of the cluster).
    pub fn server_name() -> ServerName<'static> {
        ServerName::DnsName(
            rustls::pki_types::DnsName::try_from("paxos-node")
                .expect("a valid DNS name")
                .to_owned(),
        )
    }

    /// A connector for tokio.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.clone())
    }
}

fn client_builder(
    roots: &[CertificateDer<'static>],
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, TlsError>
{
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(root_store(roots)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Pem {
            origin: "CA certificate".to_string(),
            problem: format!("unusable as a trust anchor: {e}"),
        })?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            context: "client protocol versions",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyNodeVerifier { inner })))
}

/// How a client reaches the client ports.
#[derive(Clone, Debug)]
pub enum ClientSecurity {
    /// TLS with a client certificate (the default of every tool).
    Tls(ClientTlsConfig),
    /// Plain TCP, for nodes run with `--insecure-plaintext-clients`: no
    /// encryption, no authentication; the node treats the connection as
    /// [`Principal::anonymous`].
    InsecurePlaintext,
}

impl ClientSecurity {
    /// The name of the principal the node will see for this client.
    pub fn principal(&self) -> &str {
        match self {
            ClientSecurity::Tls(tls) => tls.principal(),
            ClientSecurity::InsecurePlaintext => crate::auth::ANONYMOUS,
        }
    }
}

impl From<ClientTlsConfig> for ClientSecurity {
    fn from(tls: ClientTlsConfig) -> Self {
        ClientSecurity::Tls(tls)
    }
}

/// The DNS names a certificate lists that name a node (`node-<digits>`).
fn node_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, parsed)) = X509Certificate::from_der(cert) else {
        return Vec::new();
    };
    let Ok(san) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .filter(|d| {
            d.strip_prefix("node-")
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
        .collect()
}

/// The client's check of a node: rustls's WebPKI server verification (chain
/// to the cluster CA, validity, `serverAuth`) for a name the certificate
/// itself gives, which must be a node's (`node-<id>`).
#[derive(Debug)]
struct AnyNodeVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyNodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let names = node_names(end_entity);
        let Some(name) = names.first() else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        };
        let name = ServerName::try_from(name.as_str())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
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

/// The node's check of a client: rustls's WebPKI client verification (chain
/// to the cluster CA, validity, `clientAuth`), then the certificate must
/// name one principal.
#[derive(Debug)]
struct PrincipalVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for PrincipalVerifier {
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
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match Principal::from_certificate(end_entity) {
            Ok(_) => Ok(verified),
            // Sent as an `access_denied` alert; the node logs the reason
            // with the peer's address.
            Err(_) => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
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

/// The rustls configuration of a node's client port: the node's certificate
/// chain and key, client certificates required and checked against `roots`
/// (the cluster CA) and for a principal.
pub fn client_port_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(root_store(roots)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Pem {
            origin: "CA certificate".to_string(),
            problem: format!("unusable as a trust anchor: {e}"),
        })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            context: "server protocol versions",
            source,
        })?
        .with_client_cert_verifier(Arc::new(PrincipalVerifier { inner }))
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls {
            context: "node certificate and key",
            source,
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    // Every connection presents its certificate (no resumption): a
    // connection is long-lived, so the full handshake is rare.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The principal of an established server-side TLS connection (its client
/// certificate's).
pub fn peer_principal(conn: &rustls::ServerConnection) -> Result<Principal, AuthError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(AuthError::NoPrincipal)?;
    Principal::from_certificate(leaf)
}

/// Words for a TLS failure seen by a client: the node's alert when it
/// refused the client's certificate, or the local error. `None` if `err`
/// carries no TLS error.
pub fn describe_tls_error(err: &std::io::Error) -> Option<String> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::AlertReceived(alert) => {
            let why = match alert {
                AlertDescription::CertificateRequired => {
                    "a client certificate is required and none was presented"
                }
                AlertDescription::UnknownCA => {
                    "the client certificate is not signed by the cluster CA"
                }
                AlertDescription::CertificateExpired => {
                    "the client certificate has expired or is not valid yet"
                }
                AlertDescription::AccessDenied => {
                    "the certificate names no client principal (a node certificate?)"
                }
                AlertDescription::UnsupportedCertificate => {
                    "the certificate is not for client authentication"
                }
                AlertDescription::BadCertificate | AlertDescription::CertificateUnknown => {
                    "the client certificate is unacceptable"
                }
                _ => "TLS alert",
            };
            format!("the node refused the connection: {why} (alert {alert:?})")
        }
        rustls::Error::InvalidCertificate(e) => {
            format!("the node's certificate is not trusted: {e}")
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("TLS failed: {tls} (is the node running with --insecure-plaintext-clients?)")
        }
        other => format!("TLS failed: {other}"),
    })
}
