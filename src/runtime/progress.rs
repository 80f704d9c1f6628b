//! Progress for long work: a bar in a terminal, plain lines elsewhere (logs, CI,
//! notebooks), nothing when quiet.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Reports `done / total` steps of one job.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    next_line: u64,
    start: Instant,
    plain: bool,
}

impl Progress {
    /// Starts a job of `total` steps; `quiet` silences it.
    pub fn new(label: &str, total: u64, quiet: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            bar
        });
        Self {
            bar,
            label: label.to_string(),
            total,
            done: 0,
            next_line: 0,
            start: Instant::now(),
            plain: !quiet && !terminal,
        }
    }

    /// Marks `n` more steps done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        } else if self.plain && (self.done >= self.next_line || self.done == self.total) {
            // About ten lines per job, so logs stay readable.
            eprintln!(
                "{}: {}/{} ({:.1}s)",
                self.label,
                self.done,
                self.total,
                self.start.elapsed().as_secs_f64()
            );
            self.next_line = self.done + (self.total / 10).max(1);
        }
    }

    /// Ends the job.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
