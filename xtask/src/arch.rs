//! The guest architectures (`--arch x86_64 | arm64`): what differs between them for the
//! build (Rust target, cross compiler), the Debian packages (architecture, image
//! meta-package) and QEMU (binary, machine, console). x86_64 is the default and the
//! host's own; arm64 is cross-built and runs under qemu-system-aarch64 (TCG).

use std::fmt;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[default]
    #[value(name = "x86_64", alias = "amd64", alias = "x86-64")]
    X86_64,
    #[value(name = "arm64", alias = "aarch64")]
    Arm64,
}

impl Arch {
    /// The Rust target the CLI and the test binaries are built for (static, glibc).
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// Debian's name of the architecture (packages, kernel versions' suffix).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Whether the host (x86-64) runs this architecture's binaries natively.
    pub fn is_host(self) -> bool {
        self == Arch::X86_64
    }

    /// The GNU cross tools' prefix (Debian's gcc-aarch64-linux-gnu), for the kernel's
    /// `CROSS_COMPILE` and the Rust linker; None on the host's own architecture.
    pub fn cross_prefix(self) -> Option<&'static str> {
        match self {
            Arch::X86_64 => None,
            Arch::Arm64 => Some("aarch64-linux-gnu-"),
        }
    }

    /// The kernel's `ARCH=`.
    pub fn kernel_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86",
            Arch::Arm64 => "arm64",
        }
    }

    pub fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// QEMU's machine arguments: the PC for x86; `virt` with the emulator's every CPU
    /// feature for arm64 (`max`: pointer authentication included, as on current cores),
    /// its PAC computed with QEMU's own cheap algorithm rather than QARMA, which TCG
    /// emulates slowly (the bits still land in return addresses).
    pub fn qemu_machine(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[],
            Arch::Arm64 => &["-M", "virt", "-cpu", "max,pauth-impdef=on"],
        }
    }

    /// The serial console's device name in the guest.
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.debian())
    }
}
