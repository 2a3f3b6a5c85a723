//! Guest tests of the kernel probes: the real eBPF programs on the Debian 6.1 guest kernel
//! (which has kprobes) against the real mmtrace_drv module. Run by `cargo xtask test`.

use mmap_trace_tests::{
    cli::{cli, json_lines, split_summary, stderr, stdout, workload_path},
    driver::{self, DeviceKind, Module, PAGE},
    faults::hex,
    workload::{match_calls, parse_calls},
};
use serde_json::Value;

/// VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP: what remap_pfn_range sets.
const PFNMAP_FLAGS: [&str; 4] = ["IO", "PFNMAP", "DONTEXPAND", "DONTDUMP"];

/// Traces the workload (optionally mapping a device) with every probe; returns the calls
/// it reported and the events.
/// [`trace_workload`] of the workload mapping `pages` pages of the device `dev` from page
/// `offset`, with `extra` workload flags.
fn trace_device(
    dev: &str,
    pages: u64,
    offset: u64,
    extra: &[&str],
) -> (Vec<mmap_trace_tests::workload::Call>, Vec<Value>) {
    let (pages, offset) = (pages.to_string(), offset.to_string());
    let mut args = vec!["--device", dev, "--pages", &pages, "--offset", &offset];
    args.extend_from_slice(extra);
    trace_workload(&args)
}

fn trace_workload(extra: &[&str]) -> (Vec<mmap_trace_tests::workload::Call>, Vec<Value>) {
    driver::require_guest();
    let out_file = format!("/tmp/guest-trace-{}.jsonl", std::process::id());
    let run = cli()
        .args(["trace", "--json", "--output", &out_file, "--"])
        .arg(workload_path())
        .args(extra)
        .output()
        .expect("run mmap-trace");
    assert!(run.status.success(), "mmap-trace failed: {}", stderr(&run));
    let text = std::fs::read_to_string(&out_file).expect("trace output");
    let records = json_lines(&text);
    let (events, summary) = split_summary(&records);
    assert_eq!(summary["lost_total"], 0, "{summary}");
    let calls = parse_calls(&stdout(&run));
    if let Err(e) = match_calls(&calls, events) {
        panic!("{e}\ntrace:\n{text}");
    }
    (calls, events.to_vec())
}

fn by_probe<'a>(events: &'a [Value], probe: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["probe"] == probe).collect()
}

/// Issue #2's guest smoke test: an aya kprobe on mmap_region fires for a known mmap, and
/// the driver skeleton loads and unloads.
#[test]
fn kprobe_on_mmap_region_fires_for_a_known_mmap() {
    let module = Module::load(16).expect("insmod mmtrace_drv");
    let (calls, events) = trace_workload(&[]);
    let first = &calls[0]; // mmap(NULL, 4 pages, RW, PRIVATE|ANONYMOUS)
    let regions = by_probe(&events, "mmap_region");
    assert!(
        regions
            .iter()
            .any(|e| e["len"] == format!("{:#x}", first.args[1])
                && hex(&e["ret_addr"]) == first.ret as u64),
        "no mmap_region event for {first:?} in {regions:?}"
    );
    // The file mapping with an offset: pgoff 1, the temp file's name.
    assert!(
        regions.iter().any(|e| e["pgoff"] == "0x1"
            && e["file"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("mmap-workload-"))),
        "no file-backed mmap_region event with pgoff 1: {regions:?}"
    );
    // The mmap syscall event's file (read from the fd table at sys_exit) is the very
    // file mmap_region saw (read from the file pointer it was given).
    let region_file = &regions.iter().find(|e| e["pgoff"] == "0x1").unwrap()["file"];
    let call_file = &by_probe(&events, "mmap")
        .into_iter()
        .find(|e| e["fd"].as_i64() >= Some(0))
        .unwrap()["file"];
    assert_eq!(call_file, region_file, "mmap's file vs mmap_region's");
    module.unload().expect("rmmod mmtrace_drv");
}

