//! The `verify` operation: re-reads an original checkpoint and its packed
//! version, decodes every quantized tensor independently of the writer,
//! recomputes the expected sizes from the format rules, and measures the
//! reconstruction error against the original.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;
use shrinkray_kernels::ggml::{self, GgmlType};
use shrinkray_kernels::mlx::{self, MlxFormat};
use shrinkray_kernels::ErrorStats;

use crate::checkpoint::{map_file, Checkpoint};
use crate::decode::{read_items, Item, Quantized};
use crate::engine::{to_f32, CHUNK_ELEMS};
use crate::format::METADATA_KEY;
use crate::gguf;
use crate::plan::MLX_METADATA_KEY;
use crate::report::{shape_str, worst_first, ErrorSummary, PieceBytes};
use crate::units::{bytes, count, db, sci, Table};
use crate::{with_threads, Error, Result};

/// Thresholds that make `verify` fail.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// Worker threads.
    pub threads: Option<usize>,
    /// Fail when any tensor's relative error is above this.
    pub max_rel_error: Option<f64>,
    /// Fail when the actual ratio (input file bytes / packed file bytes) is below this.
    pub min_ratio: Option<f64>,
}

/// One tensor as verified.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifyRow {
    /// Tensor name.
    pub name: String,
    /// Original dtype.
    pub dtype: String,
    /// Original shape.
    pub shape: Vec<usize>,
    /// Elements.
    pub params: u64,
    /// Scheme name, or `keep`.
    pub stored_as: String,
    /// Group size (quantized tensors).
    pub group_size: Option<usize>,
    /// Original data bytes.
    pub input_bytes: u64,
    /// Stored bytes.
    pub stored_bytes: u64,
    /// Stored bits per parameter.
    pub bits_per_weight: f64,
    /// Reconstruction error (quantized tensors).
    pub error: Option<ErrorSummary>,
    /// Stored bytes by kind.
    pub bytes: PieceBytes,
    /// Code bits the naive figure counts for this tensor (kept tensors: the most used scheme's).
    pub naive_bits: u32,
}

/// The result of `verify`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifyReport {
    /// The original checkpoint.
    pub original: String,
    /// The packed checkpoint.
    pub packed: String,
    /// Per tensor, in original order.
    pub tensors: Vec<VerifyRow>,
    /// Parameters.
    pub params: u64,
    /// Parameters of quantized tensors.
    pub params_quantized: u64,
    /// Original file bytes.
    pub input_bytes: u64,
    /// Packed size recomputed from the format rules (tensors + headers).
    pub output_bytes_expected: u64,
    /// Packed file bytes on disk.
    pub output_bytes_actual: u64,
    /// input bytes / actual bytes.
    pub ratio_actual: f64,
    /// Packed bits per parameter.
    pub bits_per_weight: f64,
    /// Error over all quantized parameters.
    pub error: Option<ErrorSummary>,
    /// Every check that failed.
    pub failures: Vec<String>,
    /// Whether every check passed.
    pub passed: bool,
}

