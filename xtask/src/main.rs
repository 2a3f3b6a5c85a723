//! Developer and CI tasks for mmap-trace: set-up, the static build, the QEMU guest and
//! the test run. All QEMU knowledge lives here, not in the tests.

mod apt_sources;
mod arch;
mod bench;
mod build;
mod chroot;
mod cmd;
mod guest_kernel;
mod host_lock;
mod initramfs;
mod kernel_line;
mod lint;
mod modules;
mod qemu;
mod selftests;
mod setup;
mod stress;
mod test;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "mmap-trace developer tasks", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (apt packages, eBPF nightly + rust-src, bpf-linker, guest kernel).
    Setup(KernelArgs),
    /// Build everything and run the CLI on the host (as root) with these arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Boot the guest kernel under QEMU and run a command in it as root.
    Vm {
        #[command(flatten)]
        guest: GuestArgs,
        /// The command and its arguments (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Unit and host tests, then the guest tests, one VM boot per kernel: without
    /// --kernel and --arch, every suite on 6.1 and guest_driver, guest_trace, guest_verify
    /// and guest_selftests on 6.12 and 7, and the same four on arm64's 6.1 (part of
    /// guest_verify's tests); with --arch arm64, only those on arm64 (no lint or host tests:
    /// the host is x86-64); with --kernel, every suite on that kernel.
    Test {
        #[command(flatten)]
        guest: GuestArgs,
    },
    /// Tracing overhead, loss, throughput, start-up and RSS vs bpftrace and strace, and the
    /// loop in the guest; prints the table and writes it into docs/benchmarks.md.
    Bench(bench::BenchArgs),
    /// cargo fmt --check, then clippy -D warnings on the host crates and on the eBPF crate
    /// (its nightly, bpfel-unknown-none), then mmap-trace's module graph (printed; no
    /// import cycle). `test` runs it first.
    Lint,
    /// The reliability suites with soak counts (200,000 random driver requests, 1,000
    /// reloads, …); MMTRACE_STRESS_* variables override them.
    Stress {
        #[command(flatten)]
        guest: GuestArgs,
    },
}

#[derive(Args)]
struct KernelArgs {
    /// Guest kernel: a line, 6.1 (bookworm), 6.12 (bookworm-backports) or 7 (sid's newest
    /// 7.x), or a full version of one, e.g. 6.12.95+deb12-amd64 (default: 6.1).
    #[arg(long = "kernel", alias = "kernel-version", value_name = "LINE|VERSION")]
    kernel: Option<String>,
    /// Guest architecture: x86_64 (default, the host's) or arm64 (cross-built, booted
    /// under qemu-system-aarch64; kernel line 6.1).
    #[arg(long, value_enum)]
    arch: Option<arch::Arch>,
}

impl KernelArgs {
    /// The kernel asked for, or the default line.
    fn request(&self) -> Result<kernel_line::KernelRequest> {
        let arch = self.arch.unwrap_or_default();
        match &self.kernel {
            Some(k) => kernel_line::KernelRequest::parse(k, arch),
            None => Ok(kernel_line::KernelRequest::default_line(arch)),
        }
    }

    /// For commands that run on this host: only its own architecture.
    fn host_request(&self, what: &str) -> Result<kernel_line::KernelRequest> {
        let request = self.request()?;
        if !request.arch.is_host() {
            anyhow::bail!(
                "`cargo xtask {what}` runs on this x86-64 host and its x86_64 guest; --arch {} \
                 is for `vm` and `test`",
                request.arch
            );
        }
        Ok(request)
    }
}

#[derive(Args)]
struct GuestArgs {
    #[command(flatten)]
    kernel: KernelArgs,
    /// Kill the guest after this many seconds (generous: TCG slows several-fold on a busy
    /// host, and `test` runs several suites in one boot: 7.x's took 678 s once).
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Guest CPUs.
    #[arg(long, default_value_t = 1)]
    smp: u32,
}

impl GuestArgs {
    fn options(&self) -> qemu::Options {
        qemu::Options {
            timeout: Duration::from_secs(self.timeout),
            smp: self.smp,
            label: String::new(),
        }
    }
}

/// Where the workspace and its target directory are.
pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    /// Names of the tests crate's `guest_*` test targets.
    pub guest_tests: Vec<String>,
}

impl Workspace {
    fn load() -> Result<Self> {
        // xtask/ sits in the workspace root.
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_owned();
        let text = cmd::stdout(Command::new(cargo()).current_dir(&root).args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
        ]))?;
        let meta: serde_json::Value =
            serde_json::from_str(&text).context("parsing cargo metadata")?;
        let target_dir = meta["target_directory"]
            .as_str()
            .map(PathBuf::from)
            .context("cargo metadata has no target_directory")?;
        let guest_tests = meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == "mmap-trace-tests")
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "test"))
            })
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .filter(|n| n.starts_with("guest_"))
            .collect();
        Ok(Workspace {
            root,
            target_dir,
            guest_tests,
        })
    }
}