/// The device mappings seen by all three kernel probes: the driver hook, mmap_region and
/// remap_pfn_range, with PFNs equal to the driver's own list.
fn check_device_mapping(kind: DeviceKind, pages: u64, offset: u64) {
    let module = Module::load(16).expect("insmod mmtrace_drv");
    let pfns = driver::buffer_pfns(kind).expect("driver PFN list");
    let dev = kind.dev_path();
    let (calls, events) = trace_device(&dev, pages, offset, &[]);
    let dev_map = calls
        .iter()
        // The device is mapped after the temp file: the last fd-backed mmap of that size.
        .rev()
        .find(|c| c.call == "mmap" && c.args[4] != u64::MAX && c.args[5] == offset * PAGE && c.args[1] == pages * PAGE)
        .expect("the workload's device mmap");
    let addr = dev_map.ret as u64;
    assert!(dev_map.ret > 0, "device mmap failed: {dev_map:?}");
    let dev_name = dev.trim_start_matches("/dev/");

    let hooks = by_probe(&events, "driver_mmap");
    assert_eq!(hooks.len(), 1, "one driver_mmap event: {hooks:?}");
    let hook = hooks[0];
    assert_eq!(hook["ret"], 0, "{hook}");
    for side in ["before", "after"] {
        assert_eq!(hex(&hook[side]["start"]), addr, "{side}: {hook}");
        assert_eq!(
            hex(&hook[side]["end"]),
            addr + pages * PAGE,
            "{side}: {hook}"
        );
        assert_eq!(hook[side]["file"]["name"], dev_name, "{side}: {hook}");
    }
    assert_eq!(hex(&hook["before"]["pgoff"]), offset, "{hook}");
    let after_flags = hook["after"]["flags"].as_str().unwrap();
    for flag in PFNMAP_FLAGS {
        assert!(
            after_flags.split('|').any(|f| f == flag),
            "after.flags lacks {flag}: {hook}"
        );
        assert!(
            !hook["before"]["flags"]
                .as_str()
                .unwrap()
                .split('|')
                .any(|f| f == flag),
            "before.flags already has {flag}: {hook}"
        );
    }

    let region = by_probe(&events, "mmap_region")
        .into_iter()
        .find(|e| e["file"]["name"] == dev_name)
        .unwrap_or_else(|| panic!("no mmap_region event for {dev}"));
    assert_eq!(hex(&region["ret_addr"]), addr, "{region}");
    assert_eq!(hex(&region["len"]), pages * PAGE, "{region}");
    assert_eq!(hex(&region["pgoff"]), offset, "{region}");
    let call = by_probe(&events, "mmap")
        .into_iter()
        .rev() // the device is mapped last; an earlier mapping may have used the address
        .find(|e| e.get("ret_addr").is_some_and(|a| hex(a) == addr))
        .unwrap_or_else(|| panic!("no mmap event returning {addr:#x}"));
    assert_eq!(
        call["file"], region["file"],
        "the device by its fd and by mmap_region: {call}"
    );
    assert_eq!(call["file"]["name"], dev_name, "{call}");

    let remaps = by_probe(&events, "remap_pfn_range");
    let expected: Vec<u64> = pfns[offset as usize..(offset + pages) as usize].to_vec();
    match kind {
        DeviceKind::Kmalloc => {
            assert_eq!(
                remaps.len(),
                1,
                "kmalloc maps with ONE remap_pfn_range: {remaps:?}"
            );
            let r = remaps[0];
            assert_eq!(hex(&r["addr"]), addr, "{r}");
            assert_eq!(hex(&r["size"]), pages * PAGE, "{r}");
            assert_eq!(
                hex(&r["pfn"]),
                expected[0],
                "first PFN vs the driver's list: {r}"
            );
            // One call covers the range only if the buffer is physically contiguous.
            assert!(
                expected.windows(2).all(|w| w[1] == w[0] + 1),
                "{expected:x?}"
            );
        }
        DeviceKind::Fault => panic!("the fault device maps pages on touch, not at mmap"),
        DeviceKind::Vmalloc => {
            assert_eq!(
                remaps.len() as u64,
                pages,
                "vmalloc: one remap per page: {remaps:?}"
            );
            for (i, r) in remaps.iter().enumerate() {
                assert_eq!(hex(&r["addr"]), addr + i as u64 * PAGE, "{r}");
                assert_eq!(hex(&r["size"]), PAGE, "{r}");
                assert_eq!(
                    hex(&r["pfn"]),
                    expected[i],
                    "page {i} PFN vs the driver's list: {r}"
                );
            }
        }
    }
    for r in &remaps {
        assert_eq!(hex(&r["vma"]["start"]), addr, "{r}");
        assert_eq!(
            r["vma"]["vma"], hook["before"]["vma"],
            "same vm_area_struct: {r}"
        );
    }
    module.unload().expect("rmmod mmtrace_drv");
}

