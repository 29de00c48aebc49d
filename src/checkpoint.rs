//! Opening checkpoints: one `.safetensors` file, or a sharded Hugging Face
//! checkpoint described by `model.safetensors.index.json`.
//!
//! Every header (and the index) is validated before anything else happens.
//! Tensors are then handed out as borrowed views into memory-mapped files, or,
//! with [`ReadMode::Read`] (`--no-mmap`), read one at a time into a buffer.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, SafeTensorError};
use safetensors::{Dtype, SafeTensors};

/// The index file name of a sharded Hugging Face checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The file name of a single-file Hugging Face checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// Why a checkpoint could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The path could not be read.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// A safetensors header breaks a rule of the format.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Header {
        /// The file.
        path: PathBuf,
        /// The rule broken.
        reason: String,
    },
    /// A GGUF header breaks a rule of the format, or holds what shrinkray does not read.
    #[error("{path}: {reason}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// The rule broken.
        reason: String,
    },
    /// The index file is malformed or disagrees with its shards.
    #[error("{path}: invalid checkpoint index: {reason}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// The rule broken.
        reason: String,
    },
    /// A directory holds no checkpoint.
    #[error("{path}: no checkpoint here (looked for {INDEX_FILE}, {SINGLE_FILE}, or one *.safetensors file)")]
    NotFound {
        /// The directory.
        path: PathBuf,
    },
}

type Result<T> = std::result::Result<T, CheckpointError>;

/// One tensor of a checkpoint file: its header entry with absolute file offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// First byte of its data in the file.
    pub start: usize,
    /// One past its last byte in the file.
    pub end: usize,
}

impl TensorEntry {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size of the data in bytes.
    pub fn nbytes(&self) -> usize {
        self.end - self.start
    }
}

/// How tensor data is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// Memory-map every file (the default: no copy, the page cache is the buffer).
    #[default]
    Map,
    /// Plain `pread`s into a buffer, one tensor at a time (`--no-mmap`): a file
    /// truncated under us gives an I/O error instead of SIGBUS.
    Read,
}

/// Where a shard's bytes come from.
#[derive(Debug)]
enum Source {
    Map(Mmap),
    Read(File),
}

/// One safetensors (or GGUF) file whose header has been validated.
#[derive(Debug)]
pub struct Shard {
    /// Where the file is.
    pub path: PathBuf,
    /// Its file name (the name the index uses).
    pub file_name: String,
    /// Its size in bytes.
    pub file_len: u64,
    /// Bytes before the data: the 8-byte length prefix plus the JSON header.
    pub header_len: u64,
    /// The `__metadata__` entries.
    pub metadata: BTreeMap<String, String>,
    /// The tensors, in file order.
    pub tensors: Vec<TensorEntry>,
    /// The key-value metadata of a GGUF file, in file order (`None` for safetensors).
    pub gguf: Option<Vec<(String, crate::gguf::Value)>>,
    source: Source,
}

