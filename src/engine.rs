//! The engine: walks a plan tensor by tensor and fills the output files.
//!
//! Inside a tensor, rows are cut into chunks of about [`CHUNK_ELEMS`]
//! elements that rayon's workers quantize in parallel. Each chunk is turned
//! into f32 in a small per-worker buffer (F32 input that is aligned is used
//! in place, and so is aligned F16/BF16 input for the SIMD kernels, which
//! convert it in registers) and handed to the kernel, which writes codes,
//! scales and mins straight into the tensor's output buffers and returns the
//! chunk's error statistics. Each tensor's output is written while the next
//! tensor is quantized (two output workspaces take turns). Memory held: the
//! chunk buffers plus two tensors' output.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use indicatif::ProgressBar;
use rayon::prelude::*;
use safetensors::Dtype;
use serde::Serialize;
use shrinkray_kernels::ggml::{self, GgmlType};
use shrinkray_kernels::mlx::{self, MlxFormat};
use shrinkray_kernels::{
    quantize_rows, quantize_rows_by, ErrorStats, Isa, Method, QuantFormat, RowsOut, ScaleDtype, Src,
};

use crate::checkpoint::Checkpoint;
use crate::plan::{Action, Piece, PieceKind, Plan, TensorPlan};
use crate::writer::{PendingFile, WriteError};

/// Elements per work item: large enough to amortise scheduling, small enough for L2.
pub const CHUNK_ELEMS: usize = 1 << 16;

/// What to do with NaN and ±Inf in a tensor to be quantized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Nonfinite {
    /// Refuse the tensor (the default).
    #[default]
    Error,
    /// Quantize them as 0 and report how many there were.
    Zero,
}

/// Why the engine stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A tensor holds NaN or ±Inf.
    #[error("{file}: tensor `{tensor}`: {count} non-finite value(s) (NaN or Inf), the first at flat index {index}; use --nonfinite zero to quantize them as 0")]
    Nonfinite {
        /// The input file.
        file: String,
        /// The tensor.
        tensor: String,
        /// Flat index of the first one.
        index: u64,
        /// How many.
        count: u64,
    },
    /// Scales or mins do not fit even F32 (a group spans more than f32's range).
    #[error("{file}: tensor `{tensor}`: {groups} group(s) need a scale or min beyond the range of F32 (values near ±3.4e38); such a tensor cannot be quantized, keep it with --keep")]
    ScaleOverflow {
        /// The input file.
        file: String,
        /// The tensor.
        tensor: String,
        /// Groups concerned.
        groups: u64,
    },
    /// A GGUF block's F16 scale or min (or an MLX group's, in the weight's dtype) would be ±Inf.
    #[error("{file}: tensor `{tensor}`: {blocks} block(s) need a scale or min beyond F16's range (65504), and {ty} stores them in F16; keep the tensor with --keep, or write packed safetensors, which can store F32 scales")]
    FixedScaleOverflow {
        /// The input file.
        file: String,
        /// The tensor.
        tensor: String,
        /// Blocks concerned.
        blocks: u64,
        /// The block type.
        ty: &'static str,
    },
    /// Reading failed.
    #[error(transparent)]
    Read(#[from] crate::checkpoint::CheckpointError),
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A SIGINT or SIGTERM arrived.
    #[error(transparent)]
    Interrupted(#[from] crate::interrupt::Interrupted),
}

/// What the engine measured for one tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TensorOutcome {
    /// Error statistics (quantized tensors only).
    pub stats: Option<ErrorStats>,
    /// Bytes written for this tensor.
    pub written: u64,
    /// Round-to-nearest's statistics on it (`--compare rtn`, packed schemes).
    pub rtn: Option<ErrorStats>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    /// Every tensor was written; one outcome per tensor, in plan order, and where the time went.
    Done(Vec<TensorOutcome>, Phases),
    /// These tensors have groups whose scale or min overflows the scale dtype,
    /// or rounds to zero in it: their scales must be stored in F32, so the plan
    /// (and every offset after them) changes. The files written are incomplete.
    WidenScales(Vec<Widened>),
}

/// A tensor whose scales must be stored in F32, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Widened {
    /// The tensor.
    pub name: String,
    /// The scale dtype that was too narrow.
    pub from: ScaleDtype,
    /// Groups whose scale or min overflowed it.
    pub overflowed_groups: u64,
    /// Non-constant groups whose scale rounded to zero in it.
    pub zeroed_groups: u64,
}

