//! Helpers shared by the tests of the `kv` modules: zxids, encoded
//! commands, decoded results and snapshot images.

use super::{Child, KvCommand, KvOp, KvResult, KvStore};
use crate::shard::{position, KeyRange};
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

/// The voters [`split_op`] names for the new group.
pub(super) const SPLIT_VOTERS: [u64; 3] = [1, 2, 3];
/// The observers [`split_op`] names for the new group.
pub(super) const SPLIT_OBSERVERS: [u64; 1] = [4];

/// A split at `at` for `child`, with the membership [`SPLIT_VOTERS`] and
/// [`SPLIT_OBSERVERS`].
pub(super) fn split_op(at: u128, child: u32) -> KvOp {
    KvOp::Split {
        at,
        child,
        voters: SPLIT_VOTERS.to_vec(),
        observers: SPLIT_OBSERVERS.to_vec(),
    }
}

/// The child [`split_op`] records.
pub(super) fn split_child(id: u32, range: KeyRange) -> Child {
    Child {
        id,
        range,
        voters: SPLIT_VOTERS.to_vec(),
        observers: SPLIT_OBSERVERS.to_vec(),
    }
}

/// An internal command (no session: principal, client and sequence 0).
pub(super) fn internal(op: KvOp) -> Bytes {
    cmd(0, 0, op)
}

/// A put of `v` under the raw key `k`.
pub(super) fn put_key(client: u64, seq: u64, k: &[u8], v: &str) -> Bytes {
    cmd(
        client,
        seq,
        KvOp::Put {
            key: Bytes::copy_from_slice(k),
            value: Bytes::copy_from_slice(v.as_bytes()),
        },
    )
}

