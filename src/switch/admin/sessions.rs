//! Sessions: a random 256-bit token in an `HttpOnly; SameSite=Strict`
//! cookie, kept here only as its SHA-256 (a copy of this table, or a
//! timing difference in its lookup, gives no token away). A session ends
//! after `session_ttl_secs` without a request, or `session_max_secs`
//! after login whatever it does, or at logout. Pure: the moment is passed
//! in.
//!
//! Bounded at [`MAX_SESSIONS`]: a login into a full table first drops the
//! expired sessions, then the one idle longest (only operators who got
//! through password and TOTP make sessions, so this is about forgotten
//! browsers, not attackers).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::users::Role;

/// Most sessions at once.
pub const MAX_SESSIONS: usize = 256;
/// The cookie's name.
pub const COOKIE: &str = "switchyard_session";

/// SHA-256 of a token: the table's key.
pub type TokenHash = [u8; 32];

#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// The first 16 hex digits of the token's SHA-256: names the session
    /// in the audit trail without giving the token away.
    pub id: String,
    /// Where its last request came from.
    pub source: SocketAddr,
    created: Instant,
    last_seen: Instant,
}

/// Why a session ended by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// No request for `session_ttl_secs`.
    Idle,
    /// `session_max_secs` since login.
    MaxAge,
}

impl Expiry {
    pub fn name(self) -> &'static str {
        match self {
            Expiry::Idle => "idle",
            Expiry::MaxAge => "max_age",
        }
    }
}

pub enum Lookup {
    Valid(Session),
    Expired(Session, Expiry),
    Unknown,
}

pub struct Sessions {
    map: HashMap<TokenHash, Session>,
    idle: Duration,
    max_age: Duration,
    max: usize,
}

/// A fresh token (64 hex digits) and its hash.
pub fn new_token() -> Result<(String, TokenHash), String> {
    let mut raw = [0u8; 32];
    crate::security::random::fill(&mut raw).map_err(|e| e.to_string())?;
    let token = data_encoding::HEXLOWER.encode(&raw);
    zeroize::Zeroize::zeroize(&mut raw);
    let hash = hash_token(&token);
    Ok((token, hash))
}

pub fn hash_token(token: &str) -> TokenHash {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// The session token in a `Cookie` header value, if it has the form one
/// has (64 hex digits).
pub fn token_in_cookies(header: &str) -> Option<&str> {
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == COOKIE && v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then_some(v)
    })
}

