//! The quantize report: for every tensor and in total, the naive, predicted
//! and actual sizes and ratios, where the gap to the naive figure goes, and
//! the reconstruction error. Rendered as a table for people or as JSON.

use serde::Serialize;
use shrinkray_kernels::ErrorStats;

use crate::engine::TensorOutcome;
use crate::plan::{Action, ByteTotals, PieceKind, Plan};
use crate::units::{bytes, count, db, sci, Table};
use shrinkray_kernels::ggml::GgmlType;

/// Reconstruction error of one tensor or of the whole run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorSummary {
    /// Root-mean-square error.
    pub rmse: f64,
    /// Largest absolute error.
    pub max_abs_error: f64,
    /// ‖W − Ŵ‖ / ‖W‖.
    pub rel_error: f64,
    /// 10·log10(‖W‖² / ‖W − Ŵ‖²); `null` when the reconstruction is exact.
    pub sqnr_db: Option<f64>,
    /// NaN/Inf inputs quantized as 0 (`--nonfinite zero`).
    pub nonfinite: u64,
    /// Non-constant groups whose scale was too small for the scale dtype (stored as 0).
    pub zeroed_groups: u64,
}

impl ErrorSummary {
    /// The one-line summary printed under report tables.
    pub fn line(&self) -> String {
        format!(
            "RMSE {}, max abs {}, relative {}, SQNR {} dB",
            sci(self.rmse),
            sci(self.max_abs_error),
            sci(self.rel_error),
            db(self.sqnr_db.unwrap_or(f64::INFINITY))
        )
    }
}

/// Indices of the rows a table shows: all in order when there are at most
/// `top`, else the `top` with the largest relative error. Also says whether rows were cut.
pub fn worst_first(errors: &[Option<&ErrorSummary>], top: usize) -> (Vec<usize>, bool) {
    let mut idx: Vec<usize> = (0..errors.len()).collect();
    let cut = idx.len() > top;
    if cut {
        let key = |i: &usize| errors[*i].map_or(f64::NEG_INFINITY, |e| e.rel_error);
        idx.sort_by(|a, b| key(b).total_cmp(&key(a)));
        idx.truncate(top);
    }
    (idx, cut)
}

impl From<&ErrorStats> for ErrorSummary {
    fn from(s: &ErrorStats) -> Self {
        let sqnr = s.sqnr_db();
        ErrorSummary {
            rmse: s.rmse(),
            max_abs_error: s.max_abs_err as f64,
            rel_error: s.rel_error(),
            sqnr_db: sqnr.is_finite().then_some(sqnr),
            nonfinite: s.nonfinite,
            zeroed_groups: s.zeroed_groups,
        }
    }
}

/// Output bytes of one tensor by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PieceBytes {
    /// Packed codes.
    pub codes: u64,
    /// Scales.
    pub scales: u64,
    /// Mins.
    pub mins: u64,
    /// A kept tensor's bytes.
    pub kept: u64,
}

/// One row of the per-tensor report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorRow {
    /// Tensor name.
    pub name: String,
    /// The input file it came from.
    pub file: String,
    /// Input dtype.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements.
    pub params: u64,
    /// `int8`, `int8-asym`, `int4`, `int4-asym` or `keep`.
    pub action: String,
    /// Why it was kept.
    pub keep_reason: Option<String>,
    /// Group size (quantized tensors).
    pub group_size: Option<usize>,
    /// Scale dtype (quantized tensors).
    pub scale_dtype: Option<String>,
    /// Input data bytes.
    pub input_bytes: u64,
    /// Output bytes from the plan.
    pub output_bytes: u64,
    /// Output bytes by kind.
    pub bytes: PieceBytes,
    /// Output bits per parameter.
    pub bits_per_weight: f64,
    /// Source bits / code bits.
    pub ratio_naive: f64,
    /// Input bytes / planned output bytes.
    pub ratio_predicted: f64,
    /// Input bytes / bytes written (absent in a dry run).
    pub ratio_actual: Option<f64>,
    /// Reconstruction error (quantized tensors, absent in a dry run).
    pub error: Option<ErrorSummary>,
    /// Round-to-nearest's error on this tensor (`--compare rtn`).
    pub rtn_error: Option<ErrorSummary>,
}

/// Where the bytes between the naive figure and the real output go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Overhead {
    /// Scales.
    pub scales: u64,
    /// Mins.
    pub mins: u64,
    /// Kept tensors beyond what they would take at the code bit width.
    pub kept: u64,
    /// File headers (length prefix, JSON, padding).
    pub headers: u64,
    /// Unused high nibbles of int4 rows with an odd length.
    pub padding: u64,
}

