//! AVX-512 kernels (F, BW and VL, with AVX2, FMA and F16C) for plain RTN quantization
//! into the packed format: the scalar specification, sixteen lanes at a time.
//!
//! Per group: one vector pass for the min/max (F16 converted by `vcvtph2ps`, BF16 by a
//! zero-extension and a shift; NaN/±Inf lanes read as 0 and counted), the group's scale
//! and min from [`params_from_range_with`] (the function the specification uses), then
//! one vector pass that computes the codes with the specification's operations in the
//! same order (subtract the min, multiply by the inverse scale, round to nearest even and
//! clamp, the clamp done first as it gives the same integer, see [`quant`]; decode with
//! a multiply then an add, never fused), packs them with
//! down-conversions (`vpmovdb`, `vpmovqb`) and accumulates the error statistics in
//! registers, flushed to f64 every [`Acc::FLUSH`] elements. A partial vector (any group
//! size, any row length) uses masked loads and stores.
//!
//! With F16 scales and groups of a multiple of 16 elements (up to [`BATCH_GROUP`]), up to
//! sixteen full groups are done at once ([`batch`]): one pass converts them into a cache
//! (F32 input is read again in place) for the min/max and Σx², the parameters of all the
//! groups are computed in the lanes of one register (the specification's arithmetic lane
//! by lane, rounding to F16 with `vcvtps2ph`), then the codes come from the cache, with
//! the clamp left out (or its lower half) where the groups' extremes show that no code
//! can round outside the range: the same codes, fewer instructions. A batch holding a
//! NaN, an ±Inf or a magnitude of [`HUGE`] or more goes group by group.
//!
//! The specification's own scalar loop (on values converted in registers) runs only for
//! groups with a magnitude of [`HUGE`] or more (their error sums need f64) and, at 4
//! bits, for the first element of a group that starts at an odd position (it shares a
//! byte with the previous group).
//!
//! Nothing here allocates, calls the operating system, reads thread-local state or
//! probes the CPU: `crate::quantize_rows_unchecked` runs it under a bare CPU emulator.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use half::{bf16, f16};

use super::avx2::{
    code_range, hmax, hmin, hsum, F16c, ASYM4, ASYM8, CLAMP_BOTH, CLAMP_HI, CLAMP_NONE, SYM4, SYM8,
};
use crate::scalar::{check_sizes, params_from_range_with, put_params, quantize_span, GroupParams};
use crate::{ErrorStats, QuantFormat, RowsOut, ScaleDtype, Scheme, Src};

/// Sixteen elements loaded as f32 lanes (exact conversions).
pub(super) trait Load16: Copy {
    /// Loads `p[0..16]`.
    ///
    /// # Safety
    /// `p..p+16` must be readable, and the CPU must have AVX-512 F/BW/VL.
    unsafe fn load16(p: *const Self) -> __m512;

    /// Loads the elements of `p[0..16]` whose lanes are set in `m`; the other lanes are 0
    /// and their elements are not read.
    ///
    /// # Safety
    /// `p + j` must be readable for every lane `j` set in `m`; the CPU as for `load16`.
    unsafe fn load16_masked(p: *const Self, m: __mmask16) -> __m512;

    /// `p` itself when the elements are f32 (read again in place), else `None`.
    fn as_f32(p: *const Self) -> Option<*const f32>;
}

impl Load16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable elements; loadu has no alignment need.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load16_masked(p: *const f32, m: __mmask16) -> __m512 {
        // SAFETY: the caller guarantees the lanes of `m` readable; a masked load does not
        // access (nor fault on) the others.
        unsafe { _mm512_maskz_loadu_ps(m, p) }
    }
    #[inline(always)]
    fn as_f32(p: *const f32) -> Option<*const f32> {
        Some(p)
    }
}

impl Load16 for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> __m512 {
        // SAFETY: 16 readable f16 = 32 bytes; the conversion to f32 is exact.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
    #[inline(always)]
    unsafe fn load16_masked(p: *const f16, m: __mmask16) -> __m512 {
        // SAFETY: as for f32, 16-bit elements (AVX-512 BW/VL masked load); F16 +0 is the bits 0.
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p as *const i16)) }
    }
    #[inline(always)]
    fn as_f32(_: *const f16) -> Option<*const f32> {
        None
    }
}

impl Load16 for bf16 {
    #[inline(always)]
    unsafe fn load16(p: *const bf16) -> __m512 {
        // SAFETY: 16 readable bf16 = 32 bytes; a bf16 is the high half of an f32.
        unsafe { widen_bf16(_mm256_loadu_si256(p as *const __m256i)) }
    }
    #[inline(always)]
    unsafe fn load16_masked(p: *const bf16, m: __mmask16) -> __m512 {
        // SAFETY: as for f16.
        unsafe { widen_bf16(_mm256_maskz_loadu_epi16(m, p as *const i16)) }
    }
    #[inline(always)]
    fn as_f32(_: *const bf16) -> Option<*const f32> {
        None
    }
}