impl Sessions {
    pub fn new(idle: Duration, max_age: Duration, max: usize) -> Sessions {
        Sessions {
            map: HashMap::new(),
            idle,
            max_age,
            max: max.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn expiry(&self, s: &Session, now: Instant) -> Option<Expiry> {
        if now.saturating_duration_since(s.created) >= self.max_age {
            Some(Expiry::MaxAge)
        } else if now.saturating_duration_since(s.last_seen) >= self.idle {
            Some(Expiry::Idle)
        } else {
            None
        }
    }

    /// A new session for `user`; returns the sessions that had to go to
    /// make room (expired ones, with why, or the longest idle).
    pub fn insert(
        &mut self,
        hash: TokenHash,
        user: &str,
        role: Role,
        source: SocketAddr,
        now: Instant,
    ) -> (Session, Vec<(Session, Option<Expiry>)>) {
        let mut gone: Vec<(Session, Option<Expiry>)> = Vec::new();
        if self.map.len() >= self.max {
            gone.extend(self.sweep(now).into_iter().map(|(s, e)| (s, Some(e))));
        }
        if self.map.len() >= self.max
            && let Some(k) = self
                .map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k)
            && let Some(s) = self.map.remove(&k)
        {
            gone.push((s, None));
        }
        let session = Session {
            user: user.to_owned(),
            role,
            id: data_encoding::HEXLOWER.encode(&hash[..8]),
            source,
            created: now,
            last_seen: now,
        };
        self.map.insert(hash, session.clone());
        (session, gone)
    }

    /// The session of a request: valid (and its idle time starts again),
    /// expired (and removed), or unknown.
    pub fn touch(&mut self, hash: &TokenHash, source: SocketAddr, now: Instant) -> Lookup {
        let Some(s) = self.map.get(hash) else {
            return Lookup::Unknown;
        };
        if let Some(e) = self.expiry(s, now) {
            return match self.map.remove(hash) {
                Some(s) => Lookup::Expired(s, e),
                None => Lookup::Unknown,
            };
        }
        match self.map.get_mut(hash) {
            Some(s) => {
                s.last_seen = now;
                s.source = source;
                Lookup::Valid(s.clone())
            }
            None => Lookup::Unknown,
        }
    }

    pub fn remove(&mut self, hash: &TokenHash) -> Option<Session> {
        self.map.remove(hash)
    }

    /// Removes and returns every expired session.
    pub fn sweep(&mut self, now: Instant) -> Vec<(Session, Expiry)> {
        let expired: Vec<(TokenHash, Expiry)> = self
            .map
            .iter()
            .filter_map(|(k, s)| Some((*k, self.expiry(s, now)?)))
            .collect();
        expired
            .into_iter()
            .filter_map(|(k, e)| Some((self.map.remove(&k)?, e)))
            .collect()
    }

    /// Removes the sessions `keep` refuses (after a reload: the users
    /// gone, or whose role changed).
    pub fn retain(&mut self, mut keep: impl FnMut(&Session) -> bool) -> Vec<Session> {
        let gone: Vec<TokenHash> = self
            .map
            .iter()
            .filter(|(_, s)| !keep(s))
            .map(|(k, _)| *k)
            .collect();
        gone.into_iter()
            .filter_map(|k| self.map.remove(&k))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    #[test]
    fn idle_and_absolute_expiry() {
        let mut s = Sessions::new(Duration::from_secs(10), Duration::from_secs(25), 8);
        let t0 = Instant::now();
        let (tok, h) = new_token().expect("token");
        assert_eq!(tok.len(), 64);
        assert_eq!(hash_token(&tok), h);
        let (session, gone) = s.insert(h, "alice", Role::Operator, SRC, t0);
        assert!(gone.is_empty());
        assert_eq!(session.id.len(), 16);
        // Each request restarts the idle time...
        for i in 1..=2 {
            let t = t0 + Duration::from_secs(9 * i);
            assert!(matches!(s.touch(&h, SRC, t), Lookup::Valid(_)), "{i}");
        }
        // ... but not the absolute limit.
        assert!(matches!(
            s.touch(&h, SRC, t0 + Duration::from_secs(25)),
            Lookup::Expired(_, Expiry::MaxAge)
        ));
        assert!(matches!(s.touch(&h, SRC, t0), Lookup::Unknown), "removed");

        let (_, h2) = new_token().expect("token");
        s.insert(h2, "bob", Role::Viewer, SRC, t0);
        assert!(matches!(
            s.touch(&h2, SRC, t0 + Duration::from_secs(10)),
            Lookup::Expired(_, Expiry::Idle)
        ));
    }

    #[test]
    fn bounded_expired_first_then_longest_idle() {
        let mut s = Sessions::new(Duration::from_secs(10), Duration::from_secs(100), 2);
        let t0 = Instant::now();
        let (_, a) = new_token().expect("token");
        let (_, b) = new_token().expect("token");
        let (_, c) = new_token().expect("token");
        let (_, d) = new_token().expect("token");
        s.insert(a, "a", Role::Viewer, SRC, t0);
        s.insert(b, "b", Role::Viewer, SRC, t0 + Duration::from_secs(5));
        // At 12 s, a is expired: it goes.
        let (_, gone) = s.insert(c, "c", Role::Viewer, SRC, t0 + Duration::from_secs(12));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0.user, "a");
        assert_eq!(gone[0].1, Some(Expiry::Idle));
        // Nothing expired at 13 s: the longest idle (b) goes.
        let (_, gone) = s.insert(d, "d", Role::Viewer, SRC, t0 + Duration::from_secs(13));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0.user, "b");
        assert_eq!(gone[0].1, None);
        assert_eq!(s.len(), 2);
        let removed = s.retain(|x| x.user != "c");
        assert_eq!(removed.len(), 1);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn cookies() {
        let t = "ab".repeat(32);
        assert_eq!(
            token_in_cookies(&format!("a=b; {COOKIE}={t}; c=d")),
            Some(t.as_str())
        );
        assert_eq!(token_in_cookies(&format!("{COOKIE}=short")), None);
        assert_eq!(token_in_cookies("other=x"), None);
    }
}
