//! AVX2 + F16C kernels for ggml's Q8_0, Q4_0 and Q4_1 blocks: the scalar
//! specification in [`crate::ggml`], bit for bit, eight blocks at a time.
//!
//! A batch of eight blocks (256 values) takes two passes over the input:
//!
//! 1. Each block is loaded once for its largest `|x|` (Q8_0: the integer
//!    maximum of the absolute-value bits, exact for finite values) or its min
//!    and max (Q4_0, Q4_1), and Σx². A transposing reduction puts block `j`'s
//!    values in lane `j`; the eight `d`, `id` and f16 `d` (and `m`) are then
//!    computed together with the specification's f32 operations (a vector
//!    division is the same IEEE division, and F16C's round-to-nearest-even
//!    conversion is `half::f16::from_f32`: ±Inf on overflow, f16 subnormals
//!    kept). Q4_0's "first element of largest |x|" is the max or the min,
//!    whichever is larger in magnitude; only when both are (or the block is
//!    all zeros) is the block searched for the first one. A zero Q4_1 min or
//!    max is replaced by the block's first zero, so its sign is the
//!    specification's.
//! 2. Per block (reloaded from L1), the codes with the specification's
//!    operations in the same order, each rounded on its own (a multiply then
//!    an add: never fused), the decode, and the error sums.
//!
//! A batch goes through the vector code only when its Σx² lanes are finite
//! (so it holds no NaN or ±Inf, and no square or partial sum overflows f32:
//! min/max and the sums can be trusted) and every `id` is finite. Then every
//! value before an integer conversion is finite and small (`|x·id| ≤ 127.0001`
//! for Q8_0, `x·id + 8.5` and `(x − min)·id + 0.5` in `[0.49, 16.5]` for the
//! 4-bit types, NOTES.md), so the specification's "non-finite becomes 0"
//! never applies and `_mm256_cvttps_epi32` never sees an out-of-range value.
//! Otherwise its blocks are retried one at a time, and a block that still
//! fails (NaN, ±Inf, `|x|` near `1.8e19` or above, or a `d` so small that `1/d`
//! overflows) runs the scalar specification itself. The last `< 8` blocks of
//! a call go one at a time too.
//!
//! F16 and BF16 input is converted, eight blocks at a time, in registers
//! (F16C's `vcvtph2ps`; BF16 zero-extended and shifted left by 16, both exact,
//! a NaN staying a NaN) into a 1 KiB buffer that stays in L1, and the f32 code
//! above runs on the buffer, scalar fallback included: the result is the
//! specification's on the converted values.
//!
//! The error statistics differ from the scalar ones only in summation order:
//! squares are summed in f32 (at most 16 terms per lane and accumulator, then
//! in f64 per batch), where the specification sums f64 squares. The errors of
//! a block whose f16 `d` or `m` overflowed are masked to 0 (it adds none); a
//! block whose `d` and `m` fit f16 has `|x| < 65520 · 127`, so the error
//! squares that count never overflow. `max_abs_err`, the counts and the
//! flags are exact.

use core::arch::x86_64::*;

use half::{bf16, f16};

use super::avx2::{hmax, hsum};
use crate::ggml::{self, GgmlType};
use crate::{ErrorStats, Src};

const QK: usize = GgmlType::BLOCK;

const Q8_0: u8 = 0;
const Q4_0: u8 = 1;
const Q4_1: u8 = 2;

/// Quantizes whole blocks; see [`crate::ggml::quantize_blocks_src`].
///
/// The caller has checked that the CPU has AVX2, FMA and F16C.
///
/// # Panics
/// If `src.len()` is not a multiple of 32 or `out` has the wrong length.
pub(crate) fn quantize_blocks(ty: GgmlType, src: Src<'_>, out: &mut [u8]) -> ErrorStats {
    assert!(
        src.len().is_multiple_of(QK) && out.len() == src.len() / QK * ty.block_bytes(),
        "{}: lengths {} and {}",
        ty.name(),
        src.len(),
        out.len()
    );
    match src {
        Src::F32(x) => quantize_typed(ty, x, out),
        Src::F16(x) => quantize_typed(ty, x, out),
        Src::BF16(x) => quantize_typed(ty, x, out),
    }
}

