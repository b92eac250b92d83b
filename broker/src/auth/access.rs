//! Authentication and authorization at run time: who a caller is, what it may do, and the
//! open sessions that end when their credentials go.
//!
//! One [`Access`] per broker. Every way in turns what a client presents into a [`Login`]
//! (SASL on the TCP protocol, headers, a cookie or `?access_token=` over HTTP, a client
//! certificate), and the core checks each request's [`Principal`] with
//! [`Access::check`]. With `--auth` off every check passes, whoever the caller says it is.
//!
//! Decisions:
//! - Rules are read at every check, never cached in a session, so a new rule or a new
//!   password works at once on open connections.
//! - Deleting a user or revoking a token ends the sessions (TCP, WebSocket, SSE) that
//!   logged in with it. Removing a rule ends its user's sessions too: a push subscription
//!   or a stream granted under the old rule would otherwise go on delivering; the client
//!   reconnects and each request is checked again.
//! - A failed login is logged (user, mechanism, address; never the secret) and slows the
//!   address down: each attempt after a failure waits its turn, 50 ms doubling per failure
//!   up to 5 s, so parallel guesses from one address queue up behind each other. An
//!   address is forgotten a minute after its last failure, or at once on a success.
//! - A password checked over HTTP Basic is argon2id (tens of milliseconds); a success is
//!   remembered for a minute, keyed by a keyed hash of the pair, until any password
//!   changes, so a script sending Basic on every request does not pay it every time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_protocol::record::now_ms;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::directory::{Directory, Identity};
use super::presented::Presented;
use super::rules::Operation;
use crate::error::BrokerError;

/// The first wait after a failed login; it doubles per failure.
const FIRST_PENALTY: Duration = Duration::from_millis(50);
/// The longest wait one attempt has to make.
const MAX_PENALTY: Duration = Duration::from_secs(5);
/// An address with no failure for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it, the forgotten ones go first.
const MAX_ADDRESSES: usize = 16_384;
/// How long a password checked over HTTP Basic is trusted without checking it again.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
const MAX_VERIFIED: usize = 4096;

/// The connection a login arrives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    pub peer: SocketAddr,
    /// Inside TLS.
    pub tls: bool,
}

impl Channel {
    /// Whether a secret sent as it is (a password, a token) stays between the two ends:
    /// inside TLS, or on a loopback connection. Only SCRAM logs in without it.
    pub fn private(&self) -> bool {
        self.tls || self.peer.ip().is_loopback()
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub identity: Identity,
    /// The token's id, when it logged in with one.
    pub token: Option<String>,
}

/// Who is asking, as the core checks it.
#[derive(Debug, Clone, Default)]
pub enum Principal {
    /// Nobody has logged in (with `--auth` on, only logging in is allowed).
    #[default]
    Anonymous,
    User(Arc<Login>),
    /// The broker itself, reading its own state (the metrics); never a client.
    Broker,
}

impl Principal {
    /// The user's name, when there is one.
    pub fn user(&self) -> Option<&str> {
        match self {
            Principal::Anonymous | Principal::Broker => None,
            Principal::User(login) => Some(&login.identity.user),
        }
    }
}

/// A session's registration with [`Access::hold`].
pub struct Hold {
    /// Cancelled when the session's credentials go: end the session. (Whoever made it
    /// may cancel it for reasons of their own, such as the broker stopping.)
    pub cut: CancellationToken,
    revoked: Arc<AtomicBool>,
    registered: Option<(u64, Arc<Access>)>,
}

impl Hold {
    /// A hold on nothing: `cut` is only ever cancelled by whoever made it.
    pub fn detached(cut: CancellationToken) -> Hold {
        Hold {
            cut,
            revoked: Arc::default(),
            registered: None,
        }
    }

    /// Whether `cut` was cancelled because the credentials went.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some((id, access)) = &self.registered {
            lock(&access.sessions).remove(id);
        }
    }
}

