//! An asynchronous client of the reference key-value node.
//!
//! One [`Client`] holds one TCP connection at a time and pipelines every call
//! made through it (calls from many tasks share it). Writes belong to a
//! [`Session`], which has at most one write in flight (the `&mut` borrow
//! enforces it); many sessions share one client. A write that reaches a
//! follower is answered with the leader's address; the client reconnects there
//! and retries the same command (same session and sequence number, so the
//! store applies it at most once). Every call is bounded by a timeout.
//!
//! # What a failed write means
//!
//! A write ends in one of three ways, and the result says which:
//!
//! - **Applied**: `Ok` with the store's result.
//! - **Outcome unknown**: [`ClientError::OutcomeUnknown`] or
//!   [`ClientError::SessionExpired`] (see
//!   [`ClientError::is_outcome_unknown`]): some attempt may have been
//!   proposed (it timed out, its connection broke after it was sent, or the
//!   leader that proposed it lost its leadership), so the write may still
//!   commit, or may never. Read the key back, or retry in the same
//!   [`Session`] (the store applies one sequence number at most once).
//! - **Not applied**: every other error. No attempt reached a leader that
//!   proposed it: refused before proposing (not the leader, no leader,
//!   admission control, a malformed or forbidden command), or superseded at
//!   its log position by another leader's entry.
//!
//! The store keeps a bounded table of sessions and evicts the least recently
//! used (see [`crate::kv`]). A write of an evicted session fails with
//! [`ClientError::SessionExpired`] (its outcome is unknown, like a timeout's:
//! an earlier attempt may have been applied); the session then opens a fresh
//! cluster-assigned session for its next write, never reusing the old id.
//!
//! Connections use TLS with a client certificate ([`ClientSecurity::Tls`],
//! see [`crate::tls`]); the handshake happens once per connection, when it
//! is opened. A node that refuses the certificate fails the call with
//! [`ClientError::Tls`] (not retried: it would be refused again); a write
//! by a read-only principal fails with [`ClientError::Forbidden`].
//! [`ClientSecurity::InsecurePlaintext`] speaks plain TCP to nodes run with
//! `--insecure-plaintext-clients`.

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::client_proto::{
    next_frame, write_frames, AdminChange, AdminRequest, ReadMode, Request, Response,
};
use crate::kv::{KvCommand, KvOp, KvResult};
use crate::shard::{position, KeyRange, RoutingTable};
use crate::tls::{describe_tls_error, ClientSecurity, ClientTlsConfig};

/// A failed client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node of the cluster could be reached.
    #[error("no node reachable (tried {tried} addresses): {last}")]
    Unreachable {
        /// How many addresses were tried.
        tried: usize,
        /// The last error seen.
        last: String,
    },
    /// The call did not complete in time.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The node answered with an error.
    #[error("node error: {0}")]
    Node(String),
    /// The node's answer did not fit the request.
    #[error("unexpected response: {0}")]
    Unexpected(String),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The write may or may not have been applied: an attempt was sent and
    /// then timed out, lost its connection, or was proposed by a leader
    /// that lost its leadership before the write committed. It may still
    /// commit later. Retrying in the same session is safe.
    #[error("outcome unknown: the write may or may not have been applied ({detail})")]
    OutcomeUnknown {
        /// The last thing that went wrong.
        detail: String,
    },
    /// TLS failed: the node refused this client's certificate (none, another
    /// CA's, expired, not a client's), the node's certificate is not
    /// trusted, or the node does not speak TLS (or only TLS). Not retried.
    #[error("TLS: {0}")]
    Tls(String),
    /// The node refused the request for this client's role (a write by a
    /// read-only principal); nothing was proposed.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The cluster no longer knows the session (it was evicted from the
    /// bounded session table): this attempt was not applied, but an earlier
    /// attempt of the same write may have been. The [`Session`] opens a new
    /// cluster-assigned session for its next write.
    #[error(
        "outcome unknown: session {session:#x} expired before write {seq} (evicted from the \
         cluster's session table); the write may or may not have been applied by an earlier \
         attempt; the next write opens a new session"
    )]
    SessionExpired {
        /// The expired session.
        session: u64,
        /// The sequence number of the refused write.
        seq: u64,
    },
    /// The group the write went to does not own its key (the key's range
    /// was given to another group by a split, or is still moving): the
    /// write was not applied. The client's view of the groups is out of
    /// date; the same write may be sent to the group that owns the key.
    #[error("wrong group: group {group} does not own the key (not applied)")]
    WrongGroup {
        /// The group that refused the write.
        group: u32,
    },
}

impl ClientError {
    /// True if the call was a write that may have been applied
    /// ([`ClientError::OutcomeUnknown`], [`ClientError::SessionExpired`]);
    /// false if it certainly was not (or the call was a read).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::OutcomeUnknown { .. } | ClientError::SessionExpired { .. }
        )
    }

    /// True if the request went to a group that does not own its key (a
    /// split moved it, or is moving it) and was not applied: it may be
    /// sent again once the client has learned the ranges again.
    pub fn is_misrouted(&self) -> bool {
        match self {
            ClientError::WrongGroup { .. } => true,
            ClientError::Node(e) => {
                e.starts_with("wrong group") || e.starts_with("retry: the key's range is moving")
            }
            _ => false,
        }
    }
}

/// A failed attempt of one request, and whether the request may have
/// reached the node (it was handed to the connection and then got no
/// answer): for a write, whether it may have been proposed.
struct AttemptError {
    error: ClientError,
    in_doubt: bool,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

struct Conn {
    addr: SocketAddr,
    tx: mpsc::Sender<(u64, Request)>,
    pending: Pending,
    /// Set by the reader when the server closed the connection.
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// Why the connection ended, if known: the node said so (an error
    /// frame with id 0: over its connection limit, idle, a bad frame), or
    /// TLS failed.
    reason: Arc<Mutex<Option<Closed>>>,
}

/// Why a connection ended.
#[derive(Clone, Debug)]
enum Closed {
    /// The node's last word (an error frame with id 0).
    Said(String),
    /// A TLS failure, in words.
    Tls(String),
}

/// The prefix of the error text with which a node answers a connection that
/// does not speak TLS to its TLS port.
pub const TLS_REQUIRED_PREFIX: &str = "tls required:";

impl Conn {
    fn is_usable(&self) -> bool {
        !self.tx.is_closed() && !self.closed.load(Ordering::Acquire)
    }

