//! `trace --stacks`: the user stacks the probes copy, unwound with `.eh_frame`
//! (framehop) and named (blazesym) from the mappings the trace itself recorded, on a
//! worker thread so the ring-buffer reader never waits for a file to be parsed.
//!
//! The reader hands every record to the worker in ring order ([`Pipeline::record`]);
//! the worker keeps the per-process model (process.rs), unwinds, names and writes the
//! output. What the model is fed: exec's image (the executable and its interpreter, from
//! the kernel's `ExecImageEvent`: no mmap event shows them), each file mmap, a fork's
//! copy of the parent, and a /proc/<pid>/maps snapshot the reader takes when it first
//! sees a process it did not see exec (`--pid`, a running process). A process that exits
//! before its records are read keeps its names: nothing here asks /proc after the fact.
//!
//! Owns unwinding, naming and the per-process model of mapped files. May not touch: the
//! formats (the named stack goes to output/ as the schema's frames) or the address-space
//! model of verify and report (this one holds only what naming needs).

mod elf;
mod process;
mod symbolize;

use std::{
    collections::{HashMap, HashSet},
    io,
    os::unix::ffi::OsStrExt as _,
    rc::Rc,
    sync::{Arc, mpsc},
    thread::JoinHandle,
};

use foldhash::fast::RandomState;
use mmap_trace_common::ExecImageEvent;

use crate::{
    kernel::decode::{Event, FilePath, Record, is_error},
    output::{NamedStack, Output},
    schema::{FaultVma, Frame, Hex},
};

pub use process::{Mapping, RawFrame};

/// What the reader sends the worker, in ring order: an event and its unwound (not yet
/// named) stack.
struct Item {
    event: Event,
    path: Option<FilePath>,
    frames: Option<Arc<[RawFrame]>>,
    /// `trace --faults`: the mapping a fault hit, as the reader's model placed it.
    fault_vma: Option<FaultVma>,
}

/// Records the worker may have queued before the reader waits for it: a bound on the
/// memory a slow symbolizer can take (a worker that cannot keep up then holds the reader
/// back, and the ring buffer overflows into counted losses instead). Measured on the
/// bench loop (400,000 stacked calls in ~0.5 s, 2 CPUs shared with the loop): 16,384
/// lost 10–16% at the 64 MiB ring with ~160 MB peak; 524,288 lost 34% with 587 MB (the
/// growing queue slows both threads). The worker, not the queue, is what to speed up.
const QUEUE_MAX: usize = 16384;

/// Records sent to the worker together: one channel operation (and at most one wake-up
/// of the worker) per batch rather than per record. The reader also sends what it has
/// at the end of every drain ([`Pipeline::end_of_drain`]), so no record waits for a
/// batch to fill.
const BATCH: usize = 256;

/// Named stacks by their unwound frames (address, and the mapped file by identity and
/// offset): a hot call site is named and serialized once. The key keeps the files'
/// `Arc`s, so an address freed and reused for another path cannot match.
#[derive(Default)]
struct StackCache {
    named: HashMap<StackKey, Named>,
    /// The same, by the frames' allocation: the reader hands on one `Arc` for every
    /// stack its unwind cache recognized (process.rs), so a hot call site is found
    /// without hashing its frames. The map holds the `Arc`, so its address cannot be
    /// reused while it is a key.
    by_frames: HashMap<usize, Named, RandomState>,
}

/// A cached stack: its frames (kept, so the key's `Arc`s and allocation stay theirs) and
/// what naming made of them.
type Named = (Arc<[RawFrame]>, Rc<NamedStack>);

/// Per frame: its address, its file's `Arc` address (0: none) and the offset in it.
type StackKey = Vec<(u64, usize, u64)>;

/// Distinct stacks kept; the cache starts over past it (a program with more call sites
/// pays the serializing again, the names stay cached per file offset). Addresses make a
/// stack distinct, and every process has its own (ASLR): a system-wide trace of many
/// short processes fills the cache with stacks never seen again, so it is kept small
/// (~1-3 KB an entry: the frames, their names and their JSON).
const STACK_CACHE_MAX: usize = 4096;

impl StackCache {
    fn get(&mut self, names: &mut symbolize::Names, raw: Arc<[RawFrame]>) -> Rc<NamedStack> {
        let frames_at = Arc::as_ptr(&raw).cast::<u8>() as usize;
        if let Some((_, named)) = self.by_frames.get(&frames_at) {
            return named.clone();
        }
        if self.by_frames.len() >= STACK_CACHE_MAX {
            self.by_frames.clear();
        }
        let named = self.by_content(names, raw.clone());
        self.by_frames.insert(frames_at, (raw, named.clone()));
        named
    }

