//! The model against each cause: first by rule (a fake environment), then against the
//! kernel itself: the test process makes the calls inside a window of its own address
//! space, and the model's prediction is compared with the real /proc/self/maps.

use std::collections::HashMap;

use super::{
    model::FileIdentity,
    region::{Hidden, normalize},
    syscall::ShmSegment,
    *,
};

const RW: u64 = (libc::PROT_READ | libc::PROT_WRITE) as u64;
const R: u64 = libc::PROT_READ as u64;
const PRIVATE_ANON: u64 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
const SHARED_ANON: u64 = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
const FIXED: u64 = libc::MAP_FIXED as u64;
const SHARED: u64 = libc::MAP_SHARED as u64;
const PRIVATE: u64 = libc::MAP_PRIVATE as u64;
const MAYMOVE: u64 = libc::MREMAP_MAYMOVE as u64;
const MREMAP_FIXED: u64 = libc::MREMAP_FIXED as u64;
const DONTUNMAP: u64 = 4;
const P: u64 = PAGE;
const A: u64 = 0x7000_0000_0000;

fn nr(n: i64) -> u64 {
    n as u64
}

/// Files by fd and segments by shmid, as a test says.
#[derive(Default)]
struct FakeEnv {
    files: HashMap<i32, FileIdentity>,
    shm: HashMap<i32, ShmSegment>,
}

impl CallEnv for FakeEnv {
    fn fd_file(&self, fd: i32) -> Option<FileIdentity> {
        self.files.get(&fd).cloned()
    }
    fn shm_segment(&self, shmid: i32) -> Option<ShmSegment> {
        self.shm.get(&shmid).copied()
    }
}

fn file(path: &[u8], inode: u64) -> FileIdentity {
    FileIdentity {
        dev: (8, 1),
        inode,
        path: path.to_vec(),
        overlay: false,
        rdev: None,
    }
}

fn env_with_file(fd: i32, f: FileIdentity) -> FakeEnv {
    let mut env = FakeEnv::default();
    env.files.insert(fd, f);
    env
}

/// `(start, end, perms, name, offset)` of the model as maps would show it (merged, the
/// flags maps does not print left out).
fn shape(s: &AddressSpace) -> Vec<(u64, u64, String, String, u64)> {
    normalize(
        s.regions()
            .iter()
            .map(|r| Region {
                hidden: Hidden::default(),
                ..r.clone()
            })
            .collect(),
    )
    .into_iter()
    .map(|r| {
        (
            r.start,
            r.end,
            r.perms.clone(),
            r.backing.to_string(),
            r.offset,
        )
    })
    .collect()
}

fn row(
    start: u64,
    end: u64,
    perms: &str,
    name: &str,
    offset: u64,
) -> (u64, u64, String, String, u64) {
    (start, end, perms.into(), name.into(), offset)
}

#[expect(
    clippy::too_many_arguments,
    reason = "mmap(2)'s own six arguments, its result and the file"
)]
fn mmap(
    s: &mut AddressSpace,
    addr: u64,
    len: u64,
    prot: u64,
    flags: u64,
    fd: i32,
    off: u64,
    env: &dyn CallEnv,
) -> Applied {
    apply_syscall(
        s,
        nr(libc::SYS_mmap),
        [addr, len, prot, flags, fd as u64, off],
        addr as i64,
        env,
    )
}

fn call(s: &mut AddressSpace, n: i64, args: &[u64], ret: i64) -> Applied {
    let mut a = [0u64; 6];
    a[..args.len()].copy_from_slice(args);
    apply_syscall(s, nr(n), a, ret, &NoEnv)
}

#[test]
fn mmap_file_anon_and_shared_anon() {
    let mut s = AddressSpace::default();
    let env = env_with_file(3, file(b"/lib/x.so", 7));
    assert_eq!(
        mmap(&mut s, A, 2 * P, R, PRIVATE, 3, 0x3000, &env),
        Applied::Modelled
    );
    assert_eq!(
        mmap(&mut s, A + 2 * P, 100, RW, PRIVATE_ANON, -1, 0, &env),
        Applied::Modelled
    );
    assert_eq!(
        mmap(&mut s, A + 3 * P, P, RW, SHARED_ANON, -1, 0, &env),
        Applied::Modelled
    );
    assert_eq!(
        shape(&s),
        [
            row(A, A + 2 * P, "r--p", "/lib/x.so", 0x3000),
            row(A + 2 * P, A + 3 * P, "rw-p", "", 0),
            row(A + 3 * P, A + 4 * P, "rw-s", "/dev/zero (deleted)", 0),
        ]
    );
    // A file mapping whose fd the environment cannot name is still made, and said to be
    // unmodelled (the caller adopts the kernel's view of it).
    assert_eq!(
        mmap(&mut s, A + 8 * P, P, R, PRIVATE, 9, 0, &env),
        Applied::Unmodelled { cause: "mmap" }
    );
    assert!(s.region_at(A + 8 * P).is_some());
}

#[test]
fn map_fixed_replaces_and_munmap_splits() {
    let mut s = AddressSpace::default();
    let env = env_with_file(3, file(b"/data", 9));
    mmap(&mut s, A, 4 * P, R, PRIVATE, 3, 0, &env);
    mmap(&mut s, A + P, P, RW, PRIVATE_ANON | FIXED, -1, 0, &env);
    call(&mut s, libc::SYS_munmap, &[A + 2 * P, 1], 0);
    assert_eq!(
        shape(&s),
        [
            row(A, A + P, "r--p", "/data", 0),
            row(A + P, A + 2 * P, "rw-p", "", 0),
            row(A + 3 * P, A + 4 * P, "r--p", "/data", 3 * P)
        ]
    );
}

