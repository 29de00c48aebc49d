//! The command line: a thin clap layer over the library. Exit codes: 0 ok,
//! 1 error, 2 usage, 3 `verify` found the packed file wanting.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use regex::Regex;
use safetensors::Dtype;
use shrinkray::allocate::Budget;
use shrinkray::bench::{self, BenchOptions};
use shrinkray::checkpoint::ReadMode;
use shrinkray::dequantize::{dequantize, DequantizeOptions};
use shrinkray::engine::Nonfinite;
use shrinkray::estimate::{estimate, parse_params, EstimateOptions, Subject};
use shrinkray::html::ChartData;
use shrinkray::inspect::inspect;
use shrinkray::plan::{parse_scale_dtype, parse_scheme, AnyScheme, GroupSize, Override, Rules};
use shrinkray::quantize::{dry_run, quantize, QuantizeOptions};
use shrinkray::units::parse_size;
use shrinkray::verify::{verify, VerifyOptions};
use shrinkray_kernels::ggml::GgmlType;
use shrinkray_kernels::{DoubleQuant, Isa, Method, ScaleDtype, Scheme};

/// Group-wise INT8/INT4 quantization of safetensors checkpoints, with an honest size and error report.
#[derive(Debug, Parser)]
#[command(name = "shrinkray", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Quantize a checkpoint (.safetensors file, index file, or directory) into packed files.
    Quantize(QuantizeArgs),
    /// Restore a packed checkpoint to plain tensors with the original names, shapes and dtypes.
    Dequantize(DequantizeArgs),
    /// Re-read an original and its packed version; check sizes and measure the error independently.
    Verify(VerifyArgs),
    /// List a checkpoint's tensors, dtypes, shapes, parameters and bytes (plain or packed).
    Inspect(InspectArgs),
    /// Measure quantizer throughput (GB/s of input) next to memcpy and a read-only sum of the same bytes.
    Bench(BenchArgs),
    /// What a checkpoint (headers only) or a parameter count costs at each precision, and how many GPUs hold it.
    Plan(PlanArgs),
}

/// `plan` options.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A checkpoint (file, index or directory); its headers are read, not its data.
    #[arg(required_unless_present = "params", conflicts_with = "params")]
    pub checkpoint: Option<PathBuf>,
    /// A parameter count instead of a checkpoint: 70B, 8.03e9, 405B, 350M.
    #[arg(long, value_parser = parse_params)]
    pub params: Option<u64>,
    /// Parameters active per token (mixture-of-experts), e.g. --params 47B --active 12B.
    #[arg(long, value_parser = parse_params)]
    pub active: Option<u64>,
    /// Accelerator memory size (repeatable; default 80GB and 24GB).
    #[arg(long = "gpu-mem", value_parser = parse_size)]
    pub gpu_mem: Vec<u64>,
    /// Fraction of each accelerator kept free for activations and KV cache (an assumption).
    #[arg(long, default_value_t = 0.1)]
    pub headroom: f64,
    /// Source dtype of a --params model: bf16, f16 or f32.
    #[arg(long, default_value = "bf16", value_parser = parse_float_dtype)]
    pub source_dtype: Dtype,
    /// Row length assumed for per-row groups of a --params model.
    #[arg(long, default_value_t = 4096)]
    pub row_length: u64,
    #[command(flatten)]
    pub out: Output,
}

/// `bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Input bytes per measurement (e.g. 64MiB, 256MiB, 1GiB).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub size: u64,
    /// Schemes to measure (repeatable; default: the four packed ones and q8_0, q4_0, q4_1).
    #[arg(long = "scheme", value_parser = parse_scheme)]
    pub schemes: Vec<AnyScheme>,
    /// Also time the error-minimising search (`quantize --optimize search`) of each packed scheme.
    #[arg(long)]
    pub search: bool,
    /// Time the packed schemes with double-quantized scales (`quantize --scale-bits B`,
    /// super-groups of 8) instead of F16 scales.
    #[arg(long, value_name = "BITS", value_parser = clap::value_parser!(u32).range(2..=8))]
    pub scale_bits: Option<u32>,
    /// Group sizes to measure (repeatable; default: 64).
    #[arg(long = "group-size")]
    pub groups: Vec<usize>,
    /// Input dtypes (repeatable: f32, bf16, f16; default: all three).
    #[arg(long = "dtype", value_parser = parse_float_dtype)]
    pub dtypes: Vec<Dtype>,
    /// Kernel implementations (repeatable: scalar, avx2, avx512; default: every one this CPU runs).
    #[arg(long = "isa", value_parser = parse_isa)]
    pub isas: Vec<Isa>,
    /// Thread counts (repeatable; default: 1 and all cores).
    #[arg(long = "threads")]
    pub threads: Vec<usize>,
    /// Timed runs per measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Also time a whole `quantize` of this checkpoint (default rules, int4-asym g64).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Also time a whole `quantize` of a synthetic F32 checkpoint of --e2e-size, made in a temporary directory.
    #[arg(long)]
    pub e2e: bool,
    /// Size of the --e2e checkpoint.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub e2e_size: u64,
    /// Skip the kernel table (only the whole-pipeline measurement).
    #[arg(long)]
    pub skip_kernels: bool,
    #[command(flatten)]
    pub out: Output,
}

