//! A child process's own peak resident memory, shared by the integration tests and the
//! benchmark.

/// The highest `VmHWM` (KiB) of `/proc/PID/status`, read every 2 ms until the process is
/// a zombie (its status has no memory lines any more).
///
/// Not `wait4`'s `ru_maxrss`: std spawns children with `posix_spawn` (`CLONE_VM`), and on
/// `execve` the kernel folds the spawning process's own peak into the child's figure
/// (seen: 266 MB for a 30 MB job spawned by the busy test binary). `VmHWM` belongs to
/// the child's own address space, made new by `execve`.
pub fn peak_rss_kib(pid: u32) -> i64 {
    let path = format!("/proc/{pid}/status");
    let mut peak = 0;
    loop {
        let hwm = std::fs::read_to_string(&path).ok().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        });
        match hwm {
            Some(kib) => peak = peak.max(kib),
            None => return peak,
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
