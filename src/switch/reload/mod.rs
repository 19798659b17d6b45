//! Run-time changes as generations: the config reloaded (SIGHUP, `POST
//! /api/actions/reload`), an operator's blocks, and the links under both.
//!
//! What terminals read is one `server::Shared`, a generation: a reload
//! reads the file and checks it exactly as `check-config` does
//! (`Config::load`), compares it with the running one (`diff`: a key that
//! needs a restart refuses the reload with its name), starts what it adds
//! (`links`: new links and acquirers, waiting a moment for them to sign
//! on), builds the next generation and publishes it at once. A holder of
//! the old one sees it is behind with one atomic load; a request keeps the
//! generation it started with until its outcome, and the links the new one
//! dropped drain before they sign off. A file that does not read or check
//! is refused with its problems by key, and the running generation stays.
//!
//! One change at a time (an async mutex): reloads and block changes are
//! made in turn, each from the generation the one before published.
//!
//! Metrics: `switchyard_config_generation`, `switchyard_config_reloads_total{result}`.

pub mod diff;
pub mod links;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tracing::{info, warn};

use crate::switch::blocks::{BlockError, BlockStore, Blocked, Entry, Target};
use crate::switch::config::{Config, ConfigError, Problem};
use crate::switch::server::Shared;
use crate::telemetry;

pub use links::{LinkActionError, Supervisor};

/// How long a reload waits for the links it starts to sign on before it
/// publishes its generation (a route to a new acquirer then finds it up).
/// The reload goes ahead without them after it: the down-link rules hold.
pub const NEW_LINKS_WAIT: Duration = Duration::from_secs(2);

/// What asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `POST /api/actions/reload`.
    Api,
    /// SIGHUP.
    Signal,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Signal => "sighup",
        }
    }
}

/// A reload done (or found nothing to do).
#[derive(Clone, Debug, Serialize)]
pub struct Reloaded {
    /// `ok`, or `unchanged` (the file says what runs: no new generation).
    pub result: &'static str,
    pub generation: u64,
    pub previous: u64,
    /// What changed, by key (never a value).
    pub changed: Vec<String>,
    pub acquirers_added: Vec<String>,
    pub acquirers_removed: Vec<String>,
    /// Links started, and whether each was up when the generation was
    /// published.
    pub links_started: Vec<LinkStarted>,
    /// Links no longer in the file: draining, then signing off.
    pub links_retired: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LinkStarted {
    pub name: String,
    pub up: bool,
}

/// Why a reload was refused; the running generation stays.
#[derive(Debug)]
pub enum Refusal {
    /// The switch was started from config text, not a file.
    NoFile,
    /// The file does not read or does not check: every problem, by key.
    Invalid(ConfigError),
    /// Keys a running switch can not change.
    RestartRequired(Vec<Problem>),
    /// Checked, but could not be put in force (not expected: the checks
    /// come first).
    Failed(String),
}

impl Refusal {
    /// The result label (`switchyard_config_reloads_total{result}`).
    pub fn result(&self) -> &'static str {
        match self {
            Refusal::NoFile | Refusal::Failed(_) => "failed",
            Refusal::Invalid(_) => "invalid",
            Refusal::RestartRequired(_) => "restart_required",
        }
    }

    /// The problems by key, with nothing secret in them: a problem under
    /// a secret key says so without its text (which may quote the
    /// value), and any url has its password replaced.
    pub fn problems(&self) -> Vec<Problem> {
        let list = match self {
            Refusal::Invalid(e) => e.problems.clone(),
            Refusal::RestartRequired(p) => p.clone(),
            Refusal::NoFile | Refusal::Failed(_) => Vec::new(),
        };
        list.into_iter().map(safe_problem).collect()
    }

