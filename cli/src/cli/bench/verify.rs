//! The consuming side's check: every published message arrives exactly once.
//!
//! Each bench payload starts with the producer's number and the message's sequence number
//! (see [`super::payload`]), so the set of messages a run must deliver is known from the
//! producer count and the message count alone — a consume run can check a topic written by
//! an earlier run.

use std::fmt;

/// Which messages a run publishes: producer `p` sends sequence numbers `0..count(p)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub producers: usize,
    pub messages: u64,
}

impl Expected {
    /// How many messages producer `p` sends: an even share, the remainder to the first ones.
    pub fn count(&self, producer: usize) -> u64 {
        let producers = self.producers as u64;
        self.messages / producers + u64::from((producer as u64) < self.messages % producers)
    }
}

/// Tracks which messages arrived.
#[derive(Debug)]
pub struct Verifier {
    expected: Expected,
    seen: Vec<Vec<u64>>,
    received: u64,
    duplicates: u64,
    unexpected: u64,
}

impl Verifier {
    pub fn new(expected: Expected) -> Self {
        let seen = (0..expected.producers)
            .map(|p| vec![0u64; expected.count(p).div_ceil(64) as usize])
            .collect();
        Verifier {
            expected,
            seen,
            received: 0,
            duplicates: 0,
            unexpected: 0,
        }
    }

    /// Records one delivered message.
    pub fn record(&mut self, producer: u32, sequence: u64) {
        let producer = producer as usize;
        if producer >= self.expected.producers || sequence >= self.expected.count(producer) {
            self.unexpected += 1;
            return;
        }
        let (word, bit) = ((sequence / 64) as usize, 1u64 << (sequence % 64));
        if self.seen[producer][word] & bit != 0 {
            self.duplicates += 1;
        } else {
            self.seen[producer][word] |= bit;
            self.received += 1;
        }
    }

    /// Records a payload that is not a bench message at all.
    pub fn record_foreign(&mut self) {
        self.unexpected += 1;
    }

    /// Whether every expected message has arrived.
    pub fn complete(&self) -> bool {
        self.received == self.expected.messages
    }

    /// `Ok` when every message arrived exactly once and nothing else did.
    pub fn check(&self) -> Result<(), Mismatch> {
        let missing = self.expected.messages - self.received;
        if missing == 0 && self.duplicates == 0 && self.unexpected == 0 {
            Ok(())
        } else {
            Err(Mismatch {
                missing,
                duplicates: self.duplicates,
                unexpected: self.unexpected,
            })
        }
    }
}

/// What a failed check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    pub missing: u64,
    pub duplicates: u64,
    pub unexpected: u64,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} missing, {} duplicated, {} unexpected messages",
            self.missing, self.duplicates, self.unexpected
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Expected {
        Expected {
            producers: 3,
            messages: 10,
        }
    }

    #[test]
    fn shares_cover_every_message() {
        let e = expected();
        assert_eq!((e.count(0), e.count(1), e.count(2)), (4, 3, 3));
    }

    #[test]
    fn a_complete_run_passes() {
        let mut v = Verifier::new(expected());
        for p in 0..3 {
            for s in 0..expected().count(p) {
                v.record(p as u32, s);
            }
        }
        assert!(v.complete());
        assert_eq!(v.check(), Ok(()));
    }

    #[test]
    fn a_missing_message_fails() {
        let mut v = Verifier::new(expected());
        for p in 0..3 {
            for s in 1..expected().count(p) {
                v.record(p as u32, s);
            }
        }
        assert_eq!(
            v.check(),
            Err(Mismatch {
                missing: 3,
                duplicates: 0,
                unexpected: 0
            })
        );
    }

    #[test]
    fn a_duplicate_fails_even_when_the_count_matches() {
        let mut v = Verifier::new(Expected {
            producers: 1,
            messages: 2,
        });
        v.record(0, 0);
        v.record(0, 0);
        assert_eq!(
            v.check(),
            Err(Mismatch {
                missing: 1,
                duplicates: 1,
                unexpected: 0
            })
        );
    }

    #[test]
    fn foreign_messages_fail() {
        let mut v = Verifier::new(Expected {
            producers: 1,
            messages: 1,
        });
        v.record(0, 0);
        v.record(5, 0);
        v.record(0, 9);
        v.record_foreign();
        assert_eq!(
            v.check(),
            Err(Mismatch {
                missing: 0,
                duplicates: 0,
                unexpected: 3
            })
        );
    }
}
