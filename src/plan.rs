//! The plan: what happens to every tensor, and the exact bytes of every
//! output file, decided from the checkpoint's headers alone.
//!
//! Because the plan knows every output size before any data is read, the
//! writer emits the final header first and `--dry-run` predicts the output
//! of a checkpoint of any size in milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use regex::Regex;
use safetensors::Dtype;
use shrinkray_kernels::{QuantFormat, ScaleDtype, Scheme};

use crate::checkpoint::{is_quantizable, Checkpoint, TensorEntry};
use crate::format::{
    layout, mins_name, qweight_name, scales_name, FileLayout, OutTensor, PackedMeta, PackedTensor,
    FORMAT_VERSION, METADATA_KEY,
};

/// Elements per group: a fixed count, or one group per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupSize {
    /// `g` elements per group (the last group of a row may be shorter).
    Fixed(usize),
    /// One group per row (per-channel), `g = K`.
    Row,
}

impl FromStr for GroupSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "row" {
            return Ok(GroupSize::Row);
        }
        match s.parse::<usize>() {
            Ok(g) if g > 0 => Ok(GroupSize::Fixed(g)),
            _ => Err(format!(
                "group size `{s}` is not a positive integer or `row`"
            )),
        }
    }
}

impl fmt::Display for GroupSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupSize::Fixed(g) => write!(f, "{g}"),
            GroupSize::Row => f.write_str("row"),
        }
    }
}

/// Parses a scheme name for the command line.
pub fn parse_scheme(s: &str) -> Result<Scheme, String> {
    Scheme::from_name(s).ok_or_else(|| {
        format!("unknown scheme `{s}` (expected int8, int8-asym, int4 or int4-asym)")
    })
}

/// `REGEX=SCHEME[:GROUP]`: tensors matching REGEX get another scheme.
#[derive(Clone, Debug)]
pub struct Override {
    /// Matched against tensor names (anywhere in the name; anchor with `^…$`).
    pub pattern: Regex,
    /// The scheme for matching tensors.
    pub scheme: Scheme,
    /// Their group size (the default group size when absent).
    pub group: Option<GroupSize>,
}

impl FromStr for Override {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (re, spec) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("override `{s}` is not REGEX=SCHEME[:GROUP]"))?;
        let (scheme, group) = match spec.split_once(':') {
            Some((a, b)) => (a, Some(b.parse::<GroupSize>()?)),
            None => (spec, None),
        };
        Ok(Override {
            pattern: Regex::new(re).map_err(|e| format!("override `{s}`: bad regex: {e}"))?,
            scheme: parse_scheme(scheme)?,
            group,
        })
    }
}

/// The rules that turn a checkpoint into a plan.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The default scheme.
    pub scheme: Scheme,
    /// The default group size.
    pub group: GroupSize,
    /// The dtype of scales and mins.
    pub scale_dtype: ScaleDtype,
    /// Tensors matching any of these are kept (this wins over overrides).
    pub keep: Vec<Regex>,
    /// Per-tensor schemes; the last matching one wins.
    pub overrides: Vec<Override>,
    /// Tensors whose scales and mins are stored in F32 whatever `scale_dtype`
    /// says: a first pass found groups beyond the range of `scale_dtype`.
    pub wide_scales: BTreeSet<String>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            scheme: Scheme::Int4Asym,
            group: GroupSize::Fixed(64),
            scale_dtype: ScaleDtype::F16,
            keep: Vec::new(),
            overrides: Vec::new(),
            wide_scales: BTreeSet::new(),
        }
    }
}

/// Why a tensor is copied unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// Its dtype is not F32, F16 or BF16.
    NotFloat,
    /// It has no elements.
    Empty,
    /// It is a scalar (shape `[]`).
    Scalar,
    /// It has one dimension (norms, biases): the default rule keeps those.
    OneDim,
    /// It matches a `--keep` pattern.
    Matched(String),
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::NotFloat => f.write_str("not float"),
            KeepReason::Empty => f.write_str("empty"),
            KeepReason::Scalar => f.write_str("scalar"),
            KeepReason::OneDim => f.write_str("1-D"),
            KeepReason::Matched(p) => write!(f, "--keep {p}"),
        }
    }
}

/// What happens to one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Copied byte for byte.
    Keep(KeepReason),
    /// Quantized in this format.
    Quantize(QuantFormat),
}

/// What an output tensor holds, for byte accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    /// A kept tensor's bytes.
    Kept,
    /// Packed codes.
    Codes,
    /// Scales.
    Scales,
    /// Mins.
    Mins,
}

/// One output tensor of a planned input tensor, with its place in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// What it holds.
    pub kind: PieceKind,
    /// Its output name.
    pub name: String,
    /// Absolute offset in the output file.
    pub offset: u64,
    /// Size in bytes.
    pub nbytes: u64,
}

/// The plan for one input tensor.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    /// The input tensor.
    pub entry: TensorEntry,
    /// What happens to it.
    pub action: Action,
    /// Rows (product of all but the last dimension).
    pub rows: usize,
    /// Elements per row (the last dimension).
    pub k: usize,
    /// Its output tensors: `[kept]` or `[codes, scales]` or `[codes, scales, mins]`.
    pub pieces: Vec<Piece>,
}