fn parse_method(s: &str) -> Result<Method, String> {
    match s {
        "rtn" => Ok(Method::Rtn),
        "search" => Ok(Method::Search),
        _ => Err(format!("unknown method `{s}` (rtn or search)")),
    }
}

fn parse_isa(s: &str) -> Result<Isa, String> {
    let isa = Isa::from_name(s)
        .ok_or_else(|| format!("unknown kernel implementation `{s}` (scalar, avx2, avx512)"))?;
    if isa.is_available() {
        Ok(isa)
    } else {
        Err(format!("this CPU cannot run {isa}"))
    }
}

/// Options shared by commands that print reports.
#[derive(Debug, Args)]
pub struct Output {
    /// Print JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `quantize` options.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The checkpoint: a .safetensors file, model.safetensors.index.json, or a directory holding either.
    pub input: PathBuf,
    /// Output file (single-file input) or directory (sharded input).
    #[arg(short, long, required_unless_present = "dry_run")]
    pub output: Option<PathBuf>,
    /// Default scheme: int8, int8-asym, int4, int4-asym [default: int4-asym]; for GGUF q8_0, q4_0, q4_1 [default: q4_0].
    #[arg(long, value_parser = parse_scheme)]
    pub scheme: Option<AnyScheme>,
    /// Output format: safetensors (shrinkray's packed format), gguf (one GGUF v3 file) or
    /// mlx (MLX's affine layout, int4-asym/int8-asym, groups of 32/64/128).
    /// Default: gguf for a GGUF input, an output ending in .gguf or a GGUF --scheme; else safetensors.
    #[arg(long, value_parser = ["safetensors", "gguf", "mlx"])]
    pub format: Option<String>,
    /// Elements per group along the last dimension (a positive integer), or `row`.
    #[arg(long, default_value = "64", value_parser = str::parse::<GroupSize>)]
    pub group_size: GroupSize,
    /// Dtype of scales and mins: f16, bf16, f32.
    #[arg(long, default_value = "f16", value_parser = parse_scale_dtype)]
    pub scale_dtype: ScaleDtype,
    /// Keep tensors whose name matches REGEX unchanged (repeatable; wins over --override).
    #[arg(long, value_name = "REGEX", value_parser = Regex::new)]
    pub keep: Vec<Regex>,
    /// REGEX=SCHEME[:GROUP]: another scheme for matching tensors (repeatable; the last match wins).
    #[arg(long = "override", value_name = "REGEX=SCHEME[:GROUP]", value_parser = str::parse::<Override>)]
    pub overrides: Vec<Override>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// NaN/Inf in a tensor to quantize: `error` (default) or `zero` (quantize them as 0, reported).
    #[arg(long, default_value = "error", value_parser = ["error", "zero"])]
    pub nonfinite: String,
    /// Print the plan and the predicted sizes; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
    /// Read the input with plain reads, one tensor at a time, instead of memory-mapping it.
    #[arg(long)]
    pub no_mmap: bool,
    /// Do not flush the output to disk before renaming it into place: faster (the disk's
    /// write rate no longer bounds the run), but a crash or power cut soon after can lose it.
    #[arg(long)]
    pub no_fsync: bool,
    /// How scales and mins are chosen (packed format): rtn (round to nearest from each
    /// group's range) or search (error-minimising search; slower, same format).
    #[arg(long, default_value = "rtn", value_parser = parse_method)]
    pub optimize: Method,
    /// Also measure round-to-nearest on every packed tensor and report its error beside the chosen method's.
    #[arg(long, value_parser = ["rtn"])]
    pub compare: Option<String>,
    /// Double quantization (packed format version 2): store each group's scale and min
    /// as a BITS-bit code (2-8) of a per-super-group factor of --scale-dtype, as Q4_K does with 6.
    #[arg(long, value_name = "BITS", value_parser = clap::value_parser!(u32).range(2..=8))]
    pub scale_bits: Option<u32>,
    /// Choose each tensor's format for this size, in bits per weight over all parameters
    /// (kept tensors count, headers do not): from a fixed candidate set (README), the
    /// allocation with the least parameter-weighted squared relative error, measured on
    /// samples of each tensor with --optimize's method. --keep/--override fix tensors.
    #[arg(long, value_name = "BPW", conflicts_with_all = ["scheme", "scale_bits", "target_size"])]
    pub target_bpw: Option<f64>,
    /// Like --target-bpw, for a total size of the output files, headers included (e.g. 3.5GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with_all = ["scheme", "scale_bits"])]
    pub target_size: Option<u64>,
    /// Groups per super-group with --scale-bits (a super-group never spans two rows).
    #[arg(long, value_name = "GROUPS", default_value_t = 8, requires = "scale_bits",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub super_group: u64,
    /// Tensors in the table (worst relative error first when there are more).
    #[arg(long, default_value_t = 30)]
    pub top: usize,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// Also write a self-contained HTML report with charts to this file.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub out: Output,
}

