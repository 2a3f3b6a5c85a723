//! Loading the eBPF object with the target filter and kernel offsets, and attaching the
//! chosen probes. Probes that this kernel cannot serve are skipped with a reason.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, KProbe, RawTracePoint, TracePoint},
};
use mmap_trace_common::{
    CgroupFilter, FilemapFormat, KernelOffsets, MmOffsets, PROBE_COUNT, PageMap, Probe, RssFormat,
    TargetFilter, TaskOffsets,
};

use crate::kernel::{btf, preempt, tracefs};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mmap-trace"));

/// The eBPF object every program of the tool is in (mmap-trace-ebpf, built by build.rs).
pub fn ebpf_object() -> &'static [u8] {
    EBPF_OBJECT
}

/// `--ring-buffer-kib` when not given (cli/ says why; `trace --stacks` and `--faults`
/// have larger ones).
pub const DEFAULT_RING_KIB: u32 = 4096;

/// The kernel functions the driver's file operations use for mmap (see driver/).
pub const DEFAULT_DRIVER_HOOKS: &[&str] = &[
    "mmtrace_kmalloc_mmap",
    "mmtrace_vmalloc_mmap",
    "mmtrace_fault_mmap",
];

const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// Where in `task_struct` the compat-syscall mark is, for kernels without BTF:
/// `thread_info.status` on x86-64 since 5.11 (thread_info comes first: flags,
/// syscall_work, status); `thread_info.flags` on arm64 (its first field).
#[cfg(target_arch = "x86_64")]
const TI_STATUS_FALLBACK: u32 = 16;
#[cfg(target_arch = "aarch64")]
const TI_STATUS_FALLBACK: u32 = 0;

pub struct LoadOptions {
    pub filter: TargetFilter,
    /// `trace --cgroup` (id 0: none).
    pub cgroup: CgroupFilter,
    /// Probes the user asked for by name; None: every probe this kernel supports.
    pub requested: Option<Vec<Probe>>,
    pub btf: PathBuf,
    pub ring_buffer_bytes: u32,
    pub driver_hooks: Vec<String>,
    /// `requested` was chosen by the command, not the user: skip what this kernel cannot
    /// serve instead of failing.
    pub implicit: bool,
    /// `trace --stacks`: append the user stack to syscall and catch-all records, and
    /// report where exec put the executable and interpreter.
    pub stacks: bool,
}

type Logger = std::sync::Arc<std::sync::Mutex<aya_log::EbpfLogger<&'static dyn log::Log>>>;

pub struct Tracer {
    pub ebpf: Ebpf,
    /// aya-log records from the probes, forwarded to the CLI's logger by a thread.
    logger: Option<Logger>,
    pub attached: Vec<Probe>,
    /// (probe, why it is not attached), for probes skipped when not explicitly requested.
    pub skipped: Vec<(Probe, String)>,
    /// The syscall hooks run as gated copies, which count their own lost calls.
    gated: bool,
}

impl Tracer {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let mut wanted: Vec<Probe> = opts.requested.clone().unwrap_or_else(default_probes);
        if opts.filter.follow_forks != 0 && !wanted.contains(&Probe::Fork) {
            wanted.push(Probe::Fork);
        }
        // --stacks places the executable and its loader from exec's record: no mmap
        // event shows them.
        if opts.stacks && !wanted.contains(&Probe::Exec) {
            wanted.push(Probe::Exec);
        }
        // Whatever keeps state per process (the followed set, the stack symbolizer's and
        // the fault attribution's mappings) releases it at the process's end.
        let keeps_state =
            opts.filter.follow_forks != 0 || opts.stacks || wanted.contains(&Probe::Fault);
        if keeps_state && !wanted.contains(&Probe::Exit) {
            wanted.push(Probe::Exit);
        }
        let explicit = opts.requested.is_some() && !opts.implicit;
        let mut skipped = Vec::new();
        let mut chosen = Vec::new();
        let kprobes_available = Path::new(KPROBE_PMU).exists();
        // /proc/kallsyms is large: read it only when a kprobe can be attached.
        let kallsyms = if kprobes_available && wanted.iter().any(|p| p.is_kprobe()) {
            std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?
        } else {
            String::new()
        };
        let driver_hooks = if wanted.contains(&Probe::DriverMmap) {
            present_driver_hooks(&kallsyms, &opts.driver_hooks)
        } else {
            Vec::new()
        };
        for probe in wanted {
            let unavailable = if probe == Probe::MmLock && !Path::new(&opts.btf).exists() {
                Some(format!(
                    "the catch-all is a BTF tracepoint and {} is missing",
                    opts.btf.display()
                ))
            } else if !probe.is_kprobe() {
                None
            } else if !kprobes_available {
                Some(format!(
                    "this kernel has no kprobes ({KPROBE_PMU} is missing: CONFIG_KPROBES is unset)"
                ))
            } else if let Some(function) = probe.kernel_functions().first()
                && !in_kallsyms(&kallsyms, function)
            {
                Some(missing_function(&kallsyms, function))
            } else if probe == Probe::DriverMmap && driver_hooks.is_empty() {
                Some(format!(
                    "none of the driver's mmap functions ({}) is in /proc/kallsyms: \
                     load the mmtrace_drv module first",
                    opts.driver_hooks.join(", ")
                ))
            } else {
                None
            };
            match unavailable {
                Some(why) if explicit => bail!("cannot trace {}: {why}", probe.name()),
                Some(why) => skipped.push((probe, why)),
                None => chosen.push(probe),
            }
        }
        if chosen.is_empty() {
            bail!("no probe left to attach");
        }

