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
use crate::events::EventKind;
use crate::protocol::replies::Applied;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{error, info, warn};

impl Listeners {
    /// Brings the listeners in line with `config`. Fails only when the daemon is
    /// shutting down; a listener that cannot start is left `failed` and logged.
    pub async fn apply(&self, config: &Config) -> Result<Applied, ListenerError> {
        let _changing = self.changing.lock().await;
        if self.closing.is_cancelled() {
            return Err(ListenerError::Closing);
        }
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
        for slot in self.reloading.lock().expect("reloading lock").drain(..) {
            slot.reloaded();
        }
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

    /// `slot`, known as one this reload starts until it is done (see `stop`).
    fn reloading(&self, slot: Slot) -> Arc<Slot> {
        let slot = Arc::new(slot);
        self.reloading.lock().expect("reloading lock").push(slot.clone());
        slot
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

/// Synthetic events for files a replaced listener had not finished: `modify` if the
/// file is there, else `delete`. Looked at on a blocking thread, bounded as
/// `explain`'s probes are: if the file system does not answer in time, every one is
/// a `modify` (a run that finds its file gone, rather than a run lost).
async fn handed_over(files: Vec<PathBuf>) -> Vec<FileEvent> {
    let asked = files.clone();
    let gone = move || {
        asked
            .iter()
            .map(|p| p.symlink_metadata().is_err())
            .collect::<Vec<_>>()
    };
    let gone = super::explain::bounded(super::explain::FS_TIMEOUT, gone).await;
    let kinds = gone.into_iter().flatten().chain(std::iter::repeat(false));
    files
        .into_iter()
        .zip(kinds)
        .map(|(path, gone)| FileEvent {
            path,
            kind: if gone {
                EventKind::Delete
            } else {
                EventKind::Modify
            },
        })
        .collect()
}