    fn by_content(&mut self, names: &mut symbolize::Names, raw: Arc<[RawFrame]>) -> Rc<NamedStack> {
        let key: StackKey = raw
            .iter()
            .map(|f| match &f.file {
                Some((path, off)) => (f.addr, Arc::as_ptr(path).cast::<u8>() as usize, *off),
                None => (f.addr, 0, 0),
            })
            .collect();
        if let Some((_, named)) = self.named.get(&key) {
            return named.clone();
        }
        if self.named.len() >= STACK_CACHE_MAX {
            self.named.clear();
        }
        let frames = name_frames(names, &raw);
        let json = serde_json::to_vec(&frames).unwrap_or_else(|_| b"[]".to_vec());
        let named = Rc::new(NamedStack { frames, json });
        self.named.insert(key, (raw, named.clone()));
        named
    }
}

/// The reader's end. It keeps the process model and unwinds each stack as it reads it,
/// straight from the ring's bytes (a few hundred of the 8 KiB are read; copying them all
/// out is what could not keep up with a busy process); the worker names the frames and
/// writes the output, and owns the output until [`Pipeline::finish`].
pub struct Pipeline {
    tx: Option<mpsc::SyncSender<Vec<Item>>>,
    /// Records not yet sent, in ring order.
    batch: Vec<Item>,
    worker: Option<JoinHandle<io::Result<Output>>>,
    model: Model,
}

impl Pipeline {
    pub fn start(out: Output) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Vec<Item>>(QUEUE_MAX / BATCH);
        let worker = std::thread::Builder::new()
            .name("stacks".into())
            .spawn(move || work(rx, out))?;
        Ok(Self {
            tx: Some(tx),
            batch: Vec::with_capacity(BATCH),
            worker: Some(worker),
            model: Model::default(),
        })
    }

    /// A record, in ring order. `path`: an mmap's file path (process/paths.rs);
    /// `fault_vma`: for a fault under `--faults`, the mapping it hit.
    pub fn record(
        &mut self,
        record: Record<'_>,
        path: Option<FilePath>,
        fault_vma: Option<FaultVma>,
    ) {
        match record {
            Record::ExecImage(image) => {
                self.model.seen.insert(image.header.pid);
                self.model.image(&image);
            }
            Record::Event(event, stack) => {
                let pid = event.header().pid;
                if let Event::Exit(_) = event {
                    // Nothing of the process follows: its mappings and unwinder go.
                    self.model.seen.remove(&pid);
                    self.model.note(&event, path.as_ref());
                    return;
                }
                if let Event::Exec(_) = event {
                    // Its image follows; whatever a snapshot would show is gone.
                    self.model.seen.insert(pid);
                } else if self.model.seen.insert(pid) {
                    self.model.snapshot(pid);
                }
                self.model.note(&event, path.as_ref());
                let frames = stack.map(|s| self.model.processes.unwind(pid, &s));
                self.send(Item {
                    event,
                    path,
                    frames,
                    fault_vma,
                });
            }
        }
    }

    fn send(&mut self, item: Item) {
        self.batch.push(item);
        if self.batch.len() >= BATCH {
            self.end_of_drain();
        }
    }

    /// Sends the records not yet sent: the reader has drained the ring for now.
    pub fn end_of_drain(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        if let Some(tx) = &self.tx
            && tx.send(batch).is_err()
        {
            // The worker ended (its output failed): finish() reports why.
            self.tx = None;
        }
    }

    /// Waits for the worker to write everything sent, and takes the output back.
    pub fn finish(mut self) -> io::Result<Output> {
        self.end_of_drain();
        self.tx = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(io::Error::other("the stack symbolizer thread panicked")),
        }
    }
}

/// The file-backed mappings /proc/<pid>/maps shows now (none once the process is gone).
fn snapshot(pid: u32) -> Vec<Mapping> {
    let Ok(maps) = procfs::process::Process::new(pid as i32).and_then(|p| p.maps()) else {
        return Vec::new();
    };
    maps.into_iter()
        .filter_map(|m| match m.pathname {
            procfs::process::MMapPath::Path(p) => Some(Mapping {
                start: m.address.0,
                end: m.address.1,
                offset: m.offset,
                path: Arc::from(String::from_utf8_lossy(p.as_os_str().as_bytes()).as_ref()),
                exec: m.perms.contains(procfs::process::MMPermissions::EXECUTE),
            }),
            _ => None,
        })
        .collect()
}

/// Test hook: the worker waits this many ms before its first record, so a test can
/// see a short-lived process symbolized after it exited.
const DELAY_ENV: &str = "MMTRACE_STACKS_TEST_DELAY_MS";