/// Whole-run figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Totals {
    /// Tensors.
    pub tensors: usize,
    /// Quantized tensors.
    pub tensors_quantized: usize,
    /// Parameters.
    pub params: u64,
    /// Parameters of quantized tensors.
    pub params_quantized: u64,
    /// Size of the input safetensors files.
    pub input_bytes: u64,
    /// Input tensor data bytes.
    pub input_tensor_bytes: u64,
    /// Every parameter at its code bit width, nothing else.
    pub output_bytes_naive: u64,
    /// From the plan: codes + scales + mins + kept + headers.
    pub output_bytes_predicted: u64,
    /// Size of the written files (absent in a dry run).
    pub output_bytes_actual: Option<u64>,
    /// input tensor bytes / naive bytes.
    pub ratio_naive: f64,
    /// input bytes / predicted bytes.
    pub ratio_predicted: f64,
    /// input bytes / actual bytes.
    pub ratio_actual: Option<f64>,
    /// Output bits per parameter (predicted bytes × 8 / params).
    pub bits_per_weight: f64,
    /// predicted − naive, by cause.
    pub overhead: Overhead,
    /// Error over all quantized parameters.
    pub error: Option<ErrorSummary>,
    /// Round-to-nearest's error over the same packed tensors (`--compare rtn`).
    pub rtn_error: Option<ErrorSummary>,
}

/// The full report of a quantize run (or dry run).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The input path.
    pub input: String,
    /// Output files (empty in a dry run).
    pub outputs: Vec<String>,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Default scheme.
    pub scheme: String,
    /// Default group size (`row` or a number).
    pub group_size: String,
    /// Scale dtype.
    pub scale_dtype: String,
    /// How scales and mins were chosen (`rtn` or `search`).
    pub method: String,
    /// Double quantization (format version 2): bits per scale and min code, or `null`.
    pub scale_bits: Option<u32>,
    /// Double quantization: groups per super-group, or `null`.
    pub super_group: Option<usize>,
    /// With `--target-bpw`: how the budget was allocated, and why.
    pub allocation: Option<crate::allocate::Allocation>,
    /// The kernel path used.
    pub isa: String,
    /// Worker threads.
    pub threads: usize,
    /// Whole-run figures.
    pub totals: Totals,
    /// One row per tensor, in checkpoint order.
    pub tensors: Vec<TensorRow>,
    /// Wall time of the run in seconds (absent in a dry run).
    pub elapsed_s: Option<f64>,
    /// Where that time went (absent in a dry run).
    pub phases: Option<crate::engine::Phases>,
    /// Input bytes per second over the run, in GB/s (10⁹ bytes).
    pub throughput_gb_s: Option<f64>,
    /// Peak resident memory of the process (Linux `VmHWM`), absent in a dry run.
    pub peak_rss_bytes: Option<u64>,
    /// Things the user should know.
    pub warnings: Vec<String>,
}

/// What a run measured, for [`build`].
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// Where the time went.
    pub phases: crate::engine::Phases,
    /// Per-tensor outcomes, in plan order.
    pub outcomes: Vec<TensorOutcome>,
    /// The files written.
    pub outputs: Vec<String>,
    /// Their sizes on disk.
    pub actual_bytes: u64,
    /// Seconds.
    pub elapsed_s: f64,
}