/// Verifies `packed` (shrinkray's packed safetensors, or a GGUF file) against `original`.
pub fn verify(original: &Path, packed: &Path, opts: &VerifyOptions) -> Result<VerifyReport> {
    let orig = Checkpoint::open(original)?;
    if packed.is_file() {
        let map = map_file(packed)?;
        if gguf::is_gguf(&map) {
            return verify_gguf(original, &orig, packed, &map, opts);
        }
    }
    let pck = Checkpoint::open(packed)?;
    if !pck
        .shards
        .iter()
        .any(|s| s.metadata.contains_key(METADATA_KEY) || s.metadata.contains_key(MLX_METADATA_KEY))
    {
        return Err(Error::Other(format!(
            "{}: not a shrinkray packed file (no `{METADATA_KEY}` or `{MLX_METADATA_KEY}` metadata)",
            packed.display()
        )));
    }
    let items = read_items(&pck)?;
    let mut by_name: HashMap<&str, &Item> = items.iter().map(|i| (i.name(), i)).collect();
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    let mut all = ErrorStats::default();
    let mut expected: u64 = pck.shards.iter().map(|s| s.header_len).sum();
    let (mut params, mut params_q) = (0u64, 0u64);
    for (si, t) in orig.tensors() {
        params += t.numel() as u64;
        let Some(item) = by_name.remove(t.name.as_str()) else {
            failures.push(format!(
                "tensor `{}` is missing from the packed checkpoint",
                t.name
            ));
            continue;
        };
        let mut row = VerifyRow {
            name: t.name.clone(),
            dtype: t.dtype.to_string(),
            shape: t.shape.clone(),
            params: t.numel() as u64,
            stored_as: "keep".into(),
            group_size: None,
            input_bytes: t.nbytes() as u64,
            stored_bytes: 0,
            bits_per_weight: 0.0,
            error: None,
            bytes: PieceBytes::default(),
            naive_bits: 0,
        };
        match item {
            Item::Kept { shard, entry } => {
                row.stored_bytes = entry.nbytes() as u64;
                row.bytes.kept = row.stored_bytes;
                expected += t.nbytes() as u64;
                if entry.dtype != t.dtype || entry.shape != t.shape {
                    failures.push(format!("kept tensor `{}` changed dtype or shape", t.name));
                } else if pck.shards[*shard].data(entry)? != orig.shards[si].data(t)? {
                    failures.push(format!(
                        "kept tensor `{}` differs from the original bytes",
                        t.name
                    ));
                }
            }
            Item::Quantized(q) => {
                params_q += t.numel() as u64;
                row.stored_as = match q.fmt.dq {
                    None => q.fmt.scheme.name().into(),
                    Some(d) => format!("{} dq{}/{}", q.fmt.scheme, d.bits, d.groups),
                };
                row.group_size = Some(q.fmt.group);
                row.stored_bytes = q.stored_bytes();
                row.naive_bits = q.fmt.scheme.bits();
                row.bytes.codes = q.codes.nbytes() as u64;
                let n =
                    |t: Option<&crate::checkpoint::TensorEntry>| t.map_or(0, |t| t.nbytes() as u64);
                row.bytes.scales = q.scales.nbytes() as u64 + n(q.super_scales);
                row.bytes.mins = n(q.mins) + n(q.super_mins);
                expected += (q.rows * q.fmt.bytes_per_row(q.k)) as u64;
                if q.dtype != t.dtype || q.shape != t.shape {
                    failures.push(format!(
                        "tensor `{}`: packed metadata says {} {:?}, the original is {} {:?}",
                        t.name, q.dtype, q.shape, t.dtype, t.shape
                    ));
                } else {
                    let st = with_threads(opts.threads, || {
                        measure(&pck, q, &orig.shards[si].data(t)?)
                    })??;
                    row.error = Some(record(&st, &t.name, opts, &mut all, &mut failures));
                }
            }
            Item::Mlx(q) => {
                params_q += t.numel() as u64;
                row.stored_as = format!("mlx-int{}", q.fmt.bits);
                row.group_size = Some(q.fmt.group);
                row.stored_bytes = q.stored_bytes();
                row.naive_bits = q.fmt.bits;
                row.bytes.codes = q.codes.nbytes() as u64;
                row.bytes.scales = q.scales.nbytes() as u64;
                row.bytes.mins = q.biases.nbytes() as u64;
                expected += q.stored_bytes();
                if q.dtype != t.dtype || q.shape != t.shape {
                    failures.push(format!(
                        "tensor `{}`: the MLX output says {} {:?}, the original is {} {:?}",
                        t.name, q.dtype, q.shape, t.dtype, t.shape
                    ));
                } else {
                    let sh = &pck.shards[q.shard];
                    let (c, sc, b) = (sh.data(q.codes)?, sh.data(q.scales)?, sh.data(q.biases)?);
                    let x = orig.shards[si].data(t)?;
                    let st = with_threads(opts.threads, || {
                        measure_mlx(&q.fmt, q.k, t.dtype, &c, &sc, &b, &x)
                    })?;
                    row.error = Some(record(&st, &t.name, opts, &mut all, &mut failures));
                }
            }
        }
        if row.params > 0 {
            row.bits_per_weight = row.stored_bytes as f64 * 8.0 / row.params as f64;
        }
        rows.push(row);
    }
    for name in by_name.keys() {
        failures.push(format!(
            "tensor `{name}` of the packed checkpoint is not in the original"
        ));
    }
    let tally = Tally {
        rows,
        all,
        params,
        params_q,
        expected,
        actual: pck.file_bytes(),
        failures,
    };
    Ok(finish(original, packed, &orig, tally, opts))
}

