//! Group-wise INT8/INT4 quantization kernels on plain slices.
//!
//! This crate owns the arithmetic of shrinkray and nothing else: no files,
//! no threads, no command line. The [`scalar`] module is the specification;
//! any faster path must produce the same codes, scales and mins bit for bit.
//!
//! The data layout is the one of the packed format (FORMAT.md, also in the
//! project README): a tensor is a sequence of rows of `k` elements; each row
//! is cut into groups of `group` elements (the last one may be shorter); each
//! group gets one scale (and one min for asymmetric schemes); codes are packed
//! per row, one byte per code at 8 bits, two codes per byte at 4 bits with
//! element `2i` in the low nibble of byte `i`.

#![deny(missing_docs)]

mod arch;
pub mod dq;
pub mod ggml;
pub mod mlx;
pub mod scalar;
pub mod search;

use std::fmt;
use std::sync::OnceLock;

/// A quantization scheme: bit width and symmetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// 8-bit symmetric: `w = c · scale`, `c` an `i8` in `[-127, 127]`.
    Int8Sym,
    /// 8-bit asymmetric: `w = c · scale + min`, `c` in `[0, 255]`.
    Int8Asym,
    /// 4-bit symmetric: `w = (c − 8) · scale`, `c` in `[0, 15]`.
    Int4Sym,
    /// 4-bit asymmetric: `w = c · scale + min`, `c` in `[0, 15]`.
    Int4Asym,
}

impl Scheme {
    /// Every scheme, in the order used by tables and benchmarks.
    pub const ALL: [Scheme; 4] = [
        Scheme::Int8Sym,
        Scheme::Int8Asym,
        Scheme::Int4Sym,
        Scheme::Int4Asym,
    ];

    /// Bits per code.
    pub fn bits(self) -> u32 {
        match self {
            Scheme::Int8Sym | Scheme::Int8Asym => 8,
            Scheme::Int4Sym | Scheme::Int4Asym => 4,
        }
    }

    /// Whether the scheme stores a scale only (no min).
    pub fn symmetric(self) -> bool {
        matches!(self, Scheme::Int8Sym | Scheme::Int4Sym)
    }

    /// The name used on the command line and in file metadata.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Int8Sym => "int8",
            Scheme::Int8Asym => "int8-asym",
            Scheme::Int4Sym => "int4",
            Scheme::Int4Asym => "int4-asym",
        }
    }

    /// Parses a name produced by [`Scheme::name`] (`int8-sym`/`int4-sym` are accepted too).
    pub fn from_name(s: &str) -> Option<Scheme> {
        match s {
            "int8" | "int8-sym" => Some(Scheme::Int8Sym),
            "int8-asym" => Some(Scheme::Int8Asym),
            "int4" | "int4-sym" => Some(Scheme::Int4Sym),
            "int4-asym" => Some(Scheme::Int4Asym),
            _ => None,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The floating-point type scales and mins are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScaleDtype {
    /// IEEE binary16 (the default, as in ggml and MLX).
    F16,
    /// bfloat16.
    BF16,
    /// IEEE binary32.
    F32,
}

impl ScaleDtype {
    /// Bytes per stored scale or min.
    pub fn size(self) -> usize {
        match self {
            ScaleDtype::F16 | ScaleDtype::BF16 => 2,
            ScaleDtype::F32 => 4,
        }
    }

    /// The safetensors dtype name (`F16`, `BF16`, `F32`).
    pub fn name(self) -> &'static str {
        match self {
            ScaleDtype::F16 => "F16",
            ScaleDtype::BF16 => "BF16",
            ScaleDtype::F32 => "F32",
        }
    }
}

impl fmt::Display for ScaleDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a quantized tensor looks like: scheme, group size and scale type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuantFormat {
    /// Bit width and symmetry.
    pub scheme: Scheme,
    /// Elements per group along a row (at least 1); the last group of a row may be shorter.
    pub group: usize,
    /// Type of the stored scales and mins (with [`QuantFormat::dq`]: of the super-group factors).
    pub scale_dtype: ScaleDtype,
    /// Double quantization: scales and mins stored as low-bit codes of
    /// per-super-group factors (packed format version 2), or `None` (version 1).
    pub dq: Option<DoubleQuant>,
}

/// Double quantization of a tensor's scales and mins ([`dq`], format version 2).
///
/// Each group's scale is stored as a `bits`-bit code times its super-group's
/// scale factor, each min as minus a `bits`-bit code times the super-group's
/// min factor; the factors are stored in the tensor's scale dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DoubleQuant {
    /// Bits per scale code and per min code, 2 to 8.
    pub bits: u32,
    /// Groups per super-group (at least 1); a super-group never spans two rows.
    pub groups: usize,
}

