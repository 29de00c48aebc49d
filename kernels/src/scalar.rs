//! The scalar kernels: the specification every other path must match bit for bit.
//!
//! Rules, per group of finite values `x` (a NaN or ±Inf element is counted in
//! [`ErrorStats::nonfinite`] and otherwise treated as 0):
//!
//! * `round(v)` rounds to nearest, ties to even; `R(v)` rounds an f32 to the
//!   scale dtype (ties to even) and saturates to its largest finite value
//!   (counted in `overflowed_groups`).
//! * A scale `s` with `|s|` below the smallest normal f32 (or that rounded to 0)
//!   is stored as `+0` (counted in `zeroed_groups` when the group is not
//!   constant); its inverse `inv` is then 0, otherwise `inv = 1 / s`.
//! * `int8`: `s = R(max|x| / 127)`, `c = clamp(round(x·inv), −127, 127)`.
//! * `int4`: `m` = the largest value if `max ≥ −min`, else the smallest;
//!   `s = R(m / −8)` (so `m` maps to code 0), `c = clamp(round(x·inv), −8, 7) + 8`.
//! * `int8-asym` / `int4-asym` with `L` = 255 / 15: `min = R↓(min x)`, the
//!   largest value of the scale dtype not above the smallest element (so no
//!   element is below the min, and a constant group's error is far below the
//!   dtype's rounding), `s = R((max x − min) / L)`,
//!   `c = clamp(round((x − min)·inv), 0, L)`.
//!
//! The reconstruction used for the error statistics is the format's decoding
//! in f32: `c·s`, `(c − 8)·s`, or `c·s + min`.

use crate::{ErrorStats, QuantFormat, RowsOut, ScaleDtype, Scheme};

/// The parameters chosen for one group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupParams {
    /// The stored scale (representable in the scale dtype).
    pub scale: f32,
    /// The stored min (0 for symmetric schemes).
    pub min: f32,
    /// `1 / scale`, or 0 when the scale is 0.
    pub inv: f32,
    /// The scale or min saturated: the group does not fit the scale dtype.
    pub overflowed: bool,
    /// A non-constant group got a zero scale.
    pub zeroed: bool,
    /// The stored bits of the scale (low 16 bits for F16/BF16).
    pub scale_bits: u32,
    /// The stored bits of the min.
    pub min_bits: u32,
}

/// How a kernel converts between f32 and F16 bits (software or F16C): the
/// results are identical (IEEE round to nearest even), only the speed differs.
pub trait F16Convert {
    /// f32 → F16 bits, rounding to nearest even.
    fn encode(v: f32) -> u16;
    /// F16 bits → f32 (exact).
    fn decode(bits: u16) -> f32;
}

/// F16 conversion through the `half` crate.
#[derive(Clone, Copy, Debug)]
pub struct SoftF16;

impl F16Convert for SoftF16 {
    #[inline(always)]
    fn encode(v: f32) -> u16 {
        half::f16::from_f32(v).to_bits()
    }
    #[inline(always)]
    fn decode(bits: u16) -> f32 {
        half::f16::from_bits(bits).to_f32()
    }
}

/// A value of the scale dtype: as f32, and its stored bits.
#[derive(Clone, Copy, Debug)]
struct Stored {
    v: f32,
    bits: u32,
}

/// Rounds to the scale dtype (ties to even).
#[inline(always)]
fn to_dtype<C: F16Convert>(dt: ScaleDtype, v: f32) -> Stored {
    match dt {
        ScaleDtype::F16 => {
            let b = C::encode(v);
            Stored {
                v: C::decode(b),
                bits: b as u32,
            }
        }
        ScaleDtype::BF16 => {
            let b = half::bf16::from_f32(v);
            Stored {
                v: b.to_f32(),
                bits: b.to_bits() as u32,
            }
        }
        ScaleDtype::F32 => Stored {
            v,
            bits: v.to_bits(),
        },
    }
}

