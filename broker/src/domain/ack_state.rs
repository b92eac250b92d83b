//! Which records of one partition a push group is done with: an ack floor plus ranges.
//!
//! Every offset below the floor is done (acked or dead-lettered); above it, done offsets
//! are kept as disjoint, non-adjacent ranges. Acks usually arrive nearly in order, so the
//! floor advances and the ranges stay few; however the acks come, the state is at most one
//! range per gap, never one entry per record.

use std::collections::BTreeMap;

use crate::storage::StorageError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckState {
    floor: u64,
    /// start → end (exclusive); every start is above the floor, and no two ranges touch.
    ranges: BTreeMap<u64, u64>,
}

impl AckState {
    /// Everything below `floor` done, nothing above.
    pub fn at(floor: u64) -> Self {
        AckState {
            floor,
            ranges: BTreeMap::new(),
        }
    }

    /// Every offset below this is done.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// How many ranges are kept above the floor.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// How many offsets above the floor are done.
    pub fn done_above_floor(&self) -> u64 {
        self.ranges.iter().map(|(start, end)| end - start).sum()
    }

    pub fn is_done(&self, offset: u64) -> bool {
        if offset < self.floor {
            return true;
        }
        self.ranges
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, &end)| offset < end)
    }

    /// Marks `[start, end)` done.
    pub fn mark(&mut self, start: u64, end: u64) {
        let mut start = start.max(self.floor);
        let mut end = end;
        if start >= end {
            return;
        }
        // Absorb every range that overlaps or touches [start, end).
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=end)
            .rev()
            .take_while(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        if start == self.floor {
            self.floor = end;
        } else {
            self.ranges.insert(start, end);
        }
    }

    /// Moves the floor to `floor` (never back), forgetting ranges below it.
    pub fn raise_floor(&mut self, floor: u64) {
        if floor > self.floor {
            self.mark(self.floor, floor);
        }
    }

    /// `floor u64, count u32, count × (start u64, end u64)`, big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + 16 * self.ranges.len());
        out.extend_from_slice(&self.floor.to_be_bytes());
        out.extend_from_slice(&(self.ranges.len() as u32).to_be_bytes());
        for (start, end) in &self.ranges {
            out.extend_from_slice(&start.to_be_bytes());
            out.extend_from_slice(&end.to_be_bytes());
        }
        out
    }

    pub fn decode(value: &[u8]) -> Result<AckState, StorageError> {
        let corrupt = || StorageError::Corrupt("push group ack state".into());
        let u64_at = |at: usize| -> Result<u64, StorageError> {
            let bytes = value.get(at..at + 8).ok_or_else(corrupt)?;
            Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| corrupt())?))
        };
        let floor = u64_at(0)?;
        let count_bytes = value.get(8..12).ok_or_else(corrupt)?;
        let count = u32::from_be_bytes(count_bytes.try_into().map_err(|_| corrupt())?) as usize;
        if value.len() != 12 + 16 * count {
            return Err(corrupt());
        }
        let mut state = AckState::at(floor);
        for i in 0..count {
            let (start, end) = (u64_at(12 + 16 * i)?, u64_at(20 + 16 * i)?);
            if start <= floor || end <= start {
                return Err(corrupt());
            }
            state.mark(start, end);
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_acks_only_move_the_floor() {
        let mut state = AckState::at(0);
        for i in 0..1000 {
            state.mark(i, i + 1);
        }
        assert_eq!((state.floor(), state.range_count()), (1000, 0));
    }

    #[test]
    fn a_gap_keeps_one_range_until_it_is_filled() {
        let mut state = AckState::at(10);
        state.mark(12, 20);
        state.mark(25, 30);
        state.mark(20, 25);
        assert_eq!((state.floor(), state.range_count()), (10, 1));
        assert!(!state.is_done(10) && !state.is_done(11));
        assert!(state.is_done(12) && state.is_done(29) && !state.is_done(30));
        state.mark(10, 12);
        assert_eq!((state.floor(), state.range_count()), (30, 0));
    }

    proptest! {
        /// Against a set of offsets: the same answers, ranges never touch, and it survives
        /// encoding.
        #[test]
        fn agrees_with_a_set(
            floor in 0u64..20,
            marks in proptest::collection::vec((0u64..200, 1u64..20), 0..60),
        ) {
            let mut state = AckState::at(floor);
            let mut model: BTreeSet<u64> = (0..floor).collect();
            for (start, len) in marks {
                state.mark(start, start + len);
                model.extend(start..start + len);
            }
            for offset in 0..250 {
                prop_assert_eq!(state.is_done(offset), model.contains(&offset), "offset {}", offset);
            }
            let mut previous_end = state.floor();
            for (&start, &end) in &state.ranges {
                prop_assert!(start > previous_end, "ranges touch or overlap the floor");
                previous_end = end;
            }
            prop_assert_eq!(AckState::decode(&state.encode()).unwrap(), state);
        }
    }
}
