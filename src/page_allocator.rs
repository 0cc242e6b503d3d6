//! The global allocator of the wasm build: the standard one (dlmalloc) for
//! everything but large blocks, which take whole 64 KiB pages of their own.
//!
//! Why: on wasm32 dlmalloc cannot tell memory fresh from `memory.grow` (zero by
//! the wasm spec) from memory it handed out before, so `vec![0; n]` writes every
//! byte. For the KV cache that meant writing (and so making the browser commit)
//! every page of a 2,048-token window at load, 94 MB for SmolLM2 and 50-120 ms of
//! the load, though a short chat only ever reaches a few of its pages; the
//! weights were cleared before the repack wrote them again. Natively, glibc's
//! `calloc` already maps large blocks fresh, which is what this does here:
//!
//! - a block of at least [`LARGE`] bytes takes the best-fitting run of pages
//!   that large blocks freed before (cleared when zeroed memory is asked for), or
//!   else new pages from `memory.grow`, which are zero and so are not written;
//! - a freed large block's pages join the free runs, merged with their neighbours.
//!
//! Whether a block is large depends only on its layout, which `dealloc` and
//! `realloc` are given too, so no table of blocks is kept. Pages never return
//! to dlmalloc (wasm memory never shrinks either): the free runs serve the next
//! large blocks, such as the next model's weights and cache.

/// Blocks of at least this many bytes (aligned to at most a page) take pages of their own.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
const LARGE: usize = 1 << 20;

/// The wasm page.
const PAGE: usize = 64 * 1024;

/// Free runs remembered; a run freed when all are in use is forgotten (its pages are
/// lost to later blocks, never handed out twice).
const RUNS: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: usize,
    pages: usize,
}

impl Run {
    /// The first address past the run; wraps to 0 for a run ending at the top of a full
    /// 4 GiB memory, which then merges with nothing (no run starts at address 0).
    fn end(&self) -> usize {
        self.start.wrapping_add(self.pages * PAGE)
    }
}

/// The free runs, sorted by address, no two touching.
struct FreeRuns {
    runs: [Run; RUNS],
    len: usize,
}

impl FreeRuns {
    const fn new() -> Self {
        Self { runs: [Run { start: 0, pages: 0 }; RUNS], len: 0 }
    }

    /// The start of `pages` pages cut from the front of the smallest run that holds them.
    fn take(&mut self, pages: usize) -> Option<usize> {
        let i = (0..self.len).filter(|&i| self.runs[i].pages >= pages).min_by_key(|&i| self.runs[i].pages)?;
        let start = self.runs[i].start;
        if self.runs[i].pages == pages {
            self.runs.copy_within(i + 1..self.len, i);
            self.len -= 1;
        } else {
            self.runs[i] = Run { start: start + pages * PAGE, pages: self.runs[i].pages - pages };
        }
        Some(start)
    }

