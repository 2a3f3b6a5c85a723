//! The guest's root filesystem: a newc cpio with busybox, /init, our static binaries
//! and the driver. Left uncompressed: the kernel unpacks it faster than it gunzips it
//! under TCG (46 MB archive: ~3.1 s boot plain vs ~3.9 s gzip -1, see README).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// The host's busybox-static: its applet list names the links (the arm64 guest's busybox
/// is the same Debian version, built for arm64, and cannot run here).
const HOST_BUSYBOX: &str = "/bin/busybox";

/// Where things live in the guest (also exported to the guest as env vars).
pub const GUEST_BIN: &str = "/mmtrace/bin";
pub const GUEST_CLI: &str = "/mmtrace/bin/mmap-trace";
pub const GUEST_KO: &str = "/mmtrace/mmtrace_drv.ko";
pub const GUEST_WORKLOAD: &str = "/mmtrace/bin/mmap-workload";
pub const GUEST_OVERLAY_KO: &str = "/mmtrace/overlay.ko";
const GUEST_COMMAND: &str = "/mmtrace/command.sh";

pub struct Contents<'a> {
    pub cli: &'a Path,
    /// Installed as /mmtrace/bin/<name>.
    pub bins: Vec<(String, PathBuf)>,
    pub driver: Option<&'a Path>,
    /// The guest's static busybox (the guest kernel's architecture).
    pub busybox: &'a Path,
    /// The guest kernel's overlayfs module, if it has one.
    pub overlay: Option<&'a Path>,
    /// The kernel's built mm selftests (every file of the directory, manifest included),
    /// installed in [`crate::selftests::GUEST_DIR`].
    pub selftests: Option<&'a Path>,
    /// Shell script run as root by /init; its exit status is reported.
    pub command: String,
    /// Printed around the status and dmesg so the host can find them.
    pub markers: &'a crate::qemu::Markers,
}