/// Sixteen bf16 bit patterns as f32 lanes: zero-extended, shifted into the high half.
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn widen_bf16(w: __m256i) -> __m512 {
    // SAFETY: register-only operations.
    unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(w))) }
}

/// Error sums kept in registers across groups, flushed to f64 every [`Acc::FLUSH`] elements.
#[derive(Clone, Copy)]
struct Acc {
    /// Σ e² per lane.
    e2: __m512,
    /// Σ x² per lane (the batched path adds its Σx² to the totals directly).
    x2: __m512,
    /// max |e| per lane.
    emax: __m512,
    /// Elements added since the last flush.
    n: usize,
}

impl Acc {
    /// Elements summed in f32 before adding into the f64 totals: 32 per lane, plus at
    /// most one group of [`BATCH_GROUP`] (16 per lane) in the batched path.
    const FLUSH: usize = 512;

    /// Empty sums.
    ///
    /// # Safety
    /// AVX-512 F.
    #[inline(always)]
    unsafe fn new() -> Acc {
        // SAFETY: register-only operations.
        unsafe {
            Acc {
                e2: _mm512_setzero_ps(),
                x2: _mm512_setzero_ps(),
                emax: _mm512_setzero_ps(),
                n: 0,
            }
        }
    }

    /// Adds the errors `e` of the values `x` (lanes to leave out hold 0 in both).
    ///
    /// # Safety
    /// AVX-512 F and FMA.
    #[inline(always)]
    unsafe fn add(&mut self, x: __m512, e: __m512) {
        // SAFETY: register-only operations.
        unsafe {
            self.e2 = _mm512_fmadd_ps(e, e, self.e2);
            self.x2 = _mm512_fmadd_ps(x, x, self.x2);
            self.emax = _mm512_max_ps(self.emax, _mm512_abs_ps(e));
        }
    }

    /// Adds the sums into `stats` and clears them (the max is kept: it is idempotent).
    ///
    /// # Safety
    /// AVX-512 F.
    #[inline(always)]
    unsafe fn flush(&mut self, stats: &mut ErrorStats) {
        // SAFETY: register-only operations.
        unsafe {
            stats.sum_sq_err += hsum16(self.e2);
            stats.sum_sq += hsum16(self.x2);
            stats.max_abs_err = stats.max_abs_err.max(hmax16(self.emax));
            self.e2 = _mm512_setzero_ps();
            self.x2 = _mm512_setzero_ps();
            self.n = 0;
        }
    }
}

/// Magnitude (2^59) from which a group's squared errors, summed in f32 over the at
/// most 48 elements of a lane between flushes, could overflow: such groups take the
/// specification's loop, which sums in f64.
const HUGE: f32 = 576_460_752_303_423_488.0;

/// Elements of the batch cache (8 KiB).
const CACHE: usize = 2048;

/// The largest group size of the batched path (then 8 groups per batch).
const BATCH_GROUP: usize = 256;

/// The mask of the lowest `n` lanes (`n ≤ 16`).
#[inline(always)]
fn low(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// Quantizes whole rows; see [`crate::quantize_rows`].
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VL, AVX2, FMA and F16C.
pub(crate) unsafe fn quantize_rows(
    fmt: &QuantFormat,
    k: usize,
    src: Src<'_>,
    out: RowsOut<'_>,
) -> ErrorStats {
    // SAFETY (all three): the caller guarantees the CPU features.
    match src {
        Src::F32(x) => unsafe { rows(fmt, k, x, out) },
        Src::F16(x) => unsafe { rows(fmt, k, x, out) },
        Src::BF16(x) => unsafe { rows(fmt, k, x, out) },
    }
}

/// Dispatches on the scheme.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn rows<T: Load16>(fmt: &QuantFormat, k: usize, src: &[T], out: RowsOut<'_>) -> ErrorStats {
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

/// Quantizes whole rows with scheme `S`: batches of full groups where possible, else group by group.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn rows_of<T: Load16, const S: u8>(
    fmt: &QuantFormat,
    k: usize,
    src: &[T],
    mut out: RowsOut<'_>,
) -> ErrorStats {
    let mut stats = ErrorStats::default();
    let rows = check_sizes(fmt, k, src.len(), &out);
    let g = fmt.group;
    let cb = fmt.code_bytes_per_row(k);
    let gpr = fmt.groups_per_row(k);
    let full = k / g;
    // Groups per batch, 0 when this format has no batched path.
    let per_batch =
        if fmt.scale_dtype == ScaleDtype::F16 && g.is_multiple_of(16) && g <= BATCH_GROUP {
            (CACHE / g).min(16)
        } else {
            0
        };
    // Written before it is read, batch by batch: no need to initialise it.
    let mut cache = MaybeUninit::<[f32; CACHE]>::uninit();
    let cache = cache.as_mut_ptr() as *mut f32;
    // SAFETY: AVX-512 F is available (this function's contract).
    let mut acc = unsafe { Acc::new() };
    for r in 0..rows {
        let row = &src[r * k..(r + 1) * k];
        let mut gi = 0;
        // Groups before this one belong to a batch that went group by group. (So that
        // `group` is inlined once: a second call site for such batches executed 3–5% more
        // instructions per element, counted on the emulator.)
        let mut slow_to = 0;
        while gi < gpr {
            if per_batch > 0 && gi >= slow_to && gi < full {
                let m = per_batch.min(full - gi);
                let codes = &mut out.codes[r * cb..(r + 1) * cb];
                let params = (&mut *out.scales, &mut *out.mins);
                // SAFETY: groups gi..gi + m are full groups of the row, g % 16 == 0,
                // m·g ≤ CACHE and `cache` holds CACHE f32; the CPU has the features.
                let done = unsafe {
                    batch::<T, S>(
                        g,
                        m,
                        row,
                        gi,
                        codes,
                        params,
                        r * gpr + gi,
                        cache,
                        &mut acc,
                        &mut stats,
                    )
                };
                if done {
                    gi += m;
                    continue;
                }
                slow_to = gi + m;
            }
            // SAFETY: gi < gpr; the CPU has the features.
            unsafe { group::<T, S>(fmt, k, row, r, gi, &mut out, &mut acc, &mut stats) };
            gi += 1;
        }
    }
    // SAFETY: AVX-512 F is available.
    unsafe { acc.flush(&mut stats) };
    stats.count = src.len() as u64;
    stats
}

