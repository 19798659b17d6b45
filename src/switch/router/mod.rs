//! BIN-range routing: card-number prefixes of 1 to 11 digits to acquirers,
//! longest prefix first, with an optional backup per route and an optional
//! default. Sans-IO: the table maps to acquirer indices; which links are
//! up is asked of the acquirer handles by the caller.
//!
//! The table is an immutable snapshot held in an `ArcSwap`, so that a
//! reload could swap it without blocking a lookup; no reload exists yet.

mod config;

pub(crate) use config::RoutingFile;
pub use config::{Route, RoutingConfig};

/// Where a card range goes: indices into the switch's acquirer list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    pub primary: u16,
    pub backup: Option<u16>,
}

/// The routing table: a prefix map of card ranges plus the default.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    ranges: PrefixMap<RouteTarget>,
    default: Option<RouteTarget>,
}

/// Longest prefix a route may have.
pub const MAX_PREFIX_DIGITS: usize = 11;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("route prefix `{0}` is not 1 to 11 digits")]
    BadPrefix(String),
    #[error("route prefix `{0}` appears twice")]
    Duplicate(String),
    #[error("no acquirer is named `{0}`")]
    UnknownAcquirer(String),
}

impl RoutingTable {
    pub fn empty() -> RoutingTable {
        RoutingTable {
            ranges: PrefixMap::new(),
            default: None,
        }
    }

    /// Builds the table; `acquirer_index` resolves names to indices.
    pub fn from_config(
        config: &RoutingConfig,
        acquirer_index: impl Fn(&str) -> Option<u16>,
    ) -> Result<RoutingTable, RouteError> {
        let resolve = |name: &str| {
            acquirer_index(name).ok_or_else(|| RouteError::UnknownAcquirer(name.to_owned()))
        };
        let mut table = RoutingTable::empty();
        for r in &config.routes {
            let target = RouteTarget {
                primary: resolve(&r.acquirer)?,
                backup: r.backup.as_deref().map(resolve).transpose()?,
            };
            table.insert(&r.prefix, target)?;
        }
        if let Some(d) = &config.default {
            table.default = Some(RouteTarget {
                primary: resolve(d)?,
                backup: None,
            });
        }
        Ok(table)
    }

    pub fn set_default(&mut self, target: Option<RouteTarget>) {
        self.default = target;
    }

    pub fn insert(&mut self, prefix: &str, target: RouteTarget) -> Result<(), RouteError> {
        self.ranges.insert(prefix, target).map_err(|e| match e {
            PrefixError::BadPrefix => RouteError::BadPrefix(prefix.to_owned()),
            PrefixError::Duplicate => RouteError::Duplicate(prefix.to_owned()),
        })
    }

    /// The route for a card number (ASCII digits): the longest matching
    /// prefix, else the default.
    #[inline]
    pub fn lookup(&self, pan: &[u8]) -> Option<RouteTarget> {
        self.ranges.longest(pan).copied().or(self.default)
    }
}

/// Card-number prefixes (1 to 11 digits) to values, longest match wins.
/// A digit trie: at most 11 steps per lookup, no hashing, no allocation.
/// Used for routes, and by fraud rules for blocked BINs and issuing
/// countries.
#[derive(Clone, Debug)]
pub struct PrefixMap<T> {
    nodes: Vec<Node<T>>,
}

#[derive(Clone, Debug)]
struct Node<T> {
    /// Child index per digit; 0 means none (the root is never a child).
    children: [u32; 10],
    value: Option<T>,
}

