//! glibc's allocator gives a thread that meets contention an arena of its own (up to eight
//! per core) and hands little of an arena's freed memory back to the system. Under a burst
//! (32 associations, the inference, heatmap and delivery threads) the freed decode buffers
//! then stay resident in many arenas at once: the daemon's peak RSS under 32 concurrent
//! studies was 654 MiB with the default and 434 MiB with two arenas, same work (see
//! docs/benchmarks.md). Two arenas keep it close to what is in use.

/// Arenas the daemon's allocator may use.
pub const ARENAS: i32 = 2;

/// Limits glibc's malloc arenas to [`ARENAS`], unless `MALLOC_ARENA_MAX` is set in the
/// environment (glibc then obeys that). Call before the runtime starts its threads; does
/// nothing on other C libraries.
pub fn limit() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called while the process has
        // one thread.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, ARENAS);
        }
    }
}
