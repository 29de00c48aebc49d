//! ggml's Q8_0, Q4_0 and Q4_1 block formats: quantization and dequantization.
//!
//! This module owns the arithmetic of the three ggml block types shrinkray
//! writes into GGUF files. The scalar code here is the specification for
//! these formats: it reproduces, byte for byte, the reference quantizers of
//! the `gguf` Python package 0.19.0 (`gguf.quants`), which are the same as
//! ggml's `quantize_row_*_ref` built without FMA contraction. The formulas,
//! their f32 rounding steps and the golden vectors they are tested against
//! are in `fixtures/gguf/NOTES.md` and `fixtures/gguf/golden.json`.
//! [`quantize_blocks_with`] runs the same arithmetic with SIMD instructions,
//! bit for bit (`kernels/tests/ggml_simd_vs_scalar.rs`).
//!
//! Per block of 32 f32 values `x` (every operation is an f32 operation,
//! rounded on its own; nothing is fused):
//!
//! * Q8_0: `d = max|x| / 127`, `q = round_half_away(x · id)`.
//! * Q4_0: `max` = the first element of largest `|x|`, with its sign;
//!   `d = max / −8`, `q = min(15, trunc(x · id + 8.5))`.
//! * Q4_1: `d = (max x − min x) / 15`, `q = min(15, trunc((x − min) · id + 0.5))`;
//!   `m = min x`.
//!
//! `id` is `0` when `d == 0`, else `1 / d`, computed from the f32 `d` (not
//! from the stored one). `d` and `m` are stored as f16 (round to nearest
//! even, ±Inf on overflow, subnormals kept). A quant whose f32 value before
//! the integer cast is NaN or ±Inf becomes 0 (what numpy does on x86-64).
//!
//! Deliberate differences from the reference, and how they are reported in
//! the [`ErrorStats`] [`quantize_blocks`] returns:
//!
//! * NaN and ±Inf **inputs** are counted in `nonfinite` / `first_nonfinite`
//!   and read as `+0.0`: the block is what the reference makes with those
//!   elements set to `+0.0`. (gguf-py propagates a NaN into `d`; ggml C skips
//!   NaN in its comparisons; neither is worth copying.)
//! * A block whose stored f16 `d` (or Q4_1 `m`) is ±Inf is stored exactly as
//!   the reference stores it, but counted in `overflowed_groups` so a caller
//!   can refuse the tensor. Such a block adds its elements to `count` and
//!   `sum_sq` only, not to `sum_sq_err` or `max_abs_err`: it does not decode
//!   to finite values.
//! * `zeroed_groups` counts blocks whose stored f16 `d` is ±0 although the
//!   block holds information: a nonzero element (Q8_0, Q4_0), or two distinct
//!   values (Q4_1, where a constant block has `d = 0` by design).
//! * Signed zeros: Q4_0 follows numpy (an all-zero block takes the sign of
//!   element 0 through `max / −8`). For Q4_1 numpy's min/max of mixed ±0 is
//!   not reproducible; here min and max are the first element that is
//!   strictly smaller / larger than all before it, so ties keep the first.

use crate::{ErrorStats, Isa, Src};

/// A ggml block type shrinkray writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 8-bit symmetric: f16 `d`, 32 × i8; `y = d · q`.
    Q8_0,
    /// 4-bit symmetric: f16 `d`, 16 bytes of nibbles; `y = d · (q − 8)`.
    Q4_0,
    /// 4-bit asymmetric: f16 `d`, f16 `m`, 16 bytes of nibbles; `y = d · q + m`.
    Q4_1,
}

