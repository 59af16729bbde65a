//! The client port: accepting connections (TLS with client certificates,
//! or plain TCP when told so), reading requests, and writing answers. Each
//! connection runs in its own task and reaches the driver through one
//! bounded channel; answers come back through the connection's own bounded
//! queue, so a slow client never blocks the driver.

use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::auth::Principal;
use crate::budget::{ByteBudget, Share};
use crate::client::{FORBIDDEN_PREFIX, TLS_REQUIRED_PREFIX};
use crate::client_proto::{next_frame, write_frames, Frame, ProtoError, Request, Response};
use crate::kv::KvCommand;

/// Bytes of answers queued for one client connection's writer, at most: a
/// client that sends requests and does not read the answers loses answers
/// (it times out, as on a lost connection) instead of growing the node.
const MAX_CONNECTION_REPLY_BYTES: usize = 8 << 20;
/// Bytes of answers queued for all client connections together, at most.
pub(super) const MAX_REPLY_BYTES: usize = 512 << 20;

/// An answer on its way to a connection's writer, holding its share of the
/// answer budgets until the writer has encoded it.
struct Outgoing {
    resp: Response,
    _budget: Option<(Share, Share)>,
}

impl From<Response> for Outgoing {
    /// A small answer the connection task sends itself (refusals, its last
    /// word); bounded by the queue's count.
    fn from(resp: Response) -> Outgoing {
        Outgoing {
            resp,
            _budget: None,
        }
    }
}

impl Frame for Outgoing {
    fn encode_frame(&self, id: u64, buf: &mut BytesMut) {
        self.resp.encode_frame(id, buf)
    }
}

/// Roughly the bytes an answer keeps alive while it waits in a queue.
fn reply_bytes(resp: &Response) -> usize {
    let payload = match resp {
        Response::Written(b) => b.len(),
        Response::Value(v) => v.as_ref().map_or(0, |v| v.len()),
        Response::Status(t)
        | Response::Error(t)
        | Response::OutcomeUnknown(t)
        | Response::Admin(t) => t.len(),
        Response::NotLeader { addr, .. } => addr.as_ref().map_or(0, |a| a.len()),
    };
    payload + 32
}

/// Where a client's answer goes: its connection's writer, the request id,
/// and the answer budgets (the connection's, everyone's).
pub(super) struct Reply {
    tx: mpsc::Sender<(u64, Outgoing)>,
    id: u64,
    connection_budget: Arc<ByteBudget>,
    budget: Arc<ByteBudget>,
}

impl Reply {
    pub(super) fn send(self, resp: Response) {
        self.send_ref(resp)
    }

    /// Never blocks the loop on a slow client: an answer that does not fit
    /// the writer's queue or the budgets is dropped, and the client times
    /// out and retries.
    pub(super) fn send_ref(&self, resp: Response) {
        let n = reply_bytes(&resp);
        let permits = self
            .connection_budget
            .try_take(n)
            .and_then(|c| Some((c, self.budget.try_take(n)?)));
        match permits {
            Some(permits) => {
                let out = Outgoing {
                    resp,
                    _budget: Some(permits),
                };
                if self.tx.try_send((self.id, out)).is_err() {
                    tracing::debug!(id = self.id, "client's answer queue full; answer dropped");
                }
            }
            None => {
                tracing::debug!(
                    id = self.id,
                    bytes = n,
                    "client not reading its answers; answer dropped"
                )
            }
        }
    }
}

/// A request from a client connection.
pub(super) struct ClientMsg {
    pub(super) req: Request,
    pub(super) reply: Reply,
    /// The request's share of [`MAX_CLIENT_QUEUE_BYTES`], given back when
    /// the driver has taken the request.
    pub(super) _budget: Share,
}

/// Room made in a client connection's read buffer when it runs short.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// A read buffer with less room than this is grown before the next read.
const MIN_READ_ROOM_BYTES: usize = 4 * 1024;

/// Bytes of client requests queued for the driver (all connections
/// together), at most: a connection whose request does not fit waits, so
/// the queue is bounded in bytes as well as in count.
pub(super) const MAX_CLIENT_QUEUE_BYTES: usize = 64 << 20;

