//! A team of helper threads for the matmuls of the decode step.
//!
//! A decode step runs ~200 matmuls of 20-500 µs each; handing each to a
//! sleeping rayon thread costs a wake-up of the same order, so two threads
//! were no faster than one. Here each helper, once started (as a rayon job, so
//! the same code runs on native threads and on the Web Workers of the threaded
//! wasm build), spins for the next piece of work for at most [`IDLE`] and then
//! returns its thread to rayon; the next matmul restarts it. While tokens are
//! being generated the helpers stay hot; an idle engine burns nothing.
//!
//! Work is cut into more chunks than threads, and every thread, the caller
//! included, takes the next chunk nobody has taken. A helper the system has
//! descheduled (another process, the browser's own threads on a small
//! machine) therefore holds up at most the one chunk it started: the caller
//! takes the rest, and withdraws the job from helpers that never picked it up.
//! With one fixed share per thread the caller waited for the whole share of a
//! descheduled helper (natively, two threads beside a busy process: 5.6 ms
//! per decode token became 157 ms).
//!
//! Protocol per helper slot: `EXITED` → (poster) `ASSIGNED` + spawn, or
//! `SPINNING` → (poster CAS) `ASSIGNED`; then either the helper takes it
//! (CAS `ASSIGNED` → `RUNNING`, chunks until none is left, `SPINNING`) or the
//! poster, out of chunks, withdraws it (CAS `ASSIGNED` → `SPINNING`). The poster
//! returns only once no slot is `ASSIGNED` or `RUNNING` for its job. A helper
//! that times out leaves only through a CAS `SPINNING` → `EXITED`, so a job is
//! never posted to a helper that is gone.
//!
//! One poster at a time: the matmul slots and [`beside`]'s slot each have a
//! flag, and a caller that finds it taken (an engine on another thread) runs
//! its chunks alone. Two posters on one slot each started a helper for it; the
//! one that lost the slot spun on for ever on a thread of the pool (it hung
//! `tests/threads.rs` in CI once, where its two tests run at once).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use web_time::Instant;

/// How long a helper waits for the next piece of work before giving its thread back.
pub const IDLE: Duration = Duration::from_millis(3);

/// How long the poster waits for its helpers before it takes one for dead. A piece
/// of one matmul takes microseconds to a few hundred milliseconds; a helper whose
/// Web Worker trapped never finishes, and waiting for it would spin forever.
const STUCK: Duration = Duration::from_secs(30);

/// Set by [`trap_next_helper_job`]: the next helper to take a job traps instead.
static TRAP_NEXT_JOB: AtomicBool = AtomicBool::new(false);

/// Makes the next helper that takes a job trap on its own thread, as a bug there would
/// (the threaded wasm build's test of the [`STUCK`] way out; natively it would end the process).
#[cfg(all(target_arch = "wasm32", feature = "threads"))]
pub fn trap_next_helper_job() {
    TRAP_NEXT_JOB.store(true, Ordering::Release);
}

const EXITED: u8 = 0;
const SPINNING: u8 = 1;
const ASSIGNED: u8 = 2;
const RUNNING: u8 = 3;

/// One [`run`]: the chunks' function and the next chunk nobody has taken.
struct Work<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    chunks: usize,
    next: AtomicUsize,
}

impl Work<'_> {
    /// Runs chunks until none is left.
    fn drain(&self) {
        loop {
            let c = self.next.fetch_add(1, Ordering::Relaxed);
            if c >= self.chunks {
                return;
            }
            (self.f)(c);
        }
    }
}

type Job = *const Work<'static>;

struct Slot {
    state: AtomicU8,
    job: UnsafeCell<Option<Job>>,
}

struct Team {
    slots: Vec<Slot>,
    /// Held by the caller whose job the matmul slots (all but the last) hold.
    matmuls: AtomicBool,
    /// Held by the caller whose job [`beside`]'s slot (the last) holds.
    beside: AtomicBool,
}

