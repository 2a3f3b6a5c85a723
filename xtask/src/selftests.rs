//! The Linux mm selftests (`tools/testing/selftests/mm`, `vm` on 6.1) of each guest
//! kernel, from Debian's `linux-source-<X.Y>` package of that very kernel, built static
//! against the kernel's own uapi headers. The tests crate's `host_selftests` and
//! `guest_selftests` run them alone and under `mmap-trace verify` (tests/src/selftests.rs);
//! this file only fetches, builds and lists them.
//!
//! The arm64 guest's are cross-built the same way (`make ARCH=arm64
//! CROSS_COMPILE=aarch64-linux-gnu-`, Debian's cross gcc and its static libc) from their own
//! copy of the tree, the uapi headers being the architecture's; the one library the tests
//! link that the cross toolchain lacks, libcap, is Debian's arm64 `libcap-dev`, fetched
//! with the guest line's private apt and unpacked beside the tree (never installed).
//!
//! Cache: `target/selftests/debs/<package>_<version>/`, the source package (kept: both
//! architectures extract it), and one directory per source version and architecture,
//! `target/selftests/<package>_<version>/` (x86_64) or `<package>_<version>_arm64/`:
//! - `src/linux-source-<X.Y>/`: only what `make headers` and the selftests' Makefile read
//!   (~190 MB of the 1.6 GB tree)
//! - `sysroot/` (arm64): `libcap-dev:arm64` unpacked
//! - `build.log`: `make headers` and the selftests' make
//! - `bin/`: the stripped static tests and `manifest`, one line per run (label, binary,
//!   arguments, tab-separated), which the test binary reads
//! - `absent`: the [`SELFTESTS`] this tree does not have
//! - `.complete`: written when every test of the tree built; its presence skips all above

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::Workspace;
use crate::arch::Arch;
use crate::cmd;
use crate::guest_kernel::{self, GuestKernel};
use crate::kernel_line::{LINES, Line, PrivateApt};

/// Where the directory with the manifest goes in the guest, and the variable that names it
/// to the test binary (on the host, xtask sets it to the built `bin/`).
pub const GUEST_DIR: &str = "/mmtrace/selftests";
pub const ENV: &str = "MMTRACE_SELFTESTS";
/// Set instead of [`ENV`] on the host when they could not be prepared: why (the test
/// binary fails with it).
pub const ENV_ERROR: &str = "MMTRACE_SELFTESTS_ERROR";
/// The guest test binary that runs them.
pub const GUEST_SUITE: &str = "guest_selftests";
const MANIFEST: &str = "manifest";
const MARKER: &str = ".complete";

/// One run of a selftest: a label for the report, the binary's names across trees (the
/// first one a tree has is used) and the arguments run_vmtests.sh gives it.
struct Selftest {
    label: &'static str,
    binaries: &'static [&'static str],
    args: &'static [&'static str],
}

const fn test(name: &'static str) -> Selftest {
    Selftest {
        label: name,
        binaries: &[],
        args: &[],
    }
}

/// Every selftest of the mm directory that runs on its own without hardware the guests
/// lack and without changing a machine-wide setting (the host is shared); those left out
/// and why: docs/selftests.md.
const SELFTESTS: &[Selftest] = &[
    test("mremap_test"),
    test("mremap_dontunmap"),
    test("map_fixed_noreplace"),
    test("map_populate"),
    test("mlock2-tests"),
    test("mlock-random-test"),
    test("mseal_test"),
    test("seal_elf"),
    test("madv_populate"),
    test("mrelease_test"),
    test("mkdirty"),
    test("guard-regions"),
    test("merge"),
    test("droppable"),
    test("mdwe_test"),
    test("soft-dirty"),
    test("pfnmap"),
    test("pagemap_ioctl"),
    test("process_madv"),
    // 6.1's version (`userfaultfd`) is left out: its events test copies into a range the
    // child has just moved and counts the -ENOENT as an error, a race of the test itself
    // that verify's stops widen (3 of 8 runs under verify in the 6.1 guest, none alone);
    // later versions of the test and kernel run clean (docs/selftests.md).
    Selftest {
        label: "uffd-stress anon",
        binaries: &["uffd-stress"],
        args: &["anon", "20", "16"],
    },
    Selftest {
        label: "uffd-stress shmem",
        binaries: &["uffd-stress"],
        args: &["shmem", "20", "16"],
    },
    Selftest {
        label: "uffd-stress shmem-private",
        binaries: &["uffd-stress"],
        args: &["shmem-private", "20", "16"],
    },
];

