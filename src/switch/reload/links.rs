//! The acquirers' links and store-and-forward queues as the config and
//! the operators change them: started at start, then a reload's new links
//! and acquirers started, running links given new timeouts, links no
//! longer in the file retired (drained, signed off), removed acquirers
//! drained; an operator's stop and start of one link.
//!
//! A link keeps running while its address stays in its acquirer's
//! `links` (matched address by address, in order): a reload does not
//! reconnect it. New links are numbered after every link the acquirer
//! had in this run (`acquirer#2` after `#0` and `#1`), so a name always
//! means one link.
//!
//! The state sits behind one mutex, held for moments and never across an
//! await: links are spawned, controls sent to, handles cloned.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::switch::acquirer::link::{self, FieldSet, LinkControl, LinkSettings, Want};
use crate::switch::acquirer::{AcquirerConfig, AcquirerHandle, LinkAdmin, LinkHandle};
use crate::switch::config::Config;
use crate::switch::saf::{self, SafConfig, SafHandle, SafSettings};

/// How long a removed acquirer keeps its links for its store-and-forward
/// queue to empty before they sign off (what is left stays in the
/// journal, and is queued again at the next start if the acquirer is
/// configured in the same place then).
const REMOVED_ACQUIRER_DRAIN: Duration = Duration::from_secs(30);

struct RunningLink {
    addr: SocketAddr,
    handle: LinkHandle,
    control: LinkControl,
}

struct Running {
    config: AcquirerConfig,
    saf: SafHandle,
    /// The links the acquirer's store-and-forward sends through.
    saf_links: watch::Sender<Vec<LinkHandle>>,
    saf_stop: CancellationToken,
    links: Vec<RunningLink>,
    /// The number the next link started gets.
    next_index: usize,
}

impl Running {
    fn handle(&self) -> AcquirerHandle {
        let a = &self.config;
        AcquirerHandle {
            name: a.name.clone(),
            spec: a.spec.spec,
            links: self.links.iter().map(|l| l.handle.clone()).collect(),
            stand_in: a.stand_in.clone(),
            answer_must_match: FieldSet::of(&a.answer_must_match),
            saf: self.saf.clone(),
            security: a.security.clone(),
        }
    }
}

struct State {
    acquirers: Vec<Running>,
    /// Links draining out of the config, until they have signed off.
    retiring: Vec<(String, LinkHandle)>,
    link_tasks: Vec<JoinHandle<()>>,
    saf_tasks: Vec<JoinHandle<()>>,
}

/// Owns every link and store-and-forward task of the switch.
pub struct Supervisor {
    links_stop: CancellationToken,
    saf_stop: CancellationToken,
    journal: crate::switch::journal::Journal,
    business_day: Arc<crate::switch::settlement::BusinessDay>,
    /// `[saf]` (a restart key).
    saf_config: SafConfig,
    state: Mutex<State>,
}

/// What a reload's links come to, before its generation is published.
pub struct Plan {
    /// The acquirers of the new generation, by index.
    pub handles: Vec<AcquirerHandle>,
    /// Links started, by name, with their handles (to wait for them).
    pub started: Vec<(String, LinkHandle)>,
    /// Links no longer in the file: retired once the new generation is
    /// out.
    retire: Vec<RunningLink>,
    /// Acquirers removed from the end: drained, then stopped.
    removed: Vec<Running>,
    pub acquirers_added: Vec<String>,
    pub acquirers_removed: Vec<String>,
}

impl Plan {
    /// The names of the links it retires.
    pub fn retired(&self) -> Vec<String> {
        self.retire
            .iter()
            .chain(self.removed.iter().flat_map(|r| r.links.iter()))
            .map(|l| l.handle.shared.name.clone())
            .collect()
    }
}

/// Why an operator's link action was refused.
#[derive(Debug, thiserror::Error)]
pub enum LinkActionError {
    #[error("no acquirer is named `{0}`")]
    NoAcquirer(String),
    #[error("acquirer `{acquirer}` has no link `{link}` (its links: {known})")]
    NoLink {
        acquirer: String,
        link: String,
        known: String,
    },
}