/// [`quantize_blocks`] on one element type (lengths checked by the caller).
#[inline(always)]
fn quantize_typed<E: Blocks>(ty: GgmlType, x: &[E], out: &mut [u8]) -> ErrorStats {
    // SAFETY (all three): `crate::ggml::quantize_blocks_src` calls this only after
    // asserting that the CPU has AVX2, FMA and F16C; `quantize_blocks` asserted the lengths.
    match ty {
        GgmlType::Q8_0 => unsafe { blocks::<Q8_0, E>(ty, x, out) },
        GgmlType::Q4_0 => unsafe { blocks::<Q4_0, E>(ty, x, out) },
        GgmlType::Q4_1 => unsafe { blocks::<Q4_1, E>(ty, x, out) },
    }
}

/// Eight blocks of f32 (1 KiB), aligned to a cache line: converted F16/BF16 input.
#[repr(C, align(64))]
struct Batch([f32; 8 * QK]);

/// An input element type: its blocks as f32.
trait Blocks: Sized {
    /// Blocks `b..b + n` of `x` (`n ≤ 8`) as f32: `x` itself for f32, else the exact
    /// conversion into `buf`.
    ///
    /// # Safety
    /// AVX2 and F16C; `(b + n)·32 ≤ x.len()` and `n ≤ 8`.
    unsafe fn get<'a>(x: &'a [Self], b: usize, n: usize, buf: &'a mut Batch) -> &'a [f32];
}

impl Blocks for f32 {
    #[inline(always)]
    unsafe fn get<'a>(x: &'a [f32], b: usize, n: usize, _: &'a mut Batch) -> &'a [f32] {
        &x[b * QK..(b + n) * QK]
    }
}

/// Converts `n` blocks of 16-bit values at `p` into `buf` with `cvt8` (8 values at a time).
///
/// # Safety
/// `p..p + n·32` readable, `n ≤ 8`; `cvt8` is safe to call on 8 readable values.
#[inline(always)]
unsafe fn widen(
    p: *const u16,
    n: usize,
    buf: &mut Batch,
    cvt8: impl Fn(*const u16) -> __m256,
) -> &[f32] {
    assert!(n <= 8);
    let dst = buf.0.as_mut_ptr();
    for i in 0..n * QK / 8 {
        // SAFETY: reads p[8i .. 8i + 8] with 8i + 8 ≤ n·32 (the caller's contract) and
        // writes buf[8i .. 8i + 8] with n·32 ≤ 256 (asserted); storeu needs no alignment.
        unsafe { _mm256_storeu_ps(dst.add(8 * i), cvt8(p.add(8 * i))) };
    }
    &buf.0[..n * QK]
}

impl Blocks for f16 {
    #[inline(always)]
    unsafe fn get<'a>(x: &'a [f16], b: usize, n: usize, buf: &'a mut Batch) -> &'a [f32] {
        let x = &x[b * QK..(b + n) * QK];
        // SAFETY: `f16` is `repr(transparent)` over u16, so `x` is n·32 readable u16; the
        // conversion is F16C's `vcvtph2ps` (exact; a NaN stays a NaN), on 8 readable
        // values, and the CPU has F16C (this function's contract).
        unsafe {
            widen(x.as_ptr() as *const u16, n, buf, |p| {
                _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
            })
        }
    }
}

