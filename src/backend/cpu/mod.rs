//! The CPU backend: quantized linear layers and the element-wise kernels of
//! the forward pass, over plain slices; matmul rows split across threads
//! where a thread pool exists (natively, and in the threaded wasm build).

pub mod attention;
pub mod linear;
pub mod ops;
pub mod quant;
#[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
mod team;

pub use linear::Linear;
#[cfg(all(target_arch = "wasm32", feature = "threads"))]
pub use team::trap_next_helper_job;

use std::sync::atomic::{AtomicUsize, Ordering};

static THREADS: AtomicUsize = AtomicUsize::new(1);

/// How many threads the matmuls split their rows across (default 1). Natively
/// they run on rayon's current pool; in wasm only the threaded build (feature
/// `threads`, after `initThreadPool`) can use more than one.
pub fn set_threads(n: usize) {
    let n = if cfg!(any(not(target_arch = "wasm32"), feature = "threads")) { n.max(1) } else { 1 };
    THREADS.store(n, Ordering::Relaxed);
}

pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// Runs `f(0..chunks)` on up to `threads` threads, the calling thread
/// included, each taking the next chunk not yet taken (see [`team`]).
#[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
pub(crate) fn par_for(threads: usize, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
    team::run(threads, chunks, f);
}

/// Runs `local` on the calling thread and `remote` on a helper at the same
/// time where threads exist and more than one is set (else `remote`, then
/// `local`); returns both results.
pub(crate) fn beside<A, B: Send>(local: impl FnOnce() -> A, remote: impl FnOnce() -> B + Send) -> (A, B) {
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    if threads() > 1 {
        use std::sync::Mutex;
        let remote = Mutex::new(Some(remote));
        let out = Mutex::new(None);
        let run_remote = |_: usize| {
            if let Some(f) = remote.lock().unwrap_or_else(|e| e.into_inner()).take() {
                *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(f());
            }
        };
        let a = team::beside(local, &run_remote);
        let b = out.into_inner().unwrap_or_else(|e| e.into_inner()).expect("beside: the remote half ran");
        return (a, b);
    }
    let b = remote();
    (local(), b)
}

#[cfg(not(any(not(target_arch = "wasm32"), feature = "threads")))]
pub(crate) fn par_for(_threads: usize, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
    for i in 0..chunks {
        f(i);
    }
}