#[test]
fn mprotect_and_pkey_mprotect_change_perms_and_failures_change_nothing() {
    let mut s = AddressSpace::default();
    mmap(&mut s, A, 3 * P, RW, PRIVATE_ANON, -1, 0, &NoEnv);
    assert_eq!(
        call(&mut s, libc::SYS_mprotect, &[A + P, P, R], 0),
        Applied::Modelled
    );
    assert_eq!(
        call(
            &mut s,
            libc::SYS_pkey_mprotect,
            &[A + 2 * P, P, 0, u64::MAX],
            0
        ),
        Applied::Modelled
    );
    assert_eq!(
        call(&mut s, libc::SYS_munmap, &[A, P], -(libc::EINVAL as i64)),
        Applied::Failed
    );
    assert_eq!(
        shape(&s),
        [
            row(A, A + P, "rw-p", "", 0),
            row(A + P, A + 2 * P, "r--p", "", 0),
            row(A + 2 * P, A + 3 * P, "---p", "", 0)
        ]
    );
    // ENOMEM: the kernel changed everything up to the hole before it failed.
    call(&mut s, libc::SYS_munmap, &[A + P, P], 0);
    assert_eq!(
        call(
            &mut s,
            libc::SYS_mprotect,
            &[A, 3 * P, 0],
            -(libc::ENOMEM as i64)
        ),
        Applied::Modelled
    );
    assert_eq!(
        shape(&s),
        [
            row(A, A + P, "---p", "", 0),
            row(A + 2 * P, A + 3 * P, "---p", "", 0)
        ]
    );
}

#[test]
fn mremap_moves_grows_shrinks_and_keeps_file_offsets() {
    let mut s = AddressSpace::default();
    let env = env_with_file(3, file(b"/f", 7));
    mmap(&mut s, A, 2 * P, RW, PRIVATE, 3, 0x3000, &env);
    call(
        &mut s,
        libc::SYS_mremap,
        &[A, 2 * P, 3 * P, MAYMOVE],
        (A + 0x40000) as i64,
    );
    assert_eq!(
        shape(&s),
        [row(A + 0x40000, A + 0x43000, "rw-p", "/f", 0x3000)]
    );
    call(
        &mut s,
        libc::SYS_mremap,
        &[A + 0x40000, 3 * P, P, 0],
        (A + 0x40000) as i64,
    );
    assert_eq!(
        shape(&s),
        [row(A + 0x40000, A + 0x41000, "rw-p", "/f", 0x3000)]
    );
    call(
        &mut s,
        libc::SYS_mremap,
        &[A + 0x40000, P, 2 * P, 0],
        (A + 0x40000) as i64,
    );
    assert_eq!(
        shape(&s),
        [row(A + 0x40000, A + 0x42000, "rw-p", "/f", 0x3000)]
    );
}

/// Issue 12: old_len 0 of a shared mapping makes a second mapping; the old one stays.
#[test]
fn mremap_dup_and_dontunmap_keep_the_source() {
    let mut s = AddressSpace::default();
    let env = env_with_file(3, file(b"/shm/x", 5));
    mmap(&mut s, A, 2 * P, RW, SHARED, 3, P, &env);
    assert_eq!(
        call(
            &mut s,
            libc::SYS_mremap,
            &[A + P, 0, 2 * P, MAYMOVE],
            (A + 8 * P) as i64
        ),
        Applied::Modelled
    );
    assert_eq!(
        shape(&s),
        [
            row(A, A + 2 * P, "rw-s", "/shm/x", P),
            row(A + 8 * P, A + 10 * P, "rw-s", "/shm/x", 2 * P)
        ]
    );
    mmap(&mut s, A + 16 * P, P, R, PRIVATE_ANON, -1, 0, &env);
    call(
        &mut s,
        libc::SYS_mremap,
        &[
            A + 16 * P,
            P,
            P,
            MAYMOVE | MREMAP_FIXED | DONTUNMAP,
            A + 20 * P,
        ],
        (A + 20 * P) as i64,
    );
    assert_eq!(
        shape(&s)[2..],
        [
            row(A + 16 * P, A + 17 * P, "r--p", "", 0),
            row(A + 20 * P, A + 21 * P, "r--p", "", 0)
        ]
    );
}

/// maps calls any anonymous VMA over the initial heap `[heap]`, whoever mapped it: an
/// mmap at a hint over a heap that is still empty (chromium's children do it).
#[test]
fn anonymous_memory_over_an_empty_heap_is_named_heap() {
    let start_brk = A + 0x10_3000;
    let mut s = AddressSpace::from_kernel(vec![], start_brk);
    mmap(&mut s, A, 0x20_0000, 0, PRIVATE_ANON, -1, 0, &NoEnv);
    assert_eq!(shape(&s), [row(A, A + 0x20_0000, "---p", "[heap]", 0)]);
    // Below the heap's start: plain anonymous memory.
    mmap(&mut s, A - 0x1000, 0x1000, RW, PRIVATE_ANON, -1, 0, &NoEnv);
    assert_eq!(s.region_at(A - 0x1000).unwrap().backing, Backing::Anonymous);
}

#[test]
fn brk_grows_and_shrinks_the_heap_from_a_known_start() {
    let h = 0x5555_0000_0000;
    let mut s = AddressSpace::from_kernel(vec![], h);
    call(&mut s, libc::SYS_brk, &[0], h as i64);
    call(
        &mut s,
        libc::SYS_brk,
        &[h + 3 * P + 1],
        (h + 3 * P + 1) as i64,
    );
    assert_eq!(shape(&s), [row(h, h + 4 * P, "rw-p", "[heap]", 0)]);
    call(&mut s, libc::SYS_brk, &[h + P], (h + P) as i64);
    assert_eq!(shape(&s), [row(h, h + P, "rw-p", "[heap]", 0)]);
    // Attached later: a brk(0) answering a break above the start is not a new program.
    let mut seeded = AddressSpace::from_kernel(
        vec![Region {
            backing: Backing::Heap,
            ..Region::anonymous(h, h + 2 * P, "rw-p")
        }],
        h,
    );
    call(&mut seeded, libc::SYS_brk, &[0], (h + 2 * P - 8) as i64);
    call(&mut seeded, libc::SYS_brk, &[h + 3 * P], (h + 3 * P) as i64);
    assert_eq!(shape(&seeded), [row(h, h + 3 * P, "rw-p", "[heap]", 0)]);
}