impl Blocks for bf16 {
    #[inline(always)]
    unsafe fn get<'a>(x: &'a [bf16], b: usize, n: usize, buf: &'a mut Batch) -> &'a [f32] {
        let x = &x[b * QK..(b + n) * QK];
        // SAFETY: `bf16` is `repr(transparent)` over u16, so `x` is n·32 readable u16; a
        // bf16 is the high half of an f32 (exact; a NaN stays a NaN): zero-extend and
        // shift left by 16, on 8 readable values; the CPU has AVX2 (this function's contract).
        unsafe {
            widen(x.as_ptr() as *const u16, n, buf, |p| {
                let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
            })
        }
    }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C; `x.len() % 32 == 0` and
/// `out.len() == x.len() / 32 * ty.block_bytes()`, with `ty` the type `T` stands for.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blocks<const T: u8, E: Blocks>(ty: GgmlType, x: &[E], out: &mut [u8]) -> ErrorStats {
    let bb = ty.block_bytes();
    let nb = x.len() / QK;
    let mut stats = ErrorStats::default();
    let mut emax = _mm256_setzero_ps();
    let mut buf = Batch([0.0; 8 * QK]);
    let mut b = 0;
    while b < nb {
        let n = (nb - b).min(8);
        // SAFETY: blocks b..b + n exist (n ≤ nb − b, n ≤ 8); the CPU has AVX2/F16C.
        let xs = unsafe { E::get(x, b, n, &mut buf) };
        let os = &mut out[b * bb..(b + n) * bb];
        // SAFETY: `xs` holds 8 blocks and `os` their 8 output blocks (n == 8 here);
        // the CPU has AVX2/FMA/F16C (this function's contract).
        let done = n == 8 && unsafe { batch::<T, 8>(xs, os, &mut emax, &mut stats) };
        if !done {
            for j in 0..n {
                let xj = &xs[j * QK..(j + 1) * QK];
                let oj = &mut os[j * bb..(j + 1) * bb];
                // SAFETY: one block and its output block; same CPU features.
                if !unsafe { batch::<T, 1>(xj, oj, &mut emax, &mut stats) } {
                    // NaN, ±Inf, a huge value or an infinite `id`: the specification itself
                    // (on the exactly converted values, for F16/BF16 input).
                    let st = ggml::quantize_blocks(ty, xj, oj);
                    stats.merge(&st, ((b + j) * QK) as u64);
                }
            }
        }
        b += n;
    }
    // SAFETY: register-only AVX operations; the CPU has AVX.
    stats.max_abs_err = stats.max_abs_err.max(unsafe { hmax(emax) });
    stats.count = x.len() as u64;
    stats
}

/// Loads the 32 values of a block.
///
/// # Safety
/// `p..p+32` readable; AVX.
#[inline(always)]
unsafe fn load4(p: *const f32) -> [__m256; 4] {
    // SAFETY: 32 readable f32 (the caller's contract); loadu needs no alignment.
    unsafe {
        [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ]
    }
}

