//! Command-line interface (clap derive): the arguments, their defaults and help, shell
//! completions and man pages (`manual`).
//!
//! Owns turning arguments into each command's configuration. May not touch: what the
//! commands do (it hands trace, verify, verify-driver and report their configs) or how
//! they write.

pub mod manual;

use std::{ffi::OsString, path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use mmap_trace_common::{CgroupFilter, Probe, TargetFilter};

use crate::{
    kernel::btf::VMLINUX_BTF,
    kernel::loader::{DEFAULT_DRIVER_HOOKS, DEFAULT_RING_KIB, LoadOptions},
    output::Format,
    process::session::{SpawnCommand, Target},
    trace::{self, TraceConfig},
    verify::{self, VerifyConfig},
};

#[derive(Parser)]
#[command(
    name = "mmap-trace",
    version,
    about = "Trace mmap/VMA activity with eBPF and check it against the kernel's own view",
    long_about = "Trace mmap/VMA activity with eBPF and check it against the kernel's own view.\n\n\
        Syscall probes (mmap, munmap, mprotect, mremap, brk) use the raw sys_exit tracepoint \
        (x86-64) and work on any kernel with BPF ring buffers; kernel BTF is used where \
        present. Kernel probes (mmap_region, remap_pfn_range, the page-insertion family \
        vm_insert_page, vm_insert_pages, vmf_insert_pfn, vmf_insert_mixed, vm_iomap_memory, \
        remap_vmalloc_range and mmap_action, \
        the mmtrace_drv driver's mmap hook) need kprobes and BTF; where the kernel has no kprobes, or the driver is not \
        loaded, they are skipped with a note. trace, verify and verify-driver need root; \
        report does not."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream mmap/VMA events of one process, a command, processes by name, or everything.
    #[command(after_help = "Examples:\n  \
            mmap-trace trace -- /bin/ls /            trace a command from its first mapping\n  \
            mmap-trace trace --pid 1234 --json       JSON Lines, one object per event\n  \
            mmap-trace trace --comm nginx -d 10      every process named nginx, 10 seconds\n  \
            mmap-trace trace -d 5                    every process on the machine\n  \
            mmap-trace trace --cgroup /sys/fs/cgroup/foo.slice   a container's cgroup and below\n  \
            mmap-trace trace --json -- CMD | jq .    the command's own output goes to stderr\n  \
            mmap-trace trace -T -- CMD               times of day instead of seconds\n\n\
            --pid, --comm and -- CMD exclude each other; with none, every process is traced.\n\
            --cgroup narrows --comm, or the whole machine (not --pid or -- CMD).\n\
            Output: the trace is the product, so it goes to standard output (or -o FILE) \
            where pipes read it; the traced command's standard output is sent to standard \
            error instead, so `trace --json -- CMD | jq .` reads the trace alone and the \
            command's output still shows on the terminal (with -o FILE the command keeps its \
            standard output). Notes and warnings go to standard error.\n\
            Ctrl-C (or SIGTERM) stops the trace: the ring buffer is drained and a summary \
            with per-probe event and lost counts is written last. Lost events are also \
            warned about on stderr as they are counted (checked once a second).\n\
            Exit status: 0 when the trace ran (even with events lost: see the summary), \
            2 on error.")]
    Trace(TraceArgs),
    /// Run on every node until stopped: count every process's mmap/VMA activity and its
    /// live mapped memory, and expose them as Prometheus metrics and/or send them (and
    /// the events worth telling) over OTLP.
    #[command(after_help = "Examples:\n  \
            mmap-trace agent --metrics-addr 127.0.0.1:9464          every process; Prometheus scrapes /metrics\n  \
            mmap-trace agent --metrics-addr :9464 --faults          page faults and resident memory too\n  \
            mmap-trace agent --otlp-endpoint http://127.0.0.1:4318  OTLP/HTTP metrics and logs\n  \
            mmap-trace agent --metrics-addr 127.0.0.1:9464 --cgroup /sys/fs/cgroup/system.slice/docker-ID.scope\n\n\
            Series are labelled comm, cgroup, container_id and pod_uid (the container and pod \
            the cgroup path names: docker, containerd, CRI-O, podman, kubepods). Bounded: the \
            first --max-comms process names and --max-cgroups cgroups seen keep series of their \
            own; later ones are counted under \"other\". A process's model is let go at its exit.\n\
            SIGTERM or Ctrl-C: the ring buffer is drained, the metrics published a last time and \
            OTLP flushed, then the agent exits 0. Exit status 2 on error (an address in use, a \
            cgroup that does not exist…), with one line saying why. See docs/agent.md.")]
    Agent(AgentArgs),
    /// Trace one process (and the children it forks) and prove, after every event, that
    /// the kernel agrees.
    ///
    /// A shadow address space is built from the events alone (seeded from
    /// /proc/<pid>/maps at attach, or at the command's exec; a child's starts as its
    /// parent's at the fork) and compared with /proc/<pid>/maps after every change:
    /// start, end, perms, offset, device, inode and path. Besides mmap, munmap, mprotect,
    /// mremap and brk, a catch-all on the mm's write lock (the mm_lock probe) sees any
    /// other change, from any syscall, a fault (stack growth) or another task; a change
    /// the shadow does not model is adopted from the kernel's view and written as an
    /// `unmodelled` record naming its cause, never as a mismatch.
    ///
    /// To compare while nothing moves, the process is held with ptrace (PTRACE_SEIZE) as
    /// each change returns: the probes' SIGSTOP is swallowed and other threads are held
    /// with PTRACE_INTERRUPT, so no handler of the target runs, no syscall of it fails
    /// with EINTR and its parent sees no stop. What verify still changes: time (each
    /// checkpoint costs a maps read), and the target is ptraced meanwhile (TracerPid in
    /// /proc/<pid>/status; gdb or strace cannot attach to it at the same time, nor can
    /// it ptrace its own processes: LeakSanitizer's check at exit then fails, as under
    /// strace; ASAN_OPTIONS=detect_leaks=0 skips it).
    /// Exit status: 0 when everything agreed, 1 on any mismatch, on any lost event, or when
    /// nothing was checked (the target made no traced call), 2 on error.
    #[command(
        override_usage = "mmap-trace verify [OPTIONS] --pid <PID>\n       mmap-trace verify [OPTIONS] -- <CMD> [ARGS]...",
        after_help = "Examples:\n  \
            mmap-trace verify -- /bin/ls /\n  \
            mmap-trace verify --pid 1234 --json -o verify.jsonl"
    )]
    Verify(VerifyArgs),
    /// Prove a driver's mmap end to end: events, maps, PFNs, page tables, bytes.
    ///
    /// Maps each character device in this process with the kernel probes attached,
    /// touches every page, and checks: the device's mmap hook, found from the file's
    /// f_op->mmap (or 6.17+ f_op->mmap_prepare) through /proc/kallsyms, and seen with the
    /// VMA; mmap_region; the VMA flags the traced mapping API implies (remap_pfn_range and
    /// vm_iomap_memory: IO|PFNMAP|DONTEXPAND|DONTDUMP; vm_insert_page(s), vmf_insert_mixed:
    /// MIXEDMAP; vmf_insert_pfn: PFNMAP or MIXEDMAP); the PFNs the traced calls inserted ==
    /// the page tables (the mmtrace_drv module's walk of this process); the
    /// /proc/self/maps line; munmap. For mmtrace_drv's own devices also the driver's PFN
    /// list, the aa bb cc dd pattern, write()/read() coherency and the driver's VMA walk.
    /// A check that cannot apply says n/a and why, and never counts as a pass. Needs root
    /// and kprobes; the page-table checks need the mmtrace_drv module. Exit status: 0 no
    /// FAIL, 1 any FAIL, 2 error.
    #[command(name = "verify-driver")]
    VerifyDriver(VerifyDriverArgs),
    /// Replay a JSON trace into per-process address-space timelines: a text summary, or
    /// one self-contained HTML page with --html.
    #[command(after_help = "Examples:\n  \
            mmap-trace report trace.jsonl                      events, bytes, refusals, lost\n  \
            mmap-trace report trace.jsonl --html report.html   VMAs over time, per process")]
    Report(crate::report::ReportArgs),
    /// Print a shell completion script, generated from these definitions, to standard output.
    #[command(after_help = "Install (as root):\n  \
            mmap-trace completions bash > /usr/share/bash-completion/completions/mmap-trace\n  \
            mmap-trace completions zsh > /usr/local/share/zsh/site-functions/_mmap-trace\n  \
            mmap-trace completions fish > /usr/share/fish/vendor_completions.d/mmap-trace.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into DIR with --dir.
    #[command(after_help = "Read: mmap-trace man | man -l -\n\
            Install (as root): mmap-trace man --dir /usr/local/share/man/man1")]
    Man {
        /// Write mmap-trace.1 and mmap-trace-<command>.1 into DIR (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct VerifyDriverArgs {
    /// Character device(s) to map (repeatable), any driver's (e.g. /dev/hpet); default:
    /// /dev/mmtrace-kmalloc, /dev/mmtrace-vmalloc and /dev/mmtrace-fault.
    #[arg(long, value_name = "PATH")]
    device: Vec<PathBuf>,
    /// Map from this page of the device (the mmap offset, in pages).
    #[arg(long, value_name = "PAGES", default_value_t = 0)]
    offset: u64,
    /// Pages to map (mmtrace_drv's devices: default 4, or what is left after --offset;
    /// any other device: default 1).
    #[arg(long, value_name = "N")]
    pages: Option<u64>,
    /// MAP_PRIVATE instead of MAP_SHARED; mmtrace_drv's vmalloc device refuses
    /// copy-on-write mappings (the kmalloc and fault devices serve them).
    #[arg(long)]
    private: bool,
    /// JSON Lines: one object per check, a summary last.
    #[arg(long)]
    json: bool,
    /// Kernel BTF used to find struct field offsets for the kernel probes.
    #[arg(long, value_name = "PATH", default_value = VMLINUX_BTF)]
    btf: PathBuf,
    /// Self-test: doctor an input so that the checks must fail.
    #[arg(long, hide = true, value_enum)]
    plant: Option<crate::verify::driver::DriverPlant>,
}

