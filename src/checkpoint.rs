//! Opening checkpoints: one `.safetensors` file, or a sharded Hugging Face
//! checkpoint described by `model.safetensors.index.json`.
//!
//! Every header (and the index) is validated before anything else happens;
//! tensors are then handed out as borrowed views into memory-mapped files.
//! Nothing here copies tensor data.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::SafeTensorError;
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

/// One memory-mapped safetensors file whose header has been validated.
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
    map: Mmap,
}

impl Shard {
    /// Maps and validates one safetensors file.
    pub fn open(path: &Path) -> Result<Shard> {
        let io = |what| {
            move |source| CheckpointError::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        let file = File::open(path).map_err(io("cannot open"))?;
        let meta = file.metadata().map_err(io("cannot stat"))?;
        if !meta.is_file() {
            return Err(CheckpointError::Header {
                path: path.to_path_buf(),
                reason: "not a regular file".into(),
            });
        }
        // SAFETY: the map is read-only and private to this process. The file
        // must not be truncated or rewritten while shrinkray runs (README,
        // "mmap hazards"); shrinkray itself never writes to an input path.
        let map = unsafe { Mmap::map(&file) }.map_err(io("cannot memory-map"))?;
        let (n, header) =
            SafeTensors::read_metadata(&map).map_err(|e| CheckpointError::Header {
                path: path.to_path_buf(),
                reason: explain(&e, map.len()),
            })?;
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
            file_len: map.len() as u64,
            header_len: data_start as u64,
            metadata,
            tensors,
            map,
        })
    }

    /// The bytes of a tensor of this shard.
    pub fn data(&self, t: &TensorEntry) -> &[u8] {
        &self.map[t.start..t.end]
    }

    /// The tensor called `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Turns a safetensors error into the rule it names.
fn explain(e: &SafeTensorError, file_len: usize) -> String {
    use SafeTensorError::*;
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
        let meta = std::fs::metadata(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            what: "cannot open",
            source,
        })?;
        if meta.is_dir() {
            let index = path.join(INDEX_FILE);
            if index.is_file() {
                return Self::open_index(path, &index);
            }
            let single = path.join(SINGLE_FILE);
            if single.is_file() {
                return Self::open_single(path, &single);
            }
            let found = safetensors_files(path)?;
            return match found.as_slice() {
                [only] => Self::open_single(path, only),
                _ => Err(CheckpointError::NotFound {
                    path: path.to_path_buf(),
                }),
            };
        }
        if path.extension().is_some_and(|e| e == "json") {
            Self::open_index(path, path)
        } else {
            Self::open_single(path, path)
        }
    }

    fn open_single(given: &Path, file: &Path) -> Result<Checkpoint> {
        Ok(Checkpoint {
            path: given.to_path_buf(),
            index: None,
            shards: vec![Shard::open(file)?],
        })
    }

    fn open_index(given: &Path, index_path: &Path) -> Result<Checkpoint> {
        let bad = |reason: String| CheckpointError::Index {
            path: index_path.to_path_buf(),
            reason,
        };
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
            let shard = Shard::open(&shard_path)?;
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
