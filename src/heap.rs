//! The process's heaps, set up once before the runtime starts: mimalloc for Rust's
//! allocations, glibc's malloc (which SQLite's own allocations use) kept bounded.
//! The figures behind each setting: docs/performance.md, "Allocator".

/// Rust's heap is mimalloc: ~20% less CPU than glibc's malloc however tuned.
#[global_allocator]
static HEAP: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its position in `mi_option_t`, mimalloc 3's
/// `mimalloc.h`): how long freed pages stay resident before they go back to the system.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed pages, in milliseconds.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Tunes both heaps. Call first in `main`, before any other thread exists.
pub fn set_up() {
    return_freed_pages_soon();
    bound_the_c_heap();
}

/// Freed pages go back after 10 ms, not mimalloc's default second: a written batch's pages
/// are returned before the next batch grows, while pages lookups free and take again stay.
fn return_freed_pages_soon() {
    // SAFETY: sets one numeric option of the allocator; any value is valid.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
    }
}

/// glibc's heap holds SQLite's page caches and its copy of each batch: two arenas and a
/// fixed mmap threshold keep freed batch buffers from staying on the heap for good, and no
/// fast bins spares the merging (`malloc_consolidate`) that cost ~7% of the CPU.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_the_c_heap() {
    // SAFETY: mallopt only changes allocator tuning; it runs before any other thread
    // exists, and each parameter takes any non-negative value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_MXFAST, 0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_the_c_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_set_is_mimallocs_purge_delay() {
        // purge_delay defaults to 1,000 ms in mimalloc 3; the test harness never calls
        // `set_up`. A mimalloc that renumbered its options fails here.
        // SAFETY: reads one option.
        let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 1000);
    }
}
