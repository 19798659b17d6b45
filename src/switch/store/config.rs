//! The `[store]` table: where the transaction store lives, how many
//! journal records one SQL transaction takes, and how long rows are kept.

use std::path::PathBuf;
use std::time::Duration;

use crate::switch::config::{Section, table};

/// Which database, parsed from `url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH`: a file, relative to the working directory like
    /// `journal.dir` (`sqlite:///abs/path` for an absolute one).
    Sqlite { path: PathBuf },
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?OPTIONS]` (or
    /// `postgresql://`): a server, shared by several nodes.
    Postgres { url: DbUrl },
}

impl Backend {
    /// `sqlite PATH` or `postgres HOST:PORT/DB`, for logs: never a password.
    pub fn describe(&self) -> String {
        match self {
            Backend::Sqlite { path } => format!("sqlite {}", path.display()),
            Backend::Postgres { url } => format!("postgres {}", url.target()),
        }
    }
}

/// A database url that may carry a password. Its `Debug` and `Display`
/// show it redacted, so a config printed or logged never leaks it; only
/// [`DbUrl::expose`] gives the url itself, to the driver.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    url: String,
    /// Parsed once at config time (a bad url is a config problem).
    target: String,
}

impl DbUrl {
    /// The url as written, password included: for the database driver only.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// `host:port/db` (hosts comma-separated), what logs and errors name.
    pub fn target(&self) -> &str {
        &self.target
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.url))
    }
}

impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.url))
    }
}

/// `url` with the password replaced by `[redacted]`, both the one in the
/// user info (`user:PASSWORD@`) and a `password=` option. The user info is
/// taken up to the last `@` before the path, so a password with an
/// unescaped `@` or `/` is still all hidden. Text without `://` is
/// returned as it is.
pub fn redact_url(url: &str) -> String {
    const REDACTED: &str = "[redacted]";
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let (head, rest) = url.split_at(scheme_end);
    let mut out = String::with_capacity(url.len() + REDACTED.len());
    out.push_str(head);
    // The user info ends at the last `@` before the query: a password may
    // hold `/` or `@`, a host never holds `@`.
    let query_at = rest.find(['?', '#']).unwrap_or(rest.len());
    let after = match rest[..query_at].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..=colon]);
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    match after.find('?') {
        None => out.push_str(after),
        Some(q) => {
            out.push_str(&after[..=q]);
            let options: Vec<String> = after[q + 1..]
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => {
                        format!("{k}={REDACTED}")
                    }
                    _ => kv.to_owned(),
                })
                .collect();
            out.push_str(&options.join("&"));
        }
    }
    out
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Off: no exporter runs and no database is opened.
    pub enabled: bool,
    pub backend: Backend,
    /// This switch's name in the store: rows are keyed on (node id,
    /// transaction id), so several nodes can share one database.
    pub node_id: String,
    /// Journal records folded into one SQL transaction at most.
    pub batch_max: usize,
    /// Rows whose transaction began longer ago than this are deleted.
    pub retention: Duration,
    /// How often the exporter looks at the journal's durable watermark
    /// when it has caught up.
    pub poll_interval: Duration,
}

pub const DEFAULT_URL: &str = "sqlite://data/switchyard.db";

/// The embedded store when `url` is not set: `data/switchyard.db` beside
/// the journal directory (`journal` -> `data/switchyard.db`, as
/// [`DEFAULT_URL`]; `/var/x/journal` -> `/var/x/data/switchyard.db`). The
/// store's export position names records of that journal: a store kept in
/// the working directory while the journal moved or started afresh (as
/// every load-test run with its own journal does) refused the next start.
pub fn default_sqlite_path(journal_dir: &std::path::Path) -> PathBuf {
    journal_dir
        .parent()
        .unwrap_or(std::path::Path::new(""))
        .join("data")
        .join("switchyard.db")
}