/// Group `gi` of row `r` (any length, any start): range, parameters, codes.
///
/// # Safety
/// AVX-512 F/BW/VL, AVX2, FMA, F16C; `gi` is a group of the row.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn group<T: Load16, const S: u8>(
    fmt: &QuantFormat,
    k: usize,
    row: &[T],
    r: usize,
    gi: usize,
    out: &mut RowsOut<'_>,
    acc: &mut Acc,
    stats: &mut ErrorStats,
) {
    let start = gi * fmt.group;
    let x = &row[start..(start + fmt.group).min(k)];
    // SAFETY: the CPU has the features; `x` is not empty (start < k).
    let (lo, hi) = unsafe { range(x, r * k + start, stats) };
    let p = params_from_range_with::<F16c>(fmt.scheme, fmt.scale_dtype, lo, hi);
    put_params(fmt, k, out, r, gi, &p);
    stats.overflowed_groups += p.overflowed as u64;
    stats.zeroed_groups += p.zeroed as u64;
    let cb = fmt.code_bytes_per_row(k);
    let codes = &mut out.codes[r * cb..(r + 1) * cb];
    let four = S == SYM4 || S == ASYM4;
    // SAFETY (all three): the CPU has the features; `code_body` asserts its bounds and
    // is given an even start at 4 bits.
    unsafe {
        if lo.abs().max(hi.abs()) >= HUGE {
            span_scalar(fmt.scheme, &p, x, start, codes, stats);
        } else if four && start % 2 == 1 {
            // Its first element shares a byte with the previous group: the
            // specification's loop ORs it into the high nibble.
            span_scalar(fmt.scheme, &p, &x[..1], start, codes, stats);
            code_body::<T, S>(&p, &x[1..], start + 1, codes, acc, stats);
        } else {
            code_body::<T, S>(&p, x, start, codes, acc, stats);
        }
    }
}

/// The finite lanes of `raw` among `m` (the others 0); counts the NaN/±Inf lanes of `m`
/// into `stats`, lane `j` being flat element `at + j`.
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn clean(raw: __m512, m: __mmask16, at: usize, stats: &mut ErrorStats) -> __m512 {
    // SAFETY: register-only operations.
    unsafe {
        let fin = _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(
            m,
            _mm512_abs_ps(raw),
            _mm512_set1_ps(f32::INFINITY),
        );
        if fin != m {
            let bad = m & !fin;
            stats.nonfinite += bad.count_ones() as u64;
            stats
                .first_nonfinite
                .get_or_insert((at + bad.trailing_zeros() as usize) as u64);
        }
        _mm512_maskz_mov_ps(fin, raw)
    }
}