/// What a verification found, before the totals.
struct Tally {
    rows: Vec<VerifyRow>,
    all: ErrorStats,
    params: u64,
    params_q: u64,
    expected: u64,
    actual: u64,
    failures: Vec<String>,
}

/// Adds a tensor's statistics to the total and fails it when its relative
/// error is above `--max-rel-error`; returns its summary for the row.
fn record(
    st: &ErrorStats,
    name: &str,
    opts: &VerifyOptions,
    all: &mut ErrorStats,
    failures: &mut Vec<String>,
) -> ErrorSummary {
    all.merge(st, 0);
    let e = ErrorSummary::from(st);
    if let Some(max) = opts.max_rel_error {
        if e.rel_error > max {
            failures.push(format!(
                "tensor `{name}`: relative error {:.4e} is above --max-rel-error {max}",
                e.rel_error
            ));
        }
    }
    e
}

/// Naive bits of kept tensors, size and ratio checks, and the report.
fn finish(
    original: &Path,
    packed: &Path,
    orig: &Checkpoint,
    tally: Tally,
    opts: &VerifyOptions,
) -> VerifyReport {
    let Tally {
        mut rows,
        all,
        params,
        params_q,
        expected,
        actual,
        mut failures,
    } = tally;
    // Kept tensors count at the code width of the scheme that covers the most parameters.
    let mut by_bits = std::collections::BTreeMap::<u32, u64>::new();
    for r in rows.iter().filter(|r| r.naive_bits > 0) {
        *by_bits.entry(r.naive_bits).or_default() += r.params;
    }
    let default_bits = by_bits
        .iter()
        .max_by_key(|(_, p)| **p)
        .map_or(16, |(b, _)| *b);
    for r in rows.iter_mut().filter(|r| r.naive_bits == 0) {
        r.naive_bits = default_bits;
    }
    if actual != expected {
        failures.push(format!(
            "packed files are {actual} bytes, the format rules give {expected}"
        ));
    }
    let input_bytes = orig.file_bytes();
    let ratio = input_bytes as f64 / actual.max(1) as f64;
    if let Some(min) = opts.min_ratio {
        if ratio < min {
            failures.push(format!("ratio {ratio:.3}x is below --min-ratio {min}"));
        }
    }
    failures.sort();
    VerifyReport {
        original: original.display().to_string(),
        packed: packed.display().to_string(),
        tensors: rows,
        params,
        params_quantized: params_q,
        input_bytes,
        output_bytes_expected: expected,
        output_bytes_actual: actual,
        ratio_actual: ratio,
        bits_per_weight: actual as f64 * 8.0 / params.max(1) as f64,
        error: (params_q > 0).then(|| ErrorSummary::from(&all)),
        passed: failures.is_empty(),
        failures,
    }
}