table! {
    pub(crate) StoreFile {
        /// On by default: settlement (the report, recon, the acquirer
        /// reconciliation) reads the store, and SQLite needs no server.
        enabled: bool = true;
        /// Unset: [`default_sqlite_path`].
        url: Option<String> = None;
        node_id: String = "node-1".into();
        /// 20,000: at 115k transactions/s a smaller batch makes the
        /// exporter fall behind (each commit rewrites the hot index pages).
        batch_max: usize = 20_000, in 1..=100_000;
        retention_days: u64 = 400, in 1..=36_500;
        /// 100: at 20 ms, a batch of a few hundred rows per commit made the
        /// SQLite exporter cost ~20% more CPU per row (loadtest/store-bench.sh,
        /// docs/BENCHMARKS.md); the lag stays a tenth of a second.
        poll_interval_ms: u64 = 100, in 1..=10_000;
    }
}

/// `url` -> back end, or the problem with it.
pub fn parse_url(url: &str) -> Result<Backend, String> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        if rest.is_empty() {
            return Err(format!("`{url}`: no file after sqlite://"));
        }
        return Ok(Backend::Sqlite {
            path: PathBuf::from(rest),
        });
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return parse_postgres(url);
    }
    // Never echo the whole url: a database url can carry a password.
    let scheme = url.split("://").next().unwrap_or_default();
    Err(format!(
        "unknown scheme `{scheme}`: expected sqlite://PATH or postgres://USER@HOST[:PORT]/DB"
    ))
}

fn parse_postgres(url: &str) -> Result<Backend, String> {
    // The driver's own parser: what it accepts here it connects with later.
    // Its errors name the option at fault, not the url's text.
    let config: postgres::Config = url
        .parse()
        .map_err(|e| format!("`{}`: {e}", redact_url(url)))?;
    if config.get_hosts().is_empty() {
        return Err(format!("`{}`: no host", redact_url(url)));
    }
    let Some(db) = config.get_dbname().filter(|d| !d.is_empty()) else {
        return Err(format!(
            "`{}`: no database name (postgres://USER@HOST/DB)",
            redact_url(url)
        ));
    };
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            // One port for all hosts, one per host, or none (5432).
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    Ok(Backend::Postgres {
        url: DbUrl {
            url: url.to_owned(),
            target: format!("{}/{db}", hosts.join(",")),
        },
    })
}