    /// The error for a call that the connection's end cut short.
    fn closed_error(&self) -> ClientError {
        match self.reason.lock().clone() {
            Some(Closed::Said(reason)) => ClientError::Node(reason),
            Some(Closed::Tls(reason)) => ClientError::Tls(reason),
            None => ClientError::Io(std::io::ErrorKind::ConnectionReset.into()),
        }
    }
}

/// A write session: an id unique in the cluster and the sequence of its
/// writes. The store applies each of its writes at most once, and a retry of
/// the last one returns the same result.
///
/// A session is client-named ([`Session::new`]: the caller picks the id) or
/// cluster-assigned ([`Session::assigned`]: opened by one extra replicated
/// command before the first write). A cluster-assigned session is
/// at-most-once unconditionally; a client-named one as long as its id is
/// unique and a copy of its first write does not outlive the session (see
/// [`crate::kv`]). After [`ClientError::SessionExpired`] either kind
/// continues as a fresh cluster-assigned session.
///
/// Against a cluster that hosts many groups, a session is one session per
/// group its writes go to (each group's store deduplicates on its own): a
/// client-named session uses its id in every group, each with its own
/// sequence; an assigned one is opened in each group at its first write
/// there.
#[derive(Debug)]
pub struct Session {
    /// Group 0's (the only group of a single-group cluster).
    id: Option<u64>,
    next_seq: u64,
    /// Every other group written to: its id (`None` until assigned) and
    /// next sequence.
    others: std::collections::BTreeMap<u32, (Option<u64>, u64)>,
    /// A client-named session's id, which every group starts with.
    named: Option<u64>,
}

impl Session {
    /// A client-named session; `id` must not be used by any other writer,
    /// now or later, and should be below 2^63 (the upper half is where the
    /// cluster assigns ids).
    pub fn new(id: u64) -> Session {
        Session {
            id: Some(id),
            next_seq: 1,
            others: std::collections::BTreeMap::new(),
            named: Some(id),
        }
    }

    /// A session whose id the cluster assigns when its first write is made.
    pub fn assigned() -> Session {
        Session {
            id: None,
            next_seq: 1,
            others: std::collections::BTreeMap::new(),
            named: None,
        }
    }

    /// The id and next sequence of the session in `group`.
    fn slot(&mut self, group: u32) -> (&mut Option<u64>, &mut u64) {
        if group == 0 {
            return (&mut self.id, &mut self.next_seq);
        }
        let named = self.named;
        let (id, seq) = self.others.entry(group).or_insert((named, 1));
        (id, seq)
    }

    /// The session id (in group 0), once known (`None` for an assigned
    /// session not yet opened, or one that expired).
    pub fn id(&self) -> Option<u64> {
        self.id
    }
}

/// A pipelined client; cheap to share behind an `Arc`.
pub struct Client {
    addrs: Vec<SocketAddr>,
    security: ClientSecurity,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// Connections to other nodes, to the leaders of groups that the
    /// current connection's node does not lead (many groups only).
    pool: tokio::sync::Mutex<std::collections::BTreeMap<SocketAddr, Arc<Conn>>>,
    /// The cluster's groups and where each one's leader is, as learned.
    routing: parking_lot::Mutex<Routing>,
    next_id: AtomicU64,
    /// Where in `addrs` the next connection without a preferred address
    /// starts: past the last node that could not serve (down, or without
    /// a leader), so that retries go round the cluster instead of asking
    /// the first node again and again.
    start: AtomicUsize,
    session: tokio::sync::Mutex<Session>,
    timeout: Duration,
    /// The principal this client authenticates as, named in every command
    /// (sessions belong to principals, see [`crate::kv`]).
    principal: Bytes,
    /// Connections opened so far ([`Client::connections_opened`]).
    opened: AtomicU64,
}

impl Client {
    /// A client of the cluster whose client addresses are `addrs`, connecting
    /// with `security` (TLS and a client certificate, normally). Its
    /// default session (for [`put`](Client::put), [`delete`](Client::delete)
    /// and [`cas`](Client::cas)) has the id `session`; concurrent calls on the
    /// default session are serialised. Use [`write_in`](Client::write_in)
    /// with a [`Session`] per task for concurrent writes.
    pub fn new(
        addrs: Vec<SocketAddr>,
        security: impl Into<ClientSecurity>,
        session: u64,
        timeout: Duration,
    ) -> Client {
        Client::with_session(addrs, security, Session::new(session), timeout)
    }

    /// A client whose default session is `session` (for example
    /// [`Session::assigned`]).
    pub fn with_session(
        addrs: Vec<SocketAddr>,
        security: impl Into<ClientSecurity>,
        session: Session,
        timeout: Duration,
    ) -> Client {
        let security = security.into();
        Client {
            principal: Bytes::copy_from_slice(security.principal().as_bytes()),
            addrs,
            security,
            conn: tokio::sync::Mutex::new(None),
            pool: tokio::sync::Mutex::new(std::collections::BTreeMap::new()),
            routing: parking_lot::Mutex::new(Routing::default()),
            next_id: AtomicU64::new(1),
            start: AtomicUsize::new(0),
            session: tokio::sync::Mutex::new(session),
            timeout,
            opened: AtomicU64::new(0),
        }
    }

    /// How many connections (TCP, and TLS unless plaintext) this client has
    /// opened since it was made. A client keeps one per node it talks to
    /// and replaces one only when it breaks; a count that keeps growing
    /// means connections are being lost (or nodes restarting).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Makes this client name `principal` in its commands instead of the
    /// one its certificate proves: only for tests of the node's check,
    /// which refuses such commands as forbidden.
    #[doc(hidden)]
    pub fn claiming_principal(mut self, principal: &str) -> Client {
        self.principal = Bytes::copy_from_slice(principal.as_bytes());
        self
    }

    /// The name of this client's principal (from its certificate;
    /// [`crate::auth::ANONYMOUS`] without TLS).
    pub fn principal(&self) -> &str {
        self.security.principal()
    }

    /// The id of the default session, once known.
    pub async fn session_id(&self) -> Option<u64> {
        self.session.lock().await.id()
    }

    async fn connect(&self, prefer: Option<SocketAddr>) -> Result<Arc<Conn>, ClientError> {
        if let Some(p) = prefer {
            if let Some(c) = self.pool.lock().await.get(&p) {
                if c.is_usable() {
                    return Ok(c.clone());
                }
            }
        }
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if prefer.is_none_or(|p| p == c.addr) && c.is_usable() {
                return Ok(c.clone());
            }
        }
        let mut order: Vec<SocketAddr> = prefer.into_iter().collect();
        let start = self.start.load(Ordering::Relaxed) % self.addrs.len().max(1);
        let (tail, head) = self.addrs.split_at(start.min(self.addrs.len()));
        order.extend(
            head.iter()
                .chain(tail)
                .copied()
                .filter(|a| Some(*a) != prefer),
        );
        let mut last = String::from("no address");
        let mut tls_failure = None;
        for addr in &order {
            // A node this client holds a connection to (many groups: a
            // leader of other groups) is asked over it.
            let pooled = self
                .pool
                .lock()
                .await
                .get(addr)
                .filter(|c| c.is_usable())
                .cloned();
            if let Some(c) = pooled {
                *guard = Some(c.clone());
                return Ok(c);
            }
            match tokio::time::timeout(self.timeout, open(*addr, &self.security)).await {
                Ok(Ok(conn)) => {
                    self.opened.fetch_add(1, Ordering::Relaxed);
                    let conn = Arc::new(conn);
                    if self.routing.lock().groups > 1 {
                        // Kept for the groups this node leads.
                        let mut pool = self.pool.lock().await;
                        if pool.len() >= MAX_POOLED_CONNECTIONS {
                            pool.retain(|_, c| c.is_usable());
                            if pool.len() >= MAX_POOLED_CONNECTIONS {
                                pool.clear();
                            }
                        }
                        pool.insert(conn.addr, conn.clone());
                    }
                    *guard = Some(conn.clone());
                    return Ok(conn);
                }
                Ok(Err(ClientError::Tls(e))) => {
                    last = format!("{addr}: {e}");
                    tls_failure = Some(last.clone());
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => {
                    last = match self.security {
                        ClientSecurity::Tls(_) => format!(
                            "{addr}: connect and TLS handshake timed out (is the node running \
                             with --insecure-plaintext-clients?)"
                        ),
                        ClientSecurity::InsecurePlaintext => format!("{addr}: connect timed out"),
                    }
                }
            }
        }
        *guard = None;
        // A node that answered and refused TLS says more than one that did
        // not answer.
        if let Some(tls) = tls_failure {
            return Err(ClientError::Tls(tls));
        }
        Err(ClientError::Unreachable {
            tried: order.len(),
            last,
        })
    }