#[derive(Args)]
#[group(id = "target", multiple = false)]
struct TargetArgs {
    /// Trace this process (its threads included).
    #[arg(long, short, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pid: Option<u32>,
    /// Trace processes whose name (comm, 15 bytes at most) is NAME.
    #[arg(long, short, value_name = "NAME")]
    comm: Option<String>,
    /// Run CMD, traced from before its first instruction; the trace ends when it exits.
    /// CMD and its arguments may be any bytes (they are passed to exec as they are).
    #[arg(last = true, value_name = "CMD", value_parser = clap::value_parser!(OsString))]
    command: Vec<OsString>,
}

#[derive(Args)]
#[group(id = "process", multiple = false, required = true)]
struct ProcessArgs {
    /// Verify this running process.
    #[arg(long, short, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pid: Option<u32>,
    /// Run CMD and verify it from its exec to its exit (any bytes, as for trace).
    #[arg(last = true, value_name = "CMD", value_parser = clap::value_parser!(OsString))]
    command: Vec<OsString>,
}

#[derive(Args)]
struct OutputArgs {
    /// JSON Lines output (one object per record, a summary object last).
    #[arg(long)]
    json: bool,
    /// Write records to FILE (created, or truncated if it exists) instead of standard output.
    /// Without it a traced command's standard output goes to standard error, so that
    /// standard output carries only the trace.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct TraceArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Stop after SECS seconds (fractions allowed).
    #[arg(long, short, value_name = "SECS", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Only processes in this cgroup v2 directory or below it (a container's or a systemd
    /// unit's cgroup, e.g. /sys/fs/cgroup/system.slice/foo.service), filtered in the
    /// kernel by cgroup id. JSON events name each process's cgroup in `cgroup`.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pid", "command"])]
    cgroup: Option<PathBuf>,
    /// Table times as the wall-clock time of day (HH:MM:SS.ffffff, local time) instead of
    /// seconds since the probes attached (JSON keeps ts_ns, CLOCK_MONOTONIC).
    #[arg(short = 'T', long = "time", conflicts_with = "json")]
    wall_clock: bool,
    #[command(flatten)]
    probes: ProbeArgs,
    /// Follow the children of --pid or -- CMD (and theirs), as strace -f does: each fork
    /// adds the child in the kernel, so nothing between the fork and its first call is
    /// missed; the trace ends when the target and every followed child have exited.
    #[arg(long, short = 'f')]
    follow_forks: bool,
    /// A user call stack on every syscall event (mmap, munmap, mprotect, mremap, brk and
    /// the catch-all's syscalls and faults), as bcc's -U: the probe copies the top 8 KiB
    /// of the user stack, mmap-trace unwinds it with each file's .eh_frame (no frame
    /// pointers needed) and names the functions from the files the trace saw mapped, so
    /// a process that already exited still gets names. JSON: a "stack" array of
    /// {addr, sym, file, off, src, line}; the table: the innermost frame outside libc
    /// after the event, and the whole stack below it. Costs up to ~8 KiB of ring buffer
    /// per event (the stack as deep as it is), so the default ring grows to 64 MiB.
    #[arg(long, short = 'U')]
    stacks: bool,
    /// Also trace what the mappings cost: every page fault of the target on a user
    /// address (probe `fault`: address, ip, read/write/exec, and the mapping it hit, from
    /// the same address-space model verify uses) and its resident memory by type (probe
    /// `rss`: anon, file, shmem, swap, a record per 256 KiB step of each). The summary
    /// lists the mappings with the most faults. One record per page touched: see
    /// docs/tracing.md for the volume a large memset makes.
    #[arg(long)]
    faults: bool,
}

