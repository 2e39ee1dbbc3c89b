//! The store's lock, timed: how long each reader and writer waited for it and held it, by
//! where in the code it was taken.
//!
//! Everything that reads the store takes one `std::sync::RwLock`, from async tasks of the
//! main runtime among others, and applying a committed entry takes it to write. A reader
//! that holds it long makes the writer wait, and a waiting writer makes every later reader
//! wait (the lock prefers writers): a runtime's worker threads then block in `read()`, and
//! nothing else on that runtime runs, the Raft service's answers to the other managers
//! included. These figures say whether that happens and who holds the lock:
//! `swarm_store_lock_wait_seconds` and `swarm_store_lock_hold_seconds` by mode (those of
//! [`RECORDED`] or more), and a warning naming the caller's source line when a wait or a
//! hold passes [`SLOW`].

use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::{LazyLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// How the store's lock was taken: `read` or `write`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockMode {
    pub mode: String,
}

type ByMode = Family<LockMode, Histogram, fn() -> Histogram>;

/// The lock's two histograms. They live here, registered in the process registry
/// (`swarm_common::metrics`), and not in the crate's `metrics` module: the store uses no
/// other module of the crate (ARCHITECTURE.md, "swarm-manager's layers").
struct LockMetrics {
    wait: ByMode,
    hold: ByMode,
}

static METRICS: LazyLock<LockMetrics> = LazyLock::new(|| {
    let m = LockMetrics {
        wait: Family::new_with_constructor(swarm_common::metrics::latency_histogram),
        hold: Family::new_with_constructor(swarm_common::metrics::latency_histogram),
    };
    swarm_common::metrics::register(
        "store_lock_wait_seconds",
        "Waits of 1 ms or more for the store's lock, by mode (read, or write: applying committed entries)",
        m.wait.clone(),
    );
    swarm_common::metrics::register(
        "store_lock_hold_seconds",
        "Holds of 1 ms or more of the store's lock, by mode",
        m.hold.clone(),
    );
    m
});

/// A wait for the lock or a hold of it at least this long is logged with its caller.
pub const SLOW: Duration = Duration::from_millis(250);

/// Waits and holds shorter than this are not recorded: the fast path of a read stays two
/// clock reads, and the histograms hold the ones that matter.
pub const RECORDED: Duration = Duration::from_millis(1);

#[derive(Clone, Copy)]
enum Mode {
    Read,
    Write,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Read => "read",
            Mode::Write => "write",
        }
    }

    fn label(self) -> LockMode {
        LockMode {
            mode: self.name().to_string(),
        }
    }
}

/// When and where the lock was taken; records the hold when dropped.
struct Held {
    mode: Mode,
    since: Instant,
    at: &'static Location<'static>,
}

impl Held {
    /// Records the wait that ended now (it began at `asked`).
    fn taken(mode: Mode, asked: Instant, at: &'static Location<'static>) -> Held {
        let since = Instant::now();
        let waited = since - asked;
        if waited >= RECORDED {
            METRICS
                .wait
                .get_or_create(&mode.label())
                .observe(waited.as_secs_f64());
        }
        if waited >= SLOW {
            tracing::warn!(
                mode = mode.name(),
                caller = %at,
                "waited {waited:?} for the store's lock (a long holder, or a writer queued behind one, blocks every later reader: see swarm_store_lock_hold_seconds)"
            );
        }
        Held { mode, since, at }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let held = self.since.elapsed();
        if held >= RECORDED {
            METRICS
                .hold
                .get_or_create(&self.mode.label())
                .observe(held.as_secs_f64());
        }
        if held >= SLOW {
            tracing::warn!(
                mode = self.mode.name(),
                caller = %self.at,
                "held the store's lock for {held:?}: readers and the Raft apply wait meanwhile"
            );
        }
    }
}

/// The store's state under a timed lock.
pub struct TimedLock<T> {
    inner: RwLock<T>,
}

impl<T> TimedLock<T> {
    pub fn new(value: T) -> Self {
        TimedLock {
            inner: RwLock::new(value),
        }
    }

    /// A read guard; the wait and the hold are recorded against the caller's line.
    #[track_caller]
    pub fn read(&self) -> ReadGuard<'_, T> {
        let at = Location::caller();
        let asked = Instant::now();
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        ReadGuard {
            guard,
            _held: Held::taken(Mode::Read, asked, at),
        }
    }

    /// A read guard if the lock can be had at once: not while a writer holds it or waits
    /// for it. Timed like [`TimedLock::read`] (its wait is none).
    #[track_caller]
    pub fn try_read(&self) -> Option<ReadGuard<'_, T>> {
        let at = Location::caller();
        let asked = Instant::now();
        let guard = match self.inner.try_read() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(ReadGuard {
            guard,
            _held: Held::taken(Mode::Read, asked, at),
        })
    }

    /// A write guard, timed like [`TimedLock::read`].
    #[track_caller]
    pub fn write(&self) -> WriteGuard<'_, T> {
        let at = Location::caller();
        let asked = Instant::now();
        let guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        WriteGuard {
            guard,
            _held: Held::taken(Mode::Write, asked, at),
        }
    }
}

/// The state, read; the lock is released (and its hold recorded) when this is dropped.
pub struct ReadGuard<'a, T> {
    guard: RwLockReadGuard<'a, T>,
    // Dropped after `guard` (fields drop in order): the hold includes the release.
    _held: Held,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

/// The state, to change; see [`ReadGuard`].
pub struct WriteGuard<'a, T> {
    guard: RwLockWriteGuard<'a, T>,
    _held: Held,
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample count of one mode's histogram, from its text encoding.
    fn count(mode: &str, hold: bool) -> u64 {
        let family = if hold { &METRICS.hold } else { &METRICS.wait };
        let mut text = String::new();
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register("h", "h", family.clone());
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        text.lines()
            .find(|l| l.starts_with("h_count") && l.contains(&format!("mode=\"{mode}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_writer_waits_for_a_held_reader_and_both_are_recorded() {
        let lock = std::sync::Arc::new(TimedLock::new(1u32));
        // Other tests of this process take the lock too: the counts only grow.
        let (read_holds, write_waits) = (count("read", true), count("write", false));
        let r = lock.read();
        let l2 = lock.clone();
        let writer = std::thread::spawn(move || {
            let asked = Instant::now();
            *l2.write() += 1;
            asked.elapsed()
        });
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            *r, 1,
            "the writer cannot have run while the read guard lives"
        );
        drop(r);
        let waited = writer.join().unwrap();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert_eq!(*lock.read(), 2);
        // The 300 ms read hold and the writer's wait as long are in the histograms (the
        // write's own hold, under 1 ms, is not).
        assert!(count("read", true) > read_holds);
        assert!(count("write", false) > write_waits);
    }
}
