//! The broker's counters of what happens at its edges: connections and sessions by way in,
//! session expiries, and requests by type and outcome. Plain atomics, bumped on the hot
//! paths without a lock; `GET /metrics` reads them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use herald_protocol::{ErrorCode, Opcode};

/// The ways in, as the `way` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Tcp,
    Http,
    Sse,
    WebSocket,
}

impl Way {
    pub const ALL: [Way; 4] = [Way::Tcp, Way::Http, Way::Sse, Way::WebSocket];

    pub fn name(self) -> &'static str {
        match self {
            Way::Tcp => "tcp",
            Way::Http => "http",
            Way::Sse => "sse",
            Way::WebSocket => "websocket",
        }
    }
}

/// The HTTP routes, as the `type` label of HTTP requests names them.
pub const HTTP_ROUTES: [&str; 17] = [
    "GET /v1/topics",
    "GET /v1/topics/{topic}",
    "POST /v1/topics/{topic}/records",
    "GET /v1/topics/{topic}/partitions/{partition}/records",
    "GET /v1/topics/{topic}/events",
    "GET /v1/ws",
    "POST /v1/topics/{topic}/groups/{group}/leases",
    "POST /v1/topics/{topic}/groups/{group}/acks",
    "POST /v1/topics/{topic}/groups/{group}/nacks",
    "POST /v1/topics/{topic}/groups/{group}/rejects",
    "POST /v1/topics/{topic}/groups/{group}/touches",
    "GET /metrics",
    "GET /healthz",
    "GET /readyz",
    "GET /v1/stats",
    "GET /",
    "other",
];

/// Rows of the TCP request table: an opcode's high byte (its group, 0x00 to 0x07) times 16
/// plus its low byte (below 16 in every group), so finding a row is arithmetic.
const OPCODE_ROWS: usize = 8 * 16;

fn opcode_row(opcode: Opcode) -> usize {
    let code = opcode as u16 as usize;
    ((code >> 8) * 16 + (code & 0xff)).min(OPCODE_ROWS - 1)
}

/// Outcomes a request is counted under: `ok`, then each error code.
fn outcomes() -> usize {
    1 + ErrorCode::ALL.len()
}

/// Every counter; shared by every way in.
#[derive(Debug)]
pub struct Counters {
    connections: [Arc<AtomicI64>; 4],
    opened: [AtomicU64; 4],
    expired: [AtomicU64; 4],
    /// TCP requests: one row per opcode, one column per outcome.
    tcp_requests: Vec<AtomicU64>,
    /// HTTP requests: one row per route, one column per status class (1xx..5xx).
    http_requests: Vec<AtomicU64>,
}

impl Default for Counters {
    fn default() -> Self {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Counters {
            connections: Default::default(),
            opened: Default::default(),
            expired: Default::default(),
            tcp_requests: zeros(OPCODE_ROWS * outcomes()),
            http_requests: zeros(HTTP_ROUTES.len() * 5),
        }
    }
}

/// Counts one open connection (or stream) until dropped.
#[derive(Debug)]
pub struct Open(Arc<AtomicI64>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Counters {
    /// A connection (or an SSE stream, a WebSocket) by `way` opened; it counts as open until
    /// the returned guard is dropped.
    pub fn open(&self, way: Way) -> Open {
        self.opened[way as usize].fetch_add(1, Relaxed);
        let open = Arc::clone(&self.connections[way as usize]);
        open.fetch_add(1, Relaxed);
        Open(open)
    }

    /// A session by `way` ended because its peer was silent for the session timeout.
    pub fn expired(&self, way: Way) {
        self.expired[way as usize].fetch_add(1, Relaxed);
    }

    /// A TCP request of `opcode` was answered with `code` (`None`: it succeeded).
    pub fn tcp_request(&self, opcode: Opcode, code: Option<ErrorCode>) {
        let row = opcode_row(opcode);
        let column = code
            .and_then(|code| ErrorCode::ALL.iter().position(|&c| c == code))
            .map_or(0, |at| at + 1);
        self.tcp_requests[row * outcomes() + column].fetch_add(1, Relaxed);
    }

    /// An HTTP request with `method` on the route `path` (as the router matched it; `None`
    /// when none did) was answered with `status`.
    pub fn http_request(&self, method: &str, path: Option<&str>, status: u16) {
        let row = HTTP_ROUTES
            .iter()
            .position(|r| r.split_once(' ') == path.map(|p| (method, p)))
            .unwrap_or(HTTP_ROUTES.len() - 1);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.http_requests[row * 5 + class].fetch_add(1, Relaxed);
    }

    /// `(way, open now, opened in all, expired)` for each way in.
    pub fn connections(&self) -> Vec<(Way, i64, u64, u64)> {
        Way::ALL
            .iter()
            .map(|&way| {
                let i = way as usize;
                (
                    way,
                    self.connections[i].load(Relaxed),
                    self.opened[i].load(Relaxed),
                    self.expired[i].load(Relaxed),
                )
            })
            .collect()
    }

    /// `(type, outcome, count)` of every TCP request type and outcome seen.
    pub fn tcp_requests(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut seen = Vec::new();
        for opcode in Opcode::ALL {
            let row = opcode_row(*opcode);
            for column in 0..outcomes() {
                let count = self.tcp_requests[row * outcomes() + column].load(Relaxed);
                if count == 0 {
                    continue;
                }
                let outcome = match column {
                    0 => "ok",
                    c => ErrorCode::ALL[c - 1].name(),
                };
                seen.push((opcode.name(), outcome, count));
            }
        }
        seen
    }

    /// `(route, status class, count)` of every HTTP route and status class seen.
    pub fn http_requests(&self) -> Vec<(&'static str, &'static str, u64)> {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let mut seen = Vec::new();
        for (row, route) in HTTP_ROUTES.iter().enumerate() {
            for (class, name) in CLASSES.iter().enumerate() {
                let count = self.http_requests[row * 5 + class].load(Relaxed);
                if count > 0 {
                    seen.push((*route, *name, count));
                }
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_opcode_has_a_row_of_its_own() {
        let mut rows: Vec<usize> = Opcode::ALL.iter().map(|&o| opcode_row(o)).collect();
        rows.sort_unstable();
        rows.dedup();
        assert_eq!(rows.len(), Opcode::ALL.len());
        assert!(rows.iter().all(|&r| r < OPCODE_ROWS - 1));
    }

    #[test]
    fn counts_go_where_they_belong() {
        let counters = Counters::default();
        let open = counters.open(Way::Sse);
        let _tcp = counters.open(Way::Tcp);
        counters.expired(Way::Tcp);
        drop(open);
        let connections = counters.connections();
        assert_eq!(connections[0], (Way::Tcp, 1, 1, 1));
        assert_eq!(connections[2], (Way::Sse, 0, 1, 0));
        counters.tcp_request(Opcode::Publish, None);
        counters.tcp_request(Opcode::Publish, None);
        counters.tcp_request(Opcode::Fetch, Some(ErrorCode::NotAuthorized));
        assert_eq!(
            counters.tcp_requests(),
            vec![("Publish", "ok", 2), ("Fetch", "NotAuthorized", 1)]
        );
        counters.http_request("GET", Some("/v1/topics"), 200);
        counters.http_request("GET", None, 404);
        counters.http_request("DELETE", Some("/v1/topics"), 405);
        assert_eq!(
            counters.http_requests(),
            vec![("GET /v1/topics", "2xx", 1), ("other", "4xx", 2)]
        );
    }
}