        tracefs::ensure_mounted()?;
        let kprobes = chosen.iter().any(|p| p.is_kprobe());
        let syscalls = chosen.iter().any(|p| p.is_syscall());
        let catch_all = chosen.contains(&Probe::MmLock);
        let fork = chosen.contains(&Probe::Fork) || chosen.contains(&Probe::Exit);
        // The kernel probes, the catch-all and fork following cannot do without BTF; the
        // syscall probe only wants one offset.
        // --stacks reads the new mm at exec (ExecImageEvent) through BTF offsets.
        let stacks = opts.stacks;
        let needs_btf = kprobes || catch_all || fork || stacks || chosen.contains(&Probe::Fault);
        let kernel_btf = match (needs_btf || syscalls).then(|| btf::KernelBtf::open(&opts.btf)) {
            Some(Ok(btf)) => Some(btf),
            Some(Err(e)) if needs_btf => return Err(e),
            Some(Err(e)) => {
                let no_file = if chosen.contains(&Probe::Mmap) {
                    ", and mmap events carry no file identity"
                } else {
                    ""
                };
                eprintln!(
                    "mmap-trace: warning: {e:#}; assuming thread_info.status at byte \
                     {TI_STATUS_FALLBACK} of task_struct (Linux 5.11 and later){no_file}"
                );
                None
            }
            None => None,
        };
        let offsets = match &kernel_btf {
            Some(btf) if kprobes || stacks => btf.kernel_offsets()?,
            // The mmap probe reads the file its fd names; without the offsets it still
            // reports the call.
            Some(btf) if chosen.contains(&Probe::Mmap) => {
                btf.kernel_offsets().unwrap_or_else(|e| {
                    eprintln!("mmap-trace: warning: {e:#}; mmap events carry no file identity");
                    KernelOffsets::default()
                })
            }
            _ => KernelOffsets::default(),
        };
        let ti_status = match &kernel_btf {
            Some(btf) if syscalls => btf.compat_mark()?,
            _ => TI_STATUS_FALLBACK,
        };
        let (task_offsets, write_arg) = match &kernel_btf {
            // verify's stops read whether the verifier traces the task.
            Some(btf) if catch_all || fork || stacks || opts.filter.tracer_tgid != 0 => (
                btf.task_offsets()?,
                if catch_all {
                    btf.mmap_lock_write_arg()?
                } else {
                    2
                },
            ),
            _ => (TaskOffsets::default(), 2),
        };
        let mm_offsets = match &kernel_btf {
            Some(btf) if stacks => btf.mm_offsets()?,
            _ => MmOffsets::default(),
        };
        let syscall_probes: u32 = chosen
            .iter()
            .filter(|p| p.is_syscall())
            .map(|p| 1 << *p as u32)
            .sum();
        // verify orders overlapping calls of threads by their entry times.
        let entry_times = u32::from(opts.filter.tracer_tgid != 0);
        let syscall_hooks = syscall_probes != 0 || catch_all;
        let (gate, why) = if syscall_hooks {
            preempt::syscall_gate(kernel_btf.as_ref())
        } else {
            (false, String::new())
        };
        if syscall_hooks {
            log::info!(
                "syscall hooks: {} ({why})",
                if gate {
                    "gated, one program per hook would be skipped while preempted"
                } else {
                    "one program per hook"
                }
            );
        }

