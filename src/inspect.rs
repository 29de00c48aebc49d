//! The `inspect` operation: what a checkpoint (plain or packed) holds.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::checkpoint::{map_file, Checkpoint};
use crate::decode::{read_items, Item};
use crate::format::{PackedMeta, METADATA_KEY};
use crate::gguf;
use crate::plan::MLX_METADATA_KEY;
use crate::report::shape_str;
use crate::units::{bytes, count, Table};
use crate::Result;

/// One tensor as the model knows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InspectRow {
    /// Name.
    pub name: String,
    /// The file holding it.
    pub file: String,
    /// Dtype (the original one for a quantized tensor).
    pub dtype: String,
    /// Shape (the original one for a quantized tensor).
    pub shape: Vec<usize>,
    /// Elements.
    pub params: u64,
    /// `dtype` for plain tensors, or e.g. `int4-asym g64 F16`.
    pub stored_as: String,
    /// Bytes stored (codes + scales + mins for quantized tensors).
    pub bytes: u64,
    /// Stored bits per parameter.
    pub bits_per_weight: f64,
}

/// Totals for one stored form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Group {
    /// Tensors.
    pub tensors: usize,
    /// Parameters.
    pub params: u64,
    /// Bytes.
    pub bytes: u64,
}

/// What `inspect` found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Inspection {
    /// The path inspected.
    pub path: String,
    /// Whether it is a shrinkray packed checkpoint.
    pub packed: bool,
    /// GGUF version, for a GGUF file.
    pub gguf_version: Option<u32>,
    /// The shrinkray packed format version (the newest among the files; none for MLX or plain files).
    pub format_version: Option<u32>,
    /// Files and their sizes.
    pub files: BTreeMap<String, u64>,
    /// Total file bytes.
    pub file_bytes: u64,
    /// Parameters.
    pub params: u64,
    /// Per tensor, in file order.
    pub tensors: Vec<InspectRow>,
    /// Totals by stored form (dtype or scheme).
    pub by_stored_as: BTreeMap<String, Group>,
    /// `__metadata__` of the first file, less the `shrinkray` entry.
    pub metadata: BTreeMap<String, String>,
}

/// Inspects a checkpoint (safetensors, packed, or one GGUF file).
pub fn inspect(path: &Path) -> Result<Inspection> {
    if path.is_file() {
        let map = map_file(path)?;
        if gguf::is_gguf(&map) {
            return inspect_gguf(path, &map);
        }
    }
    let ckpt = Checkpoint::open(path)?;
    let packed = ckpt.shards.iter().any(|s| {
        s.metadata.contains_key(METADATA_KEY) || s.metadata.contains_key(MLX_METADATA_KEY)
    });
    let mut rows = Vec::new();
    for item in read_items(&ckpt)? {
        let row = match &item {
            Item::Quantized(q) => InspectRow {
                name: q.name.clone(),
                file: ckpt.shards[q.shard].file_name.clone(),
                dtype: q.dtype.to_string(),
                shape: q.shape.clone(),
                params: (q.rows * q.k) as u64,
                stored_as: crate::format::describe(&q.fmt),
                bytes: q.stored_bytes(),
                bits_per_weight: 0.0,
            },
            Item::Mlx(q) => InspectRow {
                name: q.name.clone(),
                file: ckpt.shards[q.shard].file_name.clone(),
                dtype: q.dtype.to_string(),
                shape: q.shape.clone(),
                params: (q.rows * q.k) as u64,
                stored_as: format!("mlx-int{} g{} {}", q.fmt.bits, q.fmt.group, q.fmt.dtype),
                bytes: q.stored_bytes(),
                bits_per_weight: 0.0,
            },
            Item::Kept { shard, entry } => InspectRow {
                name: entry.name.clone(),
                file: ckpt.shards[*shard].file_name.clone(),
                dtype: entry.dtype.to_string(),
                shape: entry.shape.clone(),
                params: entry.numel() as u64,
                stored_as: entry.dtype.to_string(),
                bytes: entry.nbytes() as u64,
                bits_per_weight: 0.0,
            },
        };
        rows.push(row);
    }
    let mut by = BTreeMap::<String, Group>::new();
    for r in &mut rows {
        if r.params > 0 {
            r.bits_per_weight = r.bytes as f64 * 8.0 / r.params as f64;
        }
        let g = by.entry(r.stored_as.clone()).or_default();
        g.tensors += 1;
        g.params += r.params;
        g.bytes += r.bytes;
    }
    let mut metadata = ckpt.shards[0].metadata.clone();
    metadata.remove(METADATA_KEY);
    metadata.remove(MLX_METADATA_KEY);
    Ok(Inspection {
        path: path.display().to_string(),
        packed,
        format_version: ckpt
            .shards
            .iter()
            .filter_map(|s| PackedMeta::from_metadata(&s.metadata)?.ok())
            .map(|m| m.format)
            .max(),
        gguf_version: None,
        files: ckpt
            .shards
            .iter()
            .map(|s| (s.file_name.clone(), s.file_len))
            .collect(),
        file_bytes: ckpt.file_bytes(),
        params: rows.iter().map(|r| r.params).sum(),
        tensors: rows,
        by_stored_as: by,
        metadata,
    })
}

