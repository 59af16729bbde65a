//! The client protocol of the reference node: length-prefixed frames over TLS
//! (or plain TCP with `--insecure-plaintext-clients`).
//!
//! A frame is `u32 length (LE) | body`; a body is a [`Request`] or a
//! [`Response`]. Requests carry an id chosen by the client, so one connection
//! can have many requests in flight (pipelining); responses may come back in
//! any order and name the request they answer.
//!
//! Request ids start at 1: a [`Response::Error`] with id 0 answers no
//! request. It is the node's last word on a connection it is about to close:
//! over its connection limit ("busy: too many client connections"), idle for
//! too long ("closed: no request for N ms"), or a malformed frame.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::kv::{KvCodecError, KvCommand, MAX_KEY_BYTES};

/// Largest client frame accepted, in bytes.
pub const MAX_CLIENT_FRAME_BYTES: usize = 2 * 1024 * 1024;

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Linearizable: confirmed with a quorum (read-index), then served.
    Linearizable,
    /// Served from the local state, possibly stale.
    Stale,
}

/// A client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A replicated write (put, delete or compare-and-set).
    ///
    /// Carried as the encoded [`KvCommand`] (checked when decoded), so the
    /// node proposes the very bytes it received, without re-encoding.
    Write(Bytes),
    /// A read of one key.
    Get {
        /// The key.
        key: Bytes,
        /// Linearizable or stale.
        mode: ReadMode,
    },
    /// The node's view of the cluster.
    Status,
    /// A cluster administration command (role `admin` only).
    Admin(AdminRequest),
    /// `inner` for group `group` of a node hosting many: a keyless write
    /// (opening a session), a group's status or an administration command
    /// of that group. A keyed request that names a group its key does not
    /// hash to is refused ([`crate::shard`]). Never nested.
    InGroup {
        /// The group.
        group: u32,
        /// The request.
        inner: Box<Request>,
    },
}

/// A cluster administration command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    /// Hand the leadership to voter `to` (the leader answers once it has
    /// handed over; a follower redirects to the leader).
    TransferLeader {
        /// The node id of the voter to lead.
        to: u64,
    },
    /// The configuration and each member's role and progress, as this node
    /// sees them (the leader knows every member's progress).
    Members,
    /// Change one node's role (answered once the change commits; a
    /// follower redirects to the leader).
    Change {
        /// What becomes of the node.
        change: AdminChange,
        /// The node id.
        node: u64,
        /// Where a node that joins is reached (required when adding a node
        /// the cluster has no address for; recorded with the membership,
        /// so every member can reach it).
        addrs: Option<NodeAddrs>,
    },
    /// Allocate an id for a new group (sent to group 0's leader, which
    /// counts the cluster's group ids): answered with `{"group": id}`.
    AllocateGroup,
    /// Split the group this request is sent to (its leader): the upper
    /// half of its range goes to a new group `child` (an id from
    /// [`AdminRequest::AllocateGroup`]), made on every member of the
    /// group, which takes the keys over through its own log. Answered
    /// once the split commits, with the two ranges; the keys move after.
    Split {
        /// The new group's id.
        child: u32,
    },
    /// Remove the group this request is sent to (its leader) by merging it
    /// into group `into`, which owns the adjacent range and has the same
    /// members: the group freezes its keys, `into` takes them over through
    /// its own log, and every member then drops the group. Answered once
    /// the freeze commits; the keys move after.
    Merge {
        /// The group that takes the range over.
        into: u32,
    },
}

/// A node's two addresses, as `paxos-node run --members` gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddrs {
    /// QUIC address for peer traffic.
    pub peer: SocketAddr,
    /// TCP address for clients.
    pub client: SocketAddr,
}

impl std::fmt::Display for NodeAddrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.peer, self.client)
    }
}

impl std::str::FromStr for NodeAddrs {
    type Err = String;

