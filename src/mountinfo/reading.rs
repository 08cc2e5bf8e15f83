//! The shared reading of the mount table's points that may not answer, and the
//! answers given from it: renewed when the table changes (seen by `POLLPRI` on a
//! kept `/proc/self/mountinfo`, asked at most every [`TABLE_POLL`]) or when it is
//! [`REMOTE_FRESH`] old. One caller reads the table at a time, outside the lock
//! (on a host with thousands of mounts a reading takes milliseconds, and every
//! HTTP cache hit asks): meanwhile the others go on with a reading that is merely
//! old (under twice [`REMOTE_FRESH`]), and wait for the new one when the table is
//! known to have changed. A reading begun before a change was seen is kept stale,
//! so no other caller takes it for one made after it (the caller that made it
//! answers from it: the table was read during its call).

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a reading, and the answers given from it, are trusted (links on the
/// way may change; the table's own changes are seen within [`TABLE_POLL`]).
const REMOTE_FRESH: Duration = Duration::from_secs(1);

/// How often at most [`table_changed`] is asked (a system call): a mount is seen
/// at most this long after it is made.
const TABLE_POLL: Duration = Duration::from_millis(10);

/// The mount points of file systems that may not answer, and the answers given
/// from them.
pub(super) struct Remote {
    /// When its reading of the table began.
    read: Instant,
    /// The table changed since (or could not be read): not to be used.
    stale: bool,
    /// The points ([`super::remote_points`]).
    pub(super) points: Arc<Vec<PathBuf>>,
    /// What [`super::remote_mounts_of`] answered, by path.
    pub(super) answers: std::collections::HashMap<PathBuf, Vec<PathBuf>>,
}

/// The reading, and the renewal under way.
#[derive(Default)]
struct State {
    reading: Option<Remote>,
    /// When [`table_changed`] was last asked.
    polled: Option<Instant>,
    /// How many changes were seen: a reading begun before the last one is stale.
    changes: u64,
    /// A caller is reading the table.
    renewing: bool,
}

/// What a caller does with the state.
#[derive(Debug, PartialEq)]
enum Next {
    /// Use the reading there.
    Use,
    /// Read the table (it is this caller's turn), having seen `changes` changes,
    /// beginning `at`.
    Read { changes: u64, at: Instant },
    /// Wait for the caller reading it.
    Wait,
}

/// The state and the renewals' signal, shared by every caller (tests make their own).
struct Shared {
    state: Mutex<State>,
    renewed: Condvar,
}

static SHARED: Shared = Shared {
    state: Mutex::new(State {
        reading: None,
        polled: None,
        changes: 0,
        renewing: false,
    }),
    renewed: Condvar::new(),
};

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `f` on the current reading, renewed first when it must be (see the module's
    /// documentation) by `read`; `changed` is the table's change flag. The caller
    /// that renews answers from its own reading, even one a change made stale
    /// meanwhile: the table was read during its call.
    fn with<T>(
        &self,
        read: impl FnOnce() -> Option<Vec<PathBuf>>,
        mut changed: impl FnMut() -> bool,
        f: impl FnOnce(&mut Remote) -> T,
    ) -> T {
        let mut state = self.lock();
        let (changes, at) = loop {
            match next(&mut state, Instant::now(), &mut changed) {
                Next::Use => return f(state.reading.as_mut().expect("a reading to use")),
                Next::Wait => state = self.renewed.wait(state).unwrap_or_else(PoisonError::into_inner),
                Next::Read { changes, at } => break (changes, at),
            }
        };
        drop(state);
        let mut renewal = Renewal {
            shared: self,
            points: None,
            began: at,
            changes,
        };
        renewal.points = read();
        drop(renewal);
        f(self.lock().reading.as_mut().expect("a reading was just put in"))
    }

    /// `f` on the current reading if there is one, never renewed (to keep an answer).
    fn with_current(&self, f: impl FnOnce(&mut Remote)) {
        if let Some(reading) = self.lock().reading.as_mut() {
            f(reading);
        }
    }
}

/// `f` on the current reading, renewed first when it must be (see the module's
/// documentation).
pub(super) fn with_remote<T>(f: impl FnOnce(&mut Remote) -> T) -> T {
    SHARED.with(super::remote_points, table_changed, f)
}

/// `f` on the current reading, if there is one: never waits for a renewal nor
/// makes one (for keeping an answer given from a reading, if it is still the one).
pub(super) fn with_current(f: impl FnOnce(&mut Remote)) {
    SHARED.with_current(f)
}

/// A reading of the table under way, put in when dropped: even if the reading
/// panicked (as unreadable), so that no caller waits for ever.
struct Renewal<'a> {
    shared: &'a Shared,
    points: Option<Vec<PathBuf>>,
    began: Instant,
    changes: u64,
}