/// maps names a VMA `[heap]` by the VMA's extent (`vma_is_initial_heap`), and the kernel
/// decides the extent: brk leaves the anonymous VMA just below the heap apart (a bss when
/// randomization is off), an mprotect or mlock over both merges them into one `[heap]`,
/// another mprotect splits the lower part off as plain anonymous memory again.
#[test]
fn memory_the_kernel_merged_into_the_heap_vma_is_named_heap() {
    let h = 0x4d_6000;
    let heap = |start, end| Region {
        backing: Backing::Heap,
        ..Region::anonymous(start, end, "rw-p")
    };
    let bss = Region::anonymous(h - 7 * P, h, "rw-p");
    let mut s = AddressSpace::from_kernel(vec![bss.clone()], h);
    call(&mut s, libc::SYS_brk, &[0], h as i64);
    call(&mut s, libc::SYS_brk, &[h + 4 * P], (h + 4 * P) as i64);
    let model = s.regions().to_vec();
    assert_eq!(model, [bss.clone(), heap(h, h + 4 * P)]);
    let named = |kernel: &[Region]| s.named_in(model.clone(), kernel);

    let apart = [bss.clone(), heap(h, h + 4 * P)];
    assert_eq!(compare(&named(&apart), &apart), Comparison::default());
    let merged = [heap(h - 7 * P, h + 4 * P)];
    assert_eq!(
        compare(&model, &merged).differences[0].field,
        Field::Path,
        "without the kernel's extent the bss looks misnamed"
    );
    assert_eq!(compare(&named(&merged), &merged), Comparison::default());
    let split = [
        Region::anonymous(h - 7 * P, h - 2 * P, "rw-p"),
        heap(h - 2 * P, h + 4 * P),
    ];
    assert_eq!(compare(&named(&split), &split), Comparison::default());

    // A VMA that only touches the heap: 6.1 calls it `[heap]` (inclusive bounds), later
    // kernels do not; either is accepted, and nothing further away.
    let touching = [heap(h - 7 * P, h), heap(h, h + 4 * P)];
    let mut empty = AddressSpace::from_kernel(vec![bss.clone()], h);
    call(&mut empty, libc::SYS_brk, &[0], h as i64);
    let only_bss = vec![bss.clone()];
    assert_eq!(
        compare(
            &empty.named_in(only_bss.clone(), &touching[..1]),
            &touching[..1]
        ),
        Comparison::default()
    );
    assert_eq!(
        compare(&empty.named_in(only_bss.clone(), &apart[..1]), &apart[..1]),
        Comparison::default()
    );
    // A `[heap]` VMA that does not reach the model's heap is still a difference: the
    // model's break decides, not the kernel's name.
    let below = [heap(h - 8 * P, h - P)];
    let lower = vec![Region::anonymous(h - 8 * P, h - P, "rw-p")];
    assert_eq!(
        compare(&empty.named_in(lower, &below), &below).differences[0].field,
        Field::Path
    );
    // Nor does the heap's name reach memory the kernel keeps in another kind of VMA.
    let file = Region {
        dev: (8, 1),
        inode: 3,
        backing: Backing::File("/f".into()),
        ..Region::anonymous(h - 7 * P, h, "rw-p")
    };
    assert_eq!(s.named_in(vec![file.clone()], &merged), [file]);
}

/// maps names `[stack]` the VMA that holds `start_stack`: an mprotect of a page inside
/// the stack splits it, and the pieces without it are plain anonymous memory until the
/// kernel merges them back.
#[test]
fn only_the_stack_piece_holding_start_stack_is_named_stack() {
    let (lo, hi) = (0x7ffd_0000_0000, 0x7ffd_0002_1000);
    let start_stack = hi - 0x800;
    let stack = |start, end, perms| Region {
        backing: Backing::Stack,
        ..Region::anonymous(start, end, perms)
    };
    let mut s =
        AddressSpace::from_kernel(vec![stack(lo, hi, "rw-p")], 0).with_start_stack(start_stack);
    let page = lo + 4 * P;
    call(&mut s, libc::SYS_mprotect, &[page, P, R], 0);
    let model = s.regions().to_vec();
    let split = [
        Region::anonymous(lo, page, "rw-p"),
        Region::anonymous(page, page + P, "r--p"),
        stack(page + P, hi, "rw-p"),
    ];
    assert!(
        !compare(&model, &split).differences.is_empty(),
        "the model alone calls every piece [stack]"
    );
    assert_eq!(
        compare(&s.named_in(model, &split), &split),
        Comparison::default()
    );
    call(&mut s, libc::SYS_mprotect, &[page, P, RW], 0);
    let whole = [stack(lo, hi, "rw-p")];
    let model = s.regions().to_vec();
    assert_eq!(
        compare(&s.named_in(model.clone(), &whole), &whole),
        Comparison::default()
    );
    // A kernel that named the low piece `[stack]` is still caught.
    let misnamed = [stack(lo, page, "rw-p"), stack(page, hi, "rw-p")];
    let d = compare(&s.named_in(model, &misnamed), &misnamed).differences;
    assert_eq!(
        d.iter()
            .map(|d| (d.start, d.end, d.field))
            .collect::<Vec<_>>(),
        [(lo, page, Field::Path)]
    );
}

/// ipc/shm.c: `SYSV%08x (deleted)`, rw-s (r--s with SHM_RDONLY, rwxs with SHM_EXEC), the
/// segment's pages, inode = shmid; shmdt removes every fragment attached at the address.
#[test]
fn shmat_and_shmdt() {
    let mut env = FakeEnv::default();
    env.shm.insert(
        3,
        ShmSegment {
            size: 3 * P + 5,
            key: 0x1234,
        },
    );
    let mut s = AddressSpace::default();
    assert_eq!(
        call(&mut s, libc::SYS_shmat, &[3, 0, 0], A as i64),
        Applied::Unmodelled { cause: "shmat" }
    );
    let shmat = |s: &mut AddressSpace, addr: u64, flags: u64| {
        apply_syscall(
            s,
            nr(libc::SYS_shmat),
            [3, 0, flags, 0, 0, 0],
            addr as i64,
            &env,
        )
    };
    assert_eq!(shmat(&mut s, A, 0), Applied::Modelled);
    assert_eq!(
        shmat(&mut s, A + 8 * P, libc::SHM_RDONLY as u64),
        Applied::Modelled
    );
    assert_eq!(
        shmat(&mut s, A + 16 * P, libc::SHM_EXEC as u64),
        Applied::Modelled
    );
    let r = s.region_at(A).unwrap();
    assert_eq!(
        (r.end, r.perms.as_str(), r.inode, r.dev),
        (A + 4 * P, "rw-s", 3, model::SHMEM_DEV)
    );
    assert_eq!(r.backing.to_string(), "/SYSV00001234 (deleted)");
    assert_eq!(s.region_at(A + 8 * P).unwrap().perms, "r--s");
    assert_eq!(s.region_at(A + 16 * P).unwrap().perms, "rwxs");
    // Fragments: a hole punched in the first attach, a page re-protected.
    call(&mut s, libc::SYS_munmap, &[A + P, P], 0);
    call(&mut s, libc::SYS_mprotect, &[A + 2 * P, P, R], 0);
    assert_eq!(
        apply_syscall(&mut s, nr(libc::SYS_shmdt), [A, 0, 0, 0, 0, 0], 0, &env),
        Applied::Modelled
    );
    assert!(
        s.regions().iter().all(|r| r.start >= A + 8 * P),
        "{:?}",
        s.regions()
    );
    // The other attaches of the segment stay.
    assert_eq!(s.regions().iter().count(), 2);
    // Nothing attached there: the model cannot explain a successful shmdt.
    assert_eq!(
        call(&mut s, libc::SYS_shmdt, &[A], 0),
        Applied::Unmodelled { cause: "shmdt" }
    );
}

