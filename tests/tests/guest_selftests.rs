//! The guest kernel's own mm selftests (from its linux-source package), alone and under
//! `mmap-trace verify`: tests/src/selftests.rs says what is compared. Run by `cargo xtask
//! test` (or `cargo xtask vm -- /mmtrace/bin/guest_selftests --test-threads=1`).

#[test]
fn mm_selftests_verify_and_keep_their_verdict() {
    mmap_trace_tests::driver::require_guest();
    mmap_trace_tests::selftests::run_suite();
}