impl Widened {
    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "{}: scales stored in F32, not {}: {} group(s) beyond its range, {} whose scale rounds to 0 in it",
            self.name,
            self.from.name(),
            self.overflowed_groups,
            self.zeroed_groups
        )
    }
}

/// Why a tensor's scales cannot stay in `fmt.scale_dtype`, if they cannot.
pub fn needs_wide_scales(fmt: &QuantFormat, stats: &ErrorStats) -> bool {
    fmt.scale_dtype != ScaleDtype::F32 && (stats.overflowed_groups > 0 || stats.zeroed_groups > 0)
}

/// Runs `plan` over `ckpt` with kernels `isa`, writing shard `i` of the plan into `files[i]`.
///
/// `progress` advances by input bytes. When a tensor needs F32 scales, the
/// run goes on quantizing (to find every such tensor in one pass) but stops
/// writing, and returns [`RunOutcome::WidenScales`].
pub fn run(
    ckpt: &Checkpoint,
    plan: &Plan,
    files: &[PendingFile],
    isa: Isa,
    nonfinite: Nonfinite,
    progress: &ProgressBar,
) -> Result<RunOutcome, EngineError> {
    let mut outcomes = Vec::new();
    let mut widen = Vec::new();
    // Two workspaces take turns: one tensor is quantized into one while the
    // previous tensor's output is written from the other.
    let mut spare = Workspace::default();
    let start = std::time::Instant::now();
    // Seconds spent reading input and in the kernels; the rest of the loop is writing.
    let mut quantizing = 0.0f64;
    for (sp, file) in plan.shards.iter().zip(files) {
        if widen.is_empty() {
            file.write_at(&sp.layout.header, 0)?;
        }
        let mut pending: Option<Unwritten<'_>> = None;
        for tp in &sp.tensors {
            crate::interrupt::check()?;
            let shard = &ckpt.shards[tp.input];
            let t = std::time::Instant::now();
            let data = shard.data(&tp.entry)?; // with --no-mmap, the tensor is read here
            quantizing += t.elapsed().as_secs_f64();
            if let Action::Keep(_) = &tp.action {
                if widen.is_empty() {
                    file.write_at(&data, tp.pieces[0].offset)?;
                }
                shard.release(&data);
                progress.inc(data.len() as u64);
                outcomes.push(TensorOutcome {
                    stats: None,
                    written: data.len() as u64,
                    rtn: None,
                });
                continue;
            }
            let mut ws = std::mem::take(&mut spare);
            let previous = pending.take();
            let release = |b: &[u8]| shard.release(b);
            let (made, wrote) = rayon::join(
                || {
                    let t = std::time::Instant::now();
                    let made = quantize_action(&mut ws, tp, &data, plan, isa, progress, &release);
                    (made, t.elapsed().as_secs_f64())
                },
                || previous.map(|u| (u.write(file), u.ws)),
            );
            if let Some((r, ws)) = wrote {
                spare = ws;
                r?;
            }
            let (made, secs) = made;
            quantizing += secs;
            shard.release(&data);
            crate::interrupt::check()?;
            let (path, name) = (shard.path.display(), &tp.entry.name);
            let stats = made.stats;
            if stats.nonfinite > 0 && nonfinite == Nonfinite::Error {
                return Err(EngineError::Nonfinite {
                    file: path.to_string(),
                    tensor: name.clone(),
                    index: stats.first_nonfinite.unwrap_or(0),
                    count: stats.nonfinite,
                });
            }
            match &tp.action {
                Action::Quantize(fmt) if needs_wide_scales(fmt, &stats) => {
                    widen.push(Widened {
                        name: name.clone(),
                        from: fmt.scale_dtype,
                        overflowed_groups: stats.overflowed_groups,
                        zeroed_groups: stats.zeroed_groups,
                    });
                    spare = ws;
                    continue;
                }
                Action::Quantize(_) if stats.overflowed_groups > 0 => {
                    return Err(EngineError::ScaleOverflow {
                        file: path.to_string(),
                        tensor: name.clone(),
                        groups: stats.overflowed_groups,
                    });
                }
                Action::Ggml(_) | Action::Mlx(_) if stats.overflowed_groups > 0 => {
                    return Err(EngineError::FixedScaleOverflow {
                        file: path.to_string(),
                        tensor: name.clone(),
                        blocks: stats.overflowed_groups,
                        ty: match &tp.action {
                            Action::Ggml(ty) => ty.name(),
                            _ => "MLX",
                        },
                    });
                }
                _ => {}
            }
            let unwritten = Unwritten {
                ws,
                lens: made.lens,
                pieces: &tp.pieces,
            };
            outcomes.push(TensorOutcome {
                stats: Some(stats),
                written: unwritten.bytes(),
                rtn: made.rtn,
            });
            if widen.is_empty() {
                pending = Some(unwritten);
            } else {
                spare = unwritten.ws;
            }
        }
        if let Some(u) = pending.take() {
            u.write(file)?;
            spare = u.ws;
        }
        // Padding between tensors reads as zeros (holes); padding after the
        // last one (GGUF aligns the end too) must be written to exist.
        let end = sp
            .tensors
            .iter()
            .flat_map(|t| &t.pieces)
            .filter(|p| p.nbytes > 0) // an empty tensor may sit at the very end
            .map(|p| p.offset + p.nbytes)
            .chain([sp.layout.header.len() as u64])
            .max()
            .unwrap_or(0);
        if end < sp.layout.total && widen.is_empty() {
            file.write_at(&vec![0; (sp.layout.total - end) as usize], end)?;
        }
    }
    Ok(if widen.is_empty() {
        let total = start.elapsed().as_secs_f64();
        RunOutcome::Done(
            outcomes,
            Phases {
                read_quantize_s: quantizing,
                write_s: (total - quantizing).max(0.0),
                ..Phases::default()
            },
        )
    } else {
        RunOutcome::WidenScales(widen)
    })
}

