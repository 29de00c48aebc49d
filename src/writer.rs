//! Output files that appear whole or not at all.
//!
//! Every output file is written under a temporary name in its destination
//! directory, at offsets known from the plan, then checked for its planned
//! length, fsynced, renamed to its final name, and the directory fsynced.
//! While it is written, a background thread flushes it to the disk every
//! [`FLUSH_EVERY`] bytes, so that the disk works while the kernels do and the
//! final fsync only waits for the tail. `--no-fsync` skips every flush (the
//! temporary name and the rename stay): faster, but not crash-durable.
//! Dropping an unfinished file removes the temporary. Output paths are
//! resolved here too, with the checks that keep the input untouched.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use crate::checkpoint::{Checkpoint, INDEX_FILE};

/// Bytes written between two background flushes of an output file.
pub const FLUSH_EVERY: u64 = 8 << 20;

/// The marker in the names of temporary files.
pub const TMP_MARKER: &str = ".shrinkray-tmp";

/// Why output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A system call failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The output path is not usable.
    #[error("{path}: {reason}")]
    Refused {
        /// The output path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io_err(path: &Path, what: impl Into<String>) -> impl FnOnce(io::Error) -> WriteError {
    let path = path.to_path_buf();
    let what = what.into();
    move |source| WriteError::Io { path, what, source }
}

/// An output file being written under a temporary name.
#[derive(Debug)]
pub struct PendingFile {
    final_path: PathBuf,
    tmp_path: PathBuf,
    file: Option<File>,
    len: u64,
    /// Bytes written since the last flush request.
    unflushed: AtomicU64,
    flusher: Option<Flusher>,
    /// Whether the file (and its directory entry) is flushed to disk before it counts as done.
    durable: bool,
}

/// A thread that `fdatasync`s the file on request (requests that arrive while
/// one runs are merged), and returns the first error.
#[derive(Debug)]
struct Flusher {
    requests: SyncSender<()>,
    thread: JoinHandle<io::Result<()>>,
}

impl Flusher {
    fn start(file: &File) -> Option<Flusher> {
        let file = file.try_clone().ok()?;
        let (requests, rx) = sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("shrinkray-flush".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    file.sync_data()?;
                }
                Ok(())
            })
            .ok()?;
        Some(Flusher { requests, thread })
    }

    /// Stops the thread and returns its first error.
    fn stop(self) -> io::Result<()> {
        drop(self.requests);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the flush thread panicked")))
    }
}

impl PendingFile {
    /// Creates the temporary sibling of `final_path` for a file of `len` bytes, flushed to disk.
    pub fn create(final_path: &Path, len: u64) -> Result<PendingFile, WriteError> {
        PendingFile::create_with(final_path, len, true)
    }

