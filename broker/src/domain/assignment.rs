//! Who consumes which partition of a pull group: balanced, sticky and cooperative.
//!
//! Each partition has an *owner* (the member allowed to consume and commit it now) and a
//! *target* (the member it should belong to). Membership changes move targets only:
//!
//! - **Balanced**: targets give every member ⌊P/M⌋ or ⌈P/M⌉ of the P partitions.
//! - **Sticky**: a member keeps the targets it had, up to its share; only the surplus and
//!   the partitions of departed members move, and the members that already hold more keep
//!   the larger shares.
//! - **Cooperative**: a partition whose owner is not its target stays with that owner until
//!   the owner releases it (after committing) or leaves — only then is it granted to its
//!   target. There are never two owners at once.
//!
//! The generation goes up whenever what some member should be doing changes: a join, a
//! leave, or a grant after a release. Commits must carry the current generation, so a
//! member acting on an old picture learns of the change on its next request.

use std::collections::BTreeMap;

/// A member of the group as the broker knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The session (connection) the member joined on; it leaves when that session ends.
    pub session: u64,
    /// The client's address, for describing the group.
    pub address: String,
}

/// The membership and partition ownership of one pull group.
#[derive(Debug, Clone)]
pub struct Membership {
    generation: u32,
    members: BTreeMap<String, Member>,
    owner: Vec<Option<String>>,
    target: Vec<Option<String>>,
}

impl Membership {
    /// An empty group over `partitions` partitions.
    pub fn new(partitions: u32) -> Self {
        Membership {
            generation: 0,
            members: BTreeMap::new(),
            owner: vec![None; partitions as usize],
            target: vec![None; partitions as usize],
        }
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    pub fn members(&self) -> impl Iterator<Item = (&str, &Member)> {
        self.members.iter().map(|(id, m)| (id.as_str(), m))
    }

    /// Members that joined on `session`.
    pub fn members_of_session(&self, session: u64) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| m.session == session)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The member allowed to consume `partition` now, if any.
    pub fn owner(&self, partition: u32) -> Option<&str> {
        self.owner.get(partition as usize)?.as_deref()
    }

    /// Whether `member` owns `partition` (including one it has been asked to release).
    pub fn owns(&self, member: &str, partition: u32) -> bool {
        self.owner(partition) == Some(member)
    }

    /// The partitions `member` owns.
    pub fn owned_by(&self, member: &str) -> Vec<u32> {
        self.partitions_where(|p| self.owns(member, p))
    }

    /// The partitions `member` should consume: owned by it and still its target. A
    /// partition it owns but that is missing here is one it must commit and release.
    pub fn granted(&self, member: &str) -> Vec<u32> {
        self.partitions_where(|p| {
            self.owns(member, p) && self.target[p as usize].as_deref() == Some(member)
        })
    }

    /// Adds a member, or moves a known one to a new session keeping what it owns.
    pub fn join(&mut self, id: &str, member: Member) {
        if let Some(known) = self.members.get_mut(id) {
            *known = member;
            return;
        }
        self.members.insert(id.to_string(), member);
        self.rebalance();
        self.grant();
        self.generation = self.generation.wrapping_add(1);
    }

    /// Removes a member; what it owned is free at once. Returns whether it was a member.
    pub fn leave(&mut self, id: &str) -> bool {
        if self.members.remove(id).is_none() {
            return false;
        }
        for slot in self.owner.iter_mut().chain(self.target.iter_mut()) {
            if slot.as_deref() == Some(id) {
                *slot = None;
            }
        }
        self.rebalance();
        self.grant();
        self.generation = self.generation.wrapping_add(1);
        true
    }

    /// `member` gives up `partitions` (having committed them); each goes to its target.
    /// Partitions it does not own are ignored, so a repeated release is harmless.
    pub fn release(&mut self, member: &str, partitions: &[u32]) {
        for &p in partitions {
            if self.owns(member, p) {
                self.owner[p as usize] = None;
            }
        }
        if self.grant() {
            self.generation = self.generation.wrapping_add(1);
        }
    }

    /// Gives every free partition to its target. Returns whether anything was granted.
    fn grant(&mut self) -> bool {
        let mut granted = false;
        for (owner, target) in self.owner.iter_mut().zip(&self.target) {
            if owner.is_none() && target.is_some() {
                owner.clone_from(target);
                granted = true;
            }
        }
        granted
    }

    /// Recomputes targets: balanced, keeping each member's current targets where it can.
    fn rebalance(&mut self) {
        let partitions = self.target.len();
        let count = self.members.len();
        if count == 0 {
            self.target.fill(None);
            return;
        }
        let mut held: BTreeMap<&str, usize> =
            self.members.keys().map(|id| (id.as_str(), 0)).collect();
        for target in self.target.iter().flatten() {
            if let Some(n) = held.get_mut(target.as_str()) {
                *n += 1;
            }
        }
        // The members holding most keep the larger shares, so fewer partitions move.
        let mut order: Vec<&str> = held.keys().copied().collect();
        order.sort_by_key(|id| std::cmp::Reverse(held[id]));
        let (base, extra) = (partitions / count, partitions % count);
        let mut room: BTreeMap<String, usize> = order
            .iter()
            .enumerate()
            .map(|(rank, id)| (id.to_string(), base + usize::from(rank < extra)))
            .collect();
        let mut target = vec![None; partitions];
        for (p, current) in self.target.iter().enumerate() {
            if let Some(id) = current {
                if let Some(left) = room.get_mut(id).filter(|left| **left > 0) {
                    *left -= 1;
                    target[p] = Some(id.clone());
                }
            }
        }
        for slot in target.iter_mut().filter(|slot| slot.is_none()) {
            // The member with the most room left; ties go to the first by id.
            let (id, left) = room
                .iter_mut()
                .max_by(|a, b| (*a.1).cmp(&*b.1).then_with(|| b.0.cmp(a.0)))
                .expect("the group has members");
            *left -= 1;
            *slot = Some(id.clone());
        }
        self.target = target;
    }