/// Builds the report of `plan` over input files of `input_bytes`; `measured` is `None` for a dry run.
pub fn build(
    input: &str,
    input_bytes: u64,
    plan: &Plan,
    shard_names: &[String],
    measured: Option<&Measured>,
    isa: &str,
    threads: usize,
) -> Report {
    let bt = ByteTotals::of(plan);
    let default_bits = plan.rules.default_bits();
    let mut rows = Vec::new();
    let mut all = ErrorStats::default();
    let mut overhead = Overhead {
        scales: bt.scales,
        mins: bt.mins,
        headers: bt.headers,
        ..Default::default()
    };
    let (mut naive_codes_bits, mut naive_kept_bits) = (0u128, 0u128);
    let mut warnings = Vec::new();
    let mut all_rtn = ErrorStats::default();
    for (i, (si, t)) in plan
        .shards
        .iter()
        .enumerate()
        .flat_map(|(si, s)| s.tensors.iter().map(move |t| (si, t)))
        .enumerate()
    {
        let outcome = measured.map(|m| m.outcomes[i]);
        let out = t.out_bytes();
        let input_bytes = t.entry.nbytes() as u64;
        let (action, keep_reason, group_size, scale_dtype, bits) = match &t.action {
            Action::Quantize(f) => {
                naive_codes_bits += t.params() as u128 * f.scheme.bits() as u128;
                (
                    match f.dq {
                        None => f.scheme.name().to_string(),
                        Some(d) => format!("{} dq{}/{}", f.scheme, d.bits, d.groups),
                    },
                    None,
                    Some(f.group),
                    Some(f.scale_dtype.name().to_string()),
                    f.scheme.bits(),
                )
            }
            Action::Ggml(ty) => {
                naive_codes_bits += t.params() as u128 * ty.bits() as u128;
                (
                    ty.name().to_string(),
                    None,
                    Some(GgmlType::BLOCK),
                    Some("F16".to_string()),
                    ty.bits(),
                )
            }
            Action::Mlx(m) => {
                naive_codes_bits += t.params() as u128 * m.bits as u128;
                (
                    format!("mlx-int{}", m.bits),
                    None,
                    Some(m.group),
                    Some(m.dtype.name().to_string()),
                    m.bits,
                )
            }
            Action::Keep(r) => {
                naive_kept_bits += t.params() as u128 * default_bits as u128;
                (
                    "keep".to_string(),
                    Some(r.to_string()),
                    None,
                    None,
                    default_bits,
                )
            }
        };
        let stats = outcome.and_then(|o| o.stats);
        if let Some(s) = &stats {
            all.merge(s, 0);
            if s.zeroed_groups > 0 && matches!(t.action, Action::Ggml(_)) {
                warnings.push(format!(
                    "{}: {} block(s) have a scale below F16's range: stored as 0, they decode to 0",
                    t.entry.name, s.zeroed_groups
                ));
            } else if s.zeroed_groups > 0 {
                warnings.push(format!(
                    "{}: {} group(s) span less than ~1e-37 (f32's subnormal range): stored with a zero scale, they decode to their min (or 0)",
                    t.entry.name, s.zeroed_groups
                ));
            }
            if s.nonfinite > 0 {
                warnings.push(format!(
                    "{}: {} NaN/Inf value(s) were quantized as 0 (--nonfinite zero)",
                    t.entry.name, s.nonfinite
                ));
            }
        }
        let ratio = |o: u64| {
            if o == 0 {
                f64::NAN
            } else {
                input_bytes as f64 / o as f64
            }
        };
        rows.push(TensorRow {
            name: t.entry.name.clone(),
            file: shard_names[si].clone(),
            dtype: t.entry.dtype.to_string(),
            shape: t.entry.shape.clone(),
            params: t.params(),
            action,
            keep_reason,
            group_size,
            scale_dtype,
            input_bytes,
            output_bytes: out,
            bytes: PieceBytes {
                codes: t.bytes_of(PieceKind::Codes),
                scales: t.bytes_of(PieceKind::Scales),
                mins: t.bytes_of(PieceKind::Mins),
                kept: t.bytes_of(PieceKind::Kept),
            },
            bits_per_weight: if t.params() == 0 {
                0.0
            } else {
                out as f64 * 8.0 / t.params() as f64
            },
            ratio_naive: t.entry.dtype.bitsize() as f64 / bits as f64,
            ratio_predicted: ratio(out),
            ratio_actual: outcome.map(|o| ratio(o.written)),
            error: stats.as_ref().map(ErrorSummary::from),
            rtn_error: outcome.and_then(|o| o.rtn).map(|r| {
                all_rtn.merge(&r, 0);
                ErrorSummary::from(&r)
            }),
        });
    }
    let naive_codes = naive_codes_bits.div_ceil(8) as u64;
    let naive_kept = naive_kept_bits.div_ceil(8) as u64;
    overhead.padding = bt.codes - naive_codes;
    overhead.kept = bt.kept.saturating_sub(naive_kept);
    let naive = naive_codes + naive_kept;
    let predicted = plan.predicted_bytes();
    let actual = measured.map(|m| m.actual_bytes);
    let div = |a: u64, b: u64| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    let any_quantized = bt.params_quantized > 0;
    let group_size = if plan.is_gguf() {
        GgmlType::BLOCK.to_string()
    } else {
        plan.rules.group.to_string()
    };
    Report {
        input: input.to_string(),
        outputs: measured.map(|m| m.outputs.clone()).unwrap_or_default(),
        dry_run: measured.is_none(),
        scheme: plan.rules.scheme_name().into(),
        group_size,
        scale_dtype: if plan.is_gguf() {
            "F16".into()
        } else if plan.rules.mlx {
            "weight-dtype".into()
        } else {
            plan.rules.scale_dtype.name().into()
        },
        isa: isa.into(),
        threads,
        totals: Totals {
            tensors: rows.len(),
            tensors_quantized: rows.iter().filter(|r| r.action != "keep").count(),
            params: bt.params,
            params_quantized: bt.params_quantized,
            input_bytes,
            input_tensor_bytes: bt.input_tensor_bytes,
            output_bytes_naive: naive,
            output_bytes_predicted: predicted,
            output_bytes_actual: actual,
            ratio_naive: div(bt.input_tensor_bytes, naive),
            ratio_predicted: div(input_bytes, predicted),
            ratio_actual: actual.map(|a| div(input_bytes, a)),
            bits_per_weight: div(predicted * 8, bt.params),
            overhead,
            error: (measured.is_some() && any_quantized).then(|| ErrorSummary::from(&all)),
            rtn_error: (plan.rules.compare_rtn && all_rtn.count > 0)
                .then(|| ErrorSummary::from(&all_rtn)),
        },
        method: plan.rules.optimize.name().into(),
        scale_bits: plan.rules.double_quant.map(|d| d.bits),
        super_group: plan.rules.double_quant.map(|d| d.groups),
        allocation: None,
        tensors: rows,
        elapsed_s: measured.map(|m| m.elapsed_s),
        phases: measured.map(|m| m.phases),
        throughput_gb_s: measured.map(|m| input_bytes as f64 / m.elapsed_s.max(1e-9) / 1e9),
        peak_rss_bytes: measured.and_then(|_| peak_rss()),
        warnings,
    }
}