/// mm/mmap.c: a MAP_FIXED mmap of the same file with the region's permissions, offset
/// pgoff pages.
#[test]
fn remap_file_pages_maps_the_file_again_at_pgoff() {
    let mut s = AddressSpace::default();
    let env = env_with_file(3, file(b"/db", 11));
    mmap(&mut s, A, 4 * P, RW, SHARED, 3, 0, &env);
    assert_eq!(
        call(&mut s, libc::SYS_remap_file_pages, &[A + P, P, 0, 3, 0], 0),
        Applied::Modelled
    );
    assert_eq!(
        shape(&s),
        [
            row(A, A + P, "rw-s", "/db", 0),
            row(A + P, A + 2 * P, "rw-s", "/db", 3 * P),
            row(A + 2 * P, A + 4 * P, "rw-s", "/db", 2 * P)
        ]
    );
}

/// drivers/char/mem.c mmap_zero: MAP_SHARED of /dev/zero is shmem (`/dev/zero (deleted)`,
/// the offset kept); MAP_PRIVATE stays /dev/zero.
#[test]
fn dev_zero_shared_becomes_shmem() {
    let mut s = AddressSpace::default();
    let zero = FileIdentity {
        dev: (0, 6),
        inode: 4,
        path: b"/dev/zero".to_vec(),
        overlay: false,
        rdev: Some((1, 5)),
    };
    let env = env_with_file(3, zero);
    mmap(&mut s, A, P, RW, SHARED, 3, 3 * P, &env);
    mmap(&mut s, A + 4 * P, P, RW, PRIVATE, 3, 0, &env);
    assert_eq!(
        shape(&s),
        [
            row(A, A + P, "rw-s", "/dev/zero (deleted)", 3 * P),
            row(A + 4 * P, A + 5 * P, "rw-p", "/dev/zero", 0)
        ]
    );
}

#[test]
fn shadow_stacks_are_private_anonymous_rw() {
    let mut s = AddressSpace::default();
    assert_eq!(
        call(&mut s, 453, &[0, 5 * P, 1], A as i64),
        Applied::Modelled
    );
    assert_eq!(shape(&s), [row(A, A + 5 * P, "rw-p", "", 0)]);
}

#[test]
fn split_only_causes_change_nothing_maps_shows() {
    let mut s = AddressSpace::default();
    mmap(&mut s, A, 4 * P, RW, PRIVATE_ANON, -1, 0, &NoEnv);
    let before = shape(&s);
    for (n, args) in [
        (
            libc::SYS_madvise,
            vec![A + P, P, libc::MADV_HUGEPAGE as u64],
        ),
        (libc::SYS_madvise, vec![A, P, libc::MADV_DONTNEED as u64]),
        (libc::SYS_mlock, vec![A + P, P]),
        (libc::SYS_mlock2, vec![A + P, P, 1]),
        (libc::SYS_munlock, vec![A + P, P]),
        (libc::SYS_mlockall, vec![3]),
        (libc::SYS_munlockall, vec![]),
        (462, vec![A + 2 * P, P, 0]), // mseal
        (libc::SYS_mbind, vec![A, P, 0, 0, 0, 0]),
        (450, vec![A, P, 0, 0]), // set_mempolicy_home_node
        (libc::SYS_close, vec![5]),
        (libc::SYS_clone, vec![]),
    ] {
        assert_eq!(
            call(&mut s, n, &args, 0),
            Applied::NoMapsChange,
            "{}",
            crate::kernel::syscall_names::name(n, false)
        );
    }
    assert_eq!(shape(&s), before);
}

#[test]
fn unmodelled_causes_are_named() {
    let mut s = AddressSpace::default();
    assert_eq!(
        call(&mut s, libc::SYS_prctl, &[0x5356_4d41, 0, A, P, 0], 0),
        Applied::Unmodelled {
            cause: "prctl(PR_SET_VMA)"
        }
    );
    assert_eq!(
        call(&mut s, libc::SYS_io_setup, &[1, 0], 0),
        Applied::Unmodelled { cause: "io_setup" }
    );
    assert_eq!(
        call(&mut s, libc::SYS_ioctl, &[3, 0], 0),
        Applied::Unmodelled { cause: "ioctl" }
    );
    assert_eq!(
        call(&mut s, 100_000, &[], 0),
        Applied::Unmodelled {
            cause: "unknown syscall"
        }
    );
    assert_eq!(crate::kernel::syscall_names::name(30, false), "shmat");
    assert_eq!(
        crate::kernel::syscall_names::name(453, false),
        "map_shadow_stack"
    );
}

/// kernel/fork.c: the child lacks MADV_DONTFORK ranges; MADV_WIPEONFORK ones stay
/// mapped; DOFORK and KEEPONFORK undo them.
#[test]
fn fork_inherits_all_but_dontfork() {
    let mut s = AddressSpace::default();
    mmap(&mut s, A, 6 * P, RW, PRIVATE_ANON, -1, 0, &NoEnv);
    let madvise = |s: &mut AddressSpace, addr, len, advice: i32| {
        call(s, libc::SYS_madvise, &[addr, len, advice as u64], 0)
    };
    assert_eq!(
        madvise(&mut s, A, 2 * P, libc::MADV_DONTFORK),
        Applied::Modelled
    );
    assert_eq!(
        madvise(&mut s, A + P, P, libc::MADV_DOFORK),
        Applied::Modelled
    );
    assert_eq!(
        madvise(&mut s, A + 3 * P, P, libc::MADV_WIPEONFORK),
        Applied::Modelled
    );
    assert_eq!(
        madvise(&mut s, A + 4 * P, 2 * P, libc::MADV_DONTFORK),
        Applied::Modelled
    );
    assert_eq!(
        madvise(&mut s, A + 5 * P, P, libc::MADV_DOFORK),
        Applied::Modelled
    );
    // maps shows the parent unchanged.
    assert_eq!(shape(&s), [row(A, A + 6 * P, "rw-p", "", 0)]);
    let child = s.fork_child();
    assert_eq!(
        shape(&child),
        [
            row(A + P, A + 4 * P, "rw-p", "", 0),
            row(A + 5 * P, A + 6 * P, "rw-p", "", 0)
        ]
    );
    assert!(child.region_at(A + 3 * P).unwrap().hidden.wipe_on_fork);
    // KEEPONFORK clears it.
    madvise(&mut s, A + 3 * P, P, libc::MADV_KEEPONFORK);
    assert!(!s.region_at(A + 3 * P).unwrap().hidden.wipe_on_fork);
}

