//! `mmap-stress random`: the seeded random client, checked request by request against the model.

use super::*;

pub(crate) struct Fds {
    /// [kind][0: O_RDWR, 1: O_RDONLY]
    pub(crate) fds: [[i32; 2]; DeviceKind::ALL.len()],
}

pub(crate) struct Tally {
    pub(crate) requests: u64,
    pub(crate) served: u64,
    pub(crate) mappings: u64,
    pub(crate) refused: BTreeMap<String, u64>,
    pub(crate) forks: u64,
    /// Forks refused as the model predicted (see `Model::fork_refused`).
    pub(crate) forks_refused: u64,
    pub(crate) checks: u64,
}

pub(crate) struct Client {
    pub(crate) seed: u64,
    pub(crate) rng: Rng,
    pub(crate) m: Model,
    pub(crate) fds: Fds,
    pub(crate) t: Tally,
    pub(crate) request: u64,
    pub(crate) what: String,
}

macro_rules! fail {
    ($c:expr, $($arg:tt)*) => {{
        println!("STRESS-FAIL seed={} request={} op={}: {}", $c.seed, $c.request, $c.what, format!($($arg)*));
        println!("replay: mmap-stress random --seed {} --requests {}", $c.seed, $c.request + 1);
        std::process::exit(1)
    }};
}

pub(crate) fn random(seed: u64, requests: u64) {
    println!("seed={seed} requests={requests}");
    let npages = npages();
    let fds = Fds {
        fds: DeviceKind::ALL.map(|k| {
            [
                open(&k.dev_path(), libc::O_RDWR),
                open(&k.dev_path(), libc::O_RDONLY),
            ]
        }),
    };
    let arena_len = SLOTS * SLOT_PAGES * PAGE;
    let arena = sys(
        libc::SYS_mmap,
        [
            0,
            arena_len,
            0,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE) as u64,
            u64::MAX,
            0,
        ],
    )
    .expect("arena");
    let bufs = DeviceKind::ALL
        .map(|k| pread(fds.fds[ki(k)][0], (npages * PAGE) as usize, 0).expect("initial read"));
    for (k, buf) in DeviceKind::ALL.iter().zip(&bufs) {
        assert_eq!(buf.len() as u64, npages * PAGE, "{k:?}: short initial read");
        // The model starts from the load-time pattern; an earlier run's writes are
        // still in the buffer until the module is reloaded.
        if let Some(p) =
            (0..npages as usize).find(|p| buf[p * PAGE as usize..][..PATTERN.len()] != PATTERN)
        {
            eprintln!(
                "mmap-stress: page {p} of {} no longer holds the load-time pattern (an earlier run wrote to it);\n\
                 the random client needs a freshly loaded module: rmmod mmtrace_drv && insmod mmtrace_drv.ko npages=N",
                k.dev_path()
            );
            std::process::exit(2);
        }
    }
    let mut c = Client {
        seed,
        rng: Rng::new(seed),
        m: Model {
            npages,
            bufs,
            pages: BTreeMap::new(),
            next_vma: 0,
            split: Default::default(),
            arena,
        },
        fds,
        t: Tally {
            requests: 0,
            served: 0,
            mappings: 0,
            refused: BTreeMap::new(),
            forks: 0,
            forks_refused: 0,
            checks: 0,
        },
        request: 0,
        what: String::new(),
    };
    let mut kmsg = std::env::var_os("MMTRACE_STRESS_KMSG")
        .map(|_| mmap_trace_tests::driver::Kmsg::open_at_end().unwrap());
    for i in 0..requests {
        c.request = i;
        c.step();
        if let Some(k) = kmsg.as_mut() {
            for r in k.read_new().unwrap().iter().filter(|r| r.level <= 4) {
                println!("KMSG after #{i} {}: <{}> {}", c.what, r.level, r.text);
            }
        }
        if i % CHECK_EVERY == CHECK_EVERY - 1 {
            c.check_all();
        }
    }
    c.what = "final check".into();
    c.check_all();
    // Unmap everything, then the counters must say 0 (the guest test checks it too).
    for v in c.m.vmas() {
        sys(libc::SYS_munmap, [v.start, v.end - v.start, 0, 0, 0, 0]).expect("final munmap");
    }
    c.m.pages.clear();
    c.check_all();
    let refusals: Vec<String> =
        c.t.refused
            .iter()
            .map(|(e, n)| format!("{e}:{n}"))
            .collect();
    println!(
        "STRESS-RESULT mode=random seed={seed} npages={npages} requests={} served={} refused={} mappings={} forks={} forks_refused={} checks={} refusals={}",
        c.t.requests,
        c.t.served,
        c.t.refused.values().sum::<u64>(),
        c.t.mappings,
        c.t.forks,
        c.t.forks_refused,
        c.t.checks,
        refusals.join(",")
    );
}