impl Selftest {
    fn binaries(&self) -> Vec<&'static str> {
        if self.binaries.is_empty() {
            vec![self.label]
        } else {
            self.binaries.to_vec()
        }
    }
}

/// A kernel's selftests, built.
pub struct Selftests {
    /// `linux-source-7.2 7.2.13-1` (`… for arm64` when cross-built).
    pub source: String,
    /// The binaries and their manifest.
    pub dir: PathBuf,
    /// Labels of [`SELFTESTS`] this tree does not have.
    pub absent: Vec<String>,
    /// One line per test that did not build: what, why, the fix.
    pub failures: Vec<String>,
}

/// A kernel's selftests, or why there are none (one line: what, why, the fix).
pub type Outcome = std::result::Result<Selftests, String>;

/// The selftests of guest kernel `kernel`.
pub fn for_kernel(ws: &Workspace, kernel: &GuestKernel) -> Outcome {
    prepare(ws, kernel.line, &kernel.version, kernel.arch).map_err(|e| one_line(&e))
}

/// The host's selftests: the newest line's (7.x). A newer tree's tests skip what an older
/// kernel lacks, while 6.12's would miss what came up to the host's 6.18 (guard regions,
/// merge, pfnmap, process_madvise).
pub fn for_host(ws: &Workspace, guests: &[GuestKernel]) -> Outcome {
    let line = LINES.last().expect("kernel lines");
    let run = || -> Result<Selftests> {
        let version = match guests.iter().find(|g| g.line.name == line.name) {
            Some(kernel) => kernel.version.clone(),
            None => guest_kernel::current(ws, line)?,
        };
        prepare(ws, line, &version, Arch::X86_64)
    };
    run().map_err(|e| one_line(&e))
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// `linux-source-7.2` for kernel `7.2.13+deb14-amd64`.
fn source_package(kernel_version: &str) -> Result<String> {
    let mut parts = kernel_version.split(['.', '-', '+']);
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor))
            if major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok() =>
        {
            Ok(format!("linux-source-{major}.{minor}"))
        }
        _ => bail!("cannot tell the source package of kernel version `{kernel_version}`"),
    }
}

/// The Debian version of `linux-image-<kernel_version>` in the line's lists, which its
/// `linux-source-<X.Y>` shares (`6.1.192-3` for 6.1.0-57-amd64).
fn image_version(apt: &mut PrivateApt, kernel_version: &str) -> Result<String> {
    let image = format!("linux-image-{kernel_version}");
    let lookup = |apt: &PrivateApt| -> Result<Option<String>> {
        let out = cmd::output(apt.command("apt-cache").args(["show", &image]))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .map(|v| v.trim().to_owned()))
    };
    if !apt.has_lists() {
        apt.update_once()?;
    }
    if let Some(v) = lookup(apt)? {
        return Ok(v);
    }
    apt.update_once()?;
    lookup(apt)?.with_context(|| {
        format!(
            "the Debian archive no longer lists {image} ({}), so the version of its source \
             is unknown. Fix: run with --kernel {} (the line's current kernel) after removing \
             the old one from target/guest/",
            apt.what,
            kernel_version
                .split(['.', '-'])
                .take(2)
                .collect::<Vec<_>>()
                .join(".")
        )
    })
}

fn prepare(
    ws: &Workspace,
    line: &'static Line,
    kernel_version: &str,
    arch: Arch,
) -> Result<Selftests> {
    let mut apt = PrivateApt::new(ws, line, arch)?;
    let package = source_package(kernel_version)?;
    let version = image_version(&mut apt, kernel_version)?;
    let (source, dir_name) = if arch.is_host() {
        (
            format!("{package} {version}"),
            format!("{package}_{version}"),
        )
    } else {
        (
            format!("{package} {version} for {arch}"),
            format!("{package}_{version}_{arch}"),
        )
    };
    let dir = ws.target_dir.join("selftests").join(dir_name);
    let bin = dir.join("bin");
    // The marker names the list it was built for: another list builds again (from the
    // extracted tree, which stays).
    if fs::read_to_string(dir.join(MARKER)).ok().as_deref() == Some(marker(&source).as_str()) {
        let absent = fs::read_to_string(dir.join("absent")).unwrap_or_default();
        eprintln!(
            "build: mm selftests of {source} (kernel {kernel_version}): cached in {}",
            bin.display()
        );
        return Ok(Selftests {
            source,
            dir: bin,
            absent: absent.lines().map(str::to_owned).collect(),
            failures: Vec::new(),
        });
    }
    let tree = dir.join("src").join(&package);
    if !tree.join(MARKER).exists() {
        let debs = ws
            .target_dir
            .join("selftests/debs")
            .join(format!("{package}_{version}"));
        fetch(&mut apt, &package, &version, &debs, &dir, arch)
            .with_context(|| format!("fetching the mm selftests of {source}"))?;
    }
    let cross = match arch.cross_prefix() {
        None => None,
        Some(prefix) => Some(Cross {
            arch,
            prefix,
            sysroot: cross_libraries(&mut apt, &dir, arch)
                .with_context(|| format!("fetching the {arch} libraries the selftests link"))?,
        }),
    };
    build(&tree, &dir, &source, cross.as_ref())
}

