//! Frames: the span of work one change of a file causes across a listener's stages.
//!
//! A file's frame opens with the first change that gives any route work for it and
//! ends when no route has work for it left, pending or running. Its status is the
//! worst of what happened: `failed` if a run for it failed, `cancelled` if the listener
//! stopped before its work was done, else `ok`. `[[listener.post]]` commands run once
//! per ended frame that ran something (or was cancelled); frames that end in the same
//! step with the same status (a batch run's files) are reported together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How a frame ended. Ordered: a worse status replaces a better one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum FrameStatus {
    /// Every run for the file succeeded.
    #[default]
    Ok,
    /// The listener stopped before the file's work was done.
    Cancelled,
    /// A run for the file failed (later stages may have been skipped).
    Failed,
}

impl FrameStatus {
    /// The value of `EXECLIB_FRAME_STATUS`.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameStatus::Ok => "ok",
            FrameStatus::Cancelled => "cancelled",
            FrameStatus::Failed => "failed",
        }
    }
}

/// Ended frames reported together: their files, in path order, and their status.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameEnd {
    /// The files whose frames ended.
    pub files: Vec<PathBuf>,
    /// How they ended.
    pub status: FrameStatus,
}

#[derive(Debug, Default)]
struct Frame {
    /// How many scheduler entries have work (pending or running) for the file.
    refs: usize,
    status: FrameStatus,
    /// Whether a run for the file started.
    ran: bool,
}

/// The open frames of one listener and the ones ended but not yet reported.
#[derive(Debug, Default)]
pub(super) struct Frames {
    open: HashMap<PathBuf, Frame>,
    /// Ended in the current step, not yet grouped.
    ended: Vec<(PathBuf, FrameStatus)>,
}

impl Frames {
    /// An entry took on work for `file`.
    pub fn hold(&mut self, file: &Path) {
        match self.open.get_mut(file) {
            Some(frame) => frame.refs += 1,
            None => {
                let frame = Frame {
                    refs: 1,
                    ..Frame::default()
                };
                self.open.insert(file.to_owned(), frame);
            }
        }
    }

    /// An entry has no work left for `file`; the frame ends when none has.
    pub fn release(&mut self, file: &Path) {
        let Some(frame) = self.open.get_mut(file) else {
            debug_assert!(false, "frame of {} released but not held", file.display());
            return;
        };
        frame.refs -= 1;
        if frame.refs == 0 {
            let frame = self.open.remove(file).expect("looked up");
            if frame.ran || frame.status == FrameStatus::Cancelled {
                self.ended.push((file.to_owned(), frame.status));
            }
        }
    }

    /// A run for `file` started.
    pub fn ran(&mut self, file: &Path) {
        if let Some(frame) = self.open.get_mut(file) {
            frame.ran = true;
        }
    }

    /// Records `status` for `file`'s frame, unless it already has a worse one.
    pub fn mark(&mut self, file: &Path, status: FrameStatus) {
        if let Some(frame) = self.open.get_mut(file) {
            frame.status = frame.status.max(status);
        }
    }

    /// The frames ended since the last call, grouped by status.
    pub fn take_ended(&mut self) -> Vec<FrameEnd> {
        let mut groups: Vec<FrameEnd> = Vec::new();
        for (file, status) in self.ended.drain(..) {
            match groups.iter_mut().find(|g| g.status == status) {
                Some(group) => group.files.push(file),
                None => groups.push(FrameEnd {
                    files: vec![file],
                    status,
                }),
            }
        }
        for group in &mut groups {
            group.files.sort();
        }
        groups
    }

    /// How many frames are open.
    #[cfg(test)]
    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}
