//! SCRAM-SHA-256 (RFC 5802 and RFC 7677): the password exchange of the TCP protocol, as
//! Kafka and PostgreSQL use it. The password never crosses the wire, and the broker stores
//! only what SCRAM needs to check a proof and prove itself (`StoredKey`, `ServerKey`, the
//! salt and the iteration count), never the password nor anything that would let its
//! holder log in.
//!
//! Both sides are here, so that the client and the broker agree by construction:
//! [`ClientFirst`] → [`ServerFirst`] → [`ClientFinal`] → [`ServerFinal`]. Messages are the
//! RFC's text (`n,,n=user,r=nonce` and so on) without channel binding (`n,,`); TLS, when
//! on, protects the channel itself.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use subtle::ConstantTimeEq;

/// Iterations of PBKDF2 for new credentials: RFC 7677 asks for at least 4,096; this many
/// takes tens of milliseconds, once per login.
pub const DEFAULT_ITERATIONS: u32 = 100_000;
/// The fewest iterations a client accepts from a broker, so a rogue broker cannot ask for
/// an easy-to-crack proof.
pub const MIN_ITERATIONS: u32 = 4_096;
/// The most a client accepts, so a rogue broker cannot keep it computing for hours.
pub const MAX_ITERATIONS: u32 = 10_000_000;
const NONCE_BYTES: usize = 24;
const KEY_LEN: usize = 32;

/// Why an exchange failed. Deliberately vague towards a client: a wrong password and an
/// unknown user look the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("the server's nonce does not extend the client's")]
    NonceMismatch,
    #[error("the broker asked for only {0} iterations")]
    TooFewIterations(u32),
    #[error("the broker asked for {0} iterations, more than a client computes")]
    TooManyIterations(u32),
    #[error("authentication failed")]
    BadProof,
    #[error("the broker's signature does not match: it does not know this password")]
    BadServerSignature,
}

/// What the broker keeps of a password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; KEY_LEN],
    pub server_key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credentials for `password` with a fresh random salt.
    pub fn new(password: &str, iterations: u32) -> Credentials {
        let mut salt = vec![0u8; 16];
        fill_random(&mut salt);
        Credentials::derive(password, salt, iterations)
    }

    /// Credentials for `password` with `salt`.
    pub fn derive(password: &str, salt: Vec<u8>, iterations: u32) -> Credentials {
        let keys = Keys::derive(password, &salt, iterations);
        Credentials {
            stored_key: sha256(&keys.client_key),
            server_key: keys.server_key,
            salt,
            iterations,
        }
    }

    /// The credentials as stored: `iterations`, then salt, stored key and server key in
    /// base64, separated by `$`.
    pub fn encode(&self) -> String {
        format!(
            "{}${}${}${}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }

    pub fn decode(text: &str) -> Result<Credentials, ScramError> {
        let bad = ScramError::Malformed("stored credentials");
        let mut parts = text.split('$');
        let mut next = || parts.next().ok_or(bad.clone());
        let iterations = next()?.parse().map_err(|_| bad.clone())?;
        let salt = BASE64.decode(next()?).map_err(|_| bad.clone())?;
        let key = |text: &str| -> Result<[u8; KEY_LEN], ScramError> {
            BASE64
                .decode(text)
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or(bad.clone())
        };
        let stored_key = key(next()?)?;
        let server_key = key(next()?)?;
        Ok(Credentials {
            salt,
            iterations,
            stored_key,
            server_key,
        })
    }
}

/// The keys a password yields for a salt and iteration count.
#[derive(Clone)]
struct Keys {
    client_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
}

impl Keys {
    fn derive(password: &str, salt: &[u8], iterations: u32) -> Keys {
        let mut salted = [0u8; KEY_LEN];
        let rounds = std::num::NonZeroU32::new(iterations.max(1)).expect("at least one");
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            salt,
            password.as_bytes(),
            &mut salted,
        );
        Keys {
            client_key: hmac_sha256(&salted, b"Client Key"),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }
}

/// A client's keys from its last login, kept so that logging in again (a reconnect, another
/// connection of the same process) does not run PBKDF2 again: deriving them costs the
/// client tens of milliseconds by design, while the broker's side of a login is a few
/// HMACs. They are reused only for the same password, salt and iteration count; they
/// log in as the password does, so they are kept exactly as carefully (in memory only).
#[derive(Default)]
pub struct KeyCache(std::sync::Mutex<Option<CachedKeys>>);

struct CachedKeys {
    /// A hash of the password they came from, so a changed password derives afresh.
    password: [u8; KEY_LEN],
    salt: Vec<u8>,
    iterations: u32,
    keys: Keys,
}

impl KeyCache {
    /// An empty cache (usable in a `static`).
    pub const fn new() -> KeyCache {
        KeyCache(std::sync::Mutex::new(None))
    }

    fn keys(&self, password: &str, salt: &[u8], iterations: u32) -> Keys {
        let fingerprint = sha256(password.as_bytes());
        let mut cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cached.as_ref().filter(|c| {
            bool::from(c.password.ct_eq(&fingerprint))
                && c.salt == salt
                && c.iterations == iterations
        }) {
            return hit.keys.clone();
        }
        let keys = Keys::derive(password, salt, iterations);
        *cached = Some(CachedKeys {
            password: fingerprint,
            salt: salt.to_vec(),
            iterations,
            keys: keys.clone(),
        });
        keys
    }
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCache(..)")
    }
}

