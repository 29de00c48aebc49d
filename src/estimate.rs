//! The `plan` operation: what a checkpoint, or a model of a given parameter
//! count, costs at each precision, before anything is quantized.
//!
//! For a checkpoint the quantized figures come from the same [`Plan`] that
//! `quantize` executes (headers only, default keep rules), so they are the
//! exact size `quantize` will write. For a bare parameter count they are the
//! format's arithmetic: codes plus one scale (and min) per group.

use std::path::Path;

use serde::Serialize;
use shrinkray_kernels::ggml::GgmlType;
use shrinkray_kernels::{QuantFormat, ScaleDtype, Scheme};

use crate::checkpoint::{is_quantizable, Checkpoint};
use crate::plan::{ByteTotals, GroupSize, Plan, Rules};
use crate::units::{count, Table};
use crate::Result;

/// What to estimate.
#[derive(Clone, Debug)]
pub enum Subject<'a> {
    /// A checkpoint on disk (headers are read, not data).
    Checkpoint(&'a Path),
    /// A parameter count, with the dtype it is stored in.
    Params {
        /// Total parameters.
        params: u64,
        /// Bytes per parameter of the source (2 for FP16/BF16, 4 for FP32).
        source_bytes_per_param: u64,
        /// Row length assumed for per-row grouping.
        row_length: u64,
    },
}

/// Options of `plan`.
#[derive(Clone, Debug)]
pub struct EstimateOptions {
    /// Accelerator memory sizes in bytes.
    pub gpu_mem: Vec<u64>,
    /// Fraction of each accelerator's memory kept free for activations and KV cache.
    pub headroom: f64,
    /// Parameters active per token (mixture-of-experts).
    pub active: Option<u64>,
}

/// How many accelerators of one size hold the weights.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuFit {
    /// Memory per accelerator, bytes.
    pub mem_bytes: u64,
    /// Memory per accelerator left for weights after the headroom, bytes.
    pub usable_bytes: u64,
    /// Accelerators needed: ceil(weights / usable).
    pub count: u64,
}

/// One precision.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EstimateRow {
    /// `FP32`, `FP16/BF16`, or a scheme with its group (`int4-asym g64`).
    pub format: String,
    /// Scheme (quantized rows).
    pub scheme: Option<String>,
    /// Group size (`row` or a number; quantized rows).
    pub group_size: Option<String>,
    /// Weight bytes: codes + scales + mins + kept tensors (+ headers for a checkpoint).
    pub bytes: u64,
    /// GB (10⁹ bytes).
    pub gb: f64,
    /// GiB (2³⁰ bytes).
    pub gib: f64,
    /// Parameters × bits / 8: the naive figure.
    pub naive_bytes: u64,
    /// bytes × 8 / parameters.
    pub bits_per_weight: f64,
    /// Source bytes / bytes.
    pub ratio_to_source: f64,
    /// Whether `bytes` is exactly what `quantize` writes (checkpoint, quantized rows).
    pub exact: bool,
    /// Accelerators needed, per memory size.
    pub gpus: Vec<GpuFit>,
    /// Weight bytes read per token for the active parameters (MoE), at this bpw.
    pub active_bytes: Option<u64>,
}

/// The estimate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Estimate {
    /// The checkpoint path, or `N parameters`.
    pub subject: String,
    /// Parameters.
    pub params: u64,
    /// Active parameters per token, when given.
    pub active_params: Option<u64>,
    /// Bytes of the source (checkpoint files, or params × source width).
    pub source_bytes: u64,
    /// The headroom fraction used for accelerator counts.
    pub headroom: f64,
    /// What the figures assume.
    pub notes: Vec<String>,
    /// One row per precision.
    pub rows: Vec<EstimateRow>,
}

/// The schemes and group sizes `plan` shows.
pub fn grid() -> Vec<(Scheme, GroupSize)> {
    let mut v = Vec::new();
    for s in [
        Scheme::Int8Sym,
        Scheme::Int8Asym,
        Scheme::Int4Sym,
        Scheme::Int4Asym,
    ] {
        for g in [
            GroupSize::Fixed(32),
            GroupSize::Fixed(64),
            GroupSize::Fixed(128),
            GroupSize::Row,
        ] {
            v.push((s, g));
        }
    }
    v
}