/// How the selftests of a foreign architecture are built: its kernel `ARCH`, the GNU
/// cross tools' prefix, and the directory its extra static libraries are unpacked in.
struct Cross {
    arch: Arch,
    prefix: &'static str,
    sysroot: PathBuf,
}

/// The static libraries of `arch` the selftests link beyond libc (libcap: mlock-random-test,
/// memfd_secret), from the line's private apt, unpacked into `<dir>/sysroot`.
fn cross_libraries(apt: &mut PrivateApt, dir: &Path, arch: Arch) -> Result<PathBuf> {
    let sysroot = dir.join("sysroot");
    let libdir = sysroot.join(multiarch_libdir(arch));
    if libdir.join("libcap.a").is_file() {
        return Ok(sysroot);
    }
    let debs = dir.join("sysroot-debs");
    for d in [&debs, &sysroot] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let wanted = format!("libcap-dev:{}", arch.debian());
    eprintln!(
        "build: downloading {wanted} (apt-get download with the private apt of {}) into {}",
        apt.what,
        debs.display()
    );
    download(apt, &debs, &wanted)?;
    for entry in fs::read_dir(&debs).with_context(|| format!("listing {}", debs.display()))? {
        let deb = entry?.path();
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&sysroot))?;
    }
    fs::remove_dir_all(&debs).with_context(|| format!("removing {}", debs.display()))?;
    if !libdir.join("libcap.a").is_file() {
        bail!("{wanted} unpacked no {}", libdir.join("libcap.a").display());
    }
    Ok(sysroot)
}

/// Debian's multiarch library directory of `arch`.
fn multiarch_libdir(arch: Arch) -> String {
    let triplet = match arch {
        Arch::X86_64 => "x86_64-linux-gnu",
        Arch::Arm64 => "aarch64-linux-gnu",
    };
    format!("usr/lib/{triplet}")
}

/// `apt-get download wanted` into `into`, updating the lists once if they are stale.
fn download(apt: &mut PrivateApt, into: &Path, wanted: &str) -> Result<()> {
    let run = |apt: &PrivateApt| {
        cmd::status(
            apt.command("apt-get")
                .current_dir(into)
                .stdout(std::io::stderr())
                .args(["download", wanted]),
        )
    };
    if !run(apt)?.success() {
        // Stale lists name a file the mirror no longer has.
        apt.update_once()?;
        let status = run(apt)?;
        if !status.success() {
            bail!(
                "apt-get download {wanted} failed ({status}; apt's reason is above) with the \
                 private apt of {}. Fix: check the network and the host's apt sources; if the \
                 archive has dropped this version, run with the line's current kernel",
                apt.what
            );
        }
    }
    Ok(())
}

/// What a complete build's marker says: the source and every run of the list.
fn marker(source: &str) -> String {
    let mut text = format!("{source}\n");
    for t in SELFTESTS {
        text.push_str(&format!("{} {:?} {:?}\n", t.label, t.binaries(), t.args));
    }
    text
}

/// Only what `make headers` and the selftests' build read (and `arch/<ARCH>`).
const TREE_PARTS: &[&str] = &[
    "Makefile",
    "Kbuild",
    "Kconfig",
    "scripts",
    "include",
    "usr",
    "tools",
    "mm/gup_test.h",
];

