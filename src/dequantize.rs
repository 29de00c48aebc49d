//! The `dequantize` operation: a packed checkpoint back to plain tensors with
//! their original names, shapes and (by default) dtypes; or a GGUF file of
//! q8_0/q4_0/q4_1 blocks back to a safetensors file.

use std::path::Path;

use rayon::prelude::*;
use safetensors::Dtype;
use serde::Serialize;
use shrinkray_kernels::{ggml, mlx};

use crate::checkpoint::{map_file, Checkpoint};
use crate::decode::{read_items, Item, MlxQuantized, Quantized};
use crate::engine::{from_f32, CHUNK_ELEMS};
use crate::format::{layout, OutTensor, METADATA_KEY};
use crate::gguf;
use crate::plan::MLX_METADATA_KEY;
use crate::writer::{resolve_outputs, write_index, CreatedDir, PendingFile};
use crate::{progress_bar, with_threads, Error, Result};

/// Options of a dequantize run.
#[derive(Clone, Debug, Default)]
pub struct DequantizeOptions {
    /// Output dtype of restored tensors (their original dtype when `None`).
    pub dtype: Option<Dtype>,
    /// Worker threads.
    pub threads: Option<usize>,
    /// Replace existing output files.
    pub force: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a dequantize run did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DequantizeSummary {
    /// Files written.
    pub outputs: Vec<String>,
    /// Tensors decoded.
    pub tensors_restored: usize,
    /// Tensors copied.
    pub tensors_copied: usize,
    /// Bytes written.
    pub bytes_written: u64,
}

/// Restores `input` (a packed checkpoint, or a GGUF file) into `output`.
pub fn dequantize(
    input: &Path,
    output: &Path,
    opts: &DequantizeOptions,
) -> Result<DequantizeSummary> {
    if input.is_file() {
        let map = map_file(input)?;
        if gguf::is_gguf(&map) {
            return dequantize_gguf(input, &map, output, opts);
        }
    }
    let ckpt = Checkpoint::open(input)?;
    if !ckpt
        .shards
        .iter()
        .any(|s| s.metadata.contains_key(METADATA_KEY) || s.metadata.contains_key(MLX_METADATA_KEY))
    {
        return Err(Error::Other(format!(
            "{}: not a shrinkray packed file (no `{METADATA_KEY}` or `{MLX_METADATA_KEY}` metadata)",
            input.display()
        )));
    }
    if let Some(d) = opts.dtype {
        if !matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(Error::Other(format!(
                "--dtype {d}: expected f32, f16 or bf16"
            )));
        }
    }
    let items = read_items(&ckpt)?;
    let names: Vec<String> = ckpt.shards.iter().map(|s| s.file_name.clone()).collect();
    let paths = resolve_outputs(&ckpt, &names, output, opts.force, false, false)?;
    let created = CreatedDir::new(paths.created.clone());