/// A quantized tensor whose output waits to be written: the workspace holding it
/// (owned, so that the next tensor can be quantized into the other one meanwhile),
/// the length of each part, and where the parts go.
struct Unwritten<'p> {
    ws: Workspace,
    lens: [usize; PARTS],
    pieces: &'p [Piece],
}

impl Unwritten<'_> {
    /// The bytes of the output piece of `kind` (empty for [`PieceKind::Kept`]).
    fn part(&self, kind: PieceKind) -> &[u8] {
        kind.part()
            .map_or(&[], |i| &self.ws.bufs[i][..self.lens[i]])
    }

    /// Bytes this tensor's pieces take.
    fn bytes(&self) -> u64 {
        self.pieces
            .iter()
            .map(|p| self.part(p.kind).len() as u64)
            .sum()
    }

    /// Writes every piece at its offset in `file`.
    fn write(&self, file: &PendingFile) -> Result<(), WriteError> {
        for piece in self.pieces {
            let bytes = self.part(piece.kind);
            // The kernels' output must fill the planned piece exactly: anything else
            // would leave a hole or overwrite the next piece.
            assert_eq!(piece.nbytes, bytes.len() as u64, "{:?} piece", piece.kind);
            file.write_at(bytes, piece.offset)?;
        }
        Ok(())
    }
}

/// What quantizing one tensor gave, its bytes left in the workspace.
struct Made {
    stats: ErrorStats,
    rtn: Option<ErrorStats>,
    lens: [usize; PARTS],
}

/// Quantizes tensor `tp` (a packed, GGUF or MLX action) from `data` into `ws`.
fn quantize_action(
    ws: &mut Workspace,
    tp: &TensorPlan,
    data: &[u8],
    plan: &Plan,
    isa: Isa,
    progress: &ProgressBar,
    release: &(dyn Fn(&[u8]) + Sync),
) -> Made {
    let (e, rows, k) = (tp.entry.dtype, tp.rows, tp.k);
    let out = match &tp.action {
        Action::Ggml(ty) => quantize_ggml_tensor(ws, data, e, rows, k, *ty, isa, progress, release),
        Action::Mlx(m) => quantize_mlx_tensor(ws, data, e, rows, k, m, progress, release),
        Action::Quantize(fmt) => quantize_tensor(
            ws,
            data,
            e,
            rows,
            k,
            fmt,
            isa,
            Choice {
                method: plan.rules.optimize,
                compare_rtn: plan.rules.compare_rtn,
            },
            progress,
            release,
        ),
        Action::Keep(_) => unreachable!("kept tensors are copied, not quantized"),
    };
    Made {
        stats: out.stats,
        rtn: out.rtn,
        lens: out.parts.map(|p| p.len()),
    }
}

