//! Who a client is and what it may do.
//!
//! A node knows the [`Principal`] of every client connection: with TLS on
//! the client port, the one named by the client's certificate; with
//! `--insecure-plaintext-clients`, [`Principal::anonymous`] (read-write).
//!
//! A client certificate is signed by the cluster CA and names its principal
//! and role with exactly one URI subject alternative name,
//! `paxos-client://<role>/<name>`: `<role>` is `rw` ([`Role::ReadWrite`]),
//! `ro` ([`Role::ReadOnly`]) or `admin` ([`Role::Admin`]); `<name>` is 1 to 64 ASCII letters, digits,
//! `.`, `_` or `-`, starting with a letter or digit. `paxos-node certs
//! --clients alice,bob:ro,ops:admin` issues them (see `paxos_net_quic::certs`).
//! A certificate without such a URI (a node's), with two of them, or with a
//! malformed one names no principal and is refused.

use std::fmt;

use rustls::pki_types::CertificateDer;

/// What a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads, writes and status.
    ReadWrite,
    /// Reads and status; every write is refused before it is proposed.
    ReadOnly,
    /// Everything [`Role::ReadWrite`] may do, and cluster administration
    /// (`paxos-client admin ...`: leadership and membership changes).
    Admin,
}

impl Role {
    /// The role's name in a client certificate: `rw`, `ro` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadWrite => "rw",
            Role::ReadOnly => "ro",
            Role::Admin => "admin",
        }
    }

    /// Parses `rw`, `ro` or `admin`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "rw" => Some(Role::ReadWrite),
            "ro" => Some(Role::ReadOnly),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Whether this role may make replicated writes.
    pub fn may_write(self) -> bool {
        matches!(self, Role::ReadWrite | Role::Admin)
    }

    /// Whether this role may administer the cluster.
    pub fn may_admin(self) -> bool {
        self == Role::Admin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The URI scheme naming a client principal in its certificate.
pub const PRINCIPAL_URI_SCHEME: &str = "paxos-client";

/// Longest principal name, in bytes.
pub const MAX_PRINCIPAL_NAME_BYTES: usize = 64;

/// The name of the principal of every connection when the client port runs
/// without TLS (`--insecure-plaintext-clients`).
pub const ANONYMOUS: &str = "anonymous";

/// Why a certificate names no principal.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The certificate is not DER X.509.
    #[error("certificate does not parse: {0}")]
    Parse(String),
    /// No `paxos-client://` URI subject alternative name (a node's
    /// certificate, or another CA's).
    #[error("certificate names no client principal (no {PRINCIPAL_URI_SCHEME}:// URI subject alternative name)")]
    NoPrincipal,
    /// More than one principal URI.
    #[error("certificate names more than one client principal")]
    Ambiguous,
    /// A principal URI that does not follow
    /// `paxos-client://<rw|ro|admin>/<name>`.
    #[error(
        "malformed client principal URI {0:?} (expected {PRINCIPAL_URI_SCHEME}://<rw|ro|admin>/<name>)"
    )]
    Malformed(String),
}

/// An authenticated client: its name and role.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    name: String,
    role: Role,
}

impl Principal {
    /// A principal; `None` if `name` is not a valid principal name.
    pub fn new(name: &str, role: Role) -> Option<Principal> {
        is_valid_name(name).then(|| Principal {
            name: name.to_string(),
            role,
        })
    }

    /// The principal of every connection to a client port without TLS:
    /// [`ANONYMOUS`], with every right ([`Role::Admin`]).
    pub fn anonymous() -> Principal {
        Principal {
            name: ANONYMOUS.to_string(),
            role: Role::Admin,
        }
    }

    /// The principal's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The principal's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The URI naming this principal in a certificate.
    pub fn to_uri(&self) -> String {
        format!("{PRINCIPAL_URI_SCHEME}://{}/{}", self.role, self.name)
    }

