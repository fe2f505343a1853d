//! The process allocator: jemalloc, for Rust's allocations and, through its
//! unprefixed `malloc`/`free` (on Linux), for librdkafka's too.
//!
//! The bridge's allocation pattern is hard on glibc's malloc: requests
//! allocate their records on either worker thread, librdkafka frees them in
//! bulk, a produce request's worth at a time, wherever the delivery reports are
//! served, and its own thread allocates and frees the produce requests. glibc's
//! per-thread cache holds 7 chunks of a size, so most of those frees took its
//! slow path (locked arenas, chunk consolidation): 12 % of the bridge's CPU
//! samples against 5 % of the parse ceiling's (`perf`, 256 connections).
//! jemalloc's thread caches and per-size bins take the same pattern cheaply;
//! bench/results/history.md has the figures.
//!
//! Set here, in the library, so that every binary of the crate uses it: the
//! service, its tools and tests, and the benchmark's parse ceiling and
//! publishing reference, which are measured against the bridge and must run
//! on the same allocator.

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::ffi::{CStr, c_char, c_int, c_void};

    unsafe extern "C" {
        /// jemalloc's control interface, under its unprefixed name: it links
        /// only when jemalloc's `malloc` and `free` are the process's, the ones
        /// librdkafka's C code calls.
        fn mallctl(
            name: *const c_char,
            old: *mut c_void,
            old_len: *mut usize,
            new: *mut c_void,
            new_len: usize,
        ) -> c_int;
    }

    #[test]
    fn c_code_allocates_with_jemalloc_too() {
        let mut version: *const c_char = std::ptr::null();
        let mut len = size_of::<*const c_char>();
        // SAFETY: "version" is a read-only `const char *` property, read into a
        // pointer-sized buffer whose size is passed along.
        let status = unsafe {
            mallctl(
                c"version".as_ptr(),
                (&raw mut version).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(status, 0);
        // SAFETY: jemalloc returns a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(version) }.to_string_lossy();
        assert!(version.starts_with("5."), "jemalloc {version}");
    }
}