    async fn call_once(&self, conn: &Conn, req: Request) -> Result<Response, AttemptError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().insert(id, tx);
        let not_sent = |error| AttemptError {
            error,
            in_doubt: false,
        };
        // The reader marks the connection closed and then fails every call
        // in `pending`; a call inserted after that must not wait for ever.
        if conn.closed.load(Ordering::Acquire) {
            conn.pending.lock().remove(&id);
            return Err(not_sent(conn.closed_error()));
        }
        if conn.tx.send((id, req)).await.is_err() {
            conn.pending.lock().remove(&id);
            return Err(not_sent(ClientError::Io(
                std::io::ErrorKind::BrokenPipe.into(),
            )));
        }
        // From here on the request may have reached the node.
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => {
                let error = conn.closed_error();
                // A node that refused the connection itself (TLS refused or
                // required, over its connection limit) read no request on
                // it; any other close may follow a proposal.
                let refused = matches!(&error, ClientError::Tls(_))
                    || matches!(&error, ClientError::Node(m) if m.starts_with("busy:"));
                Err(AttemptError {
                    error,
                    in_doubt: !refused,
                })
            }
            Err(_) => {
                conn.pending.lock().remove(&id);
                Err(AttemptError {
                    error: ClientError::Timeout(self.timeout),
                    in_doubt: true,
                })
            }
        }
    }

    /// Sends `req`, following leader redirects and retrying on a broken
    /// connection, for at most `attempts` tries. A write that fails after
    /// any attempt that may have been proposed fails with
    /// [`ClientError::OutcomeUnknown`], never with a definite error.
    async fn call(&self, req: Request) -> Result<Response, ClientError> {
        self.call_to(None, req).await
    }

    /// [`call`](Client::call) for a request of `group`: sent to where its
    /// leader was last seen, and where it is found is remembered.
    async fn call_to(&self, group: Option<u32>, req: Request) -> Result<Response, ClientError> {
        let attempts = 2 * self.addrs.len() + 8;
        let is_write = matches!(req.innermost(), Request::Write(_));
        let mut in_doubt = false;
        let mut prefer = group.and_then(|g| self.routing.lock().leader(g));
        let mut last: Option<ClientError> = None;
        // Nodes that answered "not the leader" during this call (bounded
        // by the attempts).
        let mut no_leader_at: Vec<SocketAddr> = Vec::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(20 * attempt.min(10) as u64)).await;
            }
            let conn = match self.connect(prefer.take()).await {
                Ok(c) => c,
                // Every node refused TLS: asking again changes nothing.
                Err(e @ ClientError::Tls(_)) => return Err(e),
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match self.call_once(&conn, req.clone()).await {
                Ok(Response::NotLeader { addr, .. }) => {
                    // Follow a hint to a node not yet found leaderless in
                    // this call; otherwise (no hint, a hint to itself, or a
                    // cycle of stale hints) go on round the cluster.
                    no_leader_at.push(conn.addr);
                    prefer = addr
                        .and_then(|a| a.parse().ok())
                        .filter(|a| !no_leader_at.contains(a));
                    if let Some(g) = group {
                        self.routing.lock().set_leader(g, prefer);
                    }
                    self.skip_past(conn.addr);
                    // The node answered: its connection is sound. It stops
                    // being the current one (the next attempt goes on round
                    // the cluster), but a pooled one (many groups) is kept
                    // for the groups that node leads.
                    self.leave_conn(&conn).await;
                    last = Some(ClientError::Node("no leader yet".into()));
                }
                Ok(Response::Error(e)) if e.starts_with("retry:") => {
                    last = Some(ClientError::Node(e));
                }
                Ok(Response::OutcomeUnknown(detail)) => {
                    // Proposed by a leader that lost its leadership: retry in
                    // the same session (applied at most once).
                    in_doubt = true;
                    last = Some(ClientError::OutcomeUnknown { detail });
                }
                // The role does not change between attempts: no attempt of
                // this request was proposed.
                Ok(Response::Error(e)) if e.starts_with(FORBIDDEN_PREFIX) => {
                    return Err(ClientError::Forbidden(
                        e[FORBIDDEN_PREFIX.len()..].trim_start().to_string(),
                    ));
                }
                Ok(Response::Error(e)) if is_write && in_doubt => {
                    return Err(ClientError::OutcomeUnknown {
                        detail: format!(
                            "an earlier attempt may have been proposed; last attempt: {e}"
                        ),
                    })
                }
                Ok(resp) => {
                    if let Some(g) = group {
                        self.routing.lock().set_leader(g, Some(conn.addr));
                    }
                    return Ok(resp);
                }
                // The same certificate would be refused again.
                Err(AttemptError {
                    error: e @ ClientError::Tls(_),
                    in_doubt: false,
                }) => {
                    self.drop_conn(&conn).await;
                    return Err(e);
                }
                Err(e) => {
                    in_doubt |= e.in_doubt;
                    self.skip_past(conn.addr);
                    self.drop_conn(&conn).await;
                    last = Some(e.error);
                }
            }
        }
        let last = last.unwrap_or(ClientError::Timeout(self.timeout));
        if is_write && in_doubt {
            return Err(match last {
                e @ ClientError::OutcomeUnknown { .. } => e,
                other => ClientError::OutcomeUnknown {
                    detail: format!(
                        "an earlier attempt may have been proposed; last attempt: {other}"
                    ),
                },
            });
        }
        Err(last)
    }

    /// The next connection without a preferred address starts after
    /// `addr`.
    fn skip_past(&self, addr: SocketAddr) {
        if let Some(i) = self.addrs.iter().position(|a| *a == addr) {
            self.start.store(i + 1, Ordering::Relaxed);
        }
    }

    /// `conn` is no longer the current connection (it stays in the pool,
    /// if it is there).
    async fn leave_conn(&self, conn: &Arc<Conn>) {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *guard = None;
        }
    }

    async fn drop_conn(&self, conn: &Arc<Conn>) {
        {
            let mut pool = self.pool.lock().await;
            if pool.get(&conn.addr).is_some_and(|c| Arc::ptr_eq(c, conn)) {
                pool.remove(&conn.addr);
            }
        }
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *guard = None;
        }
    }

    /// Opens a cluster-assigned session and returns its id.
    async fn open_session(&self, group: u32, groups: u32) -> Result<u64, ClientError> {
        let cmd = KvCommand {
            principal: self.principal.clone(),
            client: 0,
            seq: 0,
            op: KvOp::OpenSession,
        };
        let req = in_group(group, groups, Request::Write(cmd.to_bytes()));
        match self.call_to(Some(group), req).await? {
            Response::Written(r) => {
                match KvResult::decode(r).map_err(|e| ClientError::Unexpected(e.to_string()))? {
                    KvResult::SessionOpened { session } => Ok(session),
                    other => Err(ClientError::Unexpected(format!(
                        "opening a session answered {other:?}"
                    ))),
                }
            }
            Response::Error(e) => Err(ClientError::Node(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Runs one replicated write in `session` and returns its result. An
    /// assigned session not yet opened is opened first. In a cluster of
    /// many groups the write goes to the group that owns its key; when a
    /// split moved the key (the group answers "wrong group", having
    /// applied nothing) the client learns the ranges again and writes to
    /// the new owner, and while the key's range is being moved it waits
    /// (both for up to the client's timeout).
    pub async fn write_in(&self, session: &mut Session, op: KvOp) -> Result<KvResult, ClientError> {
        let started = std::time::Instant::now();
        // Bounded by the timeout: each pass sleeps.
        loop {
            let (groups, group) = self.route(op.key().map(|k| &k[..])).await?;
            let result = match group {
                Some(group) => self.write_once(session, group, groups, op.clone()).await,
                None => Err(ClientError::Node(
                    "retry: the key's range is moving between groups (a split)".into(),
                )),
            };
            match result {
                Err(e) if e.is_misrouted() && started.elapsed() < self.timeout => {
                    self.routing.lock().forget();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r => return r,
            }
        }
    }

    /// [`write_in`](Client::write_in) to `group`, once.
    async fn write_once(
        &self,
        session: &mut Session,
        group: u32,
        groups: u32,
        op: KvOp,
    ) -> Result<KvResult, ClientError> {
        let id = match *session.slot(group).0 {
            Some(id) => id,
            None => {
                let id = self.open_session(group, groups).await?;
                let (sid, next_seq) = session.slot(group);
                *sid = Some(id);
                // The open was the session's sequence 1.
                *next_seq = 2;
                id
            }
        };
        let (_, next_seq) = session.slot(group);
        // The sequence advances even if this call fails: a late copy of it
        // is then refused by the store instead of being applied out of order.
        let seq = *next_seq;
        *next_seq += 1;
        let cmd = KvCommand {
            principal: self.principal.clone(),
            client: id,
            seq,
            op,
        };
        let req = in_group(group, groups, Request::Write(cmd.to_bytes()));
        let response = match self.call_to(Some(group), req).await {
            Ok(r) => r,
            Err(e) => {
                if seq == 1 {
                    // A client-named session's first write has an unknown
                    // outcome: if it never commits, the cluster does not know
                    // the session and would refuse its next write as expired.
                    // Go on in a cluster-assigned session instead.
                    let (sid, next_seq) = session.slot(group);
                    *sid = None;
                    *next_seq = 1;
                }
                return Err(e);
            }
        };
        match response {
            Response::Written(r) => {
                match KvResult::decode(r).map_err(|e| ClientError::Unexpected(e.to_string()))? {
                    KvResult::StaleSequence { last } => Err(ClientError::Node(format!(
                        "sequence {seq} of session {id:#x} is stale (last applied {last})"
                    ))),
                    KvResult::SessionExpired { session: expired } => {
                        // Never reuse the id: the next write opens a new one.
                        let (sid, next_seq) = session.slot(group);
                        *sid = None;
                        *next_seq = 1;
                        tracing::info!(session = expired, seq, "session expired");
                        Err(ClientError::SessionExpired {
                            session: expired,
                            seq,
                        })
                    }
                    KvResult::WrongGroup => {
                        if seq == 1 {
                            // A first write refused this way opened no
                            // session: go on in a cluster-assigned one.
                            let (sid, next_seq) = session.slot(group);
                            *sid = None;
                            *next_seq = 1;
                        }
                        self.routing.lock().forget();
                        Err(ClientError::WrongGroup { group })
                    }
                    other @ (KvResult::GroupAllocated { .. }
                    | KvResult::SplitStarted { .. }
                    | KvResult::Retiring { .. }
                    | KvResult::Absorbing { .. }
                    | KvResult::Ingested { .. }
                    | KvResult::Refused { .. }) => Err(ClientError::Unexpected(format!(
                        "a write was answered {other:?}"
                    ))),
                    result => Ok(result),
                }
            }
            Response::Error(e) => {
                if e.starts_with("wrong group") {
                    self.routing.lock().forget();
                }
                Err(ClientError::Node(e))
            }
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The cluster's base group count and the group that owns `key` (group
    /// 0 for none; `None` while its range moves), with one look at the
    /// routing once it is known (the write path's).
    async fn route(&self, key: Option<&[u8]>) -> Result<(u32, Option<u32>), ClientError> {
        {
            let routing = self.routing.lock();
            if routing.groups > 0 {
                return Ok((routing.groups, key.map_or(Some(0), |k| routing.group_of(k))));
            }
        }
        let groups = self.groups().await?;
        Ok((
            groups,
            key.map_or(Some(0), |k| self.routing.lock().group_of(k)),
        ))
    }

    /// The cluster's group count, asked of any node the first time.
    pub async fn groups(&self) -> Result<u32, ClientError> {
        let known = self.routing.lock().groups;
        if known > 0 {
            return Ok(known);
        }
        let status = match self.call(Request::Status).await? {
            Response::Status(s) => s,
            Response::Error(e) => return Err(ClientError::Node(e)),
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        let routing = Routing::from_status(&status)?;
        let groups = routing.groups;
        *self.routing.lock() = routing;
        if groups > 1 {
            // The connection that asked was opened before the client knew
            // it would pool connections: pooled now, not opened again.
            let current = self.conn.lock().await.clone();
            if let Some(c) = current.filter(|c| c.is_usable()) {
                self.pool.lock().await.entry(c.addr).or_insert(c);
            }
        }
        Ok(groups)
    }

    /// Every group of the cluster, as a node's status lists them (the
    /// groups it was created with and those splits made).
    pub async fn group_ids(&self) -> Result<Vec<u32>, ClientError> {
        self.groups().await?;
        let ids = self.routing.lock().ids.clone();
        Ok(if ids.is_empty() { vec![0] } else { ids })
    }

    /// Splits group `group`: a new group, with an id group 0 allocates,
    /// takes the upper half of its range over (on every member of the
    /// group, through its own log). Returns the new group's id once the
    /// split committed; with `wait`, once the new group owns its range (or
    /// fails when `wait` passes first). Needs role admin.
    pub async fn split_group(
        &self,
        group: u32,
        wait: Option<Duration>,
    ) -> Result<(u32, String), ClientError> {
        let allocated = self.admin_in(0, AdminRequest::AllocateGroup).await?;
        let child = serde_json::from_str::<serde_json::Value>(&allocated)
            .ok()
            .and_then(|v| v["group"].as_u64())
            .and_then(|g| u32::try_from(g).ok())
            .ok_or_else(|| ClientError::Unexpected(format!("allocation answered {allocated}")))?;
        let split = match self.admin_in(group, AdminRequest::Split { child }).await {
            Ok(s) => s,
            // Proposed twice (a retry after a lost answer) and applied
            // before the second: the first one committed.
            Err(ClientError::Node(m)) if m.contains(&crate::kv::already_child(child)) => {
                serde_json::json!({ "new_group": child, "already_split": true }).to_string()
            }
            Err(e) => return Err(e),
        };
        let Some(wait) = wait else {
            return Ok((child, split));
        };
        let started = std::time::Instant::now();
        // Bounded by `wait`: each pass sleeps.
        loop {
            self.routing.lock().forget();
            self.groups().await?;
            if self.routing.lock().table_has(child) {
                return Ok((child, split));
            }
            if started.elapsed() >= wait {
                return Err(ClientError::Node(format!(
                    "group {child} did not own its range within {wait:?} (keys still moving)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes group `group` by merging it into `into` (by default the
    /// group owning the range next to its own, below it if any): `group`
    /// freezes its keys, `into` takes them over through its own log, and
    /// every member drops `group`. The two groups must have the same
    /// members; group 0 is never removed. Returns `into` once the merge
    /// started; with `wait`, once `group` owns nothing any more and `into`
    /// owns its range (or fails when `wait` passes first). Needs role
    /// admin.
    pub async fn merge_group(
        &self,
        group: u32,
        into: Option<u32>,
        wait: Option<Duration>,
    ) -> Result<u32, ClientError> {
        self.routing.lock().forget();
        self.groups().await?;
        let (range, into) = {
            let routing = self.routing.lock();
            let range = routing.table.range_of(group).ok_or_else(|| {
                ClientError::Node(format!(
                    "group {group} owns no range (not a group of the cluster, or its keys are \
                     moving)"
                ))
            })?;
            let into = match into {
                Some(i) => i,
                None => routing.table.neighbour_of(&range).ok_or_else(|| {
                    ClientError::Node(format!("no group owns a range next to group {group}'s"))
                })?,
            };
            (range, into)
        };
        self.admin_in(group, AdminRequest::Merge { into }).await?;
        let Some(wait) = wait else {
            return Ok(into);
        };
        let started = std::time::Instant::now();
        // Bounded by `wait`: each pass sleeps.
        loop {
            self.routing.lock().forget();
            self.groups().await?;
            {
                let routing = self.routing.lock();
                let absorbed = routing
                    .table
                    .range_of(into)
                    .is_some_and(|r| r.covers(&range));
                if absorbed && !routing.table_has(group) {
                    return Ok(into);
                }
            }
            if started.elapsed() >= wait {
                return Err(ClientError::Node(format!(
                    "group {into} did not take group {group}'s range over within {wait:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs one replicated write in the default session.
    pub async fn write(&self, op: KvOp) -> Result<KvResult, ClientError> {
        let mut session = self.session.lock().await;
        self.write_in(&mut session, op).await
    }

    /// Sets `key` to `value` in `session`.
    pub async fn put_in(
        &self,
        session: &mut Session,
        key: Bytes,
        value: Bytes,
    ) -> Result<KvResult, ClientError> {
        self.write_in(session, KvOp::Put { key, value }).await
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: Bytes, value: Bytes) -> Result<KvResult, ClientError> {
        self.write(KvOp::Put { key, value }).await
    }

    /// Removes `key`.
    pub async fn delete(&self, key: Bytes) -> Result<KvResult, ClientError> {
        self.write(KvOp::Delete { key }).await
    }

    /// Compare-and-set.
    pub async fn cas(
        &self,
        key: Bytes,
        expected: Option<Bytes>,
        new: Bytes,
    ) -> Result<KvResult, ClientError> {
        self.write(KvOp::Cas { key, expected, new }).await
    }

    /// Reads `key` (from the group that owns it; see
    /// [`write_in`](Client::write_in) for keys a split moves).
    pub async fn get(&self, key: Bytes, mode: ReadMode) -> Result<Option<Bytes>, ClientError> {
        let started = std::time::Instant::now();
        // Bounded by the timeout: each pass sleeps.
        loop {
            let (groups, group) = self.route(Some(&key)).await?;
            let result = match group {
                Some(group) => {
                    let req = in_group(
                        group,
                        groups,
                        Request::Get {
                            key: key.clone(),
                            mode,
                        },
                    );
                    match self.call_to(Some(group), req).await? {
                        Response::Value(v) => Ok(v),
                        Response::Error(e) => Err(ClientError::Node(e)),
                        other => Err(ClientError::Unexpected(format!("{other:?}"))),
                    }
                }
                None => Err(ClientError::Node(
                    "retry: the key's range is moving between groups (a split)".into(),
                )),
            };
            match result {
                Err(e) if e.is_misrouted() && started.elapsed() < self.timeout => {
                    self.routing.lock().forget();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    if e.is_misrouted() {
                        self.routing.lock().forget();
                    }
                    return Err(e);
                }
                r => return r,
            }
        }
    }

    /// Runs a cluster administration command (the connection's principal
    /// needs role `admin`) and returns the node's JSON answer. A leader
    /// transfer goes to the leader (redirects are followed) and answers
    /// once the leader has handed over; `Members` is answered by the first
    /// node reached (the leader's answer has each member's progress).
    pub async fn admin(&self, req: AdminRequest) -> Result<String, ClientError> {
        self.admin_in(0, req).await
    }

    /// [`admin`](Client::admin) for group `group` of a cluster of many
    /// groups (sent to that group's leader); group 0 is a single-group
    /// cluster's only one.
    pub async fn admin_in(&self, group: u32, req: AdminRequest) -> Result<String, ClientError> {
        let groups = self.groups().await?;
        if groups <= 1 && group > 0 {
            return Err(ClientError::Node(format!(
                "no group {group}: the cluster has one"
            )));
        }
        let resp = if groups > 1 {
            let req = in_group(group, groups, Request::Admin(req));
            self.call_to(Some(group), req).await?
        } else {
            self.call(Request::Admin(req)).await?
        };
        match resp {
            Response::Admin(json) => Ok(json),
            Response::Error(e) => Err(ClientError::Node(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Runs `req` in every group of the cluster, at most `parallel` groups
    /// at a time, for an operator who adds, promotes, demotes or removes a
    /// node in a cluster of many groups (each group has its own
    /// membership). A group that answers that it cannot yet (a `retry:`
    /// answer, a group between leaders, voters not yet back in sync, a
    /// timeout) is asked again every 200 ms for up to `wait`; a group
    /// whose membership already has the node in the role asked for counts
    /// as done, so the same command run again finishes what an earlier
    /// run left. `on_group` sees each group's outcome as it comes (for
    /// progress). Fails only if the number of groups cannot be learned.
    pub async fn admin_in_every_group(
        self: &Arc<Self>,
        req: AdminRequest,
        parallel: usize,
        wait: Duration,
        on_group: impl Fn(u32, &GroupOutcome) + Send + Sync + 'static,
    ) -> Result<EveryGroup, ClientError> {
        let ids = self.group_ids().await?;
        let gate = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let on_group = Arc::new(on_group);
        let mut tasks = tokio::task::JoinSet::new();
        for group in ids {
            let (client, gate, on_group) = (self.clone(), gate.clone(), on_group.clone());
            tasks.spawn(async move {
                // The gate is never closed while tasks hold it.
                let _permit = gate.acquire_owned().await.ok();
                let outcome = client.admin_until_settled(group, req, wait).await;
                on_group(group, &outcome);
                (group, outcome)
            });
        }
        let mut every = EveryGroup::default();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((g, GroupOutcome::Done(json))) => every.done.push((g, json)),
                Ok((g, GroupOutcome::Already(answer))) => every.already.push((g, answer)),
                Ok((g, GroupOutcome::Failed(e))) => every.failed.push((g, e)),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        every.done.sort_by_key(|(g, _)| *g);
        every.already.sort_by_key(|(g, _)| *g);
        every.failed.sort_by_key(|(g, _)| *g);
        Ok(every)
    }

    /// [`admin_in`](Client::admin_in), asked again while the answer is
    /// transient, for up to `wait` (bounded: one attempt per 200 ms).
    async fn admin_until_settled(
        &self,
        group: u32,
        req: AdminRequest,
        wait: Duration,
    ) -> GroupOutcome {
        let started = std::time::Instant::now();
        loop {
            match self.admin_in(group, req).await {
                Ok(json) => return GroupOutcome::Done(json),
                Err(e) if already_done(req, &e) => return GroupOutcome::Already(e.to_string()),
                Err(e) if admin_refusal_is_transient(&e) && started.elapsed() < wait => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return GroupOutcome::Failed(e),
            }
        }
    }

    /// The status JSON of the node at `addr` (no redirect). On a node
    /// hosting many groups it summarises them (see
    /// [`group_status_of`](Client::group_status_of) for one).
    pub async fn status_of(
        addr: SocketAddr,
        security: &ClientSecurity,
        timeout: Duration,
    ) -> Result<String, ClientError> {
        Client::ask_status(addr, security, timeout, Request::Status).await
    }

    /// The status JSON of group `group` at the node at `addr` (a node
    /// hosting many groups; group 0 is a single-group node's only one).
    pub async fn group_status_of(
        addr: SocketAddr,
        security: &ClientSecurity,
        timeout: Duration,
        group: u32,
    ) -> Result<String, ClientError> {
        let req = Request::InGroup {
            group,
            inner: Box::new(Request::Status),
        };
        Client::ask_status(addr, security, timeout, req).await
    }

    async fn ask_status(
        addr: SocketAddr,
        security: &ClientSecurity,
        timeout: Duration,
        req: Request,
    ) -> Result<String, ClientError> {
        let c = Client::new(vec![addr], security.clone(), 0, timeout);
        let conn = c.connect(Some(addr)).await?;
        match c.call_once(&conn, req).await.map_err(|e| e.error)? {
            Response::Status(s) => Ok(s),
            Response::Error(e) => Err(ClientError::Node(e)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// Connections a client keeps to the nodes leading its groups, at most.
const MAX_POOLED_CONNECTIONS: usize = 64;

/// `req` as sent for `group`: wrapped when the cluster has many groups
/// (a single-group node is sent the plain request it has always taken).
fn in_group(group: u32, groups: u32, req: Request) -> Request {
    if groups > 1 {
        Request::InGroup {
            group,
            inner: Box::new(req),
        }
    } else {
        req
    }
}

/// What a client knows of the cluster's groups: how many it was created
/// with (0: not asked yet), which group owns which range of keys
/// ([`crate::shard`]), and where each one's leader was last seen.
#[derive(Debug, Default)]
struct Routing {
    groups: u32,
    table: RoutingTable,
    /// Every group the status named (those taking a range over included).
    ids: Vec<u32>,
    leaders: BTreeMap<u32, SocketAddr>,
}

/// Groups a status may name, at most (what a client keeps of it).
const MAX_ROUTED_GROUPS: usize = 1 << 20;

impl Routing {
    /// From a node's status JSON: `groups` (absent: one) and, for many,
    /// every group's range and leader (`shards`; from a node that predates
    /// splits, `group_leaders` by base group) and the members' client
    /// addresses.
    fn from_status(status: &str) -> Result<Routing, ClientError> {
        let v: serde_json::Value = serde_json::from_str(status)
            .map_err(|e| ClientError::Unexpected(format!("status is not JSON: {e}")))?;
        let groups = match v.get("groups") {
            None => 1,
            Some(g) => g
                .as_u64()
                .and_then(|g| u32::try_from(g).ok())
                .filter(|&g| (1..=crate::node::MAX_GROUPS).contains(&g))
                .ok_or_else(|| ClientError::Unexpected(format!("status names {g} groups")))?,
        };
        let mut routing = Routing {
            groups,
            table: RoutingTable::of_base_groups(groups),
            ids: (0..groups).collect(),
            leaders: BTreeMap::new(),
        };
        if groups <= 1 {
            return Ok(routing);
        }
        let addrs = v.get("client_addrs").and_then(|a| a.as_object());
        let addr_of = |id: &serde_json::Value| -> Option<SocketAddr> {
            addrs?
                .get(&id.as_u64()?.to_string())?
                .as_str()?
                .parse()
                .ok()
        };
        // Every base group's leader, by id.
        if let Some(ids) = v.get("group_leaders").and_then(|l| l.as_array()) {
            for (g, id) in (0..groups).zip(ids) {
                if let Some(a) = addr_of(id) {
                    routing.leaders.insert(g, a);
                }
            }
        }
        // From a node that knows splits: the groups not as created, and the
        // base groups merged away (the rest own their base ranges).
        if let Some(shards) = v.get("shards").and_then(|s| s.as_array()) {
            let gone: BTreeSet<u32> = v
                .get("gone")
                .and_then(|g| g.as_array())
                .into_iter()
                .flatten()
                .take(MAX_ROUTED_GROUPS)
                .filter_map(|g| g.as_u64().and_then(|g| u32::try_from(g).ok()))
                .collect();
            let mut listed: BTreeMap<u32, KeyRange> = BTreeMap::new();
            for s in shards.iter().take(MAX_ROUTED_GROUPS) {
                let Some(g) = s["group"].as_u64().and_then(|g| u32::try_from(g).ok()) else {
                    continue;
                };
                let Some(r) = s["range"].as_str().and_then(KeyRange::from_hex) else {
                    continue;
                };
                listed.insert(g, r);
                match addr_of(&s["leader"]) {
                    Some(a) => routing.leaders.insert(g, a),
                    None => routing.leaders.remove(&g),
                };
            }
            let mut all: Vec<(u32, KeyRange)> = (0..groups)
                .filter(|g| !gone.contains(g) && !listed.contains_key(g))
                .map(|g| (g, KeyRange::of_base_group(g)))
                .collect();
            all.extend(listed);
            drop_covered(&mut all);
            routing.ids = all.iter().map(|(g, _)| *g).collect();
            routing.ids.sort_unstable();
            routing.table = RoutingTable::new(all).ok_or_else(|| {
                ClientError::Unexpected("the node's status names overlapping ranges".into())
            })?;
        }
        Ok(routing)
    }

    /// The group that owns `key` (`None` while its range moves between
    /// groups).
    fn group_of(&self, key: &[u8]) -> Option<u32> {
        if self.groups <= 1 {
            return Some(0);
        }
        self.table.group_at(position(key, self.groups))
    }

    fn leader(&self, group: u32) -> Option<SocketAddr> {
        self.leaders.get(&group).copied()
    }

    fn set_leader(&mut self, group: u32, addr: Option<SocketAddr>) {
        if self.groups <= 1 {
            // One group: the connection is the routing.
            return;
        }
        match addr {
            Some(a) if self.leaders.len() < MAX_ROUTED_GROUPS => {
                self.leaders.insert(group, a);
            }
            _ => {
                self.leaders.remove(&group);
            }
        }
    }

    /// Whether `group` owns a range in the table.
    fn table_has(&self, group: u32) -> bool {
        self.table.groups().any(|g| g == group)
    }

    /// Asks again before the next request (a node refused the routing).
    fn forget(&mut self) {
        *self = Routing::default();
    }
}

/// The prefix of the error text with which a node refuses a request for the
/// connection's role.
pub const FORBIDDEN_PREFIX: &str = "forbidden:";

/// Opens a connection to `addr`: TCP, then the TLS handshake if configured.
async fn open(addr: SocketAddr, security: &ClientSecurity) -> Result<Conn, ClientError> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    match security {
        ClientSecurity::InsecurePlaintext => {
            let (rd, wr) = stream.into_split();
            Ok(spawn_conn(addr, rd, wr))
        }
        ClientSecurity::Tls(tls) => {
            // rustls reads at most 4 KiB per call; the buffer below it lets
            // one system call take a whole burst of pipelined answers.
            let stream =
                tokio::io::BufReader::with_capacity(crate::tls::TLS_READ_BUFFER_BYTES, stream);
            let stream = tls
                .connector()
                .connect(ClientTlsConfig::server_name(), stream)
                .await
                .map_err(|e| match describe_tls_error(&e) {
                    Some(why) => ClientError::Tls(why),
                    None => ClientError::Io(e),
                })?;
            let (rd, wr) = tokio::io::split(stream);
            Ok(spawn_conn(addr, rd, wr))
        }
    }
}

/// Starts the writer and reader tasks of one connection.
fn spawn_conn<R, W>(addr: SocketAddr, mut rd: R, wr: W) -> Conn
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<(u64, Request)>(4096);
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    tokio::spawn(write_frames(wr, rx));
    let reader_pending = pending.clone();
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader_closed = closed.clone();
    let reason: Arc<Mutex<Option<Closed>>> = Arc::new(Mutex::new(None));
    let reader_reason = reason.clone();
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        'read: loop {
            match rd.read_buf(&mut buf).await {
                Ok(0) => break,
                Err(e) => {
                    // A node that refuses the client's certificate says so
                    // with an alert, after the client's side of the
                    // handshake completed: it shows up here.
                    if let Some(why) = describe_tls_error(&e) {
                        tracing::debug!(%addr, reason = %why, "TLS connection failed");
                        *reader_reason.lock() = Some(Closed::Tls(why));
                    }
                    break;
                }
                Ok(_) => loop {
                    match next_frame(&mut buf) {
                        Ok(Some(frame)) => match Response::decode(frame) {
                            // Id 0 is never a call's: the node says why it
                            // is closing this connection.
                            Ok((0, Response::Error(why))) => {
                                tracing::debug!(%addr, reason = %why, "node is closing the connection");
                                *reader_reason.lock() =
                                    Some(if why.starts_with(TLS_REQUIRED_PREFIX) {
                                        Closed::Tls(why)
                                    } else {
                                        Closed::Said(why)
                                    });
                            }
                            Ok((id, resp)) => {
                                if let Some(tx) = reader_pending.lock().remove(&id) {
                                    let _ = tx.send(resp);
                                }
                            }
                            Err(_) => break 'read,
                        },
                        Ok(None) => break,
                        Err(_) => break 'read,
                    }
                },
            }
        }
        // Fail every call still waiting on this connection, and make sure the
        // next call does not pick this connection again.
        reader_closed.store(true, Ordering::Release);
        reader_pending.lock().clear();
    });
    Conn {
        addr,
        tx,
        pending,
        closed,
        reason,
    }
}

/// What [`Client::admin_in_every_group`] got from each group.
#[derive(Debug, Default)]
pub struct EveryGroup {
    /// The groups that did what was asked, by group, with the node's JSON
    /// answer.
    pub done: Vec<(u32, String)>,
    /// The groups whose membership already had the node in the role asked
    /// for, by group, with the leader's answer saying so.
    pub already: Vec<(u32, String)>,
    /// The groups that did not, by group, with the last answer.
    pub failed: Vec<(u32, ClientError)>,
}

/// One group's outcome in [`Client::admin_in_every_group`].
#[derive(Debug)]
pub enum GroupOutcome {
    /// Done: the node's JSON answer.
    Done(String),
    /// Already as asked: the leader's answer saying so.
    Already(String),
    /// Not done: the last answer.
    Failed(ClientError),
}

/// Whether an administration request's refusal may pass if asked again:
/// a `retry:` answer (a change in flight, an observer catching up, a
/// hand-over), a group between leaders, voters not yet in sync (a quiet
/// group's leader hears its followers again a heartbeat after the request
/// woke it), or no answer in time.
pub fn admin_refusal_is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::Node(m) => {
            m.starts_with("retry:")
                || m.contains("no leader yet")
                || m.contains("in sync with the leader")
        }
        ClientError::Timeout(_) | ClientError::Unreachable { .. } | ClientError::Io(_) => true,
        _ => false,
    }
}

/// Whether `e` is the leader's answer that the node of a role change
/// already has the role asked for (`cannot Promote node 4: it is a voter`).
fn already_done(req: AdminRequest, e: &ClientError) -> bool {
    let (AdminRequest::Change { change, node, .. }, ClientError::Node(m)) = (req, e) else {
        return false;
    };
    let role = match change {
        AdminChange::AddVoter | AdminChange::Promote => "a voter",
        AdminChange::AddObserver | AdminChange::Demote => "an observer",
        AdminChange::Remove => "not a member",
    };
    *m == format!("cannot {change:?} node {node}: it is {role}")
}

/// Drops from `all` every range that lies inside another group's larger
/// range: such a range is a replica left behind by a merge (the other
/// group's range only grew by taking it over), so the larger one owns it.
/// Equal ranges are both kept (two groups claiming the same range are not
/// guessed between: the routing table refuses them), as are empty ones.
///
/// One sort and one sweep, O(n log n): a status names up to
/// `MAX_GROUPS` groups, and the client reads one on every routing refresh
/// (comparing every pair took a third of a second at 10 000 groups).
fn drop_covered(all: &mut Vec<(u32, KeyRange)>) {
    // Start ascending, end descending: every range that could cover one
    // comes before it, except the ones equal to it, which are next to it.
    all.sort_unstable_by(|(ga, a), (gb, b)| {
        (a.start, std::cmp::Reverse(a.end), *ga).cmp(&(b.start, std::cmp::Reverse(b.end), *gb))
    });
    // The largest end seen so far with its group, and the largest end
    // seen in any other group: the furthest a range of group g can be
    // covered to by another group is `best` unless g is best's group.
    let mut best: Option<(u128, u32)> = None;
    let mut other: Option<u128> = None;
    let mut keep = vec![true; all.len()];
    let mut i = 0;
    // Bounded: each pass moves `i` past one run of equal ranges (at
    // least one entry).
    while i < all.len() {
        let r = all[i].1;
        let mut j = i;
        while j < all.len() && all[j].1 == r {
            j += 1;
        }
        if !r.is_empty() {
            for (k, (g, _)) in all[i..j].iter().enumerate() {
                let reach = match best {
                    Some((end, bg)) if bg != *g => Some(end),
                    _ => other,
                };
                keep[i + k] = reach.is_none_or(|end| end < r.end);
            }
        }
        for &(g, _) in &all[i..j] {
            match best {
                Some((end, bg)) if bg == g => best = Some((end.max(r.end), g)),
                Some((end, _)) if r.end <= end => {
                    other = Some(other.map_or(r.end, |o| o.max(r.end)))
                }
                Some((end, _)) => {
                    other = Some(end);
                    best = Some((r.end, g));
                }
                None => best = Some((r.end, g)),
            }
        }
        i = j;
    }
    let mut keep = keep.into_iter();
    all.retain(|_| keep.next().unwrap_or(true));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(shards: serde_json::Value, gone: serde_json::Value) -> String {
        serde_json::json!({
            "groups": 4,
            "group_leaders": [1, 2, 3, 1],
            "client_addrs": { "1": "127.0.0.1:1", "2": "127.0.0.1:2", "3": "127.0.0.1:3" },
            "shards": shards,
            "gone": gone,
        })
        .to_string()
    }

    /// The definition `drop_covered` implements in one sweep: a non-empty
    /// range goes when another group's range covers it and differs from it.
    fn drop_covered_by_pairs(all: &[(u32, KeyRange)]) -> Vec<(u32, KeyRange)> {
        let mut kept: Vec<(u32, KeyRange)> = all
            .iter()
            .copied()
            .filter(|(g, r)| {
                !all.iter()
                    .any(|(o, big)| o != g && big.covers(r) && big != r && !r.is_empty())
            })
            .collect();
        kept.sort_unstable_by_key(|(g, r)| (r.start, r.end, *g));
        kept
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn dropping_covered_ranges_in_one_sweep_matches_comparing_every_pair(
            list in proptest::collection::vec((0u32..4, 0u128..8, 0u128..8), 0..12)
        ) {
            let all: Vec<(u32, KeyRange)> = list
                .into_iter()
                .map(|(g, a, b)| (g, KeyRange { start: a, end: b }))
                .collect();
            let mut swept = all.clone();
            drop_covered(&mut swept);
            swept.sort_unstable_by_key(|(g, r)| (r.start, r.end, *g));
            proptest::prop_assert_eq!(swept, drop_covered_by_pairs(&all));
        }
    }

    #[test]
    fn routing_takes_base_ranges_shards_and_gone_groups() {
        let r2 = KeyRange::of_base_group(2);
        let at = r2.midpoint().unwrap();
        let low = KeyRange {
            start: r2.start,
            end: at,
        };
        let high = KeyRange {
            start: at,
            end: r2.end,
        };
        let both = KeyRange {
            start: KeyRange::of_base_group(0).start,
            end: KeyRange::of_base_group(1).end,
        };
        let st = status(
            serde_json::json!([
                { "group": 2, "range": low.to_hex(), "leader": 3 },
                { "group": 9, "range": high.to_hex(), "leader": 2 },
                { "group": 0, "range": both.to_hex(), "leader": 1 },
            ]),
            serde_json::json!([1]),
        );
        let routing = Routing::from_status(&st).unwrap();
        assert_eq!(routing.ids, vec![0, 2, 3, 9]);
        assert_eq!(routing.table.group_at(low.start), Some(2));
        assert_eq!(routing.table.group_at(high.start), Some(9));
        assert_eq!(
            routing.table.group_at(KeyRange::of_base_group(1).start),
            Some(0)
        );
        assert_eq!(
            routing.table.group_at(KeyRange::of_base_group(3).start),
            Some(3)
        );
        assert_eq!(routing.leader(9), Some("127.0.0.1:2".parse().unwrap()));
    }

    #[test]
    fn a_range_left_behind_by_a_merge_routes_to_the_group_that_took_it() {
        // Group 1 merged into 0 on this node's replica of 0; its own replica
        // here lags from before the merge (not gone, still its base range).
        let both = KeyRange {
            start: KeyRange::of_base_group(0).start,
            end: KeyRange::of_base_group(1).end,
        };
        let st = status(
            serde_json::json!([{ "group": 0, "range": both.to_hex(), "leader": 1 }]),
            serde_json::json!([]),
        );
        let routing = Routing::from_status(&st).unwrap();
        assert_eq!(
            routing.table.group_at(KeyRange::of_base_group(1).start),
            Some(0)
        );
        // Two groups claiming the same range are not guessed between.
        let st = status(
            serde_json::json!([{ "group": 7, "range": KeyRange::of_base_group(3).to_hex() }]),
            serde_json::json!([]),
        );
        assert!(Routing::from_status(&st).is_err());
    }
}