#[derive(Args)]
struct AgentArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464, or
    /// 0.0.0.0:9464 for every interface).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Send metrics and logs with OTLP over HTTP/protobuf to this collector URL
    /// (/v1/metrics and /v1/logs are added). Without it, the OTEL_EXPORTER_OTLP_ENDPOINT
    /// (or _METRICS_/_LOGS_ENDPOINT) variable turns OTLP on.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Seconds between OTLP metric exports (OTEL_METRIC_EXPORT_INTERVAL, in ms, wins).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_duration)]
    otlp_interval: Duration,
    /// Only processes named NAME (the kernel's 15-byte comm).
    #[arg(long, short, value_name = "NAME")]
    comm: Option<String>,
    /// Only processes in this cgroup v2 directory or below it (a container's cgroup).
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Page faults (mmap_trace_page_faults_total) and resident memory by type
    /// (mmap_trace_resident_bytes) too: one record per fault, so more overhead.
    #[arg(long)]
    faults: bool,
    /// Process names with series of their own; later names count as "other".
    #[arg(long, value_name = "N", default_value_t = 100)]
    max_comms: usize,
    /// cgroups with series of their own; later ones count as "other".
    #[arg(long, value_name = "N", default_value_t = 100)]
    max_cgroups: usize,
    /// A mapping at least this large is told as an OTLP log (large_mapping).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    large_mapping_bytes: u64,
    /// Ring buffer size in KiB (a power of two from 4 to 1048576; default 4096, 16384
    /// with --faults).
    #[arg(long, value_name = "KIB", value_parser = parse_ring_kib)]
    ring_buffer_kib: Option<u32>,
    /// Kernel BTF used to find struct field offsets.
    #[arg(long, value_name = "PATH", default_value = VMLINUX_BTF)]
    btf: PathBuf,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    target: ProcessArgs,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    probes: ProbeArgs,
    /// Check only the target process, not the children it forks (followed by default:
    /// each child's shadow starts as its parent's at the fork, and every process is
    /// checked and summarized on its own).
    #[arg(long)]
    no_follow_forks: bool,
    /// Self-test: doctor an input so that the checks must fail.
    #[arg(long, hide = true, value_enum)]
    plant: Option<crate::verify::Plant>,
    /// Compare the PFN of every known file page at every checkpoint, not only of the
    /// pages that could have changed since their last check (slower; for self-tests).
    #[arg(long)]
    full: bool,
    /// Let idle CPUs sleep as usual. By default, while verify runs it asks the kernel for
    /// a CPU wake-up latency of zero (the PM QoS device /dev/cpu_dma_latency, released
    /// when verify ends): idle CPUs poll instead of halting, because each checkpoint hands
    /// the target back to a CPU that would otherwise have to be woken (tens of µs on a
    /// virtual machine; a checkpoint takes ~20 µs). Costs idle CPU time while verify runs;
    /// nothing is asked on a single CPU.
    #[arg(long)]
    cpus_may_sleep: bool,
}

