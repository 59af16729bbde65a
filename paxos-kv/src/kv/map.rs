//! The store's keys and values: a hash map split into copy-on-write shards.
//!
//! Invariants: a key always lives in the shard its router picks (the router
//! is fixed for the life of the map, clones included); `len` is the number
//! of keys across all shards; a clone shares every shard until one is
//! written, so a clone is a frozen copy whatever the original does next;
//! an empty map holds no shard at all, a small one a single shard, and one
//! that reaches `SHARD_AT` keys is split once into `SHARDS` (a node of
//! 10 000 groups has 10 000 maps, most of them small: 256 shards each cost
//! a table per written shard, and a write a few cache misses more).

use bytes::Bytes;
use std::collections::HashMap;

type Shard = HashMap<Bytes, Bytes, foldhash::fast::RandomState>;

/// Shards of a large [`ShardedMap`]: a clone shares them all, and the first
/// write to a shard afterwards copies 1/256 of the map.
const SHARDS: usize = 256;

/// A map is one shard until it holds this many keys, then `SHARDS`: below
/// it, copying the whole map on the first write after a clone is cheap
/// (tens of microseconds), and one table is what a small map's writes
/// find in cache. With 256 groups of 8 keys each, 256 shards per map made
/// a write's insert about 12 times as costly as in one group of 2 048 keys
/// (0.94 against 0.08 us per write in a profile of the e2e bench).
const SHARD_AT: usize = 4096;

/// The store's keys and values: hashed, not ordered, in copy-on-write
/// shards.
///
/// Hashed: applying a write is one hash lookup (a B-tree of millions of
/// keys cost a dozen key comparisons and cache misses per write, the node's
/// largest CPU cost in a profile of the e2e bench). Sharded behind `Arc`s
/// once large: cloning the map for a snapshot is O(shards) instead of a
/// pass over every key on the node's loop (a million keys took a pause of a
/// few hundred milliseconds), the copying is spread over the writes that
/// follow, one shard at a time, and a growing map resizes one small shard
/// at a time.
#[derive(Debug, Clone, Default)]
pub(super) struct ShardedMap {
    /// Picks a key's shard once the map is sharded; the same for the life
    /// of the map.
    router: foldhash::fast::RandomState,
    /// None before the first write, then one, then (from `SHARD_AT` keys
    /// on) `SHARDS` of them.
    shards: Vec<std::sync::Arc<Shard>>,
    len: usize,
}

impl ShardedMap {
    fn shard_of(&self, key: &[u8]) -> usize {
        if self.shards.len() == SHARDS {
            self.routed(key)
        } else {
            0
        }
    }

    /// The shard of `key` among `SHARDS`.
    fn routed(&self, key: &[u8]) -> usize {
        use std::hash::BuildHasher;
        (self.router.hash_one(key) >> 56) as usize % SHARDS
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.shards.get(self.shard_of(key))?.get(key)
    }

    pub(super) fn insert(&mut self, key: Bytes, value: Bytes) -> Option<Bytes> {
        if self.shards.is_empty() {
            self.shards.push(std::sync::Arc::new(Shard::default()));
        } else if self.shards.len() == 1 && self.len >= SHARD_AT {
            self.split_shards();
        }
        let i = self.shard_of(&key);
        let prev = std::sync::Arc::make_mut(&mut self.shards[i]).insert(key, value);
        if prev.is_none() {
            self.len += 1;
        }
        prev
    }