    /// [`PendingFile::create`]; `durable: false` never flushes it to disk (`--no-fsync`).
    pub fn create_with(
        final_path: &Path,
        len: u64,
        durable: bool,
    ) -> Result<PendingFile, WriteError> {
        let dir = parent_dir(final_path);
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        remove_stale_temporaries(&dir, &name);
        let tmp_path = dir.join(format!(".{name}{TMP_MARKER}-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(io_err(&tmp_path, "cannot create temporary output file"))?;
        let flusher = if durable { Flusher::start(&file) } else { None };
        let pending = PendingFile {
            final_path: final_path.to_path_buf(),
            tmp_path,
            file: Some(file),
            len,
            unflushed: AtomicU64::new(0),
            flusher,
            durable,
        };
        // Reserve the blocks now, so that a full disk stops the run before any
        // work (KEEP_SIZE: the length check in `finish` still sees what was
        // written). File systems without fallocate just skip the reservation.
        if len > 0 {
            let file = pending.file.as_ref().expect("just opened");
            match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, len) {
                Err(e) if e == rustix::io::Errno::NOSPC => {
                    let e = io::Error::from(e);
                    return Err(io_err(&pending.final_path, pending.no_space())(e));
                }
                _ => {}
            }
        }
        Ok(pending)
    }

    /// The message for a full disk, with the bytes needed and what is free.
    fn no_space(&self) -> String {
        let free = free_space(&parent_dir(&self.final_path))
            .map(|f| format!(", {} free", crate::units::bytes(f)))
            .unwrap_or_default();
        format!(
            "disk full: the file needs {}{free}",
            crate::units::bytes(self.len)
        )
    }

    /// The path the file will have once finished.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Writes `buf` at absolute `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), WriteError> {
        let file = self.file.as_ref().expect("file is open until finished");
        file.write_all_at(buf, offset).map_err(|e| {
            let what = match e.kind() {
                io::ErrorKind::StorageFull => self.no_space(),
                io::ErrorKind::FileTooLarge => format!(
                    "the file size limit (ulimit -f) is below the {} this file needs",
                    crate::units::bytes(self.len)
                ),
                _ => "write failed".to_string(),
            };
            io_err(&self.final_path, what)(e)
        })?;
        let n = self
            .unflushed
            .fetch_add(buf.len() as u64, Ordering::Relaxed)
            + buf.len() as u64;
        if n >= FLUSH_EVERY {
            self.unflushed.store(0, Ordering::Relaxed);
            if let Some(f) = &self.flusher {
                // Full: a flush is already queued, which will cover these bytes too.
                let _ = f.requests.try_send(());
            }
        }
        Ok(())
    }

    /// Checks the length, fsyncs, renames to the final name and fsyncs the directory
    /// (without the two fsyncs when not durable).
    pub fn finish(mut self) -> Result<PathBuf, WriteError> {
        let file = self.file.as_ref().expect("file is open until finished");
        let got = file
            .metadata()
            .map_err(io_err(&self.tmp_path, "cannot stat"))?
            .len();
        if got != self.len {
            return Err(WriteError::Refused {
                path: self.tmp_path.clone(),
                reason: format!("internal error: wrote {got} bytes, planned {}", self.len),
            });
        }
        if let Some(f) = self.flusher.take() {
            f.stop()
                .map_err(io_err(&self.tmp_path, "background flush to disk failed"))?;
        }
        if self.durable {
            file.sync_all()
                .map_err(io_err(&self.tmp_path, "fsync failed"))?;
        }
        std::fs::rename(&self.tmp_path, &self.final_path).map_err(io_err(
            &self.final_path,
            "cannot rename the finished file into place",
        ))?;
        self.file = None;
        if self.durable {
            let dir = parent_dir(&self.final_path);
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&dir, "cannot fsync the directory"))?;
        }
        Ok(self.final_path.clone())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if let Some(f) = self.flusher.take() {
            let _ = f.stop();
        }
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