impl Shard {
    /// Opens (maps, by default) and validates one safetensors file.
    pub fn open(path: &Path, mode: ReadMode) -> Result<Shard> {
        let io = |what| {
            move |source| CheckpointError::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        // stat before open: opening a FIFO or a device could block forever.
        let meta = std::fs::metadata(path).map_err(io("cannot open"))?;
        if !meta.is_file() {
            return Err(CheckpointError::Header {
                path: path.to_path_buf(),
                reason: "not a regular file".into(),
            });
        }
        let file = File::open(path).map_err(io("cannot open"))?;
        // A positioned read: the file offset stays at 0 for the header reader.
        let mut magic = [0u8; 4];
        if file.read_exact_at(&mut magic, 0).is_ok() && crate::gguf::is_gguf(&magic) {
            return Shard::open_gguf(path, &meta, mode);
        }
        let file_len = meta.len();
        let bad = |e: SafeTensorError, bytes: &[u8]| CheckpointError::Header {
            path: path.to_path_buf(),
            reason: explain(&e, file_len, header_text(bytes)),
        };
        let (source, n, header) = match mode {
            ReadMode::Map => {
                // SAFETY: the map is read-only and private to this process. The file
                // must not be truncated or rewritten while shrinkray runs (README,
                // "mmap hazards"); shrinkray itself never writes to an input path.
                let map = unsafe { Mmap::map(&file) }.map_err(io("cannot memory-map"))?;
                let (n, header) = SafeTensors::read_metadata(&map).map_err(|e| bad(e, &map))?;
                (Source::Map(map), n, header)
            }
            ReadMode::Read => {
                let prefix = read_prefix(&file, file_len).map_err(io("cannot read"))?;
                let (n, header) = check_prefix(&prefix, file_len).map_err(|e| bad(e, &prefix))?;
                (Source::Read(file), n, header)
            }
        };
        let data_start = 8 + n;
        let mut tensors = Vec::new();
        for name in header.offset_keys() {
            let info = header.info(&name).expect("offset_keys names a tensor");
            tensors.push(TensorEntry {
                start: data_start + info.data_offsets.0,
                end: data_start + info.data_offsets.1,
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
            });
        }
        let metadata = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(Shard {
            file_name: path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_path_buf(),
            file_len,
            header_len: data_start as u64,
            metadata,
            tensors,
            gguf: None,
            source,
        })
    }

    /// Opens a GGUF file holding F32, F16, BF16 (or integer) tensors: the
    /// input of a GGUF-to-GGUF quantization.
    fn open_gguf(path: &Path, meta: &std::fs::Metadata, mode: ReadMode) -> Result<Shard> {
        let bad = |reason: String| CheckpointError::Gguf {
            path: path.to_path_buf(),
            reason,
        };
        if mode == ReadMode::Read {
            return Err(bad(
                "--no-mmap reads safetensors files only (GGUF files are memory-mapped)".into(),
            ));
        }
        let map = map_file(path)?;
        let h = crate::gguf::read_header(&map)
            .map_err(|e| bad(format!("not a valid GGUF file: {e}")))?;
        let mut tensors = Vec::with_capacity(h.tensors.len());
        for t in &h.tensors {
            let crate::gguf::TensorType::Plain(dtype) = t.ty else {
                return Err(bad(format!(
                    "tensor `{}` is already quantized ({}); shrinkray quantizes GGUF files of F32, F16 or BF16 tensors",
                    t.name,
                    t.ty.name()
                )));
            };
            tensors.push(TensorEntry {
                name: t.name.clone(),
                dtype,
                shape: t.shape.clone(),
                start: t.start as usize,
                end: (t.start + t.nbytes) as usize,
            });
        }
        Ok(Shard {
            file_name: path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_path_buf(),
            file_len: meta.len(),
            header_len: h.data_start,
            metadata: BTreeMap::new(),
            tensors,
            gguf: Some(h.kvs),
            source: Source::Map(map),
        })
    }

    /// The bytes of a tensor of this shard: borrowed from the map, or read now.
    pub fn data(&self, t: &TensorEntry) -> Result<Cow<'_, [u8]>> {
        match &self.source {
            Source::Map(m) => Ok(Cow::Borrowed(&m[t.start..t.end])),
            Source::Read(f) => {
                let mut buf = vec![0; t.nbytes()];
                f.read_exact_at(&mut buf, t.start as u64)
                    .map_err(|source| CheckpointError::Io {
                        path: self.path.clone(),
                        what: "cannot read tensor data (was the file changed?)",
                        source,
                    })?;
                Ok(Cow::Owned(buf))
            }
        }
    }

