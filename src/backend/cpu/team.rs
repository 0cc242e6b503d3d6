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
//! Protocol per helper slot: `EXITED` → (poster) `ASSIGNED` + spawn, or
//! `SPINNING` → (poster CAS) `ASSIGNED` → (helper runs the job) `SPINNING`;
//! a helper that times out leaves only through a CAS `SPINNING` → `EXITED`, so
//! a job is never posted to a helper that is gone.

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

type Job = *const (dyn Fn(usize) + Sync);

struct Slot {
    state: AtomicU8,
    job: UnsafeCell<Option<Job>>,
}

struct Team {
    slots: Vec<Slot>,
    pending: AtomicUsize,
}

// SAFETY: `job` is written by the poster before it publishes ASSIGNED (Release)
// and read by the helper after it observes ASSIGNED (Acquire); the closure it
// points to is `Sync` and outlives the job (the poster waits for `pending == 0`).
unsafe impl Sync for Team {}
unsafe impl Send for Team {}

const MAX_HELPERS: usize = 63;

fn team() -> &'static Arc<Team> {
    static TEAM: OnceLock<Arc<Team>> = OnceLock::new();
    TEAM.get_or_init(|| {
        Arc::new(Team {
            slots: (0..MAX_HELPERS).map(|_| Slot { state: AtomicU8::new(EXITED), job: UnsafeCell::new(None) }).collect(),
            pending: AtomicUsize::new(0),
        })
    })
}

fn helper(team: Arc<Team>, i: usize) {
    let slot = &team.slots[i];
    let mut since = Instant::now();
    let mut spins = 0u32;
    loop {
        match slot.state.load(Ordering::Acquire) {
            ASSIGNED => {
                if TRAP_NEXT_JOB.swap(false, Ordering::AcqRel) {
                    std::process::abort();
                }
                // SAFETY: see `Team`: the job is alive until `pending` reaches zero.
                if let Some(job) = unsafe { *slot.job.get() } {
                    unsafe { (*job)(i + 1) };
                }
                slot.state.store(SPINNING, Ordering::Release);
                team.pending.fetch_sub(1, Ordering::AcqRel);
                since = Instant::now();
                spins = 0;
            }
            _ => {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins % 1024 == 0
                    && since.elapsed() > IDLE
                    && slot.state.compare_exchange(SPINNING, EXITED, Ordering::AcqRel, Ordering::Acquire).is_ok()
                {
                    return;
                }
            }
        }
    }
}

/// Runs `f(0)` on the calling thread and `f(1)..f(n-1)` on helpers, returning when all are done.
pub fn run(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let n = n.min(MAX_HELPERS + 1);
    let team = team();
    // SAFETY: only the lifetime is erased; `run` returns only after every helper finished `f`.
    let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f) };
    for i in 0..n - 1 {
        let slot = &team.slots[i];
        unsafe { *slot.job.get() = Some(job) };
        team.pending.fetch_add(1, Ordering::AcqRel);
        if slot.state.compare_exchange(SPINNING, ASSIGNED, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // The helper is gone (or was never started): start it with the job already assigned.
            slot.state.store(ASSIGNED, Ordering::Release);
            let t = Arc::clone(team);
            rayon::spawn(move || helper(t, i));
        }
    }
    f(0);
    let started = Instant::now();
    let mut spins = 0u32;
    while team.pending.load(Ordering::Acquire) != 0 {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        // Returning would free `f` under a helper that may still run it; a panic
        // (an abort, a trap in wasm) ends the engine instead, and the page sees a
        // crash it can recover from by loading again, not a hang.
        if spins % 4096 == 0 && started.elapsed() > STUCK {
            panic!("a matmul helper thread has not finished in {} s (it trapped or was killed): the engine stops", STUCK.as_secs());
        }
    }
}