    /// Moves the single shard's keys into `SHARDS` new ones (once in the
    /// map's life). A clone keeps the old shard, untouched.
    fn split_shards(&mut self) {
        let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::default()).collect();
        let one = std::mem::take(&mut self.shards);
        // Bounded by the keys the map holds.
        for (k, v) in one.iter().flat_map(|s| s.iter()) {
            shards[self.routed(k)].insert(k.clone(), v.clone());
        }
        self.shards = shards.into_iter().map(std::sync::Arc::new).collect();
        assert_eq!(
            self.shards.iter().map(|s| s.len()).sum::<usize>(),
            self.len,
            "splitting a map's shard lost or made keys"
        );
    }

    pub(super) fn remove(&mut self, key: &[u8]) -> Option<Bytes> {
        let i = self.shard_of(key);
        if !self.shards.get(i)?.contains_key(key) {
            return None;
        }
        let prev = std::sync::Arc::make_mut(&mut self.shards[i]).remove(key);
        if prev.is_some() {
            self.len -= 1;
        }
        prev
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

#[cfg(test)]
mod tests {
    use crate::kv::test_util::*;
    use crate::kv::*;
    use bytes::Bytes;
    use paxos_core::StateMachine;

    #[test]
    fn an_empty_map_answers_and_its_first_write_makes_the_shards() {
        let mut m = super::ShardedMap::default();
        assert_eq!(m.get(b"k"), None);
        assert_eq!(m.remove(b"k"), None);
        assert_eq!(m.iter().count(), 0);
        let frozen = m.clone();
        assert_eq!(m.insert(Bytes::from("k"), Bytes::from("v")), None);
        assert_eq!(m.get(b"k").map(|v| &v[..]), Some(&b"v"[..]));
        assert_eq!(m.len(), 1);
        assert_eq!(frozen.get(b"k"), None, "a clone taken empty stays empty");
        assert_eq!(m.remove(b"k").map(|v| v.to_vec()), Some(b"v".to_vec()));
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn a_map_that_grows_past_one_shard_keeps_every_key_and_its_clones_stay_frozen() {
        let mut m = super::ShardedMap::default();
        let n = super::SHARD_AT + 100;
        for i in 0..super::SHARD_AT {
            m.insert(Bytes::from(format!("k{i}")), Bytes::from("v1"));
        }
        assert_eq!(m.shards.len(), 1, "a small map is one shard");
        let frozen = m.clone();
        for i in 0..n {
            m.insert(Bytes::from(format!("k{i}")), Bytes::from("v2"));
        }
        assert_eq!(m.shards.len(), super::SHARDS, "a large map is sharded");
        assert_eq!(m.len(), n);
        assert_eq!(m.iter().count(), n);
        for i in 0..n {
            assert_eq!(
                m.get(format!("k{i}").as_bytes()).map(|v| &v[..]),
                Some(&b"v2"[..])
            );
        }
        assert_eq!(m.remove(b"k0").map(|v| v.to_vec()), Some(b"v2".to_vec()));
        assert_eq!(m.get(b"k0"), None);
        assert_eq!(m.len(), n - 1);
        assert_eq!(frozen.len(), super::SHARD_AT);
        assert_eq!(frozen.shards.len(), 1);
        for i in 0..super::SHARD_AT {
            assert_eq!(
                frozen.get(format!("k{i}").as_bytes()).map(|v| &v[..]),
                Some(&b"v1"[..]),
                "the clone taken before the split did not change"
            );
        }
        assert_eq!(frozen.get(format!("k{}", super::SHARD_AT).as_bytes()), None);
    }

    #[test]
    fn a_clone_is_a_frozen_copy_while_the_original_goes_on() {
        let mut s = KvStore::new();
        let mut n = 0u32;
        for i in 0..2000u64 {
            n += 1;
            s.apply(z(n), &put(1, i + 1, &format!("k{i}"), "v1"));
        }
        let frozen = s.clone();
        let frozen_image = image(&frozen);
        let frozen_digest = frozen.digest();
        // Overwrite half, delete a quarter, add new keys: every shard is
        // written after the clone.
        for i in 0..1000u64 {
            n += 1;
            s.apply(z(n), &put(1, 2001 + i, &format!("k{i}"), "v2"));
        }
        for i in 1000..1500u64 {
            n += 1;
            s.apply(
                z(n),
                &cmd(
                    1,
                    2001 + i,
                    KvOp::Delete {
                        key: Bytes::from(format!("k{i}")),
                    },
                ),
            );
        }
        for i in 0..500u64 {
            n += 1;
            s.apply(z(n), &put(1, 3501 + i, &format!("new{i}"), "v3"));
        }
        assert_eq!(image(&frozen), frozen_image, "the clone did not change");
        assert_eq!(frozen.digest(), frozen_digest);
        assert_eq!(frozen.len(), 2000);
        assert_eq!(frozen.get(b"k0").map(|v| &v[..]), Some(&b"v1"[..]));
        assert_eq!(s.len(), 2000 - 500 + 500);
        assert_eq!(s.get(b"k0").map(|v| &v[..]), Some(&b"v2"[..]));
        assert_eq!(s.get(b"k1200"), None);
        assert_eq!(frozen.get(b"k1200").map(|v| &v[..]), Some(&b"v1"[..]));
        // The live store restores from its own image to an equal store.
        let mut t = KvStore::new();
        t.restore(s.applied(), &mut &image(&s)[..]).unwrap();
        assert_eq!(t.digest(), s.digest());
        assert_eq!(image(&t), image(&s));
    }
}