impl GgmlType {
    /// Every type, in the order used by tables and tests.
    pub const ALL: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1];

    /// Elements per block.
    pub const BLOCK: usize = 32;

    /// Bytes per block: 34, 18, 20.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
        }
    }

    /// The ggml tensor type id (`GGMLQuantizationType`): 8, 2, 3.
    pub fn type_id(self) -> u32 {
        match self {
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
        }
    }

    /// The `general.file_type` of a file mostly of this type (`LlamaFileType`): 7, 2, 3.
    pub fn file_type(self) -> u32 {
        match self {
            GgmlType::Q8_0 => 7,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
        }
    }

    /// The lower-case name used by ggml and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
        }
    }

    /// Parses a name produced by [`GgmlType::name`] (ASCII case-insensitive).
    pub fn from_name(s: &str) -> Option<GgmlType> {
        GgmlType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// Bits per code (8, 4, 4), not counting the per-block scale and min.
    pub fn bits(self) -> u32 {
        match self {
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_0 | GgmlType::Q4_1 => 4,
        }
    }

    /// Bytes of a row of `k` elements; the caller guarantees `k % 32 == 0`.
    pub fn row_bytes(self, k: usize) -> usize {
        k / Self::BLOCK * self.block_bytes()
    }
}

const QK: usize = GgmlType::BLOCK;

/// f32 → f16 bits: round to nearest even, ±Inf on overflow, subnormals kept.
#[inline(always)]
fn to_f16(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

/// f16 bits → f32 (exact).
#[inline(always)]
fn from_f16(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// Whether f16 bits are ±Inf.
#[inline(always)]
fn f16_is_inf(bits: u16) -> bool {
    bits & 0x7FFF == 0x7C00
}

/// Whether f16 bits are ±0.
#[inline(always)]
fn f16_is_zero(bits: u16) -> bool {
    bits & 0x7FFF == 0
}

/// `1 / d`, or +0 when `d` is ±0 (`np.where(d == 0, 0, 1/d)`).
#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Q8_0's quant: `roundf(v)` (half away from zero) as i8; NaN/±Inf give 0.
#[inline(always)]
fn q8(v: f32) -> u8 {
    if !v.is_finite() {
        return 0;
    }
    // |v| ≤ 127.0001 whenever it is finite (NOTES.md), so the truncating cast is exact
    // and `v − trunc(v)` is the exact fraction: rounding it half away from zero is
    // `f32::round` without the libm call (the unit tests compare the two).
    debug_assert!(v.abs() < 256.0);
    let t = v as i32;
    let f = v - t as f32;
    (t + (f >= 0.5) as i32 - (f <= -0.5) as i32) as i8 as u8
}

/// A 4-bit quant: `min(15, trunc(t))` for `t ≥ 0`; NaN/±Inf give 0.
#[inline(always)]
fn q4(t: f32) -> u8 {
    // The reference's t is never negative (NOTES.md: t ∈ [0.49, 16.5]); for t ≥ 0
    // the truncating cast is trunc(t) as an integer.
    if t.is_finite() {
        (t as u8).min(15)
    } else {
        0
    }
}

/// Writes 32 quants in 0..15 as 16 bytes: element j low nibble, element j+16 high nibble.
#[inline(always)]
fn pack_nibbles(q: &[u8; QK], out: &mut [u8]) {
    for j in 0..QK / 2 {
        out[j] = q[j] | (q[j + QK / 2] << 4);
    }
}

/// What a quantized block reports besides its bytes.
#[derive(Clone, Copy, Debug)]
struct BlockFlags {
    /// Stored f16 `d` (or `m`) is ±Inf.
    overflowed: bool,
    /// Stored f16 `d` is ±0 although the block holds information.
    zeroed: bool,
}

/// max |x| of finite values (exact: the order of a max does not matter without NaN).
#[inline(always)]
fn abs_max(x: &[f32; QK]) -> f32 {
    let mut m = [0.0f32; LANES];
    for c in x.chunks_exact(LANES) {
        for l in 0..LANES {
            if c[l].abs() > m[l] {
                m[l] = c[l].abs();
            }
        }
    }
    m.iter().fold(0.0, |a, &b| if b > a { b } else { a })
}

/// Quantizes one Q8_0 block of finite values into 34 bytes.
#[inline(always)]
fn quantize_q8_0(x: &[f32; QK], out: &mut [u8]) -> BlockFlags {
    let amax = abs_max(x);
    let d = amax / 127.0;
    let id = inverse(d);
    let d16 = to_f16(d);
    out[..2].copy_from_slice(&d16.to_le_bytes());
    for (o, &v) in out[2..2 + QK].iter_mut().zip(x) {
        *o = q8(v * id);
    }
    BlockFlags {
        overflowed: f16_is_inf(d16),
        zeroed: f16_is_zero(d16) && amax > 0.0,
    }
}

/// Quantizes one Q4_0 block of finite values into 18 bytes.
#[inline(always)]
fn quantize_q4_0(x: &[f32; QK], out: &mut [u8]) -> BlockFlags {
    // The first element of largest |x| (numpy argmax; ggml C's strict `<`).
    let amax = abs_max(x);
    let max = *x.iter().find(|v| v.abs() == amax).unwrap_or(&x[0]);
    let d = max / -8.0;
    let id = inverse(d);
    let d16 = to_f16(d);
    out[..2].copy_from_slice(&d16.to_le_bytes());
    let mut q = [0u8; QK];
    for (qi, &v) in q.iter_mut().zip(x) {
        // Two roundings (multiply, then add): never fused.
        *qi = q4(v * id + 8.5);
    }
    pack_nibbles(&q, &mut out[2..2 + QK / 2]);
    BlockFlags {
        overflowed: f16_is_inf(d16),
        zeroed: f16_is_zero(d16) && max != 0.0,
    }
}

/// Quantizes one Q4_1 block of finite values into 20 bytes.
#[inline(always)]
fn quantize_q4_1(x: &[f32; QK], out: &mut [u8]) -> BlockFlags {
    // Ties keep the first element (this fixes the sign of a zero min or max).
    let (mut mn, mut mx) = (x[0], x[0]);
    for &v in &x[1..] {
        if v < mn {
            mn = v;
        }
        if v > mx {
            mx = v;
        }
    }
    let d = (mx - mn) / 15.0;
    let id = inverse(d);
    let d16 = to_f16(d);
    let m16 = to_f16(mn);
    out[..2].copy_from_slice(&d16.to_le_bytes());
    out[2..4].copy_from_slice(&m16.to_le_bytes());
    let mut q = [0u8; QK];
    for (qi, &v) in q.iter_mut().zip(x) {
        // Three roundings (subtract, multiply, add): never fused.
        *qi = q4((v - mn) * id + 0.5);
    }
    pack_nibbles(&q, &mut out[4..4 + QK / 2]);
    BlockFlags {
        overflowed: f16_is_inf(d16) || f16_is_inf(m16),
        zeroed: f16_is_zero(d16) && mx > mn,
    }
}

/// Decodes one Q8_0 block: `y = f32(d) · f32(q)`.
#[inline(always)]
fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = from_f16(u16::from_le_bytes([b[0], b[1]]));
    for (yi, &q) in y.iter_mut().zip(&b[2..2 + QK]) {
        *yi = d * (q as i8) as f32;
    }
}

/// Decodes one Q4_0 block: `y = f32(d) · f32(q − 8)`.
#[inline(always)]
fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    let d = from_f16(u16::from_le_bytes([b[0], b[1]]));
    for (j, &byte) in b[2..2 + QK / 2].iter().enumerate() {
        y[j] = d * ((byte & 0xF) as i32 - 8) as f32;
        y[j + QK / 2] = d * ((byte >> 4) as i32 - 8) as f32;
    }
}