/// Min and max of `x` with NaN/±Inf read as 0 (counted into `stats`; `base` is the flat
/// index of `x[0]`).
///
/// # Safety
/// AVX-512 F/BW/VL, F16C; `x` is not empty.
#[inline(always)]
unsafe fn range<T: Load16>(x: &[T], base: usize, stats: &mut ErrorStats) -> (f32, f32) {
    let n = x.len();
    // SAFETY: full loads read x[i..i + 16] with i + 16 ≤ n; the masked load reads x[i..n].
    unsafe {
        let p = x.as_ptr();
        let inf = _mm512_set1_ps(f32::INFINITY);
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let (mut lo0, mut lo1, mut hi0, mut hi1) = (inf, inf, ninf, ninf);
        let mut i = 0;
        while i + 32 <= n {
            let x0 = clean(T::load16(p.add(i)), 0xFFFF, base + i, stats);
            let x1 = clean(T::load16(p.add(i + 16)), 0xFFFF, base + i + 16, stats);
            lo0 = _mm512_min_ps(lo0, x0);
            lo1 = _mm512_min_ps(lo1, x1);
            hi0 = _mm512_max_ps(hi0, x0);
            hi1 = _mm512_max_ps(hi1, x1);
            i += 32;
        }
        if i + 16 <= n {
            let x0 = clean(T::load16(p.add(i)), 0xFFFF, base + i, stats);
            lo0 = _mm512_min_ps(lo0, x0);
            hi0 = _mm512_max_ps(hi0, x0);
            i += 16;
        }
        if i < n {
            let m = low(n - i);
            let x1 = clean(T::load16_masked(p.add(i), m), m, base + i, stats);
            lo1 = _mm512_mask_min_ps(lo1, m, lo1, x1);
            hi1 = _mm512_mask_max_ps(hi1, m, hi1, x1);
        }
        (
            hmin16(_mm512_min_ps(lo0, lo1)),
            hmax16(_mm512_max_ps(hi0, hi1)),
        )
    }
}

/// A group's parameters broadcast to every lane, and the code range of scheme `S`.
struct Consts {
    /// `1 / scale`, or 0.
    inv: __m512,
    /// The stored scale.
    scale: __m512,
    /// The stored min (0 for symmetric schemes).
    min: __m512,
    /// The smallest code value before the offset (−127, −8 or 0).
    qlo: __m512,
    /// The largest (127, 7, 255 or 15).
    qhi: __m512,
}

impl Consts {
    /// The constants of scheme `S` with the given parameter vectors.
    ///
    /// # Safety
    /// AVX-512 F.
    #[inline(always)]
    unsafe fn new<const S: u8>(inv: __m512, scale: __m512, min: __m512) -> Consts {
        let (qlo, qhi) = code_range(S);
        // SAFETY: register-only operations.
        unsafe {
            Consts {
                inv,
                scale,
                min,
                qlo: _mm512_set1_ps(qlo),
                qhi: _mm512_set1_ps(qhi),
            }
        }
    }
}

/// The specification's codes and errors of 16 finite values: returns the codes (before
/// the +8 of `int4`) as i32 lanes and `x − x̂`. `CLAMP` says at which bounds of the code
/// range values may need clamping ([`CLAMP_BOTH`] unless the caller showed otherwise).
///
/// `clamp(round(v))` is computed as `round(clamp(v))`: the bounds are integers, so both
/// are equal for every v (no NaN reaches here), and the rounding (to nearest even,
/// explicit in the instruction) then lands on an integer that converts exactly. The
/// decoded value takes the code as an f32 (+0 for a zero code, as the specification's
/// `c as f32`).
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn quant<const S: u8, const CLAMP: u8>(x: __m512, c: &Consts) -> (__m512i, __m512) {
    let asym = S == ASYM8 || S == ASYM4;
    // SAFETY: register-only operations.
    unsafe {
        let t = if asym { _mm512_sub_ps(x, c.min) } else { x };
        let v = _mm512_mul_ps(t, c.inv);
        let v = match CLAMP {
            CLAMP_NONE => v,
            CLAMP_HI => _mm512_min_ps(v, c.qhi),
            _ => _mm512_min_ps(_mm512_max_ps(v, c.qlo), c.qhi),
        };
        let qi = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        let q = _mm512_cvtepi32_ps(qi);
        let xh = if asym {
            _mm512_add_ps(_mm512_mul_ps(q, c.scale), c.min)
        } else {
            _mm512_mul_ps(q, c.scale)
        };
        (qi, _mm512_sub_ps(x, xh))
    }
}

/// The bytes of 16 codes from [`quant`]: 16 bytes at 8 bits (the i8 or u8 of each lane);
/// at 4 bits 8 bytes in the low half, lane `2i` in the low nibble of byte `i`. With
/// `tail`, the lanes outside it count as code 0 (an odd tail's last high nibble is 0).
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn pack<const S: u8>(qi: __m512i, tail: Option<__mmask16>) -> __m128i {
    // SAFETY: register-only operations.
    unsafe {
        match S {
            // Every lane is in −127..=127 or 0..=255: truncating to the low byte is exact.
            SYM8 | ASYM8 => _mm512_cvtepi32_epi8(qi),
            _ => {
                let c = if S == SYM4 {
                    _mm512_add_epi32(qi, _mm512_set1_epi32(8))
                } else {
                    qi
                };
                let c = match tail {
                    Some(m) => _mm512_maskz_mov_epi32(m, c),
                    None => c,
                };
                // Codes are 0..=15: in each 64-bit lane (codes 2i, 2i+1 as two dwords),
                // shifting right by 28 moves code 2i+1 to bits 4..8 and drops code 2i,
                // so the low byte of the OR is c[2i] | c[2i+1] << 4.
                _mm512_cvtepi64_epi8(_mm512_or_si512(c, _mm512_srli_epi64::<28>(c)))
            }
        }
    }
}