pub fn write(path: &Path, contents: &Contents<'_>) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(file));
    let result = (|| -> Result<()> {
        for dir in [
            "bin",
            "dev",
            "etc",
            "proc",
            "sys",
            "tmp",
            "root",
            "usr",
            "mmtrace",
            "mmtrace/bin",
        ] {
            cpio.dir(dir)?;
        }
        // modprobe and scripts look in /sbin and /usr/bin.
        cpio.symlink("sbin", "bin")?;
        cpio.symlink("usr/bin", "../bin")?;
        cpio.symlink("usr/sbin", "../bin")?;
        // The kernel opens /dev/console for init before anything mounts devtmpfs.
        cpio.char_device("dev/console", 5, 1)?;

        cpio.file_from("bin/busybox", contents.busybox, 0o755)?;
        for applet in busybox_applets()? {
            if applet != "busybox" {
                cpio.symlink(&format!("bin/{applet}"), "busybox")?;
            }
        }
        cpio.bytes("init", init_script(contents.markers).as_bytes(), 0o755)?;
        cpio.bytes(
            GUEST_COMMAND.trim_start_matches('/'),
            format!("#!/bin/sh\n{}\n", contents.command).as_bytes(),
            0o755,
        )?;
        cpio.file_from(GUEST_CLI.trim_start_matches('/'), contents.cli, 0o755)?;
        for (name, path) in &contents.bins {
            cpio.file_from(
                &format!("{}/{name}", GUEST_BIN.trim_start_matches('/')),
                path,
                0o755,
            )?;
        }
        if let Some(ko) = contents.driver {
            cpio.file_from(GUEST_KO.trim_start_matches('/'), ko, 0o644)?;
        }
        if let Some(ko) = contents.overlay {
            cpio.file_from(GUEST_OVERLAY_KO.trim_start_matches('/'), ko, 0o644)?;
        }
        if let Some(dir) = contents.selftests {
            let inside = crate::selftests::GUEST_DIR.trim_start_matches('/');
            cpio.dir(inside)?;
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("listing {}", dir.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for file in files {
                let name = file.file_name().context("a file without a name")?;
                cpio.file_from(
                    &format!("{inside}/{}", name.to_string_lossy()),
                    &file,
                    0o755,
                )?;
            }
        }
        cpio.finish()
    })();
    result.with_context(|| format!("writing initramfs {}", path.display()))
}

fn busybox_applets() -> Result<Vec<String>> {
    let list = cmd::stdout(Command::new(HOST_BUSYBOX).arg("--list"))?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Lines of the kernel log sent back whole; the rest is scanned in the guest.
const DMESG_TAIL: usize = 2000;

/// /init: mount what the tools need, run the command, report its status and the
/// kernel log between markers, power off.
fn init_script(m: &crate::qemu::Markers) -> String {
    format!(
        r#"#!/bin/sh
# Generated by xtask/src/initramfs.rs.
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /tmp
export PATH={GUEST_BIN}:/bin:/sbin HOME=/root
export MMTRACE_GUEST=1 MMTRACE_CLI={GUEST_CLI} MMTRACE_KO={GUEST_KO} MMTRACE_WORKLOAD={GUEST_WORKLOAD}
export MMTRACE_OVERLAY_KO={GUEST_OVERLAY_KO} {selftests_env}={selftests_dir}
cd /tmp
echo
echo "{start}"
/bin/sh {GUEST_COMMAND}
status=$?
echo "{exit} $status"
echo "{begin}"
dmesg >/tmp/.dmesg
echo "kernel log: $(wc -l </tmp/.dmesg) lines; every splat with its context, then the last {tail}"
grep -F -B10 -A60 {splats} /tmp/.dmesg
tail -n {tail} /tmp/.dmesg
echo "{end}"
poweroff -f
"#,
        start = m.start(),
        exit = m.exit_prefix(),
        begin = m.dmesg_begin(),
        end = m.dmesg_end(),
        splats = crate::qemu::SPLATS
            .iter()
            .map(|s| format!("-e '{s}'"))
            .collect::<Vec<_>>()
            .join(" "),
        tail = DMESG_TAIL,
        selftests_env = crate::selftests::ENV,
        selftests_dir = crate::selftests::GUEST_DIR,
    )
}

/// A newc archive writer over the `cpio` crate, numbering inodes itself.
struct Cpio<W: Write> {
    out: W,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl<W: Write> Cpio<W> {
    fn new(out: W) -> Self {
        Cpio { out, ino: 0 }
    }

    fn entry(&mut self, name: &str, mode: u32) -> cpio::newc::Builder {
        self.ino += 1;
        cpio::newc::Builder::new(name)
            .ino(self.ino)
            .mode(mode)
            .nlink(1)
    }

    fn dir(&mut self, name: &str) -> Result<()> {
        let e = self.entry(name, S_IFDIR | 0o755).nlink(2);
        e.write(&mut self.out, 0).finish()?;
        Ok(())
    }

    fn symlink(&mut self, name: &str, target: &str) -> Result<()> {
        self.bytes_with_mode(name, target.as_bytes(), S_IFLNK | 0o777)
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) -> Result<()> {
        let e = self
            .entry(name, S_IFCHR | 0o600)
            .rdev_major(major)
            .rdev_minor(minor);
        e.write(&mut self.out, 0).finish()?;
        Ok(())
    }

    fn bytes(&mut self, name: &str, data: &[u8], perm: u32) -> Result<()> {
        self.bytes_with_mode(name, data, S_IFREG | perm)
    }

    fn bytes_with_mode(&mut self, name: &str, data: &[u8], mode: u32) -> Result<()> {
        let size = u32::try_from(data.len()).context("entry larger than 4 GiB")?;
        let mut w = self.entry(name, mode).write(&mut self.out, size);
        w.write_all(data)?;
        w.finish()?;
        Ok(())
    }

    fn file_from(&mut self, name: &str, src: &Path, perm: u32) -> Result<()> {
        let mut f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let len = f.metadata()?.len();
        let Ok(size) = u32::try_from(len) else {
            bail!("{} is larger than 4 GiB", src.display());
        };
        let mut w = self.entry(name, S_IFREG | perm).write(&mut self.out, size);
        io::copy(&mut f, &mut w).with_context(|| format!("copying {}", src.display()))?;
        w.finish()?;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        let out = cpio::newc::trailer(&mut self.out)?;
        out.flush()?;
        Ok(())
    }
}

/// Reads back the names in an archive (used by the unit test).
#[cfg(test)]
fn names(data: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut r = data;
    loop {
        let reader = cpio::newc::Reader::new(r).unwrap();
        if reader.entry().is_trailer() {
            return names;
        }
        names.push(reader.entry().name().to_owned());
        r = reader.finish().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_round_trips() {
        let mut buf = Vec::new();
        let mut c = Cpio::new(&mut buf);
        c.dir("bin").unwrap();
        c.symlink("sbin", "bin").unwrap();
        c.char_device("dev/console", 5, 1).unwrap();
        c.bytes("init", b"#!/bin/sh\n", 0o755).unwrap();
        c.finish().unwrap();
        assert_eq!(names(&buf), ["bin", "sbin", "dev/console", "init"]);
    }
}