    /// Reads `PEER_ADDR/CLIENT_ADDR`.
    fn from_str(s: &str) -> Result<NodeAddrs, String> {
        let (peer, client) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected PEER_ADDR/CLIENT_ADDR"))?;
        Ok(NodeAddrs {
            peer: peer
                .parse()
                .map_err(|e| format!("{s:?}: bad peer address: {e}"))?,
            client: client
                .parse()
                .map_err(|e| format!("{s:?}: bad client address: {e}"))?,
        })
    }
}

/// One node's role change asked by an administrator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminChange {
    /// Add a node as a voter.
    AddVoter,
    /// Add a node as an observer.
    AddObserver,
    /// Make an observer a voter.
    Promote,
    /// Make a voter an observer.
    Demote,
    /// Remove a node (voter or observer).
    Remove,
}

impl AdminChange {
    fn tag(self) -> u8 {
        match self {
            AdminChange::AddVoter => 1,
            AdminChange::AddObserver => 2,
            AdminChange::Promote => 3,
            AdminChange::Demote => 4,
            AdminChange::Remove => 5,
        }
    }

    fn from_tag(t: u8) -> Option<AdminChange> {
        Some(match t {
            1 => AdminChange::AddVoter,
            2 => AdminChange::AddObserver,
            3 => AdminChange::Promote,
            4 => AdminChange::Demote,
            5 => AdminChange::Remove,
            _ => return None,
        })
    }
}

/// A response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// A write was committed and applied; the encoded `KvResult`.
    Written(Bytes),
    /// The value read (`None` if absent).
    Value(Option<Bytes>),
    /// This node does not lead; ask the node given, if known.
    NotLeader {
        /// The leader's node id, if known.
        leader: Option<u64>,
        /// The leader's client address, if known.
        addr: Option<String>,
    },
    /// The node's status, as JSON.
    Status(String),
    /// The request failed; the text says why. For a write: the node did
    /// not propose it (refused before proposing, or its proposal was
    /// superseded at its log position), so this attempt was not applied.
    /// A text starting with `retry:` is transient.
    Error(String),
    /// An administration command's result, as JSON.
    Admin(String),
    /// A write that the node proposed but can no longer follow (its
    /// leadership ended before the write committed): it may still commit
    /// under the next leader, or never. Retrying the same command in the
    /// same session is safe; the store applies it at most once.
    OutcomeUnknown(String),
}

/// A request or response frame that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// A field ran past the end of the frame.
    #[error("client frame truncated")]
    Truncated,
    /// An unknown tag.
    #[error("unknown client frame tag {0}")]
    UnknownTag(u8),
    /// A text field is not UTF-8.
    #[error("client frame text is not UTF-8")]
    Utf8,
    /// A field is longer than allowed.
    #[error("client frame field of {0} bytes is too long")]
    TooLong(usize),
    /// A node's addresses do not parse.
    #[error("bad node addresses: {0}")]
    BadAddress(String),
    /// Bytes follow a complete request.
    #[error("{0} bytes after the end of the client request")]
    Trailing(usize),
    /// The embedded command of request `id` is malformed; the frame itself
    /// is sound, so the request can be answered and the connection kept.
    #[error("request {id}: invalid command: {source}")]
    Command {
        /// The request's id.
        id: u64,
        /// What is wrong with the command.
        source: KvCodecError,
    },
}

/// Longest `PEER_ADDR/CLIENT_ADDR` text accepted.
const MAX_ADDRS_BYTES: usize = 256;

fn take(src: &mut Bytes, max: usize) -> Result<Bytes, ProtoError> {
    if src.remaining() < 4 {
        return Err(ProtoError::Truncated);
    }
    let len = src.get_u32_le() as usize;
    if len > max {
        return Err(ProtoError::TooLong(len));
    }
    if src.remaining() < len {
        return Err(ProtoError::Truncated);
    }
    Ok(src.split_to(len))
}

fn put(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u32_le(b.len() as u32);
    buf.put_slice(b);
}