impl Drop for Renewal<'_> {
    fn drop(&mut self) {
        install(
            &mut self.shared.lock(),
            self.points.take(),
            self.began,
            self.changes,
        );
        self.shared.renewed.notify_all();
    }
}

/// What the caller at `now` does: the table's change flag is asked (`changed`) at
/// most every [`TABLE_POLL`], and a change marks the reading stale. A usable
/// reading is used; else the caller reads the table, unless another is reading
/// it: then a reading that is only old (under twice [`REMOTE_FRESH`]) is used
/// meanwhile, and a stale one, an older one or none waited for.
fn next(state: &mut State, now: Instant, changed: impl FnOnce() -> bool) -> Next {
    if state.polled.is_none_or(|at| now.duration_since(at) >= TABLE_POLL) {
        state.polled = Some(now);
        if changed() {
            state.changes += 1;
            if let Some(r) = &mut state.reading {
                r.stale = true;
            }
        }
    }
    let (usable, old) = match &state.reading {
        Some(r) if !r.stale => {
            let age = now.duration_since(r.read);
            (age < REMOTE_FRESH, age < 2 * REMOTE_FRESH)
        }
        _ => (false, false),
    };
    match (usable, state.renewing) {
        (true, _) => Next::Use,
        (false, false) => {
            state.renewing = true;
            Next::Read {
                changes: state.changes,
                at: now,
            }
        }
        (false, true) if old => Next::Use,
        (false, true) => Next::Wait,
    }
}

/// Puts in the reading begun at `began` having seen `changes` changes: `points`,
/// stale if a change was seen meanwhile; `None` (the table could not be read:
/// out of descriptors) keeps the last points, stale, so the next call reads again.
fn install(state: &mut State, points: Option<Vec<PathBuf>>, began: Instant, changes: u64) {
    state.renewing = false;
    let (points, stale) = match points {
        Some(points) => (Arc::new(points), state.changes != changes),
        None => (state.reading.take().map(|r| r.points).unwrap_or_default(), true),
    };
    state.reading = Some(Remote {
        read: began,
        stale,
        points,
        answers: Default::default(),
    });
}

