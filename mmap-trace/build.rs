use aya_build::{Package, Toolchain};

/// The nightly that compiles the eBPF crate must share bpf-linker's LLVM major (22).
/// `cargo xtask` checks that and exports the toolchain it chose here.
const TOOLCHAIN_VAR: &str = "MMAP_TRACE_EBPF_TOOLCHAIN";

fn main() -> aya_build::Result<()> {
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_VAR}");
    let toolchain = std::env::var(TOOLCHAIN_VAR).unwrap_or_else(|_| "nightly".into());
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../mmap-trace-ebpf");
    let package = Package {
        name: "mmap-trace-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(&toolchain))
}