fn text(src: &mut Bytes) -> Result<String, ProtoError> {
    let b = take(src, MAX_CLIENT_FRAME_BYTES)?;
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Utf8)
}

impl Request {
    /// The request itself, or the one an [`Request::InGroup`] carries.
    pub fn innermost(&self) -> &Request {
        match self {
            Request::InGroup { inner, .. } => inner,
            other => other,
        }
    }

    /// Appends `u32 len | id | body` to `buf`.
    pub fn encode_frame(&self, id: u64, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u32_le(0);
        buf.put_u64_le(id);
        self.encode_body(buf);
        let len = (buf.len() - start - 4) as u32;
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    fn encode_body(&self, buf: &mut BytesMut) {
        match self {
            Request::InGroup { group, inner } => {
                buf.put_u8(5);
                buf.put_u32_le(*group);
                inner.encode_body(buf);
            }
            Request::Write(cmd) => {
                buf.put_u8(1);
                buf.put_slice(cmd);
            }
            Request::Get { key, mode } => {
                buf.put_u8(2);
                buf.put_u8(match mode {
                    ReadMode::Linearizable => 0,
                    ReadMode::Stale => 1,
                });
                put(buf, key);
            }
            Request::Status => buf.put_u8(3),
            Request::Admin(a) => {
                buf.put_u8(4);
                match a {
                    AdminRequest::TransferLeader { to } => {
                        buf.put_u8(1);
                        buf.put_u64_le(*to);
                    }
                    AdminRequest::Members => buf.put_u8(2),
                    AdminRequest::Change {
                        change,
                        node,
                        addrs,
                    } => {
                        buf.put_u8(3);
                        buf.put_u8(change.tag());
                        buf.put_u64_le(*node);
                        // Optional, last: absent in the first version.
                        if let Some(a) = addrs {
                            put(buf, a.to_string().as_bytes());
                        }
                    }
                    AdminRequest::AllocateGroup => buf.put_u8(4),
                    AdminRequest::Split { child } => {
                        buf.put_u8(5);
                        buf.put_u32_le(*child);
                    }
                    AdminRequest::Merge { into } => {
                        buf.put_u8(6);
                        buf.put_u32_le(*into);
                    }
                }
            }
        }
    }

    /// Decodes a frame body (without its length prefix) into `(id, request)`.
    pub fn decode(mut src: Bytes) -> Result<(u64, Request), ProtoError> {
        if src.remaining() < 9 {
            return Err(ProtoError::Truncated);
        }
        let id = src.get_u64_le();
        let req = Request::decode_body(id, src, true)?;
        Ok((id, req))
    }

    /// Decodes a request body (tag and fields); `outer`: an
    /// [`Request::InGroup`] may wrap it.
    fn decode_body(id: u64, mut src: Bytes, outer: bool) -> Result<Request, ProtoError> {
        if src.remaining() < 1 {
            return Err(ProtoError::Truncated);
        }
        let req = match src.get_u8() {
            5 if outer => {
                if src.remaining() < 4 {
                    return Err(ProtoError::Truncated);
                }
                let group = src.get_u32_le();
                let inner = Request::decode_body(id, src, false)?;
                return Ok(Request::InGroup {
                    group,
                    inner: Box::new(inner),
                });
            }
            1 => {
                // Validate; keep the zero-copy slice for the replicated log.
                KvCommand::decode(src.clone())
                    .map_err(|source| ProtoError::Command { id, source })?;
                return Ok(Request::Write(src));
            }
            2 => {
                if src.remaining() < 1 {
                    return Err(ProtoError::Truncated);
                }
                let mode = match src.get_u8() {
                    0 => ReadMode::Linearizable,
                    1 => ReadMode::Stale,
                    t => return Err(ProtoError::UnknownTag(t)),
                };
                Request::Get {
                    key: take(&mut src, MAX_KEY_BYTES)?,
                    mode,
                }
            }
            3 => Request::Status,
            4 => {
                if src.remaining() < 1 {
                    return Err(ProtoError::Truncated);
                }
                Request::Admin(match src.get_u8() {
                    1 => {
                        if src.remaining() < 8 {
                            return Err(ProtoError::Truncated);
                        }
                        AdminRequest::TransferLeader {
                            to: src.get_u64_le(),
                        }
                    }
                    2 => AdminRequest::Members,
                    3 => {
                        if src.remaining() < 9 {
                            return Err(ProtoError::Truncated);
                        }
                        let t = src.get_u8();
                        let change = AdminChange::from_tag(t).ok_or(ProtoError::UnknownTag(t))?;
                        let node = src.get_u64_le();
                        let addrs = if src.has_remaining() {
                            let b = take(&mut src, MAX_ADDRS_BYTES)?;
                            let text = std::str::from_utf8(&b).map_err(|_| ProtoError::Utf8)?;
                            Some(text.parse().map_err(ProtoError::BadAddress)?)
                        } else {
                            None
                        };
                        AdminRequest::Change {
                            change,
                            node,
                            addrs,
                        }
                    }
                    4 => AdminRequest::AllocateGroup,
                    5 => {
                        if src.remaining() < 4 {
                            return Err(ProtoError::Truncated);
                        }
                        AdminRequest::Split {
                            child: src.get_u32_le(),
                        }
                    }
                    6 => {
                        if src.remaining() < 4 {
                            return Err(ProtoError::Truncated);
                        }
                        AdminRequest::Merge {
                            into: src.get_u32_le(),
                        }
                    }
                    t => return Err(ProtoError::UnknownTag(t)),
                })
            }
            t => return Err(ProtoError::UnknownTag(t)),
        };
        if src.has_remaining() {
            return Err(ProtoError::Trailing(src.remaining()));
        }
        Ok(req)
    }
}

impl Response {
    /// Appends `u32 len | id | body` to `buf`.
    pub fn encode_frame(&self, id: u64, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u32_le(0);
        buf.put_u64_le(id);
        match self {
            Response::Written(r) => {
                buf.put_u8(1);
                put(buf, r);
            }
            Response::Value(v) => {
                buf.put_u8(2);
                match v {
                    None => buf.put_u8(0),
                    Some(v) => {
                        buf.put_u8(1);
                        put(buf, v);
                    }
                }
            }
            Response::NotLeader { leader, addr } => {
                buf.put_u8(3);
                buf.put_u64_le(leader.map_or(0, |l| l + 1));
                put(buf, addr.as_deref().unwrap_or("").as_bytes());
            }
            Response::Status(s) => {
                buf.put_u8(4);
                put(buf, s.as_bytes());
            }
            Response::Error(e) => {
                buf.put_u8(5);
                put(buf, e.as_bytes());
            }
            Response::OutcomeUnknown(e) => {
                buf.put_u8(6);
                put(buf, e.as_bytes());
            }
            Response::Admin(s) => {
                buf.put_u8(7);
                put(buf, s.as_bytes());
            }
        }
        let len = (buf.len() - start - 4) as u32;
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Decodes a frame body (without its length prefix) into `(id, response)`.
    pub fn decode(mut src: Bytes) -> Result<(u64, Response), ProtoError> {
        if src.remaining() < 9 {
            return Err(ProtoError::Truncated);
        }
        let id = src.get_u64_le();
        let resp = match src.get_u8() {
            1 => Response::Written(take(&mut src, MAX_CLIENT_FRAME_BYTES)?),
            2 => {
                if src.remaining() < 1 {
                    return Err(ProtoError::Truncated);
                }
                match src.get_u8() {
                    0 => Response::Value(None),
                    1 => Response::Value(Some(take(&mut src, MAX_CLIENT_FRAME_BYTES)?)),
                    t => return Err(ProtoError::UnknownTag(t)),
                }
            }
            3 => {
                if src.remaining() < 8 {
                    return Err(ProtoError::Truncated);
                }
                let l = src.get_u64_le();
                let addr = text(&mut src)?;
                Response::NotLeader {
                    leader: l.checked_sub(1),
                    addr: (!addr.is_empty()).then_some(addr),
                }
            }
            4 => Response::Status(text(&mut src)?),
            5 => Response::Error(text(&mut src)?),
            6 => Response::OutcomeUnknown(text(&mut src)?),
            7 => Response::Admin(text(&mut src)?),
            t => return Err(ProtoError::UnknownTag(t)),
        };
        Ok((id, resp))
    }
}

/// A message that can be framed: [`Request`] or [`Response`].
pub trait Frame {
    /// Appends `u32 len | id | body` to `buf`.
    fn encode_frame(&self, id: u64, buf: &mut BytesMut);
}

impl Frame for Request {
    fn encode_frame(&self, id: u64, buf: &mut BytesMut) {
        Request::encode_frame(self, id, buf)
    }
}

impl Frame for Response {
    fn encode_frame(&self, id: u64, buf: &mut BytesMut) {
        Response::encode_frame(self, id, buf)
    }
}

/// Writes the frames queued on `rx` to `wr` until either side closes,
/// coalescing whatever is already queued (up to 256 KiB) into one write,
/// then shuts `wr` down.
pub async fn write_frames<F, W>(mut wr: W, mut rx: tokio::sync::mpsc::Receiver<(u64, F)>)
where
    F: Frame,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some((id, frame)) = rx.recv().await {
        frame.encode_frame(id, &mut buf);
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok((id, frame)) => frame.encode_frame(id, &mut buf),
                Err(_) => break,
            }
        }
        // The flush hands TLS records still buffered in the TLS layer to the
        // socket (a no-op on plain TCP).
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            break;
        }
        buf.clear();
    }
    // Tell the peer that nothing more comes (a TLS close_notify, then the
    // TCP FIN), so that it ends its side even while the read half of this
    // connection is still held; bounded, since a peer that reads nothing
    // would hold it for ever.
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, wr.shutdown()).await;
}

