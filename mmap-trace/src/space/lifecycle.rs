//! Whose address space a process's state describes, from its fork to its exit: the one
//! ownership rule every per-process consumer follows (fault attribution, the stack
//! symbolizer, the agent's gauges).
//!
//! - A forked child starts from a copy of its parent's state.
//! - A child that shares its parent's mm (vfork, `clone(CLONE_VM)` without
//!   `CLONE_THREAD`) has no state of its own: its calls change the parent's address space,
//!   so its pid resolves to the owner's state until it execs or exits.
//! - exec starts the state over.
//! - exit releases it: nothing of the process follows its exit record. An owner that exits
//!   while a child still shares its mm hands the state to that child.
//!
//! Threads are not processes here: every record carries the thread group's pid.

use std::collections::HashMap;

pub use crate::kernel::decode::Lifecycle;

/// What a consumer keeps per process.
pub trait ProcessState: Default {
    /// The state a forked child starts with (its own copy of the address space).
    fn fork_child(&self) -> Self;
    /// exec replaced the address space.
    fn exec(&mut self) {
        *self = Self::default();
    }
}

/// Which processes use another's mm: child → owner. The part of the rule a consumer
/// that keeps every process to its end (verify, which reports on each) shares with
/// [`ProcessTable`].
#[derive(Debug, Default)]
pub struct Sharing {
    owner_of: HashMap<u32, u32>,
}

impl Sharing {
    /// The pid whose address space `pid`'s calls change.
    pub fn owner(&self, pid: u32) -> u32 {
        self.owner_of.get(&pid).copied().unwrap_or(pid)
    }

    pub fn fork(&mut self, parent: u32, child: u32, shares_mm: bool) {
        if shares_mm {
            let owner = self.owner(parent);
            self.owner_of.insert(child, owner);
        } else {
            self.owner_of.remove(&child);
        }
    }

    /// `pid` leaves the mm it used (exec or exit). For a sharing child: true, and that is
    /// all. For an owner: false, and the children still sharing its mm now share it with
    /// the first of them, the heir, returned for the owner's state to move to.
    fn leave(&mut self, pid: u32) -> (bool, Option<u32>) {
        if self.owner_of.remove(&pid).is_some() {
            return (true, None);
        }
        let mut sharing: Vec<u32> = self
            .owner_of
            .iter()
            .filter(|&(_, &owner)| owner == pid)
            .map(|(&child, _)| child)
            .collect();
        sharing.sort_unstable();
        let Some((&heir, rest)) = sharing.split_first() else {
            return (false, None);
        };
        self.owner_of.remove(&heir);
        for child in rest {
            self.owner_of.insert(*child, heir);
        }
        (false, Some(heir))
    }

    /// `pid` execs: a sharing child gets an mm of its own (true).
    pub fn exec(&mut self, pid: u32) -> bool {
        self.owner_of.remove(&pid).is_some()
    }
}

/// Every process's state of one consumer, under the rule above.
#[derive(Debug)]
pub struct ProcessTable<T> {
    by_pid: HashMap<u32, T>,
    sharing: Sharing,
}

impl<T> Default for ProcessTable<T> {
    fn default() -> Self {
        Self {
            by_pid: HashMap::new(),
            sharing: Sharing::default(),
        }
    }
}

impl<T: ProcessState> ProcessTable<T> {
    /// The pid whose state `pid`'s calls change.
    pub fn owner(&self, pid: u32) -> u32 {
        self.sharing.owner(pid)
    }

    pub fn get(&self, pid: u32) -> Option<&T> {
        self.by_pid.get(&self.owner(pid))
    }