impl Client {
    /// Counts a request and compares its result with the prediction.
    pub(crate) fn outcome(&mut self, got: Result<u64, i32>, want: Result<(), i32>) -> Option<u64> {
        self.t.requests += 1;
        if std::env::var_os("MMTRACE_STRESS_VERBOSE").is_some() {
            println!("#{} {} -> {:x?}", self.request, self.what, got);
        }
        match (got, want) {
            (Ok(v), Ok(())) => {
                self.t.served += 1;
                Some(v)
            }
            (Err(e), Err(w)) if e == w => {
                *self.t.refused.entry(errno_name(e)).or_default() += 1;
                None
            }
            (got, want) => fail!(
                self,
                "kernel answered {:?}, the model predicted {:?}",
                got.map_err(errno_name),
                want.map_err(errno_name)
            ),
        }
    }

    pub(crate) fn step(&mut self) {
        let crowded = self.m.vmas().len() >= MAX_VMAS;
        let roll = self.rng.below(100);
        match roll {
            0..=29 if !crowded => self.mmap(),
            0..=41 => self.munmap(),
            42..=51 => self.mprotect(),
            52..=58 => self.mremap(),
            59..=68 => self.pread(),
            69..=78 => self.pwrite(),
            79..=87 => self.load_check(),
            88..=96 => self.store(),
            97 => self.fork(),
            _ => self.bad_calls(),
        }
    }

    pub(crate) fn mmap(&mut self) {
        let r = &mut self.rng;
        let np = self.m.npages;
        let kind = *r.pick(&DeviceKind::ALL);
        let len = match r.below(9) {
            0 => 0,
            1 => 1,
            2 => PAGE - 1,
            3 | 4 => r.range(1, np) * PAGE,
            5 => r.range(1, np) * PAGE - r.range(1, PAGE - 1),
            6 => (np + 1) * PAGE,
            7 => 1 << 30,
            _ => {
                let near_max = u64::MAX - r.below(PAGE);
                *r.pick(&[
                    u64::MAX,
                    near_max,
                    u64::MAX - 2 * PAGE + 1,
                    1 << 63,
                    TASK_SIZE + PAGE,
                ])
            }
        };
        let off = match r.below(8) {
            0..=2 => 0,
            3 | 4 => r.below(np) * PAGE,
            5 => np * PAGE + r.below(4) * PAGE,
            6 => r.range(1, PAGE - 1) + r.below(np) * PAGE,
            _ => *r.pick(&[
                !(PAGE - 1),
                1 << 63,
                (u64::MAX >> 1) & !(PAGE - 1),
                u64::MAX - PAGE * np + 1,
            ]),
        };
        let prot = *r.pick(&[
            libc::PROT_READ,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::PROT_WRITE,
            libc::PROT_NONE,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        ]);
        let mut flags = *r.pick(&[
            libc::MAP_SHARED,
            libc::MAP_SHARED,
            libc::MAP_PRIVATE,
            libc::MAP_PRIVATE,
            libc::MAP_SHARED_VALIDATE,
            libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC,
            0,
        ]);
        if r.chance(10) {
            flags |= libc::MAP_POPULATE;
        }
        if (1 << 30..=TASK_SIZE).contains(&len) {
            // Without it a private writable 1 GiB request fails the commit charge in
            // mmap_region() (ENOMEM, and the kernel logs a warning): let the driver answer.
            flags |= libc::MAP_NORESERVE;
        }
        let writable = r.chance(80);
        // MAP_FIXED into a free arena slot, only for lengths that fit in it.
        let fixed_slot = if len > 0 && len <= SLOT_PAGES * PAGE && r.chance(30) {
            let from = r.below(SLOTS);
            (0..SLOTS)
                .map(|i| (from + i) % SLOTS)
                .find(|&s| self.m.slot_is_free(s))
        } else {
            None
        };
        let addr = match fixed_slot {
            Some(s) => {
                flags |= libc::MAP_FIXED;
                self.m.slot_addr(s)
            }
            None => 0,
        };
        let fd = self.fds.fds[ki(kind)][usize::from(!writable)];
        self.what = format!(
            "mmap({addr:#x}, {len:#x}, prot {prot:#x}, flags {flags:#x}, {kind:?} {}, off {off:#x})",
            if writable { "O_RDWR" } else { "O_RDONLY" }
        );
        let want = predict_mmap(np, kind, len, off, prot, flags, writable);
        let got = sys(
            libc::SYS_mmap,
            [addr, len, prot as u64, flags as u64, fd as u64, off],
        );
        let served = self.outcome(got, want);
        if let Some(a) = served {
            if fixed_slot.is_some() && a != addr {
                fail!(self, "MAP_FIXED mapping at {a:#x}");
            }
            let pages = len.div_ceil(PAGE);
            let vma = self.m.new_vma();
            let shared = flags & libc::MAP_TYPE != libc::MAP_PRIVATE;
            // MAP_POPULATE write-faults every page of a private writable VMA to break COW
            // (populate_vma_page_range); the fault device serves those faults, so each
            // page is a private copy from the start. PFNMAP VMAs are not populated.
            let populated_copy = !kind.eager()
                && !shared
                && prot & libc::PROT_WRITE != 0
                && flags & (libc::MAP_POPULATE | libc::MAP_NONBLOCK) == libc::MAP_POPULATE;
            for i in 0..pages {
                let buf_page = off / PAGE + i;
                let start = (buf_page * PAGE) as usize;
                let page = Page {
                    kind,
                    shared,
                    buf_page,
                    prot,
                    fd_writable: writable,
                    copy: populated_copy
                        .then(|| self.m.bufs[ki(kind)][start..start + PAGE as usize].to_vec()),
                    vma,
                };
                if self.m.pages.insert(a + i * PAGE, page).is_some() {
                    fail!(self, "the kernel mapped {a:#x} over a live device mapping");
                }
            }
            self.t.mappings += 1;
        }
        if fixed_slot.is_some() {
            // A refusal from the driver comes after the old range was unmapped.
            self.m.recover_slots();
        }
    }

