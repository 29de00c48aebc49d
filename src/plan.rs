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
use shrinkray_kernels::ggml::GgmlType;
use shrinkray_kernels::mlx::MlxFormat;
use shrinkray_kernels::{DoubleQuant, Method, QuantFormat, ScaleDtype, Scheme};

use crate::checkpoint::{is_quantizable, Checkpoint, TensorEntry};
use crate::format::{
    layout, mins_name, qweight_name, scales_name, super_mins_name, super_scales_name, FileLayout,
    OutTensor, PackedMeta, PackedTensor, FORMAT_VERSION, METADATA_KEY,
};
use crate::gguf::{self, TensorType};

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

/// A scheme of either output format: shrinkray's packed safetensors, or a GGUF block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyScheme {
    /// `int8`, `int8-asym`, `int4`, `int4-asym` (packed safetensors).
    Packed(Scheme),
    /// `q8_0`, `q4_0`, `q4_1` (GGUF).
    Ggml(GgmlType),
}

impl AnyScheme {
    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            AnyScheme::Packed(s) => s.name(),
            AnyScheme::Ggml(t) => t.name(),
        }
    }
}

/// Parses a scheme name for the command line.
pub fn parse_scheme(s: &str) -> Result<AnyScheme, String> {
    if let Some(t) = GgmlType::from_name(s) {
        return Ok(AnyScheme::Ggml(t));
    }
    Scheme::from_name(s).map(AnyScheme::Packed).ok_or_else(|| {
        format!("unknown scheme `{s}` (expected int8, int8-asym, int4, int4-asym, or for GGUF q8_0, q4_0, q4_1)")
    })
}

/// `REGEX=SCHEME[:GROUP]`: tensors matching REGEX get another scheme.
#[derive(Clone, Debug)]
pub struct Override {
    /// Matched against tensor names (anywhere in the name; anchor with `^…$`).
    pub pattern: Regex,
    /// The scheme for matching tensors (of the output's format).
    pub scheme: AnyScheme,
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
    /// Write one GGUF file with this default block type, instead of packed safetensors.
    pub gguf: Option<GgmlType>,
    /// Write MLX's affine layout (`int4-asym`/`int8-asym` only), instead of packed safetensors.
    pub mlx: bool,
    /// How packed tensors' scales and mins are chosen (`--optimize`).
    pub optimize: Method,
    /// Also measure round-to-nearest on every packed tensor (`--compare rtn`).
    pub compare_rtn: bool,
    /// Double-quantized scales and mins for packed tensors (`--scale-bits`, format version 2).
    pub double_quant: Option<DoubleQuant>,
    /// Per-tensor formats chosen by `--target-bpw` ([`crate::allocate`]); they
    /// win over the default scheme and overrides, `--keep` wins over them.
    pub assigned: BTreeMap<String, QuantFormat>,
}

impl Rules {
    /// The default scheme's name.
    pub fn scheme_name(&self) -> &'static str {
        match self.gguf {
            Some(t) => t.name(),
            None => self.scheme.name(),
        }
    }

    /// Code bits of the default scheme (what the naive claim counts for every parameter).
    pub fn default_bits(&self) -> u32 {
        match self.gguf {
            Some(t) => t.bits(),
            None => self.scheme.bits(),
        }
    }
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
            gguf: None,
            mlx: false,
            optimize: Method::Rtn,
            compare_rtn: false,
            double_quant: None,
            assigned: BTreeMap::new(),
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
    /// GGUF blocks need rows that are a multiple of 32 elements.
    NotBlockMultiple,
    /// GGUF input: llama.cpp's quantizer keeps it (norms, routers, small weights).
    NotWeight,
    /// MLX output: not a `…weight` tensor (mlx_lm quantizes layers' weights only).
    NotLayerWeight,
    /// MLX needs rows that are a whole number of groups.
    NotGroupMultiple,
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::NotFloat => f.write_str("not float"),
            KeepReason::Empty => f.write_str("empty"),
            KeepReason::Scalar => f.write_str("scalar"),
            KeepReason::OneDim => f.write_str("1-D"),
            KeepReason::Matched(p) => write!(f, "--keep {p}"),
            KeepReason::NotBlockMultiple => f.write_str("row not a multiple of 32"),
            KeepReason::NotWeight => f.write_str("llama.cpp keeps it"),
            KeepReason::NotLayerWeight => f.write_str("not a …weight"),
            KeepReason::NotGroupMultiple => f.write_str("row not a multiple of the group"),
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
    /// Quantized into GGUF blocks of this type.
    Ggml(GgmlType),
    /// Quantized into MLX's affine layout.
    Mlx(MlxFormat),
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
    /// Super-group scale factors (double quantization).
    SuperScales,
    /// Super-group min factors (double quantization).
    SuperMins,
}