    /// Parses `paxos-client://<rw|ro|admin>/<name>`; `Ok(None)` if `uri` has
    /// another scheme.
    pub fn from_uri(uri: &str) -> Result<Option<Principal>, AuthError> {
        let Some(rest) = uri
            .strip_prefix(PRINCIPAL_URI_SCHEME)
            .and_then(|r| r.strip_prefix("://"))
        else {
            return Ok(None);
        };
        let malformed = || AuthError::Malformed(truncate(uri));
        let (role, name) = rest.split_once('/').ok_or_else(malformed)?;
        let role = Role::parse(role).ok_or_else(malformed)?;
        Principal::new(name, role).map(Some).ok_or_else(malformed)
    }

    /// The principal a certificate names (its one `paxos-client://` URI
    /// subject alternative name). Checks nothing else: the chain, validity
    /// and usage are the TLS verifier's business.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Principal, AuthError> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, parsed) =
            X509Certificate::from_der(cert).map_err(|e| AuthError::Parse(e.to_string()))?;
        let san = parsed
            .subject_alternative_name()
            .map_err(|e| AuthError::Parse(e.to_string()))?;
        let mut found = None;
        for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
            if let GeneralName::URI(uri) = name {
                if let Some(p) = Principal::from_uri(uri)? {
                    if found.is_some() {
                        return Err(AuthError::Ambiguous);
                    }
                    found = Some(p);
                }
            }
        }
        found.ok_or(AuthError::NoPrincipal)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.role)
    }
}

/// Whether `name` is a valid principal name (see the module docs).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PRINCIPAL_NAME_BYTES
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// At most 100 bytes of untrusted text, for an error message.
fn truncate(s: &str) -> String {
    let mut end = s.len().min(100);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_bad_ones_are_refused() {
        let p = Principal::new("alice", Role::ReadOnly).unwrap();
        assert_eq!(p.to_uri(), "paxos-client://ro/alice");
        assert_eq!(Principal::from_uri(&p.to_uri()).unwrap(), Some(p));
        assert_eq!(Principal::from_uri("https://ro/alice").unwrap(), None);
        let admin = Principal::from_uri("paxos-client://admin/ops")
            .unwrap()
            .unwrap();
        assert_eq!(admin.role(), Role::Admin);
        assert!(admin.role().may_write() && admin.role().may_admin());
        assert!(!Role::ReadWrite.may_admin() && !Role::ReadOnly.may_admin());
        for bad in [
            "paxos-client://",
            "paxos-client://ro",
            "paxos-client://root/alice",
            "paxos-client://rw/",
            "paxos-client://rw/a/b",
            "paxos-client://rw/-a",
            "paxos-client:rw/alice",
        ] {
            // The last one has another "scheme" prefix shape: not ours.
            match Principal::from_uri(bad) {
                Err(AuthError::Malformed(_)) | Ok(None) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(Principal::from_uri("paxos-client://rw/a/b").is_err());
    }

    #[test]
    fn certificates_name_principals_and_node_certificates_do_not() {
        use paxos_net_quic::certs::{ClientRole, ClusterCa};
        let ca = ClusterCa::generate("test").unwrap();
        let parse = |pem: &str| {
            crate::tls::parse_certs(pem.as_bytes(), "test")
                .unwrap()
                .remove(0)
        };
        let rw = ca.issue_client("bench", ClientRole::ReadWrite).unwrap();
        let ro = ca.issue_client("reader", ClientRole::ReadOnly).unwrap();
        assert_eq!(
            Principal::from_certificate(&parse(&rw.cert_pem)).unwrap(),
            Principal::new("bench", Role::ReadWrite).unwrap()
        );
        assert_eq!(
            Principal::from_certificate(&parse(&ro.cert_pem))
                .unwrap()
                .role(),
            Role::ReadOnly
        );
        let node = ca.issue(paxos_net_quic::PeerId(1)).unwrap();
        assert!(matches!(
            Principal::from_certificate(&parse(&node.cert_pem)),
            Err(AuthError::NoPrincipal)
        ));
        assert!(matches!(
            Principal::from_certificate(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])),
            Err(AuthError::Parse(_))
        ));
    }
}
