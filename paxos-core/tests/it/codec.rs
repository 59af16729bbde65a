//! Codec properties: every message round-trips; arbitrary bytes decode to
//! an error or a message, never a panic (CI twin of `fuzz_targets/core_codec.rs`).

use bytes::{Bytes, BytesMut};
use paxos_core::{
    Codec, Entry, EntryKind, Envelope, Epoch, GroupId, Message, NodeId, SnapChunk, Zxid,
};
use proptest::prelude::*;

fn zxid() -> impl Strategy<Value = Zxid> {
    any::<u64>().prop_map(Zxid)
}
fn epoch() -> impl Strategy<Value = Epoch> {
    any::<u32>().prop_map(Epoch)
}
fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}
fn entries() -> impl Strategy<Value = Vec<Entry>> {
    proptest::collection::vec(
        (zxid(), bytes(), any::<bool>()).prop_map(|(zxid, data, config)| Entry {
            zxid,
            kind: if config {
                EntryKind::Config
            } else {
                EntryKind::Command
            },
            data,
        }),
        0..8,
    )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (epoch(), epoch(), zxid(), any::<bool>()).prop_map(|(a, c, l, r)| {
            Message::FollowerInfo {
                accepted_epoch: a,
                current_epoch: c,
                last_zxid: l,
                recovering: r,
            }
        }),
        epoch().prop_map(|epoch| Message::Readmit { epoch }),
        (epoch(), zxid()).prop_map(|(epoch, commit)| Message::Quiesce { epoch, commit }),
        (epoch(), any::<u64>()).prop_map(|(epoch, to)| Message::TakeOver {
            epoch,
            to: NodeId(to)
        }),
        (epoch(), any::<u32>(), any::<bool>()).prop_map(|(epoch, round, established)| {
            Message::NewEpoch {
                epoch,
                round,
                established,
            }
        }),
        (epoch(), any::<u32>(), epoch(), zxid()).prop_map(
            |(epoch, round, current_epoch, last_zxid)| {
                Message::AckEpoch {
                    epoch,
                    round,
                    current_epoch,
                    last_zxid,
                }
            }
        ),
        (epoch(), epoch()).prop_map(|(epoch, accepted_epoch)| Message::EpochRefused {
            epoch,
            accepted_epoch
        }),
        (epoch(), any::<u32>(), zxid()).prop_map(|(epoch, round, to)| Message::Trunc {
            epoch,
            round,
            to
        }),
        (epoch(), zxid(), entries()).prop_map(|(epoch, prev, entries)| Message::Diff {
            epoch,
            prev,
            entries
        }),
        (
            epoch(),
            any::<u32>(),
            zxid(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            bytes(),
            any::<bool>()
        )
            .prop_map(
                |(epoch, round, s, offset, total_len, crc32, fingerprint, data, last)| {
                    Message::Snap {
                        epoch,
                        round,
                        chunk: SnapChunk {
                            snapshot_zxid: s,
                            offset,
                            total_len,
                            crc32,
                            fingerprint,
                            data,
                            last,
                        },
                    }
                }
            ),
        (epoch(), any::<u32>(), zxid(), any::<u64>(), any::<bool>()).prop_map(
            |(epoch, round, snapshot, received, installing)| Message::SnapProgress {
                epoch,
                round,
                snapshot,
                received,
                installing,
            }
        ),
        (epoch(), zxid()).prop_map(|(epoch, zxid)| Message::SnapInstalled { epoch, zxid }),
        (epoch(), zxid()).prop_map(|(epoch, last_zxid)| Message::NewLeader { epoch, last_zxid }),
        (epoch(), zxid()).prop_map(|(epoch, last_zxid)| Message::AckNewLeader { epoch, last_zxid }),
        (epoch(), zxid()).prop_map(|(epoch, commit)| Message::UpToDate { epoch, commit }),
        (epoch(), zxid(), zxid(), entries()).prop_map(|(epoch, prev, commit, entries)| {
            Message::Accept {
                epoch,
                prev,
                commit,
                entries,
            }
        }),
        (epoch(), zxid()).prop_map(|(epoch, durable)| Message::Accepted { epoch, durable }),
        (epoch(), zxid()).prop_map(|(epoch, last_zxid)| Message::AcceptNack { epoch, last_zxid }),
        (epoch(), zxid()).prop_map(|(epoch, commit)| Message::Commit { epoch, commit }),
        (epoch(), zxid()).prop_map(|(epoch, zxid)| Message::Applied { epoch, zxid }),
        (epoch(), zxid(), any::<u64>()).prop_map(|(epoch, commit, round)| Message::Heartbeat {
            epoch,
            commit,
            round
        }),
        (epoch(), any::<u64>()).prop_map(|(epoch, round)| Message::HeartbeatAck { epoch, round }),
        (epoch(), bytes()).prop_map(|(epoch, ctx)| Message::ReadIndexRequest { epoch, ctx }),
        (epoch(), bytes(), proptest::option::of(zxid()))
            .prop_map(|(epoch, ctx, zxid)| Message::ReadIndexResponse { epoch, ctx, zxid }),
        (epoch(), epoch(), zxid()).prop_map(|(epoch, current_epoch, last_zxid)| {
            Message::FetchHistory {
                epoch,
                current_epoch,
                last_zxid,
            }
        }),
        (
            epoch(),
            proptest::option::of(zxid()),
            zxid(),
            entries(),
            zxid(),
            any::<bool>()
        )
            .prop_map(|(epoch, trunc_to, prev, entries, last_zxid, unable)| {
                Message::FetchReply {
                    epoch,
                    trunc_to,
                    prev,
                    entries,
                    last_zxid,
                    unable,
                }
            }),
        (epoch(), zxid(), any::<u64>()).prop_map(|(epoch, snapshot, offset)| {
            Message::FetchSnapshot {
                epoch,
                snapshot,
                offset,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(msg in message(), g in any::<u64>(), f in any::<u64>(), t in any::<u64>()) {
        let codec = Codec::new(1 << 20);
        let env = Envelope { group: GroupId(g), from: NodeId(f), to: NodeId(t), msg };
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(b"prefix");
        codec.encode(&env, &mut buf).unwrap();
        prop_assert_eq!(buf.len() - 6, Codec::encoded_len(&env));
        let wire = buf.freeze().slice(6..);
        prop_assert_eq!(codec.decode(wire.clone()).unwrap(), env);
        // Every strict prefix is refused.
        for cut in [0, wire.len() / 2, wire.len().saturating_sub(1)] {
            if cut < wire.len() {
                prop_assert!(codec.decode(wire.slice(..cut)).is_err());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let codec = Codec::new(256);
        let _ = codec.decode(Bytes::from(data));
    }

    #[test]
    fn mutated_messages_never_panic(msg in message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let codec = Codec::new(1 << 16);
        let env = Envelope { group: GroupId(0), from: NodeId(1), to: NodeId(2), msg };
        let mut wire = codec.encode_to_bytes(&env).unwrap().to_vec();
        for (at, v) in flips {
            let n = wire.len();
            wire[at % n] = v;
        }
        let _ = codec.decode(Bytes::from(wire));
    }
}