#[derive(Args)]
struct ProbeArgs {
    /// Comma-separated probes to attach; default: every probe this kernel supports
    /// (kernel probes are skipped with a note where kprobes or the driver are missing; a
    /// kernel probe named here that cannot attach is an error). Names: mmap, munmap,
    /// mprotect, mremap, brk, exec, mm_lock (the catch-all: any other syscall, fault or
    /// task that write-locks the traced process's mm — shmat, madvise, mlock, stack growth…;
    /// a BTF tracepoint), fork (added by --follow-forks and by verify), mmap_region,
    /// remap_pfn_range, driver_mmap; the page-insertion family, one event per call with
    /// the VMA, the first user address and PFN and the page count: vm_insert_page (what
    /// .fault handlers and remap_vmalloc_range use), vm_insert_pages, vmf_insert_pfn (also
    /// vmf_insert_pfn_prot, which it may call: a call can then show twice),
    /// vmf_insert_mixed, vm_iomap_memory, remap_vmalloc_range (on
    /// remap_vmalloc_range_partial), mmap_action (6.17+: the kernel completing an
    /// f_op->mmap_prepare driver's mapping); a function this kernel lacks (mmap_action
    /// before 6.17) or has only inlined copies of is skipped with the reason; page_cache
    /// (file pages entering the page cache with their PFN: noisy, so not in trace's default
    /// set; verify adds it to check file pages against pagemap); fault and rss (added by
    /// trace --faults). verify -- CMD needs exec (the shadow starts at the command's exec);
    /// without mm_lock verify sees only the five calls and says so.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_probe)]
    probes: Option<Vec<Probe>>,
    /// Kernel BTF used to find struct field offsets for the kernel probes.
    #[arg(long, value_name = "PATH", default_value = VMLINUX_BTF)]
    btf: PathBuf,
    /// Ring buffer size in KiB (a power of two from 4 to 1048576). The default, 4 MiB,
    /// holds ~25 ms of the fastest single-process mmap/munmap loop, so a reader delayed
    /// that long by a busy machine loses nothing; with `trace --stacks` it is 64 MiB (a
    /// record with its stack is up to 8 KiB: the same ~25 ms); with trace --faults 16 MiB
    /// (~0.4 s of a loop writing fresh pages: 4 MiB lost 2% of a 1 GiB memset's faults in
    /// 1 run of 7 on a busy 2-CPU host).
    #[arg(long, value_name = "KIB", value_parser = parse_ring_kib)]
    ring_buffer_kib: Option<u32>,
    /// Kernel function(s) of the driver's mmap file operation to probe (repeatable).
    #[arg(long = "driver-hook", value_name = "SYMBOL", default_values_t = DEFAULT_DRIVER_HOOKS.iter().map(|s| s.to_string()))]
    driver_hooks: Vec<String>,
}

