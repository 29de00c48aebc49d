//! The `bench` operation: kernel throughput in GB/s of input on synthetic
//! heavy-tailed data, next to a memcpy and a read-only sum of the same bytes
//! measured in the same run with the same threads; and the whole `quantize`
//! pipeline (mmap, kernels, writer, fsync) on a checkpoint file.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use rayon::prelude::*;
use safetensors::Dtype;
use serde::Serialize;
use shrinkray_kernels::ggml::GgmlType;
use shrinkray_kernels::{DoubleQuant, Isa, Method, QuantFormat, ScaleDtype, Scheme};

use crate::engine::{quantize_ggml_tensor, quantize_tensor, Choice, Workspace};
use crate::plan::{GroupSize, Rules};
use crate::quantize::{quantize, QuantizeOptions};
use crate::synth::Rng;
use crate::units::{bytes, Table};
use crate::{Error, Result};

/// Row length of the synthetic tensor (a common hidden size).
pub const BENCH_K: usize = 4096;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Input bytes per measurement.
    pub size: u64,
    /// Packed schemes.
    pub schemes: Vec<Scheme>,
    /// Also time the error-minimising search (`--optimize search`) of each packed scheme.
    pub search: bool,
    /// Double-quantized scales for the packed schemes (`--scale-bits`), else F16 scales.
    pub double_quant: Option<DoubleQuant>,
    /// GGUF block types (ggml's reference rounding, every ISA).
    pub ggml: Vec<GgmlType>,
    /// Group sizes.
    pub groups: Vec<usize>,
    /// Input dtypes (F32, F16, BF16).
    pub dtypes: Vec<Dtype>,
    /// Kernel implementations.
    pub isas: Vec<Isa>,
    /// Thread counts.
    pub threads: Vec<usize>,
    /// Timed repetitions per measurement (the median is reported).
    pub reps: usize,
}

/// One measurement.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchRow {
    /// `memcpy`, `read` (a read-only sum) or `quantize`.
    pub kind: String,
    /// Scheme (quantize rows).
    pub scheme: Option<String>,
    /// Group size (quantize rows).
    pub group_size: Option<usize>,
    /// Input dtype.
    pub dtype: String,
    /// Kernel implementation (quantize rows).
    pub isa: Option<String>,
    /// Worker threads.
    pub threads: usize,
    /// Input bytes per repetition.
    pub bytes: u64,
    /// Median seconds per repetition.
    pub median_s: f64,
    /// Fastest repetition in seconds.
    pub min_s: f64,
    /// Input GB/s (10⁹ bytes) at the median.
    pub gb_s: f64,
    /// Million parameters per second at the median.
    pub mparams_s: f64,
    /// gb_s over the memcpy rate of the same bytes and threads.
    pub vs_memcpy: f64,
    /// gb_s over the read-only rate of the same bytes and threads.
    pub vs_read: f64,
}

/// The whole pipeline on one checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EndToEnd {
    /// The checkpoint.
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Scheme and group size used.
    pub scheme: String,
    /// Group size.
    pub group_size: usize,
    /// Kernel implementation.
    pub isa: String,
    /// Worker threads.
    pub threads: usize,
    /// Bytes of the output file.
    pub output_bytes: u64,
    /// Timed runs of each `quantize` measurement (after one warm-up run).
    pub reps: usize,
    /// Median seconds of a whole `quantize` (including fsync and rename).
    pub median_s: f64,
    /// Median of its phases: reading the input and the kernels, tensor by tensor.
    pub read_quantize_s: f64,
    /// Median of its phases: finishing the files after the last tensor (the final
    /// fsync waits there for what the disk has not written yet).
    pub finish_s: f64,
    /// GB/s of input at the median.
    pub gb_s: f64,
    /// 1-thread memcpy rate of the same number of bytes (capped at 1 GiB), GB/s,
    /// copied as the kernel table's baseline is (in eighths, regular stores).
    pub memcpy_1t_gb_s: f64,
    /// One glibc memcpy of the whole buffer (non-temporal stores at this size), GB/s.
    pub memcpy_whole_gb_s: f64,
    /// gb_s / memcpy_1t_gb_s.
    pub vs_memcpy_1t: f64,
    /// Median seconds of the same `quantize --no-fsync` (no flush to disk).
    pub no_fsync_median_s: f64,
    /// Median read + quantize phase of `--no-fsync`.
    pub no_fsync_read_quantize_s: f64,
    /// Median finishing phase of `--no-fsync` (no flush: the length check, the rename, and
    /// any index or config file).
    pub no_fsync_finish_s: f64,
    /// GB/s of input of `--no-fsync`.
    pub no_fsync_gb_s: f64,
    /// no_fsync_gb_s / memcpy_1t_gb_s.
    pub no_fsync_vs_memcpy_1t: f64,
    /// Median seconds to write `output_bytes` to a new file in the same directory and
    /// `fdatasync` it: what the disk alone needs to make such an output durable.
    pub disk_write_s: f64,
}

