//! Cluster certificates: generate a cluster CA and node certificates (rcgen),
//! and load PEM files for real deployments.
//!
//! Every node certificate is signed by the cluster CA, carries both the
//! `serverAuth` and `clientAuth` extended key usages (a node both accepts and
//! dials), and names its node with the DNS subject alternative name
//! `node-<id>` ([`PeerId::dns_name`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::PeerId;

/// Errors of certificate generation and loading.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen could not generate a key or sign a certificate.
    #[error("certificate generation failed for {subject}: {source}")]
    Generate {
        /// What was being generated (`cluster CA`, `node-3`).
        subject: String,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM input held no certificate or no private key, or was malformed.
    #[error("{origin}: {problem}")]
    Pem {
        /// The file name, or `<memory>`.
        origin: String,
        /// What was wrong.
        problem: String,
    },
    /// The certificate does not name the node id it is loaded for.
    #[error("certificate from {origin} does not name {expected} (SAN {expected_name:?} missing or invalid)")]
    WrongName {
        /// Where the certificate came from.
        origin: String,
        /// The node it was loaded for.
        expected: PeerId,
        /// The DNS name it should carry.
        expected_name: String,
    },
}

/// Validity window of a generated certificate.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Not valid before this instant.
    pub not_before: SystemTime,
    /// Not valid after this instant.
    pub not_after: SystemTime,
}

impl Validity {
    /// From one hour ago (clock skew) to `days` days from now.
    pub fn days_from_now(days: u32) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

/// A node's TLS identity: its certificate chain and private key.
pub struct NodeIdentity {
    id: PeerId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        NodeIdentity {
            id: self.id,
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("id", &self.id)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Builds an identity from DER parts, checking that the leaf names `id`.
    pub fn from_der(
        id: PeerId,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<NodeIdentity, CertError> {
        Self::checked(id, chain, key, "<memory>")
    }

    fn checked(
        id: PeerId,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        origin: &str,
    ) -> Result<NodeIdentity, CertError> {
        let Some(leaf) = chain.first() else {
            return Err(CertError::Pem {
                origin: origin.to_string(),
                problem: "no certificate".to_string(),
            });
        };
        if !crate::tls::cert_names(leaf, id) {
            return Err(CertError::WrongName {
                origin: origin.to_string(),
                expected: id,
                expected_name: id.dns_name(),
            });
        }
        Ok(NodeIdentity { id, chain, key })
    }

    /// Parses a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(id: PeerId, chain_pem: &str, key_pem: &str) -> Result<NodeIdentity, CertError> {
        let chain = parse_certs(chain_pem.as_bytes(), "<memory>")?;
        let key = parse_key(key_pem.as_bytes(), "<memory>")?;
        Self::checked(id, chain, key, "<memory>")
    }

    /// Loads a PEM certificate chain and key from disk (real deployments).
    pub fn from_pem_files(
        id: PeerId,
        chain_path: &Path,
        key_path: &Path,
    ) -> Result<NodeIdentity, CertError> {
        let chain = parse_certs(&read(chain_path)?, &chain_path.display().to_string())?;
        let key = parse_key(&read(key_path)?, &key_path.display().to_string())?;
        Self::checked(id, chain, key, &chain_path.display().to_string())
    }

    /// The node this identity belongs to.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }
}

/// The trust anchors of a cluster: the CA certificate(s) node certificates
/// must chain to. Nodes need only this, never the CA's private key.
#[derive(Clone, Debug)]
pub struct ClusterTrust {
    roots: Vec<CertificateDer<'static>>,
}

impl ClusterTrust {
    /// From DER CA certificates.
    pub fn from_der(roots: Vec<CertificateDer<'static>>) -> ClusterTrust {
        ClusterTrust { roots }
    }

    /// Parses PEM CA certificates.
    pub fn from_pem(pem: &str) -> Result<ClusterTrust, CertError> {
        Ok(ClusterTrust {
            roots: parse_certs(pem.as_bytes(), "<memory>")?,
        })
    }

    /// Loads PEM CA certificates from disk.
    pub fn from_pem_file(path: &Path) -> Result<ClusterTrust, CertError> {
        Ok(ClusterTrust {
            roots: parse_certs(&read(path)?, &path.display().to_string())?,
        })
    }

    /// The CA certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}

/// A cluster certificate authority that can sign node certificates.
pub struct ClusterCa {
    name: String,
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generates a new CA (ECDSA P-256), valid ten years.
    pub fn generate(cluster_name: &str) -> Result<ClusterCa, CertError> {
        let subject = format!("{cluster_name} cluster CA");
        let gen_err = |source| CertError::Generate {
            subject: subject.clone(),
            source,
        };
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, subject.clone());
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, Validity::days_from_now(3650));
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(ClusterCa {
            name: cluster_name.to_string(),
            key,
            cert,
        })
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The trust anchors nodes of this cluster use.
    pub fn trust(&self) -> ClusterTrust {
        ClusterTrust {
            roots: vec![self.cert.der().clone()],
        }
    }

    /// Issues a certificate for node `id`, valid one year.
    pub fn issue(&self, id: PeerId) -> Result<IssuedCert, CertError> {
        self.issue_with(id, &[id], Validity::days_from_now(365))
    }

