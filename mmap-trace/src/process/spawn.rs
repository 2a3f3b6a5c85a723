//! `trace -- CMD`: fork the command held before exec, so the probes are attached with its
//! pid as the filter before its first mapping (the dynamic loader's) happens.
//!
//! std's `Command::spawn` cannot do this: it returns only once exec happened. So: fork;
//! the child blocks reading a pipe; the parent attaches, then writes one byte; the child
//! execs. An exec failure comes back through a close-on-exec pipe as an errno.

use std::{
    ffi::{CString, OsString},
    fs::File,
    io::{Read as _, Write as _},
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
};

use anyhow::{Context as _, Result, bail};

pub struct HeldChild {
    pub pid: u32,
    /// None once released.
    go: Option<File>,
    exec_error: File,
    program: OsString,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks `argv`, held before exec. Call before any other thread exists: the child
/// runs only async-signal-safe calls until exec. `argv` is bytes: any but NUL, as exec
/// takes them. `stdout_to_stderr`: the command's standard output is our standard error
/// (ours carries the trace).
pub fn spawn_held(argv: &[OsString], stdout_to_stderr: bool) -> Result<HeldChild> {
    let Some(program) = argv.first() else {
        bail!("no command given after --");
    };
    let cargs: Vec<CString> = argv
        .iter()
        .map(|a| {
            CString::new(a.as_bytes()).with_context(|| {
                format!("argument {a:?} contains a NUL byte, which exec cannot pass")
            })
        })
        .collect::<Result<_>>()?;
    let mut ptrs: Vec<*const libc::c_char> = cargs.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let (go_read, go_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    use std::os::fd::AsRawFd as _;
    let (go_fd, err_fd) = (go_read.as_raw_fd(), err_write.as_raw_fd());
    // The child's own copies of the ends it does not use: it must see EOF on `go` when
    // the tracer goes away (or drops it on a set-up error), not wait for itself.
    let (go_write_fd, err_read_fd) = (go_write.as_raw_fd(), err_read.as_raw_fd());
    // The signals the command would have had alone (verify blocks SIGCHLD for itself).
    let mask = super::child_signals::mask_at_start();

    // SAFETY: the child only calls sigprocmask, read, dup2, execvp, write and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls on descriptors and buffers set up before fork.
        unsafe {
            libc::close(go_write_fd);
            libc::close(err_read_fd);
            if let Some(mask) = &mask {
                libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
            }
            let mut byte = 0u8;
            if libc::read(go_fd, (&raw mut byte).cast(), 1) != 1 {
                libc::_exit(127); // the tracer went away before releasing us
            }
            if stdout_to_stderr && libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) < 0 {
                let errno = *libc::__errno_location();
                libc::write(err_fd, (&raw const errno).cast(), size_of::<i32>());
                libc::_exit(127);
            }
            libc::execvp(ptrs[0], ptrs.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(err_fd, (&raw const errno).cast(), size_of::<i32>());
            libc::_exit(127);
        }
    }
    drop(go_read);
    drop(err_write);
    Ok(HeldChild {
        pid: pid as u32,
        go: Some(File::from(go_write)),
        exec_error: File::from(err_read),
        program: program.clone(),
    })
}

impl HeldChild {
    /// Lets the child exec; fails with the reason when exec fails (the child is reaped).
    pub fn release(mut self) -> Result<u32> {
        let Some(mut go) = self.go.take() else {
            bail!("the traced command was already released");
        };
        go.write_all(&[1]).context("releasing the traced command")?;
        drop(go);
        let mut errno = [0u8; 4];
        let mut got = 0;
        while got < errno.len() {
            match self.exec_error.read(&mut errno[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("waiting for the traced command to start"),
            }
        }
        if got == 0 {
            return Ok(self.pid); // exec succeeded: the pipe closed on exec
        }
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0) };
        let err = std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
        bail!("cannot run {:?}: {err}", self.program)
    }
}

impl Drop for HeldChild {
    fn drop(&mut self) {
        // Dropped before release (set-up failed): closing `go` makes the child exit 127;
        // reap it so no zombie is left.
        if self.go.take().is_some() {
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0) };
        }
    }
}