/// `dequantize` options.
#[derive(Debug, Args)]
pub struct DequantizeArgs {
    /// A packed checkpoint (file, index, or directory).
    pub input: PathBuf,
    /// Output file (or directory for sharded input).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Dtype of restored tensors: f32, f16, bf16 (default: each tensor's original dtype).
    #[arg(long, value_parser = parse_float_dtype)]
    pub dtype: Option<Dtype>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub out: Output,
}

/// `verify` options.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The original checkpoint.
    pub original: PathBuf,
    /// Its packed version.
    pub packed: PathBuf,
    /// Exit 3 when any tensor's relative error ‖W−Ŵ‖/‖W‖ is above this.
    #[arg(long)]
    pub max_rel_error: Option<f64>,
    /// Exit 3 when original bytes / packed bytes is below this.
    #[arg(long)]
    pub min_ratio: Option<f64>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Tensors in the table (worst first when there are more).
    #[arg(long, default_value_t = 30)]
    pub top: usize,
    /// Also write a self-contained HTML report with charts to this file.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub out: Output,
}

/// `inspect` options.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A checkpoint (file, index, or directory), plain or packed.
    pub path: PathBuf,
    #[command(flatten)]
    pub out: Output,
}

fn parse_float_dtype(s: &str) -> Result<Dtype, String> {
    match s.to_ascii_lowercase().as_str() {
        "f32" => Ok(Dtype::F32),
        "f16" => Ok(Dtype::F16),
        "bf16" => Ok(Dtype::BF16),
        _ => Err(format!("unknown dtype `{s}` (expected f32, f16 or bf16)")),
    }
}

fn write_html(path: &std::path::Path, data: &ChartData) -> anyhow::Result<()> {
    let page = shrinkray::html::render(data).map_err(anyhow::Error::msg)?;
    shrinkray::writer::write_small_file(path, page.as_bytes(), true)
        .with_context(|| format!("writing the report {}", path.display()))?;
    Ok(())
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("serializing the report")?
    );
    Ok(())
}