impl TensorPlan {
    /// Number of elements (parameters).
    pub fn params(&self) -> u64 {
        self.entry.numel() as u64
    }

    /// Output bytes of pieces of `kind`.
    pub fn bytes_of(&self, kind: PieceKind) -> u64 {
        self.pieces
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| p.nbytes)
            .sum()
    }

    /// All output bytes of this tensor.
    pub fn out_bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.nbytes).sum()
    }

    /// The quantization format, if the tensor is quantized.
    pub fn format(&self) -> Option<&QuantFormat> {
        match &self.action {
            Action::Quantize(f) => Some(f),
            Action::Keep(_) => None,
        }
    }
}

/// The plan for one output file.
#[derive(Clone, Debug)]
pub struct ShardPlan {
    /// Index of the input shard in the checkpoint.
    pub input: usize,
    /// The output file name (the input's, for sharded checkpoints).
    pub file_name: String,
    /// Header bytes and total size.
    pub layout: FileLayout,
    /// The tensors, in input file order.
    pub tensors: Vec<TensorPlan>,
}

/// The whole plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The rules it was made from.
    pub rules: Rules,
    /// One entry per output file.
    pub shards: Vec<ShardPlan>,
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct PlanError {
    /// The input file concerned.
    pub file: String,
    /// What is wrong.
    pub reason: String,
}

impl Plan {
    /// Plans `ckpt` under `rules`, from headers only.
    pub fn build(ckpt: &Checkpoint, rules: &Rules) -> Result<Plan, PlanError> {
        let mut shards = Vec::with_capacity(ckpt.shards.len());
        for (si, shard) in ckpt.shards.iter().enumerate() {
            let err = |reason: String| PlanError {
                file: shard.path.display().to_string(),
                reason,
            };
            if shard.metadata.contains_key(METADATA_KEY) {
                return Err(err(
                    "already a shrinkray packed file (dequantize it first to quantize again)"
                        .into(),
                ));
            }
            let mut meta = PackedMeta {
                format: FORMAT_VERSION,
                ..Default::default()
            };
            let mut outs = Vec::new();
            let mut tensors = Vec::with_capacity(shard.tensors.len());
            for t in &shard.tensors {
                let action = decide(t, rules);
                let k = t.shape.last().copied().unwrap_or(1);
                let rows = t.numel().checked_div(k).unwrap_or(0);
                let pieces = match &action {
                    Action::Keep(_) => {
                        outs.push(OutTensor {
                            name: t.name.clone(),
                            dtype: t.dtype,
                            shape: t.shape.clone(),
                            nbytes: t.nbytes() as u64,
                        });
                        vec![(PieceKind::Kept, t.name.clone())]
                    }
                    Action::Quantize(f) => {
                        meta.tensors
                            .insert(t.name.clone(), PackedTensor::new(f, t.dtype, &t.shape));
                        let lead = &t.shape[..t.shape.len() - 1];
                        let with_last = |n: usize| [lead, &[n]].concat();
                        let sdt = scale_safetensors_dtype(f.scale_dtype);
                        let cdt = if f.scheme == Scheme::Int8Sym {
                            Dtype::I8
                        } else {
                            Dtype::U8
                        };
                        let mut p = vec![
                            (
                                PieceKind::Codes,
                                qweight_name(&t.name),
                                cdt,
                                f.code_bytes_per_row(k),
                            ),
                            (
                                PieceKind::Scales,
                                scales_name(&t.name),
                                sdt,
                                f.scale_bytes_per_row(k),
                            ),
                        ];
                        if !f.scheme.symmetric() {
                            p.push((
                                PieceKind::Mins,
                                mins_name(&t.name),
                                sdt,
                                f.min_bytes_per_row(k),
                            ));
                        }
                        p.into_iter()
                            .map(|(kind, name, dtype, per_row)| {
                                let last = match kind {
                                    PieceKind::Codes => per_row,
                                    _ => f.groups_per_row(k),
                                };
                                outs.push(OutTensor {
                                    name: name.clone(),
                                    dtype,
                                    shape: with_last(last),
                                    nbytes: (rows * per_row) as u64,
                                });
                                (kind, name)
                            })
                            .collect()
                    }
                };
                tensors.push((t.clone(), action, rows, k, pieces));
            }
            let mut md = shard.metadata.clone();
            md.insert(METADATA_KEY.into(), meta.to_json());
            let layout = layout(&outs, &md).map_err(err)?;
            let mut at = 0;
            let tensors = tensors
                .into_iter()
                .map(|(entry, action, rows, k, names)| {
                    let pieces = names
                        .into_iter()
                        .map(|(kind, name)| {
                            let p = Piece {
                                kind,
                                name,
                                offset: layout.offsets[at],
                                nbytes: outs[at].nbytes,
                            };
                            at += 1;
                            p
                        })
                        .collect();
                    TensorPlan {
                        entry,
                        action,
                        rows,
                        k,
                        pieces,
                    }
                })
                .collect();
            shards.push(ShardPlan {
                input: si,
                file_name: shard.file_name.clone(),
                layout,
                tensors,
            });
        }
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for s in &shards {
            for p in s.tensors.iter().flat_map(|t| &t.pieces) {
                if let Some(other) = seen.insert(&p.name, &s.file_name) {
                    return Err(PlanError {
                        file: s.file_name.clone(),
                        reason: format!(
                            "output tensor `{}` would also be written to `{other}`",
                            p.name
                        ),
                    });
                }
            }
        }
        Ok(Plan {
            rules: rules.clone(),
            shards,
        })
    }

