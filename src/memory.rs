//! Memory the process no longer uses goes back to the system. glibc's allocator keeps the pages
//! a burst of work freed (a cold scan's listings, a full pass's reads) in its arenas, so the
//! resident size stays near the burst's peak long after the heap has shrunk (at 1,000 releases:
//! 26 MiB live, 70 MiB resident; docs/SCALING.md). `malloc_trim` returns them; the controller
//! calls it when its queue goes idle after work ([`crate::controller::queue::trim_due`]). Other
//! allocators (musl's, in the image) return freed pages themselves: nothing to do there.

/// Hands the allocator's free pages back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn give_back_freed() {
    // SAFETY: malloc_trim only releases memory the allocator holds free; it takes no pointer
    // and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Hands the allocator's free pages back to the system (nothing to do with this allocator).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn give_back_freed() {}