/// Decodes one Q4_1 block: `y = f32(d) · f32(q) + f32(m)` (multiply, then add).
#[inline(always)]
fn dequantize_q4_1(b: &[u8], y: &mut [f32]) {
    let d = from_f16(u16::from_le_bytes([b[0], b[1]]));
    let m = from_f16(u16::from_le_bytes([b[2], b[3]]));
    for (j, &byte) in b[4..4 + QK / 2].iter().enumerate() {
        y[j] = d * (byte & 0xF) as f32 + m;
        y[j + QK / 2] = d * (byte >> 4) as f32 + m;
    }
}

/// Lanes of the per-block error sums (independent accumulators, so the loop vectorizes).
const LANES: usize = 8;

/// Quantizes `nblocks` blocks, block `bi` read by `load(bi, ·)`, with `quant`, decodes
/// each again with `dequant` and gathers the statistics.
#[inline(always)]
fn quantize_all(
    bb: usize,
    nblocks: usize,
    load: impl Fn(usize, &mut [f32; QK]),
    out: &mut [u8],
    quant: impl Fn(&[f32; QK], &mut [u8]) -> BlockFlags,
    dequant: impl Fn(&[u8], &mut [f32]),
) -> ErrorStats {
    let mut stats = ErrorStats {
        count: (nblocks * QK) as u64,
        ..ErrorStats::default()
    };
    let mut max_err = [0.0f32; LANES];
    for (bi, dst) in out.chunks_exact_mut(bb).take(nblocks).enumerate() {
        let mut src = [0.0f32; QK];
        load(bi, &mut src);
        // NaN and ±Inf read as +0.0, and counted.
        let mut xs = [0.0f32; QK];
        let mut all_finite = true;
        for (s, &v) in xs.iter_mut().zip(&src) {
            all_finite &= v.is_finite();
            *s = if v.is_finite() { v } else { 0.0 };
        }
        if !all_finite {
            for (j, v) in src.iter().enumerate() {
                if !v.is_finite() {
                    stats.nonfinite += 1;
                    stats.first_nonfinite.get_or_insert((bi * QK + j) as u64);
                }
            }
        }
        let flags = quant(&xs, dst);
        stats.overflowed_groups += flags.overflowed as u64;
        stats.zeroed_groups += flags.zeroed as u64;
        let mut y = [0.0f32; QK];
        dequant(dst, &mut y);
        let mut sum_sq = [0.0f64; LANES];
        let mut sum_sq_err = [0.0f64; LANES];
        let mut block_max = [0.0f32; LANES];
        for (xc, yc) in xs.chunks_exact(LANES).zip(y.chunks_exact(LANES)) {
            for l in 0..LANES {
                let e = xc[l] - yc[l];
                sum_sq[l] += (xc[l] as f64) * (xc[l] as f64);
                sum_sq_err[l] += (e as f64) * (e as f64);
                if e.abs() > block_max[l] {
                    block_max[l] = e.abs();
                }
            }
        }
        stats.sum_sq += sum_sq.iter().sum::<f64>();
        // An overflowed block does not decode to finite values: it adds no error.
        if !flags.overflowed {
            stats.sum_sq_err += sum_sq_err.iter().sum::<f64>();
            for l in 0..LANES {
                max_err[l] = max_err[l].max(block_max[l]);
            }
        }
    }
    stats.max_abs_err = max_err.iter().fold(0.0f32, |a, &b| a.max(b));
    stats
}

