//! The command line: a thin clap layer over the library. Exit codes: 0 ok,
//! 1 error, 2 usage, 3 `verify` found the packed file wanting.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use regex::Regex;
use safetensors::Dtype;
use shrinkray::dequantize::{dequantize, DequantizeOptions};
use shrinkray::engine::Nonfinite;
use shrinkray::inspect::inspect;
use shrinkray::plan::{parse_scale_dtype, parse_scheme, GroupSize, Override, Rules};
use shrinkray::quantize::{dry_run, quantize, QuantizeOptions};
use shrinkray::verify::{verify, VerifyOptions};
use shrinkray_kernels::{ScaleDtype, Scheme};

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
    /// Default scheme: int8, int8-asym, int4, int4-asym.
    #[arg(long, default_value = "int4-asym", value_parser = parse_scheme)]
    pub scheme: Scheme,
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
    /// Tensors in the table (worst relative error first when there are more).
    #[arg(long, default_value_t = 30)]
    pub top: usize,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
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

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("serializing the report")?
    );
    Ok(())
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Quantize(a) => {
            let opts = QuantizeOptions {
                rules: Rules {
                    scheme: a.scheme,
                    group: a.group_size,
                    scale_dtype: a.scale_dtype,
                    keep: a.keep,
                    overrides: a.overrides,
                },
                threads: a.threads,
                nonfinite: if a.nonfinite == "zero" {
                    Nonfinite::Zero
                } else {
                    Nonfinite::Error
                },
                force: a.force,
                progress: !a.quiet && !a.out.json,
            };
            let report = if a.dry_run {
                dry_run(&a.input, a.output.as_deref(), &opts)?
            } else {
                let Some(out) = a.output.as_deref() else {
                    bail!("--output is required")
                };
                quantize(&a.input, out, &opts)?
            };
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
            if a.out.json {
                print_json(&r)?;
            } else {
                print!("{}", r.render(a.top));
            }
            Ok(if r.passed { 0 } else { 3 })
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
