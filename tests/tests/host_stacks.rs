//! Host tests for issue 16: `trace --stacks` gives each syscall event a user stack,
//! unwound with `.eh_frame` (no frame pointers needed) and named from the files the trace
//! itself saw mapped, so a process that exited before its records were symbolized still
//! gets its function names. Real eBPF on this kernel; `cargo xtask test` runs them (root).

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    sync::Mutex,
};

use mmap_trace_tests::cli::{build_c, cli, stderr, trace_command, workload_path};

/// The unwinder must not need frame pointers.
const NO_FRAME_POINTERS: &[&str] = &["-O2", "-fomit-frame-pointer"];
use serde_json::Value;

/// One tracer at a time in this binary (2 shared cores).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// `trace --stacks --json -- argv`, with the symbolizer held back `delay_ms` (0: not),
/// returning the events; fails on any lost or malformed record.
fn trace_stacks(argv: &[&OsStr], delay_ms: u64) -> Vec<Value> {
    let env = [("MMTRACE_STACKS_TEST_DELAY_MS", delay_ms.to_string())];
    trace_command(&["--stacks"], &env, argv).1
}

/// The mmap events of `len` bytes.
fn mmaps_of_len(events: &[Value], len: u64) -> Vec<&Value> {
    let len = format!("{len:#x}");
    events
        .iter()
        .filter(|e| e["probe"] == "mmap" && e["len"] == len.as_str())
        .collect()
}

fn symbols(event: &Value) -> Vec<String> {
    event["stack"]
        .as_array()
        .unwrap_or_else(|| panic!("no stack: {event}"))
        .iter()
        .filter_map(|f| f["sym"].as_str().map(str::to_owned))
        .collect()
}

/// Every frame has an address; a frame with a file has its offset in it.
fn check_frames(event: &Value) {
    for frame in event["stack"].as_array().unwrap() {
        assert!(
            frame["addr"].as_str().is_some_and(|a| a.starts_with("0x")),
            "{event}"
        );
        if frame["file"].is_string() {
            assert!(
                frame["off"].as_str().is_some_and(|o| o.starts_with("0x")),
                "{event}"
            );
        }
    }
}

/// The workload's own function names its mmaps, in order below it: the marker, then
/// the workload's main. With the symbolizer held back until the workload has exited
/// (it lives for a few ms), and without.
#[test]
fn workload_mmaps_name_the_workload_function_even_after_it_exited() {
    let _one = serial();
    let workload = workload_path();
    for delay_ms in [0, 1500] {
        let events = trace_stacks(
            &[
                workload.as_os_str(),
                OsStr::new("--stack-marker"),
                OsStr::new("3"),
            ],
            delay_ms,
        );
        // Three 4-page mmaps, then the 3-page one that is left mapped (the runtime may
        // map 3 pages of its own before main: the signal stack).
        let first = events
            .iter()
            .position(|e| e["probe"] == "mmap" && e["len"] == "0x4000")
            .unwrap_or(events.len());
        let marked: Vec<_> = [4 * 4096, 3 * 4096]
            .iter()
            .flat_map(|&len| mmaps_of_len(&events[first..], len))
            .collect();
        assert_eq!(marked.len(), 4, "delay {delay_ms}: {events:#?}");
        for event in marked {
            check_frames(event);
            let syms = symbols(event);
            let marker = syms
                .iter()
                .position(|s| s == "mmtrace_workload_stack_marker")
                .unwrap_or_else(|| panic!("delay {delay_ms}: no marker frame: {event}"));
            assert!(
                syms[marker + 1..]
                    .iter()
                    .any(|s| s == "mmap_workload::main"),
                "delay {delay_ms}: main is not below the marker: {syms:?}"
            );
        }
        // Events without a user context of their own carry no stack; every syscall
        // event of the workload has one.
        for e in events
            .iter()
            .filter(|e| e["probe"] == "munmap" || e["probe"] == "brk")
        {
            assert!(e["stack"].as_array().is_some_and(|s| !s.is_empty()), "{e}");
        }
    }
}