/// The specification over `nblocks` blocks read by `load` (lengths already checked).
#[inline(always)]
fn quantize_spec(
    ty: GgmlType,
    nblocks: usize,
    load: impl Fn(usize, &mut [f32; QK]),
    out: &mut [u8],
) -> ErrorStats {
    let bb = ty.block_bytes();
    match ty {
        GgmlType::Q8_0 => quantize_all(bb, nblocks, load, out, quantize_q8_0, dequantize_q8_0),
        GgmlType::Q4_0 => quantize_all(bb, nblocks, load, out, quantize_q4_0, dequantize_q4_0),
        GgmlType::Q4_1 => quantize_all(bb, nblocks, load, out, quantize_q4_1, dequantize_q4_1),
    }
}

/// Quantizes `x` (whole blocks of 32, any number of rows back to back) into `out` exactly as gguf-py 0.19.0.
///
/// `out` must hold `x.len() / 32 * ty.block_bytes()` bytes. The bytes are
/// those of `gguf.quants.quantize` (and of ggml's `quantize_row_*_ref`
/// without FMA), except that NaN/±Inf inputs are read as `+0.0`. The
/// statistics compare each finite input with what [`dequantize_blocks`]
/// decodes; see the module documentation for the flags.
///
/// # Panics
/// If `x.len()` is not a multiple of 32 or `out` has the wrong length.
pub fn quantize_blocks(ty: GgmlType, x: &[f32], out: &mut [u8]) -> ErrorStats {
    check_lengths(ty, x.len(), out);
    quantize_spec(
        ty,
        x.len() / QK,
        |bi, b| b.copy_from_slice(&x[bi * QK..(bi + 1) * QK]),
        out,
    )
}