/// What a command's run says beyond success: `verify` disagreeing is exit status 1.
pub enum Outcome {
    Done,
    Disagreed,
}

impl Cli {
    pub fn run(self) -> Result<Outcome> {
        Ok(match self.command {
            Command::Trace(args) => {
                trace::run(args.into_config()?)?;
                Outcome::Done
            }
            Command::Agent(args) => {
                crate::agent::run(args.into_config()?)?;
                Outcome::Done
            }
            Command::Verify(args) => {
                let target = match args.target.pid {
                    Some(pid) => Target::Pid(pid),
                    None => Target::Command(command(args.target.command, &args.output)),
                };
                let mut load = args.probes.into_load_options();
                load.filter.follow_forks = u32::from(!args.no_follow_forks);
                let config = VerifyConfig {
                    target,
                    format: args.output.format(),
                    output: args.output.output,
                    load,
                    plant: args.plant,
                    full: args.full,
                    cpus_may_sleep: args.cpus_may_sleep,
                };
                if verify::run(config)? {
                    Outcome::Done
                } else {
                    Outcome::Disagreed
                }
            }
            Command::VerifyDriver(args) => {
                let devices = if args.device.is_empty() {
                    [
                        "/dev/mmtrace-kmalloc",
                        "/dev/mmtrace-vmalloc",
                        "/dev/mmtrace-fault",
                    ]
                    .map(PathBuf::from)
                    .to_vec()
                } else {
                    args.device
                };
                let config = crate::verify::driver::VerifyDriverConfig {
                    devices,
                    offset: args.offset,
                    pages: args.pages,
                    private: args.private,
                    format: if args.json {
                        Format::Json
                    } else {
                        Format::Table
                    },
                    btf: args.btf,
                    plant: args.plant,
                };
                if crate::verify::driver::run(config)? {
                    Outcome::Done
                } else {
                    Outcome::Disagreed
                }
            }
            Command::Report(args) => {
                crate::report::run(args)?;
                Outcome::Done
            }
            Command::Completions { shell } => {
                crate::cli::manual::completions(shell)?;
                Outcome::Done
            }
            Command::Man { dir } => {
                crate::cli::manual::man(dir.as_deref())?;
                Outcome::Done
            }
        })
    }
}