/// `N` blocks (`1 ≤ N ≤ 8`): writes their bytes, adds their flags and error sums, and
/// returns true; or returns false having written and added nothing when one of them
/// is not for the vector code (see the module documentation).
///
/// # Safety
/// AVX2/FMA/F16C; `x.len() == N·32` and `out.len() == N·block_bytes` (asserted).
#[inline(always)]
unsafe fn batch<const T: u8, const N: usize>(
    x: &[f32],
    out: &mut [u8],
    emax: &mut __m256,
    stats: &mut ErrorStats,
) -> bool {
    let bb = match T {
        Q8_0 => 34,
        Q4_0 => 18,
        _ => 20,
    };
    assert!((1..=8).contains(&N) && x.len() == N * QK && out.len() == N * bb);
    // SAFETY: every load reads x[j·32 .. j·32 + 32] for j < N, and every store writes
    // out[j·bb .. (j + 1)·bb] for j < N: inside the slices by the assertion above (`codes`
    // has the same contract). The remaining operations work on registers and local
    // arrays. The CPU has AVX2/FMA/F16C.
    unsafe {
        let p = x.as_ptr();
        let zero = _mm256_setzero_ps();
        let inf = _mm256_set1_ps(f32::INFINITY);
        let sign = _mm256_set1_ps(-0.0);
        let abs_bits = _mm256_set1_epi32(0x7FFF_FFFF);

        // Pass 1: per block, max |x| as bits (Q8_0) or min and max (Q4_0, Q4_1), and Σx².
        let mut am = [zero; 8];
        let mut lo = [zero; 8];
        let mut hi = [zero; 8];
        let (mut xa, mut xb) = (zero, zero);
        for j in 0..N {
            let v = load4(p.add(j * QK));
            if T == Q8_0 {
                let a: [__m256i; 4] =
                    core::array::from_fn(|k| _mm256_and_si256(_mm256_castps_si256(v[k]), abs_bits));
                am[j] = _mm256_castsi256_ps(_mm256_max_epi32(
                    _mm256_max_epi32(a[0], a[1]),
                    _mm256_max_epi32(a[2], a[3]),
                ));
            } else {
                lo[j] = _mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3]));
                hi[j] = _mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3]));
            }
            // Statistics only (the specification sums f64 squares): fusing is harmless here.
            xa = _mm256_fmadd_ps(v[0], v[0], xa);
            xb = _mm256_fmadd_ps(v[1], v[1], xb);
            xa = _mm256_fmadd_ps(v[2], v[2], xa);
            xb = _mm256_fmadd_ps(v[3], v[3], xb);
        }
        // NaN and ±Inf make Σx² non-finite, and so does a square or partial sum that
        // overflows f32: then min/max (which drop NaN) and the sums are not to be trusted.
        let x2 = _mm256_add_ps(xa, xb);
        if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x2, inf)) != 0xFF {
            return false;
        }

        // The blocks' largest |x|, d (f32), and for Q4_1 their min and max; lane j is block j.
        let (amax, d, mn, mx) = match T {
            Q8_0 => {
                let amax = transpose_reduce::<MAX_I32>(&am);
                (amax, _mm256_div_ps(amax, _mm256_set1_ps(127.0)), zero, zero)
            }
            Q4_0 => {
                let lo = transpose_reduce::<MIN_PS>(&lo);
                let hi = transpose_reduce::<MAX_PS>(&hi);
                let neg_lo = _mm256_xor_ps(lo, sign);
                let amax = _mm256_max_ps(hi, neg_lo);
                // The first element of largest |x|, with its sign: `hi` or `lo` unless
                // both are as large (or the block is all zeros), then the first of them.
                let mut max = _mm256_blendv_ps(lo, hi, _mm256_cmp_ps::<_CMP_GT_OQ>(hi, neg_lo));
                let ties = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(hi, neg_lo)) & lanes(N);
                if ties != 0 {
                    let mut m = to_array(max);
                    first_of_largest(x, &to_array(amax), &mut m, ties);
                    max = _mm256_loadu_ps(m.as_ptr());
                }
                (amax, _mm256_div_ps(max, _mm256_set1_ps(-8.0)), zero, zero)
            }
            _ => {
                let mut mn = transpose_reduce::<MIN_PS>(&lo);
                let mut mx = transpose_reduce::<MAX_PS>(&hi);
                // A zero min or max must be the first zero of the block (its sign is stored).
                let z = _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_EQ_OQ>(mn, zero),
                    _mm256_cmp_ps::<_CMP_EQ_OQ>(mx, zero),
                );
                if _mm256_movemask_ps(z) & lanes(N) != 0 {
                    let (mut l, mut h) = (to_array(mn), to_array(mx));
                    first_zeros(x, &mut l, &mut h);
                    (mn, mx) = (_mm256_loadu_ps(l.as_ptr()), _mm256_loadu_ps(h.as_ptr()));
                }
                let d = _mm256_div_ps(_mm256_sub_ps(mx, mn), _mm256_set1_ps(15.0));
                (zero, d, mn, mx)
            }
        };
        // id = d == 0 ? 0 : 1/d (a ±0 d gives ±Inf, masked to +0).
        let id = _mm256_and_ps(
            _mm256_div_ps(_mm256_set1_ps(1.0), d),
            _mm256_cmp_ps::<_CMP_NEQ_OQ>(d, zero),
        );
        let id_finite = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_andnot_ps(sign, id), inf);
        if _mm256_movemask_ps(id_finite) != 0xFF {
            return false;
        }

        // Stored f16 d (and m), what a reader decodes, and the flags.
        let d16 = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d);
        let df = _mm256_cvtph_ps(d16);
        let m16 = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(mn);
        let mf = _mm256_cvtph_ps(m16);
        let mut ovf = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, df), inf);
        if T == Q4_1 {
            ovf = _mm256_or_ps(
                ovf,
                _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, mf), inf),
            );
        }
        let informative = if T == Q4_1 {
            _mm256_cmp_ps::<_CMP_GT_OQ>(mx, mn)
        } else {
            _mm256_cmp_ps::<_CMP_GT_OQ>(amax, zero)
        };
        let zeroed = _mm256_and_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(df, zero), informative);
        let overflowed = _mm256_movemask_ps(ovf) & lanes(N);
        stats.overflowed_groups += overflowed.count_ones() as u64;
        stats.zeroed_groups += (_mm256_movemask_ps(zeroed) & lanes(N)).count_ones() as u64;
        let mut dh = [0u16; 8];
        let mut mh = [0u16; 8];
        _mm_storeu_si128(dh.as_mut_ptr() as *mut __m128i, d16);
        _mm_storeu_si128(mh.as_mut_ptr() as *mut __m128i, m16);
        for j in 0..N {
            out[j * bb..j * bb + 2].copy_from_slice(&dh[j].to_le_bytes());
            if T == Q4_1 {
                out[j * bb + 2..j * bb + 4].copy_from_slice(&mh[j].to_le_bytes());
            }
        }

        // Pass 2. An overflowed block adds no error: its lanes of `keep` are 0.
        let params = Params { id, df, mn, mf };
        let e2 = if overflowed == 0 {
            codes::<T, N, false>(x, out, &params, zero, emax)
        } else {
            let keep = _mm256_andnot_ps(ovf, _mm256_castsi256_ps(_mm256_set1_epi32(-1)));
            codes::<T, N, true>(x, out, &params, keep, emax)
        };
        stats.sum_sq += hsum(x2);
        stats.sum_sq_err += hsum(e2);
        true
    }
}