        let (pt_regs_ip, task_maj_flt) = match &kernel_btf {
            // arm64's source hands the registers over itself (attach_faults).
            Some(btf) if chosen.contains(&Probe::Fault) && cfg!(target_arch = "aarch64") => {
                (0, btf.task_maj_flt()?)
            }
            Some(btf) if chosen.contains(&Probe::Fault) => (btf.pt_regs_ip()?, btf.task_maj_flt()?),
            _ => (0, 0),
        };
        let rss_format = if chosen.contains(&Probe::Rss) {
            tracefs::rss_format()?
        } else {
            RssFormat::default()
        };
        let page_map = match &kernel_btf {
            Some(btf) if chosen.iter().any(|p| p.is_page_insert()) => page_map(btf, &kallsyms),
            _ => PageMap::default(),
        };
        let filemap = if chosen.contains(&Probe::PageCache) {
            tracefs::filemap_format()?
        } else {
            FilemapFormat::default()
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("FILTER", &opts.filter, true)
            .override_global("CGROUP_FILTER", &opts.cgroup, true)
            .override_global("FILEMAP_FORMAT", &filemap, true)
            .override_global("OFFSETS", &offsets, true)
            .override_global("SYSCALL_PROBES", &syscall_probes, true)
            .override_global("TI_STATUS_OFFSET", &ti_status, true)
            .override_global("ENTRY_TIMES", &entry_times, true)
            .override_global("SYSCALL_GATE", &u32::from(gate), true)
            .override_global("TASK_OFFSETS", &task_offsets, true)
            .override_global("CATCH_ALL", &u32::from(catch_all), true)
            .override_global("STACKS", &u32::from(stacks), true)
            .override_global("MM_OFFSETS", &mm_offsets, true)
            .override_global("PT_REGS_IP", &pt_regs_ip, true)
            .override_global("TASK_MAJ_FLT", &task_maj_flt, true)
            .override_global("RSS_FORMAT", &rss_format, true)
            .override_global("PAGE_MAP", &page_map, true)
            .override_global(
                "WAKEUP_BYTES",
                &(u64::from(opts.ring_buffer_bytes) / 8),
                true,
            )
            .map_max_entries("EVENTS", opts.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .context("loading the eBPF programs")?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(forward_logs(logger)),
            Err(e) => {
                log::debug!("no eBPF log messages: {e}");
                None
            }
        };
        // The catch-all reports other syscalls from sys_exit.
        if syscall_hooks {
            let enter = (entry_times != 0 || gate) && syscall_probes != 0;
            attach_syscall_probes(&mut ebpf, enter, if gate { COPIES } else { 1 })
                .context("attaching the syscall probes (raw tracepoints sys_enter/sys_exit)")?;
        }
        for probe in chosen.iter().filter(|p| !p.is_syscall()) {
            attach(&mut ebpf, *probe, &driver_hooks, &kallsyms, write_arg, gate)
                .with_context(|| format!("attaching the {} probe", probe.name()))?;
        }
        Ok(Self {
            ebpf,
            logger,
            attached: chosen,
            skipped,
            gated: gate,
        })
    }

    /// Forwards the probes' log records still waiting and says which programs the kernel
    /// skipped (call before exiting).
    pub fn flush_logs(&self) {
        if let Some(logger) = &self.logger {
            logger.lock().unwrap_or_else(|e| e.into_inner()).flush();
        }
        for (name, misses) in self.skipped_runs() {
            eprintln!(
                "mmap-trace: warning: the kernel skipped the {name} program {misses} time(s) \
                 (recursion_misses): a run of it on this CPU was preempted and another task \
                 reached the hook meanwhile. Events of the traced process may be missing \
                 from the output; verify counts them as lost. If this is a syscall or \
                 catch-all hook, set {}=1 (this kernel preempts BPF on tracepoints and \
                 mmap-trace did not detect it; docs/kernels.md)",
                preempt::GATE_VAR
            );
        }
    }