/// Codes of `x` (NaN/±Inf read as 0), its first element at row position `pos` (even at 4
/// bits), into the packed row `codes`; errors into `acc`.
///
/// # Safety
/// AVX-512 F/BW/VL, FMA, F16C.
#[inline(always)]
unsafe fn code_body<T: Load16, const S: u8>(
    p: &GroupParams,
    x: &[T],
    pos: usize,
    codes: &mut [u8],
    acc: &mut Acc,
    stats: &mut ErrorStats,
) {
    let four = S == SYM4 || S == ASYM4;
    let n = x.len();
    assert!(if four {
        pos.is_multiple_of(2) && (pos + n).div_ceil(2) <= codes.len()
    } else {
        pos + n <= codes.len()
    });
    // SAFETY: full loads read x[i..i + 16] with i + 16 ≤ n, the masked load x[i..n]; stores
    // write bytes pos + i.. (8-bit) or (pos + i) / 2.. (4-bit) of at most the codes of
    // elements i..n, inside `codes` by the assertion above.
    unsafe {
        let c = Consts::new::<S>(
            _mm512_set1_ps(p.inv),
            _mm512_set1_ps(p.scale),
            _mm512_set1_ps(p.min),
        );
        let inf = _mm512_set1_ps(f32::INFINITY);
        let src = x.as_ptr();
        let dst = codes.as_mut_ptr();
        let mut a = *acc;
        let mut i = 0;
        while i + 16 <= n {
            let raw = T::load16(src.add(i));
            let fin = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(raw), inf);
            let v = _mm512_maskz_mov_ps(fin, raw);
            let (qi, e) = quant::<S, CLAMP_BOTH>(v, &c);
            a.add(v, e);
            let b = pack::<S>(qi, None);
            if four {
                _mm_storel_epi64(dst.add((pos + i) / 2) as *mut __m128i, b);
            } else {
                _mm_storeu_si128(dst.add(pos + i) as *mut __m128i, b);
            }
            a.n += 16;
            if a.n >= Acc::FLUSH {
                a.flush(stats);
            }
            i += 16;
        }
        if i < n {
            let m = low(n - i);
            let raw = T::load16_masked(src.add(i), m);
            let fin = _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(m, _mm512_abs_ps(raw), inf);
            let v = _mm512_maskz_mov_ps(fin, raw);
            let (qi, e) = quant::<S, CLAMP_BOTH>(v, &c);
            a.add(v, _mm512_maskz_mov_ps(m, e));
            let b = pack::<S>(qi, Some(m));
            if four {
                let bytes = low((n - i).div_ceil(2));
                _mm_mask_storeu_epi8(dst.add((pos + i) / 2) as *mut i8, bytes, b);
            } else {
                _mm_mask_storeu_epi8(dst.add(pos + i) as *mut i8, m, b);
            }
            a.n += n - i;
            if a.n >= Acc::FLUSH {
                a.flush(stats);
            }
        }
        *acc = a;
    }
}

/// The specification's loop over `x` (its first element at row position `pos`), on
/// values converted in registers 16 at a time: the same codes, error sums in f64.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn span_scalar<T: Load16>(
    scheme: Scheme,
    p: &GroupParams,
    x: &[T],
    pos: usize,
    codes: &mut [u8],
    stats: &mut ErrorStats,
) {
    let mut buf = [0f32; 16];
    let mut i = 0;
    while i < x.len() {
        let n = (x.len() - i).min(16);
        // SAFETY: the masked load reads x[i..i + n]; `buf` holds 16 f32.
        unsafe {
            let v = T::load16_masked(x.as_ptr().add(i), low(n));
            _mm512_storeu_ps(buf.as_mut_ptr(), v);
        }
        quantize_span(scheme, p, &buf[..n], pos + i, 0, codes, stats);
        i += n;
    }
}

/// Minimum (`MAX` false) or maximum of two vectors.
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn pick<const MAX: bool>(a: __m512, b: __m512) -> __m512 {
    // SAFETY: register-only operations.
    unsafe {
        if MAX {
            _mm512_max_ps(a, b)
        } else {
            _mm512_min_ps(a, b)
        }
    }
}

/// Within each 128-bit lane: `[a0∘a2, b0∘b2, a1∘a3, b1∘b3]` (∘ the min or max).
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn pair<const MAX: bool>(a: __m512, b: __m512) -> __m512 {
    // SAFETY: register-only operations.
    unsafe { pick::<MAX>(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b)) }
}

/// Two [`pair`] results `a` (of v0, v1) and `b` (of v2, v3): within each 128-bit lane,
/// element `p` is `vp` reduced over that lane's 4 elements.
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn quad<const MAX: bool>(a: __m512, b: __m512) -> __m512 {
    // SAFETY: register-only operations.
    unsafe {
        pick::<MAX>(
            _mm512_shuffle_ps::<0x44>(a, b), // a0 a1 b0 b1 in each 128-bit lane
            _mm512_shuffle_ps::<0xEE>(a, b), // a2 a3 b2 b3
        )
    }
}