    /// Drops this process's mapping of the pages under `bytes` (a slice that
    /// [`Shard::data`] returned) once they have been used, so that reading a
    /// checkpoint of any size does not grow the resident set: the pages stay in
    /// the page cache, and touching them again maps them again. No-op for reads.
    pub fn release(&self, bytes: &[u8]) {
        let Source::Map(m) = &self.source else {
            return;
        };
        let base = m.as_ptr() as usize;
        let at = bytes.as_ptr() as usize;
        if bytes.is_empty() || at < base || at + bytes.len() > base + m.len() {
            return;
        }
        // Page faults map the pages around the faulting one too ("fault-around",
        // 64 KiB by default), so a neighbour that finished earlier may have had
        // some of its pages mapped again: release a margin on both sides.
        const MARGIN: usize = 64 << 10;
        let page = rustix::param::page_size();
        let start = (at - base).saturating_sub(MARGIN) / page * page;
        let end = (at - base + bytes.len() + MARGIN)
            .next_multiple_of(page)
            .min(m.len());
        // SAFETY: the map is a read-only private file mapping that is never
        // written, so MADV_DONTNEED only unmaps pages: a later access faults the
        // same file bytes back in, and any slice still borrowed from the map
        // keeps reading the same contents. The range lies inside the map.
        let _ = unsafe {
            m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }

    /// The tensor called `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Memory-maps a whole file read-only (for GGUF files, which the
/// safetensors reader does not open).
pub fn map_file(path: &Path) -> Result<Mmap> {
    let io = |what| {
        move |source| CheckpointError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let file = File::open(path).map_err(io("cannot open"))?;
    // SAFETY: as in `Shard::open`: a read-only map of a file shrinkray never
    // writes; it must not be truncated while shrinkray runs (README).
    unsafe { Mmap::map(&file) }.map_err(io("cannot memory-map"))
}

/// The first `8 + N` bytes of a file (length prefix and header), read with
/// plain reads: at most 8 bytes when `N` is over the 100 MB cap or past the
/// end of the file, so nothing is allocated from an unchecked length.
fn read_prefix(mut file: &File, file_len: u64) -> std::io::Result<Vec<u8>> {
    const CAP: u64 = 100_000_000;
    let mut buf = vec![0u8; file_len.min(8) as usize];
    file.read_exact(&mut buf)?;
    if let Ok(len) = <[u8; 8]>::try_from(&buf[..]) {
        let n = u64::from_le_bytes(len);
        if n <= CAP && 8 + n <= file_len {
            buf.resize(8 + n as usize, 0);
            file.read_exact(&mut buf[8..])?;
        }
    }
    Ok(buf)
}

/// Validates a header read by [`read_prefix`] with the very checks (and
/// errors) `SafeTensors::read_metadata` makes on a whole mapped file: it is
/// given the prefix alone, so a valid header fails only on the data length,
/// which is then checked against the file's size.
fn check_prefix(
    prefix: &[u8],
    file_len: u64,
) -> std::result::Result<(usize, Metadata), SafeTensorError> {
    if prefix.len() < 8 {
        return Err(SafeTensorError::HeaderTooSmall);
    }
    let n = prefix.len() - 8;
    let declared = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes"));
    if declared > 100_000_000 {
        return Err(SafeTensorError::HeaderTooLarge);
    }
    if declared != n as u64 {
        return Err(SafeTensorError::InvalidHeaderLength);
    }
    let meta = match SafeTensors::read_metadata(prefix) {
        Ok((_, meta)) => meta,
        Err(SafeTensorError::MetadataIncompleteBuffer) => {
            let text = std::str::from_utf8(&prefix[8..]).expect("read_metadata checked UTF-8");
            serde_json::from_str::<Metadata>(text).expect("read_metadata parsed and validated it")
        }
        Err(e) => return Err(e),
    };
    if 8 + n as u64 + meta.data_len() as u64 != file_len {
        return Err(SafeTensorError::MetadataIncompleteBuffer);
    }
    Ok((n, meta))
}

/// The JSON header inside `bytes` (a file's start), if it can be read as text.
fn header_text(bytes: &[u8]) -> Option<&str> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(n).ok()?)?;
    std::str::from_utf8(bytes.get(8..end)?).ok()
}

/// The first tensor entry of a header that breaks a per-tensor rule, and the
/// rule: used to name the tensor when the safetensors crate's error does not.
fn culprit(header: &str) -> Option<(String, Option<String>)> {
    use safetensors::tensor::TensorInfo;
    let serde_json::Value::Object(map) = serde_json::from_str(header).ok()? else {
        return None;
    };
    // A rule of `None`: the entry does not deserialize (the caller has serde's message).
    for (name, v) in map {
        if name == "__metadata__" {
            if serde_json::from_value::<HashMap<String, String>>(v).is_err() {
                return Some((name, None));
            }
            continue;
        }
        let Ok(info) = serde_json::from_value::<TensorInfo>(v) else {
            return Some((name, None));
        };
        let bits = info
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(info.dtype.bitsize()));
        let (b, e) = info.data_offsets;
        let rule = match bits {
            None => "its shape × dtype size overflows".to_string(),
            Some(bits) if bits % 8 != 0 => {
                format!("its size is not a whole number of bytes ({bits} bits)")
            }
            Some(bits) if e.checked_sub(b) != Some(bits / 8) => format!(
                "its byte range [{b}, {e}) does not equal shape {:?} × {} = {} bytes",
                info.shape,
                info.dtype,
                bits / 8
            ),
            _ => continue,
        };
        return Some((name, Some(rule)));
    }
    None
}