/// The stored form of an f32 that is exactly representable in the dtype.
#[inline(always)]
fn from_bits<C: F16Convert>(dt: ScaleDtype, bits: u32) -> f32 {
    match dt {
        ScaleDtype::F16 => C::decode(bits as u16),
        ScaleDtype::BF16 => half::bf16::from_bits(bits as u16).to_f32(),
        ScaleDtype::F32 => f32::from_bits(bits),
    }
}

/// Replaces NaN and ±Inf by 0.
#[inline(always)]
pub fn finite_or_zero(v: f32) -> f32 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// Rounds to the scale dtype and saturates to its largest finite value.
#[inline(always)]
fn round_saturating<C: F16Convert>(dt: ScaleDtype, v: f32, overflowed: &mut bool) -> Stored {
    let r = to_dtype::<C>(dt, v);
    if r.v.is_finite() {
        return r;
    }
    *overflowed = true;
    let sign = v.is_sign_negative();
    let bits = match dt {
        ScaleDtype::F16 => 0x7BFF | if sign { 0x8000 } else { 0 },
        ScaleDtype::BF16 => 0x7F7F | if sign { 0x8000 } else { 0 },
        ScaleDtype::F32 => f32::MAX.copysign(v).to_bits(),
    };
    Stored {
        v: from_bits::<C>(dt, bits),
        bits,
    }
}

/// Rounds down to the scale dtype (the largest representable value ≤ `v`), saturating.
#[inline(always)]
fn round_down_saturating<C: F16Convert>(dt: ScaleDtype, v: f32, overflowed: &mut bool) -> Stored {
    let r = round_saturating::<C>(dt, v, overflowed);
    if r.v <= v || dt == ScaleDtype::F32 {
        return r;
    }
    // r > v: step one unit down in the dtype's own encoding, never past its largest
    // finite magnitude (that would be −Inf: keep the saturated value, flagged).
    let bits = next_down_bits(r.bits as u16, 0x8000) as u32;
    let d = from_bits::<C>(dt, bits);
    if d.is_finite() {
        Stored { v: d, bits }
    } else {
        *overflowed = true;
        r
    }
}

/// The next lower 16-bit float (sign bit `sign`) of a finite value.
#[inline(always)]
fn next_down_bits(bits: u16, sign: u16) -> u16 {
    if bits & !sign == 0 {
        sign | 1 // ±0 → the smallest negative subnormal
    } else if bits & sign == 0 {
        bits - 1 // positive: toward zero
    } else {
        bits + 1 // negative: away from zero
    }
}

/// Finishes a scale: flushes magnitudes below the smallest normal f32 to +0.
#[inline(always)]
fn finish(scale: Stored, min: Stored, overflowed: bool, spread: bool) -> GroupParams {
    if scale.v.abs() < f32::MIN_POSITIVE {
        GroupParams {
            scale: 0.0,
            min: min.v,
            inv: 0.0,
            overflowed,
            zeroed: spread,
            scale_bits: 0,
            min_bits: min.bits,
        }
    } else {
        GroupParams {
            scale: scale.v,
            min: min.v,
            inv: 1.0 / scale.v,
            overflowed,
            zeroed: false,
            scale_bits: scale.bits,
            min_bits: min.bits,
        }
    }
}