/// What `bench` measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    /// The CPU, as the OS names it.
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Implementations this CPU runs.
    pub isas_available: Vec<String>,
    /// Repetitions per measurement.
    pub reps: usize,
    /// Kernel measurements, with their baselines.
    pub rows: Vec<BenchRow>,
    /// Whole-pipeline measurement, when asked.
    pub end_to_end: Option<EndToEnd>,
}

/// The CPU model name (Linux), or `unknown`.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Bytes per piece of the memcpy baseline: eight pieces per thread.
fn copy_chunk(len: usize, threads: usize) -> usize {
    len.div_ceil(threads * 8).max(1 << 16)
}

/// The memcpy baseline: `src` into `dst` in [`copy_chunk`] pieces on `pool`. Pieces
/// are copied with regular stores, as the kernels write their output; one glibc memcpy
/// of a buffer larger than the cache would use non-temporal stores, much faster.
fn copy(pool: &rayon::ThreadPool, dst: &mut [u8], src: &[u8], threads: usize) {
    let chunk = copy_chunk(src.len(), threads);
    pool.install(|| {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s))
    });
    black_box(&dst);
}

fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Other(format!("cannot start {threads} threads: {e}")))
}

/// Median and minimum of `reps` timings of `f` (after one untimed warm-up).
fn time(reps: usize, f: impl FnMut()) -> (f64, f64) {
    time_after(reps, || {}, f)
}

/// [`time`], with `setup` run untimed before every run of `f`.
fn time_after(reps: usize, mut setup: impl FnMut(), mut f: impl FnMut()) -> (f64, f64) {
    setup();
    f();
    let t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            setup();
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    let min = t.iter().copied().fold(f64::INFINITY, f64::min);
    (median(t), min)
}

/// `n` heavy-tailed values as `dtype` bytes, made in parallel, deterministic.
pub fn synthetic(n: usize, dtype: Dtype) -> Vec<u8> {
    let es = dtype.bitsize() / 8;
    let mut out = vec![0u8; n * es];
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK * es)
        .enumerate()
        .for_each(|(i, c)| {
            let mut rng = Rng::new(0xB3AC4 + i as u64);
            let vals: Vec<f32> = (0..c.len() / es)
                .map(|_| {
                    // Uniform body with a quartic tail: outliers up to 9x the bulk, like trained weights.
                    let u = rng.uniform() * 2.0 - 1.0;
                    (0.02 * u * (1.0 + 8.0 * u * u * u * u)) as f32
                })
                .collect();
            crate::engine::from_f32(dtype, &vals, c);
        });
    out
}

