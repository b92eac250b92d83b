//! What pull and push groups share: the mode a group is stored with, where a new group
//! starts, and the check on group names.

use crate::error::{valid_name, BrokerError};

/// Group mode numbers as stored (the protocol's `GroupMode` values).
pub const MODE_PULL: u8 = 1;
/// See [`MODE_PULL`].
pub const MODE_PUSH: u8 = 2;

/// A stored mode's name, as errors and `describe` show it.
pub fn mode_name(mode: u8) -> &'static str {
    if mode == MODE_PUSH {
        "push"
    } else {
        "pull"
    }
}

/// Where a new group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
}

/// `Ok` if `group` is a valid group name, else `InvalidGroupName`.
pub fn check_group(group: &str) -> Result<(), BrokerError> {
    check_name(group, || BrokerError::InvalidGroupName(group.to_string()))
}

/// `Ok` if `name` is a valid name (of a group, a member), else `error()`.
pub fn check_name(name: &str, error: impl FnOnce() -> BrokerError) -> Result<(), BrokerError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(error())
    }
}