/// Across the 128-bit lanes L0..L3: `[a.L0∘a.L1, a.L2∘a.L3, b.L0∘b.L1, b.L2∘b.L3]`.
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn across<const MAX: bool>(a: __m512, b: __m512) -> __m512 {
    // SAFETY: register-only operations.
    unsafe {
        pick::<MAX>(
            _mm512_shuffle_f32x4::<0x88>(a, b), // a.L0 a.L2 b.L0 b.L2
            _mm512_shuffle_f32x4::<0xDD>(a, b), // a.L1 a.L3 b.L1 b.L3
        )
    }
}

/// Reduces 16 vectors to one whose lane `j` is the min (or max) over all lanes of `v[j]`.
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn transpose_reduce<const MAX: bool>(v: &[__m512; 16]) -> __m512 {
    // SAFETY: register-only operations.
    unsafe {
        // b_q: 128-bit lane L, element p = v[4q + p] over lane L.
        let b0 = quad::<MAX>(pair::<MAX>(v[0], v[1]), pair::<MAX>(v[2], v[3]));
        let b1 = quad::<MAX>(pair::<MAX>(v[4], v[5]), pair::<MAX>(v[6], v[7]));
        let b2 = quad::<MAX>(pair::<MAX>(v[8], v[9]), pair::<MAX>(v[10], v[11]));
        let b3 = quad::<MAX>(pair::<MAX>(v[12], v[13]), pair::<MAX>(v[14], v[15]));
        // 128-bit lane q of the result: b_q over its four lanes, element p = v[4q + p].
        across::<MAX>(across::<MAX>(b0, b1), across::<MAX>(b2, b3))
    }
}

/// The lanes with the sign bit flipped (exact negation).
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn neg(v: __m512) -> __m512 {
    // SAFETY: register-only operations.
    unsafe {
        _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(v),
            _mm512_set1_epi32(i32::MIN),
        ))
    }
}