/// Turns a safetensors error into the rule it names, naming the tensor
/// concerned when the header (`header`) shows which one it is.
fn explain(e: &SafeTensorError, file_len: u64, header: Option<&str>) -> String {
    use SafeTensorError::*;
    let named = matches!(
        e,
        InvalidHeaderDeserialization(_)
            | JsonError(_)
            | TensorInvalidInfo
            | ValidationOverflow
            | MisalignedSlice
    );
    if let Some((name, rule)) = header.filter(|_| named).and_then(culprit) {
        let what = if name == "__metadata__" {
            "`__metadata__` (string → string)".to_string()
        } else {
            format!("tensor `{name}`")
        };
        return match (e, rule) {
            (InvalidHeaderDeserialization(err) | JsonError(err), _) => {
                format!("header is not valid safetensors JSON: {what}: {err}")
            }
            (_, Some(rule)) => format!("{}: {what}: {rule}", explain(e, file_len, None)),
            (_, None) => format!("{}: {what}", explain(e, file_len, None)),
        };
    }
    match e {
        HeaderTooSmall => format!("file is {file_len} bytes, too short for the 8-byte header length"),
        HeaderTooLarge => "header length is over the 100 MB cap".into(),
        InvalidHeaderLength => format!("header length runs past the end of the file ({file_len} bytes)"),
        InvalidHeader(err) => format!("header is not UTF-8: {err}"),
        InvalidHeaderStart => "header does not start with '{'".into(),
        InvalidHeaderDeserialization(err) | JsonError(err) => {
            format!("header is not valid safetensors JSON: {err}")
        }
        InvalidOffset(name) => format!(
            "tensor `{name}`: data offsets are not contiguous from 0 (overlap, gap or reversed range)"
        ),
        TensorInvalidInfo => "a tensor's byte range does not equal shape × dtype size".into(),
        ValidationOverflow => "a tensor's shape × dtype size overflows".into(),
        MetadataIncompleteBuffer => {
            "the data does not end exactly at the end of the file".into()
        }
        MisalignedSlice => "a tensor's size is not a whole number of bytes".into(),
        other => other.to_string(),
    }
}

/// The parsed `model.safetensors.index.json` of a sharded checkpoint.
#[derive(Clone, Debug)]
pub struct Index {
    /// Where the index file is.
    pub path: PathBuf,
    /// Its `metadata` object (with `total_size`).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A validated checkpoint: one or more shards, and the index for sharded ones.
#[derive(Debug)]
pub struct Checkpoint {
    /// The path the user gave.
    pub path: PathBuf,
    /// The index, for a sharded checkpoint.
    pub index: Option<Index>,
    /// The files, in index order (by file name) or the single file.
    pub shards: Vec<Shard>,
}

impl Checkpoint {
    /// Opens a `.safetensors` file, an index file, or a directory holding one of them.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        Self::open_with(path, ReadMode::Map)
    }