/// The parameters of up to eight blocks, block `j` in lane `j`.
struct Params {
    /// `1 / d` from the f32 `d` (0 when `d` is 0).
    id: __m256,
    /// The stored `d`, decoded.
    df: __m256,
    /// Q4_1's min (f32).
    mn: __m256,
    /// Q4_1's stored `m`, decoded.
    mf: __m256,
}

/// Pass 2 of [`batch`]: the codes of `N` blocks with the parameters in `p`, their decode
/// and error; returns the lanes of Σe² and updates `emax`. With `KEEP`, block `j`'s error
/// counts only where lane `j` of `keep` is set.
///
/// # Safety
/// AVX2/FMA/F16C; `x.len() == N·32`, `out.len() == N·block_bytes`; every `id` finite.
#[inline(always)]
unsafe fn codes<const T: u8, const N: usize, const KEEP: bool>(
    x: &[f32],
    out: &mut [u8],
    p: &Params,
    keep: __m256,
    emax: &mut __m256,
) -> __m256 {
    let bb = match T {
        Q8_0 => 34,
        Q4_0 => 18,
        _ => 20,
    };
    assert!(x.len() == N * QK && out.len() == N * bb);
    // SAFETY: loads read x[j·32 .. j·32 + 32] and stores write out[j·bb + 2 .. (j + 1)·bb]
    // for j < N, inside the slices by the assertion; the rest is register arithmetic.
    unsafe {
        let zero = _mm256_setzero_ps();
        let sign = _mm256_set1_ps(-0.0);
        let (mut ea, mut eb) = (zero, zero);
        let mut em = *emax;
        let src = x.as_ptr();
        let dst = out.as_mut_ptr();
        // Each block's parameters are broadcast from memory (a load each, no shuffle).
        let (id, df, mn, mf, kp) = (
            to_array(p.id),
            to_array(p.df),
            to_array(p.mn),
            to_array(p.mf),
            to_array(keep).map(f32::to_bits),
        );
        for j in 0..N {
            let vid = _mm256_set1_ps(id[j]);
            let vd = _mm256_set1_ps(df[j]);
            let v = load4(src.add(j * QK));
            let mut q = [zero; 4];
            for k in 0..4 {
                let y = match T {
                    Q8_0 => {
                        // roundf: trunc(s) + trunc(2·frac(s)); both steps exact.
                        let s = _mm256_mul_ps(v[k], vid);
                        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(s);
                        let f = _mm256_sub_ps(s, t);
                        q[k] = _mm256_add_ps(
                            t,
                            _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(
                                _mm256_add_ps(f, f),
                            ),
                        );
                        _mm256_mul_ps(vd, q[k])
                    }
                    Q4_0 => {
                        let t = _mm256_add_ps(_mm256_mul_ps(v[k], vid), _mm256_set1_ps(8.5));
                        q[k] = clamp15(t);
                        _mm256_mul_ps(vd, _mm256_sub_ps(q[k], _mm256_set1_ps(8.0)))
                    }
                    _ => {
                        let vmn = _mm256_set1_ps(mn[j]);
                        let t = _mm256_add_ps(
                            _mm256_mul_ps(_mm256_sub_ps(v[k], vmn), vid),
                            _mm256_set1_ps(0.5),
                        );
                        q[k] = clamp15(t);
                        _mm256_add_ps(_mm256_mul_ps(vd, q[k]), _mm256_set1_ps(mf[j]))
                    }
                };
                let mut e = _mm256_sub_ps(v[k], y);
                if KEEP {
                    e = _mm256_and_ps(e, _mm256_castsi256_ps(_mm256_set1_epi32(kp[j] as i32)));
                }
                if k % 2 == 0 {
                    ea = _mm256_fmadd_ps(e, e, ea);
                } else {
                    eb = _mm256_fmadd_ps(e, e, eb);
                }
                em = _mm256_max_ps(em, _mm256_andnot_ps(sign, e));
            }
            let at = dst.add(j * bb);
            if T == Q8_0 {
                // Integers in [-127, 127]: the saturating packs are exact.
                let c: [__m256i; 4] = core::array::from_fn(|k| _mm256_cvttps_epi32(q[k]));
                let w = _mm256_packs_epi16(
                    _mm256_packs_epi32(c[0], c[1]),
                    _mm256_packs_epi32(c[2], c[3]),
                );
                let w = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                _mm256_storeu_si256(at.add(2) as *mut __m256i, w);
            } else {
                // Byte i: q[i] | q[i + 16] << 4, as exact f32 sums of integers in [0, 255].
                let sixteen = _mm256_set1_ps(16.0);
                let c0 = _mm256_cvttps_epi32(_mm256_add_ps(q[0], _mm256_mul_ps(q[2], sixteen)));
                let c1 = _mm256_cvttps_epi32(_mm256_add_ps(q[1], _mm256_mul_ps(q[3], sixteen)));
                let w = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(c0, c1));
                let b =
                    _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
                let hdr = if T == Q4_1 { 4 } else { 2 };
                _mm_storeu_si128(at.add(hdr) as *mut __m128i, b);
            }
        }
        *emax = em;
        _mm256_add_ps(ea, eb)
    }
}