/// Up to sixteen full groups of `g` elements from group `first` of `row`: one vector
/// pass for min/max and Σx² (converting into `cache` unless the input is f32), the
/// groups' parameters in vector lanes (F16 scales: the specification's arithmetic lane
/// by lane), then the codes.
///
/// Returns false, having written nothing but `cache`, when a NaN or ±Inf is among them,
/// or a magnitude of [`HUGE`] or more (or a Σx² that overflows f32).
///
/// # Safety
/// AVX-512 F/BW/VL, AVX2, FMA, F16C; `cache` points to [`CACHE`] writable f32 (the
/// other bounds are asserted).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn batch<T: Load16, const S: u8>(
    g: usize,
    m: usize,
    row: &[T],
    first: usize,
    codes: &mut [u8],
    (scales, mins): (&mut [u8], &mut [u8]),
    gidx: usize,
    cache: *mut f32,
    acc: &mut Acc,
    stats: &mut ErrorStats,
) -> bool {
    let four = S == SYM4 || S == ASYM4;
    let asym = S == ASYM8 || S == ASYM4;
    let s0 = first * g;
    let len = m * g;
    assert!((1..=16).contains(&m) && g.is_multiple_of(16) && g <= BATCH_GROUP && len <= CACHE);
    assert!(s0 + len <= row.len());
    assert!((gidx + m) * 2 <= scales.len() && (!asym || (gidx + m) * 2 <= mins.len()));
    assert!(if four {
        (s0 + len) / 2 <= codes.len()
    } else {
        s0 + len <= codes.len()
    });
    // SAFETY: every load reads row[s0..s0 + len] or cache[..len] (after writing it), every
    // store writes cache[..len], codes[s0..s0 + len] (halves at 4 bits) and the 16-bit
    // scales/mins of groups gidx..gidx + m (masked), all inside their slices by the
    // assertions above and this function's contract.
    unsafe {
        let src = row.as_ptr().add(s0);
        let direct = T::as_f32(src);
        let keep = direct.is_none();
        let data = direct.unwrap_or(cache);
        let inf = _mm512_set1_ps(f32::INFINITY);
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let zero = _mm512_setzero_ps();
        let mut lo = [inf; 16];
        let mut hi = [ninf; 16];
        // Σx²: NaN and ±Inf make it non-finite, which is the only check needed (a finite
        // |x| > 1.8e19 overflows it too: that batch then goes group by group).
        let mut xs = zero;
        for j in 0..m {
            let base = j * g;
            let (mut l0, mut l1, mut h0, mut h1) = (inf, inf, ninf, ninf);
            let (mut xa, mut xb) = (zero, zero);
            let mut i = 0;
            while i + 32 <= g {
                let x0 = T::load16(src.add(base + i));
                let x1 = T::load16(src.add(base + i + 16));
                if keep {
                    _mm512_storeu_ps(cache.add(base + i), x0);
                    _mm512_storeu_ps(cache.add(base + i + 16), x1);
                }
                l0 = _mm512_min_ps(l0, x0);
                l1 = _mm512_min_ps(l1, x1);
                h0 = _mm512_max_ps(h0, x0);
                h1 = _mm512_max_ps(h1, x1);
                xa = _mm512_fmadd_ps(x0, x0, xa);
                xb = _mm512_fmadd_ps(x1, x1, xb);
                i += 32;
            }
            if i < g {
                let x0 = T::load16(src.add(base + i));
                if keep {
                    _mm512_storeu_ps(cache.add(base + i), x0);
                }
                l0 = _mm512_min_ps(l0, x0);
                h0 = _mm512_max_ps(h0, x0);
                xa = _mm512_fmadd_ps(x0, x0, xa);
            }
            lo[j] = _mm512_min_ps(l0, l1);
            hi[j] = _mm512_max_ps(h0, h1);
            xs = _mm512_add_ps(xs, _mm512_add_ps(xa, xb));
        }
        if _mm512_cmp_ps_mask::<_CMP_LT_OQ>(xs, inf) != 0xFFFF {
            return false; // false for NaN and +Inf
        }
        // Lane j: group j's range; lanes from m on (no group) are set to 0.
        let active = low(m);
        let lo = _mm512_maskz_mov_ps(active, transpose_reduce::<false>(&lo));
        let hi = _mm512_maskz_mov_ps(active, transpose_reduce::<true>(&hi));
        // Magnitudes from HUGE up could overflow the f32 error sums: such batches go group
        // by group (those groups then take the specification's loop).
        let magnitude = _mm512_max_ps(hi, neg(lo));
        if _mm512_cmp_ps_mask::<_CMP_LT_OQ>(magnitude, _mm512_set1_ps(HUGE)) != 0xFFFF {
            return false;
        }

        // The parameters of the groups, as `params_from_range` computes them for one.
        let (lo, hi) = (_mm512_add_ps(lo, zero), _mm512_add_ps(hi, zero)); // −0 → +0
        let neg_lo = neg(lo);
        let (d, min, min_ovf, spread) = match S {
            SYM8 => {
                let amax = _mm512_max_ps(hi, neg_lo);
                let spread = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(amax, zero);
                (_mm512_div_ps(amax, _mm512_set1_ps(127.0)), zero, 0, spread)
            }
            SYM4 => {
                let ge = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(hi, neg_lo);
                let mm = _mm512_mask_blend_ps(ge, lo, hi); // hi where hi ≥ −lo, else lo
                let spread = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(mm, zero);
                (_mm512_div_ps(mm, _mm512_set1_ps(-8.0)), zero, 0, spread)
            }
            _ => {
                // Rounded down to F16: the largest F16 ≤ lo, kept within ±65504 (flagged
                // beyond, as the specification's step down that would reach −Inf, and its
                // round to nearest that overflows from 65520 up).
                let down = _mm512_cvtph_ps(_mm512_cvtps_ph::<{ _MM_FROUND_TO_NEG_INF }>(lo));
                let min = _mm512_max_ps(down, _mm512_set1_ps(-65504.0));
                let min_ovf = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(lo, _mm512_set1_ps(-65504.0))
                    | _mm512_cmp_ps_mask::<_CMP_GE_OQ>(lo, _mm512_set1_ps(65520.0));
                let levels = _mm512_set1_ps(if S == ASYM8 { 255.0 } else { 15.0 });
                let spread = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(hi, lo);
                (
                    _mm512_div_ps(_mm512_sub_ps(hi, min), levels),
                    min,
                    min_ovf,
                    spread,
                )
            }
        };
        // Rounded to F16 (nearest even), saturated to ±65504 with the sign of d.
        let r = _mm512_cvtph_ps(_mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(d));
        let s_ovf = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(r), inf);
        let sat = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_and_si512(_mm512_castps_si512(d), _mm512_set1_epi32(i32::MIN)),
            _mm512_castps_si512(_mm512_set1_ps(65504.0)),
        ));
        let s = _mm512_mask_blend_ps(s_ovf, r, sat);
        // Below the smallest normal f32 (for F16: ±0): scale +0, inverse 0.
        let flush =
            _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(s), _mm512_set1_ps(f32::MIN_POSITIVE));
        let scale = _mm512_maskz_mov_ps(!flush, s);
        let inv = _mm512_maskz_div_ps(!flush, _mm512_set1_ps(1.0), s);
        stats.overflowed_groups += ((min_ovf | s_ovf) & active).count_ones() as u64;
        stats.zeroed_groups += (flush & spread & active).count_ones() as u64;
        // The stored values are F16 values (or +0): converting them back is exact.
        _mm256_mask_storeu_epi16(
            scales.as_mut_ptr().add(gidx * 2) as *mut i16,
            active,
            _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(scale),
        );
        if asym {
            _mm256_mask_storeu_epi16(
                mins.as_mut_ptr().add(gidx * 2) as *mut i16,
                active,
                _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(min),
            );
        }

        // Codes, from the cache (or the f32 input), group by group. Clamping to the code
        // range is skipped when no value of the batch can round outside it: the codes'
        // float values grow monotonically with x (or shrink, for a negative scale), so the
        // groups' extremes bound them all.
        let (qlo, qhi) = code_range(S);
        let (at_lo, at_hi) = if asym {
            (
                _mm512_mul_ps(_mm512_sub_ps(lo, min), inv),
                _mm512_mul_ps(_mm512_sub_ps(hi, min), inv),
            )
        } else {
            (_mm512_mul_ps(lo, inv), _mm512_mul_ps(hi, inv))
        };
        let below_ok = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(
            active,
            _mm512_min_ps(at_lo, at_hi),
            _mm512_set1_ps(qlo - 0.5),
        ) == active;
        let above_ok = _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(
            active,
            _mm512_max_ps(at_lo, at_hi),
            _mm512_set1_ps(qhi + 0.5),
        ) == active;
        let params = BatchParams { inv, scale, min };
        match (below_ok, above_ok) {
            (true, true) => {
                batch_codes::<S, CLAMP_NONE>(g, m, data, s0, codes, &params, acc, stats)
            }
            (true, false) => batch_codes::<S, CLAMP_HI>(g, m, data, s0, codes, &params, acc, stats),
            _ => batch_codes::<S, CLAMP_BOTH>(g, m, data, s0, codes, &params, acc, stats),
        }
        stats.sum_sq += hsum16(xs);
        true
    }
}

