//! Quorum systems: which sets of voters may decide.

use std::collections::BTreeMap;

use paxos_core::NodeId;

use crate::ConfigError;

/// Which sets of voters form a quorum, and who may lead.
///
/// Every two quorums must intersect; the election's agreement rests on it.
pub trait QuorumSystem: std::fmt::Debug {
    /// The voters, sorted ascending, without duplicates.
    fn voters(&self) -> &[NodeId];

    /// Whether `id` votes.
    fn is_voter(&self, id: NodeId) -> bool {
        self.voters().binary_search(&id).is_ok()
    }

    /// Whether `id` may be elected. Observers never may; by default every
    /// voter may.
    fn can_lead(&self, id: NodeId) -> bool {
        self.is_voter(id)
    }

    /// Whether `members` (distinct ids; non-voters are ignored) form a quorum.
    fn is_quorum(&self, members: &mut dyn Iterator<Item = NodeId>) -> bool;

    /// The same kind of quorum system over other voters, for a membership
    /// change ([`Elector::reconfigure`](paxos_core::Elector::reconfigure)).
    /// `voters` must be non-empty and distinct. A system that cannot place
    /// one of them (say, a weighted one that knows no weight for it)
    /// refuses with a [`ConfigError`]; the elector then keeps the previous
    /// system, which costs liveness only: the kernel counts its own
    /// quorums under the membership in force.
    fn with_voters(&self, voters: &[NodeId]) -> Result<Self, ConfigError>
    where
        Self: Sized;
}

fn sorted_unique(ids: impl IntoIterator<Item = NodeId>) -> Result<Vec<NodeId>, ConfigError> {
    let mut v: Vec<NodeId> = ids.into_iter().collect();
    v.sort_unstable();
    if let Some(w) = v.windows(2).find(|w| w[0] == w[1]) {
        return Err(ConfigError::DuplicateNode { id: w[0] });
    }
    if v.is_empty() {
        return Err(ConfigError::NoVoters);
    }
    Ok(v)
}

/// A simple majority of the voters: more than half of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Majority {
    voters: Vec<NodeId>,
}

impl Majority {
    /// A majority quorum over `voters` (at least one, no duplicates).
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Result<Majority, ConfigError> {
        Ok(Majority {
            voters: sorted_unique(voters)?,
        })
    }
}

impl QuorumSystem for Majority {
    fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    fn is_quorum(&self, members: &mut dyn Iterator<Item = NodeId>) -> bool {
        let count = members.filter(|m| self.is_voter(*m)).count();
        count * 2 > self.voters.len()
    }

    /// A majority of the new voters.
    fn with_voters(&self, voters: &[NodeId]) -> Result<Self, ConfigError> {
        Majority::new(voters.iter().copied())
    }
}

/// A weighted quorum (ZooKeeper's `QuorumHierarchical` with one group):
/// members whose weights sum to more than half the total weight.
///
/// A voter of weight zero takes part in the election (it proposes, adopts and
/// relays votes) but never counts towards a quorum and is never elected, as
/// in ZooKeeper.
///
/// Under membership changes ([`QuorumSystem::with_voters`]) a weight is a
/// property of the node, not of one membership: the system remembers the
/// weight of every node it was ever given (voters, former voters, and the
/// nodes named by [`with_spare_weights`](Weighted::with_spare_weights)), so
/// a node removed and added again gets its weight back. A new voter whose
/// weight it does not know is refused ([`ConfigError::NoWeight`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Weighted {
    voters: Vec<NodeId>,
    weights: BTreeMap<NodeId, u64>,
    total_weight: u64,
    /// Every weight known, voters' or not (a superset of `weights`).
    known: BTreeMap<NodeId, u64>,
}