/// The row label of a quantized format: `int4 g64`, `int8-asym row`.
pub fn label(scheme: Scheme, group: GroupSize) -> String {
    match group {
        GroupSize::Fixed(g) => format!("{} g{g}", scheme.name()),
        GroupSize::Row => format!("{} row", scheme.name()),
    }
}

/// Estimates `subject` at every precision.
pub fn estimate(subject: &Subject<'_>, opts: &EstimateOptions) -> Result<Estimate> {
    let mut rows = Vec::new();
    let mut notes = vec![
        "GB = 10^9 bytes, GiB = 2^30 bytes".to_string(),
        format!(
            "accelerator counts keep {:.0}% of each device free for activations and KV cache: an assumption, not a measurement",
            opts.headroom * 100.0
        ),
    ];
    let (name, params, source_bytes) = match subject {
        Subject::Checkpoint(path) => {
            let ckpt = Checkpoint::open(path)?;
            let mut params = 0u64;
            let (mut float_params, mut other_bytes) = (0u64, 0u64);
            for (_, t) in ckpt.tensors() {
                params += t.numel() as u64;
                if is_quantizable(t.dtype) {
                    float_params += t.numel() as u64;
                } else {
                    other_bytes += t.nbytes() as u64;
                }
            }
            for (label, width) in [("FP32", 4u64), ("FP16/BF16", 2)] {
                rows.push(row(
                    label,
                    None,
                    None,
                    float_params * width + other_bytes,
                    params * width,
                    params,
                    false,
                ));
            }
            let gguf_input = ckpt.shards.iter().any(|s| s.gguf.is_some());
            // A GGUF input is written as GGUF: its rows are the GGUF block types.
            for ty in GgmlType::ALL.into_iter().filter(|_| gguf_input) {
                let rules = Rules {
                    gguf: Some(ty),
                    ..Rules::default()
                };
                let plan = Plan::build(&ckpt, &rules)?;
                rows.push(row(
                    ty.name(),
                    None,
                    Some(GroupSize::Fixed(GgmlType::BLOCK)),
                    plan.predicted_bytes(),
                    ByteTotals::of(&plan).naive,
                    params,
                    true,
                ));
            }
            for (scheme, group) in grid().into_iter().filter(|_| !gguf_input) {
                let rules = Rules {
                    scheme,
                    group,
                    scale_dtype: ScaleDtype::F16,
                    ..Rules::default()
                };
                let plan = Plan::build(&ckpt, &rules)?;
                let naive = ByteTotals::of(&plan).naive;
                rows.push(row(
                    &label(scheme, group),
                    Some(scheme),
                    Some(group),
                    plan.predicted_bytes(),
                    naive,
                    params,
                    true,
                ));
            }
            notes.push(if gguf_input {
                "quantized rows are the exact bytes `quantize` writes for this GGUF input (the tensors llama.cpp quantizes; the rest kept); FP rows count tensor bytes only"
                    .into()
            } else {
                "quantized rows are the exact bytes `quantize` writes with the default keep rules (1-D and non-float tensors kept) and F16 scales; FP rows count tensor bytes only"
                    .into()
            });
            (path.display().to_string(), params, ckpt.file_bytes())
        }
        Subject::Params {
            params,
            source_bytes_per_param,
            row_length,
        } => {
            let n = *params;
            for (label, width) in [("FP32", 4u64), ("FP16/BF16", 2)] {
                rows.push(row(label, None, None, n * width, n * width, n, false));
            }
            for (scheme, group) in grid() {
                let g = match group {
                    GroupSize::Fixed(g) => g as u64,
                    GroupSize::Row => *row_length,
                };
                let f = QuantFormat {
                    dq: None,
                    scheme,
                    group: g as usize,
                    scale_dtype: ScaleDtype::F16,
                };
                let per_group = if f.scheme.symmetric() { 2 } else { 4 };
                let naive = (n as u128 * scheme.bits() as u128).div_ceil(8) as u64;
                let bytes = naive + n.div_ceil(g) * per_group;
                rows.push(row(
                    &label(scheme, group),
                    Some(scheme),
                    Some(group),
                    bytes,
                    naive,
                    n,
                    false,
                ));
            }
            notes.push(format!(
                "from the parameter count alone: every parameter quantized, groups that divide rows evenly, F16 scales, per-row groups of {row_length}; a real checkpoint adds kept tensors (norms) and a header"
            ));
            (
                format!("{} parameters", count(n)),
                n,
                n * source_bytes_per_param,
            )
        }
    };
    for r in &mut rows {
        r.ratio_to_source = source_bytes as f64 / r.bytes.max(1) as f64;
        r.gpus = opts
            .gpu_mem
            .iter()
            .map(|&mem| {
                let usable = (mem as f64 * (1.0 - opts.headroom)).floor() as u64;
                GpuFit {
                    mem_bytes: mem,
                    usable_bytes: usable,
                    count: r.bytes.div_ceil(usable.max(1)),
                }
            })
            .collect();
        r.active_bytes = opts
            .active
            .map(|a| (a as f64 * r.bits_per_weight / 8.0).round() as u64);
    }
    if opts.active.is_some() {
        notes.push(
            "active bytes: the weights one token reads (active parameters × bits per weight / 8); all experts must still be held in memory"
                .into(),
        );
    }
    Ok(Estimate {
        subject: name,
        params,
        active_params: opts.active,
        source_bytes,
        headroom: opts.headroom,
        notes,
        rows,
    })
}