/// The parameters of a batch's groups, lane `j` for group `j`.
struct BatchParams {
    inv: __m512,
    scale: __m512,
    min: __m512,
}

/// The codes of the `m` groups of `g` values at `data` (the batch starting at row
/// position `s0`), clamped at the bounds `CLAMP` says, with their error sums added to `a`.
///
/// # Safety
/// AVX-512 F/BW/VL; `g % 16 == 0`, `m ≤ 16`, `data` holds `m·g` readable f32, and the
/// codes of row positions `s0..s0 + m·g` lie inside `codes` (as [`batch`] asserts).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn batch_codes<const S: u8, const CLAMP: u8>(
    g: usize,
    m: usize,
    data: *const f32,
    s0: usize,
    codes: &mut [u8],
    p: &BatchParams,
    a: &mut Acc,
    stats: &mut ErrorStats,
) {
    let four = S == SYM4 || S == ASYM4;
    // SAFETY: the caller's contract covers every load from `data` and store into `codes`;
    // the other stores write the local arrays of 16 f32, whole.
    unsafe {
        // Each group's parameters are broadcast from memory (a load each, no shuffle).
        let (mut inv, mut scale, mut min) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        _mm512_storeu_ps(inv.as_mut_ptr(), p.inv);
        _mm512_storeu_ps(scale.as_mut_ptr(), p.scale);
        _mm512_storeu_ps(min.as_mut_ptr(), p.min);
        let dst = codes.as_mut_ptr();
        for j in 0..m {
            let c = Consts::new::<S>(
                _mm512_set1_ps(inv[j]),
                _mm512_set1_ps(scale[j]),
                _mm512_set1_ps(min[j]),
            );
            let base = j * g;
            let mut i = 0;
            while i < g {
                let (qi, e) = quant::<S, CLAMP>(_mm512_loadu_ps(data.add(base + i)), &c);
                a.e2 = _mm512_fmadd_ps(e, e, a.e2);
                a.emax = _mm512_max_ps(a.emax, _mm512_abs_ps(e));
                let b = pack::<S>(qi, None);
                let at = s0 + base + i;
                if four {
                    _mm_storel_epi64(dst.add(at / 2) as *mut __m128i, b);
                } else {
                    _mm_storeu_si128(dst.add(at) as *mut __m128i, b);
                }
                i += 16;
            }
            a.n += g;
            if a.n >= Acc::FLUSH {
                a.flush(stats);
            }
        }
    }
}

/// The two 256-bit halves of a vector.
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn halves(v: __m512) -> (__m256, __m256) {
    // SAFETY: register-only operations.
    unsafe {
        (
            _mm512_castps512_ps256(v),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
        )
    }
}

/// Smallest lane.
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn hmin16(v: __m512) -> f32 {
    // SAFETY: register-only operations.
    unsafe {
        let (a, b) = halves(v);
        hmin(_mm256_min_ps(a, b))
    }
}

/// Largest lane.
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn hmax16(v: __m512) -> f32 {
    // SAFETY: register-only operations.
    unsafe {
        let (a, b) = halves(v);
        hmax(_mm256_max_ps(a, b))
    }
}

/// Sum of the lanes, in f64.
///
/// # Safety
/// AVX-512 F.
#[inline(always)]
unsafe fn hsum16(v: __m512) -> f64 {
    // SAFETY: register-only operations.
    unsafe {
        let (a, b) = halves(v);
        hsum(a) + hsum(b)
    }
}