    /// A random existing VMA and a page-aligned subrange of it.
    pub(crate) fn some_range(&mut self) -> Option<(Vma, u64, u64)> {
        let vmas = self.m.vmas();
        if vmas.is_empty() {
            return None;
        }
        let v = vmas
            .into_iter()
            .nth(self.rng.below(self.m.vmas().len() as u64) as usize)?;
        let pages = (v.end - v.start) / PAGE;
        let (first, n) = match self.rng.below(4) {
            0 => (0, pages),
            1 => (0, self.rng.range(1, pages)),
            2 => {
                let n = self.rng.range(1, pages);
                (pages - n, n)
            }
            _ => {
                let first = self.rng.below(pages);
                (first, self.rng.range(1, pages - first))
            }
        };
        let start = v.start + first * PAGE;
        Some((v, start, start + n * PAGE))
    }

    pub(crate) fn munmap(&mut self) {
        let Some((_, start, end)) = self.some_range() else {
            return self.mmap();
        };
        self.what = format!("munmap({start:#x}, {:#x})", end - start);
        let got = sys(libc::SYS_munmap, [start, end - start, 0, 0, 0, 0]);
        self.outcome(got, Ok(()));
        self.m.split_at(start);
        self.m.split_at(end);
        let gone: Vec<u64> = self.m.pages.range(start..end).map(|(a, _)| *a).collect();
        for a in gone {
            self.m.pages.remove(&a);
        }
        self.m.recover_slots();
    }

    pub(crate) fn mprotect(&mut self) {
        let Some((v, start, end)) = self.some_range() else {
            return self.mmap();
        };
        let prot = *self.rng.pick(&[
            libc::PROT_NONE,
            libc::PROT_READ,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::PROT_WRITE,
        ]);
        self.what = format!(
            "mprotect({start:#x}, {:#x}, {prot:#x}) on {:?} shared={}",
            end - start,
            v.kind,
            v.shared
        );
        // A shared mapping of a read-only fd lost VM_MAYWRITE at mmap.
        let want = if v.shared && !v.fd_writable && prot & libc::PROT_WRITE != 0 {
            Err(libc::EACCES)
        } else {
            Ok(())
        };
        let got = sys(
            libc::SYS_mprotect,
            [start, end - start, prot as u64, 0, 0, 0],
        );
        if self.outcome(got, want).is_some() && prot != v.prot {
            self.m.split_at(start);
            self.m.split_at(end);
            for (_, p) in self.m.pages.range_mut(start..end) {
                p.prot = prot;
            }
        }
    }

