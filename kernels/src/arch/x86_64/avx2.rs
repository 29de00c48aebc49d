//! AVX2 + FMA + F16C kernels: the scalar specification, eight lanes at a time.
//!
//! Per group: one vector pass for min/max (NaN/±Inf lanes read as 0), the
//! group's scale and min from [`params_from_range`] (the same function the
//! specification uses), then one vector pass that computes codes with the
//! specification's operations in the same order (multiply by the inverse
//! scale, round to nearest even, clamp; decode with a multiply then an add,
//! never fused), packs them, and accumulates the error statistics. F16 and
//! BF16 are converted in registers. Tails shorter than eight elements run the
//! specification's own scalar code. Group sizes that are not a multiple of
//! eight (with more than one group per row) run the scalar path. Batches of
//! eight groups skip the clamp (or its lower half) when the groups' extremes
//! show that no code can round outside the range: the same codes, fewer
//! instructions.

use core::arch::x86_64::*;

use half::{bf16, f16};

use crate::scalar::{
    self, check_sizes, count_nonfinite, finite_or_zero, params_from_range_with, put_params,
    quantize_span, Element, F16Convert, GroupParams,
};
use crate::{ErrorStats, QuantFormat, RowsOut, ScaleDtype, Scheme, Src};

/// Eight elements loaded as f32 lanes.
pub(super) trait Load8: Element {
    /// Whether [`Load8::load16`] returns its elements split by 128-bit lane rather than in order.
    const SPLIT: bool = false;

    /// Loads `p[0..8]`.
    ///
    /// # Safety
    /// `p..p+8` must be readable, and the CPU must have AVX2 and F16C.
    unsafe fn load8(p: *const Self) -> __m256;

    /// Loads `p[0..16]`: `p[0..8]` and `p[8..16]`, or with [`Load8::SPLIT`],
    /// `p[0..4] ++ p[8..12]` and `p[4..8] ++ p[12..16]` (what unpacking a 256-bit
    /// register gives; the packing instructions put such halves back in order).
    ///
    /// # Safety
    /// `p..p+16` must be readable, and the CPU must have AVX2 and F16C.
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> (__m256, __m256) {
        // SAFETY: the caller guarantees 16 readable elements.
        unsafe { (Self::load8(p), Self::load8(p.add(8))) }
    }
}

impl Load8 for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable elements; loadu has no alignment need.
        unsafe { _mm256_loadu_ps(p) }
    }
}

impl Load8 for f16 {
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> __m256 {
        // SAFETY: 8 readable f16 = 16 bytes; F16C conversion is exact.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
}

impl Load8 for bf16 {
    const SPLIT: bool = true;

    #[inline(always)]
    unsafe fn load16(p: *const bf16) -> (__m256, __m256) {
        // SAFETY: 16 readable bf16 = 32 bytes; interleaving zero words below each bf16
        // makes the f32 with the same value.
        unsafe {
            let w = _mm256_loadu_si256(p as *const __m256i);
            let z = _mm256_setzero_si256();
            (
                _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, w)),
                _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, w)),
            )
        }
    }

    #[inline(always)]
    unsafe fn load8(p: *const bf16) -> __m256 {
        // SAFETY: 8 readable bf16 = 16 bytes; a bf16 is the high half of an f32.
        unsafe {
            let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
        }
    }
}

/// F16 conversion with F16C instructions (the same IEEE results as software).
pub(super) struct F16c;

impl F16Convert for F16c {
    #[inline(always)]
    fn encode(v: f32) -> u16 {
        // SAFETY: this private type is used only inside the AVX2 and AVX-512 kernels (here,
        // in `search_avx2` and in `avx512`), which run only after their entry points
        // (`crate::quantize_rows`, `crate::quantize_rows_by`, the `search::*_on` helpers)
        // checked that the CPU has F16C, or whose caller guaranteed it
        // (`crate::quantize_rows_unchecked`).
        unsafe {
            _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v))) as u16
        }
    }
    #[inline(always)]
    fn decode(bits: u16) -> f32 {
        // SAFETY: as for `encode`.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
    }
}

/// Error sums kept in registers across groups, flushed to f64 every [`Acc::FLUSH`] elements.
struct Acc {
    e2: __m256,
    x2: __m256,
    emax: __m256,
    n: usize,
}

impl Acc {
    /// Elements summed in f32 (per lane: FLUSH / 8) before adding into the f64 totals.
    const FLUSH: usize = 512;