/// The mask of lanes `0..n` as `_mm256_movemask_ps` reports them.
#[inline(always)]
fn lanes(n: usize) -> i32 {
    ((1u32 << n) - 1) as i32
}

/// A 4-bit quant from `t`: `min(15, trunc(t))`, and 0 below 0 (the saturating `as u8`).
///
/// # Safety
/// AVX.
#[inline(always)]
unsafe fn clamp15(t: __m256) -> __m256 {
    // SAFETY: register-only AVX operations.
    unsafe {
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(t);
        _mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), _mm256_set1_ps(15.0))
    }
}

/// For each block `j` set in `ties`: `max[j]` becomes the block's first element whose
/// |x| is `amax[j]` (numpy's argmax, ggml C's strict `<`), with its sign.
#[cold]
#[inline(never)]
fn first_of_largest(x: &[f32], amax: &[f32; 8], max: &mut [f32; 8], ties: i32) {
    for (j, block) in x.chunks_exact(QK).enumerate() {
        if ties & (1 << j) != 0 {
            max[j] = *block
                .iter()
                .find(|v| v.abs() == amax[j])
                .unwrap_or(&block[0]);
        }
    }
}

/// Replaces a zero `lo[j]` (`hi[j]`) of block `j` by the block's first zero, which is
/// the element the specification's scan keeps (ties keep the first), with its sign.
#[cold]
#[inline(never)]
fn first_zeros(x: &[f32], lo: &mut [f32; 8], hi: &mut [f32; 8]) {
    for (j, block) in x.chunks_exact(QK).enumerate() {
        let first_zero = || *block.iter().find(|v| **v == 0.0).unwrap_or(&0.0);
        if lo[j] == 0.0 {
            lo[j] = first_zero();
        }
        if hi[j] == 0.0 {
            hi[j] = first_zero();
        }
    }
}

