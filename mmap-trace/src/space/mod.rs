//! The address-space model, once, for verify and report: the kernel's view
//! (/proc/<pid>/maps, parsed as bytes: [`maps`]), the model of what the calls imply
//! ([`model`]), the one entry point from a raw syscall ([`syscall`]) and the comparison of
//! the two ([`compare`]); and whose address space a process's state describes from its
//! fork to its exit ([`lifecycle`]), the ownership rule every per-process consumer keeps.
//!
//! verify keeps a model per process and checks it against maps at each checkpoint
//! (`shadow.rs`); report keeps one per process of a trace and draws its history from the
//! model's [`Change`]s (`report/model.rs`). A rule fixed here is fixed for both.
//!
//! Owns the model, its rules and the parsing of maps. May not touch: the probes or their
//! records (it takes a syscall's number, arguments and return value, and the decoder's
//! `Lifecycle`), the processes beyond reading their maps, records or output; only its
//! tests use the rest of the kernel's decoder.

pub mod compare;
pub mod lifecycle;
pub mod maps;
pub mod model;
pub mod proc;
pub mod region;
pub mod regions;
pub mod syscall;

#[cfg(test)]
mod tests;

pub use compare::{Comparison, Difference, Field, compare};
pub use lifecycle::{Lifecycle, ProcessState, ProcessTable, Sharing};
pub use model::{AddressSpace, Change, Why};
pub use proc::ProcEnv;
pub use region::{Backing, Name, PAGE, Region, page_down, page_up};
pub use regions::RegionMap;
pub use syscall::{Applied, CallEnv, NoEnv, TracedFile, apply_syscall, call_ranges};