impl<T> Node<T> {
    fn new() -> Node<T> {
        Node {
            children: [0; 10],
            value: None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum PrefixError {
    BadPrefix,
    Duplicate,
}

impl<T> Default for PrefixMap<T> {
    fn default() -> Self {
        PrefixMap::new()
    }
}

impl<T> PrefixMap<T> {
    pub fn new() -> PrefixMap<T> {
        PrefixMap {
            nodes: vec![Node::new()],
        }
    }

    pub fn insert(&mut self, prefix: &str, value: T) -> Result<(), PrefixError> {
        if prefix.is_empty()
            || prefix.len() > MAX_PREFIX_DIGITS
            || !prefix.bytes().all(|c| c.is_ascii_digit())
        {
            return Err(PrefixError::BadPrefix);
        }
        let mut at = 0usize;
        for c in prefix.bytes() {
            let d = (c - b'0') as usize;
            let next = self.nodes[at].children[d];
            at = if next == 0 {
                self.nodes.push(Node::new());
                let i = self.nodes.len() - 1;
                self.nodes[at].children[d] = i as u32;
                i
            } else {
                next as usize
            };
        }
        if self.nodes[at].value.is_some() {
            return Err(PrefixError::Duplicate);
        }
        self.nodes[at].value = Some(value);
        Ok(())
    }

    /// The value of the longest prefix of `digits` (ASCII) in the map.
    #[inline]
    pub fn longest(&self, digits: &[u8]) -> Option<&T> {
        let mut best = None;
        let mut at = 0usize;
        for &c in digits.iter().take(MAX_PREFIX_DIGITS) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            let next = self.nodes[at].children[d as usize];
            if next == 0 {
                break;
            }
            at = next as usize;
            if let Some(v) = &self.nodes[at].value {
                best = Some(v);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: u16) -> RouteTarget {
        RouteTarget {
            primary: p,
            backup: None,
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let mut r = RoutingTable::empty();
        r.insert("4", t(1)).unwrap();
        r.insert("4761", t(2)).unwrap();
        r.insert("47617390010", t(3)).unwrap();
        r.insert("5", t(4)).unwrap();
        assert_eq!(r.lookup(b"4000000000000002"), Some(t(1)));
        assert_eq!(r.lookup(b"4761000000000000"), Some(t(2)));
        assert_eq!(r.lookup(b"4761739001010010"), Some(t(3)));
        assert_eq!(r.lookup(b"4761739001110010"), Some(t(2)));
        assert_eq!(r.lookup(b"5100000000000000"), Some(t(4)));
        assert_eq!(r.lookup(b"6011000000000000"), None);
        r.set_default(Some(t(9)));
        assert_eq!(r.lookup(b"6011000000000000"), Some(t(9)));
        assert_eq!(r.lookup(b""), Some(t(9)));
    }

    #[test]
    fn bad_and_duplicate_prefixes_are_refused() {
        let mut r = RoutingTable::empty();
        assert!(matches!(r.insert("", t(0)), Err(RouteError::BadPrefix(_))));
        assert!(matches!(
            r.insert("4x", t(0)),
            Err(RouteError::BadPrefix(_))
        ));
        assert!(matches!(
            r.insert("123456789012", t(0)),
            Err(RouteError::BadPrefix(_))
        ));
        r.insert("45", t(0)).unwrap();
        assert_eq!(
            r.insert("45", t(1)),
            Err(RouteError::Duplicate("45".into()))
        );
    }

    #[test]
    fn builds_from_config_with_backups() {
        let cfg = RoutingConfig {
            routes: vec![
                Route {
                    prefix: "4".into(),
                    acquirer: "a".into(),
                    backup: Some("b".into()),
                },
                Route {
                    prefix: "51".into(),
                    acquirer: "b".into(),
                    backup: None,
                },
            ],
            default: None,
        };
        let idx = |n: &str| match n {
            "a" => Some(0),
            "b" => Some(1),
            _ => None,
        };
        let r = RoutingTable::from_config(&cfg, idx).unwrap();
        assert_eq!(
            r.lookup(b"4111111111111111"),
            Some(RouteTarget {
                primary: 0,
                backup: Some(1)
            })
        );
        assert_eq!(r.lookup(b"5100"), Some(t(1)));
        let mut bad = cfg.clone();
        bad.default = Some("c".into());
        assert_eq!(
            RoutingTable::from_config(&bad, idx).unwrap_err(),
            RouteError::UnknownAcquirer("c".into())
        );
    }
}