/// Lists a GGUF file: its tensors with their ggml types, and its key-values.
fn inspect_gguf(path: &Path, map: &[u8]) -> Result<Inspection> {
    let h = gguf::read_header(map).map_err(|e| {
        crate::Error::Other(format!("{}: not a valid GGUF file: {e}", path.display()))
    })?;
    let file = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rows: Vec<InspectRow> = h
        .tensors
        .iter()
        .map(|t| {
            let params = t.numel();
            let dtype = match t.ty {
                gguf::TensorType::Plain(d) => d.to_string(),
                _ => "-".into(),
            };
            InspectRow {
                name: t.name.clone(),
                file: file.clone(),
                dtype,
                shape: t.shape.clone(),
                params,
                stored_as: t.ty.name(),
                bytes: t.nbytes,
                bits_per_weight: if params > 0 {
                    t.nbytes as f64 * 8.0 / params as f64
                } else {
                    0.0
                },
            }
        })
        .collect();
    let mut by = BTreeMap::<String, Group>::new();
    for r in &rows {
        let g = by.entry(r.stored_as.clone()).or_default();
        g.tensors += 1;
        g.params += r.params;
        g.bytes += r.bytes;
    }
    Ok(Inspection {
        path: path.display().to_string(),
        packed: false,
        gguf_version: Some(h.version),
        format_version: None,
        files: BTreeMap::from([(file, map.len() as u64)]),
        file_bytes: map.len() as u64,
        params: rows.iter().map(|r| r.params).sum(),
        tensors: rows,
        by_stored_as: by,
        metadata: h.kvs.iter().map(|(k, v)| (k.clone(), v.show())).collect(),
    })
}

impl Inspection {
    /// The human-readable listing.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}: {} file(s), {} ({} bytes){}\n\n",
            self.path,
            self.files.len(),
            bytes(self.file_bytes),
            self.file_bytes,
            match (self.packed, self.gguf_version) {
                (true, _) => match self.format_version {
                    Some(v) => format!(", shrinkray packed format {v}"),
                    None => ", MLX affine layout".to_string(),
                },
                (false, Some(v)) => format!(", GGUF version {v}"),
                _ => String::new(),
            }
        );
        let mut t = Table::new(&[
            "tensor",
            "shape",
            "dtype",
            "stored as",
            "params",
            "bytes",
            "bpw",
        ]);
        for r in &self.tensors {
            t.row(vec![
                r.name.clone(),
                shape_str(&r.shape),
                r.dtype.clone(),
                r.stored_as.clone(),
                count(r.params),
                bytes(r.bytes),
                format!("{:.2}", r.bits_per_weight),
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
        let mut g = Table::new(&["stored as", "tensors", "params", "bytes"]);
        for (k, v) in &self.by_stored_as {
            g.row(vec![
                k.clone(),
                v.tensors.to_string(),
                count(v.params),
                bytes(v.bytes),
            ]);
        }
        g.row(vec![
            "total".into(),
            self.tensors.len().to_string(),
            format!("{} ({})", count(self.params), self.params),
            bytes(self.tensors.iter().map(|r| r.bytes).sum()),
        ]);
        out.push_str(&g.render());
        if !self.metadata.is_empty() {
            out.push_str("\nmetadata:\n");
            for (k, v) in &self.metadata {
                let v = if v.chars().count() > 80 {
                    format!("{}…", v.chars().take(80).collect::<String>())
                } else {
                    v.clone()
                };
                out.push_str(&format!("  {k} = {v}\n"));
            }
        }
        out
    }
}