    #[inline(always)]
    unsafe fn new() -> Acc {
        // SAFETY: register-only AVX operations; the caller has AVX2.
        unsafe {
            Acc {
                e2: _mm256_setzero_ps(),
                x2: _mm256_setzero_ps(),
                emax: _mm256_setzero_ps(),
                n: 0,
            }
        }
    }

    #[inline(always)]
    unsafe fn flush(&mut self, stats: &mut ErrorStats) {
        // SAFETY: register-only AVX operations; the caller has AVX2.
        unsafe {
            stats.sum_sq_err += hsum(self.e2);
            stats.sum_sq += hsum(self.x2);
            stats.max_abs_err = stats.max_abs_err.max(hmax(self.emax));
            self.e2 = _mm256_setzero_ps();
            self.x2 = _mm256_setzero_ps();
            self.n = 0;
        }
    }
}

pub(super) const SYM8: u8 = 0;
pub(super) const ASYM8: u8 = 1;
pub(super) const SYM4: u8 = 2;
pub(super) const ASYM4: u8 = 3;

/// Quantizes whole rows; see [`crate::quantize_rows`].
pub(crate) fn quantize_rows(
    fmt: &QuantFormat,
    k: usize,
    src: Src<'_>,
    out: RowsOut<'_>,
) -> ErrorStats {
    // SAFETY (all three): `crate::quantize_rows` asserted that the CPU has AVX2, FMA and F16C.
    match src {
        Src::F32(x) => unsafe { rows(fmt, k, x, out) },
        Src::F16(x) => unsafe { rows(fmt, k, x, out) },
        Src::BF16(x) => unsafe { rows(fmt, k, x, out) },
    }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows<T: Load8>(fmt: &QuantFormat, k: usize, src: &[T], out: RowsOut<'_>) -> ErrorStats {
    let g = fmt.group;
    if !g.is_multiple_of(8) && g < k {
        // Groups would start off the 8-element grid (and mid-byte at 4 bits).
        return scalar::quantize_rows(fmt, k, src, out);
    }
    // SAFETY: same CPU requirement, passed on.
    unsafe {
        match fmt.scheme {
            Scheme::Int8Sym => rows_of::<T, SYM8>(fmt, k, src, out),
            Scheme::Int8Asym => rows_of::<T, ASYM8>(fmt, k, src, out),
            Scheme::Int4Sym => rows_of::<T, SYM4>(fmt, k, src, out),
            Scheme::Int4Asym => rows_of::<T, ASYM4>(fmt, k, src, out),
        }
    }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C; every group starts at a multiple of 8 in its row.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_of<T: Load8, const S: u8>(
    fmt: &QuantFormat,
    k: usize,
    src: &[T],
    mut out: RowsOut<'_>,
) -> ErrorStats {
    let mut stats = ErrorStats::default();
    let rows = check_sizes(fmt, k, src.len(), &out);
    let cb = fmt.code_bytes_per_row(k);
    // SAFETY: AVX2 is available (this function's contract).
    let mut acc = unsafe { Acc::new() };
    let gpr = fmt.groups_per_row(k);
    let full = k / fmt.group;
    // The batched path: F16 scales, groups of 16..=256 elements in multiples of 16.
    let batched = fmt.scale_dtype == ScaleDtype::F16
        && fmt.group.is_multiple_of(16)
        && fmt.group <= MAX_BATCH_GROUP;
    for r in 0..rows {
        let row = &src[r * k..(r + 1) * k];
        let mut first = 0;
        if batched {
            while first + 8 <= full {
                let codes = &mut out.codes[r * cb..(r + 1) * cb];
                let params = (&mut *out.scales, &mut *out.mins);
                // SAFETY: 8 full groups from `first` lie inside the row; the CPU has AVX2/FMA/F16C.
                let done = unsafe {
                    batch8::<T, S>(
                        fmt.group,
                        row,
                        first,
                        codes,
                        params,
                        r * gpr + first,
                        &mut acc,
                        &mut stats,
                    )
                };
                if !done {
                    break; // a NaN/Inf: these groups (and the rest of the row) go group by group
                }
                first += 8;
            }
        }
        for gi in first..gpr {
            let start = gi * fmt.group;
            let group = &row[start..(start + fmt.group).min(k)];
            let body = group.len() & !7;
            // SAFETY: body ≤ group.len(), in multiples of 8.
            let (mut lo, mut hi, mut clean) = unsafe { range(group, body) };
            for v in &group[body..] {
                let x = v.to_f32();
                clean &= x.is_finite();
                let x = finite_or_zero(x);
                lo = lo.min(x);
                hi = hi.max(x);
            }
            if !clean {
                count_nonfinite(group, r * k + start, &mut stats);
            }
            let p = params_from_range_with::<F16c>(fmt.scheme, fmt.scale_dtype, lo, hi);
            put_params(fmt, k, &mut out, r, gi, &p);
            stats.overflowed_groups += p.overflowed as u64;
            stats.zeroed_groups += p.zeroed as u64;
            let codes = &mut out.codes[r * cb..(r + 1) * cb];
            if lo.abs().max(hi.abs()) >= HUGE {
                // The specification's own loop: the same codes, error sums in f64.
                quantize_span(fmt.scheme, &p, group, start, 0, codes, &mut stats);
                continue;
            }
            // (It flushes the error sums into `stats` itself, every FLUSH elements.)
            // SAFETY: start is a multiple of 8 (checked by `rows`), so vector stores stay inside
            // this group's bytes of `codes`; body ≤ group.len().
            unsafe { code_body::<T, S>(&p, group, body, codes, start, &mut acc, &mut stats) };
            if body < group.len() {
                quantize_span(fmt.scheme, &p, group, start, body, codes, &mut stats);
            }
        }
    }
    // SAFETY: AVX2 is available.
    unsafe { acc.flush(&mut stats) };
    stats.count = src.len() as u64;
    stats
}

/// The smallest and largest code of scheme `S`, as the kernels compute them (before the
/// +8 offset of int4-sym).
pub(super) const fn code_range(s: u8) -> (f32, f32) {
    match s {
        SYM8 => (-127.0, 127.0),
        SYM4 => (-8.0, 7.0),
        ASYM8 => (0.0, 255.0),
        _ => (0.0, 15.0),
    }
}

/// Magnitude (2^59) from which a group's squares, summed in f32 over the elements a
/// lane adds up before a flush (FLUSH / 8 on the per-group path, up to
/// [`MAX_BATCH_GROUP`] + 63 on the batched one), could overflow: such groups take the
/// scalar loop.
const HUGE: f32 = 576_460_752_303_423_488.0;

/// The largest group of the batched path: its error sums stay in f32 for a whole batch
/// (`g` squares per lane), which [`HUGE`] keeps finite up to this size.
const MAX_BATCH_GROUP: usize = 256;

/// Reduces 8 vectors to one whose lane `j` is `op` over all lanes of `v[j]`.
#[inline(always)]
unsafe fn transpose_reduce(v: &[__m256; 8], op: impl Fn(__m256, __m256) -> __m256) -> __m256 {
    // SAFETY: register-only AVX shuffles.
    unsafe {
        let pair = |a: __m256, b: __m256| op(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
        let (a0, a1, a2, a3) = (
            pair(v[0], v[1]),
            pair(v[2], v[3]),
            pair(v[4], v[5]),
            pair(v[6], v[7]),
        );
        let quad = |a: __m256, b: __m256| {
            op(
                _mm256_shuffle_ps::<0x44>(a, b),
                _mm256_shuffle_ps::<0xEE>(a, b),
            )
        };
        let (b0, b1) = (quad(a0, a1), quad(a2, a3));
        op(
            _mm256_permute2f128_ps::<0x20>(b0, b1),
            _mm256_permute2f128_ps::<0x31>(b0, b1),
        )
    }
}

/// Rounds 8 lanes to F16 (nearest even), saturating to ±65504; returns the values and the overflow mask.
#[inline(always)]
unsafe fn f16_saturating(d: __m256) -> (__m256, __m256) {
    // SAFETY: register-only AVX/F16C operations.
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let r = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d));
        let ovf =
            _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, r), _mm256_set1_ps(f32::INFINITY));
        let sat = _mm256_or_ps(_mm256_and_ps(d, sign), _mm256_set1_ps(65504.0));
        (_mm256_blendv_ps(r, sat, ovf), ovf)
    }
}

