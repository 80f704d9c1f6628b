//! Stopping long work from outside: one flag for every front end.
//!
//! A front end sets [`INTERRUPT`] (the REPL on Ctrl-C, a notebook kernel on an
//! `interrupt_request`); long loops in the core (the calibration's passes over
//! the windows, the compression of each linear, the evaluation's batches) poll
//! it with [`check`] and return an [`Interrupted`] error, and the script engine
//! stops at its next step. The core only reads the flag: whoever set it clears
//! it once the interrupted work has returned (so that a script that caught the
//! error still stops at its next step).
//!
//! Polling happens where nothing is half-written: before a layer's statistics
//! are written to a cache, before a layer's weights go into the model, before a
//! checkpoint is advanced.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set to ask the running work to stop (see the module docs). The script
/// engine's `crate::script::INTERRUPT` is this same flag.
pub static INTERRUPT: AtomicBool = AtomicBool::new(false);

/// The error long work returns when [`INTERRUPT`] was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted (Ctrl-C)")]
pub struct Interrupted;

/// `Err(Interrupted)` when the flag is set; the flag stays set.
pub fn check() -> Result<(), Interrupted> {
    if INTERRUPT.load(Ordering::Relaxed) {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// Whether an error (anywhere in its context chain) is an interruption.
pub fn is_interrupted(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<Interrupted>().is_some())
}