/// Runs the kernel benchmarks.
pub fn run(opts: &BenchOptions, progress: &ProgressBar) -> Result<BenchReport> {
    let mut rows = Vec::new();
    for &dtype in &opts.dtypes {
        let es = (dtype.bitsize() / 8) as u64;
        let n = ((opts.size / es) as usize / BENCH_K).max(1) * BENCH_K;
        let data = synthetic(n, dtype);
        let len = data.len() as u64;
        let mut dst = vec![0u8; data.len()];
        for &t in &opts.threads {
            let pool = pool(t)?;
            let chunk = copy_chunk(data.len(), t);
            let (copy_med, copy_min) = time(opts.reps, || copy(&pool, &mut dst, &data, t));
            let (read_med, read_min) = time(opts.reps, || {
                let s: u64 = pool.install(|| {
                    data.par_chunks(chunk)
                        .map(|c| {
                            c.chunks_exact(8)
                                .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                                .fold(0u64, u64::wrapping_add)
                        })
                        .reduce(|| 0, u64::wrapping_add)
                });
                black_box(s);
            });
            let copy = len as f64 / copy_med / 1e9;
            let read = len as f64 / read_med / 1e9;
            let base = |kind: &str, med: f64, min: f64| BenchRow {
                kind: kind.into(),
                scheme: None,
                group_size: None,
                dtype: dtype.to_string(),
                isa: None,
                threads: t,
                bytes: len,
                median_s: med,
                min_s: min,
                gb_s: len as f64 / med / 1e9,
                mparams_s: n as f64 / med / 1e6,
                vs_memcpy: copy_med / med,
                vs_read: read_med / med,
            };
            rows.push(base("memcpy", copy_med, copy_min));
            rows.push(base("read", read_med, read_min));
            for &scheme in &opts.schemes {
                for &group in &opts.groups {
                    let f = QuantFormat {
                        dq: opts.double_quant,
                        scheme,
                        group,
                        scale_dtype: ScaleDtype::F16,
                    };
                    let methods: &[Method] = if opts.search {
                        &[Method::Rtn, Method::Search]
                    } else {
                        &[Method::Rtn]
                    };
                    let runs = methods
                        .iter()
                        .flat_map(|&m| opts.isas.iter().map(move |&i| (i, m)));
                    for (isa, method) in runs {
                        let hidden = ProgressBar::hidden();
                        // One workspace for all runs, as the engine keeps one for all tensors.
                        let mut ws = Workspace::default();
                        let (med, min) = time(opts.reps, || {
                            let stats = pool.install(|| {
                                quantize_tensor(
                                    &mut ws,
                                    &data,
                                    dtype,
                                    n / BENCH_K,
                                    BENCH_K,
                                    &f,
                                    isa,
                                    Choice {
                                        method,
                                        compare_rtn: false,
                                    },
                                    &hidden,
                                    &|_| {},
                                )
                                .stats
                            });
                            black_box(stats);
                        });
                        let gb = len as f64 / med / 1e9;
                        rows.push(BenchRow {
                            kind: "quantize".into(),
                            scheme: Some(format!(
                                "{}{}{}",
                                scheme.name(),
                                f.dq.map_or(String::new(), |d| format!(
                                    " dq{}/{}",
                                    d.bits, d.groups
                                )),
                                if method == Method::Search {
                                    " search"
                                } else {
                                    ""
                                }
                            )),
                            group_size: Some(group),
                            isa: Some(isa.name().into()),
                            gb_s: gb,
                            vs_memcpy: gb / copy,
                            vs_read: gb / read,
                            median_s: med,
                            min_s: min,
                            ..base("quantize", med, min)
                        });
                        progress.inc(1);
                    }
                }
            }
            let ggml_runs = opts
                .ggml
                .iter()
                .flat_map(|t| opts.isas.iter().map(move |i| (*t, *i)));
            for (ty, isa) in ggml_runs {
                let hidden = ProgressBar::hidden();
                let mut ws = Workspace::default();
                let (med, min) = time(opts.reps, || {
                    let stats = pool.install(|| {
                        quantize_ggml_tensor(
                            &mut ws,
                            &data,
                            dtype,
                            n / BENCH_K,
                            BENCH_K,
                            ty,
                            isa,
                            &hidden,
                            &|_| {},
                        )
                        .stats
                    });
                    black_box(stats);
                });
                let gb = len as f64 / med / 1e9;
                rows.push(BenchRow {
                    kind: "quantize".into(),
                    scheme: Some(ty.name().into()),
                    group_size: Some(GgmlType::BLOCK),
                    isa: Some(isa.name().into()),
                    gb_s: gb,
                    vs_memcpy: gb / copy,
                    vs_read: gb / read,
                    median_s: med,
                    min_s: min,
                    ..base("quantize", med, min)
                });
                progress.inc(1);
            }
        }
    }
    Ok(BenchReport {
        cpu: cpu_name(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        isas_available: Isa::available()
            .iter()
            .map(|i| i.name().to_string())
            .collect(),
        reps: opts.reps,
        rows,
        end_to_end: None,
    })
}

/// Times a whole `quantize` of `file` into a scratch directory, `reps` times.
pub fn end_to_end(
    file: &Path,
    scheme: Scheme,
    group: usize,
    threads: Option<usize>,
    reps: usize,
) -> Result<EndToEnd> {
    let scratch = scratch_dir("e2e")?;
    let out = scratch.path.join("out");
    let opts = QuantizeOptions {
        rules: Rules {
            scheme,
            group: GroupSize::Fixed(group),
            ..Rules::default()
        },
        threads,
        force: true,
        ..Default::default()
    };
    let input_bytes = crate::checkpoint::Checkpoint::open(file)?.file_bytes();
    let durable = time_quantize(file, &out, &opts, reps)?;
    let no_fsync = QuantizeOptions {
        no_fsync: true,
        ..opts.clone()
    };
    let fast = time_quantize(file, &out, &no_fsync, reps)?;
    let (med, no_fsync_med, output_bytes) = (durable.median_s, fast.median_s, durable.written);
    let disk_write_s = durable_write_s(&scratch.path, output_bytes, reps)?;
    let n = input_bytes.min(1 << 30) as usize;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let one = pool(1)?;
    let (copied, _) = time(reps, || copy(&one, &mut dst, &src, 1));
    let memcpy = n as f64 / copied / 1e9;
    let (whole, _) = time(reps, || {
        dst.copy_from_slice(&src);
        black_box(&dst);
    });
    let gb = input_bytes as f64 / med / 1e9;
    let no_fsync_gb = input_bytes as f64 / no_fsync_med / 1e9;
    Ok(EndToEnd {
        file: file.display().to_string(),
        bytes: input_bytes,
        scheme: scheme.name().into(),
        group_size: group,
        isa: crate::quantize::isa()?.name().into(),
        threads: crate::thread_count(threads),
        output_bytes,
        reps: reps.max(1),
        median_s: med,
        read_quantize_s: durable.read_quantize_s,
        finish_s: durable.finish_s,
        gb_s: gb,
        memcpy_1t_gb_s: memcpy,
        memcpy_whole_gb_s: n as f64 / whole / 1e9,
        vs_memcpy_1t: gb / memcpy,
        no_fsync_median_s: no_fsync_med,
        no_fsync_read_quantize_s: fast.read_quantize_s,
        no_fsync_finish_s: fast.finish_s,
        no_fsync_gb_s: no_fsync_gb,
        no_fsync_vs_memcpy_1t: no_fsync_gb / memcpy,
        disk_write_s,
    })
}

/// What [`time_quantize`] measured: medians over the timed runs.
struct QuantizeTiming {
    median_s: f64,
    read_quantize_s: f64,
    finish_s: f64,
    /// Bytes written by one run.
    written: u64,
}

/// Median of `v` (which must not be empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `reps` whole `quantize` runs of `file` into `out` (after one warm-up run; the
/// previous output removed untimed before each): the median time and phases, and
/// the bytes written.
fn time_quantize(
    file: &Path,
    out: &Path,
    opts: &QuantizeOptions,
    reps: usize,
) -> Result<QuantizeTiming> {
    let mut written = Ok(0);
    let mut phases = Vec::new();
    // Removing the previous run's output (freeing its pages) is not part of the run.
    let (med, _) = time_after(
        reps,
        || {
            let _ = std::fs::remove_dir_all(out);
        },
        || {
            // After a failure the remaining runs are skipped: the error is what is reported.
            if written.is_err() {
                return;
            }
            match quantize(file, out, opts) {
                Ok(r) => {
                    phases.extend(r.phases);
                    written = Ok(r.totals.output_bytes_actual.unwrap_or(0));
                }
                Err(e) => written = Err(e),
            }
        },
    );
    let _ = std::fs::remove_dir_all(out);
    let written = written?;
    // The first run is the warm-up.
    let timed = &phases[1.min(phases.len())..];
    let of = |f: fn(&crate::engine::Phases) -> f64| {
        if timed.is_empty() {
            0.0
        } else {
            median(timed.iter().map(f).collect())
        }
    };
    Ok(QuantizeTiming {
        median_s: med,
        read_quantize_s: of(|p| p.read_quantize_s),
        finish_s: of(|p| p.sync_s),
        written,
    })
}

/// Median seconds to write `n` bytes (8 MiB at a time) into a new file in `dir` and
/// `fdatasync` it, after one warm-up run: the disk's floor for a durable output of `n` bytes.
fn durable_write_s(dir: &Path, n: u64, reps: usize) -> Result<f64> {
    use std::io::Write;
    let path = dir.join("disk-write-probe");
    let block = vec![0x5Au8; 8 << 20];
    let mut err = None;
    // As for `quantize`, removing the previous file is not timed.
    let remove = || {
        let _ = std::fs::remove_file(&path);
    };
    let (med, _) = time_after(reps, remove, || {
        let r = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&path)?;
            let mut left = n as usize;
            while left > 0 {
                let k = left.min(block.len());
                f.write_all(&block[..k])?;
                left -= k;
            }
            f.sync_data()
        })();
        if let Err(e) = r {
            err.get_or_insert(e);
        }
    });
    let _ = std::fs::remove_file(&path);
    match err {
        Some(e) => Err(Error::Other(format!("{}: {e}", path.display()))),
        None => Ok(med),
    }
}

