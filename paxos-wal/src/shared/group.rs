//! `paxos-core`'s [`Storage`] for one group of a [`SharedLog`] (features
//! `shared` and `paxos-core`).

use std::sync::Arc;

use bytes::Bytes;
use paxos_core::{
    Entry, EntryKind, Epoch, GroupId, HardState, MetaKey, Ready, Storage, StorageError, Zxid,
};

use super::{Op, SharedError, SharedLog};

/// Bytes of the state a [`GroupStorage`] saves in its group's meta record:
/// version (1), accepted and current epoch (4 + 4), recovering flag (1),
/// number of meta slots (1), and the slots (8 each, [`MetaKey::ALL`]).
pub const GROUP_STATE_BYTES: usize = 11 + 8 * MetaKey::ALL.len();

const STATE_VERSION: u8 = 1;

/// What a group keeps in its meta record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct GroupState {
    hard: HardState,
    recovering: bool,
    meta: [u64; MetaKey::ALL.len()],
}

impl GroupState {
    fn encode(&self) -> [u8; GROUP_STATE_BYTES] {
        let mut out = [0u8; GROUP_STATE_BYTES];
        out[0] = STATE_VERSION;
        out[1..5].copy_from_slice(&self.hard.accepted_epoch.0.to_le_bytes());
        out[5..9].copy_from_slice(&self.hard.current_epoch.0.to_le_bytes());
        out[9] = u8::from(self.recovering);
        out[10] = MetaKey::ALL.len() as u8;
        for (i, v) in self.meta.iter().enumerate() {
            out[11 + 8 * i..19 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<GroupState, String> {
        let Some((head, slots)) = bytes.split_first_chunk::<11>() else {
            return Err(format!(
                "{} bytes, shorter than its 11-byte start",
                bytes.len()
            ));
        };
        if head[0] != STATE_VERSION {
            return Err(format!("unknown state version {}", head[0]));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        let recovering = match head[9] {
            0 => false,
            1 => true,
            other => return Err(format!("recovering flag {other}")),
        };
        let n = usize::from(head[10]);
        if n != MetaKey::ALL.len() || slots.len() != 8 * n {
            return Err(format!(
                "{n} meta slots in {} bytes, expected {} slots",
                slots.len(),
                MetaKey::ALL.len()
            ));
        }
        let mut meta = [0u64; MetaKey::ALL.len()];
        for (slot, chunk) in meta.iter_mut().zip(slots.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *slot = u64::from_le_bytes(b);
        }
        Ok(GroupState {
            hard: HardState {
                accepted_epoch: Epoch(u32_at(1)),
                current_epoch: Epoch(u32_at(5)),
            },
            recovering,
            meta,
        })
    }
}

/// One group's [`Storage`] over a [`SharedLog`] shared with the node's
/// other groups: entries keyed by zxid (config entries tagged), and the
/// hard state, recovering flag and [`MetaKey`] slots in the group's meta
/// record. Made by [`SharedLog::group`].
///
/// Durability follows [`WalStorage`](crate::WalStorage)'s contract: a hard
/// state or recovering flag is durable at the next [`sync`](Storage::sync)
/// and never before the log writes made before it (here the order comes
/// from the single log: the state record follows them, and a crash loses a
/// suffix of the log); [`save_meta`](Storage::save_meta) is durable on
/// return. `sync` is the shared log's sync, so one call (from any group's
/// handle, or [`SharedLog::sync`] on a thread of its own) covers the writes
/// of every group. [`write_ready`](Storage::write_ready) writes a `Ready`'s
/// truncations, entries and state as one batch.
///
/// ```
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use paxos_core::{Entry, Epoch, GroupId, HardState, Storage, Zxid};
/// use paxos_wal::shared::SharedLog;
/// use paxos_wal::WalOptions;
///
/// let dir = tempfile::tempdir()?;
/// let opts = WalOptions { segment_bytes: 64 << 10, ..WalOptions::default() };
/// let (log, _) = SharedLog::open(dir.path(), opts.clone())?;
/// let log = Arc::new(log);
/// let mut a = log.group(GroupId(1))?;
/// let mut b = log.group(GroupId(2))?;
/// let z = Zxid::new(Epoch(1), 1);
/// a.append(&[Entry::command(z, Bytes::from_static(b"x"))])?;
/// b.save_hard_state(HardState { accepted_epoch: Epoch(2), current_epoch: Epoch(1) })?;
/// a.sync()?; // one flush, both groups
/// drop((a, b, log));
/// let (log, _) = SharedLog::open(dir.path(), opts)?;
/// let log = Arc::new(log);
/// assert_eq!(log.group(GroupId(1))?.last_zxid(), Some(z));
/// assert_eq!(log.group(GroupId(2))?.hard_state().accepted_epoch, Epoch(2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct GroupStorage {
    log: Arc<SharedLog>,
    group: u64,
    state: GroupState,
    created: bool,
}

impl SharedLog {
    /// The [`Storage`] of `group`: the group's handle, registering it with
    /// an empty log if the log holds no such group (see
    /// [`GroupStorage::created`]). Use one handle per group at a time: the
    /// handle keeps the group's state, which it alone writes.
    ///
    /// Errors: [`SharedError::TooManyGroups`], and
    /// [`SharedError::BadGroupState`] for a saved state that does not decode.
    pub fn group(self: &Arc<Self>, group: GroupId) -> Result<GroupStorage, SharedError> {
        let id = group.0;
        let created = self.register_group(id)?;
        let state = match self.meta(id) {
            Some(bytes) => GroupState::decode(&bytes)
                .map_err(|reason| SharedError::BadGroupState { group: id, reason })?,
            None => GroupState::default(),
        };
        Ok(GroupStorage {
            log: Arc::clone(self),
            group: id,
            state,
            created,
        })
    }
}

/// A shared-log error as a storage error (`write`: whether a write failed).
fn storage_error(log: &SharedLog, what: &str, e: SharedError) -> StorageError {
    match e {
        SharedError::KeyNotIncreasing { key, last, .. } => StorageError::OutOfOrder {
            zxid: Zxid(key),
            last: last.map(Zxid),
        },
        SharedError::BadRecord { .. }
        | SharedError::IndexMismatch { .. }
        | SharedError::BadGroupState { .. } => StorageError::Corrupt(format!("{what}: {e}")),
        SharedError::TooManyGroups { .. } | SharedError::MetaTooLarge { .. } => {
            StorageError::Unsupported(format!("{what}: {e}"))
        }
        SharedError::Wal(_) if !log.is_poisoned() => StorageError::refused(what.to_string(), e),
        _ => StorageError::io(format!("{what} (shared log)"), e),
    }
}

impl GroupStorage {
    /// The group this handle stores.
    pub fn group_id(&self) -> GroupId {
        GroupId(self.group)
    }

    /// The shared log underneath.
    pub fn log(&self) -> &Arc<SharedLog> {
        &self.log
    }

    /// Whether the log held no record of this group when the handle was
    /// made: a new group, or one whose records were lost. As with
    /// [`WalStorage::hard_state_created`](crate::WalStorage::hard_state_created),
    /// a driver that knows the group exists elsewhere should start its
    /// replica recovering.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Drops the group from the shared log (a record, durable at the next
    /// sync), consuming the handle.
    pub fn remove(self) -> Result<(), StorageError> {
        self.log
            .remove_group(self.group)
            .map(|_| ())
            .map_err(|e| storage_error(&self.log, "removing the group", e))
    }

    fn write(&self, what: &str, ops: &[Op<'_>]) -> Result<(), StorageError> {
        self.log
            .write(ops)
            .map(|_| ())
            .map_err(|e| storage_error(&self.log, what, e))
    }

    fn entry_op<'a>(&self, e: &'a Entry) -> Op<'a> {
        Op::Entry {
            group: self.group,
            key: e.zxid.as_u64(),
            tagged: e.is_config(),
            payload: &e.data,
        }
    }

    /// Writes `state` as the group's meta record, then keeps it.
    fn save_state(&mut self, state: GroupState, what: &str) -> Result<(), StorageError> {
        let bytes = state.encode();
        self.write(
            what,
            &[Op::Meta {
                group: self.group,
                state: &bytes,
            }],
        )?;
        self.state = state;
        Ok(())
    }
}

fn kind_of(tagged: bool) -> EntryKind {
    if tagged {
        EntryKind::Config
    } else {
        EntryKind::Command
    }
}

impl Storage for GroupStorage {
    fn hard_state(&self) -> HardState {
        self.state.hard
    }

    fn first_zxid(&self) -> Option<Zxid> {
        self.log.first_key(self.group).map(Zxid)
    }

    fn last_zxid(&self) -> Option<Zxid> {
        self.log.last_key(self.group).map(Zxid)
    }

    /// Answered from the group's index in memory: one binary search per
    /// epoch present.
    fn epoch_ends(&self) -> Result<Vec<Zxid>, StorageError> {
        let mut ends = Vec::new();
        let Some(mut first) = self.first_zxid() else {
            return Ok(ends);
        };
        // One iteration per epoch present in the group's log.
        loop {
            let next_epoch = first.epoch().next();
            let end = match next_epoch {
                Some(e) => self
                    .log
                    .last_key_below(self.group, Zxid::new(e, 0).as_u64()),
                None => self.log.last_key(self.group),
            };
            let Some(end) = end else { break };
            ends.push(Zxid(end));
            let Some(e) = next_epoch else { break };
            match self
                .log
                .first_key_from(self.group, Zxid::new(e, 0).as_u64())
            {
                Some(k) => first = Zxid(k),
                None => break,
            }
        }
        Ok(ends)
    }

    fn entries(
        &self,
        from: Zxid,
        max_entries: usize,
        max_bytes: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        if let Some(first) = self.first_zxid() {
            if from < first {
                return Err(StorageError::Compacted(from));
            }
        }
        self.log
            .read(self.group, from.as_u64(), max_entries, max_bytes, |e| {
                out.push(Entry {
                    zxid: Zxid(e.key),
                    kind: kind_of(e.tagged),
                    data: Bytes::copy_from_slice(e.payload),
                });
            })
            .map(|_| ())
            .map_err(|e| storage_error(&self.log, "reading entries", e))
    }

    /// Answered from the group's index: only the tagged entries are read.
    fn config_entries(&self) -> Result<Vec<Entry>, StorageError> {
        let keys = self.log.tagged_keys(self.group);
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            self.log
                .read(self.group, key, 1, usize::MAX, |e| {
                    if e.key == key && e.tagged {
                        out.push(Entry {
                            zxid: Zxid(e.key),
                            kind: EntryKind::Config,
                            data: Bytes::copy_from_slice(e.payload),
                        });
                    }
                })
                .map_err(|e| storage_error(&self.log, "reading config entries", e))?;
        }
        Ok(out)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        // The log refuses a key not above the group's last (OutOfOrder).
        let ops: Vec<Op<'_>> = entries.iter().map(|e| self.entry_op(e)).collect();
        self.write("appending entries", &ops)
    }

    fn truncate_suffix(&mut self, after: Zxid) -> Result<(), StorageError> {
        tracing::info!(
            group = self.group,
            ?after,
            "truncating a group's log suffix"
        );
        self.write(
            "truncating the group's suffix",
            &[Op::TruncateSuffix {
                group: self.group,
                after: after.as_u64(),
            }],
        )
    }

    /// Exact: the entries up to `upto` leave the group's index at once; the
    /// space returns with [`SharedLog::compact`].
    fn truncate_prefix(&mut self, upto: Zxid) -> Result<(), StorageError> {
        self.write(
            "dropping the group's prefix",
            &[Op::TruncatePrefix {
                group: self.group,
                upto: upto.as_u64(),
            }],
        )
    }

    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        let state = GroupState {
            hard: hs,
            ..self.state
        };
        self.save_state(state, "saving the hard state")
    }