/// Verifies a GGUF file written by `quantize --format gguf`: every tensor of
/// the original is there under its name and shape, blocks are decoded with
/// ggml's formulas, plain tensors are byte-identical, and the file size is
/// what the layout rules give.
fn verify_gguf(
    original: &Path,
    orig: &Checkpoint,
    packed: &Path,
    map: &[u8],
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let h = gguf::read_header(map)
        .map_err(|e| Error::Other(format!("{}: not a valid GGUF file: {e}", packed.display())))?;
    let mut by_name: HashMap<&str, &gguf::Tensor> =
        h.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    let mut all = ErrorStats::default();
    let mut expected = h.data_start;
    let (mut params, mut params_q) = (0u64, 0u64);
    for (si, t) in orig.tensors() {
        params += t.numel() as u64;
        let Some(g) = by_name.remove(t.name.as_str()) else {
            failures.push(format!("tensor `{}` is missing from the GGUF file", t.name));
            continue;
        };
        expected += g.nbytes.next_multiple_of(h.alignment);
        let mut row = VerifyRow {
            name: t.name.clone(),
            dtype: t.dtype.to_string(),
            shape: t.shape.clone(),
            params: t.numel() as u64,
            stored_as: "keep".into(),
            group_size: None,
            input_bytes: t.nbytes() as u64,
            stored_bytes: g.nbytes,
            bits_per_weight: 0.0,
            error: None,
            bytes: PieceBytes::default(),
            naive_bits: 0,
        };
        // ggml has no 0-D tensors: a scalar is written as one element.
        let shape_ok = g.shape == t.shape || (t.shape.is_empty() && g.shape == [1]);
        let stored = &map[g.start as usize..(g.start + g.nbytes) as usize];
        match g.ty {
            gguf::TensorType::Block(ty) if shape_ok => {
                params_q += t.numel() as u64;
                row.stored_as = ty.name().into();
                row.group_size = Some(GgmlType::BLOCK);
                row.naive_bits = ty.bits();
                let blocks = t.numel() as u64 / GgmlType::BLOCK as u64;
                row.bytes.codes = t.numel() as u64 * ty.bits() as u64 / 8;
                row.bytes.scales = 2 * blocks;
                row.bytes.mins = if ty == GgmlType::Q4_1 { 2 * blocks } else { 0 };
                let k = *t.shape.last().expect("blocks have rows");
                let x = orig.shards[si].data(t)?;
                let st = with_threads(opts.threads, || measure_blocks(ty, k, t.dtype, stored, &x))?;
                row.error = Some(record(&st, &t.name, opts, &mut all, &mut failures));
            }
            gguf::TensorType::Plain(d) if shape_ok && d == t.dtype => {
                row.bytes.kept = g.nbytes;
                if stored != &orig.shards[si].data(t)?[..] {
                    failures.push(format!(
                        "kept tensor `{}` differs from the original bytes",
                        t.name
                    ));
                }
            }
            other => failures.push(format!(
                "tensor `{}`: the GGUF file holds {} {:?}, the original is {} {:?}",
                t.name,
                other.name(),
                g.shape,
                t.dtype,
                t.shape
            )),
        }
        if row.params > 0 {
            row.bits_per_weight = row.stored_bytes as f64 * 8.0 / row.params as f64;
        }
        rows.push(row);
    }
    for name in by_name.keys() {
        failures.push(format!(
            "tensor `{name}` of the GGUF file is not in the original"
        ));
    }
    let tally = Tally {
        rows,
        all,
        params,
        params_q,
        expected,
        actual: map.len() as u64,
        failures,
    };
    Ok(finish(original, packed, orig, tally, opts))
}

/// Decodes MLX rows of `k` elements and compares them with the original bytes.
fn measure_mlx(
    f: &MlxFormat,
    k: usize,
    dtype: safetensors::Dtype,
    codes: &[u8],
    scales: &[u8],
    biases: &[u8],
    original: &[u8],
) -> ErrorStats {
    let esize = dtype.bitsize() / 8;
    let rpc = (CHUNK_ELEMS / k.max(1)).max(1);
    let (cb, sb) = (f.code_bytes_per_row(k), f.scale_bytes_per_row(k));
    original
        .par_chunks((rpc * k * esize).max(1))
        .zip(codes.par_chunks((rpc * cb).max(1)))
        .zip(scales.par_chunks((rpc * sb).max(1)))
        .zip(biases.par_chunks((rpc * sb).max(1)))
        .map_init(
            || (Vec::new(), Vec::new()),
            |(xbuf, dbuf): &mut (Vec<f32>, Vec<f32>), (((src, c), s), b)| {
                let x = to_f32(dtype, src, xbuf);
                dbuf.resize(x.len(), 0.0);
                mlx::dequantize_rows(f, k, c, s, b, dbuf);
                compare(x, dbuf)
            },
        )
        .reduce(ErrorStats::default, |mut a, b| {
            a.merge(&b, 0);
            a
        })
}

/// Decodes GGUF blocks of rows of `k` elements and compares them with the original bytes.
fn measure_blocks(
    ty: GgmlType,
    k: usize,
    dtype: safetensors::Dtype,
    blocks: &[u8],
    original: &[u8],
) -> ErrorStats {
    let esize = dtype.bitsize() / 8;
    let rpc = (CHUNK_ELEMS / k.max(1)).max(1);
    let row_bytes = ty.row_bytes(k);
    original
        .par_chunks((rpc * k * esize).max(1))
        .zip(blocks.par_chunks((rpc * row_bytes).max(1)))
        .map_init(
            || (Vec::new(), Vec::new()),
            |(xbuf, dbuf): &mut (Vec<f32>, Vec<f32>), (src, b)| {
                let x = to_f32(dtype, src, xbuf);
                dbuf.resize(x.len(), 0.0);
                ggml::dequantize_blocks(ty, b, dbuf);
                compare(x, dbuf)
            },
        )
        .reduce(ErrorStats::default, |mut a, b| {
            a.merge(&b, 0);
            a
        })
}