/// Removes temporaries of output `name` in `dir` left by shrinkray processes that no
/// longer run (killed with SIGKILL, or by a power cut). Linux only (`/proc`); best effort.
fn remove_stale_temporaries(dir: &Path, name: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!(".{name}{TMP_MARKER}-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Bytes available to this user on the file system holding `dir`, if known.
pub fn free_space(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The directory an output path lands in.
pub fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Where each output file of a run goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputPaths {
    /// One path per output file, in plan order.
    pub files: Vec<PathBuf>,
    /// The index, for sharded output.
    pub index: Option<PathBuf>,
    /// The output directory, when this call created it.
    pub created: Option<PathBuf>,
}

/// Removes a directory a run created, unless the run finished ([`CreatedDir::keep`]).
/// Only an empty directory is removed: the files of a failed run remove themselves first.
#[derive(Debug, Default)]
pub struct CreatedDir(Option<PathBuf>);

impl CreatedDir {
    /// Guards `dir` (nothing when `None`).
    pub fn new(dir: Option<PathBuf>) -> CreatedDir {
        CreatedDir(dir)
    }

    /// Whether a directory is guarded.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The run finished: keep the directory.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for CreatedDir {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// Resolves `out` for a checkpoint whose output files are named `names`
/// (`one_file`: a single output whatever the input's shards, as GGUF).
///
/// Sharded checkpoints written shard for shard go into the directory `out`
/// (created if its parent exists, unless `dry_run`); one output file goes to
/// `out`, or into `out` when it is a directory. Refuses any output path that is an input file,
/// and existing outputs unless `force`.
pub fn resolve_outputs(
    ckpt: &Checkpoint,
    names: &[String],
    out: &Path,
    force: bool,
    dry_run: bool,
    one_file: bool,
) -> Result<OutputPaths, WriteError> {
    let refuse = |path: &Path, reason: &str| WriteError::Refused {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    // A sharded checkpoint gives a sharded output, unless the output is one file (GGUF).
    let paths = if ckpt.is_sharded() && !one_file {
        if out.exists() && !out.is_dir() {
            return Err(refuse(
                out,
                "sharded output needs a directory, and this is a file",
            ));
        }
        let mut created = None;
        if !out.exists() {
            let parent = parent_dir(out);
            if !parent.is_dir() {
                return Err(refuse(out, "the parent directory does not exist"));
            }
            if !dry_run {
                std::fs::create_dir(out)
                    .map_err(io_err(out, "cannot create the output directory"))?;
                created = Some(out.to_path_buf());
            }
        }
        OutputPaths {
            files: names.iter().map(|n| out.join(n)).collect(),
            index: Some(out.join(INDEX_FILE)),
            created,
        }
    } else {
        if !out.is_dir() && out.as_os_str().to_string_lossy().ends_with('/') {
            return Err(refuse(out, "the output directory does not exist"));
        }
        let file = if out.is_dir() {
            out.join(&names[0])
        } else {
            out.to_path_buf()
        };
        if !parent_dir(&file).is_dir() {
            return Err(refuse(&file, "the output directory does not exist"));
        }
        OutputPaths {
            files: vec![file],
            index: None,
            created: None,
        }
    };
    let inputs: Vec<PathBuf> = ckpt
        .input_files()
        .iter()
        .filter_map(|p| canonical(p))
        .collect();
    for p in paths.files.iter().chain(&paths.index) {
        if canonical(p).is_some_and(|c| inputs.contains(&c)) {
            return Err(refuse(
                p,
                "this is an input file: shrinkray never writes over its input",
            ));
        }
        if p.exists() && !force {
            return Err(refuse(p, "already exists (use --force to replace it)"));
        }
        if p.is_dir() {
            return Err(refuse(p, "is a directory"));
        }
    }
    Ok(paths)
}

/// The canonical form of a path that may not exist yet (its parent must).
fn canonical(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let dir = parent_dir(p).canonicalize().ok()?;
    Some(dir.join(p.file_name()?))
}

/// Writes a small file (an index) whole, crash-safely (flushed to disk when `durable`).
pub fn write_small_file(path: &Path, bytes: &[u8], durable: bool) -> Result<PathBuf, WriteError> {
    let f = PendingFile::create_with(path, bytes.len() as u64, durable)?;
    f.write_at(bytes, 0)?;
    f.finish()
}

/// Writes a sharded checkpoint's `model.safetensors.index.json`: the input
/// index's `metadata` with `total_size` (tensor data bytes) replaced, and the
/// `weight_map` from tensor name to shard file.
pub fn write_index(
    path: &Path,
    metadata: &serde_json::Map<String, serde_json::Value>,
    weight_map: &std::collections::BTreeMap<String, String>,
    total_size: u64,
    durable: bool,
) -> Result<PathBuf, WriteError> {
    let mut metadata = metadata.clone();
    metadata.insert("total_size".into(), total_size.into());
    let json = serde_json::json!({ "metadata": metadata, "weight_map": weight_map });
    let text = serde_json::to_string_pretty(&json).expect("index serializes") + "\n";
    write_small_file(path, text.as_bytes(), durable)
}
