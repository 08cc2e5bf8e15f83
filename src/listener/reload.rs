//! Applying a reloaded config to the running listeners: only the difference.
//!
//! A listener whose definition did not change keeps running untouched (its watches
//! never close). A changed one is replaced: the new watches are set up *before* the
//! old listener stops; stopping, the old one flushes what its watcher still held and
//! hands the files it had not finished to the new one, so no change is lost in between (a `catch_up` listener instead stops
//! first, and its saved snapshot covers the gap). Removed listeners stop; added ones
//! start if `autostart`.

use super::{FileEvent, ListenerError, Listeners, Slot, State};
use crate::config::Config;
use crate::events::{EventKind, EventSet};
use crate::protocol::replies::Applied;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{error, info, warn};

/// What a reload is starting, for `stop`: a listener the reload adds or changes
/// starts while the reload holds the lock every stop waits for, and its start may be
/// stuck on a hung file system. A stop of it abandons that start instead of waiting.
#[derive(Default)]
pub(super) struct Reloading {
    /// The new slots the reload is starting, not in the registry yet.
    slots: Vec<Arc<Slot>>,
    /// The listeners stops are waiting to stop, with how many stops each: a slot the
    /// reload makes for one of them is abandoned as its start begins.
    stops: HashMap<String, usize>,
}

/// A stop waiting to stop a listener: registered in [`Reloading::stops`] until dropped.
pub(super) struct Stopping<'a> {
    listeners: &'a Listeners,
    name: String,
    /// Whether a reload is starting a slot for it.
    pub(super) reloading: bool,
    /// Whether such a start was under way (and is abandoned).
    pub(super) abandoned: bool,
}

impl Drop for Stopping<'_> {
    fn drop(&mut self) {
        let mut reloading = self.listeners.reloading.lock().expect("reloading lock");
        if let Some(count) = reloading.stops.get_mut(&self.name) {
            *count -= 1;
            if *count == 0 {
                reloading.stops.remove(&self.name);
            }
        }
    }
}

/// Ends a reload's [`Reloading::slots`], however `apply` ends.
struct Reloaded<'a>(&'a Listeners);

impl Drop for Reloaded<'_> {
    fn drop(&mut self) {
        let mut reloading = self.0.reloading.lock().expect("reloading lock");
        for slot in reloading.slots.drain(..) {
            slot.reloaded();
        }
    }
}

