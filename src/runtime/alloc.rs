//! Allocator settings for long compression runs.

/// Large buffers larger than this get their own mapping, returned on free.
const MMAP_THRESHOLD: i32 = 64 << 20;

/// Free memory at the top of a heap that `free` keeps instead of returning.
const TRIM_THRESHOLD: i32 = 512 << 20;

/// Fixes glibc's mmap threshold at 64 MiB, so that freed memory goes back to
/// the operating system with [`trim`] (before each OBS sweep with large work
/// matrices, before each committed layer's forward pass and after it) instead
/// of staying in the heaps.
///
/// By default glibc raises the threshold (up to 32 MiB) each time a large
/// block is freed; a layer-by-layer run frees tens of megabytes per linear
/// from several threads, so with the default the heaps keep growing and the
/// process holds hundreds of MiB it no longer uses. A small threshold (1 MiB)
/// returns every buffer at once but makes every forward pass fault its
/// temporaries in afresh, which costs nearly a third of the run's time. At
/// 64 MiB the per-pass temporaries are reused from the heaps, buffers that
/// size or larger (a 13B model's activations and Hessians) still map and unmap
/// on their own, and [`trim`] hands the heaps' free pages back.
///
/// It also raises glibc's trim threshold (128 KiB once the mmap threshold is
/// fixed) to 512 MiB: otherwise `free` hands back the top of a heap as soon
/// as a large temporary is released, and the next pass faults the same pages
/// in again. Memory comes back at the points that call [`trim`].
/// Call it once, early in `main`. A no-op on other C libraries.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Returns the free pages of the allocator's heaps to the operating system
/// (glibc's `malloc_trim`); the calibration calls it before each OBS sweep
/// whose `n × n` matrices are large (32 MiB or more), before each committed
/// layer's forward pass (the sweeps' buffers sit in the main thread's heap,
/// the pass allocates in the workers') and after it. A no-op on other C
/// libraries.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