/// Stack growth is a fault, no syscall: the model extends MAP_GROWSDOWN regions to what
/// the kernel shows, and nothing else.
#[test]
fn growsdown_regions_grow_to_the_kernels_view() {
    let mut s = AddressSpace::default();
    mmap(
        &mut s,
        A + 4 * P,
        2 * P,
        RW,
        PRIVATE_ANON | libc::MAP_GROWSDOWN as u64,
        -1,
        0,
        &NoEnv,
    );
    mmap(&mut s, A + 8 * P, P, RW, PRIVATE_ANON, -1, 0, &NoEnv);
    let kernel = vec![
        Region::anonymous(A + 2 * P, A + 6 * P, "rw-p"),
        Region::anonymous(A + 7 * P, A + 9 * P, "rw-p"),
    ];
    assert_eq!(s.grow_down(&kernel), [(A + 2 * P, A + 4 * P)]);
    assert_eq!(
        shape(&s),
        [
            row(A + 2 * P, A + 6 * P, "rw-p", "", 0),
            row(A + 8 * P, A + 9 * P, "rw-p", "", 0)
        ]
    );
}

#[test]
fn adopt_takes_only_the_ranges_given() {
    let mut s = AddressSpace::default();
    mmap(&mut s, A, 4 * P, RW, PRIVATE_ANON, -1, 0, &NoEnv);
    let kernel = vec![
        Region::anonymous(A, A + 2 * P, "rw-p"),
        Region::anonymous(A + 2 * P, A + 6 * P, "r--p"),
    ];
    let c = compare(&normalize(s.regions().to_vec()), &kernel);
    s.adopt(&kernel, &c.ranges());
    assert_eq!(
        shape(&s),
        [
            row(A, A + 2 * P, "rw-p", "", 0),
            row(A + 2 * P, A + 6 * P, "r--p", "", 0)
        ]
    );
}

#[test]
fn exec_ends_everything() {
    let mut s = AddressSpace::recording();
    mmap(&mut s, A, P, RW, PRIVATE_ANON, -1, 0, &NoEnv);
    s.take_changes();
    s.exec();
    assert!(s.regions().iter().next().is_none());
    assert_eq!(
        s.take_changes(),
        [Change::End {
            start: A,
            end: A + P,
            why: Why::Exec
        }]
    );
}

/// The change log a recording space hands to report: splits, then ends, then begins.
#[test]
fn changes_describe_a_prot_change() {
    let mut s = AddressSpace::recording();
    mmap(&mut s, A, 3 * P, RW, PRIVATE_ANON, -1, 0, &NoEnv);
    s.take_changes();
    call(&mut s, libc::SYS_mprotect, &[A + P, P, R], 0);
    let changes = s.take_changes();
    assert_eq!(
        changes[..3],
        [
            Change::Split { at: A + P },
            Change::Split { at: A + 2 * P },
            Change::End {
                start: A + P,
                end: A + 2 * P,
                why: Why::ProtChanged
            }
        ]
    );
    assert!(
        matches!(&changes[3], Change::Begin { region, why: Why::ProtChanged, from: Some(f) } if *f == A + P && region.perms == "r--p")
    );
    // The same protection again: nothing is cut (mprotect_fixup returns early).
    call(&mut s, libc::SYS_mprotect, &[A + P, P, R], 0);
    assert!(s.take_changes().is_empty());
}

mod real {
    //! The test process makes the calls in a PROT_NONE window it reserved, and the
    //! model's view of the window must be the kernel's. One window at a time: a hole one
    //! test unmaps in its window is where the kernel may place another test's window next,
    //! and the first test's later calls would then change the second's.

    use std::{ffi::CString, os::fd::AsRawFd as _};

    use super::*;

    static ONE_WINDOW: std::sync::Mutex<()> = std::sync::Mutex::new(());

    struct Window {
        base: u64,
        len: u64,
        model: AddressSpace,
        env: ProcEnv,
        _alone: std::sync::MutexGuard<'static, ()>,
    }

    impl Window {
        fn new(pages: u64) -> Self {
            let alone = ONE_WINDOW.lock().unwrap_or_else(|e| e.into_inner());
            let len = pages * P;
            // SAFETY: a fresh reservation nobody else uses.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED);
            let base = base as u64;
            let mut w = Window {
                base,
                len,
                model: AddressSpace::default(),
                env: ProcEnv {
                    pid: std::process::id(),
                },
                _alone: alone,
            };
            w.model = AddressSpace::from_kernel(w.kernel(), 0);
            w
        }

        fn at(&self, page: u64) -> u64 {
            self.base + page * P
        }