impl DoubleQuant {
    /// The allowed code widths.
    pub const BITS: std::ops::RangeInclusive<u32> = 2..=8;
}

impl QuantFormat {
    /// Groups in a row of `k` elements: `ceil(k / group)`.
    pub fn groups_per_row(&self, k: usize) -> usize {
        k.div_ceil(self.group)
    }

    /// Bytes of packed codes in a row of `k` elements.
    pub fn code_bytes_per_row(&self, k: usize) -> usize {
        match self.scheme.bits() {
            8 => k,
            _ => k.div_ceil(2),
        }
    }

    /// Bytes of scales in a row of `k` elements (packed scale codes with double quantization).
    pub fn scale_bytes_per_row(&self, k: usize) -> usize {
        match self.dq {
            None => self.groups_per_row(k) * self.scale_dtype.size(),
            Some(d) => (self.groups_per_row(k) * d.bits as usize).div_ceil(8),
        }
    }

    /// Super-groups in a row of `k` elements (0 without double quantization).
    pub fn supers_per_row(&self, k: usize) -> usize {
        self.dq
            .map_or(0, |d| self.groups_per_row(k).div_ceil(d.groups))
    }

    /// Bytes of super-group scale factors in a row of `k` elements (0 without double quantization).
    pub fn super_bytes_per_row(&self, k: usize) -> usize {
        self.supers_per_row(k) * self.scale_dtype.size()
    }

    /// Bytes of super-group min factors in a row (0 for symmetric schemes or without double quantization).
    pub fn super_min_bytes_per_row(&self, k: usize) -> usize {
        if self.scheme.symmetric() {
            0
        } else {
            self.super_bytes_per_row(k)
        }
    }

    /// Bytes of each output part for a row of `k` elements, in [`RowsOut`]
    /// order: codes, scales, mins, super scales, super mins.
    pub fn part_bytes_per_row(&self, k: usize) -> [usize; 5] {
        [
            self.code_bytes_per_row(k),
            self.scale_bytes_per_row(k),
            self.min_bytes_per_row(k),
            self.super_bytes_per_row(k),
            self.super_min_bytes_per_row(k),
        ]
    }

    /// Bytes of everything stored for a row of `k` elements.
    pub fn bytes_per_row(&self, k: usize) -> usize {
        self.part_bytes_per_row(k).iter().sum()
    }

    /// Bytes of mins in a row of `k` elements (0 for symmetric schemes).
    pub fn min_bytes_per_row(&self, k: usize) -> usize {
        if self.scheme.symmetric() {
            0
        } else {
            self.scale_bytes_per_row(k)
        }
    }
}

/// The output slices of a run of whole rows, laid out as in the packed file.
#[derive(Debug)]
pub struct RowsOut<'a> {
    /// Packed codes: rows × `code_bytes_per_row`.
    pub codes: &'a mut [u8],
    /// Encoded scales: rows × `scale_bytes_per_row`.
    pub scales: &'a mut [u8],
    /// Encoded mins: rows × `min_bytes_per_row` (empty for symmetric schemes).
    pub mins: &'a mut [u8],
    /// Super-group scale factors: rows × `super_bytes_per_row` (empty without double quantization).
    pub super_scales: &'a mut [u8],
    /// Super-group min factors: rows × `super_min_bytes_per_row`.
    pub super_mins: &'a mut [u8],
}

impl<'a> RowsOut<'a> {
    /// The output slices from the parts in [`QuantFormat::part_bytes_per_row`] order.
    pub fn from_parts([codes, scales, mins, super_scales, super_mins]: [&'a mut [u8]; 5]) -> Self {
        RowsOut {
            codes,
            scales,
            mins,
            super_scales,
            super_mins,
        }
    }
}

/// Reconstruction-error statistics gathered while quantizing.
///
/// The error of an element is `x − x̂`, where `x̂` is what a reader decodes
/// from the stored code, scale and min with f32 arithmetic.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorStats {
    /// Elements seen.
    pub count: u64,
    /// Σ (x − x̂)².
    pub sum_sq_err: f64,
    /// Σ x².
    pub sum_sq: f64,
    /// max |x − x̂| over finite elements.
    pub max_abs_err: f32,
    /// Elements that are NaN or ±Inf.
    pub nonfinite: u64,
    /// Index (within the slice given to the kernel) of the first NaN or ±Inf.
    pub first_nonfinite: Option<u64>,
    /// Groups whose scale or min does not fit the scale dtype (would be ±Inf).
    pub overflowed_groups: u64,
    /// Non-zero groups whose scale became zero (too small for the scale dtype,
    /// or below the smallest normal f32).
    pub zeroed_groups: u64,
}

