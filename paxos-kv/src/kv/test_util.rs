//! Helpers shared by the tests of the `kv` modules: zxids, encoded
//! commands, decoded results and snapshot images.

use super::{KvCommand, KvOp, KvResult, KvStore};
use bytes::Bytes;
use paxos_core::{Epoch, StateMachine, Zxid};

pub(super) fn z(n: u32) -> Zxid {
    Zxid::new(Epoch(1), n)
}

pub(super) fn cmd(client: u64, seq: u64, op: KvOp) -> Bytes {
    KvCommand {
        principal: Bytes::new(),
        client,
        seq,
        op,
    }
    .to_bytes()
}

pub(super) fn put(client: u64, seq: u64, k: &str, v: &str) -> Bytes {
    cmd(
        client,
        seq,
        KvOp::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        },
    )
}

pub(super) fn result(b: Bytes) -> KvResult {
    KvResult::decode(b).expect("the store returns decodable results")
}

pub(super) fn value(s: &KvStore, k: &str) -> Option<String> {
    s.get(k.as_bytes())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

pub(super) fn image(s: &KvStore) -> Vec<u8> {
    let mut out = Vec::new();
    s.snapshot(&mut out).expect("snapshot to memory");
    out
}

pub(super) fn cmd_as(principal: &'static [u8], client: u64, seq: u64, op: KvOp) -> Bytes {
    KvCommand {
        principal: Bytes::from_static(principal),
        client,
        seq,
        op,
    }
    .to_bytes()
}

pub(super) fn put_op(k: &str, v: &str) -> KvOp {
    KvOp::Put {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
    }
}
