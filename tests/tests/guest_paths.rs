//! Guest tests of issue 19's paths on the Debian 6.1 kernel: the path walk loads and is
//! right there too, in the mmap probe and in the mmap_region kprobe. Run by `cargo
//! xtask test` (or `cargo xtask vm -- /mmtrace/bin/guest_paths --test-threads=1`).

use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
};

use mmap_trace_tests::{
    driver,
    paths::{path_bytes, scenario_mapping, trace_json},
};

/// Odd names (newline, not UTF-8) come back exactly from both probes that saw the file:
/// the mmap syscall probe (the fd's file) and mmap_region (the file it was given).
#[test]
fn both_probes_record_exact_paths() {
    driver::require_guest();
    for scenario in ["name-newline", "name-not-utf8", "name-space"] {
        let (mmap, expected, events) = scenario_mapping(scenario);
        assert_eq!(
            path_bytes(&mmap),
            Some(expected.clone()),
            "{scenario}: mmap: {mmap}"
        );
        let region = events
            .iter()
            .find(|e| e["probe"] == "mmap_region" && e["file"] == mmap["file"])
            .unwrap_or_else(|| panic!("{scenario}: no mmap_region event for {}", mmap["file"]));
        assert_eq!(
            path_bytes(region),
            Some(expected),
            "{scenario}: mmap_region: {region}"
        );
    }
}

/// A short-lived static command: every file the kernel mapped for it (exec's mappings,
/// seen by mmap_region) has a full path naming that very inode.
#[test]
fn short_lived_command_has_full_paths() {
    driver::require_guest();
    let (_, events) = trace_json(&[OsStr::new("/bin/busybox"), OsStr::new("true")]);
    let files: Vec<_> = events.iter().filter(|e| e["file"].is_object()).collect();
    assert!(!files.is_empty(), "no file mapped: {events:?}");
    for e in files {
        let path = path_bytes(e).unwrap_or_else(|| panic!("no path: {e}"));
        assert!(
            e["path_truncated"].is_null() && path.first() == Some(&b'/'),
            "{e}"
        );
        let meta = std::fs::metadata(OsStr::from_bytes(&path))
            .unwrap_or_else(|err| panic!("stat: {err}: {e}"));
        assert_eq!(meta.ino(), e["file"]["ino"].as_u64().unwrap(), "{e}");
    }
}

/// Deep and long paths are cut and marked on this kernel too.
#[test]
fn cut_walks_are_marked_truncated() {
    driver::require_guest();
    for scenario in ["deep-path", "long-path"] {
        let (mmap, expected, _) = scenario_mapping(scenario);
        let got = path_bytes(&mmap).unwrap();
        assert_eq!(mmap["path_truncated"], true, "{scenario}: {mmap}");
        assert!(
            expected.ends_with(&got) && got[0] != b'/',
            "{scenario}: {mmap}"
        );
    }
}