/// Eight full groups of `g` elements starting at group `first` of `row`: one vector pass
/// for min/max, the 8 groups' parameters in vector lanes (F16 scales, the specification's
/// arithmetic lane by lane), then codes from the row again, now in L1.
///
/// Returns false, having written nothing, when a NaN or ±Inf is among them, or a
/// magnitude of [`HUGE`] or more.
///
/// # Safety
/// AVX2/FMA/F16C; `g % 16 == 0`, `g ≤ MAX_BATCH_GROUP`, and groups `first..first + 8` are full groups of `row`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn batch8<T: Load8, const S: u8>(
    g: usize,
    row: &[T],
    first: usize,
    codes: &mut [u8],
    (scales, mins): (&mut [u8], &mut [u8]),
    gidx: usize,
    acc: &mut Acc,
    stats: &mut ErrorStats,
) -> bool {
    let s0 = first * g;
    assert!(s0 + 8 * g <= row.len() && g <= MAX_BATCH_GROUP && g.is_multiple_of(16));
    assert!((gidx + 8) * 2 <= scales.len());
    let four = S == SYM4 || S == ASYM4;
    assert!(if four {
        (s0 + 8 * g) / 2 <= codes.len()
    } else {
        s0 + 8 * g <= codes.len()
    });
    // SAFETY: every load reads row[s0 .. s0 + 8g], every store writes
    // codes[s0 .. s0 + 8g] (or the halves at 4 bits) and scales/mins at
    // groups gidx .. gidx + 8, all inside their slices by the assertions above.
    unsafe {
        let src = row.as_ptr().add(s0);
        let inf = _mm256_set1_ps(f32::INFINITY);
        let sign = _mm256_set1_ps(-0.0);
        let mut lo = [inf; 8];
        let mut hi = [_mm256_set1_ps(f32::NEG_INFINITY); 8];
        // Σx² in two chains; NaN and ±Inf make it non-finite, which is the only check needed
        // (a finite |x| > 1.8e19 overflows it too: that batch then takes the exact slow path).
        let (mut xa, mut xb) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for j in 0..8 {
            let (mut l0, mut l1, mut h0, mut h1) = (inf, inf, hi[j], hi[j]);
            let base = j * g;
            let mut i = 0;
            while i < g {
                let (x0, x1) = T::load16(src.add(base + i));
                l0 = _mm256_min_ps(l0, x0);
                l1 = _mm256_min_ps(l1, x1);
                h0 = _mm256_max_ps(h0, x0);
                h1 = _mm256_max_ps(h1, x1);
                xa = _mm256_fmadd_ps(x0, x0, xa);
                xb = _mm256_fmadd_ps(x1, x1, xb);
                i += 16;
            }
            lo[j] = _mm256_min_ps(l0, l1);
            hi[j] = _mm256_max_ps(h0, h1);
        }
        let x2 = _mm256_add_ps(xa, xb);
        let finite = _mm256_cmp_ps::<_CMP_LT_OQ>(x2, inf); // false for NaN and +Inf
        if _mm256_movemask_ps(finite) != 0xFF {
            return false;
        }
        let lo = transpose_reduce(&lo, |a, b| _mm256_min_ps(a, b));
        let hi = transpose_reduce(&hi, |a, b| _mm256_max_ps(a, b));
        // Magnitudes from HUGE up could overflow the f32 error sums kept across groups:
        // such batches take the exact path too.
        let magnitude = _mm256_max_ps(hi, _mm256_xor_ps(lo, sign));
        let small = _mm256_cmp_ps::<_CMP_LT_OQ>(magnitude, _mm256_set1_ps(HUGE));
        if _mm256_movemask_ps(small) != 0xFF {
            return false;
        }

        // The parameters of the 8 groups, as `params_from_range` computes them for one.
        let zero = _mm256_setzero_ps();
        let (lo, hi) = (_mm256_add_ps(lo, zero), _mm256_add_ps(hi, zero)); // −0 → +0
        let neg_lo = _mm256_xor_ps(lo, sign);
        let (d, min, min_ovf, spread) = match S {
            SYM8 => {
                let amax = _mm256_max_ps(hi, neg_lo);
                let spread = _mm256_cmp_ps::<_CMP_GT_OQ>(amax, zero);
                (
                    _mm256_div_ps(amax, _mm256_set1_ps(127.0)),
                    zero,
                    zero,
                    spread,
                )
            }
            SYM4 => {
                let m = _mm256_blendv_ps(lo, hi, _mm256_cmp_ps::<_CMP_GE_OQ>(hi, neg_lo));
                let spread = _mm256_cmp_ps::<_CMP_NEQ_OQ>(m, zero);
                (_mm256_div_ps(m, _mm256_set1_ps(-8.0)), zero, zero, spread)
            }
            _ => {
                // Rounded down to F16: the largest F16 ≤ lo, kept within ±65504 (flagged beyond).
                let down = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEG_INF>(lo));
                let min = _mm256_max_ps(down, _mm256_set1_ps(-65504.0));
                let min_ovf = _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_LT_OQ>(lo, _mm256_set1_ps(-65504.0)),
                    _mm256_cmp_ps::<_CMP_GE_OQ>(lo, _mm256_set1_ps(65520.0)),
                );
                let levels = _mm256_set1_ps(if S == ASYM8 { 255.0 } else { 15.0 });
                let spread = _mm256_cmp_ps::<_CMP_GT_OQ>(hi, lo);
                (
                    _mm256_div_ps(_mm256_sub_ps(hi, min), levels),
                    min,
                    min_ovf,
                    spread,
                )
            }
        };
        let (s, s_ovf) = f16_saturating(d);
        let flush = _mm256_cmp_ps::<_CMP_LT_OQ>(
            _mm256_andnot_ps(sign, s),
            _mm256_set1_ps(f32::MIN_POSITIVE),
        );
        let scale = _mm256_andnot_ps(flush, s);
        let inv = _mm256_andnot_ps(flush, _mm256_div_ps(_mm256_set1_ps(1.0), s));
        stats.overflowed_groups +=
            _mm256_movemask_ps(_mm256_or_ps(min_ovf, s_ovf)).count_ones() as u64;
        stats.zeroed_groups += _mm256_movemask_ps(_mm256_and_ps(flush, spread)).count_ones() as u64;
        _mm_storeu_si128(
            scales.as_mut_ptr().add(gidx * 2) as *mut __m128i,
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(scale),
        );
        if S == ASYM8 || S == ASYM4 {
            assert!((gidx + 8) * 2 <= mins.len());
            _mm_storeu_si128(
                mins.as_mut_ptr().add(gidx * 2) as *mut __m128i,
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(min),
            );
        }

        // Codes. Clamping to the code range is skipped when no value of the batch can
        // round outside it: the codes' float values grow monotonically with x (or shrink,
        // for a negative scale), so the group's extremes bound them all.
        let (qlo, qhi) = code_range(S);
        let (a, b) = if S == ASYM8 || S == ASYM4 {
            (
                _mm256_mul_ps(_mm256_sub_ps(lo, min), inv),
                _mm256_mul_ps(_mm256_sub_ps(hi, min), inv),
            )
        } else {
            (_mm256_mul_ps(lo, inv), _mm256_mul_ps(hi, inv))
        };
        let below_ok = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(
            _mm256_min_ps(a, b),
            _mm256_set1_ps(qlo - 0.5),
        )) == 0xFF;
        let above_ok = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(
            _mm256_max_ps(a, b),
            _mm256_set1_ps(qhi + 0.5),
        )) == 0xFF;
        let batch = Batch {
            g,
            src,
            s0,
            dst: codes.as_mut_ptr(),
            inv,
            scale,
            min,
        };
        // (Symmetric int4 often needs the upper bound alone: in a group whose extremes are
        // nearly opposite, the one of smaller magnitude can round to +8: the largest value
        // when the negative extreme dominates, the smallest when the positive one does and
        // the scale is negative.)
        let (e2, emax) = match (below_ok, above_ok) {
            (true, true) => batch_codes::<T, S, CLAMP_NONE>(&batch, acc.e2, acc.emax),
            (true, false) => batch_codes::<T, S, CLAMP_HI>(&batch, acc.e2, acc.emax),
            _ => batch_codes::<T, S, CLAMP_BOTH>(&batch, acc.e2, acc.emax),
        };
        acc.e2 = e2;
        acc.emax = emax;
        acc.x2 = _mm256_add_ps(acc.x2, x2);
        acc.n += 8 * g;
        if acc.n >= Acc::FLUSH {
            acc.flush(stats);
        }
        true
    }
}

