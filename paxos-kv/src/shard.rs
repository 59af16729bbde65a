//! How the key space is split over a node's groups: by hash.
//!
//! A key belongs to group `fnv1a64(key) % groups`. Hash rather than range
//! partitioning: the groups are fixed when the cluster is created, so
//! there is no splitting or merging to do, and a hash spreads any key
//! pattern (sequential ids, common prefixes) evenly without a table to
//! keep, replicate and look up; what it gives up is ordered scans across
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
}