#[test]
fn kmalloc_device_mapping_seen_by_every_probe() {
    check_device_mapping(DeviceKind::Kmalloc, 4, 0);
}

#[test]
fn kmalloc_device_mapping_with_offset() {
    check_device_mapping(DeviceKind::Kmalloc, 3, 5);
}

#[test]
fn vmalloc_device_mapping_one_remap_per_page() {
    check_device_mapping(DeviceKind::Vmalloc, 4, 0);
}

#[test]
fn vmalloc_device_mapping_with_offset() {
    check_device_mapping(DeviceKind::Vmalloc, 2, 7);
}

/// The lazy device: mmap inserts nothing; each touch inserts one page with
/// vm_insert_page, in the order touched (the workload reads the last page first), at the
/// driver's PFN for that page, between the mmap and the munmap.
#[test]
fn fault_device_pages_inserted_one_by_one_as_touched() {
    let module = Module::load(16).expect("insmod mmtrace_drv");
    let (pages, offset) = (4u64, 3u64);
    let pfns = driver::buffer_pfns(DeviceKind::Fault).expect("driver PFN list");
    let dev = DeviceKind::Fault.dev_path();
    let (calls, events) = trace_device(&dev, pages, offset, &["--touch"]);
    let dev_map = calls
        .iter()
        .rev()
        .find(|c| c.call == "mmap" && c.args[5] == offset * PAGE && c.args[1] == pages * PAGE)
        .expect("the workload's device mmap");
    let addr = dev_map.ret as u64;
    assert!(dev_map.ret > 0, "device mmap failed: {dev_map:?}");
    let hook = by_probe(&events, "driver_mmap")[0];
    let after = hook["after"]["flags"].as_str().unwrap();
    for flag in ["MIXEDMAP", "DONTEXPAND", "DONTDUMP"] {
        assert!(
            after.split('|').any(|f| f == flag),
            "after.flags lacks {flag}: {hook}"
        );
    }
    assert!(!after.split('|').any(|f| f == "PFNMAP"), "{hook}");
    assert!(
        by_probe(&events, "remap_pfn_range").is_empty(),
        "the fault device maps nothing at mmap"
    );
    let position = |e: &Value| events.iter().position(|x| std::ptr::eq(x, e)).unwrap();
    let mmap_at = events
        .iter()
        .position(|e| e["probe"] == "mmap" && e.get("ret_addr").is_some_and(|a| hex(a) == addr))
        .expect("the device mmap event");
    let munmap_at = events
        .iter()
        .position(|e| e["probe"] == "munmap" && hex(&e["addr"]) == addr)
        .expect("the device munmap event");
    let inserts = by_probe(&events, "vm_insert_page");
    let got: Vec<(u64, u64)> = inserts
        .iter()
        .map(|e| (hex(&e["addr"]), hex(&e["pfn"])))
        .collect();
    let want: Vec<(u64, u64)> = (0..pages)
        .rev()
        .map(|p| (addr + p * PAGE, pfns[(offset + p) as usize]))
        .collect();
    assert_eq!(
        got, want,
        "one vm_insert_page per touched page, in touch order: {inserts:#?}"
    );
    for e in &inserts {
        let at = position(e);
        assert!(
            mmap_at < at && at < munmap_at,
            "insert outside mmap..munmap: {e}"
        );
        assert_eq!(hex(&e["vma"]["start"]), addr, "{e}");
        assert_eq!(e["pages"], 1, "{e}");
        assert_eq!(
            e["vma"]["vma"], hook["before"]["vma"],
            "same vm_area_struct: {e}"
        );
    }
    module.unload().expect("rmmod mmtrace_drv");
}