impl Listeners {
    /// Registers a stop of listener `name` (until the result is dropped) and abandons
    /// the start of any slot a reload is starting for it.
    pub(super) fn stopping(&self, name: &str) -> Stopping<'_> {
        let mut reloading = self.reloading.lock().expect("reloading lock");
        *reloading.stops.entry(name.to_owned()).or_default() += 1;
        let mut stopping = Stopping {
            listeners: self,
            name: name.to_owned(),
            reloading: false,
            abandoned: false,
        };
        for slot in reloading.slots.iter().filter(|s| s.config.name == name) {
            stopping.reloading = true;
            stopping.abandoned |= slot.stop_early();
        }
        stopping
    }

    /// `slot`, known as one this reload starts until it is done; a stop already
    /// waiting for its listener keeps it from starting.
    fn reloading(&self, slot: Slot) -> Arc<Slot> {
        let slot = Arc::new(slot);
        let mut reloading = self.reloading.lock().expect("reloading lock");
        if reloading.stops.contains_key(&slot.config.name) {
            slot.stop_early();
        }
        reloading.slots.push(slot.clone());
        slot
    }

    /// Brings the listeners in line with `config`. Fails only when the daemon is
    /// shutting down; a listener that cannot start is left `failed` and logged.
    pub async fn apply(&self, config: &Config) -> Result<Applied, ListenerError> {
        let _changing = self.changing.lock().await;
        if self.closing.is_cancelled() {
            return Err(ListenerError::Closing);
        }
        let reloaded = Reloaded(self);
        let old = self.slots();
        let mut applied = Applied::default();
        let mut next = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let name = l.name.clone();
            let slot = match old.iter().find(|s| s.config.name == l.name) {
                Some(slot) if *slot.config == *l => {
                    applied.unchanged.push(name);
                    slot.clone()
                }
                Some(slot) => {
                    applied.changed.push(name);
                    slot.retire();
                    let new = self.reloading(Slot::new(l));
                    self.replace(slot, new).await
                }
                None => {
                    applied.added.push(name);
                    let slot = self.reloading(Slot::new(l));
                    if l.autostart {
                        self.start_logged(&slot).await;
                    }
                    slot
                }
            };
            next.push(slot);
        }
        drop(reloaded);
        for slot in old
            .iter()
            .filter(|s| !config.listeners.iter().any(|l| l.name == s.config.name))
        {
            applied.removed.push(slot.config.name.clone());
            slot.retire();
            slot.stop().await;
        }
        *self.slots.write().expect("slots lock") = next;
        Ok(applied)
    }

    /// `new`, the slot for a changed listener, running if the old one was up (or had
    /// failed and the listener is `autostart`).
    async fn replace(&self, old: &Arc<Slot>, new: Arc<Slot>) -> Arc<Slot> {
        let config = &*new.config.clone();
        let failed = old.shared.get().0 == State::Failed;
        if !(old.is_up() || failed && config.autostart) {
            old.stop().await;
            return new;
        }
        info!(listener = %config.name, "definition changed: replacing the listener");
        if config.catch_up {
            old.stop().await;
            self.start_logged(&new).await;
            return new;
        }
        let mut running = new.running.lock().await;
        let prepared = new.prepare(&self.ctx, &self.closing).await;
        old.stop().await;
        let unsettled = std::mem::take(&mut *old.shared.handover.lock().expect("handover lock"));
        match prepared {
            Ok(prepared) if !self.closing.is_cancelled() => {
                let extra = handed_over(unsettled).await;
                *running = Some(new.launch(&self.ctx, prepared, extra));
            }
            Ok(_) => {}
            Err(e @ ListenerError::Abandoned { .. }) => warn!("{e}"),
            Err(e) => error!("{e}"),
        }
        drop(running);
        new
    }

    async fn start_logged(&self, slot: &Slot) {
        match slot.start(&self.ctx, &self.closing).await {
            Err(e @ ListenerError::Abandoned { .. }) => warn!("{e}"),
            Err(e) => error!("{e}"),
            Ok(_) => {}
        }
    }
}

/// Synthetic events for files a replaced listener had not finished, with the kinds
/// of change their runs were for (a route taking only `create` still gets its
/// create): `delete` if the file is gone, else each kind it had (a `delete` first,
/// then `modify` if nothing else says it is there again). Looked at on a blocking thread, bounded as `explain`'s probes
/// are: if the file system does not answer in time, every one is taken to be there
/// (a run that finds its file gone, rather than a run lost).
async fn handed_over(files: Vec<(PathBuf, EventSet)>) -> Vec<FileEvent> {
    let asked: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    let gone = move || {
        asked
            .iter()
            .map(|p| p.symlink_metadata().is_err())
            .collect::<Vec<_>>()
    };
    let gone = super::explain::bounded(super::explain::FS_TIMEOUT, gone).await;
    let gone = gone.into_iter().flatten().chain(std::iter::repeat(false));
    let mut events = Vec::new();
    for ((path, kinds), gone) in files.into_iter().zip(gone) {
        // In the order they may have come: a delete before a file made again.
        let order = [
            EventKind::Delete,
            EventKind::Create,
            EventKind::Move,
            EventKind::Modify,
            EventKind::Attrib,
        ];
        let mut had: Vec<EventKind> = order.into_iter().filter(|k| kinds.contains(*k)).collect();
        if gone {
            had = vec![EventKind::Delete];
        } else if had.iter().all(|k| *k == EventKind::Delete) {
            had.push(EventKind::Modify); // gone, and there again
        }
        events.extend(had.into_iter().map(|kind| FileEvent {
            path: path.clone(),
            kind,
        }));
    }
    events
}