    /// Programs whose runs the kernel skipped because the program was already running on
    /// that CPU (`recursion_misses` in the fd's fdinfo, Linux 5.12+), with the count.
    /// Preemptible hooks (the syscall raw tracepoints on 7.x) lose events this way without
    /// touching the ring buffer, so `lost()` cannot see them. Gated syscall hooks are left
    /// out: their copies cover for each other and count the calls none of them saw in
    /// `lost()` (mmap-trace-ebpf/src/syscalls.rs).
    pub fn skipped_runs(&self) -> Vec<(String, u64)> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        self.ebpf
            .programs()
            .filter(|(name, _)| {
                !(self.gated && (name.starts_with("sys_") || name.starts_with("mmap_lock_acquire")))
            })
            .filter_map(|(name, program)| {
                let fd = program.fd().ok()?.as_fd().as_raw_fd();
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
                let misses = info
                    .lines()
                    .find_map(|l| l.strip_prefix("recursion_misses:"))?
                    .trim()
                    .parse::<u64>()
                    .ok()?;
                (misses > 0).then(|| (name.to_owned(), misses))
            })
            .collect()
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("no EVENTS map"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Ring-buffer reservations that failed, per probe, summed over CPUs.
    pub fn lost(&self) -> Result<[u64; PROBE_COUNT]> {
        let map = self
            .ebpf
            .map("LOST")
            .ok_or_else(|| anyhow!("no LOST map"))?;
        let lost = PerCpuArray::<_, u64>::try_from(map)?;
        let mut out = [0; PROBE_COUNT];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = lost.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }
}

/// One raw tracepoint serves every syscall probe (the `SYSCALL_PROBES` mask); `sys_enter`
/// records entry times and the gate's marks. `copies` programs per hook (the gate's
/// spares are `sys_exit_2`, … in mmap-trace-ebpf/src/syscalls.rs).
fn attach_syscall_probes(ebpf: &mut Ebpf, enter: bool, copies: usize) -> Result<()> {
    let points: &[&str] = if enter {
        &["sys_enter", "sys_exit"]
    } else {
        &["sys_exit"]
    };
    for point in points {
        for copy in 1..=copies {
            let name = copy_name(point, copy);
            let program: &mut RawTracePoint = program(ebpf, &name)?.try_into()?;
            program.load().with_context(|| format!("loading {name}"))?;
            program.attach(point)?;
        }
    }
    Ok(())
}

/// Copies per syscall hook when gated; the eBPF crate defines `sys_enter_2` … up to it.
const COPIES: usize = 4;

fn copy_name(point: &str, copy: usize) -> String {
    if copy == 1 {
        point.to_owned()
    } else {
        format!("{point}_{copy}")
    }
}

/// `write_arg`: where `mmap_lock_acquire_returned` has its `write` argument (picks the
/// catch-all program built for that prototype); `gate`: the hooks run as gated copies.
fn attach(
    ebpf: &mut Ebpf,
    probe: Probe,
    driver_hooks: &[String],
    kallsyms: &str,
    write_arg: u32,
    gate: bool,
) -> Result<()> {
    match probe {
        Probe::Exec => attach_tracepoint(ebpf, "sched", "sched_process_exec")?,
        Probe::PageCache => attach_tracepoint(ebpf, "filemap", "mm_filemap_add_to_page_cache")?,
        Probe::Fault => attach_faults(ebpf)?,
        Probe::Rss => attach_tracepoint(ebpf, "kmem", "rss_stat")?,
        Probe::Fork | Probe::Exit => {
            let point = if probe == Probe::Fork {
                "sched_process_fork"
            } else {
                "sched_process_exit"
            };
            let program: &mut RawTracePoint = program(ebpf, point)?.try_into()?;
            program.load()?;
            program.attach(point)?;
        }
        Probe::MmLock => {
            const POINT: &str = "mmap_lock_acquire_returned";
            let btf = aya::Btf::from_sys_fs()
                .context("reading the kernel's BTF for the tp_btf catch-all")?;
            let name = if write_arg == 1 {
                POINT
            } else {
                "mmap_lock_acquire_returned_memcg"
            };
            // Gated: four copies taking turns (mm_lock.rs); only kernels with the 6.13+
            // prototype run tracepoint programs preemptible.
            let copies = if gate && write_arg == 1 { COPIES } else { 1 };
            for copy in 1..=copies {
                let name = copy_name(name, copy);
                let program: &mut BtfTracePoint = program(ebpf, &name)?.try_into()?;
                program.load(POINT, &btf)?;
                program.attach()?;
            }
        }
        Probe::MmapRegion | Probe::RemapPfnRange => {
            attach_kprobe(ebpf, probe.name(), probe.kernel_functions())?
        }
        // Every function of the pair this kernel has (the first one is checked above).
        p if p.is_page_insert() => {
            let present: Vec<&str> = p
                .kernel_functions()
                .iter()
                .copied()
                .filter(|f| in_kallsyms(kallsyms, f))
                .collect();
            attach_kprobe(ebpf, p.name(), &present)?
        }
        Probe::DriverMmap => attach_kprobe(ebpf, "driver_mmap", driver_hooks)?,
        syscall => bail!(
            "{} is attached with the other syscall probes",
            syscall.name()
        ),
    }
    Ok(())
}

/// Every probe but page_cache, which is noisy (every file page read) and opt-in, fork,
/// which `--follow-forks` adds, fault and rss, which `--faults` adds (one record per
/// page touched), and exit, which whatever keeps state per process adds.
pub fn default_probes() -> Vec<Probe> {
    Probe::ALL
        .iter()
        .copied()
        .filter(|p| {
            !matches!(
                p,
                Probe::PageCache | Probe::Fork | Probe::Fault | Probe::Rss | Probe::Exit
            )
        })
        .collect()
}

/// Attaches the tracepoint program named like the tracepoint.
fn attach_tracepoint(ebpf: &mut Ebpf, category: &str, name: &str) -> Result<()> {
    let program: &mut TracePoint = program(ebpf, name)?.try_into()?;
    program.load()?;
    program.attach(category, name)?;
    Ok(())
}

/// Attaches program `name` (and `name_ret` if the object has it) to each function.
fn attach_kprobe<S: AsRef<str>>(ebpf: &mut Ebpf, name: &str, functions: &[S]) -> Result<()> {
    let ret_name = format!("{name}_ret");
    for program_name in [name, ret_name.as_str()] {
        if program_name == ret_name && ebpf.program(&ret_name).is_none() {
            continue;
        }
        let program: &mut KProbe = program(ebpf, program_name)?.try_into()?;
        program.load()?;
        for function in functions {
            program
                .attach(function.as_ref(), 0)
                .with_context(|| format!("kprobe on {}", function.as_ref()))?;
        }
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))
}