impl PieceKind {
    /// Its index among a quantized tensor's output parts (none for kept tensors).
    pub fn part(self) -> Option<usize> {
        match self {
            PieceKind::Kept => None,
            PieceKind::Codes => Some(0),
            PieceKind::Scales => Some(1),
            PieceKind::Mins => Some(2),
            PieceKind::SuperScales => Some(3),
            PieceKind::SuperMins => Some(4),
        }
    }

    /// The kind its bytes are counted as in reports: super-group factors are scale and min bytes.
    pub fn counted_as(self) -> PieceKind {
        match self {
            PieceKind::SuperScales => PieceKind::Scales,
            PieceKind::SuperMins => PieceKind::Mins,
            k => k,
        }
    }
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
    /// Index of its input shard in the checkpoint.
    pub input: usize,
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

    /// Output bytes of pieces of `kind`. A GGUF block holds its codes, its F16
    /// scale and (`q4_1`) its F16 min: they are counted apart here too.
    pub fn bytes_of(&self, kind: PieceKind) -> u64 {
        if let Action::Ggml(t) = self.action {
            let blocks = self.params() / GgmlType::BLOCK as u64;
            return match kind {
                PieceKind::Codes => self.params() * t.bits() as u64 / 8,
                PieceKind::Scales => 2 * blocks,
                PieceKind::Mins if t == GgmlType::Q4_1 => 2 * blocks,
                _ => 0,
            };
        }
        self.pieces
            .iter()
            .filter(|p| p.kind.counted_as() == kind)
            .map(|p| p.nbytes)
            .sum()
    }

    /// All output bytes of this tensor.
    pub fn out_bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.nbytes).sum()
    }

    /// The packed quantization format, if the tensor is quantized into one.
    pub fn format(&self) -> Option<&QuantFormat> {
        match &self.action {
            Action::Quantize(f) => Some(f),
            Action::Keep(_) | Action::Ggml(_) | Action::Mlx(_) => None,
        }
    }

    /// Code bits, if the tensor is quantized (either format).
    pub fn code_bits(&self) -> Option<u32> {
        match &self.action {
            Action::Quantize(f) => Some(f.scheme.bits()),
            Action::Ggml(t) => Some(t.bits()),
            Action::Mlx(m) => Some(m.bits),
            Action::Keep(_) => None,
        }
    }
}

