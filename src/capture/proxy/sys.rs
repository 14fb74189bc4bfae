//! The operating-system knobs the proxy turns: thread priority and returning free memory.

/// Lowers the calling thread's scheduling priority to nice 19, and so that of the threads it
/// starts afterwards: observation and span export are background work, and on a busy machine
/// the relay threads must get the CPU first.
pub(crate) fn background_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours; on
    // Linux, PRIO_PROCESS with a thread id changes only that thread.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

/// Returns the allocator's free pages to the system (glibc keeps them otherwise), so an idle
/// proxy's resident memory falls back after a burst.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