    pub(crate) fn mremap(&mut self) {
        let vmas = self.m.vmas();
        if vmas.is_empty() {
            return self.mmap();
        }
        let v = vmas
            .into_iter()
            .nth(self.rng.below(self.m.vmas().len() as u64) as usize)
            .unwrap();
        let len = v.end - v.start;
        let free_slot = (0..SLOTS).find(|&s| self.m.slot_is_free(s));
        let choice = self.rng.below(5);
        let (new_len, flags, new_addr, want) = match (choice, free_slot) {
            // Growing a VM_DONTEXPAND|VM_PFNMAP mapping: refused, in place or moving.
            (0, _) => (len + self.rng.range(1, 4) * PAGE, 0, 0, Err(libc::EFAULT)),
            (1, _) => (len + PAGE, libc::MREMAP_MAYMOVE, 0, Err(libc::EFAULT)),
            (2, _) if len > PAGE => (len - self.rng.range(1, len / PAGE - 1) * PAGE, 0, 0, Ok(())),
            (3, Some(s)) => (
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                self.m.slot_addr(s),
                Ok(()),
            ),
            _ => (len, 0, 0, Ok(())),
        };
        self.what = format!(
            "mremap({:#x}, {len:#x}, {new_len:#x}, {flags:#x}, {new_addr:#x})",
            v.start
        );
        let got = sys(
            libc::SYS_mremap,
            [v.start, len, new_len, flags as u64, new_addr, 0],
        );
        let Some(at) = self.outcome(got, want) else {
            return;
        };
        let moved: Vec<(u64, Page)> = self
            .m
            .pages
            .range(v.start..v.end)
            .map(|(a, p)| (*a, p.clone()))
            .collect();
        for (a, _) in &moved {
            self.m.pages.remove(a);
        }
        if new_addr != 0 && at != new_addr {
            fail!(self, "MREMAP_FIXED answered {at:#x}");
        }
        if new_addr == 0 && at != v.start {
            fail!(self, "an in-place mremap answered {at:#x}");
        }
        let vma = if at == v.start {
            moved[0].1.vma
        } else {
            self.m.new_vma()
        };
        for (a, mut p) in moved.into_iter().filter(|(a, _)| a - v.start < new_len) {
            p.vma = vma;
            self.m.pages.insert(at + (a - v.start), p);
        }
        self.m.recover_slots();
    }

    /// An odd position and size, inside, across or past the end of the buffer.
    pub(crate) fn rw_span(&mut self) -> (i64, usize) {
        let size = self.m.size() as i64;
        let r = &mut self.rng;
        let pos = match r.below(8) {
            0 => 0,
            1..=3 => r.below(size as u64) as i64,
            4 => size - r.range(1, 8) as i64,
            5 => size + r.below(3) as i64 * PAGE as i64,
            6 => *r.pick(&[-1, -(PAGE as i64), i64::MIN, i64::MAX, i64::MAX - 8]),
            _ => (r.below(self.m.npages) * PAGE) as i64 - 1,
        };
        let len = match r.below(5) {
            0 => 0,
            1 => 1,
            2 => r.range(1, 64) as usize,
            3 => r.range(1, 2 * PAGE) as usize,
            _ => r.range(1, 2 * size as u64) as usize,
        };
        (pos, len)
    }

    /// read()/write() rules (docs/driver.md + the VFS's rw_verify_area()): negative position or
    /// position + length overflowing loff_t: EINVAL; reads clamp at the end and return 0
    /// there; writes starting at or past the end: ENOSPC (zero-length: 0).
    pub(crate) fn rw_predict(&self, pos: i64, len: usize, write: bool) -> Result<usize, i32> {
        let size = self.m.size() as i64;
        if pos < 0 || pos.checked_add(len as i64).is_none() {
            return Err(libc::EINVAL);
        }
        if pos >= size {
            return if write && len > 0 {
                Err(libc::ENOSPC)
            } else {
                Ok(0)
            };
        }
        Ok(len.min((size - pos) as usize))
    }