/// The client's first message: `n,,n=USER,r=NONCE`.
pub struct ClientFirst {
    user: String,
    nonce: String,
}

impl ClientFirst {
    pub fn new(user: &str) -> ClientFirst {
        ClientFirst::with_nonce(user, random_nonce())
    }

    /// With a nonce of the caller's (tests replaying the RFC's example).
    pub fn with_nonce(user: &str, nonce: String) -> ClientFirst {
        ClientFirst {
            user: user.to_string(),
            nonce,
        }
    }

    pub fn message(&self) -> String {
        format!("n,,{}", self.bare())
    }

    fn bare(&self) -> String {
        format!("n={},r={}", escape_name(&self.user), self.nonce)
    }

    /// Answers the broker's first message with the proof of `password`.
    pub fn answer(
        self,
        server_first: &str,
        password: &str,
    ) -> Result<(String, ClientFinal), ScramError> {
        self.answer_with(server_first, password, &KeyCache::default())
    }

    /// [`ClientFirst::answer`], taking the keys from `cache` when it holds them for this
    /// password, salt and iteration count (and keeping them there otherwise).
    pub fn answer_with(
        self,
        server_first: &str,
        password: &str,
        cache: &KeyCache,
    ) -> Result<(String, ClientFinal), ScramError> {
        let fields = Fields::parse(server_first)?;
        let nonce = fields.get('r')?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let salt = BASE64
            .decode(fields.get('s')?)
            .map_err(|_| ScramError::Malformed("salt"))?;
        let iterations: u32 = fields
            .get('i')?
            .parse()
            .map_err(|_| ScramError::Malformed("iteration count"))?;
        if iterations < MIN_ITERATIONS {
            return Err(ScramError::TooFewIterations(iterations));
        }
        if iterations > MAX_ITERATIONS {
            return Err(ScramError::TooManyIterations(iterations));
        }
        let keys = cache.keys(password, &salt, iterations);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.bare());
        let signature = hmac_sha256(&sha256(&keys.client_key), auth_message.as_bytes());
        let proof = xor(&keys.client_key, &signature);
        let message = format!("{without_proof},p={}", BASE64.encode(proof));
        let expected = hmac_sha256(&keys.server_key, auth_message.as_bytes());
        Ok((message, ClientFinal { expected }))
    }
}

/// What the client expects the broker to prove at the end.
pub struct ClientFinal {
    expected: [u8; KEY_LEN],
}

impl ClientFinal {
    /// Checks the broker's final message (`v=SIGNATURE`, or `e=ERROR`).
    pub fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        let fields = Fields::parse(server_final)?;
        if fields.get('e').is_ok() {
            return Err(ScramError::BadProof);
        }
        let signature = BASE64
            .decode(fields.get('v')?)
            .map_err(|_| ScramError::Malformed("server signature"))?;
        if bool::from(signature.ct_eq(&self.expected)) {
            Ok(())
        } else {
            Err(ScramError::BadServerSignature)
        }
    }
}

/// The broker's side after the client's first message: the user it names, and the
/// broker's answer once it has looked up the user's credentials.
pub struct ServerFirst {
    pub user: String,
    client_first_bare: String,
    client_nonce: String,
}

impl ServerFirst {
    /// Reads the client's first message. Channel binding is not offered (`n,,`), and
    /// `y,,` (the client could bind but thinks the server cannot) is accepted as well.
    pub fn parse(client_first: &str) -> Result<ServerFirst, ScramError> {
        let bare = client_first
            .strip_prefix("n,,")
            .or_else(|| client_first.strip_prefix("y,,"))
            .ok_or(ScramError::Malformed("the GS2 header must be n,,"))?;
        let fields = Fields::parse(bare)?;
        let user = unescape_name(fields.get('n')?)?;
        let client_nonce = fields.get('r')?.to_string();
        if client_nonce.is_empty()
            || !client_nonce
                .chars()
                .all(|c| c.is_ascii_graphic() && c != ',')
        {
            return Err(ScramError::Malformed("nonce"));
        }
        Ok(ServerFirst {
            user,
            client_first_bare: bare.to_string(),
            client_nonce,
        })
    }