/// No code of the batch can round outside the scheme's range.
pub(super) const CLAMP_NONE: u8 = 0;
/// Codes may round above the range, not below it.
pub(super) const CLAMP_HI: u8 = 1;
/// Codes may round outside the range on either side.
pub(super) const CLAMP_BOTH: u8 = 2;

/// What [`batch_codes`] needs of a batch of 8 groups: the group size, where the values
/// are, where the codes go, and the 8 groups' inverse scales, scales and mins in vector
/// lanes.
struct Batch<T> {
    g: usize,
    src: *const T,
    s0: usize,
    dst: *mut u8,
    inv: __m256,
    scale: __m256,
    min: __m256,
}

/// Codes and error sums of the 8 groups of `b`, from the input again (now in L1), clamped
/// to the scheme's range at the bounds `CLAMP` says ([`CLAMP_NONE`] when no code can
/// leave it, [`CLAMP_HI`], [`CLAMP_BOTH`]).
/// Returns the error sums `e2`, `emax` with the batch's errors added.
///
/// # Safety
/// As [`batch8`], whose checks cover every load and store here.
#[inline(always)]
unsafe fn batch_codes<T: Load8, const S: u8, const CLAMP: u8>(
    b: &Batch<T>,
    mut e2: __m256,
    mut emax: __m256,
) -> (__m256, __m256) {
    let (g, src, s0, dst) = (b.g, b.src, b.s0, b.dst);
    let (inv, scale, min) = (b.inv, b.scale, b.min);
    // SAFETY: the caller's contract covers every load and store into `src` and `dst`;
    // the other stores write the local arrays of 8 f32, whole.
    unsafe {
        let (qlo, qhi) = code_range(S);
        let (vlo, vhi) = (_mm256_set1_ps(qlo), _mm256_set1_ps(qhi));
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let pairs = _mm_set1_epi16(0x1001);
        // The group's values again, from the input.
        let ld = |i: usize| T::load16(src.add(i));
        // Each group's parameters are broadcast from memory (a load each, no shuffle).
        let (mut ainv, mut ascale, mut amin) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(ainv.as_mut_ptr(), inv);
        _mm256_storeu_ps(ascale.as_mut_ptr(), scale);
        _mm256_storeu_ps(amin.as_mut_ptr(), min);
        for j in 0..8 {
            let vinv = _mm256_set1_ps(ainv[j]);
            let vscale = _mm256_set1_ps(ascale[j]);
            let vmin = _mm256_set1_ps(amin[j]);
            let quant = |x: __m256| {
                let t = if S == ASYM8 || S == ASYM4 {
                    _mm256_sub_ps(x, vmin)
                } else {
                    x
                };
                let q = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_mul_ps(t, vinv),
                );
                let q = match CLAMP {
                    CLAMP_NONE => q,
                    CLAMP_HI => _mm256_min_ps(q, vhi),
                    _ => _mm256_min_ps(_mm256_max_ps(q, vlo), vhi),
                };
                let xh = if S == ASYM8 || S == ASYM4 {
                    _mm256_add_ps(_mm256_mul_ps(q, vscale), vmin)
                } else {
                    _mm256_mul_ps(q, vscale)
                };
                (q, _mm256_sub_ps(x, xh))
            };
            let mut i = j * g;
            // 32 elements a step when the group allows it: fewer pack instructions.
            while g.is_multiple_of(32) && i < (j + 1) * g {
                let ((x0, x1), (x2, x3)) = (ld(i), ld(i + 16));
                let (q0, er0) = quant(x0);
                let (q1, er1) = quant(x1);
                let (q2, er2) = quant(x2);
                let (q3, er3) = quant(x3);
                // One addition into the running sum per step: a short chain through it
                // even where the compiler keeps it in memory.
                let s01 = _mm256_fmadd_ps(er1, er1, _mm256_mul_ps(er0, er0));
                let s23 = _mm256_fmadd_ps(er3, er3, _mm256_mul_ps(er2, er2));
                e2 = _mm256_add_ps(e2, _mm256_add_ps(s01, s23));
                emax = _mm256_max_ps(
                    emax,
                    _mm256_max_ps(
                        _mm256_max_ps(_mm256_and_ps(er0, abs), _mm256_and_ps(er1, abs)),
                        _mm256_max_ps(_mm256_and_ps(er2, abs), _mm256_and_ps(er3, abs)),
                    ),
                );
                // Words, per 128-bit lane: [q0 0..4, q1 0..4 | q0 4..8, q1 4..8] (and q2, q3).
                let w01 = _mm256_packs_epi32(_mm256_cvtps_epi32(q0), _mm256_cvtps_epi32(q1));
                let w23 = _mm256_packs_epi32(_mm256_cvtps_epi32(q2), _mm256_cvtps_epi32(q3));
                let at = s0 + i;
                match S {
                    SYM8 | ASYM8 => {
                        // Bytes, as dwords: [q0 0..4, q1 0..4, q2 0..4, q3 0..4 | the 4..8 halves].
                        let b = if S == SYM8 {
                            _mm256_packs_epi16(w01, w23)
                        } else {
                            _mm256_packus_epi16(w01, w23)
                        };
                        // (Or, from split loads: [0..8, 16..24 | 8..16, 24..32] as qwords.)
                        let b = _mm256_permutevar8x32_epi32(
                            b,
                            if T::SPLIT {
                                _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7)
                            } else {
                                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)
                            },
                        );
                        _mm256_storeu_si256(dst.add(at) as *mut __m256i, b);
                    }
                    _ => {
                        let b = if S == SYM4 {
                            _mm256_add_epi8(_mm256_packs_epi16(w01, w23), _mm256_set1_epi8(8))
                        } else {
                            _mm256_packus_epi16(w01, w23)
                        };
                        // Nibble pairs, as words: [q0 01 23, q1 01 23, q2 .., q3 .. | the 4..8 halves].
                        let n = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x1001));
                        let n = _mm256_packus_epi16(n, n);
                        let (lo, hi) =
                            (_mm256_castsi256_si128(n), _mm256_extracti128_si256::<1>(n));
                        // (From split loads: dwords [0..8, 16..24] and [8..16, 24..32].)
                        let n = if T::SPLIT {
                            _mm_unpacklo_epi32(lo, hi)
                        } else {
                            _mm_unpacklo_epi16(lo, hi)
                        };
                        _mm_storeu_si128(dst.add(at / 2) as *mut __m128i, n);
                    }
                }
                i += 32;
            }
            while i < (j + 1) * g {
                let (x0, x1) = ld(i);
                let (q0, er0) = quant(x0);
                let (q1, er1) = quant(x1);
                e2 = _mm256_fmadd_ps(er0, er0, e2);
                e2 = _mm256_fmadd_ps(er1, er1, e2);
                emax = _mm256_max_ps(
                    emax,
                    _mm256_max_ps(_mm256_and_ps(er0, abs), _mm256_and_ps(er1, abs)),
                );
                let w = _mm256_packs_epi32(_mm256_cvtps_epi32(q0), _mm256_cvtps_epi32(q1));
                // (Split loads come out of the pack in order.)
                let w = if T::SPLIT {
                    w
                } else {
                    _mm256_permute4x64_epi64::<0xD8>(w)
                };
                let (wl, wh) = (_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
                let at = s0 + i;
                match S {
                    SYM8 => _mm_storeu_si128(dst.add(at) as *mut __m128i, _mm_packs_epi16(wl, wh)),
                    ASYM8 => {
                        _mm_storeu_si128(dst.add(at) as *mut __m128i, _mm_packus_epi16(wl, wh))
                    }
                    _ => {
                        let b = if S == SYM4 {
                            _mm_add_epi8(_mm_packs_epi16(wl, wh), _mm_set1_epi8(8))
                        } else {
                            _mm_packus_epi16(wl, wh)
                        };
                        let n = _mm_maddubs_epi16(b, pairs);
                        _mm_storel_epi64(dst.add(at / 2) as *mut __m128i, _mm_packus_epi16(n, n));
                    }
                }
                i += 16;
            }
        }
        (e2, emax)
    }
}