    // Lay out every output file before writing any.
    let mut per_shard: Vec<Vec<(&Item, OutTensor)>> = vec![Vec::new(); ckpt.shards.len()];
    for item in &items {
        let (shard, out) = match item {
            Item::Quantized(q) => {
                let dtype = opts.dtype.unwrap_or(q.dtype);
                let n = q.rows * q.k;
                (
                    q.shard,
                    OutTensor {
                        name: q.name.clone(),
                        dtype,
                        shape: q.shape.clone(),
                        nbytes: (n * dtype.bitsize() / 8) as u64,
                    },
                )
            }
            Item::Mlx(q) => {
                let dtype = opts.dtype.unwrap_or(q.dtype);
                (
                    q.shard,
                    OutTensor {
                        name: q.name.clone(),
                        dtype,
                        shape: q.shape.clone(),
                        nbytes: (q.rows * q.k * dtype.bitsize() / 8) as u64,
                    },
                )
            }
            Item::Kept { shard, entry } => (
                *shard,
                OutTensor {
                    name: entry.name.clone(),
                    dtype: entry.dtype,
                    shape: entry.shape.clone(),
                    nbytes: entry.nbytes() as u64,
                },
            ),
        };
        per_shard[shard].push((item, out));
    }
    let mut layouts = Vec::new();
    for (si, list) in per_shard.iter().enumerate() {
        let mut md = ckpt.shards[si].metadata.clone();
        md.remove(METADATA_KEY);
        if md.remove(MLX_METADATA_KEY).is_some() && md.get("format").is_some_and(|f| f == "mlx") {
            md.remove("format");
        }
        let outs: Vec<OutTensor> = list.iter().map(|(_, o)| o.clone()).collect();
        layouts.push(
            layout(&outs, &md)
                .map_err(|r| Error::Other(format!("{}: {r}", ckpt.shards[si].path.display())))?,
        );
    }
    let files = layouts
        .iter()
        .zip(&paths.files)
        .map(|(l, p)| PendingFile::create(p, l.total))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let total: u64 = per_shard.iter().flatten().map(|(_, o)| o.nbytes).sum();
    let pb = progress_bar(total, opts.progress, "restore");
    let mut summary = DequantizeSummary {
        outputs: Vec::new(),
        tensors_restored: 0,
        tensors_copied: 0,
        bytes_written: 0,
    };
    with_threads(opts.threads, || -> Result<()> {
        for (si, list) in per_shard.iter().enumerate() {
            let file = &files[si];
            file.write_at(&layouts[si].header, 0)?;
            for (i, (item, out)) in list.iter().enumerate() {
                crate::interrupt::check()?;
                let at = layouts[si].offsets[i];
                match item {
                    Item::Kept { entry, .. } => {
                        file.write_at(&ckpt.shards[si].data(entry)?, at)?;
                        summary.tensors_copied += 1;
                    }
                    Item::Quantized(q) => {
                        let bytes = restore(&ckpt, q, out.dtype)?;
                        file.write_at(&bytes, at)?;
                        summary.tensors_restored += 1;
                    }
                    Item::Mlx(q) => {
                        let bytes = restore_mlx(&ckpt, q, out.dtype)?;
                        file.write_at(&bytes, at)?;
                        summary.tensors_restored += 1;
                    }
                }
                pb.inc(out.nbytes);
            }
        }
        Ok(())
    })??;
    pb.finish_and_clear();
    crate::interrupt::check()?;
    for f in files {
        let p = f.finish()?;
        summary.bytes_written += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        summary.outputs.push(p.display().to_string());
    }
    if let (Some(index_path), Some(index)) = (&paths.index, &ckpt.index) {
        let mut weight_map = std::collections::BTreeMap::new();
        for (si, list) in per_shard.iter().enumerate() {
            for (_, o) in list {
                weight_map.insert(o.name.clone(), names[si].clone());
            }
        }
        let data: u64 = layouts
            .iter()
            .map(|l| l.total - l.header.len() as u64)
            .sum();
        let p = write_index(index_path, &index.metadata, &weight_map, data, true)?;
        summary.outputs.push(p.display().to_string());
    }
    created.keep();
    Ok(summary)
}