    /// One line for logs, answers and the audit trail.
    pub fn message(&self) -> String {
        let keys = |ps: &[Problem]| {
            ps.iter()
                .map(|p| p.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Refusal::NoFile => {
                "the switch was started from config text, not a file: nothing to read again".into()
            }
            Refusal::Invalid(e) => {
                let ps = self.problems();
                let first = ps.first().map(ToString::to_string).unwrap_or_default();
                format!(
                    "{}: {} problem(s), the running config is unchanged: {first}{}",
                    e.file.display(),
                    ps.len(),
                    if ps.len() > 1 {
                        format!(" (and {})", keys(&ps[1..]))
                    } else {
                        String::new()
                    }
                )
            }
            Refusal::RestartRequired(p) => format!(
                "needs a restart, the running config is unchanged: {}",
                keys(p)
            ),
            Refusal::Failed(why) => format!("failed, the running config is unchanged: {why}"),
        }
    }
}

/// `p` with nothing secret in its message.
fn safe_problem(p: Problem) -> Problem {
    let key = p
        .path
        .rsplit(['.', '['])
        .next()
        .unwrap_or("")
        .trim_end_matches(']');
    let message = if crate::switch::admin::is_secret(key) {
        "is not valid (a secret: its value is not shown)".to_owned()
    } else {
        redact_urls(&p.message)
    };
    Problem {
        path: p.path,
        message,
    }
}

/// Every `scheme://...` word in `text` with its password replaced.
fn redact_urls(text: &str) -> String {
    if !text.contains("://") {
        return text.to_owned();
    }
    text.split(' ')
        .map(|w| {
            if w.contains("://") {
                let core = w.trim_matches(|c: char| c == '`' || c == '"' || c == ',' || c == ':');
                w.replace(core, &crate::switch::store::redact_url(core))
            } else {
                w.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The generations and what changes them.
pub struct Control {
    /// The file a reload reads.
    path: Option<PathBuf>,
    /// One change at a time.
    turn: tokio::sync::Mutex<()>,
    /// The newest generation (its one strong holder besides the
    /// connections that use it).
    current: ArcSwap<Shared>,
    supervisor: Arc<Supervisor>,
    blocks: Arc<Mutex<BlockStore>>,
    /// What the store holds, as last written: `/api/blocks` reads this,
    /// never the store's lock (held across a write and its fsync).
    block_entries: ArcSwap<Vec<Entry>>,
    block_limit: usize,
    generation_gauge: metrics::Gauge,
    /// The store exporter's acquirer names, when there is a store: a
    /// reload adds the names of acquirers it adds (those it removes stay:
    /// their records may still be exported).
    store_names: Option<Arc<ArcSwap<Vec<String>>>>,
}

impl Control {
    /// Over generation 1 (`shared`), which it publishes; `path`, the
    /// config file.
    pub fn new(
        shared: Arc<Shared>,
        path: Option<PathBuf>,
        supervisor: Arc<Supervisor>,
        blocks: BlockStore,
    ) -> Control {
        Shared::publish(&shared);
        let gauge = metrics::gauge!(telemetry::CONFIG_GENERATION);
        gauge.set(shared.generation as f64);
        // Every result at 0 from the start, so a rate over them works.
        for r in ["ok", "unchanged", "invalid", "restart_required", "failed"] {
            metrics::counter!(telemetry::CONFIG_RELOADS, "result" => r).absolute(0);
        }
        Control {
            path,
            turn: tokio::sync::Mutex::new(()),
            current: ArcSwap::new(shared),
            supervisor,
            block_entries: ArcSwap::from_pointee(blocks.entries().to_vec()),
            block_limit: blocks.max_entries(),
            blocks: Arc::new(Mutex::new(blocks)),
            generation_gauge: gauge,
            store_names: None,
        }
    }

    /// With the store exporter's acquirer names, which reloads extend.
    pub fn with_store_names(mut self, names: Option<Arc<ArcSwap<Vec<String>>>>) -> Control {
        self.store_names = names;
        self
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Shared> {
        self.current.load_full()
    }

    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.supervisor
    }

    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    fn publish(&self, next: Arc<Shared>) {
        self.current.store(next.clone());
        Shared::publish(&next);
        self.generation_gauge.set(next.generation as f64);
    }

    fn count(result: &'static str) {
        metrics::counter!(telemetry::CONFIG_RELOADS, "result" => result).increment(1);
    }

    /// Reads the config file again and, if it checks and changes only
    /// what a reload may, puts it in force as the next generation.
    pub async fn reload(&self, source: Source) -> Result<Reloaded, Refusal> {
        let result = self.reload_in_turn(source).await;
        match &result {
            Ok(r) => {
                Control::count(r.result);
                info!(
                    source = source.name(),
                    "config reload: {} (generation {}{})",
                    r.result,
                    r.generation,
                    if r.changed.is_empty() {
                        String::new()
                    } else {
                        format!("; changed: {}", r.changed.join(", "))
                    }
                );
            }
            Err(refusal) => {
                Control::count(refusal.result());
                warn!(
                    source = source.name(),
                    "config reload refused: {}",
                    refusal.message()
                );
            }
        }
        result
    }

    async fn reload_in_turn(&self, source: Source) -> Result<Reloaded, Refusal> {
        let _turn = self.turn.lock().await;
        let Some(path) = self.path.clone() else {
            return Err(Refusal::NoFile);
        };
        // The file's checks read files (TLS material, the key store).
        let mut new = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| Refusal::Failed(format!("the reload task: {e}")))?
            .map_err(Refusal::Invalid)?;
        let current = self.current();
        let d = diff::compare(&current.config, &new);
        if !d.restart.is_empty() {
            return Err(Refusal::RestartRequired(d.restart));
        }
        let changed = d.summary(&current.config, &new);
        // `[security]` is a restart key, so the running one stands: the
        // keys the check just unwrapped again are not kept twice.
        new.security = current.config.security.clone();
        if changed.is_empty() {
            return Ok(Reloaded {
                result: "unchanged",
                generation: current.generation,
                previous: current.generation,
                changed,
                acquirers_added: Vec::new(),
                acquirers_removed: Vec::new(),
                links_started: Vec::new(),
                links_retired: Vec::new(),
            });
        }
        // The routes of the new file name its acquirers (checked), so
        // this holds; checked before any link is started all the same.
        Shared::check_config(&new).map_err(|e| Refusal::Failed(e.to_string()))?;
        let plan = self.supervisor.plan(&new);
        wait_up(&plan.started, NEW_LINKS_WAIT).await;
        let links_started = plan
            .started
            .iter()
            .map(|(name, h)| LinkStarted {
                name: name.clone(),
                up: h.is_up(),
            })
            .collect();
        let blocks = if new.blocks.response_code == current.blocks.response_code {
            current.blocks.clone()
        } else {
            Arc::new(crate::sync::lock(&self.blocks).list(new.blocks.response_code))
        };
        if let Some(names) = &self.store_names {
            // The file's names in their places; past its end, the names of
            // acquirers removed, whose records may still be exported.
            let mut v = (**names.load()).clone();
            for (i, a) in new.acquirers.iter().enumerate() {
                match v.get_mut(i) {
                    Some(n) => n.clone_from(&a.name),
                    None => v.push(a.name.clone()),
                }
            }
            names.store(Arc::new(v));
        }
        let generation = current.generation + 1;
        let next = current
            .next_generation(
                Arc::new(new),
                plan.handles.clone(),
                blocks,
                generation,
                source.name(),
            )
            .map_err(|e| Refusal::Failed(e.to_string()))?;
        self.publish(Arc::new(next));
        let reloaded = Reloaded {
            result: "ok",
            generation,
            previous: current.generation,
            changed,
            acquirers_added: plan.acquirers_added.clone(),
            acquirers_removed: plan.acquirers_removed.clone(),
            links_started,
            links_retired: plan.retired(),
        };
        self.supervisor.commit(plan);
        Ok(reloaded)
    }

    /// Blocks a card or BIN: written to the block list's file, then in
    /// force as the next generation (the same config generation).
    /// `Ok(false)` when it was blocked already.
    pub async fn block(&self, what: Blocked, by: Option<String>) -> Result<bool, BlockError> {
        let _turn = self.turn.lock().await;
        let store = self.blocks.clone();
        let at = crate::clock::unix_now();
        let added = tokio::task::spawn_blocking(move || {
            crate::sync::lock(&store).add(what, by.as_deref(), at)
        })
        .await
        .map_err(|e| BlockError::Write(e.to_string()))??;
        if added {
            self.publish_blocks();
        }
        Ok(added)
    }

    /// Removes a block, from the file first.
    pub async fn unblock(&self, what: Blocked) -> Result<Entry, BlockError> {
        let _turn = self.turn.lock().await;
        let store = self.blocks.clone();
        let removed = tokio::task::spawn_blocking(move || crate::sync::lock(&store).remove(&what))
            .await
            .map_err(|e| BlockError::Write(e.to_string()))??;
        self.publish_blocks();
        Ok(removed)
    }

    /// The block list as the store holds it, in force as the next
    /// generation of the running config.
    fn publish_blocks(&self) {
        let current = self.current();
        let (list, entries) = {
            let s = crate::sync::lock(&self.blocks);
            (s.list(current.blocks.response_code), s.entries().to_vec())
        };
        self.block_entries.store(Arc::new(entries));
        match current.next_generation(
            current.config.clone(),
            current.acquirers.clone(),
            Arc::new(list),
            current.generation,
            current.loaded_by,
        ) {
            Ok(next) => self.publish(Arc::new(next)),
            // The running config's routes: they built before.
            Err(e) => warn!("block list not put in force: {e}"),
        }
    }

    /// The blocks, as kept (keyed hashes and BINs only).
    pub fn blocks(&self) -> (Arc<Vec<Entry>>, usize) {
        (self.block_entries.load_full(), self.block_limit)
    }

    /// What a block of `target` is: its keyed hash under the switch's
    /// card-hash key, or its BIN.
    pub fn blocked_of(&self, target: &Target<'_>) -> Blocked {
        BlockStore::blocked_of(target, &self.current().rest_key)
    }
}

/// Waits until every link of `links` is up, `within` at most.
async fn wait_up(links: &[(String, crate::switch::acquirer::LinkHandle)], within: Duration) {
    let all = async {
        for (_, l) in links {
            l.shared.wait_for(true).await;
        }
    };
    let _ = tokio::time::timeout(within, all).await;
}