/// Output buffers reused from tensor to tensor. They grow to the largest
/// tensor's output and are never zeroed again (the kernels write every byte),
/// so after the first tensor no page is faulted in or cleared for output.
#[derive(Debug, Default)]
pub struct Workspace {
    bufs: [Vec<u8>; PARTS],
}

/// Output parts of a quantized tensor, in [`PieceKind::part`] order: codes,
/// scales, mins, super-group scale factors, super-group min factors.
const PARTS: usize = 5;

fn take(v: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if v.len() < n {
        v.resize(n, 0);
    }
    &mut v[..n]
}

/// The packed output of one tensor, borrowed from a [`Workspace`].
#[derive(Debug)]
pub struct TensorOutput<'w> {
    /// Codes, scales, mins, super scales, super mins (empty when not stored).
    parts: [&'w [u8]; PARTS],
    /// Error statistics; `first_nonfinite` is a flat index into the tensor.
    pub stats: ErrorStats,
    /// Round-to-nearest's statistics on the same tensor, when asked for (`--compare rtn`).
    pub rtn: Option<ErrorStats>,
}

/// Where the time of a run went, in seconds (wall clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Phases {
    /// Opening, planning, reserving the output files: everything before the tensors.
    pub setup_s: f64,
    /// Reading the input (page faults on the map, or reads) and the kernels, tensor by tensor.
    pub read_quantize_s: f64,
    /// Writing the output bytes into the files (the page cache; kept tensors are
    /// copies), as far as it was not hidden behind the kernels: a tensor's output
    /// is written while the next tensor is quantized.
    pub write_s: f64,
    /// Flushing the files to the disk, renaming them into place, and the index.
    pub sync_s: f64,
}

/// How a packed tensor's parameters are chosen, and whether round-to-nearest
/// is also measured on it for comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Choice {
    /// The method whose output is written.
    pub method: Method,
    /// Also measure round-to-nearest's error (nothing of it is written).
    pub compare_rtn: bool,
}

/// Quantizes a whole tensor of `rows × k` elements of `dtype` held in `data`,
/// with kernels `isa` and parameters chosen as `choice` says, into `ws`.
///
/// Runs on the current rayon pool; `progress` advances by input bytes, and
/// `release` gets each piece of `data` once it has been read.
#[allow(clippy::too_many_arguments)]
pub fn quantize_tensor<'w>(
    ws: &'w mut Workspace,
    data: &[u8],
    dtype: Dtype,
    rows: usize,
    k: usize,
    fmt: &QuantFormat,
    isa: Isa,
    choice: Choice,
    progress: &ProgressBar,
    release: &(dyn Fn(&[u8]) + Sync),
) -> TensorOutput<'w> {
    let per_row = fmt.part_bytes_per_row(k);
    let esize = (dtype.bitsize() / 8).max(1);
    quantize_rows_with(
        ws,
        data,
        dtype,
        rows,
        k,
        per_row,
        progress,
        release,
        |src, buf, parts| {
            let x = source(isa, dtype, src, buf);
            let st = quantize_rows_by(isa, choice.method, fmt, k, x, RowsOut::from_parts(parts));
            // Round-to-nearest into scratch buffers, for the comparison only.
            let rtn = choice.compare_rtn.then(|| {
                let n = src.len() / (k * esize).max(1);
                let mut scratch = per_row.map(|b| vec![0u8; n * b]);
                let [a, b, c, d, e] = &mut scratch;
                quantize_rows(isa, fmt, k, x, RowsOut::from_parts([a, b, c, d, e]))
            });
            (st, rtn)
        },
    )
}

/// Quantizes a whole tensor of `rows × k` elements (`k` a multiple of 32)
/// into GGUF blocks of type `ty` with kernels `isa`, in parallel over row chunks, into `ws`.
#[allow(clippy::too_many_arguments)]
pub fn quantize_ggml_tensor<'w>(
    ws: &'w mut Workspace,
    data: &[u8],
    dtype: Dtype,
    rows: usize,
    k: usize,
    ty: GgmlType,
    isa: Isa,
    progress: &ProgressBar,
    release: &(dyn Fn(&[u8]) + Sync),
) -> TensorOutput<'w> {
    let per_row = [ty.row_bytes(k), 0, 0, 0, 0];
    quantize_rows_with(
        ws,
        data,
        dtype,
        rows,
        k,
        per_row,
        progress,
        release,
        |src, buf, [c, ..]| {
            let st = ggml::quantize_blocks_src(isa, ty, source(isa, dtype, src, buf), c);
            (st, None)
        },
    )
}