/// The connections' way to the driver: the bounded channel and its byte
/// budget.
#[derive(Clone)]
pub(super) struct ToDriver {
    pub(super) tx: mpsc::Sender<ClientMsg>,
    pub(super) budget: Arc<ByteBudget>,
    /// [`MAX_REPLY_BYTES`], shared by every connection's answers.
    pub(super) reply_budget: Arc<ByteBudget>,
}

impl ToDriver {
    /// Queues a request for the driver, waiting for room (in count and in
    /// bytes). `Err` once the driver is gone.
    async fn send(&self, req: Request, reply: Reply) -> Result<(), ()> {
        let bytes = request_bytes(&req);
        // A frame is at most MAX_CLIENT_FRAME_BYTES, well below the budget.
        let budget = self.budget.take(bytes.max(1)).await;
        let msg = ClientMsg {
            req,
            reply,
            _budget: budget,
        };
        self.tx.send(msg).await.map_err(|_| ())
    }
}

/// Why `principal` may not make `req` (`None`: it may): writes need role
/// rw, administration role admin, and a command must name the principal
/// the connection proved (sessions belong to principals).
fn forbidden(principal: &Principal, req: &Request) -> Option<String> {
    match req {
        Request::Write(_) if !principal.role().may_write() => Some(format!(
            "{FORBIDDEN_PREFIX} principal {} has role {}; writes need role rw",
            principal.name(),
            principal.role()
        )),
        Request::Admin(_) if !principal.role().may_admin() => Some(format!(
            "{FORBIDDEN_PREFIX} principal {} has role {}; admin commands need role admin",
            principal.name(),
            principal.role()
        )),
        Request::Write(cmd)
            if KvCommand::peek_principal(cmd).ok() != Some(principal.name().as_bytes()) =>
        {
            let named =
                KvCommand::peek_principal(cmd).map(|p| String::from_utf8_lossy(p).into_owned());
            Some(format!(
                "{FORBIDDEN_PREFIX} the command names principal {named:?} but this connection \
                 is authenticated as {}",
                principal.name()
            ))
        }
        // Splitting and moving keys are the node's own commands (asked for
        // with admin requests); a client's write carrying one is refused
        // whatever its role, or a writer could give keys away or drop them.
        Request::Write(cmd) if KvCommand::peek_is_internal(cmd) => Some(format!(
            "{FORBIDDEN_PREFIX} the command is one of the node's own (a split or a move of \
                 keys); ask for a split with an admin request"
        )),
        _ => None,
    }
}

/// The bytes a queued request holds (counted against the queue's budget).
fn request_bytes(req: &Request) -> usize {
    match req {
        Request::Write(cmd) => cmd.len(),
        Request::Get { key, .. } => key.len(),
        Request::Status | Request::Admin(_) => 0,
        Request::InGroup { inner, .. } => request_bytes(inner),
    }
}

/// How the client listener bounds its connections.
#[derive(Clone, Copy, Debug)]
pub(super) struct ClientLimits {
    pub(super) max_connections: usize,
    pub(super) idle_timeout: Option<Duration>,
}

/// How the client port authenticates its connections.
pub(super) enum ClientAuth {
    /// TLS, a client certificate required (see [`crate::tls`]).
    Tls {
        acceptor: tokio_rustls::TlsAcceptor,
        handshake_timeout: Duration,
    },
    /// Plain TCP; every connection is [`Principal::anonymous`]. A
    /// connection that opens with a TLS handshake within `sniff_timeout` is
    /// told, in plaintext, that the port speaks plain TCP, and closed.
    InsecurePlaintext { sniff_timeout: Duration },
}

/// TLS handshakes with connections over the limit at once, at most (each
/// is then told "busy"); past it, such a connection is closed unanswered.
const MAX_REFUSAL_HANDSHAKES: usize = 16;
/// Time given to the handshake of a connection over the limit.
const REFUSAL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed client handshakes logged at info level, before only every 1024th
/// is (the others at debug), so that a storm cannot flood the log.
const LOGGED_HANDSHAKE_FAILURES: u64 = 100;