impl Weighted {
    /// A weighted quorum from `(voter, weight)` pairs: no duplicates, and a
    /// positive total weight that fits in a `u64`.
    pub fn new(weights: impl IntoIterator<Item = (NodeId, u64)>) -> Result<Weighted, ConfigError> {
        let weights: BTreeMap<NodeId, u64> = {
            let pairs: Vec<(NodeId, u64)> = weights.into_iter().collect();
            let voters = sorted_unique(pairs.iter().map(|p| p.0))?;
            debug_assert_eq!(voters.len(), pairs.len(), "duplicates were rejected");
            pairs.into_iter().collect()
        };
        let mut total_weight: u64 = 0;
        for w in weights.values() {
            total_weight = total_weight
                .checked_add(*w)
                .ok_or(ConfigError::WeightOverflow)?;
        }
        if total_weight == 0 {
            return Err(ConfigError::ZeroTotalWeight);
        }
        Ok(Weighted {
            voters: weights.keys().copied().collect(),
            known: weights.clone(),
            weights,
            total_weight,
        })
    }

    /// The same system, also knowing the weights of nodes that are not
    /// voters yet, so that a membership change may make them voters. A
    /// spare weight never changes the current quorums. Naming a current
    /// voter, or a node twice, is refused as [`ConfigError::DuplicateNode`].
    pub fn with_spare_weights(
        mut self,
        spares: impl IntoIterator<Item = (NodeId, u64)>,
    ) -> Result<Weighted, ConfigError> {
        for (id, w) in spares {
            if self.known.insert(id, w).is_some() {
                return Err(ConfigError::DuplicateNode { id });
            }
        }
        Ok(self)
    }

    /// The weight of `id` (0 for a non-voter).
    pub fn weight(&self, id: NodeId) -> u64 {
        self.weights.get(&id).copied().unwrap_or(0)
    }
}

impl QuorumSystem for Weighted {
    fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    fn can_lead(&self, id: NodeId) -> bool {
        self.weight(id) > 0
    }

    fn is_quorum(&self, members: &mut dyn Iterator<Item = NodeId>) -> bool {
        // Cannot overflow: the sum of distinct members' weights is at most
        // the total, which fits.
        let sum: u64 = members.map(|m| self.weight(m)).sum();
        u128::from(sum) * 2 > u128::from(self.total_weight)
    }

    /// The new voters with the weights known for them; refused if one has
    /// no known weight ([`ConfigError::NoWeight`]), or if their weights sum
    /// to zero or overflow. Every known weight stays known.
    fn with_voters(&self, voters: &[NodeId]) -> Result<Self, ConfigError> {
        let mut pairs = Vec::with_capacity(voters.len());
        for id in voters {
            let w = self
                .known
                .get(id)
                .copied()
                .ok_or(ConfigError::NoWeight { id: *id })?;
            pairs.push((*id, w));
        }
        let mut next = Weighted::new(pairs)?;
        next.known = self.known.clone();
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn majority_needs_more_than_half() {
        let q = Majority::new(ids(&[1, 2, 3, 4])).unwrap();
        assert!(!q.is_quorum(&mut ids(&[1, 2]).into_iter()));
        assert!(q.is_quorum(&mut ids(&[1, 2, 4]).into_iter()));
        // Non-voters do not count.
        assert!(!q.is_quorum(&mut ids(&[1, 2, 9]).into_iter()));
        assert!(q.can_lead(NodeId(4)) && !q.can_lead(NodeId(9)));
        assert_eq!(
            Majority::new(ids(&[1, 1])),
            Err(ConfigError::DuplicateNode { id: NodeId(1) })
        );
        assert_eq!(Majority::new(ids(&[])), Err(ConfigError::NoVoters));
    }

    #[test]
    fn weighted_counts_weight_and_zero_weight_never_leads() {
        let q = Weighted::new([
            (NodeId(1), 3),
            (NodeId(2), 1),
            (NodeId(3), 1),
            (NodeId(4), 0),
        ])
        .unwrap();
        assert!(q.is_quorum(&mut ids(&[1]).into_iter()));
        assert!(!q.is_quorum(&mut ids(&[2, 3, 4]).into_iter()));
        assert!(q.is_voter(NodeId(4)) && !q.can_lead(NodeId(4)));
        assert_eq!(
            Weighted::new([(NodeId(1), 0)]),
            Err(ConfigError::ZeroTotalWeight)
        );
        assert_eq!(
            Weighted::new([(NodeId(1), u64::MAX), (NodeId(2), 1)]),
            Err(ConfigError::WeightOverflow)
        );
    }
}
