//! The Linux mm selftests (7.x's tree) on this host, alone and under `mmap-trace verify`:
//! tests/src/selftests.rs says what is compared. Needs root; `cargo xtask test` builds
//! them and sets MMTRACE_SELFTESTS.

#[test]
fn mm_selftests_verify_and_keep_their_verdict() {
    mmap_trace_tests::selftests::run_suite();
}