    /// Issues a certificate for node `id` naming `names` (normally just `[id]`)
    /// with the given validity; tests use it for expired or odd certificates.
    pub fn issue_with(
        &self,
        id: PeerId,
        names: &[PeerId],
        validity: Validity,
    ) -> Result<IssuedCert, CertError> {
        let gen_err = |source| CertError::Generate {
            subject: id.dns_name(),
            source,
        };
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.dns_name()).collect::<Vec<_>>())
                .map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.dns_name());
        dn.push(DnType::OrganizationName, self.name.clone());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(gen_err)?;
        Ok(IssuedCert {
            id,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }
}

/// A freshly issued node certificate and its key, in PEM and DER.
#[derive(Clone)]
pub struct IssuedCert {
    id: PeerId,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The node identity, without the name check (so tests can build
    /// deliberately wrong identities; [`NodeIdentity::from_der`] checks).
    pub fn identity(&self) -> NodeIdentity {
        NodeIdentity {
            id: self.id,
            chain: vec![self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
        }
    }

    /// The same key and certificate presented as the identity of `claimed`
    /// (for refusal tests: a valid certificate used by a node claiming another id).
    pub fn identity_as(&self, claimed: PeerId) -> NodeIdentity {
        let mut identity = self.identity();
        identity.id = claimed;
        identity
    }
}

/// A generated cluster: the CA and one identity per node.
#[derive(Debug)]
pub struct GeneratedCluster {
    /// The CA (keep it to issue certificates for nodes added later).
    pub ca: ClusterCa,
    /// One identity per requested node, in the order requested.
    pub nodes: Vec<NodeIdentity>,
}

impl GeneratedCluster {
    /// The trust anchors of this cluster.
    pub fn trust(&self) -> ClusterTrust {
        self.ca.trust()
    }

    /// The identity of node `id`, if it was generated.
    pub fn node(&self, id: PeerId) -> Option<&NodeIdentity> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// Generates a cluster CA and one certificate per node, in memory.
pub fn generate_cluster_in_memory(ids: &[PeerId]) -> Result<GeneratedCluster, CertError> {
    let ca = ClusterCa::generate(CLUSTER_NAME)?;
    let nodes = ids
        .iter()
        .map(|&id| ca.issue(id).map(|c| c.identity()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GeneratedCluster { ca, nodes })
}

/// The organisation name put in generated certificates.
pub const CLUSTER_NAME: &str = "paxos";

/// Paths of the PEM files written by [`generate_cluster`].
#[derive(Clone, Debug)]
pub struct ClusterFiles {
    /// `ca.pem`: the CA certificate every node trusts.
    pub ca_cert: PathBuf,
    /// Per node: (id, `node-<id>.pem` certificate, `node-<id>.key.pem` key).
    pub nodes: Vec<(PeerId, PathBuf, PathBuf)>,
}

/// Generates a cluster CA and node certificates and writes them as PEM files
/// into `dir` (created if missing): `ca.pem`, and per node `node-<id>.pem` and
/// `node-<id>.key.pem` (mode 0600 on Unix). The CA private key is not written:
/// it stays in the returned [`GeneratedCluster`] (issue more nodes from it, or
/// regenerate the cluster).
pub fn generate_cluster(
    dir: &Path,
    ids: &[PeerId],
) -> Result<(GeneratedCluster, ClusterFiles), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca = ClusterCa::generate(CLUSTER_NAME)?;
    let ca_cert = dir.join("ca.pem");
    write(&ca_cert, ca.cert_pem().as_bytes(), false)?;
    let mut nodes = Vec::with_capacity(ids.len());
    let mut files = Vec::with_capacity(ids.len());
    for &id in ids {
        let issued = ca.issue(id)?;
        let cert_path = dir.join(format!("{}.pem", id.dns_name()));
        let key_path = dir.join(format!("{}.key.pem", id.dns_name()));
        write(&cert_path, issued.cert_pem.as_bytes(), false)?;
        write(&key_path, issued.key_pem.as_bytes(), true)?;
        nodes.push(issued.identity());
        files.push((id, cert_path, key_path));
    }
    Ok((
        GeneratedCluster { ca, nodes },
        ClusterFiles {
            ca_cert,
            nodes: files,
        },
    ))
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    params.not_before = time::OffsetDateTime::from(validity.not_before);
    params.not_after = time::OffsetDateTime::from(validity.not_after);
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, data: &[u8], secret: bool) -> Result<(), CertError> {
    let io_err = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = opts.open(path).map_err(io_err)?;
    std::io::Write::write_all(&mut file, data).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

fn parse_certs(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let mut reader = pem;
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            origin: origin.to_string(),
            problem: format!("malformed PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(CertError::Pem {
            origin: origin.to_string(),
            problem: "no CERTIFICATE block".to_string(),
        });
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    let mut reader = pem;
    rustls_pemfile::private_key(&mut reader)
        .map_err(|e| CertError::Pem {
            origin: origin.to_string(),
            problem: format!("malformed PEM private key: {e}"),
        })?
        .ok_or_else(|| CertError::Pem {
            origin: origin.to_string(),
            problem: "no PRIVATE KEY block".to_string(),
        })
}