/// The leak view: `report` of a live `--stacks` trace lists the mapping the workload
/// never unmapped under the workload's call site, with its size.
#[test]
fn report_lists_a_never_unmapped_mapping_by_call_site() {
    let _one = serial();
    let workload = workload_path();
    let out_file = std::env::temp_dir().join(format!("stacks-leak-{}.jsonl", std::process::id()));
    let run = cli()
        .args(["trace", "--stacks", "--json", "-o"])
        .arg(&out_file)
        .arg("--")
        .arg(&workload)
        .args(["--stack-marker", "2"])
        .output()
        .expect("run mmap-trace");
    assert!(run.status.success(), "{}", stderr(&run));
    let report = cli().arg("report").arg(&out_file).output().expect("report");
    let _ = std::fs::remove_file(&out_file);
    assert!(report.status.success(), "{}", stderr(&report));
    let text = String::from_utf8_lossy(&report.stdout);
    let leaks = &text[text
        .find("still mapped at exit, by call site:")
        .unwrap_or_else(|| panic!("no leak summary: {text}"))..];
    let site = leaks
        .find("12 KiB in 1 VMA(s), mapped at:")
        .unwrap_or_else(|| panic!("the planted 3-page mapping is not listed: {leaks}"));
    let frames: Vec<&str> = leaks[site..].lines().skip(1).take(4).collect();
    assert!(
        frames
            .iter()
            .any(|l| l.contains("mmtrace_workload_stack_marker")),
        "{frames:?}"
    );
}

/// A C program built without frame pointers: the unwinder walks it by `.eh_frame`, and
/// both of its nested functions are named, innermost first.
#[test]
fn c_program_without_frame_pointers_unwinds() {
    let _one = serial();
    let dir = std::env::temp_dir().join(format!("stacks-nofp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = build_nofp(&dir);
    let events = trace_stacks(&[program.as_os_str()], 0);
    let _ = std::fs::remove_dir_all(&dir);
    let ours = mmaps_of_len(&events, 5 * 4096);
    assert_eq!(ours.len(), 1, "{events:#?}");
    check_frames(ours[0]);
    let syms = symbols(ours[0]);
    let inner = syms.iter().position(|s| s == "nofp_inner_site");
    let outer = syms.iter().position(|s| s == "nofp_outer_site");
    let main = syms.iter().position(|s| s == "main");
    assert!(
        matches!((inner, outer, main), (Some(i), Some(o), Some(m)) if i < o && o < m),
        "{syms:?}"
    );
}

/// Bad input: an executable that deletes itself before its mmaps. Its frames cannot be
/// named (the file is gone: blazesym opens it by path), yet they keep their address,
/// file and offset, and the unwinder still walks through them (it read the file through
/// /proc/<pid>/exe while the process lived): libc's frames on both sides are named;
/// nothing fails.
#[test]
fn deleted_executable_keeps_file_and_offset() {
    let _one = serial();
    let dir = std::env::temp_dir().join(format!("stacks-deleted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = build_c(
        &dir,
        "selfdel",
        NO_FRAME_POINTERS,
        r#"#include <sys/mman.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) void *deleted_site(size_t len) {
    void *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    __asm__ volatile("" ::: "memory");
    return p;
}
int main(int argc, char **argv) {
    (void)argc;
    if (unlink(argv[0]) != 0) return 1;
    usleep(50000);
    printf("%p\n", deleted_site(13 * 4096));
    usleep(300000); /* /proc/<pid>/exe still holds the file meanwhile */
    return 0;
}
"#,
    );
    let events = trace_stacks(&[program.as_os_str()], 500);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!program.exists());
    let ours = mmaps_of_len(&events, 13 * 4096);
    assert_eq!(ours.len(), 1, "{events:#?}");
    check_frames(ours[0]);
    let frames = ours[0]["stack"].as_array().unwrap();
    assert!(
        frames[0]["sym"].is_string(),
        "libc's frame is named: {}",
        ours[0]
    );
    let exe = program.to_str().unwrap();
    let in_exe: Vec<_> = frames.iter().filter(|f| f["file"] == exe).collect();
    assert!(
        !in_exe.is_empty(),
        "no frame in the deleted file: {}",
        ours[0]
    );
    assert!(in_exe.iter().all(|f| f["sym"].is_null()), "{}", ours[0]);
    assert!(
        frames.iter().any(|f| f["sym"]
            .as_str()
            .is_some_and(|s| s.starts_with("__libc_start"))),
        "not unwound through the deleted file: {}",
        ours[0]
    );
}

fn build_nofp(dir: &Path) -> PathBuf {
    build_c(
        dir,
        "nofp",
        NO_FRAME_POINTERS,
        r#"#include <sys/mman.h>
#include <stdio.h>
__attribute__((noinline)) void *nofp_inner_site(size_t len) {
    void *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    __asm__ volatile("" ::: "memory");
    return p;
}
__attribute__((noinline)) void *nofp_outer_site(size_t len) {
    void *p = nofp_inner_site(len);
    __asm__ volatile("" ::: "memory");
    return p;
}
int main(void) { printf("%p\n", nofp_outer_site(5 * 4096)); return 0; }
"#,
    )
}