/// Decodes `q` and compares it with the original bytes, in parallel over row chunks.
fn measure(pck: &Checkpoint, q: &Quantized, original: &[u8]) -> Result<ErrorStats> {
    let stored = q.read(pck)?;
    let esize = q.dtype.bitsize() / 8;
    let rpc = (CHUNK_ELEMS / q.k.max(1)).max(1);
    Ok(original
        .par_chunks((rpc * q.k * esize).max(1))
        .enumerate()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(xbuf, dbuf): &mut (Vec<f32>, Vec<f32>), (i, src)| {
                let r0 = i * rpc;
                let r1 = r0 + src.len() / (q.k * esize);
                let x = to_f32(q.dtype, src, xbuf);
                dbuf.resize(x.len(), 0.0);
                stored.decode(r0, r1, dbuf);
                compare(x, dbuf)
            },
        )
        .reduce(ErrorStats::default, |mut a, b| {
            a.merge(&b, 0);
            a
        }))
}

/// Error statistics of decoded values `d` against the original `x` (NaN/Inf in `x` read as 0).
fn compare(x: &[f32], d: &[f32]) -> ErrorStats {
    let mut st = ErrorStats {
        count: x.len() as u64,
        ..Default::default()
    };
    for (&v, &d) in x.iter().zip(d) {
        let v = if v.is_finite() {
            v
        } else {
            st.nonfinite += 1;
            0.0
        };
        let e = (v - d) as f64;
        st.sum_sq_err += e * e;
        st.sum_sq += (v as f64) * (v as f64);
        st.max_abs_err = st.max_abs_err.max((v - d).abs());
    }
    st
}

impl VerifyReport {
    /// The human-readable report (at most `top` tensors, worst first when cut).
    pub fn render(&self, top: usize) -> String {
        let mut out = format!("verify {} against {}\n\n", self.packed, self.original);
        let errors: Vec<_> = self.tensors.iter().map(|r| r.error.as_ref()).collect();
        let (idx, cut) = worst_first(&errors, top);
        let mut t = Table::new(&[
            "tensor",
            "shape",
            "dtype",
            "stored as",
            "params",
            "stored",
            "bpw",
            "rel err",
            "SQNR dB",
            "max abs",
        ]);
        for &i in &idx {
            let r = &self.tensors[i];
            let e = r.error.as_ref();
            t.row(vec![
                r.name.clone(),
                shape_str(&r.shape),
                r.dtype.clone(),
                match r.group_size {
                    Some(g) => match r.stored_as.split_once(' ') {
                        Some((scheme, dq)) => format!("{scheme} g{g} {dq}"),
                        None => format!("{} g{g}", r.stored_as),
                    },
                    None => r.stored_as.clone(),
                },
                count(r.params),
                bytes(r.stored_bytes),
                format!("{:.2}", r.bits_per_weight),
                e.map_or("-".into(), |e| sci(e.rel_error)),
                e.map_or("-".into(), |e| db(e.sqnr_db.unwrap_or(f64::INFINITY))),
                e.map_or("-".into(), |e| sci(e.max_abs_error)),
            ]);
        }
        out.push_str(&t.render());
        if cut {
            out.push_str(&format!(
                "({} of {} tensors shown, worst first; --top N shows more)\n",
                idx.len(),
                self.tensors.len()
            ));
        }
        out.push_str(&format!(
            "\n{} params ({} quantized); original {} ({}), packed {} ({}), format rules give {}; ratio {:.2}x, {:.3} bpw\n",
            count(self.params),
            count(self.params_quantized),
            self.input_bytes,
            bytes(self.input_bytes),
            self.output_bytes_actual,
            bytes(self.output_bytes_actual),
            self.output_bytes_expected,
            self.ratio_actual,
            self.bits_per_weight
        ));
        if let Some(e) = &self.error {
            out.push_str(&format!(
                "error over all quantized parameters: {}\n",
                e.line()
            ));
        }
        if self.passed {
            out.push_str("PASS\n");
        } else {
            for f in &self.failures {
                out.push_str(&format!("FAIL: {f}\n"));
            }
        }
        out
    }
}
