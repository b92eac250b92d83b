//! Periodic duties, one file each.

pub mod retention;