/// Restores a GGUF file into one safetensors file: q8_0/q4_0/q4_1 tensors
/// decoded with ggml's formulas into `--dtype` (F32 by default: GGUF does not
/// record the original dtype), plain tensors copied, string key-values kept
/// as `__metadata__`. Other ggml block types are refused, naming the tensor.
fn dequantize_gguf(
    input: &Path,
    map: &[u8],
    output: &Path,
    opts: &DequantizeOptions,
) -> Result<DequantizeSummary> {
    let bad = |e: String| Error::Other(format!("{}: {e}", input.display()));
    let h = gguf::read_header(map).map_err(|e| bad(format!("not a valid GGUF file: {e}")))?;
    let dtype = opts.dtype.unwrap_or(Dtype::F32);
    let mut outs = Vec::with_capacity(h.tensors.len());
    for t in &h.tensors {
        let (dtype, nbytes) = match t.ty {
            gguf::TensorType::Plain(d) => (d, t.nbytes),
            gguf::TensorType::Block(_) => (dtype, t.numel() * (dtype.bitsize() / 8) as u64),
            gguf::TensorType::Other(..) => {
                return Err(bad(format!(
                    "tensor `{}` is {}, which shrinkray does not decode (q8_0, q4_0 and q4_1 only)",
                    t.name,
                    t.ty.name()
                )))
            }
        };
        outs.push(OutTensor {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
            nbytes,
        });
    }
    let md: std::collections::BTreeMap<String, String> = h
        .kvs
        .iter()
        .filter_map(|(k, v)| match v {
            gguf::Value::Str(s) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect();
    let l = layout(&outs, &md).map_err(bad)?;
    let file = if output.is_dir() {
        let stem = input.file_stem().map(|s| s.to_string_lossy().into_owned());
        output.join(format!(
            "{}.safetensors",
            stem.unwrap_or_else(|| "model".into())
        ))
    } else {
        output.to_path_buf()
    };
    if file.exists() && !opts.force {
        return Err(Error::Other(format!(
            "{}: already exists (use --force to replace it)",
            file.display()
        )));
    }
    if file.canonicalize().ok() == input.canonicalize().ok() {
        return Err(Error::Other(format!(
            "{}: this is the input file: shrinkray never writes over its input",
            file.display()
        )));
    }
    let pending = PendingFile::create(&file, l.total)?;
    pending.write_at(&l.header, 0)?;
    let pb = progress_bar(l.total, opts.progress, "restore");
    let mut summary = DequantizeSummary {
        outputs: Vec::new(),
        tensors_restored: 0,
        tensors_copied: 0,
        bytes_written: 0,
    };
    with_threads(opts.threads, || -> Result<()> {
        for ((t, out), &at) in h.tensors.iter().zip(&outs).zip(&l.offsets) {
            crate::interrupt::check()?;
            let stored = &map[t.start as usize..(t.start + t.nbytes) as usize];
            match t.ty {
                gguf::TensorType::Block(ty) => {
                    let k = t.shape.last().copied().unwrap_or(1);
                    let esize = out.dtype.bitsize() / 8;
                    let rpc = (CHUNK_ELEMS / k.max(1)).max(1);
                    let mut bytes = vec![0u8; out.nbytes as usize];
                    bytes
                        .par_chunks_mut((rpc * k * esize).max(1))
                        .zip(stored.par_chunks((rpc * ty.row_bytes(k)).max(1)))
                        .for_each_init(Vec::new, |buf: &mut Vec<f32>, (chunk, blocks)| {
                            buf.resize(chunk.len() / esize, 0.0);
                            ggml::dequantize_blocks(ty, blocks, buf);
                            from_f32(out.dtype, buf, chunk);
                        });
                    pending.write_at(&bytes, at)?;
                    summary.tensors_restored += 1;
                }
                _ => {
                    pending.write_at(stored, at)?;
                    summary.tensors_copied += 1;
                }
            }
            pb.inc(out.nbytes);
        }
        Ok(())
    })??;
    pb.finish_and_clear();
    let p = pending.finish()?;
    summary.bytes_written = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
    summary.outputs.push(p.display().to_string());
    Ok(summary)
}

/// Decodes one MLX tensor into `dtype` bytes, in parallel over row chunks.
fn restore_mlx(ckpt: &Checkpoint, q: &MlxQuantized, dtype: Dtype) -> Result<Vec<u8>> {
    let shard = &ckpt.shards[q.shard];
    let (codes, scales, biases) = (
        shard.data(q.codes)?,
        shard.data(q.scales)?,
        shard.data(q.biases)?,
    );
    let (cb, sb) = (
        q.fmt.code_bytes_per_row(q.k),
        q.fmt.scale_bytes_per_row(q.k),
    );
    let esize = dtype.bitsize() / 8;
    let rpc = (CHUNK_ELEMS / q.k.max(1)).max(1);
    let mut out = vec![0u8; q.rows * q.k * esize];
    out.par_chunks_mut((rpc * q.k * esize).max(1))
        .enumerate()
        .for_each_init(Vec::new, |buf: &mut Vec<f32>, (i, chunk)| {
            let (r0, r1) = (i * rpc, i * rpc + chunk.len() / (q.k * esize));
            buf.resize((r1 - r0) * q.k, 0.0);
            mlx::dequantize_rows(
                &q.fmt,
                q.k,
                &codes[r0 * cb..r1 * cb],
                &scales[r0 * sb..r1 * sb],
                &biases[r0 * sb..r1 * sb],
                buf,
            );
            from_f32(dtype, buf, chunk);
        });
    Ok(out)
}

/// Decodes one quantized tensor into `dtype` bytes, in parallel over row chunks.
fn restore(ckpt: &Checkpoint, q: &Quantized, dtype: Dtype) -> Result<Vec<u8>> {
    let stored = q.read(ckpt)?;
    let esize = dtype.bitsize() / 8;
    let rpc = (CHUNK_ELEMS / q.k.max(1)).max(1);
    let mut out = vec![0u8; q.rows * q.k * esize];
    out.par_chunks_mut((rpc * q.k * esize).max(1))
        .enumerate()
        .for_each_init(Vec::new, |buf: &mut Vec<f32>, (i, chunk)| {
            let r0 = i * rpc;
            let r1 = r0 + chunk.len() / (q.k * esize);
            buf.resize((r1 - r0) * q.k, 0.0);
            stored.decode(r0, r1, buf);
            from_f32(dtype, buf, chunk);
        });
    Ok(out)
}