/// The source package into `debs` (unless an earlier run left it there), and the parts of
/// its tree the build reads into `<dir>/src`.
fn fetch(
    apt: &mut PrivateApt,
    package: &str,
    version: &str,
    debs: &Path,
    dir: &Path,
    arch: Arch,
) -> Result<()> {
    let src = dir.join("src");
    if src.exists() {
        fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    let find_deb = || {
        fs::read_dir(debs).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
        })
    };
    let started = Instant::now();
    let deb = match find_deb() {
        Some(deb) => deb,
        None => {
            if debs.exists() {
                fs::remove_dir_all(debs).with_context(|| format!("removing {}", debs.display()))?;
            }
            fs::create_dir_all(debs).with_context(|| format!("creating {}", debs.display()))?;
            let wanted = format!("{package}={version}");
            eprintln!(
                "build: downloading {wanted} (~150 MB, apt-get download with the private apt of {}) into {}",
                apt.what,
                debs.display()
            );
            download(apt, debs, &wanted)?;
            let deb = find_deb()
                .with_context(|| format!("apt-get download left no .deb in {}", debs.display()))?;
            let size = fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "build: {} MB downloaded in {:.1} s",
                size / 1_000_000,
                started.elapsed().as_secs_f64()
            );
            deb
        }
    };
    eprintln!(
        "build: extracting the headers, scripts and tools parts of {} for {arch}",
        deb.display()
    );
    let started = Instant::now();
    // The deb stays in `debs` for the other architecture's tree; its unpacked copy goes.
    let unpacked = dir.join("unpacked");
    if unpacked.exists() {
        fs::remove_dir_all(&unpacked)
            .with_context(|| format!("removing {}", unpacked.display()))?;
    }
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let tarball = unpacked.join(format!("usr/src/{package}.tar.xz"));
    if !tarball.is_file() {
        bail!("{} holds no {}", deb.display(), tarball.display());
    }
    let arch_dir = format!("arch/{}", arch.kernel_arch());
    // xz's threads decompress the tarball's blocks in parallel (68 blocks in 7.2's).
    cmd::run(
        Command::new("tar")
            .args(["-I", "xz -T0", "-xf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&src)
            .args(
                TREE_PARTS
                    .iter()
                    .copied()
                    .chain([arch_dir.as_str()])
                    .map(|p| format!("{package}/{p}")),
            ),
    )?;
    fs::remove_dir_all(&unpacked).with_context(|| format!("removing {}", unpacked.display()))?;
    let tree = src.join(package);
    fs::write(tree.join(MARKER), format!("{package} {version}\n"))?;
    eprintln!(
        "build: extracted in {:.1} s into {}",
        started.elapsed().as_secs_f64(),
        tree.display()
    );
    Ok(())
}

/// The directory of the mm selftests in `tree` (`vm` before 6.3).
fn selftests_dir(tree: &Path) -> Result<PathBuf> {
    ["mm", "vm"]
        .iter()
        .map(|d| tree.join("tools/testing/selftests").join(d))
        .find(|d| d.join("Makefile").is_file())
        .with_context(|| {
            format!(
                "{} has neither tools/testing/selftests/mm nor vm",
                tree.display()
            )
        })
}

fn build(tree: &Path, dir: &Path, source: &str, cross: Option<&Cross>) -> Result<Selftests> {
    let started = Instant::now();
    let mm = selftests_dir(tree)?;
    let log_path = dir.join("build.log");
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .to_string();
    // The kernel's and the selftests' Makefiles pick the architecture and the compiler
    // from these: the host's own unless cross-building.
    let arch_vars: Vec<String> = match cross {
        Some(c) => vec![
            format!("ARCH={}", c.arch.kernel_arch()),
            format!("CROSS_COMPILE={}", c.prefix),
        ],
        None => Vec::new(),
    };
    let make = |dir: &Path, args: &[String]| -> Result<std::process::ExitStatus> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        cmd::status(
            Command::new("make")
                .current_dir(dir)
                .args(["-j", &jobs])
                .args(&arch_vars)
                .args(args)
                .env_remove("ARCH")
                .env_remove("CROSS_COMPILE")
                .stdout(log.try_clone()?)
                .stderr(log),
        )
    };
    let _ = fs::remove_file(&log_path);
    // The uapi headers into the tree's usr/include, where the selftests' Makefile looks
    // (KHDR_INCLUDES); `headers_install` would want rsync.
    eprintln!("build: mm selftests of {source}: make headers, then the tests (static)");
    let status = make(tree, &["headers".to_owned()])?;
    if !status.success() {
        bail!(
            "`make headers` in {} failed ({status}): the last lines of {} say why. Fix: \
             install what it names (cargo xtask setup installs make, gcc, flex, bison, bc), \
             or delete {} to fetch the source again",
            tree.display(),
            log_path.display(),
            dir.display()
        );
    }
    // Present in this tree: the first of a test's names that has a source file.
    let mut planned = Vec::new();
    let mut absent = Vec::new();
    for t in SELFTESTS {
        match t
            .binaries()
            .into_iter()
            .find(|b| mm.join(format!("{b}.c")).is_file())
        {
            Some(binary) => planned.push((t, binary)),
            None => absent.push(t.label.to_owned()),
        }
    }
    let mut targets: Vec<String> = planned
        .iter()
        .map(|(_, b)| mm.join(b).display().to_string())
        .collect();
    targets.sort();
    targets.dedup();
    // A foreign architecture's libcap is in the sysroot beside the tree; libc is the
    // cross toolchain's own.
    let extra_cflags = match cross {
        Some(c) => format!(
            "EXTRA_CFLAGS=-static -I{} -L{}",
            c.sysroot.join("usr/include").display(),
            c.sysroot.join(multiarch_libdir(c.arch)).display()
        ),
        None => "EXTRA_CFLAGS=-static".to_owned(),
    };
    let mut args = vec!["-k".to_owned(), extra_cflags];
    args.extend(targets);
    // -k: a test that fails to build must not stop the others; each is checked below.
    let _ = make(&mm, &args)?;
    let log = fs::read_to_string(&log_path).unwrap_or_default();

    let bin = dir.join("bin");
    if bin.exists() {
        fs::remove_dir_all(&bin).with_context(|| format!("removing {}", bin.display()))?;
    }
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let mut manifest = format!("# mm selftests of {source}, built by cargo xtask\n");
    let mut failures = Vec::new();
    let mut built = 0;
    for (t, binary) in &planned {
        let exe = mm.join(binary);
        if !exe.is_file() {
            let why = log
                .lines()
                .find(|l| l.contains(&format!("{binary}.c")) && l.contains("error"))
                .or_else(|| log.lines().rev().find(|l| l.contains("Error")))
                .unwrap_or("no error line in the log");
            let failure = format!(
                "mm selftest {binary} of {source} did not build ({}; {}). Fix: install what \
                 it needs (cargo xtask setup installs gcc, libc6-dev, libcap-dev) and run again",
                why.trim(),
                log_path.display()
            );
            if !failures.contains(&failure) {
                failures.push(failure);
            }
            continue;
        }
        let dest = bin.join(binary);
        if !dest.exists() {
            let strip = format!("{}strip", cross.map_or("", |c| c.prefix));
            cmd::run(Command::new(strip).arg("-o").arg(&dest).arg(&exe))?;
            built += 1;
        }
        let mut line = vec![t.label.to_owned(), (*binary).to_owned()];
        line.extend(t.args.iter().map(|a| (*a).to_owned()));
        manifest.push_str(&line.join("\t"));
        manifest.push('\n');
    }
    fs::write(bin.join(MANIFEST), manifest)?;
    fs::write(dir.join("absent"), absent.join("\n"))?;
    eprintln!(
        "build: {built} mm selftests of {source} built in {:.1} s into {}; not in this tree: {}",
        started.elapsed().as_secs_f64(),
        bin.display(),
        if absent.is_empty() {
            "none".to_owned()
        } else {
            absent.join(", ")
        }
    );
    for f in &failures {
        println!("!!! {f}");
    }
    if failures.is_empty() {
        fs::write(dir.join(MARKER), marker(source))?;
    }
    Ok(Selftests {
        source: source.to_owned(),
        dir: bin,
        absent,
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_source_package_of_a_kernel() {
        assert_eq!(
            source_package("6.1.0-57-amd64").unwrap(),
            "linux-source-6.1"
        );
        assert_eq!(
            source_package("6.12.95+deb12-amd64").unwrap(),
            "linux-source-6.12"
        );
        assert_eq!(
            source_package("7.2.13+deb14-amd64").unwrap(),
            "linux-source-7.2"
        );
        assert!(source_package("amd64").is_err());
    }

    #[test]
    fn every_test_has_a_distinct_label() {
        let mut labels: Vec<&str> = SELFTESTS.iter().map(|t| t.label).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), SELFTESTS.len());
    }
}