        /// The raw call, then the model's account of it.
        fn call(&mut self, n: i64, args: &[u64]) -> i64 {
            let mut a = [0u64; 6];
            a[..args.len()].copy_from_slice(args);
            // SAFETY: calls on memory inside our own window, with arguments the test chose.
            let ret = unsafe { libc::syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]) };
            let ret = if ret == -1 {
                -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
            } else {
                ret
            };
            let applied = apply_syscall(&mut self.model, n as u64, a, ret, &self.env);
            assert!(
                matches!(
                    applied,
                    Applied::Modelled | Applied::NoMapsChange | Applied::Failed
                ),
                "{} -> {ret}: {applied:?}",
                crate::kernel::syscall_names::name(n, false)
            );
            ret
        }

        fn clip(&self, regions: &[Region]) -> Vec<Region> {
            let (lo, hi) = (self.base, self.base + self.len);
            normalize(
                regions
                    .iter()
                    .filter(|r| r.start < hi && r.end > lo)
                    .map(|r| {
                        let mut c = if r.start < lo {
                            r.upper_part(lo)
                        } else {
                            r.clone()
                        };
                        c.end = c.end.min(hi);
                        c
                    })
                    .collect(),
            )
        }

        fn kernel(&self) -> Vec<Region> {
            let view = maps::read(std::process::id()).unwrap();
            assert!(view.unparsed.is_empty(), "{:?}", view.unparsed);
            self.clip(&view.regions)
        }

        /// The model agrees with the kernel over the window.
        fn check(&self, what: &str) -> Comparison {
            let kernel = self.kernel();
            let model = self.clip(&self.model.regions().to_vec());
            let c = compare(&model, &kernel);
            assert!(
                c.differences.is_empty(),
                "{what}: {:#?}\nmodel:  {}\nkernel: {}",
                c.differences,
                model
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("\n        "),
                kernel
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("\n        ")
            );
            c
        }
    }

    impl Drop for Window {
        fn drop(&mut self) {
            // SAFETY: our own window.
            unsafe { libc::munmap(self.base as *mut libc::c_void, self.len as usize) };
        }
    }

    fn temp_file(name: &[u8], pages: u64) -> (std::fs::File, std::path::PathBuf) {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = std::env::temp_dir().join(format!("mmtrace-space-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(std::ffi::OsStr::from_bytes(name));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(pages * P).unwrap();
        (f, path)
    }

    const FIXED_ANON: u64 = PRIVATE_ANON | FIXED;

    #[test]
    fn mmap_mprotect_munmap_mremap() {
        let mut w = Window::new(32);
        w.call(
            libc::SYS_mmap,
            &[w.at(0), 4 * P, RW, FIXED_ANON, u64::MAX, 0],
        );
        w.call(libc::SYS_mprotect, &[w.at(1), P, R]);
        w.call(libc::SYS_pkey_mprotect, &[w.at(2), P, 0, u64::MAX]);
        w.check("mprotect, pkey_mprotect");
        w.call(
            libc::SYS_mremap,
            &[w.at(0), P, 2 * P, MAYMOVE | MREMAP_FIXED, w.at(8)],
        );
        w.check("mremap move and grow");
        w.call(libc::SYS_mremap, &[w.at(8), 2 * P, P, 0]);
        w.call(
            libc::SYS_mremap,
            &[w.at(3), P, P, MAYMOVE | MREMAP_FIXED | DONTUNMAP, w.at(12)],
        );
        w.check("mremap shrink, DONTUNMAP");
        w.call(libc::SYS_munmap, &[w.at(2), P]);
        // mlock/madvise split VMAs; maps shows more lines, the comparison the same.
        w.call(
            libc::SYS_mmap,
            &[w.at(16), 4 * P, RW, FIXED_ANON, u64::MAX, 0],
        );
        w.call(libc::SYS_mlock, &[w.at(17), P]);
        w.call(
            libc::SYS_madvise,
            &[w.at(18), P, libc::MADV_NOHUGEPAGE as u64],
        );
        w.call(
            libc::SYS_madvise,
            &[w.at(19), P, libc::MADV_DONTFORK as u64],
        );
        w.check("munmap, mlock, madvise");
    }

    /// MAP_DROPPABLE (6.11+): private anonymous memory, not shared memory, and not
    /// copied into a child. Kernels without it refuse the call, and the model then
    /// changes nothing.
    #[test]
    fn droppable_memory_is_private_anonymous() {
        let mut w = Window::new(8);
        let ret = w.call(
            libc::SYS_mmap,
            &[
                w.at(1),
                2 * P,
                RW,
                (libc::MAP_DROPPABLE | libc::MAP_ANONYMOUS | libc::MAP_FIXED) as u64,
                u64::MAX,
                0,
            ],
        );
        w.check("MAP_DROPPABLE");
        if ret >= 0 {
            let r = w.model.region_at(w.at(1)).unwrap();
            assert_eq!(r.perms, "rw-p");
            assert!(r.hidden.wipe_on_fork, "{r:?}");
        }
    }

    /// An mremap that only moves (MREMAP_FIXED, same length) over a range of several
    /// VMAs with holes: 6.17+ moves each piece and leaves the destination's holes as they
    /// were; older kernels refuse it (EFAULT) and change nothing the model must know.
    #[test]
    fn mremap_moves_several_vmas_keeping_the_holes() {
        let mut w = Window::new(32);
        for page in [0, 3] {
            w.call(
                libc::SYS_mmap,
                &[w.at(page), 2 * P, RW, FIXED_ANON, u64::MAX, 0],
            );
        }
        // The destination already holds memory where the source has its hole.
        w.call(
            libc::SYS_mmap,
            &[w.at(16), 5 * P, R, FIXED_ANON, u64::MAX, 0],
        );
        // The hole, made last: another test thread's mapping could land in it.
        w.call(libc::SYS_munmap, &[w.at(2), P]);
        let ret = w.call(
            libc::SYS_mremap,
            &[w.at(0), 5 * P, 5 * P, MAYMOVE | MREMAP_FIXED, w.at(16)],
        );
        w.check("a multi-VMA move");
        if ret >= 0 {
            assert_eq!(
                w.model.region_at(w.at(18)).map(|r| r.perms.as_str()),
                Some("r--p"),
                "the hole's old page stays"
            );
        }
    }

    /// A call that fails after changing part of its range (mprotect over two VMAs, the
    /// second sealed: 6.13+ changes the first, then says EPERM): the model takes a failed
    /// call as a no-op, and every difference lies inside the ranges `call_ranges` names,
    /// which verify then compares and adopts.
    #[test]
    fn a_failed_call_changes_only_inside_its_ranges() {
        let mut w = Window::new(16);
        w.call(
            libc::SYS_mmap,
            &[w.at(2), 2 * P, RW, FIXED_ANON, u64::MAX, 0],
        );
        w.call(
            libc::SYS_mmap,
            &[w.at(4), 2 * P, R, FIXED_ANON, u64::MAX, 0],
        );
        if w.call(libc::SYS_mseal, &[w.at(4), 2 * P, 0]) < 0 {
            return; // a kernel without mseal (before 6.10)
        }
        let args = [w.at(2), 4 * P, libc::PROT_NONE as u64, 0, 0, 0];
        let ret = w.call(libc::SYS_mprotect, &args[..3]);
        assert_eq!(ret, -(libc::EPERM as i64));
        let ranges = call_ranges(libc::SYS_mprotect as u64, args, ret);
        let differences = compare(&w.clip(&w.model.regions().to_vec()), &w.kernel()).differences;
        for d in &differences {
            assert!(
                ranges.iter().any(|&(s, e)| s <= d.start && d.end <= e),
                "{d:?} outside {ranges:x?}"
            );
        }
    }

    /// Issue 12's row: mremap(p, 0, n, MREMAP_MAYMOVE) of a shared mapping.
    #[test]
    fn mremap_dup_of_shared_memory() {
        let mut w = Window::new(32);
        w.call(
            libc::SYS_mmap,
            &[w.at(0), 2 * P, RW, SHARED_ANON | FIXED, u64::MAX, 0],
        );
        w.call(
            libc::SYS_mremap,
            &[w.at(1), 0, 3 * P, MAYMOVE | MREMAP_FIXED, w.at(8)],
        );
        let (f, _path) = temp_file(b"dup", 4);
        w.call(
            libc::SYS_mmap,
            &[w.at(16), 4 * P, RW, SHARED | FIXED, f.as_raw_fd() as u64, 0],
        );
        w.call(
            libc::SYS_mremap,
            &[w.at(17), 0, P, MAYMOVE | MREMAP_FIXED, w.at(24)],
        );
        w.check("mremap old_len 0");
    }

    #[test]
    fn shmat_and_shmdt_of_fragments() {
        let mut w = Window::new(32);
        // SAFETY: a private segment, removed at the end.
        let shmid = unsafe { libc::shmget(libc::IPC_PRIVATE, (4 * P + 5) as usize, 0o600) };
        assert!(shmid >= 0);
        const SHM_REMAP: u64 = 0o40000;
        w.call(libc::SYS_shmat, &[shmid as u64, w.at(0), SHM_REMAP]);
        w.call(
            libc::SYS_shmat,
            &[shmid as u64, w.at(8), SHM_REMAP | libc::SHM_RDONLY as u64],
        );
        w.call(
            libc::SYS_shmat,
            &[shmid as u64, w.at(16), SHM_REMAP | libc::SHM_EXEC as u64],
        );
        w.check("shmat");
        w.call(libc::SYS_munmap, &[w.at(1), P]);
        w.call(libc::SYS_mprotect, &[w.at(3), P, R]);
        w.call(libc::SYS_shmdt, &[w.at(0)]);
        w.check("shmdt of fragments");
        // SAFETY: removing our own segment.
        unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
        w.call(libc::SYS_shmdt, &[w.at(8)]);
        w.check("shmdt after IPC_RMID");
    }

    #[test]
    fn remap_file_pages_of_a_shared_file() {
        let mut w = Window::new(16);
        let (f, _path) = temp_file(b"rfp", 8);
        w.call(
            libc::SYS_mmap,
            &[w.at(0), 4 * P, RW, SHARED | FIXED, f.as_raw_fd() as u64, 0],
        );
        assert_eq!(
            w.call(libc::SYS_remap_file_pages, &[w.at(1), 2 * P, 0, 6, 0]),
            0
        );
        w.check("remap_file_pages");
    }

    #[test]
    fn dev_zero_shared_and_private() {
        let mut w = Window::new(16);
        let zero = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .unwrap();
        w.call(
            libc::SYS_mmap,
            &[
                w.at(0),
                2 * P,
                RW,
                SHARED | FIXED,
                zero.as_raw_fd() as u64,
                3 * P,
            ],
        );
        w.call(
            libc::SYS_mmap,
            &[
                w.at(4),
                2 * P,
                RW,
                PRIVATE | FIXED,
                zero.as_raw_fd() as u64,
                0,
            ],
        );
        w.call(
            libc::SYS_mmap,
            &[w.at(8), 2 * P, RW, SHARED_ANON | FIXED, u64::MAX, 0],
        );
        w.check("/dev/zero");
    }

    /// A MAP_GROWSDOWN mapping grown by touching below it: a fault, no syscall.
    #[test]
    fn growsdown_growth_by_touching_below() {
        let mut w = Window::new(16);
        w.call(libc::SYS_munmap, &[w.at(4), 4 * P]);
        w.call(
            libc::SYS_mmap,
            &[
                w.at(8),
                2 * P,
                RW,
                FIXED_ANON | libc::MAP_GROWSDOWN as u64,
                u64::MAX,
                0,
            ],
        );
        w.check("before growth");
        // SAFETY: below a MAP_GROWSDOWN mapping with free space under it (the PROT_NONE
        // reservation below is not accessible, so no guard gap applies): the kernel grows
        // the mapping to cover it.
        unsafe { std::ptr::write_volatile((w.at(6) + 8) as *mut u64, 1) };
        let kernel = w.kernel();
        assert_eq!(w.model.grow_down(&kernel), [(w.at(6), w.at(8))]);
        w.check("after growth");
    }

    /// Issue 19: names of any bytes parse; the model names them as maps does; a rename or
    /// an unlink is a note, not a difference.
    #[test]
    fn files_named_anything_and_renamed_or_unlinked() {
        let mut w = Window::new(16);
        let names: [&[u8]; 5] = [
            b"new\nline",
            b"\xff\xfe-bin",
            b"a b\tc",
            b"[heap]",
            b"x (deleted)",
        ];
        let mut files = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (f, path) = temp_file(name, 1);
            w.call(
                libc::SYS_mmap,
                &[
                    w.at(2 * i as u64),
                    P,
                    R,
                    PRIVATE | FIXED,
                    f.as_raw_fd() as u64,
                    0,
                ],
            );
            files.push((f, path));
        }
        let c = w.check("odd names");
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        std::fs::rename(&files[0].1, files[0].1.with_file_name("renamed")).unwrap();
        std::fs::remove_file(&files[1].1).unwrap();
        let c = w.check("renamed and unlinked");
        let found: Vec<&str> = c.notes.iter().map(|n| n.found.as_str()).collect();
        assert_eq!(found.len(), 2, "{:?}", c.notes);
        assert!(found[0].ends_with("/renamed"), "{found:?}");
        assert!(found[1].ends_with("/\\xff\\xfe-bin (deleted)"), "{found:?}");
        let _ = CString::new("x");
        for (_, path) in &files[2..] {
            let _ = std::fs::remove_file(path);
        }
        let _ = std::fs::remove_file(files[0].1.with_file_name("renamed"));
    }

    /// kernel/fork.c against the model: a real child's maps (it waits in pause()).
    #[test]
    fn fork_child_lacks_dontfork_ranges() {
        let mut w = Window::new(16);
        w.call(
            libc::SYS_mmap,
            &[w.at(0), 6 * P, RW, FIXED_ANON, u64::MAX, 0],
        );
        w.call(
            libc::SYS_madvise,
            &[w.at(1), 2 * P, libc::MADV_DONTFORK as u64],
        );
        w.call(
            libc::SYS_madvise,
            &[w.at(4), P, libc::MADV_WIPEONFORK as u64],
        );
        // SAFETY: the child only calls pause() (async-signal-safe) until killed.
        let child = unsafe { libc::fork() };
        if child == 0 {
            loop {
                // SAFETY: no preconditions.
                unsafe { libc::pause() };
            }
        }
        assert!(child > 0);
        let view = maps::read(child as u32);
        // SAFETY: our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        let kernel = w.clip(&view.unwrap().regions);
        let model = w.clip(&w.model.fork_child().regions().to_vec());
        let c = compare(&model, &kernel);
        assert!(c.differences.is_empty(), "{:#?}", c.differences);
        assert!(model.iter().all(|r| r.start >= w.at(3) || r.end <= w.at(1)));
    }

    /// map_shadow_stack where the CPU and kernel have user shadow stacks; elsewhere it
    /// fails and the model says so and changes nothing.
    #[test]
    fn map_shadow_stack_where_supported() {
        let mut model = AddressSpace::default();
        // SAFETY: asks the kernel for a new mapping anywhere.
        let ret = unsafe { libc::syscall(453, 0, 4 * P, 0) };
        let ret = if ret == -1 {
            -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
        } else {
            ret
        };
        let applied = apply_syscall(&mut model, 453, [0, 4 * P, 0, 0, 0, 0], ret, &NoEnv);
        if ret < 0 {
            assert_eq!(applied, Applied::Failed);
            assert!(model.regions().iter().next().is_none());
            return;
        }
        let kernel = maps::read(std::process::id()).unwrap().regions;
        let got: Vec<Region> = kernel
            .into_iter()
            .filter(|r| r.start >= ret as u64 && r.end <= ret as u64 + 4 * P)
            .collect();
        assert!(
            compare(&model.regions().to_vec(), &got)
                .differences
                .is_empty()
        );
    }
}

