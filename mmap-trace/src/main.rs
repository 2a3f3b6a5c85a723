//! The `mmap-trace` command; everything it does is in the library (lib.rs).

fn main() -> std::process::ExitCode {
    mmap_trace::main()
}