/// Quantizes a whole tensor of `rows × k` elements (`k` a multiple of the
/// group) into MLX's affine layout, in parallel over row chunks, into `ws`.
#[allow(clippy::too_many_arguments)]
pub fn quantize_mlx_tensor<'w>(
    ws: &'w mut Workspace,
    data: &[u8],
    dtype: Dtype,
    rows: usize,
    k: usize,
    fmt: &MlxFormat,
    progress: &ProgressBar,
    release: &(dyn Fn(&[u8]) + Sync),
) -> TensorOutput<'w> {
    let s = fmt.scale_bytes_per_row(k);
    let per_row = [fmt.code_bytes_per_row(k), s, s, 0, 0];
    quantize_rows_with(
        ws,
        data,
        dtype,
        rows,
        k,
        per_row,
        progress,
        release,
        |src, buf, [c, sc, b, ..]| {
            let st = mlx::quantize_rows(fmt, k, to_f32(dtype, src, buf), c, sc, b);
            (st, None)
        },
    )
}

/// Error statistics of a chunk, and round-to-nearest's when compared.
type ChunkStats = (ErrorStats, Option<ErrorStats>);

/// Runs `kernel` over row chunks of a tensor in parallel: each chunk's bytes
/// (whole rows of `dtype`) go to the kernel with a per-worker buffer to read
/// them through ([`to_f32`] or [`source`]), and its slices of the output
/// parts (`per_row` bytes of each per row; 0 for a part the kernel does not
/// write).
#[allow(clippy::too_many_arguments)]
fn quantize_rows_with<'w>(
    ws: &'w mut Workspace,
    data: &[u8],
    dtype: Dtype,
    rows: usize,
    k: usize,
    per_row: [usize; PARTS],
    progress: &ProgressBar,
    release: &(dyn Fn(&[u8]) + Sync),
    kernel: impl Fn(&[u8], &mut Vec<f32>, [&mut [u8]; PARTS]) -> ChunkStats + Sync,
) -> TensorOutput<'w> {
    let esize = dtype.bitsize() / 8;
    let rpc = (CHUNK_ELEMS / k.max(1)).max(1);
    let count = rows.div_ceil(rpc);
    // Each part cut into the chunks' slices (empty slices for an unused part).
    let mut parts: Vec<std::vec::IntoIter<&mut [u8]>> = ws
        .bufs
        .iter_mut()
        .zip(per_row)
        .map(|(buf, n)| {
            let buf = take(buf, rows * n);
            let v: Vec<&mut [u8]> = if n == 0 {
                (0..count).map(|_| <&mut [u8]>::default()).collect()
            } else {
                buf.chunks_mut(rpc * n).collect()
            };
            v.into_iter()
        })
        .collect();
    let jobs: Vec<_> = data
        .chunks((rpc * k * esize).max(1))
        .enumerate()
        .map(|(i, src)| {
            let out: [&mut [u8]; PARTS] =
                std::array::from_fn(|p| parts[p].next().expect("one slice per chunk"));
            (i, src, out)
        })
        .collect();
    let none = || (ErrorStats::default(), None);
    let (stats, rtn) = jobs
        .into_par_iter()
        .map_init(
            || (Vec::new(), Unreleased::new(data, release)),
            |(buf, unreleased), (i, src, out)| {
                if crate::interrupt::requested().is_some() {
                    return none(); // the caller checks and drops this tensor
                }
                let (st, rtn) = kernel(src, buf, out);
                progress.inc(src.len() as u64);
                unreleased.add(src);
                let shift = |st: &ErrorStats| {
                    let mut at = ErrorStats::default();
                    at.merge(st, (i * rpc * k) as u64);
                    at
                };
                (shift(&st), rtn.as_ref().map(shift))
            },
        )
        .reduce(none, |(mut a, ra), (b, rb)| {
            a.merge(&b, 0);
            let r = match (ra, rb) {
                (Some(mut x), Some(y)) => {
                    x.merge(&y, 0);
                    Some(x)
                }
                (x, y) => x.or(y),
            };
            (a, r)
        });
    let ws: &'w Workspace = ws;
    TensorOutput {
        parts: std::array::from_fn(|p| &ws.bufs[p][..rows * per_row[p]]),
        stats,
        rtn,
    }
}