    pub(crate) fn pread(&mut self) {
        let kind = *self.rng.pick(&DeviceKind::ALL);
        let ro = usize::from(self.rng.chance(50));
        let (pos, len) = self.rw_span();
        self.what = format!("pread({kind:?}, len {len}, pos {pos})");
        let want = self.rw_predict(pos, len, false);
        let got = pread(self.fds.fds[ki(kind)][ro], len, pos);
        let n = self.outcome(
            got.as_ref().map(|b| b.len() as u64).map_err(|e| *e),
            want.map(|_| ()),
        );
        if let (Some(n), Ok(w)) = (n, want) {
            if n as usize != w {
                fail!(self, "read {n} bytes, the model says {w}");
            }
            let start = (pos as usize).min(self.m.size() as usize);
            if got.unwrap()[..] != self.m.bufs[ki(kind)][start..start + w] {
                fail!(self, "the bytes read differ from the model's buffer");
            }
        }
    }

    pub(crate) fn pwrite(&mut self) {
        let kind = *self.rng.pick(&DeviceKind::ALL);
        let (pos, len) = self.rw_span();
        let data = self.rng.bytes(len);
        self.what = format!("pwrite({kind:?}, len {len}, pos {pos})");
        let want = self.rw_predict(pos, len, true);
        let got = pwrite(self.fds.fds[ki(kind)][0], &data, pos);
        let n = self.outcome(got, want.map(|_| ()));
        if let (Some(n), Ok(w)) = (n, want) {
            if n as usize != w {
                fail!(self, "wrote {n} bytes, the model says {w}");
            }
            let start = (pos as usize).min(self.m.size() as usize);
            self.m.bufs[ki(kind)][start..start + w].copy_from_slice(&data[..w]);
        }
    }

    /// A span of one VMA with odd start and length, if one allows `prot`.
    pub(crate) fn mapped_span(&mut self, prot: i32) -> Option<(u64, usize)> {
        let vmas: Vec<Vma> = self
            .m
            .vmas()
            .into_iter()
            .filter(|v| v.prot & prot == prot)
            .collect();
        if vmas.is_empty() {
            return None;
        }
        let v = &vmas[self.rng.below(vmas.len() as u64) as usize];
        let len = v.end - v.start;
        let start = v.start + self.rng.below(len);
        let n = self.rng.range(1, (v.end - start).min(3 * PAGE));
        Some((start, n as usize))
    }

    pub(crate) fn load_check(&mut self) {
        let Some((addr, len)) = self.mapped_span(libc::PROT_READ) else {
            return self.pread();
        };
        self.what = format!("load {len} bytes at {addr:#x}");
        self.t.requests += 1;
        self.t.served += 1;
        if load(addr, len) != self.m.expected_range(addr, len) {
            fail!(self, "the mapping's bytes differ from the model");
        }
    }

    pub(crate) fn store(&mut self) {
        let Some((addr, len)) = self.mapped_span(libc::PROT_WRITE) else {
            return self.pwrite();
        };
        let data = self.rng.bytes(len);
        self.what = format!("store {len} bytes at {addr:#x}");
        self.t.requests += 1;
        self.t.served += 1;
        store(addr, &data);
        self.m.apply_store(addr, &data);
    }

    /// Calls refused before they reach a mapping: unaligned, zero-length, bad prot.
    pub(crate) fn bad_calls(&mut self) {
        let a = self.m.pages.keys().next().copied().unwrap_or(self.m.arena);
        let (name, nr, args, want) = match self.rng.below(5) {
            0 => (
                "munmap unaligned",
                libc::SYS_munmap,
                [a + 1, PAGE, 0, 0, 0, 0],
                libc::EINVAL,
            ),
            1 => (
                "munmap len 0",
                libc::SYS_munmap,
                [a, 0, 0, 0, 0, 0],
                libc::EINVAL,
            ),
            2 => (
                "mprotect unaligned",
                libc::SYS_mprotect,
                [a + 3, PAGE, libc::PROT_READ as u64, 0, 0, 0],
                libc::EINVAL,
            ),
            3 => (
                "mprotect bad prot",
                libc::SYS_mprotect,
                [a, PAGE, 0x100, 0, 0, 0],
                libc::EINVAL,
            ),
            _ => (
                "mremap new_len 0",
                libc::SYS_mremap,
                [a, PAGE, 0, 0, 0, 0],
                libc::EINVAL,
            ),
        };
        self.what = name.to_owned();
        let got = sys(nr, args);
        self.outcome(got, Err(want));
    }