/// The plan for one output file.
#[derive(Clone, Debug)]
pub struct ShardPlan {
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
        if let Some(default) = rules.gguf {
            return Self::build_gguf(ckpt, rules, default);
        }
        if let Some(s) = ckpt.shards.iter().find(|s| s.gguf.is_some()) {
            return Err(PlanError {
                file: s.path.display().to_string(),
                reason: "a GGUF input is written as GGUF: use --format gguf (or -o NAME.gguf)"
                    .into(),
            });
        }
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
            let mut mlx_tensors = serde_json::Map::new();
            let mut tensors = Vec::with_capacity(shard.tensors.len());
            for t in &shard.tensors {
                let action = decide(t, rules).map_err(err)?;
                if let Action::Mlx(m) = &action {
                    mlx_tensors.insert(
                        t.name.clone(),
                        serde_json::json!({ "bits": m.bits, "group_size": m.group, "dtype": t.dtype.to_string() }),
                    );
                }
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
                    Action::Ggml(_) => unreachable!("decide gives GGUF types only to GGUF plans"),
                    Action::Mlx(m) => {
                        let base = t.name.strip_suffix(".weight").unwrap_or(&t.name);
                        let lead = &t.shape[..t.shape.len() - 1];
                        let with_last = |n: usize| [lead, &[n]].concat();
                        let sdt = scale_safetensors_dtype(m.dtype);
                        let groups = k / m.group;
                        let parts = [
                            (
                                PieceKind::Codes,
                                format!("{base}.weight"),
                                Dtype::U32,
                                k * m.bits as usize / 32,
                                m.code_bytes_per_row(k),
                            ),
                            (
                                PieceKind::Scales,
                                format!("{base}.scales"),
                                sdt,
                                groups,
                                m.scale_bytes_per_row(k),
                            ),
                            (
                                PieceKind::Mins,
                                format!("{base}.biases"),
                                sdt,
                                groups,
                                m.scale_bytes_per_row(k),
                            ),
                        ];
                        parts
                            .into_iter()
                            .map(|(kind, name, dtype, last, per_row)| {
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
                        // With double quantization, scales and mins are packed U8 codes
                        // and the super-group factors have the scale dtype.
                        let (code_dt, code_last) = match f.dq {
                            None => (sdt, f.groups_per_row(k)),
                            Some(_) => (Dtype::U8, f.scale_bytes_per_row(k)),
                        };
                        let asym = !f.scheme.symmetric();
                        let p = [
                            (
                                true,
                                PieceKind::Codes,
                                qweight_name(&t.name),
                                cdt,
                                f.code_bytes_per_row(k),
                                f.code_bytes_per_row(k),
                            ),
                            (
                                true,
                                PieceKind::Scales,
                                scales_name(&t.name),
                                code_dt,
                                code_last,
                                f.scale_bytes_per_row(k),
                            ),
                            (
                                asym,
                                PieceKind::Mins,
                                mins_name(&t.name),
                                code_dt,
                                code_last,
                                f.min_bytes_per_row(k),
                            ),
                            (
                                f.dq.is_some(),
                                PieceKind::SuperScales,
                                super_scales_name(&t.name),
                                sdt,
                                f.supers_per_row(k),
                                f.super_bytes_per_row(k),
                            ),
                            (
                                f.dq.is_some() && asym,
                                PieceKind::SuperMins,
                                super_mins_name(&t.name),
                                sdt,
                                f.supers_per_row(k),
                                f.super_min_bytes_per_row(k),
                            ),
                        ];
                        p.into_iter()
                            .filter(|p| p.0)
                            .map(|(_, kind, name, dtype, last, per_row)| {
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
            if rules.mlx {
                // mlx_lm's own files say `format: mlx`; the quantization is in config.json,
                // and here too, so that a file can be decoded on its own.
                md.insert("format".into(), "mlx".into());
                md.insert(
                    MLX_METADATA_KEY.into(),
                    serde_json::json!({ "mode": "affine", "tensors": mlx_tensors }).to_string(),
                );
            } else {
                meta.format = PackedMeta::version_for(&meta.tensors);
                md.insert(METADATA_KEY.into(), meta.to_json());
            }
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
                        input: si,
                        entry,
                        action,
                        rows,
                        k,
                        pieces,
                    }
                })
                .collect();
            shards.push(ShardPlan {
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

    /// Plans one GGUF file holding every tensor of `ckpt`, in checkpoint order.
    fn build_gguf(ckpt: &Checkpoint, rules: &Rules, default: GgmlType) -> Result<Plan, PlanError> {
        let mut outs = Vec::new();
        let mut tensors = Vec::new();
        let mut any_quantized = false;
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
            for t in &shard.tensors {
                let mut action = decide(t, rules).map_err(err)?;
                // GGUF input: quantize what llama-quantize quantizes (unless an override says so).
                if shard.gguf.is_some()
                    && matches!(action, Action::Ggml(_))
                    && !llama_quantizes(&t.name, t.shape.len())
                    && !rules.overrides.iter().any(|o| o.pattern.is_match(&t.name))
                {
                    action = Action::Keep(KeepReason::NotWeight);
                }
                let k = t.shape.last().copied().unwrap_or(1);
                let rows = t.numel().checked_div(k).unwrap_or(0);
                let (ty, nbytes) = match action {
                    Action::Ggml(ty) => {
                        any_quantized = true;
                        (TensorType::Block(ty), (rows * ty.row_bytes(k)) as u64)
                    }
                    _ => {
                        if gguf::plain_id(t.dtype).is_none() {
                            return Err(err(format!(
                                "tensor `{}`: GGUF has no {} type, so it cannot be written to a GGUF file",
                                t.name, t.dtype
                            )));
                        }
                        (TensorType::Plain(t.dtype), t.nbytes() as u64)
                    }
                };
                if t.shape.len() > gguf::MAX_DIMS {
                    return Err(err(format!(
                        "tensor `{}` has {} dimensions; GGUF allows at most {}",
                        t.name,
                        t.shape.len(),
                        gguf::MAX_DIMS
                    )));
                }
                outs.push(gguf::OutTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    ty,
                    nbytes,
                });
                let kind = match action {
                    Action::Keep(_) => PieceKind::Kept,
                    _ => PieceKind::Codes,
                };
                tensors.push((si, t.clone(), action, rows, k, kind));
            }
        }
        let kvs = match &ckpt.shards[0].gguf {
            Some(input) => gguf_input_kvs(input, default),
            None => {
                let mut kvs = vec![(
                    "general.architecture".to_string(),
                    gguf::Value::Str(architecture(ckpt)),
                )];
                kvs.push((
                    "general.file_type".into(),
                    gguf::Value::U32(default.file_type()),
                ));
                if any_quantized {
                    kvs.push((
                        "general.quantization_version".into(),
                        gguf::Value::U32(gguf::QUANTIZATION_VERSION),
                    ));
                }
                let mut md = BTreeMap::new();
                for shard in &ckpt.shards {
                    md.extend(shard.metadata.clone());
                }
                for (k, v) in md {
                    if !kvs.iter().any(|(key, _)| *key == k) {
                        kvs.push((k, gguf::Value::Str(v)));
                    }
                }
                kvs
            }
        };
        let file = ckpt.path.display().to_string();
        let layout = gguf::layout(&kvs, &outs).map_err(|reason| PlanError {
            file: file.clone(),
            reason,
        })?;
        let tensors = tensors
            .into_iter()
            .zip(&layout.offsets)
            .zip(&outs)
            .map(|((t, &offset), out)| {
                let (input, entry, action, rows, k, kind) = t;
                TensorPlan {
                    input,
                    pieces: vec![Piece {
                        kind,
                        name: entry.name.clone(),
                        offset,
                        nbytes: out.nbytes,
                    }],
                    entry,
                    action,
                    rows,
                    k,
                }
            })
            .collect();
        Ok(Plan {
            rules: rules.clone(),
            shards: vec![ShardPlan {
                file_name: gguf_file_name(ckpt),
                layout,
                tensors,
            }],
        })
    }

    /// Whether the plan writes one GGUF file.
    pub fn is_gguf(&self) -> bool {
        self.rules.gguf.is_some()
    }

    /// Every tensor plan, in checkpoint order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorPlan> {
        self.shards.iter().flat_map(|s| s.tensors.iter())
    }

    /// Predicted total size of the output files in bytes.
    pub fn predicted_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.layout.total).sum()
    }