fn row(
    format: &str,
    scheme: Option<Scheme>,
    group: Option<GroupSize>,
    bytes: u64,
    naive: u64,
    params: u64,
    exact: bool,
) -> EstimateRow {
    EstimateRow {
        format: format.to_string(),
        scheme: scheme.map(|s| s.name().to_string()),
        group_size: group.map(|g| g.to_string()),
        bytes,
        gb: bytes as f64 / 1e9,
        gib: bytes as f64 / (1u64 << 30) as f64,
        naive_bytes: naive,
        bits_per_weight: bytes as f64 * 8.0 / params.max(1) as f64,
        ratio_to_source: 0.0,
        exact,
        gpus: Vec::new(),
        active_bytes: None,
    }
}

/// Parses a parameter count: `70B`, `8.03e9`, `405B`, `1.5T`, `350M`, `12000`.
pub fn parse_params(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        Some('B') | Some('G') => (&t[..t.len() - 1], 1e9),
        Some('T') => (&t[..t.len() - 1], 1e12),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("parameter count `{s}` is not a number (e.g. 70B, 8.03e9, 350M)"))?;
    let n = (v * mult).round();
    if !(1.0..=1e16).contains(&n) {
        return Err(format!("parameter count `{s}` is out of range"));
    }
    Ok(n as u64)
}

impl Estimate {
    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}: {} parameters{}, source {:.2} GB\n\n",
            self.subject.trim_end_matches(" parameters"),
            count(self.params),
            self.active_params
                .map(|a| format!(" ({} active per token)", count(a)))
                .unwrap_or_default(),
            self.source_bytes as f64 / 1e9
        );
        let mut head: Vec<String> = [
            "format",
            "bpw",
            "bytes",
            "GB",
            "GiB",
            "naive GB",
            "vs source",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(r) = self.rows.first() {
            for g in &r.gpus {
                head.push(format!("{:.0} GB GPUs", g.mem_bytes as f64 / 1e9));
            }
        }
        if self.active_params.is_some() {
            head.push("GB read/token".into());
        }
        let mut t = Table::new(&head);
        for r in &self.rows {
            let mut cells = vec![
                r.format.clone(),
                format!("{:.3}", r.bits_per_weight),
                r.bytes.to_string(),
                format!("{:.2}", r.gb),
                format!("{:.2}", r.gib),
                format!("{:.2}", r.naive_bytes as f64 / 1e9),
                format!("{:.2}x", r.ratio_to_source),
            ];
            cells.extend(r.gpus.iter().map(|g| g.count.to_string()));
            if let Some(a) = r.active_bytes {
                cells.push(format!("{:.2}", a as f64 / 1e9));
            }
            t.row(cells);
        }
        out.push_str(&t.render());
        out.push('\n');
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_parse() {
        assert_eq!(parse_params("70B"), Ok(70_000_000_000));
        assert_eq!(parse_params("8.03e9"), Ok(8_030_000_000));
        assert_eq!(parse_params("1.5T"), Ok(1_500_000_000_000));
        assert_eq!(parse_params("350M"), Ok(350_000_000));
        assert!(parse_params("lots").is_err());
        assert!(parse_params("0").is_err());
    }
}