    /// The broker's first message for `credentials`. For an unknown user, pass made-up
    /// credentials (see [`Credentials::new`]) so the exchange fails only at the proof,
    /// looking the same as a wrong password.
    pub fn answer(self, credentials: Credentials) -> (String, ServerExpects) {
        self.answer_with_nonce(credentials, random_nonce())
    }

    /// With a nonce part of the caller's (tests replaying the RFC's example).
    pub fn answer_with_nonce(
        self,
        credentials: Credentials,
        server_nonce: String,
    ) -> (String, ServerExpects) {
        let nonce = format!("{}{server_nonce}", self.client_nonce);
        let message = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credentials.salt),
            credentials.iterations
        );
        let expects = ServerExpects {
            user: self.user,
            auth_prefix: format!("{},{message}", self.client_first_bare),
            nonce,
            credentials,
        };
        (message, expects)
    }
}

/// What the broker checks the client's final message against.
pub struct ServerExpects {
    pub user: String,
    auth_prefix: String,
    nonce: String,
    credentials: Credentials,
}

/// The broker's verdict on a client's proof, and its final message.
pub struct ServerFinal {
    pub message: String,
}

impl ServerExpects {
    /// Checks the client's final message; `Ok` carries the broker's signature to send.
    pub fn verify(self, client_final: &str) -> Result<ServerFinal, ScramError> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let fields = Fields::parse(without_proof)?;
        if fields.get('c')? != "biws" && fields.get('c')? != "eSws" {
            return Err(ScramError::Malformed("channel binding is not supported"));
        }
        if fields.get('r')? != self.nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof: [u8; KEY_LEN] = BASE64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("proof"))?;
        let auth_message = format!("{},{without_proof}", self.auth_prefix);
        let signature = hmac_sha256(&self.credentials.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &signature);
        if !bool::from(sha256(&client_key).ct_eq(&self.credentials.stored_key)) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac_sha256(&self.credentials.server_key, auth_message.as_bytes());
        Ok(ServerFinal {
            message: format!("v={}", BASE64.encode(server_signature)),
        })
    }
}

/// `a=...,b=...` attribute lists.
struct Fields<'a>(Vec<(char, &'a str)>);

impl<'a> Fields<'a> {
    fn parse(text: &'a str) -> Result<Fields<'a>, ScramError> {
        text.split(',')
            .map(|field| {
                let mut chars = field.chars();
                match (chars.next(), chars.next()) {
                    (Some(name), Some('=')) if name.is_ascii_alphabetic() => {
                        Ok((name, &field[2..]))
                    }
                    _ => Err(ScramError::Malformed("an attribute is not name=value")),
                }
            })
            .collect::<Result<_, _>>()
            .map(Fields)
    }

    fn get(&self, name: char) -> Result<&'a str, ScramError> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or(ScramError::Malformed("a required attribute is missing"))
    }
}

/// `,` and `=` in a user name are written `=2C` and `=3D`.
fn escape_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn unescape_name(text: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("user name escape")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; KEY_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, data);
    tag.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    digest::digest(&digest::SHA256, data)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Fills `buf` from the operating system's secure random source.
pub fn fill_random(buf: &mut [u8]) {
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("the system's random source works");
}

fn random_nonce() -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    fill_random(&mut bytes);
    BASE64.encode(bytes)
}

#[cfg(test)]
mod tests {

    #[test]
    fn cached_keys_prove_as_derived_ones_and_only_for_the_same_password() {
        let cache = KeyCache::new();
        let kept = Credentials::derive("pencil", b"NaCl-salt".to_vec(), 4096);
        for password in ["pencil", "pencil", "other", "pencil"] {
            let first = ClientFirst::with_nonce("user", "abc".into());
            let server = ServerFirst::parse(&first.message()).unwrap();
            let (server_first, expects) = server.answer_with_nonce(kept.clone(), "xyz".into());
            let (client_final, _) = first.answer_with(&server_first, password, &cache).unwrap();
            assert_eq!(expects.verify(&client_final).is_ok(), password == "pencil");
        }
    }

    use super::*;