mod proptests {
    //! Any sequence of calls, plausible or not (a trace file is input like any other):
    //! never a panic, and the regions stay sorted, disjoint and non-empty.

    use proptest::prelude::*;

    use super::*;

    fn value() -> impl Strategy<Value = u64> {
        prop_oneof![
            (0u64..24).prop_map(|k| A + k * P),
            (0u64..8).prop_map(|k| k * P),
            Just(0u64),
            Just(u64::MAX),
            Just(u64::MAX - P + 1),
            any::<u64>(),
            (0u64..24).prop_map(|k| A + k * P + 7),
        ]
    }

    fn a_call() -> impl Strategy<Value = (u64, [u64; 6], i64)> {
        let nrs = prop::sample::select(vec![
            9u64, 10, 11, 12, 25, 28, 30, 67, 216, 329, 453, 149, 157, 59, 1000,
        ]);
        let ret = prop_oneof![
            value().prop_map(|v| v as i64),
            (1i64..4096).prop_map(|e| -e)
        ];
        (
            nrs,
            [value(), value(), value(), value(), value(), value()],
            ret,
        )
            .prop_map(|(nr, mut args, ret)| {
                // Flags that mean something, often.
                if nr == 9 {
                    args[3] &= 0x1_0133;
                }
                if nr == 28 {
                    args[2] %= 20;
                }
                (nr, args, ret)
            })
    }