impl Supervisor {
    /// Starts the links and store-and-forward of every acquirer of
    /// `config`; the handles of generation 1.
    pub fn start(
        config: &Config,
        journal: crate::switch::journal::Journal,
        business_day: Arc<crate::switch::settlement::BusinessDay>,
        links_stop: CancellationToken,
        saf_stop: CancellationToken,
    ) -> (Arc<Supervisor>, Vec<AcquirerHandle>) {
        let s = Supervisor {
            links_stop,
            saf_stop,
            journal,
            business_day,
            saf_config: config.saf.clone(),
            state: Mutex::new(State {
                acquirers: Vec::new(),
                retiring: Vec::new(),
                link_tasks: Vec::new(),
                saf_tasks: Vec::new(),
            }),
        };
        let handles = {
            let mut st = crate::sync::lock(&s.state);
            for (i, a) in config.acquirers.iter().enumerate() {
                let r = s.start_acquirer(&mut st, i, a, &mut Vec::new());
                st.acquirers.push(r);
            }
            st.acquirers.iter().map(Running::handle).collect()
        };
        (Arc::new(s), handles)
    }

    fn spawn_link(
        &self,
        st: &mut State,
        index: usize,
        a: &AcquirerConfig,
        addr: SocketAddr,
        number: usize,
    ) -> RunningLink {
        let mut settings = LinkSettings::for_link(a, number, addr);
        if a.cutover_on_host_0800 {
            settings.settlement = Some((self.business_day.clone(), index as u16));
        }
        let (handle, task, control) =
            link::spawn_controlled(settings, self.links_stop.child_token());
        st.link_tasks.push(task);
        RunningLink {
            addr,
            handle,
            control,
        }
    }

    fn start_acquirer(
        &self,
        st: &mut State,
        index: usize,
        a: &AcquirerConfig,
        started: &mut Vec<(String, LinkHandle)>,
    ) -> Running {
        let links: Vec<RunningLink> = (a.links.iter().enumerate())
            .map(|(n, &addr)| self.spawn_link(st, index, a, addr, n))
            .collect();
        started.extend(
            links
                .iter()
                .map(|l| (l.handle.shared.name.clone(), l.handle.clone())),
        );
        let (saf_links, rx) = watch::channel(links.iter().map(|l| l.handle.clone()).collect());
        let saf_stop = self.saf_stop.child_token();
        let (saf, task) = saf::spawn_watching(
            SafSettings {
                acquirer: a.name.clone(),
                spec: a.spec.spec,
                config: self.saf_config.clone(),
            },
            rx,
            saf::journal_sink(self.journal.clone()),
            saf_stop.clone(),
        );
        st.saf_tasks.push(task);
        Running {
            config: a.clone(),
            saf,
            saf_links,
            saf_stop,
            next_index: links.len(),
            links,
        }
    }

    /// Starts what `new` adds (links, acquirers), gives running links
    /// their new settings, and sets aside what it removes; checked by
    /// `diff` first (acquirers in their places, only reloadable keys of a
    /// running one changed). Nothing is retired until [`Supervisor::commit`].
    pub fn plan(&self, new: &Config) -> Plan {
        let mut st = crate::sync::lock(&self.state);
        let mut plan = Plan {
            handles: Vec::new(),
            started: Vec::new(),
            retire: Vec::new(),
            removed: Vec::new(),
            acquirers_added: Vec::new(),
            acquirers_removed: Vec::new(),
        };
        let running = std::mem::take(&mut st.acquirers);
        let mut kept_acquirers = Vec::new();
        let mut running = running.into_iter();
        for (i, a) in new.acquirers.iter().enumerate() {
            let Some(mut r) = running.next() else {
                info!(acquirer = %a.name, links = a.links.len(), "reload: acquirer added");
                let r = self.start_acquirer(&mut st, i, a, &mut plan.started);
                plan.acquirers_added.push(a.name.clone());
                kept_acquirers.push(r);
                continue;
            };
            // Its links, address by address; the others retire.
            let mut old: Vec<Option<RunningLink>> = r.links.drain(..).map(Some).collect();
            let mut links = Vec::new();
            for &addr in &a.links {
                match old
                    .iter()
                    .position(|l| l.as_ref().is_some_and(|l| l.addr == addr))
                    .and_then(|j| old[j].take())
                {
                    Some(l) => {
                        l.control.update(a.clone());
                        links.push(l);
                    }
                    None => {
                        let l = self.spawn_link(&mut st, i, a, addr, r.next_index);
                        r.next_index += 1;
                        info!(acquirer = %a.name, link = %l.handle.shared.name, %addr, "reload: link added");
                        plan.started
                            .push((l.handle.shared.name.clone(), l.handle.clone()));
                        links.push(l);
                    }
                }
            }
            plan.retire.extend(old.into_iter().flatten());
            r.links = links;
            r.config = a.clone();
            let _ = r
                .saf_links
                .send(r.links.iter().map(|l| l.handle.clone()).collect());
            kept_acquirers.push(r);
        }
        for r in running {
            info!(acquirer = %r.config.name, "reload: acquirer removed; draining");
            plan.acquirers_removed.push(r.config.name.clone());
            plan.removed.push(r);
        }
        st.acquirers = kept_acquirers;
        plan.handles = st.acquirers.iter().map(Running::handle).collect();
        plan
    }