/// Min and max of `group[..body]` with NaN/±Inf read as 0, and whether all were finite.
///
/// # Safety
/// AVX2/F16C; `body ≤ group.len()` and a multiple of 8.
#[inline(always)]
unsafe fn range<T: Load8>(group: &[T], body: usize) -> (f32, f32, bool) {
    // SAFETY: loads stay below `body ≤ group.len()`.
    unsafe {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let inf = _mm256_set1_ps(f32::INFINITY);
        let mut lo = inf;
        let mut hi = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        let p = group.as_ptr();
        let mut i = 0;
        while i < body {
            let raw = T::load8(p.add(i));
            let fin = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(raw, abs), inf);
            let x = _mm256_and_ps(raw, fin);
            lo = _mm256_min_ps(lo, x);
            hi = _mm256_max_ps(hi, x);
            all = _mm256_and_ps(all, fin);
            i += 8;
        }
        (hmin(lo), hmax(hi), _mm256_movemask_ps(all) == 0xFF)
    }
}

/// Smallest lane.
///
/// # Safety
/// AVX.
#[inline(always)]
pub(super) unsafe fn hmin(v: __m256) -> f32 {
    // SAFETY: register-only operations.
    unsafe {
        let m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_min_ss(m, _mm_shuffle_ps::<0b01>(m, m)))
    }
}