    /// fork with every mapping held: the child checks what it sees, stores through a
    /// shared mapping (the parent must see it) and a private one (it must not), and
    /// waits while the parent counts twice the VMAs.
    pub(crate) fn fork(&mut self) {
        self.what = "fork".into();
        let refused = self.m.fork_refused();
        let shared_w = self
            .m
            .vmas()
            .into_iter()
            .find(|v| v.shared && v.prot & libc::PROT_WRITE != 0);
        let private_w = self
            .m
            .vmas()
            .into_iter()
            .find(|v| !v.shared && v.prot & libc::PROT_WRITE != 0);
        let readable: Vec<(u64, usize)> = (0..3)
            .filter_map(|_| self.mapped_span(libc::PROT_READ))
            .collect();
        let child_data = self.rng.bytes(16);
        let mut up = [0i32; 2];
        let mut down = [0i32; 2];
        // SAFETY: plain pipes.
        unsafe {
            assert_eq!(libc::pipe(up.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(down.as_mut_ptr()), 0);
        }
        // SAFETY: this program is single-threaded here; the child only uses memory it
        // inherited and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let mut code = 0;
            for (addr, len) in &readable {
                if load(*addr, *len) != self.m.expected_range(*addr, *len) {
                    code = 3;
                }
            }
            if let Some(v) = &shared_w {
                store(v.start, &child_data);
            }
            if let Some(v) = &private_w {
                store(v.start, &[0x5a; 16]);
            }
            let mut b = [code as u8];
            // SAFETY: pipe fds and a one-byte buffer.
            unsafe {
                libc::write(up[1], b.as_ptr().cast(), 1);
                libc::read(down[0], b.as_mut_ptr().cast(), 1);
                libc::_exit(code);
            }
        }
        if pid < 0
            && refused
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOMEM)
        {
            self.t.forks_refused += 1;
            self.outcome(Err(libc::ENOMEM), Err(libc::ENOMEM));
            // SAFETY: our own pipe fds.
            unsafe {
                up.into_iter().chain(down).for_each(|fd| {
                    libc::close(fd);
                })
            };
            return;
        }
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            let maps: String = std::fs::read_to_string("/proc/self/smaps")
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.contains('-') && !l.contains(':')
                        || l.contains("-") && l.contains("/dev")
                        || l.starts_with("VmFlags")
                        || l.starts_with("Size")
                })
                .map(|l| format!("{l}\n"))
                .collect();
            fail!(self, "fork: {e}; /proc/self/maps:\n{maps}");
        }
        self.t.forks += 1;
        self.t.requests += 1;
        let mut b = [0u8];
        // SAFETY: pipe fds and a one-byte buffer.
        unsafe { libc::read(up[0], b.as_mut_ptr().cast(), 1) };
        let vmas = self.m.vmas();
        for kind in DeviceKind::ALL {
            let mine = vmas.iter().filter(|v| v.kind == kind).count() as i64;
            let live = live_maps(kind).unwrap_or(-1);
            if live != 2 * mine {
                fail!(
                    self,
                    "{kind:?}: {live} live mappings with the child holding copies, want {}",
                    2 * mine
                );
            }
        }
        let mut status = 0;
        // SAFETY: pipe fds, our own child.
        unsafe {
            libc::write(down[1], b.as_ptr().cast(), 1);
            libc::waitpid(pid, &mut status, 0);
            for fd in up.into_iter().chain(down) {
                libc::close(fd);
            }
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            fail!(
                self,
                "the child failed (wait status {status:#x}; 3: it saw bytes that differ from the model)"
            );
        }
        if refused {
            fail!(
                self,
                "fork succeeded; the model predicted ENOMEM (a private VMA starts with a COW page)"
            );
        }
        self.t.served += 1;
        if let Some(v) = shared_w {
            self.m.apply_store(v.start, &child_data);
        }
        self.check_all();
    }

    /// /proc/self/maps and the driver's counters against the model; every mapped byte
    /// and every buffer against the model.
    pub(crate) fn check_all(&mut self) {
        self.t.checks += 1;
        let what = std::mem::replace(&mut self.what, "check".into());
        let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
        let lines: Vec<_> = parse_maps(&maps)
            .expect("parse maps")
            .into_iter()
            .filter(|l| l.name.as_deref().is_some_and(|n| n.starts_with(DEV_PREFIX)))
            .collect();
        let vmas = self.m.vmas();
        let want: Vec<(u64, u64, String, String)> = vmas
            .iter()
            .map(|v| {
                let perms = vm::perms(vm::from_prot(v.prot as u64, v.shared));
                (v.start, v.end, perms, v.kind.dev_path())
            })
            .collect();
        let got: Vec<(u64, u64, String, String)> = lines
            .iter()
            .map(|l| {
                (
                    l.start,
                    l.end,
                    l.perms.clone(),
                    l.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        if got != want {
            fail!(
                self,
                "after {what}: /proc/self/maps device lines differ from the model:\n got  {got:x?}\n want {want:x?}"
            );
        }
        for kind in DeviceKind::ALL {
            let n = vmas.iter().filter(|v| v.kind == kind).count() as i64;
            match live_maps(kind) {
                Ok(live) if live == n => {}
                other => fail!(
                    self,
                    "after {what}: {kind:?} live mappings {other:?}, the model has {n} VMAs"
                ),
            }
            let buf = pread(self.fds.fds[ki(kind)][0], self.m.size() as usize, 0)
                .expect("pread whole buffer");
            if buf != self.m.bufs[ki(kind)] {
                let at = buf
                    .iter()
                    .zip(&self.m.bufs[ki(kind)])
                    .position(|(a, b)| a != b);
                fail!(
                    self,
                    "after {what}: {kind:?} buffer differs from the model at byte {at:?}"
                );
            }
        }
        for v in vmas.iter().filter(|v| v.prot & libc::PROT_READ != 0) {
            let len = (v.end - v.start) as usize;
            if load(v.start, len) != self.m.expected_range(v.start, len) {
                fail!(
                    self,
                    "after {what}: the mapping at {:#x} differs from the model",
                    v.start
                );
            }
        }
        self.what = what;
    }
}

/// What the kernel (do_mmap(), file_mmap_ok()) and the driver answer, in their order.
pub(crate) fn predict_mmap(
    npages: u64,
    kind: DeviceKind,
    len: u64,
    off: u64,
    prot: i32,
    flags: i32,
    writable: bool,
) -> Result<(), i32> {
    if !off.is_multiple_of(PAGE) || len == 0 {
        return Err(libc::EINVAL);
    }
    let Some(alen) = len.checked_next_multiple_of(PAGE) else {
        return Err(libc::ENOMEM);
    };
    let pgoff = off / PAGE;
    if alen > TASK_SIZE {
        return Err(libc::ENOMEM);
    }
    // file_mmap_ok(): a character device may map up to ULONG_MAX bytes of offset + length.
    if pgoff > (u64::MAX - alen) >> 12 {
        return Err(libc::EOVERFLOW);
    }
    let shared = match flags & libc::MAP_TYPE {
        libc::MAP_SHARED => true,
        libc::MAP_SHARED_VALIDATE => {
            if flags & libc::MAP_SYNC != 0 {
                return Err(libc::EOPNOTSUPP);
            }
            true
        }
        libc::MAP_PRIVATE => false,
        _ => return Err(libc::EINVAL),
    };
    if shared && prot & libc::PROT_WRITE != 0 && !writable {
        return Err(libc::EACCES);
    }
    // mmap_region() charges a private writable mapping against the commit limit before
    // the driver sees it (the 1 GiB request in a 1 GiB guest).
    if !shared
        && prot & libc::PROT_WRITE != 0
        && flags & libc::MAP_NORESERVE == 0
        && alen / PAGE > commit_limit_pages()
    {
        return Err(libc::ENOMEM);
    }
    // The driver (mmtrace_check_request()).
    if pgoff >= npages {
        return Err(libc::ENXIO);
    }
    if pgoff + alen / PAGE > npages {
        return Err(libc::EINVAL);
    }
    if !kind.serves_private() && !shared {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// The pages __vm_enough_memory() lets one mapping charge: RAM + swap under the default
/// heuristic overcommit (mode 0), unlimited under mode 1.
pub(crate) fn commit_limit_pages() -> u64 {
    let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap_or_default();
    match mode.trim() {
        "1" => u64::MAX,
        "0" => {
            // SAFETY: an all-zero sysinfo is a valid value of this plain C struct.
            let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
            // SAFETY: sysinfo fills the struct we own.
            assert_eq!(unsafe { libc::sysinfo(&mut si) }, 0);
            (si.totalram + si.totalswap) * u64::from(si.mem_unit) / PAGE
        }
        other => panic!("vm.overcommit_memory={other:?}: the model knows modes 0 and 1 only"),
    }
}