/// [`quantize_blocks`] with the implementation `isa`: the same bytes, the same
/// counts and flags, and the same `max_abs_err`, bit for bit, for every input;
/// `sum_sq_err` and `sum_sq` equal up to summation order.
///
/// [`Isa::Scalar`] is [`quantize_blocks`] itself (the specification).
/// [`Isa::Avx2`] quantizes eight blocks at a time with AVX2 + F16C and runs
/// the specification for any block that holds a NaN or ±Inf, values whose
/// squares overflow f32 when summed (`|x|` of about `10^19` and above), or
/// whose `1/d` overflows. [`Isa::Avx512`] runs the AVX2 kernels.
///
/// # Panics
/// If `isa` is not available on this CPU, if `x.len()` is not a multiple of
/// 32 or if `out` has the wrong length.
pub fn quantize_blocks_with(isa: Isa, ty: GgmlType, x: &[f32], out: &mut [u8]) -> ErrorStats {
    quantize_blocks_src(isa, ty, Src::F32(x), out)
}

/// [`quantize_blocks_with`] on F32, F16 or BF16 input: the blocks of the input converted to f32 (exact).
///
/// The bytes, counts, flags and `max_abs_err` are those of [`quantize_blocks`]
/// on the converted values, bit for bit, for every `isa` (a NaN converts to a
/// NaN, so it is counted and read as `+0.0` as in f32 input); `sum_sq_err`
/// and `sum_sq` are equal up to summation order ([`Isa::Scalar`]: exactly).
/// [`Isa::Scalar`] converts block by block and runs the specification;
/// [`Isa::Avx2`] converts eight blocks at a time in registers into an L1
/// buffer and runs the f32 vector code on it; [`Isa::Avx512`] runs the AVX2 kernels.
///
/// # Panics
/// If `isa` is not available on this CPU, if `src.len()` is not a multiple
/// of 32 or if `out` has the wrong length.
pub fn quantize_blocks_src(isa: Isa, ty: GgmlType, src: Src<'_>, out: &mut [u8]) -> ErrorStats {
    check_lengths(ty, src.len(), out);
    let nblocks = src.len() / QK;
    match (isa, src) {
        (Isa::Scalar, Src::F32(x)) => quantize_blocks(ty, x, out),
        (Isa::Scalar, Src::F16(h)) => quantize_spec(
            ty,
            nblocks,
            |bi, b| {
                for (o, v) in b.iter_mut().zip(&h[bi * QK..(bi + 1) * QK]) {
                    *o = v.to_f32();
                }
            },
            out,
        ),
        (Isa::Scalar, Src::BF16(h)) => quantize_spec(
            ty,
            nblocks,
            |bi, b| {
                for (o, v) in b.iter_mut().zip(&h[bi * QK..(bi + 1) * QK]) {
                    *o = v.to_f32();
                }
            },
            out,
        ),
        (Isa::Avx2 | Isa::Avx512, src) => {
            assert!(isa.is_available(), "{isa} is not available on this CPU");
            crate::arch::avx2_ggml_quantize_blocks(ty, src, out)
        }
    }
}

/// The length checks of [`quantize_blocks`], for an input of `n` elements.
fn check_lengths(ty: GgmlType, n: usize, out: &[u8]) {
    assert!(
        n.is_multiple_of(QK),
        "{}: input length {} is not a multiple of {QK}",
        ty.name(),
        n
    );
    assert_eq!(
        out.len(),
        n / QK * ty.block_bytes(),
        "{}: output length",
        ty.name()
    );
}