    /// Bytes of all output files that are not tensor data: headers (length
    /// prefixes, JSON, GGUF key-values and tensor infos) and alignment padding.
    pub fn header_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.layout.total - s.tensors.iter().map(|t| t.out_bytes()).sum::<u64>())
            .sum()
    }
}

/// The key-values of a GGUF output made from a GGUF input, as llama-quantize
/// makes them: every input pair in order, then `general.quantization_version`
/// and `general.file_type` set (in place when present, else appended), and
/// `general.alignment` dropped (the output uses the default, 32).
pub fn gguf_input_kvs(
    input: &[(String, gguf::Value)],
    default: GgmlType,
) -> Vec<(String, gguf::Value)> {
    let mut kvs: Vec<_> = input
        .iter()
        .filter(|(k, _)| k != "general.alignment")
        .cloned()
        .collect();
    let mut set = |key: &str, v: gguf::Value| match kvs.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = v,
        None => kvs.push((key.to_string(), v)),
    };
    set(
        "general.quantization_version",
        gguf::Value::U32(gguf::QUANTIZATION_VERSION),
    );
    set("general.file_type", gguf::Value::U32(default.file_type()));
    kvs
}

/// Whether llama.cpp's quantizer quantizes a tensor of this name and rank
/// (its `tensor_allows_quantization`, with `--pure`: the output and token
/// embedding tensors get the requested type too).
pub fn llama_quantizes(name: &str, n_dims: usize) -> bool {
    const NEVER: [&str; 9] = [
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "attn_rel_b.weight",
    ];
    n_dims >= 2
        && name.ends_with("weight")
        && !NEVER.iter().any(|p| name.contains(p))
        && !name.contains("time_mix_") // RWKV's small 2-D weights
        && name != "position_embd.weight"
        && name != "token_types.weight"
}