/// The packed default scheme and the GGUF default type (when writing GGUF) of a quantize command line.
fn output_format(a: &QuantizeArgs) -> anyhow::Result<(Scheme, Option<GgmlType>)> {
    let by_name = a.output.as_ref().is_some_and(|o| {
        o.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    });
    let gguf_input = a.input.is_file()
        && std::fs::File::open(&a.input)
            .and_then(|mut f| {
                let mut m = [0u8; 4];
                std::io::Read::read_exact(&mut f, &mut m).map(|_| m)
            })
            .is_ok_and(|m| shrinkray::gguf::is_gguf(&m));
    if a.format.as_deref() == Some("mlx") {
        return match a.scheme {
            None => Ok((Scheme::Int4Asym, None)),
            Some(AnyScheme::Packed(s @ (Scheme::Int4Asym | Scheme::Int8Asym))) => Ok((s, None)),
            Some(s) => bail!(
                "--scheme {} cannot be written in MLX's affine layout: use int4-asym or int8-asym",
                s.name()
            ),
        };
    }
    let gguf = match a.format.as_deref() {
        Some(f) => f == "gguf",
        None => by_name || gguf_input || matches!(a.scheme, Some(AnyScheme::Ggml(_))),
    };
    match (gguf, a.scheme) {
        (false, None) => Ok((Scheme::Int4Asym, None)),
        (false, Some(AnyScheme::Packed(s))) => Ok((s, None)),
        (true, None) => Ok((Scheme::Int4Asym, Some(GgmlType::Q4_0))),
        (true, Some(AnyScheme::Ggml(t))) => Ok((Scheme::Int4Asym, Some(t))),
        (true, Some(s)) => {
            bail!(
                "--scheme {} is not a GGUF block type: use q8_0, q4_0 or q4_1 with --format gguf",
                s.name()
            )
        }
        (false, Some(s)) => {
            bail!(
                "--scheme {} is a GGUF block type: use it with --format gguf",
                s.name()
            )
        }
    }
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Quantize(a) => {
            let (scheme, gguf) = output_format(&a)?;
            let packed = gguf.is_none() && a.format.as_deref() != Some("mlx");
            if !packed && (a.optimize != Method::Rtn || a.compare.is_some()) {
                bail!("--optimize and --compare apply to the packed safetensors format; GGUF and MLX are written with their reference rounding");
            }
            if !packed
                && (a.scale_bits.is_some() || a.target_bpw.is_some() || a.target_size.is_some())
            {
                bail!("--scale-bits, --target-bpw and --target-size apply to the packed safetensors format; GGUF and MLX store their own scales");
            }
            let opts = QuantizeOptions {
                rules: Rules {
                    scheme,
                    gguf,
                    mlx: a.format.as_deref() == Some("mlx"),
                    optimize: a.optimize,
                    compare_rtn: a.compare.is_some(),
                    double_quant: a.scale_bits.map(|bits| DoubleQuant {
                        bits,
                        groups: a.super_group as usize,
                    }),
                    group: a.group_size,
                    scale_dtype: a.scale_dtype,
                    keep: a.keep,
                    overrides: a.overrides,
                    ..Rules::default()
                },
                threads: a.threads,
                nonfinite: if a.nonfinite == "zero" {
                    Nonfinite::Zero
                } else {
                    Nonfinite::Error
                },
                force: a.force,
                no_fsync: a.no_fsync,
                progress: !a.quiet && !a.out.json,
                read_mode: if a.no_mmap {
                    ReadMode::Read
                } else {
                    ReadMode::Map
                },
                budget: match (a.target_bpw, a.target_size) {
                    (Some(x), _) => Some(Budget::Bpw(x)),
                    (None, Some(s)) => Some(Budget::Size(s)),
                    (None, None) => None,
                },
            };
            let report = if a.dry_run {
                dry_run(&a.input, a.output.as_deref(), &opts)?
            } else {
                let Some(out) = a.output.as_deref() else {
                    bail!("--output is required")
                };
                quantize(&a.input, out, &opts)?
            };
            if let Some(path) = &a.report {
                write_html(path, &ChartData::from(&report))?;
            }
            if a.out.json {
                print_json(&report)?;
            } else {
                print!("{}", report.render(a.top));
            }
            Ok(0)
        }
        Command::Dequantize(a) => {
            let s = dequantize(
                &a.input,
                &a.output,
                &DequantizeOptions {
                    dtype: a.dtype,
                    threads: a.threads,
                    force: a.force,
                    progress: !a.quiet && !a.out.json,
                },
            )?;
            if a.out.json {
                print_json(&s)?;
            } else {
                println!(
                    "restored {} tensor(s), copied {}; wrote {} ({})",
                    s.tensors_restored,
                    s.tensors_copied,
                    s.outputs.join(", "),
                    shrinkray::units::bytes(s.bytes_written)
                );
            }
            Ok(0)
        }
        Command::Verify(a) => {
            let r = verify(
                &a.original,
                &a.packed,
                &VerifyOptions {
                    threads: a.threads,
                    max_rel_error: a.max_rel_error,
                    min_ratio: a.min_ratio,
                },
            )?;
            if let Some(path) = &a.report {
                write_html(path, &ChartData::from(&r))?;
            }
            if a.out.json {
                print_json(&r)?;
            } else {
                print!("{}", r.render(a.top));
            }
            Ok(if r.passed { 0 } else { 3 })
        }
        Command::Bench(a) => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let mut threads = if a.threads.is_empty() {
                vec![1, cpus]
            } else {
                a.threads
            };
            threads.dedup();
            if threads.contains(&0) {
                bail!("--threads must be at least 1");
            }
            let opts = BenchOptions {
                size: a.size,
                schemes: if a.schemes.is_empty() {
                    Scheme::ALL.to_vec()
                } else {
                    a.schemes
                        .iter()
                        .filter_map(|s| match s {
                            AnyScheme::Packed(s) => Some(*s),
                            AnyScheme::Ggml(_) => None,
                        })
                        .collect()
                },
                search: a.search,
                double_quant: a.scale_bits.map(|bits| DoubleQuant { bits, groups: 8 }),
                ggml: if a.schemes.is_empty() {
                    GgmlType::ALL.to_vec()
                } else {
                    a.schemes
                        .iter()
                        .filter_map(|s| match s {
                            AnyScheme::Ggml(t) => Some(*t),
                            AnyScheme::Packed(_) => None,
                        })
                        .collect()
                },
                groups: if a.groups.is_empty() {
                    vec![64]
                } else {
                    a.groups
                },
                dtypes: if a.dtypes.is_empty() {
                    vec![Dtype::F32, Dtype::BF16, Dtype::F16]
                } else {
                    a.dtypes
                },
                isas: if a.isas.is_empty() {
                    Isa::available()
                } else {
                    a.isas
                },
                threads: threads.clone(),
                reps: a.reps.max(1),
            };
            if opts.groups.contains(&0) {
                bail!("--group-size must be at least 1");
            }
            let runs = if a.skip_kernels {
                0
            } else {
                opts.dtypes.len()
                    * opts.threads.len()
                    * ((opts.schemes.len() * opts.groups.len() + opts.ggml.len()) * opts.isas.len()
                        + usize::from(opts.search) * opts.schemes.len() * opts.groups.len())
            };
            let pb = shrinkray::progress_bar(runs as u64, !a.out.json, "bench");
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:10} [{bar:40}] {pos}/{len} eta {eta}",
                )
                .expect("valid template"),
            );
            let mut report = if a.skip_kernels {
                bench::BenchReport {
                    cpu: bench::cpu_name(),
                    cpus,
                    isas_available: Isa::available()
                        .iter()
                        .map(|i| i.name().to_string())
                        .collect(),
                    reps: opts.reps,
                    rows: Vec::new(),
                    end_to_end: None,
                }
            } else {
                bench::run(&opts, &pb)?
            };
            pb.finish_and_clear();
            let e2e_threads = threads.iter().copied().max();
            let scratch;
            let file = match (&a.file, a.e2e) {
                (Some(f), _) => Some(f.clone()),
                (None, true) => {
                    scratch = bench::scratch_dir("checkpoint")?;
                    Some(bench::synthetic_checkpoint(&scratch.path, a.e2e_size)?)
                }
                (None, false) => None,
            };
            if let Some(f) = file {
                report.end_to_end = Some(bench::end_to_end(
                    &f,
                    Scheme::Int4Asym,
                    64,
                    e2e_threads,
                    a.reps,
                )?);
            }
            if a.out.json {
                print_json(&report)?;
            } else {
                print!("{}", report.render());
            }
            Ok(0)
        }
        Command::Plan(a) => {
            if !(0.0..1.0).contains(&a.headroom) {
                bail!("--headroom must be in [0, 1)");
            }
            if a.row_length == 0 || a.gpu_mem.contains(&0) {
                bail!("--row-length and --gpu-mem must be positive");
            }
            let subject = match (&a.checkpoint, a.params) {
                (Some(p), _) => Subject::Checkpoint(p),
                (None, Some(n)) => Subject::Params {
                    params: n,
                    source_bytes_per_param: (a.source_dtype.bitsize() / 8) as u64,
                    row_length: a.row_length,
                },
                (None, None) => bail!("give a checkpoint or --params"),
            };
            let opts = EstimateOptions {
                gpu_mem: if a.gpu_mem.is_empty() {
                    vec![80_000_000_000, 24_000_000_000]
                } else {
                    a.gpu_mem
                },
                headroom: a.headroom,
                active: a.active,
            };
            let e = estimate(&subject, &opts)?;
            if a.out.json {
                print_json(&e)?;
            } else {
                print!("{}", e.render());
            }
            Ok(0)
        }
        Command::Inspect(a) => {
            let i = inspect(&a.path)?;
            if a.out.json {
                print_json(&i)?;
            } else {
                print!("{}", i.render());
            }
            Ok(0)
        }
    }
}