// SAFETY: `job` is written by the poster before it publishes ASSIGNED (Release)
// and read by the helper after it takes ASSIGNED → RUNNING (Acquire); the work
// it points to is `Sync` and outlives the job (the poster returns only after
// every slot it posted to left ASSIGNED and RUNNING).
unsafe impl Sync for Team {}
unsafe impl Send for Team {}

/// Helper slots of the matmuls; one more (the last) is [`beside`]'s.
const MAX_HELPERS: usize = 63;

fn team() -> &'static Arc<Team> {
    static TEAM: OnceLock<Arc<Team>> = OnceLock::new();
    TEAM.get_or_init(|| {
        Arc::new(Team {
            slots: (0..=MAX_HELPERS).map(|_| Slot { state: AtomicU8::new(EXITED), job: UnsafeCell::new(None) }).collect(),
            matmuls: AtomicBool::new(false),
            beside: AtomicBool::new(false),
        })
    })
}

fn helper(team: Arc<Team>, i: usize) {
    let slot = &team.slots[i];
    let mut since = Instant::now();
    let mut spins = 0u32;
    loop {
        if slot.state.load(Ordering::Acquire) == ASSIGNED && slot.state.compare_exchange(ASSIGNED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            if TRAP_NEXT_JOB.swap(false, Ordering::AcqRel) {
                std::process::abort();
            }
            // SAFETY: see `Team`: the work stays alive while this slot is RUNNING.
            if let Some(work) = unsafe { *slot.job.get() } {
                unsafe { (*work).drain() };
            }
            slot.state.store(SPINNING, Ordering::Release);
            since = Instant::now();
            spins = 0;
            continue;
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) && since.elapsed() > IDLE && slot.state.compare_exchange(SPINNING, EXITED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return;
        }
    }
}

/// Runs `f(0)..f(chunks - 1)` on up to `threads` threads, the calling thread
/// included, each taking the next chunk nobody has taken; returns when all are done.
/// One caller at a time has the helpers: a `run` that finds them taken (another
/// engine on another thread) runs its chunks alone.
pub fn run(threads: usize, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
    let work = Work { f, chunks, next: AtomicUsize::new(0) };
    let helpers = threads.min(chunks).min(MAX_HELPERS + 1).saturating_sub(1);
    let _posted = Posted::new(&work, &team().matmuls, 0..helpers);
    work.drain();
}

/// Runs `local` on the calling thread while a helper runs `remote(0)` (the
/// tokenizer built beside the weights' repacking at load), and returns what
/// `local` returned once both are done; the caller runs `remote(0)` itself
/// when no helper has taken it by then. Its own slot, so the matmuls `local`
/// may run keep theirs.
pub fn beside<A>(local: impl FnOnce() -> A, remote: &(dyn Fn(usize) + Sync)) -> A {
    let work = Work { f: remote, chunks: 1, next: AtomicUsize::new(0) };
    let _posted = Posted::new(&work, &team().beside, MAX_HELPERS..MAX_HELPERS + 1);
    let a = local();
    work.drain();
    a
}

/// A job posted to a range of slots: made only by the caller that took the
/// range's flag; dropped (also when a chunk panics on the caller's thread)
/// once no helper can reach the work any more, and then the flag is free.
struct Posted<'t> {
    taken: &'t AtomicBool,
    slots: std::ops::Range<usize>,
}

impl<'t> Posted<'t> {
    /// Takes `taken` and posts `work` to `slots`; `None` (nothing posted) when
    /// another caller holds them. Two callers posting to one slot would each
    /// start a helper for it, and one of the two would spin there for ever.
    fn new(work: &Work<'_>, taken: &'t AtomicBool, slots: std::ops::Range<usize>) -> Option<Self> {
        if slots.is_empty() || taken.swap(true, Ordering::Acquire) {
            return None;
        }
        post(work, slots.clone());
        Some(Posted { taken, slots })
    }
}