    fn recovering(&self) -> bool {
        self.state.recovering
    }

    fn save_recovering(&mut self, recovering: bool) -> Result<(), StorageError> {
        let state = GroupState {
            recovering,
            ..self.state
        };
        self.save_state(state, "saving the recovering flag")
    }

    fn meta(&self, key: MetaKey) -> u64 {
        self.state.meta.get(key.slot()).copied().unwrap_or(0)
    }

    /// Durable on return: the state record is written, then the shared log
    /// synced (which also makes the other groups' writes durable).
    fn save_meta(&mut self, key: MetaKey, value: u64) -> Result<(), StorageError> {
        self.write_meta(key, value)?;
        self.sync()
    }

    /// A state record, durable at the next sync of the shared log.
    fn write_meta(&mut self, key: MetaKey, value: u64) -> Result<(), StorageError> {
        let mut state = self.state;
        let Some(slot) = state.meta.get_mut(key.slot()) else {
            return Err(StorageError::Unsupported(format!("no slot for {key:?}")));
        };
        *slot = value;
        self.save_state(state, "writing a meta value")
    }

    /// The group's state and truncations are records of the shared log,
    /// in order with its entries: any sync of the log covers them.
    fn state_in_log(&self) -> bool {
        true
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.log
            .sync()
            .map(|_| ())
            .map_err(|e| storage_error(&self.log, "syncing the shared log", e))
    }