/// The smallest and largest value of a group, NaN and ±Inf read as 0 (`(0, 0)` when empty).
pub fn group_range(group: &[f32]) -> (f32, f32) {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &v in group {
        let v = finite_or_zero(v);
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if group.is_empty() {
        (0.0, 0.0)
    } else {
        (lo, hi)
    }
}

/// Chooses the scale (and min) of one group; see the module documentation.
pub fn group_params(scheme: Scheme, dt: ScaleDtype, group: &[f32]) -> GroupParams {
    let (lo, hi) = group_range(group);
    params_from_range(scheme, dt, lo, hi)
}

/// Chooses the scale (and min) of a group whose values span `[lo, hi]`.
///
/// Every kernel path computes its groups' parameters with this one function.
pub fn params_from_range(scheme: Scheme, dt: ScaleDtype, lo: f32, hi: f32) -> GroupParams {
    params_from_range_with::<SoftF16>(scheme, dt, lo, hi)
}

/// [`params_from_range`] with a given F16 conversion (identical results).
#[inline(always)]
pub fn params_from_range_with<C: F16Convert>(
    scheme: Scheme,
    dt: ScaleDtype,
    lo: f32,
    hi: f32,
) -> GroupParams {
    // −0 and +0 compare equal, so reductions may return either: make zeros +0.
    let (lo, hi) = (lo + 0.0, hi + 0.0);
    let mut overflowed = false;
    let zero = Stored { v: 0.0, bits: 0 };
    match scheme {
        Scheme::Int8Sym => {
            let amax = hi.max(-lo);
            let s = round_saturating::<C>(dt, amax / 127.0, &mut overflowed);
            finish(s, zero, overflowed, amax > 0.0)
        }
        Scheme::Int4Sym => {
            let m = if hi >= -lo { hi } else { lo };
            let s = round_saturating::<C>(dt, m / -8.0, &mut overflowed);
            finish(s, zero, overflowed, m != 0.0)
        }
        Scheme::Int8Asym | Scheme::Int4Asym => {
            let levels = if scheme == Scheme::Int8Asym {
                255.0
            } else {
                15.0
            };
            let min = round_down_saturating::<C>(dt, lo, &mut overflowed);
            let range = hi - min.v;
            let s = round_saturating::<C>(dt, range / levels, &mut overflowed);
            finish(s, min, overflowed, hi > lo)
        }
    }
}

/// Parameters with a given scale and min (0 for symmetric schemes), each
/// rounded to nearest in the scale dtype and saturated (flagged) like RTN's.
/// Unlike [`params_from_range`], elements may fall below the min: their codes
/// clamp. Used by the error-minimising search.
pub fn params_from_scale_min(scheme: Scheme, dt: ScaleDtype, scale: f32, min: f32) -> GroupParams {
    params_from_scale_min_with::<SoftF16>(scheme, dt, scale, min)
}

/// [`params_from_scale_min`] with a given F16 conversion (identical results).
#[inline(always)]
pub fn params_from_scale_min_with<C: F16Convert>(
    scheme: Scheme,
    dt: ScaleDtype,
    scale: f32,
    min: f32,
) -> GroupParams {
    let mut overflowed = false;
    let s = round_saturating::<C>(dt, scale, &mut overflowed);
    let m = if scheme.symmetric() {
        Stored { v: 0.0, bits: 0 }
    } else {
        round_saturating::<C>(dt, min, &mut overflowed)
    };
    finish(s, m, overflowed, true)
}

/// The code of value `v` under `p` (a byte: the `i8` bit pattern for int8).
#[inline(always)]
pub fn code(scheme: Scheme, p: &GroupParams, v: f32) -> u8 {
    let v = finite_or_zero(v);
    match scheme {
        Scheme::Int8Sym => (v * p.inv).round_ties_even().clamp(-127.0, 127.0) as i8 as u8,
        Scheme::Int4Sym => ((v * p.inv).round_ties_even().clamp(-8.0, 7.0) as i8 + 8) as u8,
        Scheme::Int8Asym => ((v - p.min) * p.inv).round_ties_even().clamp(0.0, 255.0) as u8,
        Scheme::Int4Asym => ((v - p.min) * p.inv).round_ties_even().clamp(0.0, 15.0) as u8,
    }
}

/// The value a reader decodes from code `c` under `p` (FORMAT.md, in f32).
#[inline(always)]
pub fn decode(scheme: Scheme, p: &GroupParams, c: u8) -> f32 {
    match scheme {
        Scheme::Int8Sym => (c as i8) as f32 * p.scale,
        Scheme::Int4Sym => (c as i32 - 8) as f32 * p.scale,
        Scheme::Int8Asym | Scheme::Int4Asym => c as f32 * p.scale + p.min,
    }
}

/// An element type kernels read: converted to f32 exactly.
pub trait Element: Copy + Send + Sync + 'static {
    /// The value as f32 (exact for f32, f16 and bf16).
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for half::f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

impl Element for half::bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

/// Checks the slice sizes of a call and returns the number of rows.
pub(crate) fn check_sizes(fmt: &QuantFormat, k: usize, len: usize, out: &RowsOut<'_>) -> usize {
    assert!(fmt.group > 0, "group size must be at least 1");
    if len == 0 {
        assert!(out.codes.is_empty() && out.scales.is_empty() && out.mins.is_empty());
        assert!(out.super_scales.is_empty() && out.super_mins.is_empty());
        return 0;
    }
    assert!(
        k > 0 && len.is_multiple_of(k),
        "src is not whole rows of {k}"
    );
    let rows = len / k;
    assert_eq!(
        out.codes.len(),
        rows * fmt.code_bytes_per_row(k),
        "codes slice size"
    );
    assert_eq!(
        out.scales.len(),
        rows * fmt.scale_bytes_per_row(k),
        "scales slice size"
    );
    assert_eq!(
        out.mins.len(),
        rows * fmt.min_bytes_per_row(k),
        "mins slice size"
    );
    assert_eq!(
        out.super_scales.len(),
        rows * fmt.super_bytes_per_row(k),
        "super scales slice size"
    );
    assert_eq!(
        out.super_mins.len(),
        rows * fmt.super_min_bytes_per_row(k),
        "super mins slice size"
    );
    rows
}

/// Writes code `c` of element `pos` of a packed row.
#[inline(always)]
pub(crate) fn put_code(codes: &mut [u8], four_bit: bool, pos: usize, c: u8) {
    if !four_bit {
        codes[pos] = c;
    } else if pos.is_multiple_of(2) {
        codes[pos / 2] = c;
    } else {
        codes[pos / 2] |= c << 4;
    }
}

/// Stores a group's scale (and min) at group index `gi` of row `r`.
#[inline(always)]
pub(crate) fn put_params(
    fmt: &QuantFormat,
    k: usize,
    out: &mut RowsOut<'_>,
    r: usize,
    gi: usize,
    p: &GroupParams,
) {
    // Fixed-width stores of the bits computed with the parameters: a slice copy of a
    // run-time length would call memcpy for every group.
    let put = |dst: &mut [u8], i: usize, bits: u32| match fmt.scale_dtype {
        ScaleDtype::F32 => dst[4 * i..4 * i + 4].copy_from_slice(&bits.to_le_bytes()),
        _ => dst[2 * i..2 * i + 2].copy_from_slice(&(bits as u16).to_le_bytes()),
    };
    let i = r * fmt.groups_per_row(k) + gi;
    put(out.scales, i, p.scale_bits);
    if !fmt.scheme.symmetric() {
        put(out.mins, i, p.min_bits);
    }
}

/// Quantizes elements `from..to` of a group with parameters `p` (scalar), writing codes
/// into the row's packed `codes` at row positions `from..to` and adding to `stats`.
#[inline(always)]
pub(crate) fn quantize_span<T: Element>(
    scheme: Scheme,
    p: &GroupParams,
    group: &[T],
    group_start: usize,
    from: usize,
    codes: &mut [u8],
    stats: &mut ErrorStats,
) {
    let four_bit = scheme.bits() == 4;
    let mut sum_sq_err = 0.0f64;
    let mut sum_sq = 0.0f64;
    for (j, v) in group.iter().enumerate().skip(from) {
        let x = finite_or_zero(v.to_f32());
        let c = code(scheme, p, x);
        let e = x - decode(scheme, p, c);
        sum_sq_err += (e as f64) * (e as f64);
        sum_sq += (x as f64) * (x as f64);
        stats.max_abs_err = stats.max_abs_err.max(e.abs());
        put_code(codes, four_bit, group_start + j, c);
    }
    stats.sum_sq_err += sum_sq_err;
    stats.sum_sq += sum_sq;
}

/// Counts the NaN/±Inf of a group that starts at flat index `base`.
#[inline(always)]
pub(crate) fn count_nonfinite<T: Element>(group: &[T], base: usize, stats: &mut ErrorStats) {
    for (j, v) in group.iter().enumerate() {
        if !v.to_f32().is_finite() {
            stats.nonfinite += 1;
            stats.first_nonfinite.get_or_insert((base + j) as u64);
        }
    }
}

/// Quantizes whole rows; see [`crate::quantize_rows`] for the contract.
pub fn quantize_rows<T: Element>(
    fmt: &QuantFormat,
    k: usize,
    src: &[T],
    mut out: RowsOut<'_>,
) -> ErrorStats {
    let mut stats = ErrorStats::default();
    let rows = check_sizes(fmt, k, src.len(), &out);
    let cb = fmt.code_bytes_per_row(k);
    let mut buf = Vec::with_capacity(fmt.group.min(k));
    for r in 0..rows {
        let row = &src[r * k..(r + 1) * k];
        for (gi, start) in (0..k).step_by(fmt.group).enumerate() {
            let group = &row[start..(start + fmt.group).min(k)];
            buf.clear();
            buf.extend(group.iter().map(|v| v.to_f32()));
            let p = group_params(fmt.scheme, fmt.scale_dtype, &buf);
            put_params(fmt, k, &mut out, r, gi, &p);
            stats.overflowed_groups += p.overflowed as u64;
            stats.zeroed_groups += p.zeroed as u64;
            count_nonfinite(group, r * k + start, &mut stats);
            let codes = &mut out.codes[r * cb..(r + 1) * cb];
            quantize_span(fmt.scheme, &p, group, start, 0, codes, &mut stats);
        }
    }
    stats.count = src.len() as u64;
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(scheme: Scheme, group: usize) -> QuantFormat {
        QuantFormat {
            dq: None,
            scheme,
            group,
            scale_dtype: ScaleDtype::F32,
        }
    }

    /// Runs the kernel on one row and returns (codes, scales, mins, stats).
    fn run(f: QuantFormat, x: &[f32]) -> (Vec<u8>, Vec<f32>, Vec<f32>, ErrorStats) {
        let k = x.len();
        let mut codes = vec![0xAA; f.code_bytes_per_row(k)];
        let mut scales = vec![0; f.scale_bytes_per_row(k)];
        let mut mins = vec![0; f.min_bytes_per_row(k)];
        let st = quantize_rows(
            &f,
            k,
            x,
            RowsOut {
                super_scales: &mut [],
                super_mins: &mut [],
                codes: &mut codes,
                scales: &mut scales,
                mins: &mut mins,
            },
        );
        let to_f32 = |b: &[u8]| {
            b.chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>()
        };
        (codes, to_f32(&scales), to_f32(&mins), st)
    }

    #[test]
    fn int8_sym_hand_computed() {
        // max |x| = 127 → scale 1; codes are the rounded values (ties to even).
        let x = [127.0, -127.0, 0.5, 1.5, -2.5, 3.49, 0.0, -0.0];
        let (c, s, m, st) = run(fmt(Scheme::Int8Sym, 8), &x);
        assert_eq!(s, vec![1.0]);
        assert!(m.is_empty());
        let codes: Vec<i8> = c.iter().map(|&b| b as i8).collect();
        assert_eq!(codes, vec![127, -127, 0, 2, -2, 3, 0, 0]);
        let err: f64 = [0.5f64, 0.5, 0.5, 0.49].iter().map(|e| e * e).sum();
        assert!((st.sum_sq_err - err).abs() < 1e-6);
        assert_eq!(st.count, 8);
    }

    #[test]
    fn int4_sym_uses_code_minus_8_for_the_extreme() {
        // Largest magnitude is negative (−16): scale = −16 / −8 = 2, −16 → code 0.
        let x = [-16.0, 14.0, 2.0, 3.0, -1.0, 0.0];
        let (c, s, _, st) = run(fmt(Scheme::Int4Sym, 6), &x);
        assert_eq!(s, vec![2.0]);
        // codes: -16/2=-8→0, 14/2=7→15, 1→9, 1.5→2 (ties to even)→10, -0.5→-0→8, 0→8
        assert_eq!(c, vec![0xF0, 0xA9, 0x88]);
        assert_eq!(st.max_abs_err, 1.0);
        // Largest magnitude positive (+16): scale = −2, +16 → code 0, −14 → code 15.
        let (c, s, _, _) = run(fmt(Scheme::Int4Sym, 2), &[16.0, -14.0]);
        assert_eq!(s, vec![-2.0]);
        assert_eq!(c, vec![0xF0]);
        // Tie between +a and −a picks +a.
        let (_, s, _, _) = run(fmt(Scheme::Int4Sym, 2), &[-8.0, 8.0]);
        assert_eq!(s, vec![-1.0]);
    }

    #[test]
    fn asym_hand_computed() {
        // min −1, max 14 → scale 1 for int4; codes are x + 1.
        let x = [-1.0, 14.0, 0.0, 6.5, 7.5];
        let (c, s, m, st) = run(fmt(Scheme::Int4Asym, 5), &x);
        assert_eq!((s, m), (vec![1.0], vec![-1.0]));
        // 6.5+1=7.5 → 8 (even), 7.5+1 = 8.5 → 8
        assert_eq!(c, vec![0xF0, 0x81, 0x08]);
        assert_eq!(st.max_abs_err, 0.5);
        let x: Vec<f32> = (0..256).map(|i| i as f32 * 0.5 - 10.0).collect();
        let (c, s, m, st) = run(fmt(Scheme::Int8Asym, 256), &x);
        assert_eq!((s, m), (vec![0.5], vec![-10.0]));
        assert!(c.iter().enumerate().all(|(i, &b)| b as usize == i));
        assert_eq!(st.sum_sq_err, 0.0);
        assert_eq!(st.sqnr_db(), f64::INFINITY);
    }

    #[test]
    fn zeros_and_constants_are_exact() {
        for scheme in Scheme::ALL {
            let (_, s, _, st) = run(fmt(scheme, 4), &[0.0, -0.0, 0.0, 0.0]);
            assert_eq!(s, vec![0.0], "{scheme}");
            assert!(s[0].is_sign_positive());
            assert_eq!((st.sum_sq_err, st.zeroed_groups), (0.0, 0), "{scheme}");
            // A constant group: symmetric → code at the extreme, asym → all in the min.
            let (_, _, _, st) = run(fmt(scheme, 4), &[3.0; 4]);
            assert_eq!(st.sum_sq_err, 0.0, "{scheme}");
        }
    }

    #[test]
    fn short_last_group_and_odd_k_pack_nibbles_per_row() {
        let f = fmt(Scheme::Int4Asym, 2);
        // Two rows of k = 3: groups [0,1] and [2] per row; each row has 2 code bytes.
        let x = [0.0, 15.0, 5.0, 15.0, 0.0, -3.0];
        let mut codes = vec![0xFF; 4];
        let mut scales = vec![0; 16];
        let mut mins = vec![0; 16];
        quantize_rows(
            &f,
            3,
            &x,
            RowsOut {
                super_scales: &mut [],
                super_mins: &mut [],
                codes: &mut codes,
                scales: &mut scales,
                mins: &mut mins,
            },
        );
        // Row 0: codes 0, 15, 0 (one-element group: min = 5, scale 0) → [0xF0, 0x00].
        // Row 1: codes 15, 0, 0 → [0x0F, 0x00]; the unused high nibble is 0.
        assert_eq!(codes, vec![0xF0, 0x00, 0x0F, 0x00]);
        let m: Vec<f32> = mins
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(m, vec![0.0, 5.0, 0.0, -3.0]);
    }

    #[test]
    fn outlier_dominates_only_its_group() {
        let mut x = vec![0.01f32; 64];
        x[3] = 100.0;
        let (_, s, _, _) = run(fmt(Scheme::Int8Sym, 32), &x);
        assert_eq!(s[0], 100.0 / 127.0);
        assert_eq!(s[1], 0.01 / 127.0);
    }

    #[test]
    fn nonfinite_is_counted_and_treated_as_zero() {
        let x = [1.0, f32::NAN, -2.0, f32::INFINITY];
        let (c, s, _, st) = run(fmt(Scheme::Int8Sym, 4), &x);
        assert_eq!((st.nonfinite, st.first_nonfinite), (2, Some(1)));
        assert_eq!(s[0], 2.0 / 127.0);
        assert_eq!(c[1], 0);
        assert_eq!(c[3], 0);
    }

    #[test]
    fn f16_overflow_saturates_and_is_flagged() {
        let f = QuantFormat {
            dq: None,
            scheme: Scheme::Int8Sym,
            group: 2,
            scale_dtype: ScaleDtype::F16,
        };
        let mut scales = vec![0; 2];
        let st = quantize_rows(
            &f,
            2,
            &[1e7, 1.0],
            RowsOut {
                super_scales: &mut [],
                super_mins: &mut [],
                codes: &mut [0; 2],
                scales: &mut scales,
                mins: &mut [],
            },
        );
        assert_eq!(st.overflowed_groups, 1);
        assert_eq!(
            half::f16::from_le_bytes([scales[0], scales[1]]),
            half::f16::MAX
        );
    }

    #[test]
    fn tiny_groups_get_zero_scale_and_are_flagged() {
        let f = QuantFormat {
            dq: None,
            scheme: Scheme::Int4Sym,
            group: 2,
            scale_dtype: ScaleDtype::F16,
        };
        let mut scales = vec![0xFF; 2];
        let st = quantize_rows(
            &f,
            2,
            &[1e-9, -1e-9],
            RowsOut {
                super_scales: &mut [],
                super_mins: &mut [],
                codes: &mut [0; 1],
                scales: &mut scales,
                mins: &mut [],
            },
        );
        assert_eq!(st.zeroed_groups, 1);
        assert_eq!(scales, vec![0, 0]);
    }

    #[test]
    fn asym_min_is_rounded_down_so_constant_groups_stay_exact_enough() {
        for dt in [ScaleDtype::F16, ScaleDtype::BF16] {
            for v in [0.605_344_1f32, -0.605_344_1, 1234.567, -3.0e-6] {
                let p = group_params(Scheme::Int4Asym, dt, &[v, v]);
                assert!(p.min <= v, "{dt:?} {v}: min {} above the value", p.min);
                let err = (v - decode(Scheme::Int4Asym, &p, code(Scheme::Int4Asym, &p, v))).abs();
                // Far below the dtype's own rounding of v (2^-11 or 2^-8 relative),
                // plus F16's subnormal spacing (6e-8) for tiny values.
                assert!(
                    err <= v.abs() * 2f32.powi(-14) + 6e-8,
                    "{dt:?} {v}: error {err}"
                );
            }
        }
    }

    #[test]
    fn asym_min_never_steps_past_the_dtype_range() {
        for (v, over) in [
            (-65510.0f32, true),
            (-70000.0, true),
            (-65504.0, false),
            (65530.0, true),
        ] {
            let p = group_params(Scheme::Int4Asym, ScaleDtype::F16, &[v, v + 1.0]);
            assert!(p.min.is_finite(), "{v}: min {}", p.min);
            assert_eq!(p.overflowed, over, "{v}");
            assert_eq!(half::f16::from_bits(p.min_bits as u16).to_f32(), p.min);
        }
    }
}