/// Every pair of the store, ordered by key (for comparisons).
pub(super) fn pairs_of(s: &KvStore) -> std::collections::BTreeMap<Bytes, Bytes> {
    s.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// `n` keys named `prefix<i>` whose positions (among `base_groups`) lie in
/// `range`.
pub(super) fn keys_in(range: KeyRange, base_groups: u32, prefix: &str, n: usize) -> Vec<Bytes> {
    (0u32..)
        .map(|i| Bytes::from(format!("{prefix}{i}")))
        .filter(|k| range.contains(position(k, base_groups)))
        .take(n)
        .collect()
}

/// An ingest batch of the given (position, key) pairs of `source`, with
/// their values there.
pub(super) fn batch_of(
    source: &KvStore,
    from: u32,
    after: Option<(u128, Bytes)>,
    keys: &[(u128, Bytes)],
    last: bool,
) -> KvOp {
    KvOp::Ingest {
        from,
        after,
        pairs: keys
            .iter()
            .map(|(_, k)| {
                let v = source.get(k).cloned().unwrap_or_default();
                (k.clone(), v)
            })
            .collect(),
        last,
    }
}

/// The snapshot of `s` in format 3, which has no shard state (`s` must be
/// in a base group's initial shard state: nothing moving, no child, not
/// retired, nothing taken over).
pub(super) fn v3_image(s: &KvStore) -> Vec<u8> {
    assert!(s.outgoing().is_none() && s.incoming().is_none() && s.children().is_empty());
    assert!(s.retired_into().is_none() && s.taken().is_empty());
    let now = image(s);
    // magic, version, applied, max_sessions, max_session_bytes,
    // next_assigned; then the shard state: base_groups, range, two
    // flags, the child count, next_group, the retired flag, the count of
    // ranges taken over.
    let header = 8 + 4 + 4 * 8;
    let shard = 4 + 32 + 1 + 1 + 4 + 4 + 1 + 4;
    let mut v3 = now[..header].to_vec();
    v3[8..12].copy_from_slice(&3u32.to_le_bytes());
    v3.extend_from_slice(&now[header + shard..]);
    v3
}

/// A little-endian u32 of `img` at `i`, as a length.
fn u32_at(img: &[u8], i: usize) -> usize {
    let mut b = [0u8; 4];
    b.copy_from_slice(&img[i..i + 4]);
    u32::from_le_bytes(b) as usize
}

/// Where the children of a snapshot image of format 5, 6 or 7 start: past
/// the header, base_groups, the range, and the outgoing and incoming
/// ranges.
fn children_at(img: &[u8]) -> usize {
    let mut i = 8 + 4 + 4 * 8 + 4 + 32;
    // Outgoing: a flag, then child and range.
    i += if img[i] == 1 { 1 + 4 + 32 } else { 1 };
    // Incoming: a flag, then from, range, cursor and moved.
    if img[i] == 1 {
        i += 1 + 4 + 32;
        i += if img[i] == 1 {
            1 + 16 + 4 + u32_at(img, i + 1 + 16)
        } else {
            1
        };
        i += 8;
    } else {
        i += 1;
    }
    i
}

/// Where the `retired_into` flag of a format 6 or 7 snapshot image is:
/// past the children and `next_group`.
pub(super) fn retired_flag_at(img: &[u8]) -> usize {
    let mut i = children_at(img);
    let count = u32_at(img, i);
    i += 4;
    for _ in 0..count {
        // Id and range, then the voter and observer lists.
        i += 4 + 32;
        for _ in 0..2 {
            i += 4 + 8 * u32_at(img, i);
        }
    }
    i + 4
}

/// Where the ranges taken over (their count, then the entries) of a
/// format 7 snapshot image start: past the `retired_into` field.
pub(super) fn taken_at(img: &[u8]) -> usize {
    let i = retired_flag_at(img);
    if img[i] == 1 {
        i + 1 + 4
    } else {
        i + 1
    }
}

/// The bytes one entry of the ranges taken over fills in a snapshot
/// image: the group it came from and the range.
pub(super) const TAKEN_ENTRY_BYTES: usize = 4 + 32;

/// The snapshot of `s` in format 6: no record of the ranges taken over
/// (any that `s` has are left out).
pub(super) fn v6_image(s: &KvStore) -> Vec<u8> {
    let v7 = image(s);
    let i = taken_at(&v7);
    let count = u32_at(&v7, i);
    assert_eq!(count, s.taken().len());
    let mut v6 = v7[..i].to_vec();
    v6[8..12].copy_from_slice(&6u32.to_le_bytes());
    v6.extend_from_slice(&v7[i + 4 + count * TAKEN_ENTRY_BYTES..]);
    v6
}

/// The snapshot of `s` in format 5: no `retired_into` (`s` must not be
/// retired) and no record of the ranges taken over.
pub(super) fn v5_image(s: &KvStore) -> Vec<u8> {
    assert!(
        s.retired_into().is_none(),
        "format 5 knows no retired group"
    );
    let v6 = v6_image(s);
    // The retired flag (0), which this format does not have.
    let i = retired_flag_at(&v6);
    assert_eq!(v6[i], 0);
    let mut v5 = v6[..i].to_vec();
    v5[8..12].copy_from_slice(&5u32.to_le_bytes());
    v5.extend_from_slice(&v6[i + 1..]);
    v5
}

/// The snapshot of `s` in format 4: its children listed without their
/// memberships, no `retired_into` (`s` must not be retired), and no
/// record of the ranges taken over.
pub(super) fn v4_image(s: &KvStore) -> Vec<u8> {
    let v5 = v5_image(s);
    let mut i = children_at(&v5);
    let count = u32_at(&v5, i);
    i += 4;
    let mut v4 = v5[..i].to_vec();
    v4[8..12].copy_from_slice(&4u32.to_le_bytes());
    for _ in 0..count {
        // Id and range kept; the voter and observer lists dropped.
        v4.extend_from_slice(&v5[i..i + 4 + 32]);
        i += 4 + 32;
        for _ in 0..2 {
            i += 4 + 8 * u32_at(&v5, i);
        }
    }
    v4.extend_from_slice(&v5[i..]);
    v4
}

/// A valid membership for a split's new group: one to four distinct ids,
/// the first one or more of them voters, the rest observers, in no
/// particular order.
pub(super) fn arb_membership() -> proptest::strategy::BoxedStrategy<(Vec<u64>, Vec<u64>)> {
    use proptest::prelude::*;
    let id = prop_oneof![0..8u64, any::<u64>()];
    (
        prop::collection::btree_set(id, 1..5),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(ids, cut, reversed)| {
            let mut ids: Vec<u64> = ids.into_iter().collect();
            if reversed {
                ids.reverse();
            }
            let observers = ids.split_off(1 + cut.index(ids.len()));
            (ids, observers)
        })
        .boxed()
}

/// Any operation, internal ones included, with keys drawn from a small
/// space (so that writes meet), values of any size up to 300 000 bytes,
/// and positions around the base groups' boundaries (split points, and
/// the ends of ranges to absorb).
pub(super) fn arb_op() -> proptest::strategy::BoxedStrategy<KvOp> {
    use proptest::prelude::*;
    let key = prop::collection::vec(any::<u8>(), 0..3).prop_map(Bytes::from);
    let value = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from),
        (0..super::MAX_VALUE_BYTES).prop_map(|n| Bytes::from(vec![1u8; n % 300_000])),
    ];
    let small = prop::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from);
    let at = prop_oneof![
        any::<u128>(),
        (0..4u128).prop_map(|g| g << 64),
        (0..4u128).prop_map(|g| (g << 64) | (1 << 63)),
    ];
    prop_oneof![
        (key.clone(), value.clone()).prop_map(|(key, value)| KvOp::Put { key, value }),
        key.clone().prop_map(|key| KvOp::Delete { key }),
        (key.clone(), prop::option::of(value.clone()), value)
            .prop_map(|(key, expected, new)| KvOp::Cas { key, expected, new }),
        Just(KvOp::OpenSession),
        prop_oneof![0..8u32, any::<u32>()].prop_map(|floor| KvOp::AllocateGroup { floor }),
        (at.clone(), 0..4u32, arb_membership()).prop_map(|(at, child, (voters, observers))| {
            KvOp::Split {
                at,
                child,
                voters,
                observers,
            }
        }),
        (
            0..3u32,
            prop::option::of((at.clone(), key.clone())),
            prop::collection::vec((key, small), 0..4),
            any::<bool>(),
        )
            .prop_map(|(from, after, pairs, last)| KvOp::Ingest {
                from,
                after,
                pairs,
                last,
            }),
        (0..4u32).prop_map(|child| KvOp::FinishMove { child }),
        (0..4u32).prop_map(|into| KvOp::Retire { into }),
        (0..3u32, at.clone(), at).prop_map(|(from, start, end)| KvOp::Absorb {
            from,
            range: KeyRange { start, end },
        }),
    ]
    .boxed()
}
