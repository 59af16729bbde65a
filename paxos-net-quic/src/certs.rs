//! Cluster certificates: generate a cluster CA and node certificates (rcgen),
//! and load PEM files for real deployments.
//!
//! Every node certificate is signed by the cluster CA, carries both the
//! `serverAuth` and `clientAuth` extended key usages (a node both accepts and
//! dials), and names its node with the DNS subject alternative name
//! `node-<id>` ([`PeerId::dns_name`]).
//!
//! Client certificates ([`ClusterCa::issue_client`]) are signed by the same CA
//! but carry only the `clientAuth` usage and no DNS name: they name their
//! principal and role with one URI subject alternative name,
//! `paxos-client://<role>/<name>` ([`client_uri`]), `<role>` being `rw` or
//! `ro`. So a node certificate is never a client certificate (it has no such
//! URI) and a client certificate is never a node certificate (it names no
//! `node-<id>`, and cannot act as a server).
//!
//! [`write_certs`] writes certificates into a directory, creating the CA
//! (`ca.pem`, and its key `ca.key.pem`) the first time and reusing it on
//! later runs, so that clients and nodes can be added to a running cluster.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

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
    /// A client principal name or a CA on disk is unusable.
    #[error("{0}")]
    Invalid(String),
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
        if !cert_names(leaf, id) {
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

    /// Loads an existing CA from its certificate and private key (PEM), to
    /// issue more certificates that chain to the same `ca.pem`.
    ///
    /// The CA's name and key identifier are read from the certificate; the
    /// key must be the certificate's (checked).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, CertError> {
        let gen_err = |source| CertError::Generate {
            subject: "existing cluster CA".to_string(),
            source,
        };
        let key = KeyPair::from_pem(key_pem).map_err(gen_err)?;
        let der = parse_certs(cert_pem.as_bytes(), "CA certificate")?
            .into_iter()
            .next()
            .ok_or_else(|| CertError::Invalid("no CA certificate".to_string()))?;
        let params = CertificateParams::from_ca_cert_der(&der).map_err(gen_err)?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(CertError::Invalid(
                "the CA certificate is not a CA (no basic constraints CA:true)".to_string(),
            ));
        }
        // The key must be the certificate's, or what it signs would not
        // chain to `ca.pem`.
        let spki = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| CertError::Invalid(format!("the CA certificate does not parse: {e}")))?
            .subject_public_key_info();
        if spki.as_ref() != key.public_key_der().as_slice() {
            return Err(CertError::Invalid(
                "the CA key does not belong to the CA certificate".to_string(),
            ));
        }
        // rcgen signs with an issuer certificate; one rebuilt from the CA's
        // parameters has the CA's subject and key, which is all that a
        // signature and the authority key identifier depend on.
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(ClusterCa {
            name: CLUSTER_NAME.to_string(),
            key,
            cert,
        })
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's private key as PEM (PKCS#8). Whoever holds it can issue
    /// certificates for any node or client of the cluster: keep it off the
    /// nodes.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a client certificate for principal `name` with `role`, valid
    /// one year.
    pub fn issue_client(
        &self,
        name: &str,
        role: ClientRole,
    ) -> Result<IssuedClientCert, CertError> {
        self.issue_client_with(name, role, Validity::days_from_now(365))
    }

    /// Issues a client certificate with the given validity (tests use it for
    /// expired certificates). The certificate has the `clientAuth` usage
    /// only, no DNS name, and the URI SAN [`client_uri`]`(name, role)`.
    pub fn issue_client_with(
        &self,
        name: &str,
        role: ClientRole,
        validity: Validity,
    ) -> Result<IssuedClientCert, CertError> {
        check_client_name(name)?;
        let uri = client_uri(name, role);
        let gen_err = |source| CertError::Generate {
            subject: uri.clone(),
            source,
        };
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        let ia5 = rcgen::Ia5String::try_from(uri.as_str()).map_err(gen_err)?;
        params.subject_alt_names = vec![rcgen::SanType::URI(ia5)];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("client {name}"));
        dn.push(DnType::OrganizationName, self.name.clone());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(gen_err)?;
        Ok(IssuedClientCert {
            name: name.to_string(),
            role,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
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

/// The role a client certificate grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientRole {
    /// Reads and writes (`rw`).
    ReadWrite,
    /// Reads only (`ro`).
    ReadOnly,
    /// Reads, writes and cluster administration (`admin`): membership and
    /// leadership changes.
    Admin,
}

impl ClientRole {
    /// The role's name in a client certificate's URI: `rw`, `ro` or
    /// `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::ReadWrite => "rw",
            ClientRole::ReadOnly => "ro",
            ClientRole::Admin => "admin",
        }
    }

    /// Parses `rw`, `ro` or `admin`.
    pub fn parse(s: &str) -> Option<ClientRole> {
        match s {
            "rw" => Some(ClientRole::ReadWrite),
            "ro" => Some(ClientRole::ReadOnly),
            "admin" => Some(ClientRole::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for ClientRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The URI scheme of a client certificate's principal.
pub const CLIENT_URI_SCHEME: &str = "paxos-client";

/// Longest client principal name, in bytes.
pub const MAX_CLIENT_NAME_BYTES: usize = 64;

/// The URI subject alternative name of a client certificate:
/// `paxos-client://<role>/<name>`.
pub fn client_uri(name: &str, role: ClientRole) -> String {
    format!("{CLIENT_URI_SCHEME}://{role}/{name}")
}

/// Whether `name` is a valid client principal name: 1 to
/// [`MAX_CLIENT_NAME_BYTES`] ASCII letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit.
pub fn is_valid_client_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CLIENT_NAME_BYTES
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_client_name(name: &str) -> Result<(), CertError> {
    if is_valid_client_name(name) {
        Ok(())
    } else {
        Err(CertError::Invalid(format!(
            "client name {name:?}: 1 to {MAX_CLIENT_NAME_BYTES} letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

/// A freshly issued client certificate and its key, in PEM.
#[derive(Clone)]
pub struct IssuedClientCert {
    /// The principal's name.
    pub name: String,
    /// The role granted.
    pub role: ClientRole,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedClientCert")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
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

/// What [`write_certs`] wrote.
#[derive(Clone, Debug)]
pub struct WrittenCerts {
    /// `ca.pem`.
    pub ca_cert: PathBuf,
    /// `ca.key.pem`, the CA's private key (mode 0600).
    pub ca_key: PathBuf,
    /// Whether the CA was created by this call (`false`: an existing CA in
    /// the directory was reused).
    pub ca_created: bool,
    /// Per node: (id, `node-<id>.pem`, `node-<id>.key.pem`).
    pub nodes: Vec<(PeerId, PathBuf, PathBuf)>,
    /// Per client: (name, role, `client-<name>.pem`, `client-<name>.key.pem`).
    pub clients: Vec<(String, ClientRole, PathBuf, PathBuf)>,
}

/// The CA certificate file [`write_certs`] uses in a directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key file [`write_certs`] uses in a directory.
pub const CA_KEY_FILE: &str = "ca.key.pem";

/// The certificate and key file names of client `name` in a certificate
/// directory: `client-<name>.pem`, `client-<name>.key.pem`.
pub fn client_file_names(name: &str) -> (String, String) {
    (
        format!("client-{name}.pem"),
        format!("client-{name}.key.pem"),
    )
}

/// Writes node and client certificates into `dir` (created if missing),
/// signed by the directory's CA: `ca.pem` and `ca.key.pem` are created the
/// first time, and reused when both exist, so running it again adds nodes or
/// clients to an existing cluster (certificates already issued stay valid).
/// A `ca.pem` without `ca.key.pem` is an error (nothing is overwritten).
/// Requested nodes and clients are (re)issued: `node-<id>.pem`,
/// `node-<id>.key.pem`, `client-<name>.pem`, `client-<name>.key.pem`; keys
/// are mode 0600 on Unix.
pub fn write_certs(
    dir: &Path,
    nodes: &[PeerId],
    clients: &[(String, ClientRole)],
) -> Result<(ClusterCa, WrittenCerts), CertError> {
    for (name, _) in clients {
        check_client_name(name)?;
    }
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_cert = dir.join(CA_CERT_FILE);
    let ca_key = dir.join(CA_KEY_FILE);
    let (ca, ca_created) = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => {
            let cert = String::from_utf8_lossy(&read(&ca_cert)?).into_owned();
            let key = String::from_utf8_lossy(&read(&ca_key)?).into_owned();
            (ClusterCa::from_pem(&cert, &key)?, false)
        }
        (false, false) => {
            let ca = ClusterCa::generate(CLUSTER_NAME)?;
            // The key first: a crash in between leaves no CA without a key.
            write(&ca_key, ca.key_pem().as_bytes(), true)?;
            write(&ca_cert, ca.cert_pem().as_bytes(), false)?;
            (ca, true)
        }
        (true, false) => {
            return Err(CertError::Invalid(format!(
                "{} exists but {} does not: certificates cannot be added to this CA \
                 (bring its key back, or remove {} to create a new CA and reissue every certificate)",
                ca_cert.display(),
                ca_key.display(),
                ca_cert.display()
            )))
        }
        (false, true) => {
            return Err(CertError::Invalid(format!(
                "{} exists but {} does not; refusing to overwrite a CA key",
                ca_key.display(),
                ca_cert.display()
            )))
        }
    };
    let mut written = WrittenCerts {
        ca_cert,
        ca_key,
        ca_created,
        nodes: Vec::with_capacity(nodes.len()),
        clients: Vec::with_capacity(clients.len()),
    };
    for &id in nodes {
        let issued = ca.issue(id)?;
        let cert_path = dir.join(format!("{}.pem", id.dns_name()));
        let key_path = dir.join(format!("{}.key.pem", id.dns_name()));
        write(&key_path, issued.key_pem.as_bytes(), true)?;
        write(&cert_path, issued.cert_pem.as_bytes(), false)?;
        written.nodes.push((id, cert_path, key_path));
    }
    for (name, role) in clients {
        let issued = ca.issue_client(name, *role)?;
        let (cert_file, key_file) = client_file_names(name);
        let (cert_path, key_path) = (dir.join(cert_file), dir.join(key_file));
        write(&key_path, issued.key_pem.as_bytes(), true)?;
        write(&cert_path, issued.cert_pem.as_bytes(), false)?;
        written
            .clients
            .push((name.clone(), *role, cert_path, key_path));
    }
    Ok((ca, written))
}

/// True if the certificate `leaf` is valid for the DNS name `node-<id>`.
pub(crate) fn cert_names(leaf: &CertificateDer<'_>, id: PeerId) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(id.dns_name()) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The single member among `members` the certificate names, or `None` if it
/// names none or more than one.
pub(crate) fn cert_member(leaf: &CertificateDer<'_>, members: &[PeerId]) -> Option<PeerId> {
    let mut found = None;
    for &m in members {
        if cert_names(leaf, m) {
            if found.is_some() {
                return None;
            }
            found = Some(m);
        }
    }
    found
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;
    use std::sync::Arc;

    fn der(pem: &str) -> CertificateDer<'static> {
        parse_certs(pem.as_bytes(), "test").unwrap().remove(0)
    }

    /// Verifies `leaf` as a client certificate (chain, validity, clientAuth)
    /// against the CA certificates in `ca_pem`.
    fn client_verifies(ca_pem: &str, leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        for ca in parse_certs(ca_pem.as_bytes(), "ca").unwrap() {
            roots.add(ca).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        verifier
            .verify_client_cert(leaf, &[], rustls::pki_types::UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn a_client_certificate_names_its_principal_and_role_and_no_node() {
        let ca = ClusterCa::generate("test").unwrap();
        let issued = ca.issue_client("alice", ClientRole::ReadOnly).unwrap();
        let leaf = der(&issued.cert_pem);
        let params = CertificateParams::from_ca_cert_der(&leaf).unwrap();
        let uri = rcgen::Ia5String::try_from("paxos-client://ro/alice").unwrap();
        assert_eq!(params.subject_alt_names, vec![rcgen::SanType::URI(uri)]);
        assert_eq!(
            params.extended_key_usages,
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        );
        assert!(client_verifies(&ca.cert_pem(), &leaf).is_ok());
        // Not usable as a node certificate: it names no member.
        assert_eq!(cert_member(&leaf, &[PeerId(1), PeerId(2), PeerId(3)]), None);
        // And a node certificate carries no client URI.
        let node = ca.issue(PeerId(1)).unwrap();
        let node_params = CertificateParams::from_ca_cert_der(&der(&node.cert_pem)).unwrap();
        assert!(node_params
            .subject_alt_names
            .iter()
            .all(|san| !matches!(san, rcgen::SanType::URI(_))));
    }

    #[test]
    fn client_names_are_checked() {
        let ca = ClusterCa::generate("test").unwrap();
        for bad in ["", "-x", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(
                matches!(
                    ca.issue_client(bad, ClientRole::ReadWrite),
                    Err(CertError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        for good in ["a", "bench", "reader-2", "svc.api_1", &"x".repeat(64)] {
            assert!(
                ca.issue_client(good, ClientRole::ReadWrite).is_ok(),
                "{good:?}"
            );
        }
        assert_eq!(ClientRole::parse("rw"), Some(ClientRole::ReadWrite));
        assert_eq!(ClientRole::parse("ro"), Some(ClientRole::ReadOnly));
        assert_eq!(ClientRole::parse("admin"), Some(ClientRole::Admin));
        assert_eq!(ClientRole::parse("root"), None);
    }

    #[test]
    fn an_expired_client_certificate_does_not_verify() {
        let ca = ClusterCa::generate("test").unwrap();
        let past = SystemTime::now() - Duration::from_secs(10 * 86_400);
        let issued = ca
            .issue_client_with(
                "late",
                ClientRole::ReadWrite,
                Validity {
                    not_before: past - Duration::from_secs(86_400),
                    not_after: past,
                },
            )
            .unwrap();
        assert!(matches!(
            client_verifies(&ca.cert_pem(), &der(&issued.cert_pem)),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
            ))
        ));
    }

    #[test]
    fn a_second_run_reuses_the_ca_and_adds_clients() {
        let dir = tempfile::tempdir().unwrap();
        let (_, first) = write_certs(
            dir.path(),
            &[PeerId(1), PeerId(2)],
            &[("alice".to_string(), ClientRole::ReadWrite)],
        )
        .unwrap();
        assert!(first.ca_created);
        let ca_pem = fs::read_to_string(&first.ca_cert).unwrap();
        let alice = fs::read_to_string(&first.clients[0].2).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&first.ca_key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the CA key is private");
        }

        let (_, second) = write_certs(
            dir.path(),
            &[],
            &[("bob".to_string(), ClientRole::ReadOnly)],
        )
        .unwrap();
        assert!(!second.ca_created);
        assert_eq!(
            fs::read_to_string(&second.ca_cert).unwrap(),
            ca_pem,
            "ca.pem kept"
        );
        let bob = fs::read_to_string(&second.clients[0].2).unwrap();
        assert!(second.clients[0].2.ends_with("client-bob.pem"));
        // Both the old and the new client chain to the one CA; so does a node.
        assert!(client_verifies(&ca_pem, &der(&alice)).is_ok());
        assert!(client_verifies(&ca_pem, &der(&bob)).is_ok());
        let node1 =
            NodeIdentity::from_pem_files(PeerId(1), &first.nodes[0].1, &first.nodes[0].2).unwrap();
        assert!(client_verifies(&ca_pem, &node1.chain()[0]).is_ok());
    }

    #[test]
    fn a_ca_without_its_key_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("test").unwrap();
        fs::write(dir.path().join(CA_CERT_FILE), ca.cert_pem()).unwrap();
        let err = write_certs(dir.path(), &[PeerId(1)], &[]).unwrap_err();
        assert!(err.to_string().contains("ca.key.pem"), "{err}");
        assert_eq!(
            fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap(),
            ca.cert_pem()
        );
        assert!(!dir.path().join("node-1.pem").exists());
        // Nor loaded with another CA's key.
        let other = ClusterCa::generate("other").unwrap();
        assert!(matches!(
            ClusterCa::from_pem(&ca.cert_pem(), &other.key_pem()),
            Err(CertError::Invalid(_))
        ));
    }
}
