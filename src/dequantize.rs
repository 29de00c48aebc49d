//! The `dequantize` operation: a packed checkpoint back to plain tensors with
//! their original names, shapes and (by default) dtypes.

use std::path::Path;

use rayon::prelude::*;
use safetensors::Dtype;
use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::decode::{decode_rows, read_items, Item, Quantized};
use crate::engine::{from_f32, CHUNK_ELEMS};
use crate::format::{layout, OutTensor, METADATA_KEY};
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

/// Restores `input` (a packed checkpoint) into `output`.
pub fn dequantize(
    input: &Path,
    output: &Path,
    opts: &DequantizeOptions,
) -> Result<DequantizeSummary> {
    let ckpt = Checkpoint::open(input)?;
    if !ckpt
        .shards
        .iter()
        .any(|s| s.metadata.contains_key(METADATA_KEY))
    {
        return Err(Error::Other(format!(
            "{}: not a shrinkray packed file (no `{METADATA_KEY}` metadata)",
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
        let p = write_index(index_path, &index.metadata, &weight_map, data)?;
        summary.outputs.push(p.display().to_string());
    }
    created.keep();
    Ok(summary)
}

/// Decodes one quantized tensor into `dtype` bytes, in parallel over row chunks.
fn restore(ckpt: &Checkpoint, q: &Quantized, dtype: Dtype) -> Result<Vec<u8>> {
    let shard = &ckpt.shards[q.shard];
    let (codes, scales) = (shard.data(q.codes)?, shard.data(q.scales)?);
    let mins = match q.mins {
        Some(m) => shard.data(m)?,
        None => std::borrow::Cow::Borrowed(&[][..]),
    };
    let (p, s, m) = (
        q.fmt.code_bytes_per_row(q.k),
        q.fmt.scale_bytes_per_row(q.k),
        q.fmt.min_bytes_per_row(q.k),
    );
    let esize = dtype.bitsize() / 8;
    let rpc = (CHUNK_ELEMS / q.k.max(1)).max(1);
    let mut out = vec![0u8; q.rows * q.k * esize];
    out.par_chunks_mut((rpc * q.k * esize).max(1))
        .enumerate()
        .for_each_init(Vec::new, |buf: &mut Vec<f32>, (i, chunk)| {
            let r0 = i * rpc;
            let r1 = r0 + chunk.len() / (q.k * esize);
            buf.resize((r1 - r0) * q.k, 0.0);
            decode_rows(
                &q.fmt,
                q.k,
                &codes[r0 * p..r1 * p],
                &scales[r0 * s..r1 * s],
                &mins[r0 * m..r1 * m],
                buf,
            );
            from_f32(dtype, buf, chunk);
        });
    Ok(out)
}