    /// Returns a run, merged with the free runs it touches.
    fn give(&mut self, run: Run) {
        let i = self.runs[..self.len].partition_point(|r| r.start < run.start);
        let joins_before = i > 0 && self.runs[i - 1].end() == run.start;
        let joins_after = i < self.len && run.end() == self.runs[i].start;
        match (joins_before, joins_after) {
            (true, true) => {
                self.runs[i - 1].pages += run.pages + self.runs[i].pages;
                self.runs.copy_within(i + 1..self.len, i);
                self.len -= 1;
            }
            (true, false) => self.runs[i - 1].pages += run.pages,
            (false, true) => self.runs[i] = Run { start: run.start, pages: run.pages + self.runs[i].pages },
            (false, false) if self.len < RUNS => {
                self.runs.copy_within(i..self.len, i + 1);
                self.runs[i] = run;
                self.len += 1;
            }
            (false, false) => {}
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use wasm::PageAllocator;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use super::{FreeRuns, Run, LARGE, PAGE};
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::UnsafeCell;
    use std::sync::atomic::{AtomicBool, Ordering};

    pub struct PageAllocator;

    /// The free runs behind a spin lock (held for a few hundred instructions; the
    /// threaded build allocates from several workers).
    struct Shared {
        busy: AtomicBool,
        runs: UnsafeCell<FreeRuns>,
    }

    // SAFETY: `runs` is only reached through `with_runs`, which holds `busy`.
    unsafe impl Sync for Shared {}

    static FREE: Shared = Shared { busy: AtomicBool::new(false), runs: UnsafeCell::new(FreeRuns::new()) };

    fn with_runs<R>(f: impl FnOnce(&mut FreeRuns) -> R) -> R {
        while FREE.busy.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        // SAFETY: `busy` is held, so no other reference to the runs exists.
        let r = f(unsafe { &mut *FREE.runs.get() });
        FREE.busy.store(false, Ordering::Release);
        r
    }

    fn is_large(layout: &Layout) -> bool {
        layout.size() >= LARGE && layout.align() <= PAGE
    }

    /// A large block: a free run (cleared when `zeroed`), or new pages, which are zero.
    fn large(layout: &Layout, zeroed: bool) -> *mut u8 {
        let pages = layout.size().div_ceil(PAGE);
        if let Some(start) = with_runs(|runs| runs.take(pages)) {
            if zeroed {
                // SAFETY: the run's pages are ours (freed by their last owner) and hold `size` bytes.
                unsafe { std::ptr::write_bytes(start as *mut u8, 0, layout.size()) };
            }
            return start as *mut u8;
        }
        match core::arch::wasm32::memory_grow::<0>(pages) {
            usize::MAX => std::ptr::null_mut(),
            previous => (previous * PAGE) as *mut u8,
        }
    }

    // SAFETY: small blocks are dlmalloc's; a large block is a run of pages no other
    // block overlaps (from `memory.grow`, or cut from runs only freed blocks gave back),
    // page-aligned, so any alignment up to a page holds.
    unsafe impl GlobalAlloc for PageAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if is_large(&layout) {
                large(&layout, false)
            } else {
                unsafe { System.alloc(layout) }
            }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if is_large(&layout) {
                large(&layout, true)
            } else {
                unsafe { System.alloc_zeroed(layout) }
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if is_large(&layout) {
                with_runs(|runs| runs.give(Run { start: ptr as usize, pages: layout.size().div_ceil(PAGE) }));
            } else {
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, fits an isize.
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            match (is_large(&layout), is_large(&new_layout)) {
                (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
                // Shrinking (or growing within its last page): in place, the pages past the end freed.
                (true, true) if new_size.div_ceil(PAGE) <= layout.size().div_ceil(PAGE) => {
                    let (kept, had) = (new_size.div_ceil(PAGE), layout.size().div_ceil(PAGE));
                    if kept < had {
                        with_runs(|runs| runs.give(Run { start: ptr as usize + kept * PAGE, pages: had - kept }));
                    }
                    ptr
                }
                _ => {
                    let moved = unsafe { self.alloc(new_layout) };
                    if !moved.is_null() {
                        unsafe {
                            std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                            self.dealloc(ptr, layout);
                        }
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{FreeRuns, Run, PAGE, RUNS};

    fn run(page: usize, pages: usize) -> Run {
        Run { start: page * PAGE, pages }
    }

    fn runs(f: &FreeRuns) -> Vec<(usize, usize)> {
        f.runs[..f.len].iter().map(|r| (r.start / PAGE, r.pages)).collect()
    }

    #[test]
    fn freed_runs_merge_with_their_neighbours() {
        let mut f = FreeRuns::new();
        f.give(run(10, 2));
        f.give(run(20, 5));
        f.give(run(14, 2));
        assert_eq!(runs(&f), [(10, 2), (14, 2), (20, 5)]);
        f.give(run(12, 2)); // joins both sides
        assert_eq!(runs(&f), [(10, 6), (20, 5)]);
        f.give(run(16, 4)); // joins both sides again
        assert_eq!(runs(&f), [(10, 15)]);
        f.give(run(4, 6)); // joins after it
        f.give(run(25, 1)); // joins before it
        assert_eq!(runs(&f), [(4, 22)]);
    }

    #[test]
    fn the_smallest_run_that_fits_is_cut_from_its_front() {
        let mut f = FreeRuns::new();
        f.give(run(0, 8));
        f.give(run(10, 3));
        f.give(run(20, 4));
        assert_eq!(f.take(3), Some(10 * PAGE)); // exact: the run goes
        assert_eq!(runs(&f), [(0, 8), (20, 4)]);
        assert_eq!(f.take(2), Some(20 * PAGE));
        assert_eq!(runs(&f), [(0, 8), (22, 2)]);
        assert_eq!(f.take(9), None);
        assert_eq!(f.take(8), Some(0));
        assert_eq!(runs(&f), [(22, 2)]);
    }

    #[test]
    fn a_full_table_forgets_runs_rather_than_overlapping_them() {
        let mut f = FreeRuns::new();
        for i in 0..RUNS + 5 {
            f.give(run(3 * i, 1));
        }
        assert_eq!(f.len, RUNS);
        // Every remembered run is distinct and separate.
        assert!(f.runs[..f.len].windows(2).all(|w| w[0].end() < w[1].start));
        // Pages can still be taken and given back.
        let start = f.take(1).unwrap();
        f.give(Run { start, pages: 1 });
        assert_eq!(f.len, RUNS);
    }
}