    /// [`Checkpoint::open`], reading tensor data as `mode` says.
    pub fn open_with(path: &Path, mode: ReadMode) -> Result<Checkpoint> {
        let meta = std::fs::metadata(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            what: "cannot open",
            source,
        })?;
        if meta.is_dir() {
            let index = path.join(INDEX_FILE);
            if index.is_file() {
                return Self::open_index(path, &index, mode);
            }
            let single = path.join(SINGLE_FILE);
            if single.is_file() {
                return Self::open_single(path, &single, mode);
            }
            let found = safetensors_files(path)?;
            return match found.as_slice() {
                [only] => Self::open_single(path, only, mode),
                _ => Err(CheckpointError::NotFound {
                    path: path.to_path_buf(),
                }),
            };
        }
        if path.extension().is_some_and(|e| e == "json") {
            Self::open_index(path, path, mode)
        } else {
            Self::open_single(path, path, mode)
        }
    }

    fn open_single(given: &Path, file: &Path, mode: ReadMode) -> Result<Checkpoint> {
        Ok(Checkpoint {
            path: given.to_path_buf(),
            index: None,
            shards: vec![Shard::open(file, mode)?],
        })
    }

    fn open_index(given: &Path, index_path: &Path, mode: ReadMode) -> Result<Checkpoint> {
        let bad = |reason: String| CheckpointError::Index {
            path: index_path.to_path_buf(),
            reason,
        };
        if !index_path.is_file() {
            return Err(bad("not a regular file".into()));
        }
        let bytes = std::fs::read(index_path).map_err(|source| CheckpointError::Io {
            path: index_path.to_path_buf(),
            what: "cannot read",
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let metadata = match json.get("metadata") {
            None | Some(serde_json::Value::Null) => serde_json::Map::new(),
            Some(serde_json::Value::Object(m)) => m.clone(),
            Some(_) => return Err(bad("`metadata` is not an object".into())),
        };
        let Some(serde_json::Value::Object(weight_map)) = json.get("weight_map") else {
            return Err(bad("no `weight_map` object".into()));
        };
        let dir = index_path.parent().unwrap_or(Path::new("."));
        // Which tensors each shard file must hold, by file name.
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (tensor, file) in weight_map {
            let Some(file) = file.as_str() else {
                return Err(bad(format!(
                    "tensor `{tensor}`: shard name is not a string"
                )));
            };
            if !is_plain_file_name(file) {
                return Err(bad(format!(
                    "tensor `{tensor}`: shard `{file}` is not a plain file name inside the checkpoint directory"
                )));
            }
            wanted
                .entry(file.to_string())
                .or_default()
                .push(tensor.clone());
        }
        if wanted.is_empty() {
            return Err(bad("`weight_map` is empty".into()));
        }
        let mut shards = Vec::with_capacity(wanted.len());
        let mut seen: HashMap<String, String> = HashMap::new();
        for (file, names) in &wanted {
            let shard_path = dir.join(file);
            if !shard_path.is_file() {
                return Err(bad(format!("shard `{file}` is missing")));
            }
            let shard = Shard::open(&shard_path, mode)?;
            for name in names {
                if shard.tensor(name).is_none() {
                    return Err(bad(format!(
                        "tensor `{name}` is listed in shard `{file}` but is not in it"
                    )));
                }
            }
            for t in &shard.tensors {
                if let Some(other) = seen.insert(t.name.clone(), file.clone()) {
                    return Err(bad(format!(
                        "tensor `{}` is in two shards: `{other}` and `{file}`",
                        t.name
                    )));
                }
                match weight_map.get(&t.name).and_then(|v| v.as_str()) {
                    Some(f) if f == file => {}
                    Some(f) => {
                        return Err(bad(format!(
                            "tensor `{}` is in shard `{file}` but the index puts it in `{f}`",
                            t.name
                        )))
                    }
                    None => {
                        return Err(bad(format!(
                            "tensor `{}` of shard `{file}` is not in the index",
                            t.name
                        )))
                    }
                }
            }
            shards.push(shard);
        }
        Ok(Checkpoint {
            path: given.to_path_buf(),
            index: Some(Index {
                path: index_path.to_path_buf(),
                metadata,
            }),
            shards,
        })
    }

    /// Every tensor with the index of its shard, in shard then file order.
    pub fn tensors(&self) -> impl Iterator<Item = (usize, &TensorEntry)> {
        self.shards
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.tensors.iter().map(move |t| (i, t)))
    }

    /// Total size of the checkpoint's safetensors files in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.file_len).sum()
    }

    /// Whether the checkpoint came with an index (and so gives sharded output).
    pub fn is_sharded(&self) -> bool {
        self.index.is_some()
    }

    /// Every input file (shards and index), for checks that an output never overwrites one.
    pub fn input_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.shards.iter().map(|s| s.path.clone()).collect();
        v.extend(self.index.iter().map(|i| i.path.clone()));
        v
    }
}

/// A shard name from an index must name a file directly inside the checkpoint directory.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|source| CheckpointError::Io {
        path: dir.to_path_buf(),
        what: "cannot list",
        source,
    })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

/// Whether a dtype can be quantized (F32, F16, BF16).
pub fn is_quantizable(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

/// Bytes per element of a byte-sized dtype (1 for the sub-byte ones, used only for alignment).
pub fn dtype_align(dtype: Dtype) -> usize {
    (dtype.bitsize() / 8).max(1)
}