    fn partitions_where(&self, keep: impl Fn(u32) -> bool) -> Vec<u32> {
        (0..self.owner.len() as u32).filter(|&p| keep(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(session: u64) -> Member {
        Member {
            session,
            address: format!("127.0.0.1:{session}"),
        }
    }

    /// Releases whatever every member owns but should not, as well-behaved clients do.
    fn settle(group: &mut Membership) {
        let ids: Vec<String> = group.members().map(|(id, _)| id.to_string()).collect();
        for id in ids {
            let release: Vec<u32> = group
                .owned_by(&id)
                .into_iter()
                .filter(|p| !group.granted(&id).contains(p))
                .collect();
            group.release(&id, &release);
        }
    }

    #[test]
    fn three_members_share_six_partitions_two_each() {
        let mut group = Membership::new(6);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            group.join(id, member(i as u64));
            settle(&mut group);
        }
        for id in ["a", "b", "c"] {
            assert_eq!(group.granted(id).len(), 2, "{id}");
        }
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_releases_it() {
        let mut group = Membership::new(2);
        group.join("a", member(1));
        assert_eq!(group.granted("a"), vec![0, 1]);
        let before = group.generation();
        group.join("b", member(2));
        assert!(group.generation() > before);
        // "a" still owns both until it releases; "b" is granted nothing yet.
        assert_eq!(group.owned_by("a"), vec![0, 1]);
        assert_eq!(group.granted("a").len(), 1);
        assert!(group.granted("b").is_empty());
        let revoked: Vec<u32> = group
            .owned_by("a")
            .into_iter()
            .filter(|p| !group.granted("a").contains(p))
            .collect();
        let before = group.generation();
        group.release("a", &revoked);
        assert!(group.generation() > before, "a grant is a new generation");
        assert_eq!(group.granted("b"), revoked);
    }

    #[test]
    fn leaving_frees_partitions_at_once_and_rejoining_keeps_them() {
        let mut group = Membership::new(4);
        group.join("a", member(1));
        group.join("b", member(2));
        settle(&mut group);
        let of_b = group.granted("b");
        group.join("b", member(7));
        assert_eq!(
            group.granted("b"),
            of_b,
            "a rejoin on a new session is sticky"
        );
        assert_eq!(group.members_of_session(7), vec!["b".to_string()]);
        assert!(group.leave("b"));
        assert!(!group.leave("b"));
        assert_eq!(group.granted("a"), vec![0, 1, 2, 3]);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Join(u8),
        Leave(u8),
        Settle,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..6).prop_map(Step::Join),
            (0u8..6).prop_map(Step::Leave),
            Just(Step::Settle),
        ]
    }

    proptest! {
        /// Whatever the joins, leaves and releases: one owner per partition at most,
        /// targets balanced to within one, and once everyone has released, every
        /// partition is consumed by exactly its target.
        #[test]
        fn ownership_stays_exclusive_and_balanced(
            partitions in 1u32..12,
            steps in proptest::collection::vec(step(), 1..40),
        ) {
            let mut group = Membership::new(partitions);
            for step in steps {
                let generation = group.generation();
                match step {
                    Step::Join(m) => group.join(&format!("m{m}"), member(u64::from(m))),
                    Step::Leave(m) => { group.leave(&format!("m{m}")); }
                    Step::Settle => settle(&mut group),
                }
                prop_assert!(group.generation() >= generation);
                for p in 0..partitions {
                    if let Some(owner) = group.owner(p) {
                        prop_assert!(group.member(owner).is_some(), "owner {} left", owner);
                    }
                }
                let shares: Vec<usize> = group
                    .members()
                    .map(|(id, _)| group.target.iter().filter(|t| t.as_deref() == Some(id)).count())
                    .collect();
                if let (Some(min), Some(max)) = (shares.iter().min(), shares.iter().max()) {
                    prop_assert!(max - min <= 1, "unbalanced {:?}", shares);
                    prop_assert_eq!(shares.iter().sum::<usize>(), partitions as usize);
                }
            }
            settle(&mut group);
            if !group.is_empty() {
                let granted: usize = group.members().map(|(id, _)| group.granted(id).len()).sum();
                prop_assert_eq!(granted, partitions as usize);
            }
        }

        /// A join moves no more partitions than the newcomer's share.
        #[test]
        fn a_join_moves_only_the_newcomers_share(partitions in 1u32..16, members in 1u8..6) {
            let mut group = Membership::new(partitions);
            for m in 0..members {
                group.join(&format!("m{m}"), member(u64::from(m)));
                settle(&mut group);
            }
            let before = group.target.clone();
            group.join("new", member(99));
            let moved = before.iter().zip(&group.target).filter(|(a, b)| a != b).count();
            let share = (partitions as usize).div_ceil(usize::from(members) + 1);
            prop_assert!(moved <= share, "moved {} of {}, share {}", moved, partitions, share);
        }
    }
}
