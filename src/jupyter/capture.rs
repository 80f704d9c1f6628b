//! The kernel's standard output and error, turned into Jupyter `stream`
//! messages.
//!
//! Output reaches file descriptors 1 and 2 from many places: Rhai's `print`
//! and `debug`, progress lines of long primitives, warnings deep in the
//! numerics, a panic message. Rather than teach each of them about Jupyter,
//! the kernel points both descriptors at pipes and forwards what arrives. A
//! reader thread forwards output while a cell runs (so progress shows live);
//! [`Capture::drain`] takes the rest before the cell's result is sent, so a
//! cell's text always precedes its result and its `idle` status (a client
//! that has seen `idle` stops listening for the cell's output).

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// File descriptor 1.
    Stdout,
    /// File descriptor 2.
    Stderr,
}

/// Where forwarded text goes.
pub type Sink = Arc<dyn Fn(Stream, String) + Send + Sync>;

struct Pipe {
    stream: Stream,
    read_fd: RawFd,
    /// The bytes of a UTF-8 character split across two reads.
    carry: Vec<u8>,
}

/// Standard output and error redirected into pipes.
pub struct Capture {
    pipes: Mutex<Vec<Pipe>>,
    sink: Sink,
    /// The original standard error, for the kernel's own diagnostics (Jupyter
    /// shows a kernel's stderr in the server's log).
    log: Mutex<File>,
}

fn check(rc: libc::c_int, what: &str) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

impl Capture {
    /// Redirects descriptors 1 and 2 into pipes whose text goes to `sink`, and
    /// starts the thread that forwards it while nobody drains.
    pub fn start(sink: Sink) -> std::io::Result<Arc<Capture>> {
        // Rust's stdout buffers by line: what it holds must go out first.
        let _ = std::io::stdout().flush();
        let log_fd = check(unsafe { libc::dup(2) }, "dup(stderr)")?;
        let mut pipes = Vec::new();
        for (stream, target) in [(Stream::Stdout, 1), (Stream::Stderr, 2)] {
            let mut fds = [0 as RawFd; 2];
            check(unsafe { libc::pipe(fds.as_mut_ptr()) }, "pipe")?;
            let [read_fd, write_fd] = fds;
            // The reading end never blocks (drain reads until it is empty); the
            // writing end does, so a writer waits rather than losing text when
            // the pipe is full.
            let flags = check(unsafe { libc::fcntl(read_fd, libc::F_GETFL) }, "fcntl")?;
            check(
                unsafe { libc::fcntl(read_fd, libc::F_SETFL, flags | libc::O_NONBLOCK) },
                "fcntl",
            )?;
            unsafe { libc::fcntl(read_fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            check(unsafe { libc::dup2(write_fd, target) }, "dup2")?;
            unsafe { libc::close(write_fd) };
            pipes.push(Pipe {
                stream,
                read_fd,
                carry: Vec::new(),
            });
        }
        let capture = Arc::new(Capture {
            pipes: Mutex::new(pipes),
            sink,
            log: Mutex::new(unsafe { File::from_raw_fd(log_fd) }),
        });
        let reader = capture.clone();
        std::thread::Builder::new()
            .name("kernel-output".into())
            .spawn(move || reader.forward_loop())?;
        Ok(capture)
    }

    /// Writes a line to the kernel's log (its original standard error).
    pub fn log(&self, text: &str) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(log, "sparselab kernel: {text}");
    }

    /// Forwards everything written so far. Call after a cell ran, before its
    /// result goes out.
    pub fn drain(&self) {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let mut pipes = self.pipes.lock().unwrap_or_else(|e| e.into_inner());
        for p in pipes.iter_mut() {
            self.read_available(p, true);
        }
    }

    fn forward_loop(&self) {
        let fds: Vec<RawFd> = {
            let pipes = self.pipes.lock().unwrap_or_else(|e| e.into_inner());
            pipes.iter().map(|p| p.read_fd).collect()
        };
        loop {
            let mut polls: Vec<libc::pollfd> = fds
                .iter()
                .map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 200) };
            if n <= 0 {
                continue;
            }
            // Lines written in quick succession go out as one message rather
            // than one each.
            std::thread::sleep(Duration::from_millis(20));
            let mut pipes = self.pipes.lock().unwrap_or_else(|e| e.into_inner());
            for p in pipes.iter_mut() {
                self.read_available(p, false);
            }
        }
    }

    /// Forwards what the pipe holds. While a cell runs (`all` false) only
    /// whole lines go (a line printed in pieces, as `eprintln!` writes its
    /// arguments, stays one message); a drain (`all`) sends the rest too.
    fn read_available(&self, p: &mut Pipe, all: bool) {
        let mut buf = std::mem::take(&mut p.carry);
        let mut chunk = [0u8; 16384];
        loop {
            let n = unsafe { libc::read(p.read_fd, chunk.as_mut_ptr().cast(), chunk.len()) };
            if n <= 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n as usize]);
        }
        if buf.is_empty() {
            return;
        }
        // Keep an incomplete trailing UTF-8 sequence for the next read (a
        // newline never splits one).
        let valid = if all {
            match std::str::from_utf8(&buf) {
                Ok(_) => buf.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => buf.len(),
            }
        } else {
            buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
        };
        p.carry = buf.split_off(valid);
        if !buf.is_empty() {
            (self.sink)(p.stream, String::from_utf8_lossy(&buf).into_owned());
        }
    }
}
