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

table! {
    pub(crate) StoreFile {
        /// Off by default in this first step: nothing reads the store yet,
        /// and every test config would otherwise share `data/`.
        enabled: bool = false;
        url: String = DEFAULT_URL.into();
        node_id: String = "node-1".into();
        /// 20,000: at 115k transactions/s a smaller batch makes the
        /// exporter fall behind (each commit rewrites the hot index pages).
        batch_max: usize = 20_000, in 1..=100_000;
        retention_days: u64 = 400, in 1..=36_500;
        poll_interval_ms: u64 = 20, in 1..=10_000;
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
        return Err(
            "PostgreSQL is not yet supported (it is planned, over tokio-postgres); use \
             sqlite://PATH for now"
                .into(),
        );
    }
    // Never echo the whole url: a database url can carry a password.
    let scheme = url.split("://").next().unwrap_or_default();
    Err(format!(
        "unknown scheme `{scheme}`: expected sqlite://PATH (postgres:// later)"
    ))
}

impl StoreFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> StoreConfig {
        self.check_ranges(s);
        let backend = s.ok(
            "url",
            parse_url(&self.url),
            Backend::Sqlite {
                path: PathBuf::from("data/switchyard.db"),
            },
        );
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
    use std::path::PathBuf;
    use std::time::Duration;

    use super::Backend;
    use crate::switch::config::Config;
    use crate::switch::config::tests::only_problem;

    #[test]
    fn defaults() {
        let c = Config::parse("").expect("valid").store;
        assert!(!c.enabled);
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
    fn postgres_is_a_clear_problem_for_now() {
        let p = only_problem("[store]\nurl = \"postgres://u:secret@db/switchyard\"");
        assert!(
            p.starts_with("store.url: PostgreSQL is not yet supported"),
            "{p}"
        );
        assert!(!p.contains("secret"), "{p}");
        let p = only_problem("[store]\nurl = \"mysql://u:secret@db/x\"");
        assert!(p.starts_with("store.url: unknown scheme `mysql`"), "{p}");
        assert!(!p.contains("secret"), "{p}");
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
