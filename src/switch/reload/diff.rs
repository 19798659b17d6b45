//! What a reload changes: the keys two config files set differently
//! (compared by fingerprint, `config::Fingerprints`, so a secret's value
//! is never looked at twice nor shown), and which of them a running
//! switch can take.
//!
//! A reload changes routes, fraud rules (but for the velocity windows
//! themselves: `fraud.velocity[].window_s` and how many there are), the
//! terminals allowed and their
//! countries, terminal timeouts and connection limits, the switch-wide
//! limits, the blocks' response code, and the acquirers: new ones (after
//! the last), removed ones (from the end), and of a running one its
//! links, stand-in, request, connect and echo timeouts. Every other key
//! needs a restart, and a reload that changes one is refused naming it:
//! the listen addresses, the runtime, the journal, the store, the keys
//! (`fraud.pan_key`, `[security]`), TLS, the admin endpoint and its
//! operators' files, analytics, settlement, store-and-forward, and the
//! connection-level keys of a running acquirer (spec, framing, TLS,
//! sign-on, backoff, what answers must match...).
//!
//! An acquirer keeps its place in `[[acquirers]]`: the journal names
//! acquirers by it (and recovery after a restart reads it so), so a reload
//! that puts another acquirer in a running one's place is refused.

use crate::switch::config::{Config, Problem};

/// Keys (and tables) a reload changes, wherever they lie under one of
/// these paths.
const RELOADABLE: &[&str] = &[
    "routing",
    "fraud",
    "terminals.allowed_terminals",
    "terminals.countries",
    "terminals.idle_timeout_ms",
    "terminals.frame_timeout_ms",
    "terminals.write_stall_timeout_ms",
    "terminals.max_connections",
    "terminals.max_connections_per_ip",
    "terminals.max_write_buffer",
    "limits.max_in_flight",
    "limits.shutdown_grace_ms",
    "blocks.response_code",
];

/// Under a reloadable table, keys that still need a restart.
const RESTART_ANYWAY: &[&str] = &["fraud.pan_key", "fraud.max_tracked_cards"];

/// A velocity window's length, or the list of windows (each has one):
/// the cards' history is bucketed by the windows the switch started
/// with, in their order, so other windows would read it wrongly. Their
/// thresholds and points reload.
fn velocity_window(path: &str) -> bool {
    path.strip_prefix("fraud.velocity[")
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(i, key)| i.parse::<usize>().is_ok() && key == ".window_s")
}

/// Keys of a running acquirer a reload changes.
const ACQUIRER_RELOADABLE: &[&str] = &[
    "links",
    "stand_in",
    "request_timeout_ms",
    "connect_timeout_ms",
    "echo_interval_ms",
    "echo_timeout_ms",
    "max_missed_echoes",
];

/// `path` is `prefix` or lies under it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// `acquirers[i]` and what follows it (`.links[0]`), for a path under an
/// acquirer.
fn acquirer_of(path: &str) -> Option<(usize, &str)> {
    let rest = path.strip_prefix("acquirers[")?;
    let (i, rest) = rest.split_once(']')?;
    Some((i.parse().ok()?, rest.strip_prefix('.').unwrap_or(rest)))
}

/// The first key of `rest` (`links[0]` -> `links`, `stand_in.enabled` ->
/// `stand_in`).
fn first_key(rest: &str) -> &str {
    let end = rest.find(['.', '[']).unwrap_or(rest.len());
    &rest[..end]
}

/// What changed between the running config and a new one.
#[derive(Debug, Default)]
pub struct Diff {
    /// Every leaf key set differently, in order.
    pub changed: Vec<String>,
    /// The changes a reload can not make, each with why.
    pub restart: Vec<Problem>,
}