/// The vmemmap the page-insertion probes turn `struct page *` into PFNs with: x86-64's
/// `vmemmap_base` variable (KASLR moves it; its address is in /proc/kallsyms, the probe
/// reads its value), else the fixed 4-level start; `sizeof(struct page)` from BTF.
/// x86-64: faults in user mode, and the kernel's on user memory inside a syscall.
#[cfg(target_arch = "x86_64")]
fn attach_faults(ebpf: &mut Ebpf) -> Result<()> {
    for point in ["page_fault_user", "page_fault_kernel"] {
        let raw: &mut RawTracePoint = program(ebpf, point)?.try_into()?;
        raw.load()?;
        raw.attach(point).with_context(|| {
            format!(
                "the raw tracepoint {point} (x86's exceptions:{point}; this kernel may not \
                 have it)"
            )
        })?;
    }
    Ok(())
}

/// arm64 has no exceptions:page_fault_* tracepoints: the perf software page-fault event,
/// every fault sampled, on every online CPU (the program filters the targets).
#[cfg(target_arch = "aarch64")]
fn attach_faults(ebpf: &mut Ebpf) -> Result<()> {
    use aya::programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    };
    const NAME: &str = "page_fault_perf";
    let perf: &mut PerfEvent = program(ebpf, NAME)?.try_into()?;
    perf.load()?;
    let cpus = aya::util::online_cpus()
        .map_err(|(what, e)| anyhow::anyhow!("reading the online CPUs ({what}): {e}"))?;
    for cpu in cpus {
        perf.attach(
            PerfEventConfig::Software(SoftwareEvent::PageFaults),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Period(1),
            false,
        )
        .with_context(|| format!("the perf software page-fault event on CPU {cpu}"))?;
    }
    Ok(())
}

fn page_map(btf: &btf::KernelBtf, kallsyms: &str) -> PageMap {
    let (vmemmap_base_addr, vmemmap_of) = match vmemmap(kallsyms) {
        Ok(found) => found,
        Err(e) => {
            eprintln!(
                "mmap-trace: warning: {e:#}; page-insertion events carry no PFN of a struct page"
            );
            return PageMap::default();
        }
    };
    match btf.struct_page_size() {
        Ok(size) => PageMap {
            vmemmap_base_addr,
            vmemmap: vmemmap_of(size),
            page_size: size,
        },
        Err(e) => {
            eprintln!(
                "mmap-trace: warning: {e:#}; page-insertion events carry no PFN of a struct page"
            );
            PageMap::default()
        }
    }
}

