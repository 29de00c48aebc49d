//! shrinkray: group-wise INT8/INT4 quantization of safetensors checkpoints.
//!
//! One pass, one direction: [`checkpoint`] maps and validates the input,
//! [`plan`] decides every tensor's fate and every output byte from headers
//! alone, [`engine`] runs the kernels over row chunks in parallel, [`writer`]
//! makes output files appear whole or not at all, and [`report`] compares
//! the naive, predicted and actual sizes and the reconstruction error.
//! [`decode`], [`verify`], [`dequantize`] and [`inspect`] read packed files.

#![deny(missing_docs)]

#[cfg(target_endian = "big")]
compile_error!("shrinkray reads and writes little-endian data in place and supports little-endian targets only");

pub mod allocate;
pub mod bench;
pub mod checkpoint;
pub mod decode;
pub mod dequantize;
pub mod engine;
pub mod estimate;
pub mod format;
pub mod gguf;
pub mod html;
pub mod inspect;
pub mod interrupt;
pub mod plan;
pub mod quantize;
pub mod report;
pub mod synth;
pub mod units;
pub mod verify;
pub mod writer;

pub use shrinkray_kernels as kernels;

/// Any error of a library operation; each variant names the file and tensor concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input could not be opened or is malformed.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The plan could not be made.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// Quantizing a tensor failed.
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// Output could not be written.
    #[error(transparent)]
    Write(#[from] writer::WriteError),
    /// A packed file breaks the format.
    #[error(transparent)]
    Format(#[from] decode::FormatError),
    /// A SIGINT or SIGTERM stopped the run.
    #[error(transparent)]
    Interrupted(#[from] interrupt::Interrupted),
    /// Something else, described.
    #[error("{0}")]
    Other(String),
}

/// Result of library operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Runs `f` on a rayon pool of `threads` workers (all cores when `None`).
pub fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> Result<T> {
    match threads {
        None => Ok(f()),
        Some(0) => Err(Error::Other("--threads must be at least 1".into())),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map(|pool| pool.install(f))
            .map_err(|e| Error::Other(format!("cannot start {n} worker threads: {e}"))),
    }
}

/// Worker threads `with_threads(threads, …)` uses.
pub fn thread_count(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(rayon::current_num_threads)
}

/// A progress bar over `total` bytes on stderr; hidden when `show` is false or stderr is not a terminal.
pub fn progress_bar(total: u64, show: bool, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !show || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:10} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