impl OutputArgs {
    fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            Format::Table
        }
    }
}

/// `-- CMD`: while the records go to standard output, the command's standard output goes
/// to standard error, so that a pipe (`| jq`, `| less`) gets the trace alone.
fn command(argv: Vec<std::ffi::OsString>, output: &OutputArgs) -> SpawnCommand {
    SpawnCommand {
        argv,
        stdout_to_stderr: output.output.is_none(),
    }
}

impl ProbeArgs {
    fn into_load_options(self) -> LoadOptions {
        LoadOptions {
            filter: TargetFilter::default(),
            cgroup: CgroupFilter::default(),
            requested: self.probes,
            btf: self.btf,
            ring_buffer_bytes: self.ring_buffer_kib.unwrap_or(DEFAULT_RING_KIB) * 1024,
            driver_hooks: self.driver_hooks,
            implicit: false,
            stacks: false,
        }
    }
}

impl AgentArgs {
    fn into_config(self) -> Result<crate::agent::AgentConfig> {
        let otlp_from_env = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
        if self.metrics_addr.is_none() && self.otlp_endpoint.is_none() && !otlp_from_env {
            anyhow::bail!(
                "the agent needs somewhere to put its metrics: --metrics-addr ADDR, \
                 --otlp-endpoint URL (or OTEL_EXPORTER_OTLP_ENDPOINT), or both"
            );
        }
        // The calls the metrics count, exec (a new program's space), the catch-all (every
        // other cause) and exit; fault and rss with --faults. No fork probe: it would put
        // every child on the machine in the followed set; a child is read from maps at
        // its first call instead. Kernel probes are not needed.
        let mut probes = vec![
            Probe::Mmap,
            Probe::Munmap,
            Probe::Mprotect,
            Probe::Mremap,
            Probe::Brk,
            Probe::Exec,
            Probe::MmLock,
            // Each process's state is let go at its exit record.
            Probe::Exit,
        ];
        if self.faults {
            probes.extend([Probe::Fault, Probe::Rss]);
        }
        let ring_kib = self.ring_buffer_kib.unwrap_or(if self.faults {
            FAULTS_RING_KIB
        } else {
            DEFAULT_RING_KIB
        });
        let mut load = LoadOptions {
            filter: TargetFilter::default(),
            cgroup: CgroupFilter::default(),
            requested: Some(probes),
            btf: self.btf,
            ring_buffer_bytes: ring_kib * 1024,
            driver_hooks: Vec::new(),
            // The catch-all needs BTF: skipped with a note where there is none.
            implicit: true,
            stacks: false,
        };
        if let Some(path) = &self.cgroup {
            load.cgroup = crate::process::cgroup::select(path)?;
        }
        if self.max_comms == 0
            || self.max_cgroups == 0
            || self.max_comms > 10_000
            || self.max_cgroups > 10_000
        {
            anyhow::bail!("--max-comms and --max-cgroups must be from 1 to 10000");
        }
        Ok(crate::agent::AgentConfig {
            target: match self.comm {
                Some(name) => Target::Comm(name),
                None => Target::All,
            },
            load,
            metrics_addr: self.metrics_addr,
            otlp: (self.otlp_endpoint.is_some() || otlp_from_env).then_some(
                crate::agent::OtlpConfig {
                    endpoint: self.otlp_endpoint,
                    interval: self.otlp_interval,
                },
            ),
            limits: crate::agent::Limits {
                max_comms: self.max_comms,
                max_cgroups: self.max_cgroups,
                large_bytes: self.large_mapping_bytes,
            },
            faults: self.faults,
            publish_interval: Duration::from_secs(1),
        })
    }
}