/// x86-64: (the address of the KASLR'd `vmemmap_base`, or 0 and VMEMMAP_START with
/// 4-level paging), as a function of `sizeof(struct page)`.
#[cfg(target_arch = "x86_64")]
fn vmemmap(kallsyms: &str) -> Result<(u64, impl Fn(u64) -> u64)> {
    let base_addr = kallsyms
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("vmemmap_base"))
        .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .unwrap_or(0);
    Ok((base_addr, |_size| 0xffff_ea00_0000_0000))
}

/// arm64 (48-bit VAs, 4 KiB pages: Debian's): the kernel's `vmemmap` macro,
/// VMEMMAP_START less the struct pages of the PFNs below `memstart_addr`, the physical
/// start of the linear map (moved by KASLR). Debian's arm64 kernels have no data symbols
/// in kallsyms, so `memstart_addr` is read off /proc/kcore's program headers: a linear
/// map segment's physical and virtual addresses.
#[cfg(target_arch = "aarch64")]
fn vmemmap(_kallsyms: &str) -> Result<(u64, impl Fn(u64) -> u64)> {
    const PAGE_OFFSET: u64 = 0xffff_0000_0000_0000;
    const LINEAR_END: u64 = 0xffff_8000_0000_0000;
    const VMEMMAP_START: u64 = 0xffff_fc00_0000_0000;
    let memstart = kcore_linear_map_start(PAGE_OFFSET, LINEAR_END)?;
    Ok((0, move |size: u64| {
        VMEMMAP_START.wrapping_sub((memstart >> 12).wrapping_mul(size))
    }))
}

/// `memstart_addr` from the first linear-map segment of /proc/kcore (its `p_paddr` is
/// `__pa(p_vaddr)`).
#[cfg(target_arch = "aarch64")]
fn kcore_linear_map_start(page_offset: u64, linear_end: u64) -> Result<u64> {
    use std::io::Read as _;
    const KCORE: &str = "/proc/kcore";
    let mut head = vec![0u8; 64 * 1024];
    let mut file = std::fs::File::open(KCORE).with_context(|| format!("opening {KCORE}"))?;
    let n = file
        .read(&mut head)
        .with_context(|| format!("reading {KCORE}"))?;
    let head = &head[..n];
    let u16_at = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        head.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{KCORE} has no ELF header");
    };
    for i in 0..usize::from(phnum) {
        let at = phoff as usize + i * usize::from(phentsize);
        let (Some(vaddr), Some(paddr)) = (u64_at(at + 16), u64_at(at + 24)) else {
            break;
        };
        if (page_offset..linear_end).contains(&vaddr) && paddr != u64::MAX {
            return Ok(paddr.wrapping_sub(vaddr - page_offset));
        }
    }
    bail!("{KCORE} lists no linear-map segment (p_vaddr in {page_offset:#x}..{linear_end:#x})")
}

fn kallsyms_names(kallsyms: &str) -> impl Iterator<Item = &str> {
    kallsyms
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
}

fn in_kallsyms(kallsyms: &str, function: &str) -> bool {
    kallsyms_names(kallsyms).any(|name| name == function)
}

/// Why `function` cannot be probed: gone, or only a compiler-made copy of it
/// (`mmap_region.constprop.0`) whose arguments need not be the function's.
fn missing_function(kallsyms: &str, function: &str) -> String {
    let copies: Vec<&str> = kallsyms_names(kallsyms)
        .filter(|name| {
            name.strip_prefix(function)
                .is_some_and(|rest| rest.starts_with('.'))
        })
        .collect();
    if copies.is_empty() {
        format!("{function} is not in /proc/kallsyms: this kernel inlined, renamed or removed it")
    } else {
        format!(
            "{function} is not in /proc/kallsyms, only compiler-made copies ({}) whose \
             arguments may differ: this kernel cannot be traced there",
            copies.join(", ")
        )
    }
}

/// The hooks that /proc/kallsyms lists (module symbols appear once it is loaded).
fn present_driver_hooks(kallsyms: &str, hooks: &[String]) -> Vec<String> {
    hooks
        .iter()
        .filter(|h| in_kallsyms(kallsyms, h))
        .cloned()
        .collect()
}

/// aya-log records from the probes go to the CLI's logger (RUST_LOG) from a thread.
fn forward_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) -> Logger {
    use std::os::fd::AsRawFd as _;
    let fd = logger.as_raw_fd();
    let logger = std::sync::Arc::new(std::sync::Mutex::new(logger));
    let shared = logger.clone();
    std::thread::spawn(move || {
        loop {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
                break;
            }
            shared.lock().unwrap_or_else(|e| e.into_inner()).flush();
        }
    });
    logger
}