/// The peak resident set size of this process so far (`VmHWM`; Linux only).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

fn ratio_cell(r: Option<f64>) -> String {
    match r {
        Some(r) if r.is_finite() => format!("{r:.2}x"),
        _ => "-".into(),
    }
}

/// Renders a shape as `4096×11008` (`scalar` for `[]`).
pub fn shape_str(shape: &[usize]) -> String {
    if shape.is_empty() {
        "scalar".into()
    } else {
        shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("×")
    }
}

impl Report {
    /// The human-readable report; shows at most `top` tensors (worst relative error first when cut).
    pub fn render(&self, top: usize) -> String {
        let mut out = String::new();
        let t = &self.totals;
        out.push_str(&format!(
            "{} {}  ({}, {}; kernels: {}; {} thread{})\n\n",
            if self.dry_run {
                "plan for"
            } else {
                "quantized"
            },
            self.input,
            match (&self.allocation, self.scale_bits, self.super_group) {
                (Some(a), _, _) => format!(
                    "formats allocated for {}, {} scale factors",
                    a.target, self.scale_dtype
                ),
                (None, Some(b), Some(g)) => format!(
                    "default {}, group {}, {b}-bit scale codes with {} factors per {g} groups",
                    self.scheme, self.group_size, self.scale_dtype
                ),
                _ => format!(
                    "default {}, group {}, {} scales",
                    self.scheme, self.group_size, self.scale_dtype
                ),
            },
            if self.method == "search" {
                "error-minimising search"
            } else {
                "round to nearest"
            },
            self.isa,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        ));
        let errors: Vec<_> = self.tensors.iter().map(|r| r.error.as_ref()).collect();
        let (idx, cut) = worst_first(&errors, top);
        let compared = self.tensors.iter().any(|r| r.rtn_error.is_some());
        let mut head = vec![
            "tensor",
            "shape",
            "dtype",
            "stored as",
            "params",
            "in",
            "out",
            "bpw",
            "ratio",
            "rel err",
            "SQNR dB",
            "max abs",
        ];
        if compared {
            head.push("RTN rel err");
        }
        let mut table = Table::new(&head);
        for &i in &idx {
            let r = &self.tensors[i];
            let stored = match (&r.keep_reason, r.group_size) {
                (Some(why), _) => format!("keep ({why})"),
                (None, Some(g)) => match r.action.split_once(' ') {
                    Some((scheme, dq)) => format!("{scheme} g{g} {dq}"),
                    None => format!("{} g{g}", r.action),
                },
                _ => r.action.clone(),
            };
            let e = r.error.as_ref();
            table.row(
                vec![
                    r.name.clone(),
                    shape_str(&r.shape),
                    r.dtype.clone(),
                    stored,
                    count(r.params),
                    bytes(r.input_bytes),
                    bytes(r.output_bytes),
                    format!("{:.2}", r.bits_per_weight),
                    ratio_cell(r.ratio_actual.or(Some(r.ratio_predicted))),
                    e.map_or("-".into(), |e| sci(e.rel_error)),
                    e.map_or("-".into(), |e| db(e.sqnr_db.unwrap_or(f64::INFINITY))),
                    e.map_or("-".into(), |e| sci(e.max_abs_error)),
                ]
                .into_iter()
                .chain(compared.then(|| {
                    r.rtn_error
                        .as_ref()
                        .map_or("-".into(), |e| sci(e.rel_error))
                }))
                .collect(),
            );
        }
        out.push_str(&table.render());
        if cut {
            out.push_str(&format!(
                "({} of {} tensors shown, worst relative error first; --top N shows more)\n",
                idx.len(),
                self.tensors.len()
            ));
        }
        out.push('\n');
        if let Some(a) = &self.allocation {
            out.push_str(&a.render(top));
            out.push('\n');
        }

        let mut sizes = Table::new(&["size", "bytes", "", "ratio", "what it counts"]);
        sizes.row(vec![
            "input".into(),
            t.input_bytes.to_string(),
            bytes(t.input_bytes),
            "".into(),
            format!(
                "{} tensors, {} params ({} quantized)",
                t.tensors,
                count(t.params),
                count(t.params_quantized)
            ),
        ]);
        sizes.row(vec![
            "naive".into(),
            t.output_bytes_naive.to_string(),
            bytes(t.output_bytes_naive),
            ratio_cell(Some(t.ratio_naive)),
            "every parameter at its code bits, nothing else".into(),
        ]);
        sizes.row(vec![
            "predicted".into(),
            t.output_bytes_predicted.to_string(),
            bytes(t.output_bytes_predicted),
            ratio_cell(Some(t.ratio_predicted)),
            format!(
                "codes + scales + mins + kept tensors + headers ({:.3} bpw)",
                t.bits_per_weight
            ),
        ]);
        if let Some(a) = t.output_bytes_actual {
            let same = if a == t.output_bytes_predicted {
                "bytes on disk: equal to the prediction".to_string()
            } else {
                format!(
                    "bytes on disk: DIFFERS from the prediction by {}",
                    a as i128 - t.output_bytes_predicted as i128
                )
            };
            sizes.row(vec![
                "actual".into(),
                a.to_string(),
                bytes(a),
                ratio_cell(t.ratio_actual),
                same,
            ]);
        }
        out.push_str(&sizes.render());
        let o = &t.overhead;
        let whole = t.output_bytes_predicted;
        let gap = whole.saturating_sub(t.output_bytes_naive);
        out.push_str(&format!(
            "gap to naive: {} ({} of the output) = scales {} ({}) + mins {} ({}) + kept tensors {} ({}) + headers {} ({}) + int4 row padding {} ({})\n",
            bytes(gap),
            pct(gap, whole),
            bytes(o.scales),
            pct(o.scales, whole),
            bytes(o.mins),
            pct(o.mins, whole),
            bytes(o.kept),
            pct(o.kept, whole),
            bytes(o.headers),
            pct(o.headers, whole),
            bytes(o.padding),
            pct(o.padding, whole),
        ));
        if let Some(e) = &t.error {
            out.push_str(&format!(
                "error over all quantized parameters: {}\n",
                e.line()
            ));
        }
        if let (Some(e), Some(r)) = (&t.error, &t.rtn_error) {
            out.push_str(&format!(
                "round to nearest on the same tensors: {}\n{} vs round to nearest: RMSE {:+.1}%\n",
                r.line(),
                self.method,
                100.0 * (e.rmse / r.rmse - 1.0)
            ));
        }
        if let (Some(s), Some(g)) = (self.elapsed_s, self.throughput_gb_s) {
            let rss = self
                .peak_rss_bytes
                .map(|r| format!(", peak memory {}", bytes(r)))
                .unwrap_or_default();
            let split = self
                .phases
                .map(|p| {
                    format!(
                        " (setup {:.2}, read + quantize {:.2}, write {:.2}, fsync + rename {:.2})",
                        p.setup_s, p.read_quantize_s, p.write_s, p.sync_s
                    )
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "time {s:.2} s{split}, {g:.2} GB/s of input{rss}\n"
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        if !self.outputs.is_empty() {
            out.push_str(&format!("wrote {}\n", self.outputs.join(", ")));
        }
        out
    }
}