    struct AnyEnv;

    impl CallEnv for AnyEnv {
        fn fd_file(&self, fd: i32) -> Option<FileIdentity> {
            (fd % 3 != 0).then(|| FileIdentity {
                dev: (8, 1),
                inode: fd as u64,
                path: b"/f\n\xff".to_vec(),
                overlay: fd % 5 == 0,
                rdev: (fd % 7 == 0).then_some((1, 5)),
            })
        }
        fn shm_segment(&self, shmid: i32) -> Option<ShmSegment> {
            (shmid % 2 == 0).then_some(ShmSegment {
                size: (shmid as u64 % 9) * P + 1,
                key: shmid as u32,
            })
        }
    }

    proptest! {
        #[test]
        fn the_model_never_panics(calls in proptest::collection::vec(a_call(), 0..40), record in any::<bool>()) {
            let mut s = if record { AddressSpace::recording() } else { AddressSpace::from_kernel(vec![], A + 30 * P) };
            for (nr, args, ret) in calls {
                apply_syscall(&mut s, nr, args, ret, &AnyEnv);
                let r = s.regions();
                prop_assert!(r.iter().all(|r| r.start < r.end), "{r:?}");
                prop_assert!(r.to_vec().windows(2).all(|w| w[0].end <= w[1].start), "{r:?}");
            }
            let child = s.fork_child();
            let kernel = child.regions().to_vec();
            s.grow_down(&kernel);
            let c = compare(&normalize(s.regions().to_vec()), &kernel);
            s.adopt(&kernel, &c.ranges());
        }

        /// Merging only around what each call touched leaves the same regions as
        /// merging the whole list, and the touched ranges cover every change.
        #[test]
        fn local_merges_equal_whole_merges(calls in proptest::collection::vec(a_call(), 0..40)) {
            let mut local = AddressSpace::from_kernel(vec![], A + 30 * P);
            local.track_touched();
            let mut whole = AddressSpace::from_kernel(vec![], A + 30 * P);
            for (nr, args, ret) in calls {
                let before = local.regions().to_vec();
                apply_syscall(&mut local, nr, args, ret, &AnyEnv);
                local.merge();
                apply_syscall(&mut whole, nr, args, ret, &AnyEnv);
                whole.merge();
                prop_assert_eq!(local.regions().to_vec(), whole.regions().to_vec());
                let mut touched = local.take_touched();
                touched.sort_unstable();
                let mut covered: Vec<(u64, u64)> = Vec::new();
                for (s, e) in touched {
                    match covered.last_mut() {
                        Some(last) if s <= last.1 => last.1 = last.1.max(e),
                        _ => covered.push((s, e)),
                    }
                }
                for d in compare(&before, &local.regions().to_vec()).differences {
                    prop_assert!(
                        covered.iter().any(|&(s, e)| s <= d.start && d.end <= e),
                        "{d:?} not in {covered:x?}"
                    );
                }
            }
        }
    }
}