impl Diff {
    /// `changed` collapsed to what an operator reads: a table's key
    /// (`routing.routes`, `fraud.velocity`), an acquirer's key
    /// (`acquirers[0].links`), or a whole acquirer added or removed
    /// (`acquirers[2]`). Never a value.
    pub fn summary(&self, old: &Config, new: &Config) -> Vec<String> {
        let (old_n, new_n) = (old.acquirers.len(), new.acquirers.len());
        let mut out: Vec<String> = Vec::new();
        for p in &self.changed {
            let key = match acquirer_of(p) {
                Some((i, _)) if i >= old_n || i >= new_n => format!("acquirers[{i}]"),
                Some((i, rest)) => format!("acquirers[{i}].{}", first_key(rest)),
                None => {
                    let mut segs = p.splitn(3, '.');
                    let a = first_key(segs.next().unwrap_or(""));
                    match segs.next() {
                        Some(b) => format!("{a}.{}", first_key(b)),
                        None => a.to_owned(),
                    }
                }
            };
            if !out.contains(&key) {
                out.push(key);
            }
        }
        out
    }
}

/// Compares the running config with a new one (both checked).
pub fn compare(old: &Config, new: &Config) -> Diff {
    let changed = old.fingerprints.changed(&new.fingerprints);
    let (old_n, new_n) = (old.acquirers.len(), new.acquirers.len());
    let mut restart: Vec<Problem> = Vec::new();
    let mut refuse = |path: String, message: String| {
        if !restart.iter().any(|p| p.path == path) {
            restart.push(Problem { path, message });
        }
    };
    for (i, (o, n)) in old.acquirers.iter().zip(&new.acquirers).enumerate() {
        if o.name != n.name {
            refuse(
                format!("acquirers[{i}].name"),
                format!(
                    "`{}` runs in this place; a reload keeps every running acquirer in its place \
                     (the journal names acquirers by it): add new acquirers after the last, \
                     remove them from the end, or restart",
                    o.name
                ),
            );
        }
    }
    for p in &changed {
        if let Some((i, rest)) = acquirer_of(p) {
            // Added or removed as a whole; a running one keeps some keys.
            if i < old_n && i < new_n {
                let key = first_key(rest);
                if key != "name" && !ACQUIRER_RELOADABLE.contains(&key) {
                    refuse(
                        format!("acquirers[{i}].{key}"),
                        format!(
                            "needs a restart (of a running acquirer a reload changes {} only)",
                            ACQUIRER_RELOADABLE.join(", ")
                        ),
                    );
                }
            }
            continue;
        }
        if velocity_window(p) {
            refuse(
                "fraud.velocity".to_owned(),
                "its windows (window_s, and how many) need a restart: the cards' history is \
                 bucketed by them; max_count, max_amount and points reload"
                    .to_owned(),
            );
            continue;
        }
        let reloadable =
            RELOADABLE.iter().any(|r| under(p, r)) && !RESTART_ANYWAY.iter().any(|r| under(p, r));
        if !reloadable {
            // Named by its key, not by each element of a list under it.
            let key = match p.find('[') {
                Some(at) => p[..at].to_owned(),
                None => p.clone(),
            };
            refuse(key, "needs a restart".to_owned());
        }
    }
    Diff { changed, restart }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(terminals: &str, acquirers: &str, extra: &str) -> Config {
        Config::parse(&format!(
            "[terminals]\nlisten = \"127.0.0.1:8583\"\n{terminals}\n{acquirers}\n\
             [routing]\ndefault = \"a\"\n[fraud]\npan_key = \"000102030405060708090a0b0c0d0e0f\"\n{extra}"
        ))
        .unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn config(extra: &str, acquirers: &str) -> Config {
        config_with("", acquirers, extra)
    }

    const A: &str = "[[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n";
    const AB: &str = "[[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n\
                      [[acquirers]]\nname = \"b\"\nlinks = [\"127.0.0.1:2\"]\n";

    fn restart_paths(d: &Diff) -> Vec<&str> {
        d.restart.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let d = compare(&config("", A), &config("", A));
        assert!(d.changed.is_empty() && d.restart.is_empty(), "{d:?}");
    }

    #[test]
    fn routes_rules_terminals_limits_and_acquirer_links_reload() {
        let old = config("", A);
        let new = config_with(
            "allowed_terminals = [\"T1\"]\nidle_timeout_ms = 5000\n",
            "[[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:3\", \"127.0.0.1:4\"]\n\
             request_timeout_ms = 500\n[acquirers.stand_in]\nenabled = true\n\
             [[acquirers]]\nname = \"b\"\nlinks = [\"127.0.0.1:2\"]\nframing = \"ascii4\"\n",
            "[[routing.routes]]\nprefix = \"4\"\nacquirer = \"b\"\n\
             [fraud.card_testing]\nmax_small = 2\n\
             [limits]\nmax_in_flight = 10\n[blocks]\nresponse_code = \"05\"\n",
        );
        let d = compare(&old, &new);
        assert!(d.restart.is_empty(), "{:?}", d.restart);
        let s = d.summary(&old, &new);
        for key in [
            "routing.routes",
            "fraud.card_testing",
            "limits.max_in_flight",
            "blocks.response_code",
            "terminals.allowed_terminals",
            "terminals.idle_timeout_ms",
            "acquirers[0].links",
            "acquirers[0].request_timeout_ms",
            "acquirers[0].stand_in",
            "acquirers[1]",
        ] {
            assert!(s.contains(&key.to_owned()), "{key} not in {s:?}");
        }
    }

    #[test]
    fn restart_only_keys_are_refused_by_name() {
        let old = config("", A);
        let new = config(
            "[journal]\ndir = \"elsewhere\"\n[runtime]\nflavor = \"multi-thread\"\n\
             [store]\nurl = \"sqlite://other.db\"\n[admin]\nlisten = \"127.0.0.1:9999\"\n",
            &A.replace("127.0.0.1:1\"]", "127.0.0.1:1\"]\nframing = \"ascii4\""),
        );
        let d = compare(&old, &new);
        let paths = restart_paths(&d);
        for key in [
            "journal.dir",
            "runtime.flavor",
            "store.url",
            "admin.listen",
            "acquirers[0].framing",
        ] {
            assert!(paths.contains(&key), "{key} not in {paths:?}");
        }
        let other_key = Config::parse(
            "[terminals]\nlisten = \"127.0.0.1:8584\"\n\
             [[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n\
             [routing]\ndefault = \"a\"\n[fraud]\npan_key = \"0f0102030405060708090a0b0c0d0e0f\"\n",
        )
        .expect("valid");
        let d = compare(&old, &other_key);
        let paths = restart_paths(&d);
        assert_eq!(paths, ["fraud.pan_key", "terminals.listen"], "{d:?}");
        // Never a value, secret or not.
        let text = format!("{:?}", d.restart);
        assert!(!text.contains("0f0102") && !text.contains("8584"), "{text}");
    }

    #[test]
    fn velocity_thresholds_reload_and_their_windows_do_not() {
        let w = |window: u64, count: u32| {
            format!("[[fraud.velocity]]\nwindow_s = {window}\nmax_count = {count}\n")
        };
        let old = config(&w(60, 5), A);
        assert!(compare(&old, &config(&w(60, 3), A)).restart.is_empty());
        for new in [
            w(600, 5),
            format!("{}{}", w(60, 5), w(3600, 9)),
            String::new(),
        ] {
            let d = compare(&old, &config(&new, A));
            assert_eq!(restart_paths(&d), ["fraud.velocity"], "{new}");
        }
    }

    #[test]
    fn acquirers_keep_their_places() {
        let ab = config("", AB);
        // Appended: fine; removed from the end: fine.
        assert!(compare(&config("", A), &ab).restart.is_empty());
        assert!(compare(&ab, &config("", A)).restart.is_empty());
        // Swapped: refused.
        let ba = config(
            "",
            "[[acquirers]]\nname = \"b\"\nlinks = [\"127.0.0.1:2\"]\n\
             [[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n",
        );
        let d = compare(&ab, &ba);
        assert_eq!(
            restart_paths(&d),
            ["acquirers[0].name", "acquirers[1].name"]
        );
        assert!(
            d.restart[0]
                .message
                .contains("keeps every running acquirer in its place")
        );
    }
}