impl ErrorStats {
    /// Adds `other`, whose element indices start `offset` elements after this one's.
    pub fn merge(&mut self, other: &ErrorStats, offset: u64) {
        self.count += other.count;
        self.sum_sq_err += other.sum_sq_err;
        self.sum_sq += other.sum_sq;
        self.max_abs_err = self.max_abs_err.max(other.max_abs_err);
        self.nonfinite += other.nonfinite;
        let theirs = other.first_nonfinite.map(|i| i + offset);
        self.first_nonfinite = match (self.first_nonfinite, theirs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.overflowed_groups += other.overflowed_groups;
        self.zeroed_groups += other.zeroed_groups;
    }

    /// Root-mean-square error (0 for no elements).
    pub fn rmse(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.sum_sq_err / self.count as f64).sqrt()
        }
    }

    /// Relative error ‖W − Ŵ‖ / ‖W‖ (0 when both are 0, +∞ when only W is 0).
    pub fn rel_error(&self) -> f64 {
        if self.sum_sq_err == 0.0 {
            0.0
        } else {
            (self.sum_sq_err / self.sum_sq).sqrt()
        }
    }

    /// Signal-to-quantization-noise ratio in dB (+∞ for an exact reconstruction).
    pub fn sqnr_db(&self) -> f64 {
        if self.sum_sq_err == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (self.sum_sq / self.sum_sq_err).log10()
        }
    }
}

/// The input of a kernel call: whole rows of one float type, read in place.
#[derive(Clone, Copy, Debug)]
pub enum Src<'a> {
    /// IEEE binary32.
    F32(&'a [f32]),
    /// IEEE binary16.
    F16(&'a [half::f16]),
    /// bfloat16.
    BF16(&'a [half::bf16]),
}

impl Src<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Src::F32(x) => x.len(),
            Src::F16(x) => x.len(),
            Src::BF16(x) => x.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A kernel implementation (instruction set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable scalar code: the specification, and the fallback on every CPU.
    Scalar,
    /// x86_64 AVX2 + FMA + F16C.
    Avx2,
    /// x86_64 AVX-512 (F, BW, VL) with AVX2, FMA and F16C. It has its own kernels for
    /// plain RTN quantization ([`quantize_rows`] without double quantization); every
    /// other path (the search method, double quantization, the ggml block kernels, the
    /// `search::*_on` helpers) runs the AVX2 implementations, which every AVX-512 CPU runs.
    Avx512,
}

/// The environment variable that overrides the kernel choice (`scalar`, `avx2`, `avx512`).
pub const ISA_ENV: &str = "SHRINKRAY_ISA";

impl Isa {
    /// Every implementation this build has, slowest first.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    /// Its name in `SHRINKRAY_ISA`, reports and benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a name produced by [`Isa::name`].
    pub fn from_name(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == s)
    }

    /// Whether this CPU can run it.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => arch::avx2_available(),
            Isa::Avx512 => arch::avx512_available(),
        }
    }

    /// The implementations this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The fastest implementation this CPU can run.
    pub fn best() -> Isa {
        *Isa::available().last().expect("scalar is always available")
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The implementation to use: `SHRINKRAY_ISA` when set, else [`Isa::best`].
///
/// Decided once per process. An unknown name, or one this CPU cannot run,
/// is an error that says which implementations are available.
pub fn selected_isa() -> Result<Isa, String> {
    static CHOICE: OnceLock<Result<Isa, String>> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let Ok(want) = std::env::var(ISA_ENV) else {
                return Ok(Isa::best());
            };
            let names = || {
                Isa::available()
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            match Isa::from_name(want.trim()) {
                Some(isa) if isa.is_available() => Ok(isa),
                Some(isa) => Err(format!(
                    "{ISA_ENV}={want}: this CPU cannot run {isa} (available: {})",
                    names()
                )),
                None => Err(format!(
                    "{ISA_ENV}={want}: unknown (this build has scalar, avx2 and avx512; this CPU runs: {})",
                    names()
                )),
            }
        })
        .clone()
}

