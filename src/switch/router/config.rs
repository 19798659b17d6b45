//! The `[routing]` table: card-number prefixes to acquirers, with a backup
//! per route and a default. The acquirer names it may use are given by the
//! whole file's validation (`Config`), which reads `[[acquirers]]` first.

use std::collections::BTreeSet;

use crate::switch::config::{Section, is_digits, table};

#[derive(Clone, Debug)]
pub struct Route {
    /// 1 to 11 PAN digits.
    pub prefix: String,
    pub acquirer: String,
    pub backup: Option<String>,
}

#[derive(Clone, Debug)]
pub struct RoutingConfig {
    pub routes: Vec<Route>,
    /// Acquirer for cards that match no route; `None`: answer 92.
    pub default: Option<String>,
}

table! {
    pub(crate) RoutingFile {
        default: Option<String> = None;
        routes: Vec<RouteFile> = Vec::new();
    }
}

table! {
    RouteFile {
        prefix: Option<String> = None;
        acquirer: Option<String> = None;
        backup: Option<String> = None;
    }
}

impl RoutingFile {
    pub(crate) fn validate(mut self, s: &mut Section, acquirers: &BTreeSet<&str>) -> RoutingConfig {
        self.check_ranges(s);
        let known = |s: &mut Section, key: &str, name: &Option<String>| {
            if let Some(n) = name
                && !acquirers.contains(n.as_str())
            {
                s.problem(key, format!("no acquirer is named `{n}`"));
            }
        };
        known(s, "default", &self.default);
        let mut prefixes = BTreeSet::new();
        let mut routes = Vec::new();
        for (i, mut r) in self.routes.into_iter().enumerate() {
            let s = &mut s.sub(&format!("routes[{i}]"));
            r.check_ranges(s);
            match &r.prefix {
                Some(p) if !is_digits(p, 1, 11) => {
                    s.problem("prefix", format!("`{p}`: a route prefix is 1 to 11 digits"))
                }
                Some(p) if !prefixes.insert(p.clone()) => {
                    s.problem("prefix", format!("`{p}` is routed twice"))
                }
                Some(_) => {}
                None => s.problem("prefix", "required"),
            }
            known(s, "acquirer", &r.acquirer);
            known(s, "backup", &r.backup);
            match (r.prefix, r.acquirer) {
                (Some(prefix), Some(acquirer)) => routes.push(Route {
                    prefix,
                    acquirer,
                    backup: r.backup,
                }),
                (_, None) => s.problem("acquirer", "required"),
                (None, Some(_)) => {}
            }
        }
        RoutingConfig {
            routes,
            default: self.default,
        }
    }
}