/// The cargo that runs us (the pinned stable), as cargo tells its children.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A header a reader of a long log can find. xtask's own chatter goes to stderr so that
/// stdout carries only what the CLI or the guest prints.
pub fn section(title: &str) {
    eprintln!("\n========== {title} ==========");
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    let started = Instant::now();
    let ws = Workspace::load()?;
    let code = match cli.command {
        Task::Setup(k) => {
            section("setup");
            setup::ensure(&ws, &[k.request()?])?;
            0
        }
        Task::Run { args } => {
            section("setup");
            let host = arch::Arch::X86_64;
            let ready = setup::ensure(&ws, &[kernel_line::KernelRequest::default_line(host)])?;
            section("build");
            let (cli, _) = build::build_bins(&ws, &ready, host)?;
            section("run");
            eprintln!("run: {}", cli.display());
            // Quiet from here on: the CLI's output is the user's.
            return Ok(cmd::exit_code(cmd::status(Command::new(&cli).args(&args))?));
        }
        Task::Vm { guest, command } => {
            section("setup");
            let request = guest.kernel.request()?;
            let arch = request.arch;
            let ready = setup::ensure(&ws, &[request])?;
            section("build");
            let artifacts = build::build_all(&ws, &ready, arch)?;
            section("guest");
            let script: Vec<String> = command.iter().map(|w| cmd::shell_quote(w)).collect();
            let markers = qemu::Markers::new();
            let outcome = qemu::run_in_guest(
                ready.guest(),
                &artifacts,
                script.join(" "),
                &markers,
                &guest.options(),
            )?;
            let code = outcome.report();
            eprintln!(
                "vm: guest command exited {:?}; returning {code}",
                outcome.status
            );
            code
        }
        Task::Test { guest } => {
            section("setup");
            // Without --kernel and --arch: the matrix, every x86_64 line (the default line
            // first) and arm64's line.
            // Without --kernel each line runs its default suites.
            let matrix = guest.kernel.kernel.is_none();
            let kernels = if matrix && guest.kernel.arch.is_none() {
                let x86 = kernel_line::LINES
                    .iter()
                    .map(|l| kernel_line::KernelRequest::parse(l.name, arch::Arch::X86_64));
                x86.chain([Ok(kernel_line::KernelRequest::default_line(
                    arch::Arch::Arm64,
                ))])
                .collect::<Result<Vec<_>>>()?
            } else {
                vec![guest.kernel.request()?]
            };
            let mut arches: Vec<arch::Arch> = kernels.iter().map(|k| k.arch).collect();
            arches.dedup();
            let ready = setup::ensure(&ws, &kernels)?;
            // Style first: fmt --check and clippy -D warnings (eBPF crate included) hold
            // the line in CI; a failure is counted, the tests still run. The x86 host's
            // runs only.
            let lint_failed = if arches.contains(&arch::Arch::X86_64) {
                Some(lint::run(&ws, &ready)? != 0)
            } else {
                None
            };
            section("build");
            let builds = arches
                .iter()
                .map(|a| build::build_all(&ws, &ready, *a))
                .collect::<Result<Vec<_>>>()?;
            // Plain `cargo xtask test`: the arm64 line's guest_verify is bounded (CI's time).
            let plain = matrix && guest.kernel.arch.is_none();
            let scope = test::Scope { matrix, plain };
            test::run(&ws, &ready, &builds, &guest.options(), scope, lint_failed)?
        }
        Task::Bench(args) => {
            section("setup");
            let ready = setup::ensure(&ws, &[args.guest.kernel.host_request("bench")?])?;
            section("build");
            let artifacts = build::build_all(&ws, &ready, arch::Arch::X86_64)?;
            bench::run(&ws, &ready, &artifacts, &args)?
        }
        Task::Lint => {
            section("setup");
            let ready = setup::ensure(
                &ws,
                &[kernel_line::KernelRequest::default_line(arch::Arch::X86_64)],
            )?;
            lint::run(&ws, &ready)?
        }
        Task::Stress { guest } => {
            section("setup");
            let ready = setup::ensure(&ws, &[guest.kernel.host_request("stress")?])?;
            section("build");
            let artifacts = build::build_all(&ws, &ready, arch::Arch::X86_64)?;
            stress::run(&ws, &ready, &artifacts, &guest.options())?
        }
    };
    eprintln!("xtask: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(code)
}