impl Drop for Posted<'_> {
    fn drop(&mut self) {
        finish(self.slots.clone());
        self.taken.store(false, Ordering::Release);
    }
}

/// Assigns `work` to the helpers of `slots`, starting those that are gone.
fn post(work: &Work<'_>, slots: std::ops::Range<usize>) {
    let team = team();
    // SAFETY: only the lifetime is erased; `finish` returns only once no helper can reach `work`.
    let job: Job = unsafe { std::mem::transmute::<*const Work<'_>, *const Work<'static>>(work) };
    for i in slots {
        let slot = &team.slots[i];
        unsafe { *slot.job.get() = Some(job) };
        if slot.state.compare_exchange(SPINNING, ASSIGNED, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // The helper is gone (or was never started): start it with the job already assigned.
            slot.state.store(ASSIGNED, Ordering::Release);
            let t = Arc::clone(team);
            rayon::spawn(move || helper(t, i));
        }
    }
}

/// Once the caller has run out of chunks: withdraws the job from the helpers
/// of `slots` that have not taken it and waits for those that have.
fn finish(slots: std::ops::Range<usize>) {
    let team = team();
    let started = Instant::now();
    for slot in &team.slots[slots] {
        let mut spins = 0u32;
        while slot.state.compare_exchange(ASSIGNED, SPINNING, Ordering::AcqRel, Ordering::Acquire) == Err(RUNNING) {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            // Returning would free the work under a helper that may still run it; a panic
            // (an abort, a trap in wasm) ends the engine instead, and the page sees a
            // crash it can recover from by loading again, not a hang.
            if spins.is_multiple_of(4096) && started.elapsed() > STUCK {
                panic!("a helper thread has not finished in {} s (it trapped or was killed): the engine stops", STUCK.as_secs());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every chunk runs exactly once, whoever takes it: with fewer chunks
    /// than threads, none, many, and a chunk that stalls its thread (the
    /// others take the rest; the caller waits only for the stalled chunk).
    #[test]
    fn every_chunk_runs_once() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        pool.install(|| {
            for (threads, chunks) in [(2, 0), (2, 1), (3, 2), (2, 8), (3, 97), (1, 5)] {
                for round in 0..50 {
                    let runs: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
                    super::run(threads, chunks, &|c| {
                        if round % 10 == 0 && c == 0 {
                            std::thread::sleep(std::time::Duration::from_millis(2));
                        }
                        runs[c].fetch_add(1, Ordering::Relaxed);
                    });
                    for (c, r) in runs.iter().enumerate() {
                        assert_eq!(r.load(Ordering::Relaxed), 1, "threads {threads}, chunks {chunks}, round {round}: chunk {c}");
                    }
                }
            }
        });
    }

    /// Callers on several threads at once (engines on threads of their own, as the
    /// tests of one binary run): every chunk still runs once, and afterwards every
    /// thread of the pool comes back (two helpers started for one slot, as posting
    /// from two callers did, left one spinning there for ever).
    #[test]
    fn callers_at_once_share_the_helpers_and_give_every_thread_back() {
        use std::sync::Arc;
        const THREADS: usize = 6;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(THREADS).build().unwrap();
        pool.scope(|scope| {
            for caller in 0..3 {
                scope.spawn(move |_| {
                    for round in 0..400 {
                        let chunks = 2 + (round + caller) % 9;
                        let runs: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
                        super::run(2 + caller, chunks, &|c| {
                            runs[c].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1), "caller {caller}, round {round}");
                    }
                });
            }
        });
        // Once the helpers have had time to leave, every pool thread takes a job.
        std::thread::sleep(super::IDLE * 10);
        let came_back = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&came_back);
        pool.spawn_broadcast(move |_| {
            counter.fetch_add(1, Ordering::AcqRel);
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while came_back.load(Ordering::Acquire) < THREADS && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(came_back.load(Ordering::Acquire), THREADS, "a pool thread did not come back from its helper");
    }
}
