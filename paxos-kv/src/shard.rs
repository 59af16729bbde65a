//! How the key space is split over a node's groups: by hash ranges.
//!
//! A key's [`position`] is its hash placed in its base group's slot; each
//! group owns a range of positions ([`KeyRange`]). At creation base group
//! `g` of `N` owns the keys with `fnv1a64(key) % N == g` ([`group_of`]);
//! a split at run time gives half of a group's range to a new group.
//! Hashed rather than ordered keys: any key pattern (sequential ids,
//! common prefixes) spreads evenly over the groups and a midpoint split
//! halves a group's keys; what it gives up is ordered scans across
//! groups, which the store does not offer. FNV-1a is used because it is
//! fixed by its definition: every node and client, whatever its version or
//! platform, maps a key to the same group (a keyed hasher such as the
//! standard library's is seeded per process and could not be used).
//!
//! ```
//! use paxos_kv::shard::group_of;
//! let g = group_of(b"user:42", 16);
//! assert!(g < 16);
//! assert_eq!(g, group_of(b"user:42", 16)); // stable
//! assert_eq!(group_of(b"anything", 1), 0);
//! ```

/// The 64-bit FNV-1a hash of `key`.
pub fn fnv1a64(key: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    key.iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The group of `key` among `groups` groups (0 when `groups` is 0 or 1).
pub fn group_of(key: &[u8], groups: u32) -> u32 {
    if groups <= 1 {
        return 0;
    }
    (fnv1a64(key) % u64::from(groups)) as u32
}

/// Where a key sits in the key space that groups own ranges of: its base
/// group (`fnv1a64(key) % base_groups`, the slot it had before any split)
/// in the high 64 bits, and the hash, mixed ([`mix64`]), in the low 64.
///
/// Base group `g` owns `[g << 64, (g + 1) << 64)` ([`KeyRange::of_base_group`]),
/// which holds exactly the keys [`group_of`] maps to it, so a cluster
/// created before splits existed keeps every key where it was. Within a
/// slot the low half is spread evenly, so a split at a range's midpoint
/// ([`KeyRange::midpoint`]) moves about half its keys. (FNV-1a's own high
/// bits are not: keys that differ in their last characters, such as
/// `key-1` to `key-1399`, share them, and a midpoint split of the raw hash
/// moved none of them.)
///
/// ```
/// use paxos_kv::shard::{position, KeyRange};
/// let p = position(b"user:42", 4);
/// let g = paxos_kv::shard::group_of(b"user:42", 4);
/// assert!(KeyRange::of_base_group(g).contains(p));
/// ```
pub fn position(key: &[u8], base_groups: u32) -> u128 {
    let h = fnv1a64(key);
    let slot = if base_groups <= 1 {
        0
    } else {
        h % u64::from(base_groups)
    };
    (u128::from(slot) << 64) | u128::from(mix64(h))
}

/// A bijection of 64-bit values whose every output bit depends on every
/// input bit (the finaliser of MurmurHash3): spreads FNV-1a's values over
/// the whole range. Fixed by its definition, like [`fnv1a64`].
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// A half-open range `[start, end)` of key positions ([`position`]): what a
/// group owns. Empty when `start >= end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct KeyRange {
    /// First position in the range.
    pub start: u128,
    /// First position past the range.
    pub end: u128,
}

impl KeyRange {
    /// The empty range (a group that serves no key, such as a new group
    /// still taking its keys over).
    pub const EMPTY: KeyRange = KeyRange { start: 0, end: 0 };

    /// The range base group `g` owns when the cluster is created.
    pub fn of_base_group(g: u32) -> KeyRange {
        KeyRange {
            start: u128::from(g) << 64,
            end: (u128::from(g) + 1) << 64,
        }
    }

    /// Whether `p` is in the range.
    pub fn contains(&self, p: u128) -> bool {
        self.start <= p && p < self.end
    }

    /// Whether the range holds no position.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// Whether `inner` lies within this range (an empty one always does).
    pub fn covers(&self, inner: &KeyRange) -> bool {
        inner.is_empty() || (self.start <= inner.start && inner.end <= self.end)
    }

    /// The position that splits the range in two halves that both hold
    /// at least one position (`None` for a range of fewer than two).
    pub fn midpoint(&self) -> Option<u128> {
        if self.is_empty() || self.end - self.start < 2 {
            return None;
        }
        Some(self.start + (self.end - self.start) / 2)
    }

    /// The range as text: `start-end`, each 32 hex digits (how a node's
    /// status reports it: JSON numbers do not hold 128 bits).
    pub fn to_hex(&self) -> String {
        format!("{:032x}-{:032x}", self.start, self.end)
    }

    /// Reads [`KeyRange::to_hex`]'s form.
    pub fn from_hex(s: &str) -> Option<KeyRange> {
        let (a, b) = s.split_once('-')?;
        Some(KeyRange {
            start: u128::from_str_radix(a, 16).ok()?,
            end: u128::from_str_radix(b, 16).ok()?,
        })
    }
}

impl std::fmt::Display for KeyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Which group owns which range, as a client or a node learned it: sorted
/// by start, ranges disjoint. Lookups are a binary search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingTable {
    /// (range, group), sorted by the range's start; empty ranges left out.
    entries: Vec<(KeyRange, u32)>,
}

