//! mmap-stress: load generators for the reliability tests (issue 7).
//!
//!   mmap-stress random [--seed S] [--requests N]
//!       A seeded random client of the three mmtrace_drv devices (the module must be loaded):
//!       mmap with every kind of length, offset, prot and flags, partial munmap, mprotect,
//!       mremap, fork with the mappings held, pread/pwrite and loads/stores through the
//!       mappings. Each request is checked against a model of the buffers and of this
//!       process's device mappings: served as the model says, or refused with the errno
//!       docs/driver.md's rules predict. Prints `seed=S` first; `--seed S` replays a run.
//!   mmap-stress concurrent --slot K --slots M [--threads T] [--rounds R]
//!       One of M processes hammering every device from T threads; each thread owns a
//!       disjoint part of the buffers, so any foreign byte in it is corruption.
//!   mmap-stress mremap-burst N
//!       N no-op mremap calls as fast as possible (a known number of traced events).
//!   mmap-stress fork-cases
//!       fork() with one private kmalloc-device mapping reshaped in one way per case
//!       (COW, munmap, mprotect, mremap); one `FORK-CASE` line each (docs/reliability.md, Found (2)).
//!
//! Every mode ends with one `STRESS-RESULT key=value …` line; a failure prints
//! `STRESS-FAIL …` (with the seed) and exits 1. For a replay, MMTRACE_STRESS_VERBOSE=1
//! prints every request and its answer, MMTRACE_STRESS_KMSG=1 every kernel log line at
//! warning level or worse next to the request that caused it.
//!
//! One file per mode (fork_cases, random + its model, concurrent, mremap_burst) and the
//! raw syscalls they share (sys).

mod concurrent;
mod fork_cases;
mod model;
mod mremap_burst;
mod random;
mod sys;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};

use mmap_trace_tests::driver::{DEV_PREFIX, DeviceKind, PAGE, PATTERN, live_maps, parse_maps, vm};
use mmap_trace_tests::stress::{Rng, errno_name};

use concurrent::*;
use fork_cases::*;
use model::*;
use mremap_burst::*;
use random::*;
use sys::*;

/// MAP_FIXED and mremap targets live in an arena of slots this size (PROT_NONE when free).
pub(crate) const SLOT_PAGES: u64 = 64;
pub(crate) const SLOTS: u64 = 24;
/// x86-64 user address space with 4-level page tables (the guest CPU has no LA57).
pub(crate) const TASK_SIZE: u64 = 0x7fff_ffff_f000;
/// Full consistency check (maps, counters, every mapped byte, every buffer) this often.
pub(crate) const CHECK_EVERY: u64 = 97;
/// Not too many live VMAs: beyond this, requests lean towards unmapping.
pub(crate) const MAX_VMAS: usize = 48;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num = |name: &str, default: u64| {
        opt(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} {v:?}: not a number"))
        })
    };
    match args.first().map(String::as_str) {
        Some("random") => {
            let seed = opt("--seed").map_or_else(
                || mmap_trace_tests::stress::seed_from("MMTRACE_STRESS_SEED"),
                |s| s.parse().expect("--seed N"),
            );
            random(seed, num("--requests", 10_000));
        }
        Some("concurrent") => concurrent(
            num("--slot", 0),
            num("--slots", 1),
            num("--threads", 2),
            num("--rounds", 20),
        ),
        Some("mremap-burst") => {
            mremap_burst(opt("mremap-burst").map_or(0, |n| n.parse().expect("N")))
        }
        Some("fork-cases") => fork_cases(),
        _ => {
            eprintln!(
                "usage: mmap-stress random [--seed S] [--requests N] | concurrent --slot K --slots M [--threads T] [--rounds R] | mremap-burst N"
            );
            std::process::exit(2);
        }
    }
}