fn work(rx: mpsc::Receiver<Vec<Item>>, mut out: Output) -> io::Result<Output> {
    let mut names = symbolize::Names::default();
    let mut cache = StackCache::default();
    if let Some(ms) = std::env::var(DELAY_ENV).ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    // A closed output (`| head`) ends the writing quietly; the records still queued are
    // dropped, as the direct path does.
    let mut closed = false;
    let step = |result: io::Result<()>, closed: &mut bool| match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            *closed = true;
            Ok(())
        }
        other => other,
    };
    while let Ok(batch) = rx.recv() {
        if closed {
            continue;
        }
        for item in batch {
            let result = write(&mut names, &mut cache, item, &mut out);
            step(result, &mut closed)?;
        }
        // Everything queued, then one flush: as the direct path flushes per batch.
        while !closed && let Ok(batch) = rx.try_recv() {
            for item in batch {
                let result = write(&mut names, &mut cache, item, &mut out);
                step(result, &mut closed)?;
            }
        }
        if !closed {
            let result = out.flush();
            step(result, &mut closed)?;
        }
    }
    Ok(out)
}

/// Names an event's frames and writes it.
fn write(
    names: &mut symbolize::Names,
    cache: &mut StackCache,
    item: Item,
    out: &mut Output,
) -> io::Result<()> {
    if let Event::Fault(_) = item.event {
        // Faults carry no stack (docs/stacks.md): their own record, with the mapping.
        return out.fault(&item.event, item.fault_vma);
    }
    let stack = item.frames.map(|raw| cache.get(names, raw));
    out.event_stacked(&item.event, item.path, stack.as_deref())
}

fn name_frames(names: &mut symbolize::Names, raw: &[RawFrame]) -> Vec<Frame> {
    raw.iter()
        .map(|f| {
            let symbol = f
                .file
                .as_ref()
                .and_then(|(path, off)| names.lookup(path, *off));
            let (sym, src, line) = match symbol {
                Some(s) => (Some(s.name), s.src, s.line),
                None => (None, None, None),
            };
            Frame {
                addr: Hex(f.addr),
                sym,
                file: f.file.as_ref().map(|(p, _)| p.to_string()),
                // The frame's own address's offset (a return address, not the call).
                off: f
                    .file
                    .as_ref()
                    .map(|(_, off)| Hex(off + (f.addr - f.lookup))),
                src,
                line,
            }
        })
        .collect()
}

/// The reader's model of the traced processes' mappings.
#[derive(Default)]
struct Model {
    processes: process::Processes,
    /// Processes whose mappings the model has from their exec or a snapshot (asked
    /// for every record: a fast hash).
    seen: HashSet<u32, RandomState>,
}

impl Model {
    /// A /proc/<pid>/maps snapshot of a process first seen without its exec.
    fn snapshot(&mut self, pid: u32) {
        if !self.processes.known(pid) {
            self.processes.exec(pid);
        }
        for m in snapshot(pid) {
            self.processes.add(pid, m);
        }
    }

    /// What an event changes in the model: exec, a file mapping, a fork's copy.
    fn note(&mut self, event: &Event, path: Option<&FilePath>) {
        match event {
            Event::Exec(e) => self.processes.exec(e.header.pid),
            Event::Mmap(e) => {
                let call = &e.call;
                let Some(path) = path else {
                    return;
                };
                if is_error(call.ret) {
                    return;
                }
                let start = call.ret as u64;
                self.processes.add(
                    call.header.pid,
                    Mapping {
                        start,
                        end: start + call.args[1].next_multiple_of(4096),
                        offset: call.args[5],
                        path: Arc::from(String::from_utf8_lossy(&path.bytes).as_ref()),
                        exec: call.args[2] & libc::PROT_EXEC as u64 != 0,
                    },
                );
            }
            Event::Fork(_) | Event::Exit(_) => {
                if let Some(change) = event.lifecycle() {
                    self.processes.lifecycle(change);
                }
            }
            _ => {}
        }
    }

    /// Places exec's executable and its interpreter.
    fn image(&mut self, image: &ExecImageEvent) {
        let pid = image.header.pid;
        self.processes.exec(pid);
        let Some(exe) = FilePath::from_kernel(&image.exe) else {
            return;
        };
        let exe: Arc<str> = Arc::from(String::from_utf8_lossy(&exe.bytes).as_ref());
        let proc_exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
        let Some(info) = self.processes.elf.get_or(&exe, &proc_exe) else {
            return;
        };
        if let Some(first) = info.first_exec_vaddr() {
            let bias = image.start_code.wrapping_sub(first);
            self.processes.add_image(pid, exe, &info, bias);
        }
        if let (Some(interp), true) = (&info.interp, image.interp_base != 0) {
            let interp: Arc<str> = Arc::from(interp.as_str());
            if let Some(loader) = self.processes.elf.get(&interp) {
                let lowest = loader.segments.iter().map(|s| s.vaddr).min().unwrap_or(0);
                let bias = image.interp_base.wrapping_sub(lowest & !4095);
                self.processes.add_image(pid, interp, &loader, bias);
            }
        }
    }
}