/// Accepts client connections and serves each in its own task (the TLS
/// handshake included), at most `limits.max_connections` at once.
pub(super) async fn accept_clients(
    listener: TcpListener,
    to_driver: ToDriver,
    limits: ClientLimits,
    auth: Arc<ClientAuth>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSAL_HANDSHAKES));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut refused: u64 = 0;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    tracing::debug!(%peer, "client connected");
                    tokio::spawn(open_client(
                        stream,
                        peer,
                        to_driver.clone(),
                        limits.idle_timeout,
                        auth.clone(),
                        failures.clone(),
                        permit,
                    ));
                }
                Err(_) => {
                    refused += 1;
                    refuse_client(
                        stream,
                        peer,
                        limits.max_connections,
                        refused,
                        &auth,
                        &refusals,
                    );
                }
            },
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Answers a connection over the limit with one error frame (id 0) and
/// closes it, without blocking the accept loop. On plain TCP the frame goes
/// out with one non-blocking write into the fresh socket's empty send
/// buffer; with TLS a task does the handshake first (at most
/// [`MAX_REFUSAL_HANDSHAKES`] at once, each bounded in time; beyond that the
/// connection is closed unanswered).
fn refuse_client(
    stream: TcpStream,
    peer: SocketAddr,
    limit: usize,
    refused: u64,
    auth: &Arc<ClientAuth>,
    refusals: &Arc<Semaphore>,
) {
    let mut frame = BytesMut::new();
    Response::Error(format!(
        "busy: too many client connections (limit {limit}); try again later"
    ))
    .encode_frame(0, &mut frame);
    // One event per refusal at debug; a warning for the first and then
    // every 1024th, so that a connection storm cannot flood the log.
    tracing::debug!(%peer, limit, "client connection refused: too many connections");
    if refused == 1 || refused % 1024 == 0 {
        tracing::warn!(%peer, limit, refused_total = refused, "client connections refused: at the connection limit");
    }
    match &**auth {
        ClientAuth::InsecurePlaintext { .. } => {
            let _ = stream.try_write(&frame);
            drop(stream);
        }
        ClientAuth::Tls { acceptor, .. } => {
            let Ok(permit) = refusals.clone().try_acquire_owned() else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let handshake = tls_handshake(&acceptor, stream);
                if let Ok(Ok((mut tls, _))) =
                    tokio::time::timeout(REFUSAL_HANDSHAKE_TIMEOUT, handshake).await
                {
                    let _ = tokio::time::timeout(REFUSAL_HANDSHAKE_TIMEOUT, async {
                        let _ = tls.write_all(&frame).await;
                        let _ = tls.shutdown().await;
                    })
                    .await;
                }
            });
        }
    }
}

/// A client connection after its TLS handshake.
type ClientTlsStream = tokio_rustls::server::TlsStream<tokio::io::BufReader<TcpStream>>;

