//! The `payple-reconcile` binary: parse the command line, set up logging, run the
//! command, exit with its status. Everything else lives in the library.

use clap::Parser;

use payple_reconcile::cli::Cli;
use payple_reconcile::{app, telemetry};

/// Rust's heap is mimalloc (built from C by the `cc` crate, no other tool needed); SQLite's
/// own allocations stay with the C library's malloc, tuned by [`bound_the_heap`].
/// Measured against the simulator at 100,000 keys (`/usr/bin/time`): 12.3-13.8 s of CPU
/// with glibc's malloc however tuned (two arenas, 256 KiB mmap threshold, with and without
/// fast bins, a 1,000-entry thread cache), 9.9 s with mimalloc; with it peak RSS was
/// 53.6 MiB at 100,000 keys and 55.2 MiB at 1,000,000 with freed pages going back at
/// once (now after 10 ms, a few MiB more: [`return_freed_pages_soon`]).
#[global_allocator]
static HEAP: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    return_freed_pages_soon();
    bound_the_heap();
    // One thread runs every task. The work is waiting on sockets and SQLite (whose
    // connections have their own threads): a lookup needs ~70 µs of CPU, and with a
    // multi-threaded runtime each one crossed threads several times (the key stream on
    // `block_on`'s thread, the connection tasks on workers). perf at 100,000 keys put 38%
    // of the job's CPU in the kernel, mostly waking threads (`finish_task_switch`, futex).
    // Measured at 10,000 keys against the simulator: 113-124 µs of CPU per lookup on the
    // multi-threaded runtime, 72-80 µs on this one; at 100,000 keys 6,191 against
    // 12,174-16,286 lookups/s.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    let status = runtime.block_on(run());
    // A reader still blocked on a pipe, a FIFO or a credential file when a signal ended
    // the command never returns: exit without waiting for it.
    runtime.shutdown_background();
    status
}

async fn run() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return app::usage_error(&e).into(),
    };
    telemetry::init(cli.log_format, &cli.log_level);
    app::execute(cli).await.into()
}

/// Keeps glibc's heap bounded: since Rust's heap is mimalloc, that is SQLite's own memory
/// (page caches, its copy of each batch). The figures below were measured when every
/// allocation went to glibc. Result rows were built on the runtime's thread and freed
/// after SQLite's worker threads have written them; by default glibc gives each thread
/// that allocates its own arena (up to eight per core), never reuses one arena's free
/// memory in another, and raises its mmap threshold after large frees, so a writer's
/// batch buffers end up on the heap for good. Measured peak RSS (`/usr/bin/time`, a
/// 200,000-key run against the simulator): 76 MiB by default, 64 MiB with two arenas,
/// 54 MiB with two arenas and a fixed 256 KiB mmap threshold (one arena: 53 MiB, but
/// 15% slower at a million keys). No fast bins either: each lookup's future is a few
/// KiB, and every allocation that size made glibc merge the fast bins first
/// (`malloc_consolidate`, with `_int_malloc` 10% of the job's CPU at 100,000 keys);
/// without them the job used 7% less CPU at the same peak RSS (small blocks still come
/// from glibc's per-thread cache). Set before any other thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_the_heap() {
    // SAFETY: mallopt only changes allocator tuning; it runs before any other thread
    // exists, and both parameters take any positive value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_MXFAST, 0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_the_heap() {}

/// mimalloc's `purge_delay` option (its position in `mi_option_t`, mimalloc 3's
/// `mimalloc.h`): how long freed pages stay resident before they go back to the system.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed pages go back to the system after 10 ms, not a second later (mimalloc 3's
/// default): with the second a written batch's pages were still resident when the next
/// batch grew (peak RSS 61.1 MiB at 100,000 keys with the default, 53.6 MiB without
/// delay). Without any delay, pages that lookups free and take again a moment later
/// were returned and faulted back in each time (`madvise` and page faults, ~11% of the
/// job's CPU at 30,000 keys); 10 ms keeps those and still returns a batch's pages
/// between two batches (CPU per lookup ~5% lower at 30,000 keys, peak RSS 1–5 MiB higher).
fn return_freed_pages_soon() {
    // SAFETY: sets one numeric option of the allocator; any value is valid.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_set_is_mimallocs_purge_delay() {
        // purge_delay defaults to 1,000 ms in mimalloc 3; the test harness never calls
        // `return_freed_pages_soon`. A mimalloc that renumbered its options fails here.
        // SAFETY: reads one option.
        let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 1000);
    }
}