/// Whether the mount table changed since the last time this was asked (a mount made
/// or gone), by the `POLLPRI` of a kept `/proc/self/mountinfo`; true when it cannot
/// be asked, and when the file is opened after it could not be (out of
/// descriptors: meanwhile readings are renewed every [`REMOTE_FRESH`] only).
fn table_changed() -> bool {
    /// The kept table, and whether opening it failed before.
    static TABLE: Mutex<(Option<std::fs::File>, bool)> = Mutex::new((None, false));
    let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    let (file, failed) = &mut *table;
    if file.is_none() {
        *file = std::fs::File::open("/proc/self/mountinfo").ok();
        match file {
            None => {
                *failed = true;
                return false;
            }
            Some(_) if *failed => return true, // what changed meanwhile was not seen
            Some(_) => {}
        }
    }
    match file {
        Some(file) => crate::sys::mount_table_changed(std::os::fd::AsFd::as_fd(file)).unwrap_or(true),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(names: &[&str]) -> Option<Vec<PathBuf>> {
        Some(names.iter().map(PathBuf::from).collect())
    }

    /// A state whose first reading, `names`, began at `t0`.
    fn read_at(t0: Instant, names: &[&str]) -> State {
        let mut state = State::default();
        let Next::Read { changes, .. } = next(&mut state, t0, || false) else {
            panic!("the first caller reads");
        };
        install(&mut state, points(names), t0, changes);
        state
    }

    fn read_by(state: &State) -> Vec<PathBuf> {
        state.reading.as_ref().unwrap().points.to_vec()
    }

    #[test]
    fn a_reading_begun_before_a_change_was_seen_is_never_used_as_fresh() {
        let t0 = Instant::now();
        let mut state = State::default();
        // D begins a reading; X is mounted; C sees the change while D reads.
        let Next::Read { changes, .. } = next(&mut state, t0, || false) else {
            panic!("the first caller reads");
        };
        let c = t0 + TABLE_POLL;
        assert_eq!(next(&mut state, c, || true), Next::Wait, "nothing to use: wait");
        // D's reading (without X) is put in, stale: the next caller reads again.
        install(&mut state, points(&["/old"]), t0, changes);
        let Next::Read { changes, .. } = next(&mut state, c, || false) else {
            panic!("a reading older than the change is read again");
        };
        install(&mut state, points(&["/old", "/x"]), c, changes);
        assert_eq!(next(&mut state, c, || false), Next::Use);
        assert_eq!(read_by(&state), [PathBuf::from("/old"), PathBuf::from("/x")]);
    }

    #[test]
    fn while_one_caller_reads_an_old_reading_is_used_and_a_stale_one_waited_for() {
        let t0 = Instant::now();
        let later = t0 + REMOTE_FRESH;
        // Old by age only: one caller reads, the others use it meanwhile, but not
        // past twice its time.
        let mut state = read_at(t0, &["/a"]);
        assert!(matches!(next(&mut state, later, || false), Next::Read { .. }));
        assert_eq!(next(&mut state, later, || false), Next::Use);
        assert_eq!(next(&mut state, t0 + 2 * REMOTE_FRESH, || false), Next::Wait);
        // The table changed: they wait for the new reading instead.
        let mut state = read_at(t0, &["/a"]);
        assert!(matches!(next(&mut state, later, || false), Next::Read { .. }));
        let changed = later + TABLE_POLL;
        assert_eq!(next(&mut state, changed, || true), Next::Wait);
        assert_eq!(next(&mut state, changed, || false), Next::Wait);
    }

    #[test]
    fn a_table_that_cannot_be_read_keeps_the_last_points_and_is_read_at_the_next_call() {
        let t0 = Instant::now();
        let mut state = read_at(t0, &["/nfs"]);
        let later = t0 + REMOTE_FRESH;
        let Next::Read { changes, .. } = next(&mut state, later, || false) else {
            panic!("an old reading is renewed");
        };
        install(&mut state, None, later, changes);
        assert_eq!(read_by(&state), [PathBuf::from("/nfs")]);
        assert!(matches!(next(&mut state, later, || false), Next::Read { .. }));
    }

    /// A local [`Shared`] with a first reading of `names`.
    fn shared_with(names: &[&str]) -> Shared {
        let shared = Shared {
            state: Mutex::new(State::default()),
            renewed: Condvar::new(),
        };
        shared.with(|| points(names), || false, |_| ());
        shared
    }

    /// The change flag is asked at the next call (not only after [`TABLE_POLL`]).
    fn ask_next(shared: &Shared) {
        shared.lock().polled = None;
    }

    /// The points `shared` answers with, from a call that must not read the table.
    fn answer(shared: &Shared) -> Vec<PathBuf> {
        shared.with(
            || panic!("this caller must not read"),
            || false,
            |r| r.points.to_vec(),
        )
    }

    #[test]
    fn a_caller_waiting_on_a_seen_change_gets_the_reading_made_after_it() {
        let shared = shared_with(&["/a"]);
        let (reading, go) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        ask_next(&shared);
        std::thread::scope(|s| {
            // The renewer: sees the change, reads, and is held in its reading.
            let renewer = s.spawn(|| {
                let read = || {
                    reading.wait();
                    go.wait();
                    points(&["/a", "/x"])
                };
                shared.with(read, || true, |r| r.points.to_vec())
            });
            reading.wait();
            // Another caller meanwhile: the reading is stale, it waits (never reads).
            let waiter = s.spawn(|| answer(&shared));
            go.wait();
            let new = [PathBuf::from("/a"), PathBuf::from("/x")];
            assert_eq!(renewer.join().unwrap(), new);
            assert_eq!(
                waiter.join().unwrap(),
                new,
                "never the reading the change made stale"
            );
        });
    }

    #[test]
    fn a_reading_that_panics_lets_the_next_caller_read() {
        let shared = shared_with(&["/a"]);
        ask_next(&shared);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shared.with(|| panic!("the read fails"), || true, |_| ())
        }));
        assert!(panicked.is_err());
        let state = shared.lock();
        assert!(!state.renewing, "given back");
        assert!(state.reading.as_ref().is_some_and(|r| r.stale), "read again next");
        drop(state);
        let next = shared.with(|| points(&["/b"]), || false, |r| r.points.to_vec());
        assert_eq!(next, [PathBuf::from("/b")]);
        assert_eq!(answer(&shared), [PathBuf::from("/b")]);
    }

    #[test]
    fn the_change_flag_is_asked_at_most_every_table_poll() {
        let t0 = Instant::now();
        let mut state = read_at(t0, &[]);
        let asked = std::cell::Cell::new(1); // by `read_at`
        let ask = || {
            asked.set(asked.get() + 1);
            false
        };
        for ms in [1, 5, 9] {
            assert_eq!(next(&mut state, t0 + Duration::from_millis(ms), ask), Next::Use);
        }
        assert_eq!(asked.get(), 1);
        let _ = next(&mut state, t0 + TABLE_POLL, ask);
        assert_eq!(asked.get(), 2);
    }
}
