//! The operating-system knob the proxy turns for its background threads: their priority
//! (its allocator settings are in `crate::memory`, shared with `collect`).

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
