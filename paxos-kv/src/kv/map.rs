//! The store's keys and values: a hash map split into copy-on-write shards.
//!
//! Invariants: a key always lives in the shard its router picks (the router
//! is fixed for the life of the map, clones included); `len` is the number
//! of keys across all shards; a clone shares every shard until one is
//! written, so a clone is a frozen copy whatever the original does next;
//! an empty map holds no shard at all (a node of 10 000 groups has 10 000
//! maps, most of them small), and its first write makes all of them, every
//! one sharing a single empty table until written.

use bytes::Bytes;
use std::collections::HashMap;

type Shard = HashMap<Bytes, Bytes, foldhash::fast::RandomState>;

/// Shards of [`ShardedMap`]: a clone shares them all, and the first write to
/// a shard afterwards copies 1/256 of the map.
const SHARDS: usize = 256;

/// The store's keys and values: hashed, not ordered, in copy-on-write
/// shards.
///
/// Hashed: applying a write is one hash lookup (a B-tree of millions of
/// keys cost a dozen key comparisons and cache misses per write, the node's
/// largest CPU cost in a profile of the e2e bench). Sharded behind `Arc`s:
/// cloning the map for a snapshot is O(shards) instead of a pass over every
/// key on the node's loop (a million keys took a pause of a few hundred
/// milliseconds), the copying is spread over the writes that follow, one
/// shard at a time, and a growing map resizes one small shard at a time.
#[derive(Debug, Clone, Default)]
pub(super) struct ShardedMap {
    /// Picks a key's shard; the same for the life of the map.
    router: foldhash::fast::RandomState,
    /// Empty until the first write, then `SHARDS` of them.
    shards: Vec<std::sync::Arc<Shard>>,
    len: usize,
}

impl ShardedMap {
    fn shard_of(&self, key: &[u8]) -> usize {
        use std::hash::BuildHasher;
        (self.router.hash_one(key) >> 56) as usize % SHARDS
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.shards.get(self.shard_of(key))?.get(key)
    }

    pub(super) fn insert(&mut self, key: Bytes, value: Bytes) -> Option<Bytes> {
        if self.shards.is_empty() {
            // One empty table shared by every shard: each is copied (empty,
            // so cheaply) on its own first write.
            let empty = std::sync::Arc::new(Shard::default());
            self.shards = vec![empty; SHARDS];
        }
        let i = self.shard_of(&key);
        let prev = std::sync::Arc::make_mut(&mut self.shards[i]).insert(key, value);
        if prev.is_none() {
            self.len += 1;
        }
        prev
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