/// `general.architecture` for a GGUF file: `model_type` from a `config.json`
/// beside the checkpoint, else `unknown` (GGUF requires the key).
fn architecture(ckpt: &Checkpoint) -> String {
    let dir = if ckpt.path.is_dir() {
        ckpt.path.clone()
    } else {
        ckpt.path
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default()
    };
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("model_type")?.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// The GGUF output's file name when `-o` is a directory: the input's stem, or `model`.
fn gguf_file_name(ckpt: &Checkpoint) -> String {
    let stem = if ckpt.is_sharded() {
        None
    } else {
        ckpt.shards[0]
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
    };
    format!("{}.gguf", stem.unwrap_or_else(|| "model".into()))
}

/// The `__metadata__` key that marks shrinkray's MLX output: a JSON object
/// `{"mode": "affine", "tensors": {NAME: {"bits", "group_size", "dtype"}}}`
/// (mlx_lm itself reads config.json; this lets a file be decoded on its own).
pub const MLX_METADATA_KEY: &str = "shrinkray_mlx";

/// Decides what happens to one tensor; fails on an override of the other
/// output format's scheme.
pub fn decide(t: &TensorEntry, rules: &Rules) -> Result<Action, String> {
    if let Some(p) = rules.keep.iter().find(|p| p.is_match(&t.name)) {
        return Ok(Action::Keep(KeepReason::Matched(p.as_str().to_string())));
    }
    if !is_quantizable(t.dtype) {
        return Ok(Action::Keep(KeepReason::NotFloat));
    }
    if t.shape.is_empty() {
        return Ok(Action::Keep(KeepReason::Scalar));
    }
    if t.numel() == 0 {
        return Ok(Action::Keep(KeepReason::Empty));
    }
    let matched = rules
        .overrides
        .iter()
        .rev()
        .find(|o| o.pattern.is_match(&t.name));
    if matched.is_none() && t.shape.len() < 2 {
        return Ok(Action::Keep(KeepReason::OneDim));
    }
    let k = *t.shape.last().expect("not a scalar");
    let scheme = matched.map(|o| o.scheme);
    let wrong = |s: AnyScheme| {
        format!(
            "tensor `{}`: --override scheme {} cannot be written to {}",
            t.name,
            s.name(),
            if rules.gguf.is_some() {
                "GGUF (q8_0, q4_0 or q4_1)"
            } else {
                "packed safetensors (int8, int8-asym, int4 or int4-asym)"
            }
        )
    };
    if let Some(default) = rules.gguf {
        let ty = match scheme {
            None => default,
            Some(AnyScheme::Ggml(ty)) => ty,
            Some(other) => return Err(wrong(other)),
        };
        if !k.is_multiple_of(GgmlType::BLOCK) {
            return Ok(Action::Keep(KeepReason::NotBlockMultiple));
        }
        return Ok(Action::Ggml(ty));
    }
    let scheme = match scheme {
        None => rules.scheme,
        Some(AnyScheme::Packed(s)) => s,
        Some(other) => return Err(wrong(other)),
    };
    let group = matched.and_then(|o| o.group).unwrap_or(rules.group);
    if rules.mlx {
        let bits = match scheme {
            Scheme::Int4Asym => 4,
            Scheme::Int8Asym => 8,
            other => {
                return Err(format!(
                    "tensor `{}`: MLX's affine layout holds int4-asym or int8-asym, not {other}",
                    t.name
                ))
            }
        };
        let g = match group {
            GroupSize::Fixed(g) if [32, 64, 128].contains(&g) => g,
            other => {
                return Err(format!(
                    "tensor `{}`: MLX groups are 32, 64 or 128 elements, not {other}",
                    t.name
                ))
            }
        };
        if !t.name.ends_with("weight") && matched.is_none() {
            return Ok(Action::Keep(KeepReason::NotLayerWeight));
        }
        if !k.is_multiple_of(g) {
            return Ok(Action::Keep(KeepReason::NotGroupMultiple));
        }
        let dtype = match t.dtype {
            Dtype::F16 => ScaleDtype::F16,
            Dtype::BF16 => ScaleDtype::BF16,
            _ => ScaleDtype::F32,
        };
        return Ok(Action::Mlx(MlxFormat {
            bits,
            group: g,
            dtype,
        }));
    }
    if let Some(f) = rules.assigned.get(&t.name) {
        let mut f = *f;
        if rules.wide_scales.contains(&t.name) {
            f.scale_dtype = ScaleDtype::F32;
        }
        return Ok(Action::Quantize(f));
    }
    Ok(Action::Quantize(QuantFormat {
        dq: rules.double_quant,
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
    }))
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
            let bits = match t.code_bits() {
                Some(bits) => {
                    b.params_quantized += t.params();
                    bits
                }
                None => plan.rules.default_bits(),
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
