//! Stopping cleanly on SIGINT and SIGTERM. The signal handlers only record
//! which signal arrived; the engine polls [`check`] between chunks and
//! tensors, and the error it returns unwinds through the writer, whose
//! temporary files remove themselves. The binary then exits 128 + signal.

use std::sync::atomic::{AtomicUsize, Ordering};

static STOP: AtomicUsize = AtomicUsize::new(0);

/// A SIGINT or SIGTERM arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by {}: stopped, and removed the unfinished output", signal_name(*.signal))]
pub struct Interrupted {
    /// The signal number.
    pub signal: i32,
}

impl Interrupted {
    /// The conventional exit code: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    pub fn exit_code(&self) -> u8 {
        (128 + self.signal).clamp(0, 255) as u8
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Installs the handlers for SIGINT and SIGTERM (the binary calls this once),
/// and one for SIGXFSZ, whose default action would kill the process when an
/// output passes the file-size limit (`ulimit -f`): with a handler installed
/// the write fails with EFBIG instead, and the writer reports it and cleans up.
pub fn install() -> std::io::Result<()> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_usize(sig, &STOP, sig as usize)?;
    }
    static FSIZE: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
        std::sync::OnceLock::new();
    let seen = FSIZE.get_or_init(Default::default).clone();
    signal_hook::flag::register(signal_hook::consts::SIGXFSZ, seen)?;
    Ok(())
}

/// The signal that asked to stop, if any.
pub fn requested() -> Option<Interrupted> {
    match STOP.load(Ordering::Relaxed) {
        0 => None,
        s => Some(Interrupted { signal: s as i32 }),
    }
}

/// Fails when a stop was requested.
pub fn check() -> Result<(), Interrupted> {
    requested().map_or(Ok(()), Err)
}