/// The lanes of `v`.
///
/// # Safety
/// AVX.
#[inline(always)]
unsafe fn to_array(v: __m256) -> [f32; 8] {
    let mut a = [0f32; 8];
    // SAFETY: stores 8 f32 into a local array of 8.
    unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
    a
}

const MAX_I32: u8 = 0;
const MIN_PS: u8 = 1;
const MAX_PS: u8 = 2;

/// `OP` on two vectors: `max_epi32` of the bits, `min_ps` or `max_ps`.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn op<const OP: u8>(a: __m256, b: __m256) -> __m256 {
    // SAFETY: register-only AVX2 operations.
    unsafe {
        match OP {
            MAX_I32 => _mm256_castsi256_ps(_mm256_max_epi32(
                _mm256_castps_si256(a),
                _mm256_castps_si256(b),
            )),
            MIN_PS => _mm256_min_ps(a, b),
            _ => _mm256_max_ps(a, b),
        }
    }
}

/// Reduces 8 vectors to one whose lane `j` is `OP` over all lanes of `v[j]`.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn transpose_reduce<const OP: u8>(v: &[__m256; 8]) -> __m256 {
    // SAFETY: register-only AVX2 shuffles and `op`.
    unsafe {
        let pair =
            |a: __m256, b: __m256| op::<OP>(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
        let (a0, a1, a2, a3) = (
            pair(v[0], v[1]),
            pair(v[2], v[3]),
            pair(v[4], v[5]),
            pair(v[6], v[7]),
        );
        let quad = |a: __m256, b: __m256| {
            op::<OP>(
                _mm256_shuffle_ps::<0x44>(a, b),
                _mm256_shuffle_ps::<0xEE>(a, b),
            )
        };
        let (b0, b1) = (quad(a0, a1), quad(a2, a3));
        op::<OP>(
            _mm256_permute2f128_ps::<0x20>(b0, b1),
            _mm256_permute2f128_ps::<0x31>(b0, b1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// F16C's `vcvtps2ph` (nearest even) against `half::f16::from_f32`, the conversion the
    /// specification uses: every f16 rounding boundary (the midpoints and their neighbours,
    /// both signs), the overflow and subnormal edges, and a stride through all f32.
    #[test]
    fn f16c_conversion_is_half_from_f32() {
        if !crate::Isa::Avx2.is_available() {
            eprintln!("SKIPPED: avx2 not available");
            return;
        }
        let mut values = Vec::new();
        for h in 0u16..0x7C00 {
            let a = half::f16::from_bits(h).to_f32();
            // The last finite f16's upper neighbour is 2^16 (its midpoint, 65520, is the
            // overflow boundary).
            let b = if h == 0x7BFF {
                65536.0
            } else {
                half::f16::from_bits(h + 1).to_f32()
            };
            let mid = (a as f64 + b as f64) / 2.0;
            let m = mid as f32;
            assert_eq!(m as f64, mid, "midpoints are f32 values");
            for delta in -3i32..=3 {
                let v = f32::from_bits((m.to_bits() as i32 + delta) as u32);
                values.extend([a, v, -a, -v]);
            }
        }
        values.extend([
            65504.0,
            65519.0,
            65520.0,
            f32::from_bits(65520.0f32.to_bits() - 1),
            1e6,
            3e38,
        ]);
        values.extend([f32::MIN_POSITIVE, 1e-40, 2f32.powi(-24), 2f32.powi(-25)]);
        values.extend([f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN]);
        values.extend(
            (0..=u32::MAX)
                .step_by(4093)
                .map(f32::from_bits)
                .filter(|v| !v.is_nan()),
        );
        while values.len() % 8 != 0 {
            values.push(0.0);
        }
        for c in values.chunks_exact(8) {
            let mut got = [0u16; 8];
            // SAFETY: AVX2/F16C checked above; loads 8 f32 from `c`, stores 8 u16 into `got`.
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(c.as_ptr()));
                _mm_storeu_si128(got.as_mut_ptr() as *mut __m128i, h);
            }
            for (v, g) in c.iter().zip(got) {
                assert_eq!(
                    g,
                    half::f16::from_f32(*v).to_bits(),
                    "{v:e} ({:#010x})",
                    v.to_bits()
                );
            }
        }
    }
}