/// Where kprobes exist, asking for BTF that is not there is a clear error.
#[test]
fn missing_btf_is_a_clear_error() {
    driver::require_guest();
    let out = cli()
        .args([
            "trace",
            "--probes",
            "mmap_region",
            "--btf",
            "/no/such/btf",
            "-d",
            "0.1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read kernel BTF from /no/such/btf"),
        "{}",
        stderr(&out)
    );
}

/// Without the module, the driver hook is skipped with a reason, the rest still runs.
#[test]
fn driver_hook_skipped_without_the_module() {
    driver::require_guest();
    let _lock = Module::lock().expect("module lock");
    let out = cli().args(["trace", "-d", "0.2"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kernel probes skipped (driver_mmap)")
            && stderr(&out).contains("load the mmtrace_drv module first"),
        "{}",
        stderr(&out)
    );
    let out = cli()
        .args(["trace", "--probes", "driver_mmap"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot trace driver_mmap"),
        "{}",
        stderr(&out)
    );
}

/// The probes' aya-log records reach the CLI's logger (RUST_LOG).
#[test]
fn probe_log_messages_reach_the_cli_logger() {
    let module = Module::load(16).expect("insmod mmtrace_drv");
    let out = cli()
        .env("RUST_LOG", "info")
        .args(["trace", "--json", "--output", "/tmp/log-trace.jsonl", "--"])
        .arg(workload_path())
        .args(["--device", "/dev/mmtrace-kmalloc"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("driver mmap hook returned 0"),
        "{}",
        stderr(&out)
    );
    module.unload().expect("rmmod mmtrace_drv");
}

/// `--faults` on the guest's own fault source (x86's exceptions:page_fault_* raw
/// tracepoints; arm64's perf software page-fault event, which carries no access type):
/// exactly one fault per page written in each of the three regions (1, 100 and 10,000
/// pages), attributed to the region's VMA, none on the guard pages.
#[test]
fn faults_per_region_are_exact() {
    driver::require_guest();
    mmap_trace_tests::faults::assert_faults_per_region();
}

/// `--stacks` in the guest: the workload's own function names each of its three 4-page
/// mmaps, with its main below it, and every frame is a user address. On arm64 that means
/// the unwinder started from lr and stripped the pointer-authentication bits Debian's
/// libc signs its return addresses with (a signed address is above 2^48).
#[test]
fn stacks_name_the_workload_function() {
    use std::ffi::OsStr;
    driver::require_guest();
    let workload = workload_path();
    let (_, events) = mmap_trace_tests::cli::trace_command(
        &["--stacks"],
        &[],
        &[
            workload.as_os_str(),
            OsStr::new("--stack-marker"),
            OsStr::new("3"),
        ],
    );
    let marked: Vec<&Value> = events
        .iter()
        .filter(|e| e["probe"] == "mmap" && e["len"] == "0x4000")
        .collect();
    assert_eq!(marked.len(), 3, "{events:#?}");
    for event in marked {
        let frames = event["stack"]
            .as_array()
            .unwrap_or_else(|| panic!("no stack: {event}"));
        for frame in frames {
            assert!(hex(&frame["addr"]) < 1 << 48, "not a user address: {event}");
        }
        let syms: Vec<&str> = frames.iter().filter_map(|f| f["sym"].as_str()).collect();
        let marker = syms
            .iter()
            .position(|s| *s == "mmtrace_workload_stack_marker")
            .unwrap_or_else(|| panic!("no marker frame: {syms:?}"));
        assert!(
            syms[marker + 1..].contains(&"mmap_workload::main"),
            "main is not below the marker: {syms:?}"
        );
    }
}