/// How long [`write_frames`] waits for its stream's shutdown.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Splits complete frames off the front of `buf`; `Err` on a frame over
/// [`MAX_CLIENT_FRAME_BYTES`] (the connection should then be closed).
pub fn next_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, ProtoError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_CLIENT_FRAME_BYTES {
        return Err(ProtoError::TooLong(len));
    }
    if buf.len() < 4 + len {
        // No room is reserved for what the length claims: the reader grows
        // the buffer as bytes arrive, so a connection that announces 2 MiB
        // and trickles bytes holds only what it sent.
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvOp;

    #[test]
    fn frames_round_trip_and_split() {
        let mut buf = BytesMut::new();
        let w = Request::Write(
            KvCommand {
                principal: Bytes::new(),
                client: 3,
                seq: 9,
                op: KvOp::Delete {
                    key: Bytes::from_static(b"k"),
                },
            }
            .to_bytes(),
        );
        w.encode_frame(1, &mut buf);
        Request::Get {
            key: Bytes::from_static(b"k"),
            mode: ReadMode::Stale,
        }
        .encode_frame(2, &mut buf);
        Response::NotLeader {
            leader: Some(0),
            addr: Some("127.0.0.1:1".into()),
        }
        .encode_frame(3, &mut buf);
        let f1 = next_frame(&mut buf).unwrap().unwrap();
        assert_eq!(Request::decode(f1).unwrap(), (1, w));
        let f2 = next_frame(&mut buf).unwrap().unwrap();
        assert!(matches!(
            Request::decode(f2).unwrap(),
            (
                2,
                Request::Get {
                    mode: ReadMode::Stale,
                    ..
                }
            )
        ));
        let f3 = next_frame(&mut buf).unwrap().unwrap();
        assert_eq!(
            Response::decode(f3).unwrap(),
            (
                3,
                Response::NotLeader {
                    leader: Some(0),
                    addr: Some("127.0.0.1:1".into())
                }
            )
        );
        assert!(next_frame(&mut buf).unwrap().is_none());
    }

    #[test]
    fn a_malformed_write_is_refused_at_decode() {
        let mut buf = BytesMut::new();
        Request::Write(Bytes::from_static(b"not a command")).encode_frame(7, &mut buf);
        let frame = next_frame(&mut buf).unwrap().unwrap();
        assert!(matches!(
            Request::decode(frame),
            Err(ProtoError::Command { id: 7, .. })
        ));
    }

    #[test]
    fn admin_requests_round_trip_and_truncations_are_refused() {
        for (id, req) in [
            (4, Request::Admin(AdminRequest::TransferLeader { to: 3 })),
            (5, Request::Admin(AdminRequest::Members)),
            (6, Request::Admin(AdminRequest::AllocateGroup)),
            (7, Request::Admin(AdminRequest::Split { child: 70_000 })),
            (8, Request::Admin(AdminRequest::Merge { into: 3 })),
            (
                6,
                Request::Admin(AdminRequest::Change {
                    change: AdminChange::Promote,
                    node: 4,
                    addrs: None,
                }),
            ),
            (
                7,
                Request::Admin(AdminRequest::Change {
                    change: AdminChange::AddObserver,
                    node: 5,
                    addrs: Some("127.0.0.1:7005/[::1]:8005".parse().unwrap()),
                }),
            ),
        ] {
            let mut buf = BytesMut::new();
            req.encode_frame(id, &mut buf);
            let frame = next_frame(&mut buf).unwrap().unwrap();
            assert_eq!(Request::decode(frame.clone()).unwrap(), (id, req.clone()));
            // Addresses are optional and last: cut right before them, a
            // request without them remains.
            let without_addrs = match req {
                Request::Admin(AdminRequest::Change {
                    addrs: Some(_),
                    change,
                    node,
                }) => {
                    let mut b = BytesMut::new();
                    Request::Admin(AdminRequest::Change {
                        change,
                        node,
                        addrs: None,
                    })
                    .encode_frame(id, &mut b);
                    Some(b.len() - 4)
                }
                _ => None,
            };
            for cut in 0..frame.len() {
                if Some(cut) == without_addrs {
                    continue;
                }
                assert!(Request::decode(frame.slice(..cut)).is_err(), "cut at {cut}");
            }
            let mut long = frame.to_vec();
            long.push(0);
            let decoded = Request::decode(Bytes::from(long));
            if matches!(
                req,
                Request::Admin(AdminRequest::Change { addrs: None, .. })
            ) {
                // Read as the start of the optional addresses: cut short.
                assert!(matches!(decoded, Err(ProtoError::Truncated)), "{decoded:?}");
            } else {
                assert!(
                    matches!(decoded, Err(ProtoError::Trailing(1))),
                    "{decoded:?}"
                );
            }
        }
        // Addresses that do not parse are refused with a clear error.
        let mut buf = BytesMut::new();
        Request::Admin(AdminRequest::Change {
            change: AdminChange::AddObserver,
            node: 5,
            addrs: None,
        })
        .encode_frame(8, &mut buf);
        put(&mut buf, b"not an address");
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_le_bytes());
        let frame = next_frame(&mut buf).unwrap().unwrap();
        assert!(matches!(
            Request::decode(frame),
            Err(ProtoError::BadAddress(_))
        ));
        let mut buf = BytesMut::new();
        Response::Admin("{}".into()).encode_frame(6, &mut buf);
        let frame = next_frame(&mut buf).unwrap().unwrap();
        assert_eq!(
            Response::decode(frame).unwrap(),
            (6, Response::Admin("{}".into()))
        );
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(u32::MAX);
        assert!(matches!(next_frame(&mut buf), Err(ProtoError::TooLong(_))));
    }
}