    /// Every process's state, by the pid that owns it (the agent's totals).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut T)> {
        self.by_pid.iter_mut().map(|(&pid, state)| (pid, state))
    }

    /// How many processes have state.
    pub fn count(&self) -> usize {
        self.by_pid.len()
    }

    /// `pid`'s state, a default one if it had none (a process first seen now).
    pub fn entry(&mut self, pid: u32) -> &mut T {
        let owner = self.owner(pid);
        self.by_pid.entry(owner).or_default()
    }

    /// Applies a fork, exec or exit; an exit returns the state it released (for a
    /// consumer that reports on it), None when the process had none or its mm lives on
    /// in a child that shared it (which owns the state from now on).
    pub fn apply(&mut self, change: Lifecycle) -> Option<T> {
        match change {
            Lifecycle::Fork {
                parent,
                child,
                shares_mm,
            } => {
                let state = (!shares_mm).then(|| self.get(parent).map(T::fork_child));
                self.sharing.fork(parent, child, shares_mm);
                match state {
                    Some(state) => {
                        self.by_pid.insert(child, state.unwrap_or_default());
                    }
                    None => {
                        self.by_pid.remove(&child);
                    }
                }
                None
            }
            Lifecycle::Exec { pid } => {
                match self.sharing.leave(pid) {
                    // A sharing child's exec gives it an mm of its own.
                    (true, _) => {
                        self.by_pid.insert(pid, T::default());
                    }
                    // The old mm lives on in a child that shared it.
                    (false, Some(heir)) => {
                        let old = self.by_pid.remove(&pid).unwrap_or_default();
                        self.by_pid.insert(heir, old);
                        self.by_pid.insert(pid, T::default());
                    }
                    (false, None) => self.entry(pid).exec(),
                }
                None
            }
            Lifecycle::Exit { pid } => match self.sharing.leave(pid) {
                (true, _) => None,
                (false, heir) => {
                    let state = self.by_pid.remove(&pid)?;
                    match heir {
                        Some(heir) => {
                            self.by_pid.insert(heir, state);
                            None
                        }
                        None => Some(state),
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Clone, PartialEq)]
    struct Calls(Vec<&'static str>);

    impl ProcessState for Calls {
        fn fork_child(&self) -> Self {
            self.clone()
        }
    }

    fn fork(parent: u32, child: u32, shares_mm: bool) -> Lifecycle {
        Lifecycle::Fork {
            parent,
            child,
            shares_mm,
        }
    }

    #[test]
    fn a_fork_copies_and_an_exit_releases() {
        let mut t = ProcessTable::<Calls>::default();
        t.entry(1).0.push("mmap");
        t.apply(fork(1, 2, false));
        t.entry(2).0.push("munmap");
        assert_eq!(t.get(1).unwrap().0, ["mmap"]);
        assert_eq!(t.get(2).unwrap().0, ["mmap", "munmap"]);
        assert_eq!(
            t.apply(Lifecycle::Exit { pid: 2 }).unwrap().0,
            ["mmap", "munmap"]
        );
        assert!(t.get(2).is_none());
        assert_eq!(
            t.apply(Lifecycle::Exit { pid: 2 }),
            None,
            "a second exit record"
        );
        assert!(t.get(1).is_some());
    }

    #[test]
    fn a_vfork_child_changes_its_parents_state_until_it_execs() {
        let mut t = ProcessTable::<Calls>::default();
        t.entry(1).0.push("mmap");
        t.apply(fork(1, 2, true));
        t.entry(2).0.push("munmap");
        assert_eq!(t.get(1).unwrap().0, ["mmap", "munmap"]);
        t.apply(Lifecycle::Exec { pid: 2 });
        t.entry(2).0.push("brk");
        assert_eq!(t.get(1).unwrap().0, ["mmap", "munmap"]);
        assert_eq!(t.get(2).unwrap().0, ["brk"]);
    }

    #[test]
    fn a_sharing_childs_exit_keeps_the_owners_state() {
        let mut t = ProcessTable::<Calls>::default();
        t.entry(1).0.push("mmap");
        t.apply(fork(1, 2, true));
        assert_eq!(t.apply(Lifecycle::Exit { pid: 2 }), None);
        assert_eq!(t.get(1).unwrap().0, ["mmap"]);
        assert_eq!(t.owner(2), 2);
    }

    #[test]
    fn an_owners_exit_hands_the_mm_to_a_sharing_child() {
        let mut t = ProcessTable::<Calls>::default();
        t.entry(1).0.push("mmap");
        t.apply(fork(1, 2, true));
        t.apply(fork(1, 3, true));
        assert_eq!(t.apply(Lifecycle::Exit { pid: 1 }), None);
        t.entry(3).0.push("munmap");
        assert_eq!((t.owner(2), t.owner(3)), (2, 2));
        assert_eq!(t.get(2).unwrap().0, ["mmap", "munmap"]);
        assert!(t.get(1).is_none());
    }

    #[test]
    fn an_owners_exec_leaves_its_old_mm_to_a_sharing_child() {
        let mut t = ProcessTable::<Calls>::default();
        t.entry(1).0.push("mmap");
        t.apply(fork(1, 2, true));
        t.apply(Lifecycle::Exec { pid: 1 });
        assert!(t.get(1).unwrap().0.is_empty());
        assert_eq!(t.get(2).unwrap().0, ["mmap"]);
        assert_eq!(t.owner(2), 2);
    }

    #[test]
    fn exec_starts_over() {
        let mut t = ProcessTable::<Calls>::default();
        t.entry(1).0.push("mmap");
        t.apply(Lifecycle::Exec { pid: 1 });
        assert!(t.get(1).unwrap().0.is_empty());
    }
}