/// A directory under the system temporary directory, removed on drop.
pub struct Scratch {
    /// Its path.
    pub path: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Makes a fresh scratch directory.
pub fn scratch_dir(what: &str) -> Result<Scratch> {
    let path = std::env::temp_dir().join(format!("shrinkray-bench-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
    Ok(Scratch { path })
}

/// Writes a synthetic F32 checkpoint of about `size` bytes (Llama-7B-shaped layers) into `dir`.
pub fn synthetic_checkpoint(dir: &Path, size: u64) -> Result<PathBuf> {
    let shapes: [(&str, usize, usize); 7] = [
        ("self_attn.q_proj", 4096, 4096),
        ("self_attn.k_proj", 4096, 4096),
        ("self_attn.v_proj", 4096, 4096),
        ("self_attn.o_proj", 4096, 4096),
        ("mlp.gate_proj", 11008, 4096),
        ("mlp.up_proj", 11008, 4096),
        ("mlp.down_proj", 4096, 11008),
    ];
    let mut tensors = Vec::new();
    let mut total = 0u64;
    'layers: for layer in 0.. {
        for (name, r, c) in shapes {
            if total >= size {
                break 'layers;
            }
            let rows = r.min(((size - total) / (4 * c as u64)).max(1) as usize);
            tensors.push((
                format!("model.layers.{layer}.{name}.weight"),
                Dtype::F32,
                vec![rows, c],
                synthetic(rows * c, Dtype::F32),
            ));
            total += (rows * c * 4) as u64;
        }
    }
    let path = dir.join("synthetic-f32.safetensors");
    crate::synth::write(&path, &tensors, &[("format", "pt")])
        .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
    Ok(path)
}

impl BenchReport {
    /// The human-readable tables.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} ({} logical CPUs); kernels available: {}; median of {} runs\n\n",
            self.cpu,
            self.cpus,
            self.isas_available.join(", "),
            self.reps
        );
        if !self.rows.is_empty() {
            let mut t = Table::new(&[
                "what",
                "dtype",
                "isa",
                "threads",
                "input",
                "GB/s",
                "Mparams/s",
                "vs memcpy",
                "vs read",
            ]);
            for r in &self.rows {
                let what = match (&r.scheme, r.group_size) {
                    (Some(s), Some(g)) => format!("{s} g{g}"),
                    _ => r.kind.clone(),
                };
                t.row(vec![
                    what,
                    r.dtype.clone(),
                    r.isa.clone().unwrap_or_else(|| "-".into()),
                    r.threads.to_string(),
                    bytes(r.bytes),
                    format!("{:.2}", r.gb_s),
                    format!("{:.0}", r.mparams_s),
                    format!("{:.2}", r.vs_memcpy),
                    format!("{:.2}", r.vs_read),
                ]);
            }
            out.push_str(&t.render());
        }
        if let Some(e) = &self.end_to_end {
            out.push_str(&format!(
                "\nwhole pipeline: quantize {} ({}) to {} g{} with {} ({} threads), medians of {}; \
                 1-thread memcpy of the same bytes: {:.2} GB/s as in the kernel table \
                 (one memcpy of the whole buffer, with non-temporal stores: {:.2} GB/s)\n",
                e.file,
                bytes(e.bytes),
                e.scheme,
                e.group_size,
                e.isa,
                e.threads,
                e.reps,
                e.memcpy_1t_gb_s,
                e.memcpy_whole_gb_s
            ));
            let mut t = Table::new(&[
                "run",
                "seconds",
                "read + quantize",
                "finish",
                "GB/s of input",
                "vs memcpy",
            ]);
            let runs = [
                (
                    "quantize (durable: fsync, rename)",
                    [
                        e.median_s,
                        e.read_quantize_s,
                        e.finish_s,
                        e.gb_s,
                        e.vs_memcpy_1t,
                    ],
                ),
                (
                    "quantize --no-fsync",
                    [
                        e.no_fsync_median_s,
                        e.no_fsync_read_quantize_s,
                        e.no_fsync_finish_s,
                        e.no_fsync_gb_s,
                        e.no_fsync_vs_memcpy_1t,
                    ],
                ),
            ];
            for (name, [s, rq, fin, gb, vs]) in runs {
                t.row(vec![
                    name.into(),
                    format!("{s:.3}"),
                    format!("{rq:.3}"),
                    format!("{fin:.3}"),
                    format!("{gb:.2}"),
                    format!("{vs:.2}"),
                ]);
            }
            t.row(vec![
                format!(
                    "the disk alone: write {} + fdatasync",
                    bytes(e.output_bytes)
                ),
                format!("{:.3}", e.disk_write_s),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
            out.push_str(&t.render());
        }
        out
    }
}