impl RoutingTable {
    /// A table of the given (group, range) pairs; empty ranges are left
    /// out. `None` if two non-empty ranges overlap (views of two moments
    /// mixed: ask again).
    pub fn new(ranges: impl IntoIterator<Item = (u32, KeyRange)>) -> Option<RoutingTable> {
        let mut entries: Vec<(KeyRange, u32)> = ranges
            .into_iter()
            .filter(|(_, r)| !r.is_empty())
            .map(|(g, r)| (r, g))
            .collect();
        entries.sort_unstable_by_key(|(r, _)| r.start);
        if entries.windows(2).any(|w| w[0].0.end > w[1].0.start) {
            return None;
        }
        Some(RoutingTable { entries })
    }

    /// The table of `base_groups` groups as created (no split yet).
    pub fn of_base_groups(base_groups: u32) -> RoutingTable {
        RoutingTable {
            entries: (0..base_groups.max(1))
                .map(|g| (KeyRange::of_base_group(g), g))
                .collect(),
        }
    }

    /// The group that owns position `p`, if any does (none while a range
    /// moves from one group to another).
    pub fn group_at(&self, p: u128) -> Option<u32> {
        let i = self.entries.partition_point(|(r, _)| r.start <= p);
        let (r, g) = self.entries.get(i.checked_sub(1)?)?;
        r.contains(p).then_some(*g)
    }

    /// The range group `g` owns, if it owns one.
    pub fn range_of(&self, g: u32) -> Option<KeyRange> {
        self.entries.iter().find(|(_, o)| *o == g).map(|(r, _)| *r)
    }

    /// The group owning the range just below `r` or just above it (the
    /// one below first), if any: the neighbour a group merges into.
    pub fn neighbour_of(&self, r: &KeyRange) -> Option<u32> {
        let below = self.entries.iter().find(|(o, _)| o.end == r.start);
        let above = self.entries.iter().find(|(o, _)| o.start == r.end);
        below.or(above).map(|(_, g)| *g)
    }

    /// The groups that own a range, in the ranges' order.
    pub fn groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.entries.iter().map(|(_, g)| *g)
    }

    /// How many groups own a range.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no group owns anything.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn sequential_keys_spread_evenly() {
        let groups = 16u32;
        let mut counts = vec![0u32; groups as usize];
        for i in 0..16_000u32 {
            counts[group_of(format!("key-{i}").as_bytes(), groups) as usize] += 1;
        }
        // 1 000 per group on average; a skewed hash would leave some
        // groups far from it.
        for (g, &c) in counts.iter().enumerate() {
            assert!((700..1300).contains(&c), "group {g} got {c} of 16 000 keys");
        }
    }

    #[test]
    fn base_ranges_hold_exactly_the_keys_of_their_base_group() {
        for n in [1u32, 2, 3, 16] {
            let table = RoutingTable::of_base_groups(n);
            for i in 0..2_000u32 {
                let k = format!("key-{i}");
                let p = position(k.as_bytes(), n);
                assert_eq!(table.group_at(p), Some(group_of(k.as_bytes(), n)));
            }
        }
    }

    #[test]
    fn a_midpoint_split_halves_a_groups_keys_and_the_table_routes_both_halves() {
        let n = 4;
        let parent = KeyRange::of_base_group(2);
        // Short keys that differ only at their end (FNV-1a alone puts them
        // all in one half).
        let g = group_of(b"key-0", 8);
        let at = KeyRange::of_base_group(g).midpoint().unwrap();
        let (lo, hi): (Vec<u32>, Vec<u32>) = (0..1_400u32)
            .filter(|i| group_of(format!("key-{i}").as_bytes(), 8) == g)
            .partition(|i| position(format!("key-{i}").as_bytes(), 8) < at);
        assert!(
            lo.len() > 60 && hi.len() > 60,
            "{} / {}",
            lo.len(),
            hi.len()
        );
        let at = parent.midpoint().unwrap();
        let left = KeyRange {
            start: parent.start,
            end: at,
        };
        let right = KeyRange {
            start: at,
            end: parent.end,
        };
        let mut ranges: Vec<(u32, KeyRange)> =
            (0..n).map(|g| (g, KeyRange::of_base_group(g))).collect();
        ranges[2].1 = left;
        ranges.push((7, right));
        let table = RoutingTable::new(ranges).unwrap();
        let (mut l, mut r) = (0, 0);
        for i in 0..16_000u32 {
            let k = format!("key-{i}");
            let p = position(k.as_bytes(), n);
            match table.group_at(p) {
                Some(2) => l += 1,
                Some(7) => r += 1,
                Some(g) => assert_eq!(g, group_of(k.as_bytes(), n)),
                None => panic!("no group for {k}"),
            }
        }
        // 4 000 keys in group 2 before the split: about half each now.
        assert!(
            (1_700..2_300).contains(&l) && (1_700..2_300).contains(&r),
            "{l} / {r}"
        );
        // A range moving (owned by nobody) routes nowhere; overlaps are refused.
        let moving = RoutingTable::new([(0, KeyRange::of_base_group(0))]).unwrap();
        assert_eq!(moving.group_at(KeyRange::of_base_group(1).start), None);
        assert!(RoutingTable::new([(0, parent), (1, right)]).is_none());
        assert_eq!(KeyRange::from_hex(&right.to_hex()), Some(right));
        assert_eq!(KeyRange { start: 5, end: 6 }.midpoint(), None);
    }
}