/// An open session that ends when its credentials go.
struct Held {
    user: String,
    token: Option<String>,
    cut: CancellationToken,
    revoked: Arc<AtomicBool>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// When the next attempt from this address may be checked.
    next_try: Instant,
}

struct Verified {
    user: String,
    generation: u64,
    at: Instant,
}

/// The broker's authentication switch, its directory and what it remembers of logins.
pub struct Access {
    /// `--auth`: every request needs a login and a rule.
    pub required: bool,
    pub directory: Directory,
    sessions: Mutex<HashMap<u64, Held>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    verified: Mutex<HashMap<[u8; 32], Verified>>,
    /// Failed logins since the broker started.
    failures_total: AtomicU64,
    /// Keys the hashes of remembered Basic credentials; random per broker run.
    verified_key: ring::hmac::Key,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Access {
    pub fn new(required: bool, directory: Directory) -> Access {
        let mut key = [0u8; 32];
        herald_protocol::scram::fill_random(&mut key);
        Access {
            required,
            directory,
            sessions: Mutex::default(),
            failures: Mutex::default(),
            verified: Mutex::default(),
            failures_total: AtomicU64::new(0),
            verified_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        }
    }

    /// Whether `principal` may do `operation` on `topic` (`None`: listing, or users,
    /// tokens and rules): `AuthenticationRequired` for nobody, `NotAuthorized` naming
    /// the operation and resource for a user without a rule for it.
    pub fn check(
        &self,
        principal: &Principal,
        operation: Operation,
        topic: Option<&str>,
    ) -> Result<(), BrokerError> {
        let login = match principal {
            _ if !self.required => return Ok(()),
            Principal::Broker => return Ok(()),
            Principal::Anonymous => return Err(BrokerError::AuthenticationRequired),
            Principal::User(login) => login,
        };
        if self.directory.allows(&login.identity, operation, topic) {
            return Ok(());
        }
        Err(BrokerError::NotAuthorized {
            user: login.identity.user.clone(),
            operation,
            resource: match topic {
                Some(topic) => format!("topic {topic:?}"),
                None if operation == Operation::Admin => "users, tokens and rules".into(),
                None => "every topic".into(),
            },
        })
    }

    /// Failed logins since the broker started.
    pub fn failures(&self) -> u64 {
        self.failures_total.load(Ordering::Relaxed)
    }

    /// Whether `principal` may do `operation` on `topic`, for filtering what it sees.
    pub fn may(&self, principal: &Principal, operation: Operation, topic: &str) -> bool {
        self.check(principal, operation, Some(topic)).is_ok()
    }

    /// Any logged-in caller (or anyone, with `--auth` off): for requests on what the
    /// session already holds, its subscriptions, checked when they were made.
    pub fn logged_in(&self, principal: &Principal) -> Result<(), BrokerError> {
        match (self.required, principal) {
            (true, Principal::Anonymous) => Err(BrokerError::AuthenticationRequired),
            _ => Ok(()),
        }
    }

    // Open sessions.

    /// Registers session `id` (TCP, WebSocket or SSE) acting for `principal`: `cut`, kept
    /// in the returned [`Hold`], is cancelled when its user is deleted, its token revoked
    /// or one of its rules removed; dropping the hold unregisters it. (A session nobody
    /// logged in to holds nothing that could be revoked.)
    pub fn hold(self: &Arc<Self>, id: u64, principal: &Principal, cut: CancellationToken) -> Hold {
        let Principal::User(login) = principal else {
            return Hold::detached(cut);
        };
        let revoked = Arc::new(AtomicBool::new(false));
        let held = Held {
            user: login.identity.user.clone(),
            token: login.token.clone(),
            cut: cut.clone(),
            revoked: Arc::clone(&revoked),
        };
        lock(&self.sessions).insert(id, held);
        Hold {
            cut,
            revoked,
            registered: Some((id, Arc::clone(self))),
        }
    }

    /// Ends the sessions of `user`; returns how many.
    pub fn cut_user(&self, user: &str) -> usize {
        self.cut_where(|held| held.user == user)
    }

    /// Ends the sessions that logged in with token `id`; returns how many.
    pub fn cut_token(&self, id: &str) -> usize {
        self.cut_where(|held| held.token.as_deref() == Some(id))
    }

    fn cut_where(&self, which: impl Fn(&Held) -> bool) -> usize {
        let sessions = lock(&self.sessions);
        let cut: Vec<_> = sessions.values().filter(|h| which(h)).collect();
        for held in &cut {
            held.revoked.store(true, Ordering::Release);
            held.cut.cancel();
        }
        cut.len()
    }

    // Logging in.

    /// Waits as long as failures from `peer`'s address ask, then lets the attempt go on.
    pub async fn attempt(&self, peer: &SocketAddr) {
        let wait = {
            let mut failures = lock(&self.failures);
            let now = Instant::now();
            match failures.get_mut(&peer.ip()) {
                Some(f) if now.duration_since(f.last) < FORGET_AFTER => {
                    let at = f.next_try.max(now);
                    f.next_try = at + penalty(f.count);
                    at - now
                }
                Some(_) => {
                    failures.remove(&peer.ip());
                    Duration::ZERO
                }
                None => Duration::ZERO,
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Records a failed login by `user` from `peer` with `mechanism`, and logs it; the
    /// error to answer with.
    pub fn failed(&self, peer: &SocketAddr, user: &str, mechanism: &str, why: &str) -> BrokerError {
        tracing::warn!(%peer, user, mechanism, why, "authentication failed");
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        let mut failures = lock(&self.failures);
        let now = Instant::now();
        if failures.len() >= MAX_ADDRESSES {
            failures.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
        }
        if failures.len() < MAX_ADDRESSES || failures.contains_key(&peer.ip()) {
            let f = failures.entry(peer.ip()).or_insert(Failures {
                count: 0,
                last: now,
                next_try: now,
            });
            f.count = f.count.saturating_add(1);
            f.last = now;
            f.next_try = f.next_try.max(now + penalty(f.count));
        }
        BrokerError::AuthenticationFailed(why.to_string())
    }

    /// A successful login from `peer`: its address starts afresh.
    pub fn succeeded(&self, peer: &SocketAddr, login: &Login, mechanism: &str) -> Arc<Login> {
        lock(&self.failures).remove(&peer.ip());
        tracing::debug!(%peer, user = login.identity.user, mechanism, "authenticated");
        Arc::new(login.clone())
    }

    /// Logs in with an API token: known, not expired, its user still there.
    pub async fn login_token(
        &self,
        token: &str,
        channel: &Channel,
        mechanism: &str,
    ) -> Result<Arc<Login>, BrokerError> {
        in_private("a token", channel)?;
        let peer = &channel.peer;
        self.attempt(peer).await;
        let Some((identity, id)) = self.directory.check_token(token, now_ms()) else {
            return Err(self.failed(peer, "-", mechanism, "unknown, expired or revoked token"));
        };
        let login = Login {
            identity,
            token: Some(id),
        };
        Ok(self.succeeded(peer, &login, mechanism))
    }

    /// Logs in with a user's password (argon2id, off the runtime; HTTP Basic remembers a
    /// success for a while, see the module's notes).
    pub async fn login_password(
        self: &Arc<Self>,
        user: &str,
        password: &str,
        channel: &Channel,
        mechanism: &str,
    ) -> Result<Arc<Login>, BrokerError> {
        in_private("a password", channel)?;
        let peer = &channel.peer;
        let key = self.verified_key(user, password);
        let generation = self.directory.generation();
        if let Some(identity) = self.remembered(&key, generation) {
            let login = Login {
                identity,
                token: None,
            };
            return Ok(Arc::new(login));
        }
        self.attempt(peer).await;
        let access = Arc::clone(self);
        let (name, secret) = (user.to_string(), password.to_string());
        let identity =
            tokio::task::spawn_blocking(move || access.directory.check_password(&name, &secret))
                .await
                .map_err(|_| BrokerError::ShuttingDown)?;
        let Some(identity) = identity else {
            return Err(self.failed(peer, user, mechanism, "wrong user name or password"));
        };
        self.remember(key, &identity.user, generation);
        let login = Login {
            identity,
            token: None,
        };
        Ok(self.succeeded(peer, &login, mechanism))
    }

    /// Logs in with what an HTTP client presented.
    pub async fn login_presented(
        self: &Arc<Self>,
        presented: &Presented,
        channel: &Channel,
    ) -> Result<Arc<Login>, BrokerError> {
        match presented {
            Presented::Token(token) => self.login_token(token, channel, "bearer").await,
            Presented::Password { user, password } => {
                self.login_password(user, password, channel, "basic").await
            }
        }
    }

    fn verified_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut context = ring::hmac::Context::with_key(&self.verified_key);
        context.update(&(user.len() as u64).to_be_bytes());
        context.update(user.as_bytes());
        context.update(password.as_bytes());
        context
            .sign()
            .as_ref()
            .try_into()
            .expect("HMAC-SHA256 is 32 bytes")
    }

    fn remembered(&self, key: &[u8; 32], generation: u64) -> Option<Identity> {
        let verified = lock(&self.verified);
        let hit = verified.get(key)?;
        if hit.generation != generation || hit.at.elapsed() >= VERIFIED_FOR {
            return None;
        }
        self.directory.identity(&hit.user)
    }

    fn remember(&self, key: [u8; 32], user: &str, generation: u64) {
        let mut verified = lock(&self.verified);
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        let entry = Verified {
            user: user.to_string(),
            generation,
            at: Instant::now(),
        };
        verified.insert(key, entry);
    }
}

/// Refuses `what` (a secret sent as it is) on a connection where others could read it.
fn in_private(what: &str, channel: &Channel) -> Result<(), BrokerError> {
    if channel.private() {
        return Ok(());
    }
    tracing::warn!(peer = %channel.peer, "{what} sent in clear over the network was refused");
    Err(BrokerError::AuthenticationFailed(format!(
        "{what} is accepted only over TLS or a loopback connection (on the TCP protocol, \
         SCRAM-SHA-256 logs in with a password without TLS)"
    )))
}

fn penalty(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_PENALTY * 2u32.pow(doublings)).min(MAX_PENALTY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Store, StoreConfig};

    fn access(required: bool) -> (tempfile::TempDir, Arc<Access>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let directory = Directory::load(store).unwrap();
        (dir, Arc::new(Access::new(required, directory)))
    }

    fn peer() -> SocketAddr {
        "192.0.2.7:5000".parse().unwrap()
    }

    /// A TLS connection from [`peer`].
    fn tls() -> Channel {
        Channel {
            peer: peer(),
            tls: true,
        }
    }

    #[test]
    fn penalties_double_and_stop_at_the_cap() {
        assert_eq!(penalty(1), Duration::from_millis(50));
        assert_eq!(penalty(2), Duration::from_millis(100));
        assert_eq!(penalty(4), Duration::from_millis(400));
        assert_eq!(penalty(30), MAX_PENALTY);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_slow_the_next_attempts_from_that_address_only() {
        let (_dir, access) = access(true);
        let started = Instant::now();
        access.attempt(&peer()).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        for _ in 0..3 {
            access.failed(&peer(), "mallory", "PLAIN", "wrong user name or password");
        }
        let before = Instant::now();
        access.attempt(&peer()).await;
        assert!(
            before.elapsed() >= Duration::from_millis(200),
            "{:?}",
            before.elapsed()
        );
        // Parallel attempts queue behind each other.
        let before = Instant::now();
        access.attempt(&peer()).await;
        assert!(before.elapsed() >= Duration::from_millis(200));
        let other: SocketAddr = "192.0.2.8:5000".parse().unwrap();
        let before = Instant::now();
        access.attempt(&other).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
        // A minute later the address starts afresh.
        tokio::time::advance(FORGET_AFTER).await;
        let before = Instant::now();
        access.attempt(&peer()).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn checks_need_a_login_and_a_rule_and_name_what_was_refused() {
        let (_dir, access) = access(true);
        access.directory.add_user("alice", "pw", false).unwrap();
        let err = access
            .check(&Principal::Anonymous, Operation::Publish, Some("orders"))
            .unwrap_err();
        assert!(matches!(err, BrokerError::AuthenticationRequired));
        let alice = access
            .login_password("alice", "pw", &tls(), "basic")
            .await
            .unwrap();
        let alice = Principal::User(alice);
        let err = access
            .check(&alice, Operation::Publish, Some("orders"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "not authorized: user \"alice\" may not publish topic \"orders\""
        );
        access
            .directory
            .add_rule("alice", "orders", &[Operation::Publish])
            .unwrap();
        access
            .check(&alice, Operation::Publish, Some("orders"))
            .unwrap();
        assert!(
            access.may(&alice, Operation::Describe, "orders"),
            "publish implies it"
        );
        assert!(!access.may(&alice, Operation::Consume, "orders"));
        // With --auth off, anyone may.
        let (_dir, open) = self::access(false);
        open.check(&Principal::Anonymous, Operation::Delete, Some("x"))
            .unwrap();
    }

    #[tokio::test]
    async fn secrets_sent_as_they_are_need_tls_or_loopback() {
        let (_dir, access) = access(true);
        access.directory.add_user("alice", "pw", false).unwrap();
        let (token, _) = access.directory.create_token("alice", None).unwrap();
        let clear = Channel {
            peer: peer(),
            tls: false,
        };
        let err = access
            .login_password("alice", "pw", &clear, "basic")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("only over TLS"), "{err}");
        assert!(access.login_token(&token, &clear, "TOKEN").await.is_err());
        let loopback = Channel {
            peer: "127.0.0.1:5000".parse().unwrap(),
            tls: false,
        };
        access
            .login_token(&token, &loopback, "TOKEN")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_remembered_password_is_forgotten_when_it_changes() {
        let (_dir, access) = access(true);
        access.directory.add_user("alice", "pw", false).unwrap();
        access
            .login_password("alice", "pw", &tls(), "basic")
            .await
            .unwrap();
        access
            .login_password("alice", "pw", &tls(), "basic")
            .await
            .unwrap();
        access.directory.set_password("alice", "new").unwrap();
        let err = access
            .login_password("alice", "pw", &tls(), "basic")
            .await
            .unwrap_err();
        assert!(matches!(err, BrokerError::AuthenticationFailed(_)));
        access
            .login_password("alice", "new", &tls(), "basic")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn deleting_a_user_or_revoking_a_token_cuts_its_sessions() {
        let (_dir, access) = access(true);
        access.directory.add_user("alice", "pw", false).unwrap();
        access.directory.add_user("bob", "pw", false).unwrap();
        let (token, stored) = access.directory.create_token("alice", None).unwrap();
        let by_token = access.login_token(&token, &tls(), "TOKEN").await.unwrap();
        assert_eq!(by_token.token.as_deref(), Some(stored.id.as_str()));
        let by_password = access
            .login_password("alice", "pw", &tls(), "PLAIN")
            .await
            .unwrap();
        let bob = access
            .login_password("bob", "pw", &tls(), "PLAIN")
            .await
            .unwrap();
        let mut holds = vec![
            access.hold(1, &Principal::User(by_token), CancellationToken::new()),
            access.hold(2, &Principal::User(by_password), CancellationToken::new()),
            access.hold(3, &Principal::User(bob), CancellationToken::new()),
        ];
        let cuts: Vec<_> = holds.iter().map(|h| h.cut.clone()).collect();
        assert_eq!(access.cut_token(&stored.id), 1);
        assert!(cuts[0].is_cancelled() && !cuts[1].is_cancelled());
        assert!(holds[0].revoked() && !holds[1].revoked());
        drop(holds.remove(0));
        assert_eq!(access.cut_user("alice"), 1);
        assert!(cuts[1].is_cancelled() && !cuts[2].is_cancelled());
    }
}