    /// One batch for the whole `Ready`, in the trait's order: suffix
    /// truncation, entries, state (hard state and recovering flag in one
    /// record), prefix truncation.
    fn write_ready(&mut self, ready: &Ready) -> Result<(), StorageError> {
        let mut ops: Vec<Op<'_>> = Vec::with_capacity(ready.entries.len() + 3);
        if let Some(after) = ready.truncate_after {
            ops.push(Op::TruncateSuffix {
                group: self.group,
                after: after.as_u64(),
            });
        }
        // The log checks the keys against the group as the truncation
        // leaves it.
        ops.extend(ready.entries.iter().map(|e| self.entry_op(e)));
        let mut state = self.state;
        if let Some(hs) = ready.hard_state {
            state.hard = hs;
        }
        if let Some(r) = ready.recovering {
            state.recovering = r;
        }
        let bytes = state.encode();
        if state != self.state {
            ops.push(Op::Meta {
                group: self.group,
                state: &bytes,
            });
        }
        if let Some(upto) = ready.compact_to {
            ops.push(Op::TruncatePrefix {
                group: self.group,
                upto: upto.as_u64(),
            });
        }
        self.write("writing a ready batch", &ops)?;
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_state_round_trips_and_refuses_damage() {
        let s = GroupState {
            hard: HardState {
                accepted_epoch: Epoch(7),
                current_epoch: Epoch(u32::MAX),
            },
            recovering: true,
            meta: [1, u64::MAX, 3],
        };
        let b = s.encode();
        assert_eq!(GroupState::decode(&b), Ok(s));
        assert!(GroupState::decode(&b[..b.len() - 1]).is_err());
        let mut bad = b;
        bad[0] = 9;
        assert!(GroupState::decode(&bad).is_err());
        let mut bad = b;
        bad[9] = 2;
        assert!(GroupState::decode(&bad).is_err());
        assert!(GroupState::decode(&[]).is_err());
    }
}