/// The first three bytes a client sent, waiting for them (`None`: it
/// closed first). A peer that sent fewer bytes yet is asked again shortly;
/// the caller bounds the wait.
async fn peek_head(stream: &TcpStream) -> Result<Option<[u8; 3]>, String> {
    let mut head = [0u8; 3];
    loop {
        let n = stream
            .peek(&mut head)
            .await
            .map_err(|e| format!("reading the first bytes: {e}"))?;
        if n == 0 {
            return Ok(None);
        }
        if n == head.len() || head[0] != crate::tls::TLS_HANDSHAKE_RECORD {
            return Ok(Some(head));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether a connection's first bytes are a TLS handshake record header:
/// the handshake type and a 3.x version. A plaintext frame starts with its
/// length (little-endian), which looks like that only for lengths of
/// 0x0?0316 bytes with a record version byte, never for a request under
/// 64 KiB.
fn looks_like_tls(head: [u8; 3]) -> bool {
    head[0] == crate::tls::TLS_HANDSHAKE_RECORD && head[1] == 0x03 && head[2] <= 0x04
}

/// A plaintext port's answer to a client that opened with a TLS handshake:
/// one plaintext error frame, which the client's TLS layer fails on at once
/// (its first byte is no TLS record type), instead of both sides waiting
/// for the other. The rest of the client's bytes are read (for a bounded
/// time) before the socket closes, so that it sees the answer, not a reset.
async fn refuse_tls_client(mut stream: TcpStream, wait: Duration) {
    let mut frame = BytesMut::new();
    Response::Error(
        "this port speaks plain TCP (the node runs with --insecure-plaintext-clients) and \
         the client began a TLS handshake; connect without TLS (paxos-client \
         --insecure-plaintext)"
            .to_string(),
    )
    .encode_frame(0, &mut frame);
    let _ = tokio::time::timeout(wait, async {
        stream.write_all(&frame).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        // Until the client closes; bounded by `wait`.
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// The TLS handshake of a client connection, and the principal its
/// certificate names. A connection whose first byte is not a TLS handshake
/// record (a plaintext client) is told so in a plaintext error frame.
async fn tls_handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
) -> Result<(ClientTlsStream, Principal), String> {
    let head = peek_head(&stream)
        .await?
        .ok_or_else(|| "closed before the TLS handshake".to_string())?;
    if !looks_like_tls(head) {
        let mut frame = BytesMut::new();
        Response::Error(format!(
            "{TLS_REQUIRED_PREFIX} this port speaks TLS; connect with a client certificate \
             signed by the cluster CA (paxos-client --certs DIR --name NAME)"
        ))
        .encode_frame(0, &mut frame);
        let mut stream = stream;
        let _ = stream.write_all(&frame).await;
        let _ = stream.shutdown().await;
        return Err("not TLS (a plaintext client?); told so and closed".to_string());
    }
    // rustls reads at most 4 KiB per call; the buffer below it lets one
    // system call take a whole burst of pipelined requests.
    let buffered = tokio::io::BufReader::with_capacity(crate::tls::TLS_READ_BUFFER_BYTES, stream);
    let tls = acceptor.accept(buffered).await.map_err(|e| {
        let no_principal = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|tls| {
                matches!(
                    tls,
                    rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ApplicationVerificationFailure
                    )
                )
            });
        if no_principal {
            "TLS handshake failed: the client certificate names no principal \
             (paxos-client://<rw|ro>/<name>; a node certificate?)"
                .to_string()
        } else {
            format!("TLS handshake failed: {e}")
        }
    })?;
    let principal = crate::tls::peer_principal(tls.get_ref().1).map_err(|e| e.to_string())?;
    Ok((tls, principal))
}

/// Authenticates a new client connection (TLS handshake, bounded by the
/// handshake timeout), then serves it. A failed handshake is logged with the
/// peer's address and touches no other connection.
async fn open_client(
    stream: TcpStream,
    peer: SocketAddr,
    to_driver: ToDriver,
    idle_timeout: Option<Duration>,
    auth: Arc<ClientAuth>,
    failures: Arc<std::sync::atomic::AtomicU64>,
    permit: OwnedSemaphorePermit,
) {
    match &*auth {
        ClientAuth::InsecurePlaintext { sniff_timeout } => {
            // A client that sends nothing within the timeout is served (and
            // then closed by the idle timeout, if any), as before.
            let head = tokio::time::timeout(*sniff_timeout, peek_head(&stream)).await;
            if let Ok(Ok(Some(head))) = head {
                if looks_like_tls(head) {
                    let n = failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if n <= LOGGED_HANDSHAKE_FAILURES || n % 1024 == 0 {
                        tracing::info!(%peer, failed_total = n, "client connection refused: a TLS handshake at the plaintext port; told so");
                    }
                    refuse_tls_client(stream, *sniff_timeout).await;
                    return;
                }
            }
            let (rd, wr) = stream.into_split();
            let principal = Arc::new(Principal::anonymous());
            serve_client(rd, wr, peer, principal, to_driver, idle_timeout, permit).await;
        }
        ClientAuth::Tls {
            acceptor,
            handshake_timeout,
        } => {
            let handshake = tls_handshake(acceptor, stream);
            let why = match tokio::time::timeout(*handshake_timeout, handshake).await {
                Ok(Ok((tls, principal))) => {
                    tracing::debug!(%peer, %principal, "client authenticated");
                    let (rd, wr) = tokio::io::split(tls);
                    let principal = Arc::new(principal);
                    serve_client(rd, wr, peer, principal, to_driver, idle_timeout, permit).await;
                    return;
                }
                Ok(Err(why)) => why,
                Err(_) => format!("no TLS handshake within {handshake_timeout:?}"),
            };
            let n = failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n <= LOGGED_HANDSHAKE_FAILURES || n % 1024 == 0 {
                tracing::info!(%peer, error = %why, failed_total = n, "client connection refused");
            } else {
                tracing::debug!(%peer, error = %why, "client connection refused");
            }
        }
    }
}

/// One client connection: frames in, requests to the driver, answers out.
/// Every request carries the connection's `principal`; a write from a
/// read-only principal is refused here, before it reaches the driver.
/// Holds `_permit` (its place under the connection limit) until it ends.
/// With an idle timeout, a connection that sends nothing for that long is
/// told so (an error frame with id 0) and closed.
async fn serve_client<R, W>(
    mut rd: R,
    wr: W,
    peer: SocketAddr,
    principal: Arc<Principal>,
    to_driver: ToDriver,
    idle_timeout: Option<Duration>,
    _permit: OwnedSemaphorePermit,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<(u64, Outgoing)>(8192);
    let connection_budget = ByteBudget::new(MAX_CONNECTION_REPLY_BYTES);
    let writer = tokio::spawn(write_frames(wr, rx));
    // Small to start (thousands of idle connections cost little), grown
    // before each read and by next_frame as frames need it.
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    // One timer per connection, moved only when it fires (not on every
    // read): it then sleeps again until `idle_timeout` after the last input.
    let mut last_input = tokio::time::Instant::now();
    let idle = tokio::time::sleep_until(last_input + idle_timeout.unwrap_or_default());
    tokio::pin!(idle);
    'conn: loop {
        // Room in proportion to what arrived (a frame's buffer doubles as
        // its bytes come in), never in proportion to a length claim; and
        // only when the buffer is nearly full, so that a busy connection
        // allocates once per READ_CHUNK_BYTES or more, not once per read.
        if buf.capacity() - buf.len() < MIN_READ_ROOM_BYTES {
            buf.reserve(READ_CHUNK_BYTES.max(buf.len()));
        }
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    last_input = tokio::time::Instant::now();
                    loop {
                        match next_frame(&mut buf) {
                            Ok(Some(frame)) => match Request::decode(frame) {
                                // Checked on the request a group
                                // wrapper carries: wrapping must not
                                // get past a check.
                                Ok((id, req)) if forbidden(&principal, req.innermost()).is_some() => {
                                    let why = forbidden(&principal, req.innermost()).unwrap_or_default();
                                    if tx.send((id, Response::Error(why).into())).await.is_err() {
                                        break 'conn;
                                    }
                                }
                                Ok((id, req)) => {
                                    let reply = Reply {
                                        tx: tx.clone(),
                                        id,
                                        connection_budget: connection_budget.clone(),
                                        budget: to_driver.reply_budget.clone(),
                                    };
                                    if to_driver.send(req, reply).await.is_err() {
                                        break 'conn;
                                    }
                                }
                                // A well-framed request with a bad command:
                                // refused (not proposed), the connection kept.
                                Err(ProtoError::Command { id, source }) => {
                                    let why = format!("invalid command: {source}");
                                    if tx.send((id, Response::Error(why).into())).await.is_err() {
                                        break 'conn;
                                    }
                                }
                                Err(e) => {
                                    let _ = tx
                                        .send((0, Response::Error(format!("bad request: {e}")).into()))
                                        .await;
                                    break 'conn;
                                }
                            },
                            Ok(None) => break,
                            Err(e) => {
                                let _ = tx
                                    .send((0, Response::Error(format!("bad frame: {e}")).into()))
                                    .await;
                                break 'conn;
                            }
                        }
                    }
                }
            },
            () = &mut idle, if idle_timeout.is_some() => {
                let timeout = idle_timeout.unwrap_or_default();
                let deadline = last_input + timeout;
                if tokio::time::Instant::now() >= deadline {
                    let idle_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                    tracing::info!(%peer, idle_ms, "client connection idle; closed");
                    let _ = tx.try_send((
                        0,
                        Response::Error(format!("closed: no request for {idle_ms} ms")).into(),
                    ));
                    break;
                }
                idle.as_mut().reset(deadline);
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