/// Decodes whole blocks into f32 with the formulas of ggml's `dequantize_row_*`.
///
/// `out` must hold `blocks.len() / ty.block_bytes() * 32` values.
///
/// # Panics
/// If `blocks.len()` is not a multiple of the block size or `out` has the wrong length.
pub fn dequantize_blocks(ty: GgmlType, blocks: &[u8], out: &mut [f32]) {
    let bb = ty.block_bytes();
    assert!(
        blocks.len().is_multiple_of(bb),
        "{}: {} bytes are not whole blocks of {bb}",
        ty.name(),
        blocks.len()
    );
    assert_eq!(
        out.len(),
        blocks.len() / bb * QK,
        "{}: output length",
        ty.name()
    );
    let dequant: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::Q8_0 => dequantize_q8_0,
        GgmlType::Q4_0 => dequantize_q4_0,
        GgmlType::Q4_1 => dequantize_q4_1,
    };
    for (b, y) in blocks.chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
        dequant(b, y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `q8` is `f32::round` (half away from zero) followed by the i8 cast.
    fn q8_reference(v: f32) -> u8 {
        let r = v.round();
        if r.is_finite() {
            r as i8 as u8
        } else {
            0
        }
    }

    #[test]
    fn q8_rounds_like_roundf() {
        let mut values = Vec::new();
        for k in -128..128 {
            let tie = k as f32 + 0.5;
            let mut lo = tie;
            let mut hi = tie;
            values.push(tie);
            for _ in 0..4 {
                lo = f32::from_bits(if lo > 0.0 {
                    lo.to_bits() - 1
                } else {
                    lo.to_bits() + 1
                });
                hi = f32::from_bits(if hi > 0.0 {
                    hi.to_bits() + 1
                } else {
                    hi.to_bits() - 1
                });
                values.extend([lo, hi]);
            }
            values.extend([
                k as f32,
                -(k as f32),
                (k as f32).next_up(),
                (k as f32).next_down(),
            ]);
        }
        // A stride through every f32 of magnitude up to 128 (both signs, subnormals too).
        let top = 128.0f32.to_bits();
        values.extend((0..=top).step_by(9973).map(f32::from_bits));
        values.extend((0..=top).step_by(9973).map(|b| -f32::from_bits(b)));
        values.extend([0.49999997, -0.49999997, 127.0001, -127.0001, 0.0, -0.0]);
        // The quants of a block never exceed 127.0001 in magnitude: compare where i8 holds them.
        for v in values.into_iter().filter(|v| v.abs() < 127.5) {
            assert_eq!(q8(v), q8_reference(v), "{v} ({:#010x})", v.to_bits());
        }
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(q8(v), 0);
        }
    }

    #[test]
    fn q4_truncates_clips_and_zeroes_non_finite() {
        assert_eq!(q4(0.49), 0);
        assert_eq!(q4(8.5), 8);
        assert_eq!(q4(15.999), 15);
        assert_eq!(q4(16.5), 15);
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(q4(v), 0);
        }
    }

    #[test]
    fn f16_conversion_rounds_to_nearest_even_and_overflows_to_inf() {
        assert_eq!(to_f16(65504.0), 0x7BFF);
        assert_eq!(to_f16(65519.0), 0x7BFF);
        assert_eq!(to_f16(65520.0), 0x7C00);
        assert_eq!(to_f16(-1e6), 0xFC00);
        // Ties to even: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10.
        assert_eq!(to_f16(1.0 + 2f32.powi(-11)), 0x3C00);
        assert_eq!(to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3C02);
        // Subnormals are kept; half the smallest one is a tie to (even) zero.
        assert_eq!(to_f16(2f32.powi(-24)), 0x0001);
        assert_eq!(to_f16(2f32.powi(-25)), 0x0000);
        assert_eq!(to_f16(3.0 * 2f32.powi(-25)), 0x0002);
        assert_eq!(to_f16(-0.0), 0x8000);
        assert!(f16_is_inf(0xFC00) && f16_is_zero(0x8000) && !f16_is_inf(0x7E00));
    }

    #[test]
    fn abs_max_first_index_is_numpy_argmax() {
        let mut x = [0.0f32; QK];
        x[5] = 3.0;
        x[9] = -3.0;
        x[20] = 2.0;
        let mut out = [0u8; 18];
        quantize_q4_0(&x, &mut out);
        assert_eq!(from_f16(u16::from_le_bytes([out[0], out[1]])), -0.375);
        x[5] = -3.0;
        x[9] = 3.0;
        quantize_q4_0(&x, &mut out);
        assert_eq!(from_f16(u16::from_le_bytes([out[0], out[1]])), 0.375);
    }
}