/// Quantizes whole rows of `k` elements from `src` into `out` with `isa`.
///
/// `src.len()` must be a multiple of `k`, and the output slices must have
/// exactly the sizes [`QuantFormat`] gives for that many rows. Every `isa`
/// gives the same codes, scales and mins, bit for bit.
///
/// # Panics
/// If `isa` is not available on this CPU, if `k == 0` with a non-empty
/// `src`, if `fmt.group == 0`, or if a slice length does not match.
pub fn quantize_rows(
    isa: Isa,
    fmt: &QuantFormat,
    k: usize,
    src: Src<'_>,
    out: RowsOut<'_>,
) -> ErrorStats {
    assert!(isa.is_available(), "{isa} is not available on this CPU");
    // SAFETY: this CPU runs `isa` (just checked).
    unsafe { quantize_rows_unchecked(isa, fmt, k, src, out) }
}

/// [`quantize_rows`] without the check that this CPU runs `isa`: for running a kernel
/// under a CPU emulator in tests.
///
/// It dispatches straight to the kernel: [`Isa::Avx512`] without double quantization
/// neither allocates, nor calls the operating system, nor reads thread-local state, nor
/// probes the CPU (the other paths may allocate).
///
/// # Safety
/// The CPU executing this call must support `isa`'s instructions.
///
/// # Panics
/// As [`quantize_rows`], except for the availability check.
#[doc(hidden)]
pub unsafe fn quantize_rows_unchecked(
    isa: Isa,
    fmt: &QuantFormat,
    k: usize,
    src: Src<'_>,
    out: RowsOut<'_>,
) -> ErrorStats {
    if fmt.dq.is_some() {
        return dq_rows(isa, Method::Rtn, fmt, k, src, out);
    }
    match isa {
        Isa::Scalar => match src {
            Src::F32(x) => scalar::quantize_rows(fmt, k, x, out),
            Src::F16(x) => scalar::quantize_rows(fmt, k, x, out),
            Src::BF16(x) => scalar::quantize_rows(fmt, k, x, out),
        },
        Isa::Avx2 => arch::avx2_quantize_rows(fmt, k, src, out),
        // SAFETY: the caller guarantees that this CPU runs AVX-512 F/BW/VL, AVX2, FMA and F16C.
        Isa::Avx512 => unsafe { arch::avx512_quantize_rows(fmt, k, src, out) },
    }
}

/// Double-quantized rows ([`dq`]) with `isa`, whose availability the caller has checked
/// ([`Isa::Avx512`] runs the AVX2 kernels).
fn dq_rows(
    isa: Isa,
    method: Method,
    fmt: &QuantFormat,
    k: usize,
    src: Src<'_>,
    out: RowsOut<'_>,
) -> ErrorStats {
    match isa {
        Isa::Scalar => match src {
            Src::F32(x) => dq::quantize_rows(method, fmt, k, x, out),
            Src::F16(x) => dq::quantize_rows(method, fmt, k, x, out),
            Src::BF16(x) => dq::quantize_rows(method, fmt, k, x, out),
        },
        Isa::Avx2 | Isa::Avx512 => arch::avx2_dq_rows(method, fmt, k, src, out),
    }
}

/// How each group's scale (and min) is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Method {
    /// Round to nearest from the group's range (the default, [`scalar`]).
    #[default]
    Rtn,
    /// Error-minimising search over clipped ranges with least-squares refits ([`search`]).
    Search,
}

impl Method {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Search => "search",
        }
    }
}

/// [`quantize_rows`] with parameters chosen by `method`. Every `isa` gives the
/// same codes, scales and mins, bit for bit (the scalar [`search`] and [`dq`]
/// are the specification). [`Isa::Avx512`] runs the AVX2 kernels for the search
/// method and for double quantization.
///
/// # Panics
/// As [`quantize_rows`].
pub fn quantize_rows_by(
    isa: Isa,
    method: Method,
    fmt: &QuantFormat,
    k: usize,
    src: Src<'_>,
    out: RowsOut<'_>,
) -> ErrorStats {
    if isa != Isa::Scalar {
        assert!(isa.is_available(), "{isa} is not available on this CPU");
    }
    if fmt.dq.is_some() {
        return dq_rows(isa, method, fmt, k, src, out);
    }
    match (method, isa) {
        (Method::Rtn, _) => quantize_rows(isa, fmt, k, src, out),
        (Method::Search, Isa::Scalar) => match src {
            Src::F32(x) => search::quantize_rows(fmt, k, x, out),
            Src::F16(x) => search::quantize_rows(fmt, k, x, out),
            Src::BF16(x) => search::quantize_rows(fmt, k, x, out),
        },
        (Method::Search, Isa::Avx2 | Isa::Avx512) => arch::avx2_search_rows(fmt, k, src, out),
    }
}