impl TraceArgs {
    fn into_config(self) -> Result<TraceConfig> {
        let t = self.target;
        let target = match (t.pid, t.comm, t.command.is_empty()) {
            (Some(pid), _, _) => Target::Pid(pid),
            (_, Some(comm), _) => Target::Comm(comm),
            (_, _, false) => Target::Command(command(t.command, &self.output)),
            _ => Target::All,
        };
        let ring_given = self.probes.ring_buffer_kib.is_some();
        let mut load = self.probes.into_load_options();
        load.filter.follow_forks = u32::from(self.follow_forks);
        load.stacks = self.stacks;
        if self.stacks && !ring_given {
            load.ring_buffer_bytes = STACKS_RING_KIB * 1024;
        }
        if self.faults {
            // --stacks' ring is the larger one.
            if !ring_given && !self.stacks {
                load.ring_buffer_bytes = FAULTS_RING_KIB * 1024;
            }
            // The default set stays the default (kernel probes skipped where missing);
            // the cost probes themselves must attach.
            let mut probes = load.requested.take().unwrap_or_else(|| {
                load.implicit = true;
                crate::kernel::loader::default_probes()
            });
            for probe in [Probe::Fault, Probe::Rss] {
                if !probes.contains(&probe) {
                    probes.push(probe);
                }
            }
            load.requested = Some(probes);
        }
        if let Some(path) = &self.cgroup {
            load.cgroup = crate::process::cgroup::select(path)?;
        }
        Ok(TraceConfig {
            target,
            format: self.output.format(),
            output: self.output.output,
            duration: self.duration,
            wall_clock: self.wall_clock,
            load,
        })
    }
}

/// The ring under `trace --stacks` (4 MiB otherwise: `DEFAULT_RING_KIB`): the bench loop
/// (`mmap-workload --loop 200000`, every event stacked) lost 11–18% of its events with
/// 4 MiB on the 2-core host, 4% with 16 MiB, none with 64 MiB (docs/stacks.md).
const STACKS_RING_KIB: u32 = 65536;

fn parse_probe(name: &str) -> Result<Probe, String> {
    Probe::ALL
        .iter()
        .copied()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            let names: Vec<_> = Probe::ALL.iter().map(|p| p.name()).collect();
            format!("unknown probe {name:?}; known probes: {}", names.join(", "))
        })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite() && secs < 1e9) {
        return Err(format!(
            "{s:?}: the duration must be a positive number of seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The ring with `trace --faults` (one record per page touched).
const FAULTS_RING_KIB: u32 = 16384;

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let kib: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err(format!(
            "{kib} KiB: the ring buffer must be a power of two from 4 KiB to 1 GiB"
        ));
    }
    Ok(kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_values() {
        assert!(parse_probe("mmap_region").is_ok());
        assert!(
            parse_probe("nope")
                .unwrap_err()
                .contains("known probes: mmap,")
        );
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("nan").is_err());
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_ring_kib("3").is_err());
        assert!(parse_ring_kib("6").is_err());
        assert_eq!(parse_ring_kib("64").unwrap(), 64);
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
