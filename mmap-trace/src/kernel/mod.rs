//! Everything that talks to the kernel: loading and attaching the eBPF programs
//! (`loader`), struct offsets from BTF (`btf`), tracefs, decoding the ring buffer's
//! records (`decode`) and naming the syscalls they carry (`syscall_names`); `floor` is
//! the bench's empty program.

pub mod btf;
pub mod decode;
pub mod floor;
pub mod loader;
pub mod preempt;
pub mod syscall_names;
pub mod tracefs;