    /// After the generation of `plan` is published: the links it dropped
    /// drain and sign off; removed acquirers first let their
    /// store-and-forward empty (within [`REMOVED_ACQUIRER_DRAIN`]).
    pub fn commit(&self, plan: Plan) {
        let mut st = crate::sync::lock(&self.state);
        st.retiring
            .retain(|(_, h)| h.shared.admin() != LinkAdmin::Retired);
        for l in plan.retire {
            info!(link = %l.handle.shared.name, addr = %l.addr, "reload: link no longer in the config; retiring");
            l.control.set_want(Want::Retire);
            st.retiring
                .push((l.handle.shared.name.clone(), l.handle.clone()));
        }
        for r in plan.removed {
            for l in &r.links {
                st.retiring
                    .push((l.handle.shared.name.clone(), l.handle.clone()));
            }
            let stop = self.links_stop.clone();
            tokio::spawn(drain_removed(r, stop));
        }
    }

    /// An operator's stop (`Want::Stop`) or start (`Want::Run`) of link
    /// `link` (its name, `acquirer#n`, or its number) of `acquirer`:
    /// what the link is asked and what it is doing now.
    pub fn command(
        &self,
        acquirer: &str,
        link: &str,
        want: Want,
    ) -> Result<(String, LinkAdmin), LinkActionError> {
        let st = crate::sync::lock(&self.state);
        let Some(r) = st.acquirers.iter().find(|r| r.config.name == acquirer) else {
            return Err(LinkActionError::NoAcquirer(acquirer.to_owned()));
        };
        let full = if link.contains('#') {
            link.to_owned()
        } else {
            format!("{acquirer}#{link}")
        };
        let Some(l) = r.links.iter().find(|l| l.handle.shared.name == full) else {
            return Err(LinkActionError::NoLink {
                acquirer: acquirer.to_owned(),
                link: link.to_owned(),
                known: r
                    .links
                    .iter()
                    .map(|l| l.handle.shared.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let before = l.handle.shared.admin();
        l.control.set_want(want);
        Ok((full, before))
    }

    /// Links draining out of the config, as they stand.
    pub fn retiring(&self) -> Vec<LinkHandle> {
        let mut st = crate::sync::lock(&self.state);
        st.retiring
            .retain(|(_, h)| h.shared.admin() != LinkAdmin::Retired);
        st.retiring.iter().map(|(_, h)| h.clone()).collect()
    }

    /// Every store-and-forward task and every link task started in this
    /// run, for the shutdown to wait for (in that order).
    pub fn take_tasks(&self) -> (Vec<JoinHandle<()>>, Vec<JoinHandle<()>>) {
        let mut st = crate::sync::lock(&self.state);
        (
            std::mem::take(&mut st.saf_tasks),
            std::mem::take(&mut st.link_tasks),
        )
    }
}

/// A removed acquirer: its store-and-forward keeps sending through its
/// links until empty (or the drain's end), then the links retire and the
/// queue stops.
async fn drain_removed(r: Running, stop: CancellationToken) {
    let name = r.config.name.clone();
    let deadline = tokio::time::Instant::now() + REMOVED_ACQUIRER_DRAIN;
    while r.saf.depth() > 0 && tokio::time::Instant::now() < deadline && !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = r.saf.depth();
    if left > 0 {
        warn!(acquirer = %name, left,
            "removed acquirer: store-and-forward not empty at the end of its drain; what is left \
             stays in the journal (queued again at a start with the acquirer in the same place)");
    }
    for l in &r.links {
        l.control.set_want(Want::Retire);
    }
    // The links sign off in their own time; the queue stops now.
    r.saf_stop.cancel();
    info!(acquirer = %name, "removed acquirer: links retiring, store-and-forward stopped");
}