/// Largest lane.
///
/// # Safety
/// AVX.
#[inline(always)]
pub(super) unsafe fn hmax(v: __m256) -> f32 {
    // SAFETY: register-only operations.
    unsafe {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m)))
    }
}

/// Sum of the lanes, in f64.
///
/// # Safety
/// AVX.
#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f64 {
    // SAFETY: register-only operations.
    unsafe {
        let d = _mm256_add_pd(
            _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
        );
        let s = _mm_add_pd(_mm256_castpd256_pd128(d), _mm256_extractf128_pd::<1>(d));
        _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
    }
}

/// Codes of `group[..body]` into the packed row `codes` (group at row position `start`),
/// adding the errors to `acc`, which is flushed into `stats` whenever it reaches
/// [`Acc::FLUSH`] elements (so `acc.n < FLUSH` on return).
///
/// # Safety
/// AVX2/FMA/F16C; `body ≤ group.len()`, a multiple of 8; `start` a multiple of 8 with
/// `start + body` inside the row.
#[inline(always)]
unsafe fn code_body<T: Load8, const S: u8>(
    p: &GroupParams,
    group: &[T],
    body: usize,
    codes: &mut [u8],
    start: usize,
    acc: &mut Acc,
    stats: &mut ErrorStats,
) {
    let asym = S == ASYM8 || S == ASYM4;
    let (qlo, qhi) = code_range(S);
    assert!(
        start + body
            <= if S == SYM8 || S == ASYM8 {
                codes.len()
            } else {
                codes.len() * 2
            }
    );
    // SAFETY: loads stay below `body`; stores write bytes start..start+body (8-bit) or
    // start/2..(start+body)/2 (4-bit), inside `codes` by the assertion above.
    unsafe {
        let inv = _mm256_set1_ps(p.inv);
        let scale = _mm256_set1_ps(p.scale);
        let min = _mm256_set1_ps(p.min);
        let (vlo, vhi) = (_mm256_set1_ps(qlo), _mm256_set1_ps(qhi));
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let inf = _mm256_set1_ps(f32::INFINITY);
        let pairs = _mm_set1_epi16(0x1001); // byte weights 1, 16: c[2i] + 16·c[2i+1]
        let (mut e2, mut x2, mut emax) = (acc.e2, acc.x2, acc.emax);
        let src = group.as_ptr();
        let dst = codes.as_mut_ptr();
        let mut i = 0;
        while i < body {
            let raw = T::load8(src.add(i));
            let x = _mm256_and_ps(
                raw,
                _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(raw, abs), inf),
            );
            let t = if asym { _mm256_sub_ps(x, min) } else { x };
            let q = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(t, inv),
            );
            let q = _mm256_min_ps(_mm256_max_ps(q, vlo), vhi);
            let xh = if asym {
                _mm256_add_ps(_mm256_mul_ps(q, scale), min)
            } else {
                _mm256_mul_ps(q, scale)
            };
            let e = _mm256_sub_ps(x, xh);
            e2 = _mm256_fmadd_ps(e, e, e2);
            x2 = _mm256_fmadd_ps(x, x, x2);
            emax = _mm256_max_ps(emax, _mm256_and_ps(e, abs));
            acc.n += 8;
            if acc.n >= Acc::FLUSH {
                // A long group (one per row, say) must not sum more than FLUSH / 8
                // squares per lane in f32 either.
                (acc.e2, acc.x2, acc.emax) = (e2, x2, emax);
                acc.flush(stats);
                (e2, x2) = (acc.e2, acc.x2);
            }
            let c = if S == SYM4 {
                _mm256_add_ps(q, _mm256_set1_ps(8.0))
            } else {
                q
            };
            let c = _mm256_cvtps_epi32(c);
            let w = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256::<1>(c));
            if S == SYM8 {
                _mm_storel_epi64(dst.add(start + i) as *mut __m128i, _mm_packs_epi16(w, w));
            } else if S == ASYM8 {
                _mm_storel_epi64(dst.add(start + i) as *mut __m128i, _mm_packus_epi16(w, w));
            } else {
                let b = _mm_packus_epi16(w, w);
                let n = _mm_maddubs_epi16(b, pairs);
                let n = _mm_packus_epi16(n, n);
                (dst.add((start + i) / 2) as *mut i32).write_unaligned(_mm_cvtsi128_si32(n));
            }
            i += 8;
        }
        acc.e2 = e2;
        acc.x2 = x2;
        acc.emax = emax;
    }
}