impl StoreFile {
    pub(crate) fn validate(
        mut self,
        s: &mut Section,
        journal_dir: &std::path::Path,
    ) -> StoreConfig {
        self.check_ranges(s);
        let default = Backend::Sqlite {
            path: default_sqlite_path(journal_dir),
        };
        let backend = match &self.url {
            Some(url) => s.ok("url", parse_url(url), default),
            None => default,
        };
        let id_ok = (1..=32).contains(&self.node_id.len())
            && self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok {
            s.problem(
                "node_id",
                "1 to 32 characters of letters, digits, `.`, `_` and `-`",
            );
        }
        StoreConfig {
            enabled: self.enabled,
            backend,
            node_id: self.node_id,
            batch_max: self.batch_max,
            retention: Duration::from_secs(86_400 * self.retention_days), // in range
            poll_interval: Duration::from_millis(self.poll_interval_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Without a url the store sits beside the journal directory, so a
    /// journal kept elsewhere (or started afresh there) has its own store.
    #[test]
    fn the_default_store_sits_beside_the_journal_directory() {
        use crate::switch::config::Config;
        let base =
            "[[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n[routing]\ndefault = \"a\"\n";
        let shipped = Config::parse(base).expect("valid");
        assert_eq!(
            shipped.store.backend,
            Backend::Sqlite {
                path: PathBuf::from("data/switchyard.db")
            }
        );
        let moved =
            Config::parse(&format!("{base}[journal]\ndir = \"/var/sy/journal\"\n")).expect("valid");
        assert_eq!(
            moved.store.backend,
            Backend::Sqlite {
                path: PathBuf::from("/var/sy/data/switchyard.db")
            }
        );
        let explicit = Config::parse(&format!(
            "{base}[journal]\ndir = \"/var/sy/journal\"\n[store]\nurl = \"sqlite://x/y.db\"\n"
        ))
        .expect("valid");
        assert_eq!(
            explicit.store.backend,
            Backend::Sqlite {
                path: PathBuf::from("x/y.db")
            }
        );
    }

    use std::path::PathBuf;
    use std::time::Duration;

    use super::Backend;
    use crate::switch::config::Config;
    use crate::switch::config::tests::only_problem;

    #[test]
    fn defaults() {
        let c = Config::parse("").expect("valid").store;
        assert!(c.enabled);
        assert_eq!(
            c.backend,
            Backend::Sqlite {
                path: PathBuf::from("data/switchyard.db")
            }
        );
        assert_eq!(c.retention, Duration::from_secs(400 * 86_400));
        assert_eq!(c.node_id, "node-1");
    }

    #[test]
    fn postgres_urls_parse_and_never_show_their_password() {
        let c = Config::parse("[store]\nurl = \"postgres://sw:s3cret@db.example:6543/switchyard\"")
            .expect("valid")
            .store;
        let Backend::Postgres { url } = &c.backend else {
            panic!("{:?}", c.backend)
        };
        assert_eq!(url.target(), "db.example:6543/switchyard");
        assert_eq!(c.backend.describe(), "postgres db.example:6543/switchyard");
        assert_eq!(
            url.expose(),
            "postgres://sw:s3cret@db.example:6543/switchyard"
        );
        for shown in [format!("{url}"), format!("{c:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        assert_eq!(
            url.to_string(),
            "postgres://sw:[redacted]@db.example:6543/switchyard"
        );
        let c = Config::parse("[store]\nurl = \"postgresql://sw@db/s\"")
            .expect("valid")
            .store;
        assert_eq!(c.backend.describe(), "postgres db:5432/s");
        // A local socket, as README shows it.
        let c =
            Config::parse("[store]\nurl = \"postgres://sw@%2Fvar%2Frun%2Fpostgresql/switchyard\"")
                .expect("valid")
                .store;
        assert_eq!(
            c.backend.describe(),
            "postgres /var/run/postgresql:5432/switchyard"
        );

        let p = only_problem("[store]\nurl = \"postgres://u:secret@db\"");
        assert!(p.starts_with("store.url: "), "{p}");
        assert!(p.contains("no database name"), "{p}");
        assert!(!p.contains("secret"), "{p}");
        let p = only_problem("[store]\nurl = \"postgres://u:secret@db:notaport/x\"");
        assert!(p.starts_with("store.url: "), "{p}");
        assert!(!p.contains("secret"), "{p}");
        let p = only_problem("[store]\nurl = \"mysql://u:secret@db/x\"");
        assert!(p.starts_with("store.url: unknown scheme `mysql`"), "{p}");
        assert!(!p.contains("secret"), "{p}");
    }

    #[test]
    fn redact_url_hides_every_password() {
        use super::redact_url;
        for (url, shown) in [
            ("postgres://u:pw@h/db", "postgres://u:[redacted]@h/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h:5432/db", "postgres://h:5432/db"),
            ("postgres://u:p@w/d@h/db", "postgres://u:[redacted]@h/db"),
            (
                "postgres://u@h/db?sslmode=disable&password=pw",
                "postgres://u@h/db?sslmode=disable&password=[redacted]",
            ),
            ("sqlite://data/x.db", "sqlite://data/x.db"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn ranges_and_node_id() {
        let p = only_problem("[store]\nbatch_max = 0");
        assert_eq!(p, "store.batch_max: 0 is out of range (1..=100000)");
        let p = only_problem("[store]\nnode_id = \"a b\"");
        assert!(p.starts_with("store.node_id: "), "{p}");
        let c = Config::parse("[store]\nurl = \"sqlite:///tmp/x.db\"\nretention_days = 1")
            .expect("valid")
            .store;
        assert_eq!(
            c.backend,
            Backend::Sqlite {
                path: PathBuf::from("/tmp/x.db")
            }
        );
        assert_eq!(c.retention, Duration::from_secs(86_400));
    }
}