/// Input that one rayon job has read but not yet released. Contiguous chunks
/// are released together, [`RELEASE_SPAN`] bytes at a time: each release is a
/// system call that also flushes the other threads' TLBs, too costly per chunk.
struct Unreleased<'a> {
    data: &'a [u8],
    release: &'a (dyn Fn(&[u8]) + Sync),
    span: std::ops::Range<usize>,
}

/// Bytes of input released at once (see [`Unreleased`]).
const RELEASE_SPAN: usize = 8 << 20;

impl<'a> Unreleased<'a> {
    fn new(data: &'a [u8], release: &'a (dyn Fn(&[u8]) + Sync)) -> Self {
        Unreleased {
            data,
            release,
            span: 0..0,
        }
    }

    /// Adds `chunk` (a subslice of the tensor's data) to the span, releasing what is due.
    fn add(&mut self, chunk: &[u8]) {
        let at = chunk.as_ptr() as usize - self.data.as_ptr() as usize;
        if at != self.span.end {
            self.flush();
            self.span = at..at;
        }
        self.span.end = at + chunk.len();
        if self.span.len() >= RELEASE_SPAN {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.span.is_empty() {
            (self.release)(&self.data[self.span.clone()]);
        }
        self.span = self.span.end..self.span.end;
    }
}

impl Drop for Unreleased<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The kernel input for `bytes` of `dtype`: in place when aligned (F16/BF16 only
/// for SIMD kernels, which convert in registers), else converted into `buf`.
fn source<'a>(isa: Isa, dtype: Dtype, bytes: &'a [u8], buf: &'a mut Vec<f32>) -> Src<'a> {
    if isa != Isa::Scalar {
        match dtype {
            Dtype::F16 => {
                if let Ok(h) = bytemuck::try_cast_slice::<u8, f16>(bytes) {
                    return Src::F16(h);
                }
            }
            Dtype::BF16 => {
                if let Ok(h) = bytemuck::try_cast_slice::<u8, bf16>(bytes) {
                    return Src::BF16(h);
                }
            }
            _ => {}
        }
    }
    Src::F32(to_f32(dtype, bytes, buf))
}

/// Reads little-endian F32/F16/BF16 bytes as f32: in place when possible, else through `buf`.
///
/// # Panics
/// On any other dtype (the plan quantizes only these).
pub fn to_f32<'a>(dtype: Dtype, src: &'a [u8], buf: &'a mut Vec<f32>) -> &'a [f32] {
    match dtype {
        Dtype::F32 => match bytemuck::try_cast_slice::<u8, f32>(src) {
            Ok(x) => x,
            Err(_) => {
                buf.clear();
                buf.extend(
                    src.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
                buf
            }
        },
        Dtype::F16 => {
            buf.resize(src.len() / 2, 0.0);
            match bytemuck::try_cast_slice::<u8, f16>(src) {
                Ok(h) => h.convert_to_f32_slice(buf),
                Err(_) => {
                    for (o, b) in buf.iter_mut().zip(src.chunks_exact(2)) {
                        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                }
            }
            buf
        }
        Dtype::BF16 => {
            buf.resize(src.len() / 2, 0.0);
            match bytemuck::try_cast_slice::<u8, bf16>(src) {
                Ok(h) => h.convert_to_f32_slice(buf),
                Err(_) => {
                    for (o, b) in buf.iter_mut().zip(src.chunks_exact(2)) {
                        *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                }
            }
            buf
        }
        other => panic!("to_f32: {other} is not a float dtype the engine reads"),
    }
}

/// Writes f32 values as little-endian F32/F16/BF16 bytes (round to nearest even).
///
/// # Panics
/// On any other dtype, or when `out` is not exactly `src.len()` elements.
pub fn from_f32(dtype: Dtype, src: &[f32], out: &mut [u8]) {
    match dtype {
        Dtype::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        Dtype::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
        }
        other => panic!("from_f32: {other} is not a float dtype"),
    }
    assert_eq!(out.len(), src.len() * dtype.bitsize() / 8, "from_f32 size");
}