    /// RFC 7677, section 3: user "user", password "pencil".
    #[test]
    fn the_rfc_7677_exchange_is_reproduced_on_both_sides() {
        let client = ClientFirst::with_nonce("user", "rOprNGfwEbeRWgbNEkqO".into());
        assert_eq!(client.message(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credentials = Credentials::derive("pencil", salt, 4096);
        let server = ServerFirst::parse(&client.message()).unwrap();
        assert_eq!(server.user, "user");
        let (server_first, expects) =
            server.answer_with_nonce(credentials, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into());
        assert_eq!(
            server_first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let (client_final, pending) = client.answer(&server_first, "pencil").unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let server_final = expects.verify(&client_final).unwrap();
        assert_eq!(
            server_final.message,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        pending.verify(&server_final.message).unwrap();
    }

    fn exchange(stored_for: &str, typed: &str) -> Result<(), ScramError> {
        let credentials = Credentials::new(stored_for, MIN_ITERATIONS);
        let client = ClientFirst::new("alice");
        let (server_first, expects) = ServerFirst::parse(&client.message())?.answer(credentials);
        let (client_final, pending) = client.answer(&server_first, typed)?;
        let server_final = expects.verify(&client_final)?;
        pending.verify(&server_final.message)
    }

    #[test]
    fn a_wrong_password_is_refused_and_a_right_one_accepted() {
        assert_eq!(exchange("s3cret", "s3cret"), Ok(()));
        assert_eq!(exchange("s3cret", "guess"), Err(ScramError::BadProof));
    }

    #[test]
    fn a_replayed_client_final_message_fails_against_a_new_nonce() {
        let credentials = Credentials::new("s3cret", MIN_ITERATIONS);
        let client = ClientFirst::new("alice");
        let first = client.message();
        let (server_first, expects) = ServerFirst::parse(&first)
            .unwrap()
            .answer(credentials.clone());
        let (captured, _) = client.answer(&server_first, "s3cret").unwrap();
        expects.verify(&captured).unwrap();
        // An eavesdropper replays the same two client messages to a new exchange.
        let (_, expects) = ServerFirst::parse(&first).unwrap().answer(credentials);
        assert_eq!(
            expects.verify(&captured).err(),
            Some(ScramError::NonceMismatch)
        );
    }

    #[test]
    fn a_broker_that_does_not_know_the_password_cannot_prove_it() {
        let client = ClientFirst::new("alice");
        let (server_first, _) = ServerFirst::parse(&client.message())
            .unwrap()
            .answer(Credentials::new("other", MIN_ITERATIONS));
        let (_, pending) = client.answer(&server_first, "s3cret").unwrap();
        let forged = format!("v={}", BASE64.encode([7u8; KEY_LEN]));
        assert_eq!(pending.verify(&forged), Err(ScramError::BadServerSignature));
    }

    #[test]
    fn names_are_escaped_and_bad_messages_are_errors_not_panics() {
        let client = ClientFirst::with_nonce("a,b=c", "xyz".into());
        assert_eq!(client.message(), "n,,n=a=2Cb=3Dc,r=xyz");
        assert_eq!(ServerFirst::parse(&client.message()).unwrap().user, "a,b=c");
        for bad in [
            "",
            "p=tls,,n=a,r=x",
            "n,,n=a",
            "n,,r=x",
            "n,,n=a=2X,r=x",
            "n,,=,r=x",
            "n,,n=a,r=",
        ] {
            assert!(ServerFirst::parse(bad).is_err(), "{bad:?}");
        }
        let client = ClientFirst::new("alice");
        for bad in ["", "r=short,s=AA==,i=4096", "r=", "s=AA==,i=4096"] {
            assert!(
                ClientFirst::new("alice").answer(bad, "pw").is_err(),
                "{bad:?}"
            );
        }
        let own = client.message();
        let nonce = own.rsplit("r=").next().unwrap();
        let weak = format!("r={nonce}more,s=AA==,i=1");
        assert_eq!(
            ClientFirst::with_nonce("alice", nonce.into())
                .answer(&weak, "pw")
                .err(),
            Some(ScramError::TooFewIterations(1))
        );
        let greedy = format!("r={nonce}more,s=AA==,i=4294967295");
        assert_eq!(
            client.answer(&greedy, "pw").err(),
            Some(ScramError::TooManyIterations(u32::MAX))
        );
    }

    proptest::proptest! {
        /// Whatever a peer sends, each step answers or fails; none panics or hangs.
        #[test]
        fn arbitrary_messages_are_answered_or_refused(first in ".{0,120}", last in ".{0,120}") {
            let credentials = Credentials::derive("pw", vec![1; 16], MIN_ITERATIONS);
            if let Ok(server) = ServerFirst::parse(&first) {
                let (_, expects) = server.answer(credentials);
                let _ = expects.verify(&last);
            }
            let client = ClientFirst::with_nonce("u", "n".into());
            if let Ok((_, pending)) = client.answer(&first, "pw") {
                let _ = pending.verify(&last);
            }
            let _ = Credentials::decode(&first);
        }
    }

    #[test]
    fn credentials_round_trip_their_stored_form() {
        let credentials = Credentials::new("pw", MIN_ITERATIONS);
        assert_eq!(Credentials::decode(&credentials.encode()), Ok(credentials));
        assert!(Credentials::decode("4096$AA==$short$short").is_err());
        assert!(!format!("{:?}", Credentials::new("pw", MIN_ITERATIONS)).contains("key"));
    }
}
