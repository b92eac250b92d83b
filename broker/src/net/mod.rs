//! The network edge: accepting connections and serving one client's session.

pub mod listener;
pub mod login;
pub mod outbound;
pub mod session;
