//! glibc allocator settings of the long-running processes (the proxy, `collect`): what they
//! keep of freed memory and when they hand it back. No-ops elsewhere.

/// Lets the allocator keep what it freed while calls flow: every span export allocates and frees
/// about a megabyte (the batch, its encoding, the gzip state), and with glibc's default
/// thresholds that memory went back to the system after each export and was faulted in again
/// for the next (about 240 page faults per export of 512 spans). Allocations up to 4 MiB come
/// from the heap and up to 8 MiB of free heap is kept; [`release_free_memory`] still hands it
/// all back once the proxy is quiet.
pub(crate) fn keep_freed_memory_while_busy() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

/// Returns the allocator's free pages to the system (glibc keeps them otherwise), so an idle
/// process's resident memory falls back after a burst (the proxy when it is quiet, `collect`
/// every second).
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