    /// Every tensor plan, in checkpoint order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorPlan> {
        self.shards.iter().flat_map(|s| s.tensors.iter())
    }

    /// Predicted total size of the output files in bytes.
    pub fn predicted_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.layout.total).sum()
    }

    /// Header bytes of all output files (length prefixes, JSON, padding).
    pub fn header_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.layout.header.len() as u64)
            .sum()
    }
}

/// Decides what happens to one tensor.
pub fn decide(t: &TensorEntry, rules: &Rules) -> Action {
    if let Some(p) = rules.keep.iter().find(|p| p.is_match(&t.name)) {
        return Action::Keep(KeepReason::Matched(p.as_str().to_string()));
    }
    if !is_quantizable(t.dtype) {
        return Action::Keep(KeepReason::NotFloat);
    }
    if t.shape.is_empty() {
        return Action::Keep(KeepReason::Scalar);
    }
    if t.numel() == 0 {
        return Action::Keep(KeepReason::Empty);
    }
    let (scheme, group) = match rules
        .overrides
        .iter()
        .rev()
        .find(|o| o.pattern.is_match(&t.name))
    {
        Some(o) => (o.scheme, o.group.unwrap_or(rules.group)),
        None if t.shape.len() < 2 => return Action::Keep(KeepReason::OneDim),
        None => (rules.scheme, rules.group),
    };
    let k = *t.shape.last().expect("not a scalar");
    Action::Quantize(QuantFormat {
        scheme,
        group: match group {
            GroupSize::Fixed(g) => g,
            GroupSize::Row => k,
        },
        scale_dtype: if rules.wide_scales.contains(&t.name) {
            ScaleDtype::F32
        } else {
            rules.scale_dtype
        },
    })
}

/// The safetensors dtype of stored scales.
pub fn scale_safetensors_dtype(d: ScaleDtype) -> Dtype {
    match d {
        ScaleDtype::F16 => Dtype::F16,
        ScaleDtype::BF16 => Dtype::BF16,
        ScaleDtype::F32 => Dtype::F32,
    }
}

/// Summary of a plan's bytes, used by reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteTotals {
    /// Parameters of all tensors.
    pub params: u64,
    /// Parameters of quantized tensors.
    pub params_quantized: u64,
    /// Input tensor data bytes.
    pub input_tensor_bytes: u64,
    /// Codes bytes.
    pub codes: u64,
    /// Scales bytes.
    pub scales: u64,
    /// Mins bytes.
    pub mins: u64,
    /// Kept tensors' bytes.
    pub kept: u64,
    /// Header bytes.
    pub headers: u64,
    /// What the naive claim says the output is: every parameter at its code bits, nothing else.
    pub naive: u64,
}

impl ByteTotals {
    /// Sums a plan.
    pub fn of(plan: &Plan) -> ByteTotals {
        let mut b = ByteTotals {
            headers: plan.header_bytes(),
            ..Default::default()
        };
        let mut naive_bits: u128 = 0;
        for t in plan.tensors() {
            b.params += t.params();
            b.input_tensor_bytes += t.entry.nbytes() as u64;
            b.codes += t.bytes_of(PieceKind::Codes);
            b.scales += t.bytes_of(PieceKind::Scales);
            b.mins += t.bytes_of(PieceKind::Mins);
            b.kept += t.bytes_of(PieceKind::Kept);
            let bits = match t.format() {
                Some(f) => {
                    b.params_quantized += t.params();
                    f.scheme.bits()
                }
                None => plan.rules.scheme.bits(),
            };
            naive_bits += t.params() as u128 * bits as u128;
        }
        b.naive = naive_bits.div_ceil(8) as u64;
        b
    }

    /// Total output bytes (codes + scales + mins + kept + headers).
    pub fn total(&self) -> u64 {
        self.codes + self.scales + self.mins + self.kept + self.headers
    }
}

/// Scale dtype by name for the command line.
pub fn parse_scale_dtype(s: &str) -> Result<ScaleDtype, String> {
    match s.to_ascii_lowercase().as_str() {
        "f16" => Ok(ScaleDtype::F16),
        "bf16" => Ok(ScaleDtype::BF16),
        "f32" => Ok(ScaleDtype::F32),
        _ => Err(format!(
            "unknown scale dtype `{s}` (expected f16, bf16 or f32)"
        )),
    }
}

/// Groups tensors of a plan by output file name (for the sharded index).
pub fn weight_map(plan: &Plan) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for s in &plan.shards {
        for t in &s.tensors {
            for p in &t.pieces {
                m.insert(p.name.clone(), s.file_name.clone());
            }
        }
    }
    m
}
