//! AVX2 passes of the error-minimising search ([`crate::search`]) and of double
//! quantization ([`crate::dq`]), bit for bit as the specification, under the
//! generic row drivers of those modules (instantiated here inside AVX2 functions).
//!
//! Two layouts:
//! * One group at a time (any group size; the path for short or odd groups and
//!   row tails): element `j` of a group is lane `j mod 8` of its `j / 8`-th
//!   vector, so a vector sum is the specification's lane sums; they are combined
//!   with two horizontal adds and one vertical add, which is
//!   `((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7))`.
//! * Eight full groups at a time (group sizes that are multiples of 8, up to
//!   [`MAX_T`]): the groups are transposed so that each lane holds one group;
//!   the specification's lane `l` of a group is then the vector sum over its
//!   elements `j ≡ l (mod 8)`, combined vertically in the same tree, and every
//!   per-group step (round-to-nearest's fit, the candidates' fits and errors,
//!   the choice among them, the rounding to the scale dtype, double
//!   quantization's codes and neighbours) is the specification's arithmetic
//!   lane by lane, the choices running selects in the specification's order.
//!
//! Accumulators start at +0 and add each term in turn; a lane past the end of a
//! group adds +0, which changes nothing (an accumulator that starts at +0 never
//! becomes −0). Codes are multiply, round to nearest even, clamp, never fused;
//! the clamp keeps a NaN (from an infinite inverse scale) as the specification's
//! `f32::clamp` does. FMA appears only where it gives the same bits as the
//! separate operations (see [`accumulate`]) and in the error statistics.
//!
//! The error statistics of the final codes are summed per group in f32 (redone
//! in f64 when they overflow), then in f64: equal to the specification's up to
//! summation order, and up to squares below f32's smallest normal.

use core::arch::x86_64::*;

use super::avx2::{hmax, hmin, F16c, Load8, ASYM4, ASYM8, SYM4, SYM8};
use crate::dq::{decoded, Codes};
use crate::scalar::{finite_or_zero, quantize_span, GroupParams};
use crate::search::{
    candidate_invs, candidate_steps, code_range, levels, Convert, Fit, Passes, SearchFit, Sums,
    CANDIDATES, LANES,
};
use crate::{dq, search, ErrorStats, Method, QuantFormat, RowsOut, ScaleDtype, Scheme, Src};

/// The AVX2 passes, with the error statistics they keep in registers.
pub(super) struct Avx2Passes {
    acc: Stats,
    /// Transposed groups and their differences from a base ([`search8`]).
    bufs: (Vec<__m256>, Vec<__m256>),
}

impl Avx2Passes {
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C (every method relies on it).
    #[inline(always)]
    unsafe fn new() -> Avx2Passes {
        Avx2Passes {
            // SAFETY: the caller guarantees AVX2.
            acc: unsafe { Stats::new() },
            bufs: (Vec::new(), Vec::new()),
        }
    }
}

impl Passes for Avx2Passes {
    type F16 = F16c;

    #[inline(always)]
    fn range(&mut self, x: &[f32], nonpositive_min: bool) -> (f32, f32) {
        // SAFETY: an `Avx2Passes` exists only on a CPU with AVX2/FMA/F16C (`new`).
        unsafe { range(x, nonpositive_min) }
    }

    #[inline(always)]
    fn range_and_sums(&mut self, x: &[f32], nonpositive_min: bool) -> (f32, f32, Sums) {
        // SAFETY: as in `range`.
        unsafe { range_and_sums(x, nonpositive_min) }
    }

    #[inline(always)]
    fn fit_search_groups(
        &mut self,
        scheme: Scheme,
        x: &[f32],
        g: usize,
        nonpositive_min: bool,
        out: &mut [SearchFit],
    ) {
        let mut done = 0;
        if g.is_multiple_of(8) && g <= MAX_T {
            while (done + 8) * g <= x.len() && done + 8 <= out.len() {
                let run = &x[done * g..(done + 8) * g];
                // SAFETY: as in `range`; eight full groups of g (a multiple of 8, at most
                // MAX_T) and eight outputs.
                unsafe {
                    search8(
                        scheme,
                        run,
                        g,
                        nonpositive_min,
                        &mut self.bufs,
                        &mut out[done..],
                    )
                };
                done += 8;
            }
        }
        let rest = x.get(done * g..).unwrap_or(&[]);
        for (o, group) in out[done..].iter_mut().zip(rest.chunks(g)) {
            *o = search::fit_search_with(self, scheme, group, nonpositive_min);
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn code_sums_groups(
        &mut self,
        scheme: Scheme,
        x: &[f32],
        g: usize,
        bases: &[f32],
        invs: &[f32],
        wholes: &[Sums],
        out: &mut [Sums],
    ) {
        let n = out.len().min(bases.len()).min(invs.len()).min(wholes.len());
        let mut done = 0;
        if g.is_multiple_of(8) && g <= MAX_T {
            while (done + 8) * g <= x.len() && done + 8 <= n {
                let (at, run) = (done..done + 8, &x[done * g..(done + 8) * g]);
                // SAFETY: as in `range`; eight full groups and eight of everything else.
                unsafe {
                    code_sums8(
                        scheme,
                        run,
                        g,
                        &bases[at.clone()],
                        &invs[at.clone()],
                        &wholes[at.clone()],
                        &mut out[at],
                        &mut self.bufs.0,
                    )
                };
                done += 8;
            }
        }
        let rest = x.get(done * g..).unwrap_or(&[]);
        for (i, (o, group)) in out[done..n].iter_mut().zip(rest.chunks(g)).enumerate() {
            let i = done + i;
            let o = std::slice::from_mut(o);
            self.code_sums(scheme, group, bases[i], &invs[i..i + 1], &wholes[i], o);
        }
    }

    #[inline(always)]
    fn stored_groups(
        &mut self,
        fmt: &QuantFormat,
        x: &[f32],
        found: &[SearchFit],
        out: &mut [GroupParams],
    ) {
        let g = fmt.group;
        if out.len() == 8
            && found.len() == 8
            && g.is_multiple_of(8)
            && g <= MAX_T
            && x.len() >= 8 * g
        {
            // SAFETY: as in `range`; eight full groups, fits and outputs.
            unsafe { stored8(fmt, x, found, out, &mut self.bufs.0) }
        } else {
            search::stored_batch(self, fmt, x, found, out)
        }
    }

    #[inline(always)]
    fn choose_codes(
        &mut self,
        c: &Codes,
        scheme: Scheme,
        x: &[f32],
        g: usize,
        fits: &[SearchFit],
        out: &mut [(i32, i32)],
    ) {
        if c.search
            && out.len() == 8
            && fits.len() == 8
            && g.is_multiple_of(8)
            && g <= MAX_T
            && x.len() >= 8 * g
        {
            // SAFETY: as in `range`; eight full groups, fits and outputs.
            unsafe { choose8(c, scheme, x, g, fits, out, &mut self.bufs.0) }
        } else {
            dq::choose_codes(self, c, scheme, x, g, fits, out)
        }
    }

    #[inline(always)]
    fn best_near(
        &mut self,
        sym: bool,
        range: (i32, i32),
        factors: (f32, f32),
        c: (i32, i32),
        sums: &Sums,
    ) -> (i32, i32) {
        // SAFETY: as in `range`.
        unsafe { best_near(sym, range, factors, c, sums) }
    }

    #[inline(always)]
    fn candidates(
        &mut self,
        scheme: Scheme,
        x: &[f32],
        rtn: &Fit,
        whole: &Sums,
        nonpositive_min: bool,
    ) -> SearchFit {
        // SAFETY: as in `range`.
        unsafe { candidates(scheme, x, rtn, whole, nonpositive_min) }
    }

    #[inline(always)]
    fn code_sums(
        &mut self,
        scheme: Scheme,
        x: &[f32],
        base: f32,
        invs: &[f32],
        whole: &Sums,
        out: &mut [Sums],
    ) {
        // SAFETY: as in `range`.
        unsafe { code_sums(scheme, x, base, invs, whole, out) }
    }

    #[inline(always)]
    fn quantize(
        &mut self,
        scheme: Scheme,
        p: &GroupParams,
        x: &[f32],
        start: usize,
        codes: &mut [u8],
        stats: &mut ErrorStats,
    ) {
        // SAFETY: as in `range`.
        unsafe { quantize(scheme, p, x, start, codes, stats, &mut self.acc) }
    }

    #[inline(always)]
    fn finish(&mut self, stats: &mut ErrorStats) {
        // SAFETY: as in `range`.
        unsafe { self.acc.flush(stats) }
    }
}

impl<T: Load8> Convert<T> for Avx2Passes {
    #[inline(always)]
    fn convert(&mut self, src: &[T], dst: &mut [f32]) -> bool {
        // SAFETY: as in `range`.
        unsafe { convert(src, dst) }
    }
}

/// Quantizes whole rows with the search ([`crate::search::quantize_rows`]).
///
/// The caller has checked that the CPU has AVX2, FMA and F16C.
pub(crate) fn search_rows(
    fmt: &QuantFormat,
    k: usize,
    src: Src<'_>,
    out: RowsOut<'_>,
) -> ErrorStats {
    // SAFETY (all three): the caller checked the CPU features.
    match src {
        Src::F32(x) => unsafe { search_rows_of(fmt, k, x, out) },
        Src::F16(x) => unsafe { search_rows_of(fmt, k, x, out) },
        Src::BF16(x) => unsafe { search_rows_of(fmt, k, x, out) },
    }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn search_rows_of<T: Load8>(
    fmt: &QuantFormat,
    k: usize,
    src: &[T],
    out: RowsOut<'_>,
) -> ErrorStats {
    // SAFETY: this function's contract.
    let mut p = unsafe { Avx2Passes::new() };
    search::quantize_rows_with(&mut p, fmt, k, src, out)
}

/// Quantizes whole rows with double quantization ([`crate::dq::quantize_rows`]).
///
/// The caller has checked that the CPU has AVX2, FMA and F16C.
pub(crate) fn dq_rows(
    method: Method,
    fmt: &QuantFormat,
    k: usize,
    src: Src<'_>,
    out: RowsOut<'_>,
) -> ErrorStats {
    // SAFETY (all three): the caller checked the CPU features.
    match src {
        Src::F32(x) => unsafe { dq_rows_of(method, fmt, k, x, out) },
        Src::F16(x) => unsafe { dq_rows_of(method, fmt, k, x, out) },
        Src::BF16(x) => unsafe { dq_rows_of(method, fmt, k, x, out) },
    }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dq_rows_of<T: Load8>(
    method: Method,
    fmt: &QuantFormat,
    k: usize,
    src: &[T],
    out: RowsOut<'_>,
) -> ErrorStats {
    // SAFETY: this function's contract.
    let mut p = unsafe { Avx2Passes::new() };
    dq::quantize_rows_with(&mut p, method, fmt, k, src, out)
}

/// [`crate::search::code_sums`] with AVX2, for tests and callers outside the drivers.
///
/// The caller has checked that the CPU has AVX2, FMA and F16C.
pub(crate) fn code_sums_entry(
    scheme: Scheme,
    x: &[f32],
    base: f32,
    invs: &[f32],
    whole: &Sums,
    out: &mut [Sums],
) {
    // SAFETY: the caller checked the CPU features.
    unsafe { code_sums(scheme, x, base, invs, whole, out) }
}

/// [`crate::search::fit_search`] with AVX2.
///
/// The caller has checked that the CPU has AVX2, FMA and F16C.
pub(crate) fn fit_search_entry(scheme: Scheme, x: &[f32], nonpositive_min: bool) -> SearchFit {
    // SAFETY: the caller checked the CPU features.
    unsafe { fit_search_of(scheme, x, nonpositive_min) }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fit_search_of(scheme: Scheme, x: &[f32], nonpositive_min: bool) -> SearchFit {
    // SAFETY: this function's contract.
    let mut p = unsafe { Avx2Passes::new() };
    search::fit_search_with(&mut p, scheme, x, nonpositive_min)
}

/// [`crate::search::fit_search`] of consecutive groups with AVX2.
///
/// The caller has checked that the CPU has AVX2, FMA and F16C.
pub(crate) fn fit_search_groups_entry(
    scheme: Scheme,
    x: &[f32],
    g: usize,
    nonpositive_min: bool,
    out: &mut [SearchFit],
) {
    // SAFETY: the caller checked the CPU features.
    unsafe { fit_search_groups_of(scheme, x, g, nonpositive_min, out) }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fit_search_groups_of(
    scheme: Scheme,
    x: &[f32],
    g: usize,
    nonpositive_min: bool,
    out: &mut [SearchFit],
) {
    // SAFETY: this function's contract.
    let mut p = unsafe { Avx2Passes::new() };
    p.fit_search_groups(scheme, x, g, nonpositive_min, out)
}

/// [`crate::search::Sums::of`] with AVX2.
///
/// The caller has checked that the CPU has AVX2, FMA and F16C.
pub(crate) fn sums_of_entry(x: &[f32]) -> Sums {
    // SAFETY: the caller checked the CPU features.
    unsafe { sums_of(x) }
}

/// A mask of the first `n` (0..=8) lanes.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn first_lanes(n: usize) -> __m256i {
    // SAFETY: register-only operations.
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}

/// Loads the `n < 8` elements at `p` into the first lanes, the others +0.
///
/// # Safety
/// AVX2; `p..p+n` readable.
#[inline(always)]
unsafe fn load_tail(p: *const f32, n: usize) -> __m256 {
    // SAFETY: maskload reads only the lanes of the mask, the first `n`, which the caller
    // guarantees readable; masked lanes read as +0 and never fault.
    unsafe {
        if n == 0 {
            _mm256_setzero_ps()
        } else {
            _mm256_maskload_ps(p, first_lanes(n))
        }
    }
}

/// The lane sums of eight vectors: lane `i` of the result is
/// `((v_i0+v_i1)+(v_i2+v_i3))+((v_i4+v_i5)+(v_i6+v_i7))`.
///
/// # Safety
/// AVX.
#[inline(always)]
unsafe fn combine8(v: &[__m256; 8]) -> __m256 {
    // SAFETY: register-only operations.
    unsafe {
        // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7].
        let h01 = _mm256_hadd_ps(v[0], v[1]);
        let h23 = _mm256_hadd_ps(v[2], v[3]);
        let h45 = _mm256_hadd_ps(v[4], v[5]);
        let h67 = _mm256_hadd_ps(v[6], v[7]);
        // [(v0: l0123), v1, v2, v3 | (v0: l4567), v1, v2, v3]
        let a = _mm256_hadd_ps(h01, h23);
        let b = _mm256_hadd_ps(h45, h67);
        let lo = _mm256_permute2f128_ps::<0x20>(a, b);
        let hi = _mm256_permute2f128_ps::<0x31>(a, b);
        _mm256_add_ps(lo, hi)
    }
}

/// The lane sums of two vectors, as [`combine8`]: `(Σa, Σb)`.
///
/// # Safety
/// AVX.
#[inline(always)]
unsafe fn combine2(a: __m256, b: __m256) -> (f32, f32) {
    // SAFETY: register-only operations.
    unsafe {
        let h = _mm256_hadd_ps(a, b); // [a01, a23, b01, b23 | a45, a67, b45, b67]
        let h = _mm256_hadd_ps(h, h); // [a0123, b0123, .. | a4567, b4567, ..]
        let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        (_mm_cvtss_f32(s), _mm_cvtss_f32(_mm_movehdup_ps(s)))
    }
}

/// The sums of three vectors, as [`combine8`]: `(Σq, Σq2, Σxq)`.
///
/// # Safety
/// AVX.
#[inline(always)]
unsafe fn combine3(q: __m256, q2: __m256, xq: __m256) -> (f32, f32, f32) {
    // SAFETY: register-only operations.
    unsafe {
        let h1 = _mm256_hadd_ps(q, q2); // [q01, q23, r01, r23 | q45, q67, r45, r67]
        let h2 = _mm256_hadd_ps(xq, xq); // [s01, s23, s01, s23 | s45, s67, ..]
        let h = _mm256_hadd_ps(h1, h2); // [q0123, r0123, s0123, s0123 | q4567, ..]
        let r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        let mut o = [0.0f32; 4];
        _mm_storeu_ps(o.as_mut_ptr(), r);
        (o[0], o[1], o[2])
    }
}

/// [`crate::search::rtn_range`] (up to the sign of zeros).
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn range(x: &[f32], nonpositive_min: bool) -> (f32, f32) {
    // SAFETY: the same CPU features.
    let (lo, hi, _) = unsafe { range_sums::<false>(x, nonpositive_min) };
    (lo, hi)
}

/// [`crate::search::Sums::of`], bit for bit.
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn sums_of(x: &[f32]) -> Sums {
    // SAFETY: the same CPU features.
    unsafe { range_sums::<true>(x, false).2 }
}

/// [`crate::search::rtn_range`] (up to the sign of zeros) and [`crate::search::Sums::of`].
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn range_and_sums(x: &[f32], nonpositive_min: bool) -> (f32, f32, Sums) {
    // SAFETY: the same CPU features.
    unsafe { range_sums::<true>(x, nonpositive_min) }
}

/// [`crate::search::rtn_range`] (up to the sign of zeros) and, with `SUMS`,
/// [`crate::search::Sums::of`] bit for bit, in one pass.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn range_sums<const SUMS: bool>(x: &[f32], nonpositive_min: bool) -> (f32, f32, Sums) {
    let (start_lo, start_hi) = if nonpositive_min || x.is_empty() {
        (0.0f32, 0.0f32)
    } else {
        (f32::INFINITY, f32::NEG_INFINITY)
    };
    let body = x.len() & !7;
    // SAFETY: loads stay below `x.len()` (the tail through a mask).
    unsafe {
        let (s_lo, s_hi) = (_mm256_set1_ps(start_lo), _mm256_set1_ps(start_hi));
        let (mut lo, mut hi) = (s_lo, s_hi);
        let (mut s, mut s2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let p = x.as_ptr();
        let mut i = 0;
        while i < body {
            let v = _mm256_loadu_ps(p.add(i));
            lo = _mm256_min_ps(lo, v);
            hi = _mm256_max_ps(hi, v);
            if SUMS {
                s = _mm256_add_ps(s, v);
                s2 = _mm256_add_ps(s2, _mm256_mul_ps(v, v));
            }
            i += 8;
        }
        let rem = x.len() - body;
        if rem > 0 {
            let m = _mm256_castsi256_ps(first_lanes(rem));
            // Absent lanes load +0: they add +0 to the sums and the start value to the range.
            let v = load_tail(p.add(body), rem);
            lo = _mm256_min_ps(lo, _mm256_blendv_ps(s_lo, v, m));
            hi = _mm256_max_ps(hi, _mm256_blendv_ps(s_hi, v, m));
            if SUMS {
                s = _mm256_add_ps(s, v);
                s2 = _mm256_add_ps(s2, _mm256_mul_ps(v, v));
            }
        }
        let sums = if SUMS {
            let (sx, sx2) = combine2(s, s2);
            Sums {
                n: x.len() as f32,
                x: sx,
                x2: sx2,
                ..Sums::default()
            }
        } else {
            Sums::default()
        };
        (hmin(lo), hmax(hi), sums)
    }
}

/// A group ready for code sums: `x`, its tail and `base` in registers.
struct Prepared {
    px: *const f32,
    base: __m256,
    /// 1 in every lane (see [`accumulate`]).
    one: __m256,
    /// Elements in whole vectors.
    body: usize,
    /// Elements after them (0..8).
    rem: usize,
    /// The tail of `x`, absent lanes +0.
    xt: __m256,
    /// The tail of `x − base`.
    xst: __m256,
    /// The lanes of the tail.
    mask: __m256,
    lo: __m256,
    hi: __m256,
}

impl Prepared {
    /// # Safety
    /// AVX2; `x` outlives the result.
    #[inline(always)]
    unsafe fn new(scheme: Scheme, x: &[f32], base: f32) -> Prepared {
        let n = x.len();
        let body = n & !7;
        let rem = n - body;
        let (qlo, qhi) = code_range(scheme);
        // SAFETY: the tail load reads x[body..n] through a mask.
        unsafe {
            let px = x.as_ptr();
            let vbase = _mm256_set1_ps(base);
            let xt = load_tail(px.add(body), rem);
            Prepared {
                px,
                base: vbase,
                one: _mm256_set1_ps(core::hint::black_box(1.0)),
                body,
                rem,
                xt,
                xst: _mm256_sub_ps(xt, vbase),
                mask: _mm256_castsi256_ps(first_lanes(rem)),
                lo: _mm256_set1_ps(qlo),
                hi: _mm256_set1_ps(qhi),
            }
        }
    }

    /// `clamp(round(t · inv))`. max/min return their second operand when either is
    /// NaN, so the value goes second and a NaN stays NaN, as with `f32::clamp`.
    ///
    /// # Safety
    /// AVX.
    #[inline(always)]
    unsafe fn code(&self, t: __m256, inv: __m256) -> __m256 {
        // SAFETY: register-only operations.
        unsafe {
            let c = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(t, inv),
            );
            _mm256_min_ps(self.hi, _mm256_max_ps(self.lo, c))
        }
    }

    /// The lanes of Σq, Σq², Σx·q under one inverse scale.
    ///
    /// # Safety
    /// AVX and FMA; the group's slices are alive.
    #[inline(always)]
    unsafe fn lanes(&self, inv: f32) -> (__m256, __m256, __m256) {
        // SAFETY: loads read x[..body]; the rest is register-only.
        unsafe {
            let inv = _mm256_set1_ps(inv);
            let z = _mm256_setzero_ps();
            let mut a = (z, z, z);
            let mut i = 0;
            while i < self.body {
                let v = _mm256_loadu_ps(self.px.add(i));
                let c = self.code(_mm256_sub_ps(v, self.base), inv);
                accumulate(&mut a, c, v, self.one);
                i += 8;
            }
            if self.rem > 0 {
                accumulate_tail(&mut a, self.code(self.xst, inv), self.xt, self.mask);
            }
            a
        }
    }

    /// [`Prepared::lanes`] for two inverse scales in one pass.
    ///
    /// # Safety
    /// AVX and FMA; the group's slices are alive.
    #[inline(always)]
    unsafe fn lanes2(&self, inv_a: f32, inv_b: f32) -> [(__m256, __m256, __m256); 2] {
        // SAFETY: loads read x[..body]; the rest is register-only.
        unsafe {
            let (ia, ib) = (_mm256_set1_ps(inv_a), _mm256_set1_ps(inv_b));
            let z = _mm256_setzero_ps();
            let (mut a, mut b) = ((z, z, z), (z, z, z));
            let mut i = 0;
            while i < self.body {
                let v = _mm256_loadu_ps(self.px.add(i));
                let t = _mm256_sub_ps(v, self.base);
                accumulate(&mut a, self.code(t, ia), v, self.one);
                accumulate(&mut b, self.code(t, ib), v, self.one);
                i += 8;
            }
            if self.rem > 0 {
                accumulate_tail(&mut a, self.code(self.xst, ia), self.xt, self.mask);
                accumulate_tail(&mut b, self.code(self.xst, ib), self.xt, self.mask);
            }
            [a, b]
        }
    }

    /// Σq, Σq², Σx·q under up to 8 inverse scales, lane `j` for `invs[j]` (0 past the end).
    ///
    /// # Safety
    /// AVX; the group's slices are alive.
    #[inline(always)]
    unsafe fn sums8(&self, invs: &[f32]) -> (__m256, __m256, __m256) {
        // SAFETY: register and stack operations, and `lanes`.
        unsafe {
            let z = _mm256_setzero_ps();
            let (mut aq, mut aq2, mut axq) = ([z; 8], [z; 8], [z; 8]);
            for (j, &inv) in invs.iter().take(LANES).enumerate() {
                (aq[j], aq2[j], axq[j]) = self.lanes(inv);
            }
            (combine8(&aq), combine8(&aq2), combine8(&axq))
        }
    }
}

/// Adds codes `c` of values `v` to the lanes of Σq, Σq², Σx·q, as the specification's
/// `q += c; q2 += c * c; xq += v * c`.
///
/// Two of the three go through FMA, with the same bits as the separate operations
/// (and off the add/round/min/max ports, which the codes keep busy): `c·c` is exact
/// (a code is an integer of at most 255 in magnitude, or NaN), so `fma(c, c, q2)`
/// rounds once exactly where `q2 + c·c` does; and `fma(p, 1, xq)` with the product
/// `p = v·c` already rounded is `p + xq` rounded once, an add. (`one` is 1 in every
/// lane, hidden from the compiler, which would otherwise turn the FMA back into an add.)
///
/// # Safety
/// AVX and FMA.
#[inline(always)]
unsafe fn accumulate(a: &mut (__m256, __m256, __m256), c: __m256, v: __m256, one: __m256) {
    // SAFETY: register-only operations.
    unsafe {
        a.0 = _mm256_add_ps(a.0, c);
        a.1 = _mm256_fmadd_ps(c, c, a.1);
        a.2 = _mm256_fmadd_ps(_mm256_mul_ps(v, c), one, a.2);
    }
}

/// [`accumulate`] for the tail of a group: lanes outside `mask` add +0 (their codes
/// may be anything, even NaN), which leaves an accumulator that is never −0 unchanged.
///
/// # Safety
/// AVX and FMA.
#[inline(always)]
unsafe fn accumulate_tail(a: &mut (__m256, __m256, __m256), c: __m256, v: __m256, mask: __m256) {
    // SAFETY: register-only operations.
    unsafe {
        a.0 = _mm256_add_ps(a.0, _mm256_and_ps(c, mask));
        a.1 = _mm256_add_ps(a.1, _mm256_and_ps(_mm256_mul_ps(c, c), mask));
        a.2 = _mm256_add_ps(a.2, _mm256_and_ps(_mm256_mul_ps(v, c), mask));
    }
}

/// [`crate::search::code_sums`], bit for bit.
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn code_sums(
    scheme: Scheme,
    x: &[f32],
    base: f32,
    invs: &[f32],
    whole: &Sums,
    out: &mut [Sums],
) {
    let count = invs.len().min(out.len());
    // SAFETY: the CPU features are ours; `g` is used while `x` is alive.
    unsafe {
        let g = Prepared::new(scheme, x, base);
        if count == 1 {
            let (q, q2, xq) = g.lanes(invs[0]);
            let (q, q2, xq) = combine3(q, q2, xq);
            out[0] = Sums {
                q,
                q2,
                xq,
                ..*whole
            };
            return;
        }
        for (invs, out) in invs[..count].chunks(LANES).zip(out.chunks_mut(LANES)) {
            let (q, q2, xq) = g.sums8(invs);
            let (mut sq, mut sq2, mut sxq) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
            _mm256_storeu_ps(sq.as_mut_ptr(), q);
            _mm256_storeu_ps(sq2.as_mut_ptr(), q2);
            _mm256_storeu_ps(sxq.as_mut_ptr(), xq);
            for (j, o) in out.iter_mut().take(invs.len()).enumerate() {
                *o = Sums {
                    q: sq[j],
                    q2: sq2[j],
                    xq: sxq[j],
                    ..*whole
                };
            }
        }
    }
}

/// The sums of `x` alone ([`Sums::of`]: `n`, Σx, Σx²) in vector lanes.
#[derive(Clone, Copy)]
struct Whole8 {
    n: __m256,
    x: __m256,
    x2: __m256,
}

impl Whole8 {
    /// The same sums in every lane.
    ///
    /// # Safety
    /// AVX.
    #[inline(always)]
    unsafe fn splat(w: &Sums) -> Whole8 {
        // SAFETY: register-only operations.
        unsafe {
            Whole8 {
                n: _mm256_set1_ps(w.n),
                x: _mm256_set1_ps(w.x),
                x2: _mm256_set1_ps(w.x2),
            }
        }
    }
}

/// [`Sums::err`] lane by lane, left to right as the specification.
///
/// # Safety
/// AVX.
#[inline(always)]
unsafe fn err8(s: __m256, m: __m256, q: __m256, q2: __m256, xq: __m256, w: &Whole8) -> __m256 {
    // SAFETY: register-only operations.
    unsafe {
        let two = _mm256_set1_ps(2.0);
        let ts = _mm256_mul_ps(two, s);
        let t = _mm256_sub_ps(w.x2, _mm256_mul_ps(ts, xq));
        let t = _mm256_sub_ps(t, _mm256_mul_ps(_mm256_mul_ps(two, m), w.x));
        let t = _mm256_add_ps(t, _mm256_mul_ps(_mm256_mul_ps(s, s), q2));
        let t = _mm256_add_ps(t, _mm256_mul_ps(_mm256_mul_ps(ts, m), q));
        _mm256_add_ps(t, _mm256_mul_ps(_mm256_mul_ps(w.n, m), m))
    }
}

/// The fits of [`Sums::fit`] and their errors [`Sums::err`] for eight candidates at
/// once (lane by lane the specification's operations): `(usable, s, m, err)`, the
/// first a lane mask.
///
/// # Safety
/// AVX.
#[inline(always)]
unsafe fn fits8(
    q: __m256,
    q2: __m256,
    xq: __m256,
    w: &Whole8,
    sym: bool,
    nonpositive_min: bool,
) -> (__m256, __m256, __m256, __m256) {
    // SAFETY: register-only operations.
    unsafe {
        let (n, x) = (w.n, w.x);
        let z = _mm256_setzero_ps();
        // The scale alone: `xq / q2` when `q2 > 0` (computed only where used).
        let so_ok = _mm256_cmp_ps::<_CMP_GT_OQ>(q2, z);
        let (s, m, ok) = if sym {
            (_mm256_div_ps(xq, q2), z, so_ok)
        } else {
            let d = _mm256_sub_ps(_mm256_mul_ps(n, q2), _mm256_mul_ps(q, q));
            // `d <= 0` gives none; a NaN `d` goes on (and fails the finiteness test).
            let d_ok = _mm256_cmp_ps::<_CMP_NLE_UQ>(d, z);
            let s = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(n, xq), _mm256_mul_ps(q, x)), d);
            let m = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(q2, x), _mm256_mul_ps(q, xq)), d);
            if nonpositive_min {
                // A positive min: the scale alone instead (if there is one).
                let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(m, z);
                (
                    _mm256_blendv_ps(s, _mm256_div_ps(xq, q2), pos),
                    _mm256_andnot_ps(pos, m),
                    _mm256_and_ps(d_ok, _mm256_or_ps(_mm256_andnot_ps(pos, d_ok), so_ok)),
                )
            } else {
                (s, m, d_ok)
            }
        };
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let inf = _mm256_set1_ps(f32::INFINITY);
        let finite = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(s, abs), inf),
            _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(m, abs), inf),
        );
        let sign_ok = if sym {
            _mm256_cmp_ps::<_CMP_NEQ_OQ>(s, z)
        } else {
            _mm256_cmp_ps::<_CMP_GT_OQ>(s, z)
        };
        let ok = _mm256_and_ps(ok, _mm256_and_ps(finite, sign_ok));
        (ok, s, m, err8(s, m, q, q2, xq, w))
    }
}

/// Most elements per group of the transposed search ([`search8`]).
const MAX_T: usize = 256;

/// Combines eight lane partial sums as the specification:
/// `((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7))`, vertically.
///
/// # Safety
/// AVX.
#[inline(always)]
unsafe fn tree8(r: &[__m256; 8]) -> __m256 {
    // SAFETY: register-only operations.
    unsafe {
        let a = _mm256_add_ps(_mm256_add_ps(r[0], r[1]), _mm256_add_ps(r[2], r[3]));
        let b = _mm256_add_ps(_mm256_add_ps(r[4], r[5]), _mm256_add_ps(r[6], r[7]));
        _mm256_add_ps(a, b)
    }
}

/// Σq, Σq², Σx·q of eight groups under two inverse scales each (one per group in each
/// lane), from the transposed values `v` and `t = v − base`: vector `j` holds element
/// `j` of each group. The specification's lane `l` of a group is the sum over
/// `j ≡ l (mod 8)`, in order; the lanes are then combined by [`tree8`].
///
/// # Safety
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn sums8_pair<const C: usize, const LOWER: bool>(
    v: &[__m256],
    t: &[__m256],
    ia: __m256,
    ib: __m256,
    lo: __m256,
    hi: __m256,
    one: __m256,
) -> [(__m256, __m256, __m256); 2] {
    // SAFETY: loads read v[..] and t[..] at indices below their common length; the
    // eight lanes of `r` are written before it is read.
    unsafe {
        let z = _mm256_setzero_ps();
        let code = |t: __m256, inv: __m256| {
            let c = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(t, inv),
            );
            _mm256_min_ps(hi, if LOWER { _mm256_max_ps(lo, c) } else { c })
        };
        // With `C > 0` the groups have `8·C` elements (a loop the compiler unrolls).
        let n = if C > 0 { 8 * C } else { v.len().min(t.len()) };
        assert!(n <= v.len() && n <= t.len());
        let (pv, pt) = (v.as_ptr(), t.as_ptr());
        // Lane `l` of both inverse scales: six sums.
        let lane = |l: usize| {
            let (mut a, mut b) = ((z, z, z), (z, z, z));
            let mut j = l;
            while j < n {
                let (vj, tj) = (*pv.add(j), *pt.add(j));
                accumulate(&mut a, code(tj, ia), vj, one);
                if LOWER {
                    accumulate(&mut b, code(tj, ib), vj, one);
                } else {
                    // Without the lower clamp the multiply ports are the busier ones:
                    // the second scale's Σx·q adds on the add ports.
                    let cb = code(tj, ib);
                    b.0 = _mm256_add_ps(b.0, cb);
                    b.1 = _mm256_fmadd_ps(cb, cb, b.1);
                    b.2 = _mm256_add_ps(b.2, _mm256_mul_ps(vj, cb));
                }
                j += LANES;
            }
            [a.0, a.1, a.2, b.0, b.1, b.2]
        };
        // Every lane first (kept in memory: the partial sums of a tree built on the way
        // would crowd the accumulators out of the registers), then `tree8`.
        let mut r = core::mem::MaybeUninit::<[[__m256; 6]; 8]>::uninit();
        let pr = r.as_mut_ptr() as *mut [__m256; 6];
        for l in 0..LANES {
            pr.add(l).write(lane(l));
        }
        let r = r.assume_init();
        let sum = |i: usize| {
            let a = _mm256_add_ps(
                _mm256_add_ps(r[0][i], r[1][i]),
                _mm256_add_ps(r[2][i], r[3][i]),
            );
            let b = _mm256_add_ps(
                _mm256_add_ps(r[4][i], r[5][i]),
                _mm256_add_ps(r[6][i], r[7][i]),
            );
            _mm256_add_ps(a, b)
        };
        [(sum(0), sum(1), sum(2)), (sum(3), sum(4), sum(5))]
    }
}

/// Transposes eight consecutive groups of `g` elements (a multiple of 8) in 8×8
/// blocks: `v[j]` gets element `j` of each group, group `k` in lane `k`.
///
/// # Safety
/// AVX; `x.len() ≥ 8·g`, `v.len() ≥ g`.
#[inline(always)]
unsafe fn transpose8(x: &[f32], g: usize, v: &mut [__m256]) {
    assert!(g.is_multiple_of(8) && x.len() >= 8 * g && v.len() >= g);
    // SAFETY: loads read x[k·g + j] for k < 8, j < g, inside x by the assertion.
    unsafe {
        let px = x.as_ptr();
        for c in 0..g / 8 {
            let (r0, r1) = (
                _mm256_loadu_ps(px.add(c * 8)),
                _mm256_loadu_ps(px.add(g + c * 8)),
            );
            let r2 = _mm256_loadu_ps(px.add(2 * g + c * 8));
            let r3 = _mm256_loadu_ps(px.add(3 * g + c * 8));
            let r4 = _mm256_loadu_ps(px.add(4 * g + c * 8));
            let r5 = _mm256_loadu_ps(px.add(5 * g + c * 8));
            let r6 = _mm256_loadu_ps(px.add(6 * g + c * 8));
            let r7 = _mm256_loadu_ps(px.add(7 * g + c * 8));
            let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
            let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
            let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let o = &mut v[c * 8..c * 8 + 8];
            o[0] = _mm256_permute2f128_ps::<0x20>(u0, u4);
            o[1] = _mm256_permute2f128_ps::<0x20>(u1, u5);
            o[2] = _mm256_permute2f128_ps::<0x20>(u2, u6);
            o[3] = _mm256_permute2f128_ps::<0x20>(u3, u7);
            o[4] = _mm256_permute2f128_ps::<0x31>(u0, u4);
            o[5] = _mm256_permute2f128_ps::<0x31>(u1, u5);
            o[6] = _mm256_permute2f128_ps::<0x31>(u2, u6);
            o[7] = _mm256_permute2f128_ps::<0x31>(u3, u7);
        }
    }
}

/// [`crate::search::code_sums`] of eight consecutive full groups of `g` elements (`g`
/// a multiple of 8, at most [`MAX_T`]) with one base and inverse scale each, bit for
/// bit, the groups in the lanes (as [`search8`]).
///
/// # Safety
/// AVX2 and FMA; `x.len() ≥ 8·g`, and 8 or more of each of `bases`, `invs`,
/// `wholes`, `out`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn code_sums8(
    scheme: Scheme,
    x: &[f32],
    g: usize,
    bases: &[f32],
    invs: &[f32],
    wholes: &[Sums],
    out: &mut [Sums],
    vb: &mut Vec<__m256>,
) {
    assert!(bases.len() >= 8 && invs.len() >= 8 && wholes.len() >= 8 && out.len() >= 8);
    // SAFETY: the CPU features are ours; `sums8_one` asserts the rest.
    unsafe {
        let base = _mm256_loadu_ps(bases.as_ptr());
        let inv = _mm256_loadu_ps(invs.as_ptr());
        let (q, q2, xq) = sums8_one(scheme, x, g, base, inv, vb);
        let lanes = |v: __m256| {
            let mut o = [0.0f32; 8];
            _mm256_storeu_ps(o.as_mut_ptr(), v);
            o
        };
        let (q, q2, xq) = (lanes(q), lanes(q2), lanes(xq));
        for (k, (o, w)) in out.iter_mut().zip(wholes).take(8).enumerate() {
            *o = Sums {
                q: q[k],
                q2: q2[k],
                xq: xq[k],
                ..*w
            };
        }
    }
}

/// Σq, Σq², Σx·q of eight consecutive full groups of `g` elements (`g` a multiple of
/// 8, at most [`MAX_T`]) under one base and inverse scale each (lane `k` for group
/// `k`), bit for bit as [`crate::search::code_sums`].
///
/// # Safety
/// AVX2 and FMA; `x.len() ≥ 8·g`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn sums8_one(
    scheme: Scheme,
    x: &[f32],
    g: usize,
    base: __m256,
    inv: __m256,
    vb: &mut Vec<__m256>,
) -> (__m256, __m256, __m256) {
    assert!(g.is_multiple_of(8) && g <= MAX_T && x.len() >= 8 * g);
    if vb.len() < g {
        vb.resize(g, z0());
    }
    let v = &mut vb[..g];
    let (qlo, qhi) = code_range(scheme);
    // SAFETY: the CPU features are ours; the sizes are asserted above.
    unsafe {
        transpose8(x, g, v);
        let (lo, hi) = (_mm256_set1_ps(qlo), _mm256_set1_ps(qhi));
        let one = _mm256_set1_ps(core::hint::black_box(1.0));
        let z = _mm256_setzero_ps();
        let lane = |l: usize| {
            let mut a = (z, z, z);
            let mut j = l;
            while j < g {
                let vj = v[j];
                let c = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_mul_ps(_mm256_sub_ps(vj, base), inv),
                );
                accumulate(&mut a, _mm256_min_ps(hi, _mm256_max_ps(lo, c)), vj, one);
                j += LANES;
            }
            [a.0, a.1, a.2]
        };
        let add = |x: [__m256; 3], y: [__m256; 3]| {
            [
                _mm256_add_ps(x[0], y[0]),
                _mm256_add_ps(x[1], y[1]),
                _mm256_add_ps(x[2], y[2]),
            ]
        };
        // ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)), as `tree8`.
        let p0123 = add(add(lane(0), lane(1)), add(lane(2), lane(3)));
        let p4567 = add(add(lane(4), lane(5)), add(lane(6), lane(7)));
        let [q, q2, xq] = add(p0123, p4567);
        (q, q2, xq)
    }
}

/// [`crate::dq::best_near`], bit for bit: the eight neighbours' errors in the lanes
/// (in the specification's order), then the first lowest below the centre's.
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn best_near(
    sym: bool,
    (lmin, lmax): (i32, i32),
    (f, m): (f32, f32),
    (c0, m0): (i32, i32),
    sums: &Sums,
) -> (i32, i32) {
    // Scale code steps, then min code steps (symmetric: only the scale code moves).
    const DS: [i32; 8] = [-1, -1, -1, 0, 0, 1, 1, 1];
    const DM: [i32; 8] = [-1, 0, 1, -1, 1, -1, 0, 1];
    const DS_SYM: [i32; 8] = [-1, 1, 0, 0, 0, 0, 0, 0];
    let centre = decoded(f, m, c0, m0);
    let best = sums.err(centre.scale, centre.min);
    let (ds, dm) = if sym { (&DS_SYM, &[0; 8]) } else { (&DS, &DM) };
    // SAFETY: register-only operations and loads of 8-element arrays.
    unsafe {
        let a = _mm256_add_epi32(
            _mm256_set1_epi32(c0),
            _mm256_loadu_si256(ds.as_ptr().cast()),
        );
        let b = _mm256_add_epi32(
            _mm256_set1_epi32(m0),
            _mm256_loadu_si256(dm.as_ptr().cast()),
        );
        let below = |v: __m256i, lo: i32| _mm256_cmpgt_epi32(_mm256_set1_epi32(lo), v);
        let above = |v: __m256i, hi: i32| _mm256_cmpgt_epi32(v, _mm256_set1_epi32(hi));
        // Out of range, or a zero scale code (never a neighbour).
        let out = _mm256_or_si256(
            _mm256_or_si256(below(a, lmin), above(a, lmax)),
            _mm256_or_si256(
                _mm256_or_si256(below(b, 0), above(b, lmax)),
                _mm256_cmpeq_epi32(a, _mm256_setzero_si256()),
            ),
        );
        let lanes = if sym { 0b11 } else { 0xFF };
        let valid = !(_mm256_movemask_ps(_mm256_castsi256_ps(out)) as u32) & lanes;
        // decoded(): scale = cs·F, min = −(cm·M).
        let scale = _mm256_mul_ps(_mm256_cvtepi32_ps(a), _mm256_set1_ps(f));
        let min = _mm256_xor_ps(
            _mm256_mul_ps(_mm256_cvtepi32_ps(b), _mm256_set1_ps(m)),
            _mm256_set1_ps(-0.0),
        );
        let (q, q2, xq) = (
            _mm256_set1_ps(sums.q),
            _mm256_set1_ps(sums.q2),
            _mm256_set1_ps(sums.xq),
        );
        let e = err8(scale, min, q, q2, xq, &Whole8::splat(sums));
        let lower = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(e, _mm256_set1_ps(best)));
        let take = valid & lower as u32;
        if take == 0 {
            return (c0, m0);
        }
        let mut es = [0.0f32; 8];
        _mm256_storeu_ps(es.as_mut_ptr(), e);
        // The first of the lowest (a strict `<` in order keeps the first of equals).
        let mut at = take.trailing_zeros() as usize;
        for i in at + 1..8 {
            if take >> i & 1 == 1 && es[i] < es[at] {
                at = i;
            }
        }
        (c0 + ds[at], m0 + dm[at])
    }
}

/// [`Codes::of`] lane by lane: `(cs, cm)`.
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn codes_of8(c: &Codes, s: __m256, m: __m256) -> (__m256i, __m256i) {
    // SAFETY: register-only operations. (The block is needed before Rust 1.86, where
    // the intrinsics are unsafe even with the features enabled.)
    #[allow(unused_unsafe)]
    unsafe {
        let z = _mm256_setzero_ps();
        // round, then `as i32` (NaN → 0, saturating) and clamp: clamping the float
        // first gives the same integer, and a NaN becomes +0 (inside every range).
        let to_code = |v: __m256, lo: i32, hi: i32| {
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(r, r);
            let r = _mm256_min_ps(
                _mm256_max_ps(r, _mm256_set1_ps(lo as f32)),
                _mm256_set1_ps(hi as f32),
            );
            _mm256_cvtps_epi32(_mm256_andnot_ps(nan, r))
        };
        let mut cs = to_code(_mm256_mul_ps(s, _mm256_set1_ps(c.inv_s)), c.lmin, c.lmax);
        if c.fs != 0.0 {
            // A non-zero scale (NaN included, as `!=` says) keeps a non-zero code.
            let fix = _mm256_and_si256(
                _mm256_cmpeq_epi32(cs, _mm256_setzero_si256()),
                _mm256_castps_si256(_mm256_cmp_ps::<_CMP_NEQ_UQ>(s, z)),
            );
            let pos = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(s, z));
            let unit = _mm256_blendv_epi8(_mm256_set1_epi32(-1), _mm256_set1_epi32(1), pos);
            cs = _mm256_blendv_epi8(cs, unit, fix);
        }
        let neg_m = _mm256_xor_ps(m, _mm256_set1_ps(-0.0));
        let cm = to_code(_mm256_mul_ps(neg_m, _mm256_set1_ps(c.inv_m)), 0, c.lmax);
        (cs, cm)
    }
}

/// The parameters of `decoded` lane by lane: `(scale, min, inv)`.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn decoded8(c: &Codes, cs: __m256i, cm: __m256i) -> (__m256, __m256, __m256) {
    // SAFETY: register-only operations.
    unsafe {
        let scale = _mm256_mul_ps(_mm256_cvtepi32_ps(cs), _mm256_set1_ps(c.fs));
        let min = _mm256_xor_ps(
            _mm256_mul_ps(_mm256_cvtepi32_ps(cm), _mm256_set1_ps(c.fm)),
            _mm256_set1_ps(-0.0),
        );
        let zero = _mm256_cmp_ps::<_CMP_EQ_OQ>(scale, _mm256_setzero_ps());
        let inv = _mm256_andnot_ps(zero, _mm256_div_ps(_mm256_set1_ps(1.0), scale));
        (scale, min, inv)
    }
}

/// [`crate::dq::best_near`] lane by lane (one group per lane): the centre, then each
/// neighbour in the specification's order, taken when in range and strictly lower.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn near8(
    c: &Codes,
    c0: __m256i,
    m0: __m256i,
    sums: (__m256, __m256, __m256),
    w: &Whole8,
) -> (__m256i, __m256i) {
    const STEPS: [(i32, i32); 8] = [
        (-1, -1),
        (-1, 0),
        (-1, 1),
        (0, -1),
        (0, 1),
        (1, -1),
        (1, 0),
        (1, 1),
    ];
    const STEPS_SYM: [(i32, i32); 2] = [(-1, 0), (1, 0)];
    // SAFETY: register-only operations.
    unsafe {
        let (q, q2, xq) = sums;
        let (scale, min, _) = decoded8(c, c0, m0);
        let mut best = err8(scale, min, q, q2, xq, w);
        let (mut at_s, mut at_m) = (c0, m0);
        let steps: &[(i32, i32)] = if c.sym { &STEPS_SYM } else { &STEPS };
        let (lmin, lmax) = (_mm256_set1_epi32(c.lmin), _mm256_set1_epi32(c.lmax));
        let zero = _mm256_setzero_si256();
        for &(ds, dm) in steps {
            let a = _mm256_add_epi32(c0, _mm256_set1_epi32(ds));
            let b = _mm256_add_epi32(m0, _mm256_set1_epi32(dm));
            // Out of range, or a zero scale code (never a neighbour).
            let out = _mm256_or_si256(
                _mm256_or_si256(_mm256_cmpgt_epi32(lmin, a), _mm256_cmpgt_epi32(a, lmax)),
                _mm256_or_si256(
                    _mm256_or_si256(_mm256_cmpgt_epi32(zero, b), _mm256_cmpgt_epi32(b, lmax)),
                    _mm256_cmpeq_epi32(a, zero),
                ),
            );
            let (scale, min, _) = decoded8(c, a, b);
            let e = err8(scale, min, q, q2, xq, w);
            let take = _mm256_andnot_si256(
                out,
                _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(e, best)),
            );
            best = _mm256_blendv_ps(best, e, _mm256_castsi256_ps(take));
            at_s = _mm256_blendv_epi8(at_s, a, take);
            at_m = _mm256_blendv_epi8(at_m, b, take);
        }
        (at_s, at_m)
    }
}

/// [`crate::dq::choose_codes`] of eight consecutive full groups of `g` elements (`g` a
/// multiple of 8, at most [`MAX_T`]) with the search, bit for bit, one group per lane.
///
/// # Safety
/// AVX2 and FMA; `x.len() ≥ 8·g`, eight fits and outputs.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn choose8(
    c: &Codes,
    scheme: Scheme,
    x: &[f32],
    g: usize,
    fits: &[SearchFit],
    out: &mut [(i32, i32)],
    vb: &mut Vec<__m256>,
) {
    assert!(fits.len() >= 8 && out.len() >= 8 && x.len() >= 8 * g);
    let [sa, ma, qa, q2a, xqa, na, xa, x2a] = fit_lanes(fits);
    // SAFETY: the CPU features are ours; loads and stores of 8-element arrays; the
    // sizes `code_sums8` needs are asserted above.
    unsafe {
        let ld = |a: &[f32; 8]| _mm256_loadu_ps(a.as_ptr());
        let w = Whole8 {
            n: ld(&na),
            x: ld(&xa),
            x2: ld(&x2a),
        };
        let (cs, cm) = codes_of8(c, ld(&sa), ld(&ma));
        let (cs, cm) = near8(c, cs, cm, (ld(&qa), ld(&q2a), ld(&xqa)), &w);
        let (scale, min, inv) = decoded8(c, cs, cm);
        // The refinement: the codes rounded again with these parameters.
        let s2v = sums8_one(scheme, x, g, min, inv, vb);
        let (ok, rs, rm, _) = fits8(s2v.0, s2v.1, s2v.2, &w, c.sym, true);
        let (ns, nm) = codes_of8(c, rs, rm);
        let (ns, nm) = near8(c, ns, nm, s2v, &w);
        let (pscale, pmin, _) = decoded8(c, ns, nm);
        let e_new = err8(pscale, pmin, s2v.0, s2v.1, s2v.2, &w);
        let e_old = err8(scale, min, s2v.0, s2v.1, s2v.2, &w);
        let take =
            _mm256_castps_si256(_mm256_and_ps(ok, _mm256_cmp_ps::<_CMP_LT_OQ>(e_new, e_old)));
        let cs = _mm256_blendv_epi8(cs, ns, take);
        let cm = _mm256_blendv_epi8(cm, nm, take);
        let (mut os, mut om) = ([0i32; 8], [0i32; 8]);
        _mm256_storeu_si256(os.as_mut_ptr().cast(), cs);
        _mm256_storeu_si256(om.as_mut_ptr().cast(), cm);
        for (k, o) in out.iter_mut().take(8).enumerate() {
            *o = (os[k], om[k]);
        }
    }
}

/// The first eight fits, field by field: scale, min, then the sums q, q2, xq, n, x, x2.
#[inline(always)]
fn fit_lanes(fits: &[SearchFit]) -> [[f32; 8]; 8] {
    let mut o = [[0.0f32; 8]; 8];
    for (k, f) in fits.iter().take(8).enumerate() {
        let s = &f.sums;
        for (row, v) in o
            .iter_mut()
            .zip([f.fit.scale, f.fit.min, s.q, s.q2, s.xq, s.n, s.x, s.x2])
        {
            row[k] = v;
        }
    }
    o
}

/// Eight groups' [`GroupParams`], lane by lane.
#[derive(Clone, Copy)]
struct Params8 {
    scale: __m256,
    min: __m256,
    inv: __m256,
    /// Lane masks.
    overflowed: __m256,
    zeroed: __m256,
    scale_bits: __m256i,
    min_bits: __m256i,
}

/// Rounds to the scale dtype (nearest even) and saturates to its largest finite
/// value, lane by lane (`round_saturating`): `(value, stored bits, saturated mask)`.
///
/// # Safety
/// AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn round_saturating8(dt: ScaleDtype, v: __m256) -> (__m256, __m256i, __m256) {
    // SAFETY: register-only operations. (The block is needed before Rust 1.86.)
    #[allow(unused_unsafe)]
    unsafe {
        let sign = _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(i32::MIN));
        let (r, bits) = match dt {
            ScaleDtype::F16 => {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                (_mm256_cvtph_ps(h), _mm256_cvtepu16_epi32(h))
            }
            ScaleDtype::BF16 => {
                // half's f32 → bf16: a NaN keeps its high half with the quiet bit; else
                // round to nearest even on the low 16 bits.
                let x = _mm256_castps_si256(v);
                let hi = _mm256_srli_epi32::<16>(x);
                let nan = _mm256_cmpgt_epi32(
                    _mm256_and_si256(x, _mm256_set1_epi32(0x7FFF_FFFF)),
                    _mm256_set1_epi32(0x7F80_0000),
                );
                let round = _mm256_and_si256(
                    _mm256_cmpeq_epi32(
                        _mm256_and_si256(x, _mm256_set1_epi32(0x8000)),
                        _mm256_set1_epi32(0x8000),
                    ),
                    _mm256_xor_si256(
                        _mm256_cmpeq_epi32(
                            _mm256_and_si256(x, _mm256_set1_epi32(0x17FFF)),
                            _mm256_setzero_si256(),
                        ),
                        _mm256_set1_epi32(-1),
                    ),
                );
                let b = _mm256_sub_epi32(hi, round); // round is −1 where it rounds up
                let b = _mm256_blendv_epi8(b, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
                let b = _mm256_and_si256(b, _mm256_set1_epi32(0xFFFF));
                (_mm256_castsi256_ps(_mm256_slli_epi32::<16>(b)), b)
            }
            ScaleDtype::F32 => (v, _mm256_castps_si256(v)),
        };
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let finite =
            _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(r, abs), _mm256_set1_ps(f32::INFINITY));
        let over = _mm256_xor_ps(finite, _mm256_castsi256_ps(_mm256_set1_epi32(-1)));
        let (sat_bits, sat) = match dt {
            ScaleDtype::F16 => {
                let b = _mm256_or_si256(_mm256_set1_epi32(0x7BFF), _mm256_srli_epi32::<16>(sign));
                (
                    b,
                    _mm256_or_ps(_mm256_set1_ps(65504.0), _mm256_castsi256_ps(sign)),
                )
            }
            ScaleDtype::BF16 => {
                let b = _mm256_or_si256(_mm256_set1_epi32(0x7F7F), _mm256_srli_epi32::<16>(sign));
                (b, _mm256_castsi256_ps(_mm256_slli_epi32::<16>(b)))
            }
            ScaleDtype::F32 => {
                let b = _mm256_or_si256(_mm256_set1_epi32(f32::MAX.to_bits() as i32), sign);
                (b, _mm256_castsi256_ps(b))
            }
        };
        (
            _mm256_blendv_ps(r, sat, over),
            _mm256_blendv_epi8(bits, sat_bits, _mm256_castps_si256(over)),
            over,
        )
    }
}

/// [`crate::scalar::params_from_scale_min`] lane by lane, bit for bit.
///
/// # Safety
/// AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn params8(scheme: Scheme, dt: ScaleDtype, scale: __m256, min: __m256) -> Params8 {
    // SAFETY: register-only operations and functions with the same requirements.
    unsafe {
        let (s, s_bits, s_over) = round_saturating8(dt, scale);
        let (m, m_bits, m_over) = if scheme.symmetric() {
            (
                _mm256_setzero_ps(),
                _mm256_setzero_si256(),
                _mm256_setzero_ps(),
            )
        } else {
            round_saturating8(dt, min)
        };
        // `finish`: a scale below the smallest normal f32 is stored as +0 (the group
        // counted as zeroed), with a zero inverse.
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let flush =
            _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(s, abs), _mm256_set1_ps(f32::MIN_POSITIVE));
        Params8 {
            scale: _mm256_andnot_ps(flush, s),
            min: m,
            inv: _mm256_andnot_ps(flush, _mm256_div_ps(_mm256_set1_ps(1.0), s)),
            overflowed: _mm256_or_ps(s_over, m_over),
            zeroed: flush,
            scale_bits: _mm256_andnot_si256(_mm256_castps_si256(flush), s_bits),
            min_bits: m_bits,
        }
    }
}

/// The end of [`crate::search::stored_fit`] for eight consecutive full groups of
/// `fmt.group` elements (a multiple of 8, at most [`MAX_T`]) from their fits
/// (`stored_batch`), bit for bit, one group per lane.
///
/// # Safety
/// AVX2, FMA and F16C; `x.len() ≥ 8·fmt.group`, eight fits and outputs.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn stored8(
    fmt: &QuantFormat,
    x: &[f32],
    found: &[SearchFit],
    out: &mut [GroupParams],
    vb: &mut Vec<__m256>,
) {
    let (scheme, dt, g) = (fmt.scheme, fmt.scale_dtype, fmt.group);
    assert!(found.len() >= 8 && out.len() >= 8 && x.len() >= 8 * g);
    let [sa, ma, _, _, _, na, xa, x2a] = fit_lanes(found);
    // SAFETY: the CPU features are ours; loads and stores of 8-element arrays; the
    // sizes `code_sums8` needs are asserted above.
    unsafe {
        let ld = |a: &[f32; 8]| _mm256_loadu_ps(a.as_ptr());
        let w = Whole8 {
            n: ld(&na),
            x: ld(&xa),
            x2: ld(&x2a),
        };
        let q = params8(scheme, dt, ld(&sa), ld(&ma));
        let (sq, sq2, sxq) = sums8_one(scheme, x, g, q.min, q.inv, vb);
        // The refit, rounded, when usable and lower on these codes.
        let (ok, rs, rm, _) = fits8(sq, sq2, sxq, &w, scheme.symmetric(), false);
        let r = params8(scheme, dt, rs, rm);
        let z = _mm256_setzero_ps();
        let usable = _mm256_andnot_ps(
            _mm256_or_ps(r.overflowed, r.zeroed),
            _mm256_and_ps(ok, _mm256_cmp_ps::<_CMP_NEQ_UQ>(r.scale, z)),
        );
        let lower = _mm256_cmp_ps::<_CMP_LT_OQ>(
            err8(r.scale, r.min, sq, sq2, sxq, &w),
            err8(q.scale, q.min, sq, sq2, sxq, &w),
        );
        let take = _mm256_and_ps(usable, lower);
        let ti = _mm256_castps_si256(take);
        let pick = |a: __m256, b: __m256| {
            let mut o = [0.0f32; 8];
            _mm256_storeu_ps(o.as_mut_ptr(), _mm256_blendv_ps(a, b, take));
            o
        };
        let pick_i = |a: __m256i, b: __m256i| {
            let mut o = [0u32; 8];
            _mm256_storeu_si256(o.as_mut_ptr().cast(), _mm256_blendv_epi8(a, b, ti));
            o
        };
        let (scale, min, inv) = (
            pick(q.scale, r.scale),
            pick(q.min, r.min),
            pick(q.inv, r.inv),
        );
        let over = _mm256_movemask_ps(_mm256_blendv_ps(q.overflowed, r.overflowed, take));
        let zeroed = _mm256_movemask_ps(_mm256_blendv_ps(q.zeroed, r.zeroed, take));
        let (sb, mb) = (
            pick_i(q.scale_bits, r.scale_bits),
            pick_i(q.min_bits, r.min_bits),
        );
        for (k, o) in out.iter_mut().take(8).enumerate() {
            *o = if found[k].fit.scale == 0.0 {
                // A zero scale: round-to-nearest's exact parameters (`stored_first`).
                let (lo, hi) = crate::scalar::group_range(&x[k * g..(k + 1) * g]);
                crate::scalar::params_from_range_with::<F16c>(scheme, dt, lo, hi)
            } else {
                GroupParams {
                    scale: scale[k],
                    min: min[k],
                    inv: inv[k],
                    overflowed: over >> k & 1 == 1,
                    zeroed: zeroed >> k & 1 == 1,
                    scale_bits: sb[k],
                    min_bits: mb[k],
                }
            };
        }
    }
}

/// A zero vector (for array initialisers).
#[inline(always)]
fn z0() -> __m256 {
    // SAFETY: SSE is part of x86_64; setzero has no other requirement.
    unsafe { _mm256_setzero_ps() }
}

/// [`crate::search::fit_search`] of eight consecutive full groups of `g` elements
/// (`g` a multiple of 8, at most [`MAX_T`]), bit for bit, with the groups in the
/// lanes: transposed once, every step is the specification's arithmetic lane by
/// lane, the lane sums of a group are vector sums combined vertically, and the
/// choice among candidates is a running select in candidate order.
///
/// # Safety
/// AVX2 and FMA; `x.len() ≥ 8·g`, `out.len() ≥ 8`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn search8(
    scheme: Scheme,
    x: &[f32],
    g: usize,
    nonpositive_min: bool,
    bufs: &mut (Vec<__m256>, Vec<__m256>),
    out: &mut [SearchFit],
) {
    // Round-to-nearest's inverse scale and the candidates', taken in pairs.
    const N: usize = CANDIDATES + 1;
    const _: () = assert!(N.is_multiple_of(2));
    assert!(g.is_multiple_of(8) && g <= MAX_T && x.len() >= 8 * g && out.len() >= 8);
    let (vb, tb) = bufs;
    if vb.len() < g {
        vb.resize(g, z0());
        tb.resize(g, z0());
    }
    let (v, t) = (&mut vb[..g], &mut tb[..g]);
    let sym = scheme.symmetric();
    let l = levels(scheme);
    // SAFETY: the CPU features are ours, and `transpose8`'s sizes hold.
    unsafe {
        transpose8(x, g, v);

        // The range (from 0 with `nonpositive_min`) and the sums of x alone.
        let (start_lo, start_hi) = if nonpositive_min {
            (0.0f32, 0.0f32)
        } else {
            (f32::INFINITY, f32::NEG_INFINITY)
        };
        let (mut lo, mut hi) = (_mm256_set1_ps(start_lo), _mm256_set1_ps(start_hi));
        let z = _mm256_setzero_ps();
        let one = _mm256_set1_ps(core::hint::black_box(1.0));
        let (mut sx, mut sx2) = ([z; 8], [z; 8]);
        for (j, &vj) in v.iter().enumerate() {
            lo = _mm256_min_ps(lo, vj);
            hi = _mm256_max_ps(hi, vj);
            // The same bits as `sx += vj; sx2 += vj * vj` (see `accumulate`).
            sx[j % 8] = _mm256_add_ps(sx[j % 8], vj);
            sx2[j % 8] = _mm256_fmadd_ps(_mm256_mul_ps(vj, vj), one, sx2[j % 8]);
        }
        let w = Whole8 {
            n: _mm256_set1_ps(g as f32),
            x: tree8(&sx),
            x2: tree8(&sx2),
        };

        // Round-to-nearest's fit (`fit_from_range`), lane by lane.
        let (lo, hi) = (_mm256_add_ps(lo, z), _mm256_add_ps(hi, z)); // −0 → +0
        let neg_lo = _mm256_xor_ps(lo, _mm256_set1_ps(-0.0));
        let (scale, min) = match scheme {
            Scheme::Int8Sym => (
                _mm256_div_ps(_mm256_max_ps(hi, neg_lo), _mm256_set1_ps(127.0)),
                z,
            ),
            Scheme::Int4Sym => {
                let m = _mm256_blendv_ps(lo, hi, _mm256_cmp_ps::<_CMP_GE_OQ>(hi, neg_lo));
                (_mm256_div_ps(m, _mm256_set1_ps(-8.0)), z)
            }
            _ => (_mm256_div_ps(_mm256_sub_ps(hi, lo), _mm256_set1_ps(l)), lo),
        };

        // The candidates' inverse scales (`candidate_invs`), lane by lane.
        let extent = _mm256_mul_ps(scale, _mm256_set1_ps(l));
        let mut invs = [z; CANDIDATES + 1];
        invs[0] = _mm256_div_ps(_mm256_set1_ps(1.0), scale);
        for (i, inv) in invs[1..].iter_mut().enumerate() {
            *inv = _mm256_div_ps(_mm256_set1_ps(candidate_steps(l, i)), extent);
        }
        for (tj, &vj) in t.iter_mut().zip(v.iter()) {
            *tj = _mm256_sub_ps(vj, min);
        }
        let (qlo, qhi) = code_range(scheme);
        let (vlo, vhi) = (_mm256_set1_ps(qlo), _mm256_set1_ps(qhi));

        // Round-to-nearest's own codes first, then each candidate in order: taken when
        // it fits and scores strictly lower than the best so far.
        let mut best = (scale, min, z, z, z);
        let mut best_err = z;
        for pair in 0..N / 2 {
            let (ia, ib) = (invs[2 * pair], invs[2 * pair + 1]);
            // Asymmetric schemes: t = x − min ≥ 0 (or −0) and every inverse scale is ≥ 0
            // (or +∞), so the codes are ≥ 0, −0 or NaN, which the lower clamp returns
            // unchanged (its max gives the second operand on equality and on NaN): skipped.
            let [a, b] = match (g, sym) {
                (32, true) => sums8_pair::<4, true>(v, t, ia, ib, vlo, vhi, one),
                (64, true) => sums8_pair::<8, true>(v, t, ia, ib, vlo, vhi, one),
                (_, true) => sums8_pair::<0, true>(v, t, ia, ib, vlo, vhi, one),
                (32, false) => sums8_pair::<4, false>(v, t, ia, ib, vlo, vhi, one),
                (64, false) => sums8_pair::<8, false>(v, t, ia, ib, vlo, vhi, one),
                (_, false) => sums8_pair::<0, false>(v, t, ia, ib, vlo, vhi, one),
            };
            if pair == 0 {
                best_err = err8(scale, min, a.0, a.1, a.2, &w);
                best = (scale, min, a.0, a.1, a.2);
            }
            let mut consider = |c: (__m256, __m256, __m256)| {
                let (ok, s, m, e) = fits8(c.0, c.1, c.2, &w, sym, nonpositive_min);
                let take = _mm256_and_ps(ok, _mm256_cmp_ps::<_CMP_LT_OQ>(e, best_err));
                best_err = _mm256_blendv_ps(best_err, e, take);
                best = (
                    _mm256_blendv_ps(best.0, s, take),
                    _mm256_blendv_ps(best.1, m, take),
                    _mm256_blendv_ps(best.2, c.0, take),
                    _mm256_blendv_ps(best.3, c.1, take),
                    _mm256_blendv_ps(best.4, c.2, take),
                );
            };
            if pair > 0 {
                consider(a);
            }
            consider(b);
        }
        // A zero scale: round-to-nearest's fit and the sums of x alone.
        let zero = _mm256_cmp_ps::<_CMP_EQ_OQ>(scale, z);
        let keep = |v: __m256, with: __m256| _mm256_blendv_ps(v, with, zero);
        let lanes = |v: __m256| {
            let mut o = [0.0f32; 8];
            _mm256_storeu_ps(o.as_mut_ptr(), v);
            o
        };
        let (fs, fm) = (lanes(keep(best.0, scale)), lanes(keep(best.1, min)));
        let (q, q2, xq) = (
            lanes(_mm256_andnot_ps(zero, best.2)),
            lanes(_mm256_andnot_ps(zero, best.3)),
            lanes(_mm256_andnot_ps(zero, best.4)),
        );
        let (wx, wx2) = (lanes(w.x), lanes(w.x2));
        for (k, o) in out.iter_mut().take(8).enumerate() {
            *o = SearchFit {
                fit: Fit {
                    scale: fs[k],
                    min: fm[k],
                },
                sums: Sums {
                    n: g as f32,
                    x: wx[k],
                    x2: wx2[k],
                    q: q[k],
                    q2: q2[k],
                    xq: xq[k],
                },
            };
        }
    }
}

/// The end of [`crate::search::fit_search`] (`search_candidates`), bit for bit: the
/// twelve inverse scales' code sums, fits and errors eight lanes at a time, then the
/// specification's choice (the first lowest error below round-to-nearest's).
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn candidates(
    scheme: Scheme,
    x: &[f32],
    rtn: &Fit,
    whole: &Sums,
    nonpositive_min: bool,
) -> SearchFit {
    const N: usize = CANDIDATES + 1;
    const _: () = assert!(N == 12, "the lanes below hold 8 + 4 candidates");
    let sym = scheme.symmetric();
    let invs = candidate_invs(scheme, rtn);
    // SAFETY: the CPU features are ours; `g` is used while `x` is alive; stores write
    // 8 lanes at offsets 0 and 8 of 16-element arrays.
    unsafe {
        let g = Prepared::new(scheme, x, rtn.min);
        // Two inverse scales: hadd of their lanes, [a01, a23, b01, b23 | a45, a67, b45, b67].
        let pair = |j: usize| {
            let [(aq, aq2, axq), (bq, bq2, bxq)] = g.lanes2(invs[j], invs[j + 1]);
            (
                _mm256_hadd_ps(aq, bq),
                _mm256_hadd_ps(aq2, bq2),
                _mm256_hadd_ps(axq, bxq),
            )
        };
        // Four: [a0123, b0123, c0123, d0123 | a4567, b4567, c4567, d4567].
        let quad = |j: usize| {
            let (p, r) = (pair(j), pair(j + 2));
            (
                _mm256_hadd_ps(p.0, r.0),
                _mm256_hadd_ps(p.1, r.1),
                _mm256_hadd_ps(p.2, r.2),
            )
        };
        // Eight: lane i = ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)) of inverse scale j + i.
        let eight = |a: __m256, b: __m256| {
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            )
        };
        let (a, b) = (quad(0), quad(4));
        let lo = (eight(a.0, b.0), eight(a.1, b.1), eight(a.2, b.2));
        let c = quad(8);
        // The last four in lanes 0..4 (lanes 4..8 repeat them and are not candidates).
        let four = |v: __m256| _mm256_add_ps(v, _mm256_permute2f128_ps::<0x01>(v, v));
        let hi = (four(c.0), four(c.1), four(c.2));

        let w = Whole8::splat(whole);
        let (ok_lo, s_lo, m_lo, e_lo) = fits8(lo.0, lo.1, lo.2, &w, sym, nonpositive_min);
        let (ok_hi, s_hi, m_hi, e_hi) = fits8(hi.0, hi.1, hi.2, &w, sym, nonpositive_min);

        let mut q = [0.0f32; 16];
        let mut q2 = [0.0f32; 16];
        let mut xq = [0.0f32; 16];
        _mm256_storeu_ps(q.as_mut_ptr(), lo.0);
        _mm256_storeu_ps(q.as_mut_ptr().add(8), hi.0);
        _mm256_storeu_ps(q2.as_mut_ptr(), lo.1);
        _mm256_storeu_ps(q2.as_mut_ptr().add(8), hi.1);
        _mm256_storeu_ps(xq.as_mut_ptr(), lo.2);
        _mm256_storeu_ps(xq.as_mut_ptr().add(8), hi.2);
        let sums = |i: usize| Sums {
            q: q[i],
            q2: q2[i],
            xq: xq[i],
            ..*whole
        };
        let err0 = sums(0).err(rtn.scale, rtn.min);

        // The choice: candidates 1..12 that fit and score below round-to-nearest
        // (`e < err0` is false for a NaN on either side), the lowest error, the first
        // of equals (as a strict `<` in order keeps). Others become +∞, which no
        // taken candidate has (it is below err0).
        let e0 = _mm256_set1_ps(err0);
        let inf = _mm256_set1_ps(f32::INFINITY);
        let take_lo = _mm256_and_ps(
            _mm256_and_ps(ok_lo, _mm256_cmp_ps::<_CMP_LT_OQ>(e_lo, e0)),
            _mm256_castsi256_ps(_mm256_setr_epi32(0, -1, -1, -1, -1, -1, -1, -1)),
        );
        let take_hi = _mm256_and_ps(
            _mm256_and_ps(ok_hi, _mm256_cmp_ps::<_CMP_LT_OQ>(e_hi, e0)),
            _mm256_castsi256_ps(_mm256_setr_epi32(-1, -1, -1, -1, 0, 0, 0, 0)),
        );
        let c_lo = _mm256_blendv_ps(inf, e_lo, take_lo);
        let c_hi = _mm256_blendv_ps(inf, e_hi, take_hi);
        let low = hmin(_mm256_min_ps(c_lo, c_hi));
        let best = if low == f32::INFINITY {
            0
        } else {
            let at = _mm256_set1_ps(low);
            let bits = (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(c_lo, at)) as u32)
                | (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(c_hi, at)) as u32) << 8;
            bits.trailing_zeros() as usize
        };
        if best == 0 {
            return SearchFit {
                fit: *rtn,
                sums: sums(0),
            };
        }
        let mut s = [0.0f32; 16];
        let mut m = [0.0f32; 16];
        _mm256_storeu_ps(s.as_mut_ptr(), s_lo);
        _mm256_storeu_ps(s.as_mut_ptr().add(8), s_hi);
        _mm256_storeu_ps(m.as_mut_ptr(), m_lo);
        _mm256_storeu_ps(m.as_mut_ptr().add(8), m_hi);
        SearchFit {
            fit: Fit {
                scale: s[best],
                min: m[best],
            },
            sums: sums(best),
        }
    }
}

/// Writes `src` as f32 into `dst` with NaN/±Inf read as 0; whether all were finite.
///
/// # Safety
/// AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn convert<T: Load8>(src: &[T], dst: &mut [f32]) -> bool {
    let n = src.len().min(dst.len());
    let body = n & !7;
    let mut finite = true;
    // SAFETY: loads read src[..body], stores write dst[..body].
    unsafe {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let inf = _mm256_set1_ps(f32::INFINITY);
        let mut all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i < body {
            let v = T::load8(ps.add(i));
            let fin = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, abs), inf);
            _mm256_storeu_ps(pd.add(i), _mm256_and_ps(v, fin));
            all = _mm256_and_ps(all, fin);
            i += 8;
        }
        finite &= _mm256_movemask_ps(all) == 0xFF;
    }
    for (d, v) in dst[body..n].iter_mut().zip(&src[body..n]) {
        let x = v.to_f32();
        finite &= x.is_finite();
        *d = finite_or_zero(x);
    }
    finite
}

/// The sum of four f64 lanes.
///
/// # Safety
/// AVX.
#[inline(always)]
unsafe fn sum4(d: __m256d) -> f64 {
    // SAFETY: register-only operations.
    unsafe {
        let s = _mm_add_pd(_mm256_castpd256_pd128(d), _mm256_extractf128_pd::<1>(d));
        _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
    }
}

/// Error statistics kept in registers across groups: Σe² and Σx² in f64 (each f32
/// squared exactly, as the specification does), max |e| in f32.
struct Stats {
    e2: [__m256d; 2],
    x2: [__m256d; 2],
    emax: __m256,
}

impl Stats {
    /// # Safety
    /// AVX.
    #[inline(always)]
    unsafe fn new() -> Stats {
        // SAFETY: register-only operations.
        unsafe {
            let z = _mm256_setzero_pd();
            Stats {
                e2: [z; 2],
                x2: [z; 2],
                emax: _mm256_setzero_ps(),
            }
        }
    }

    /// Adds the kept sums to `stats` and starts again from 0.
    ///
    /// # Safety
    /// AVX.
    #[inline(always)]
    unsafe fn flush(&mut self, stats: &mut ErrorStats) {
        // SAFETY: register-only operations.
        unsafe {
            stats.sum_sq_err += sum4(_mm256_add_pd(self.e2[0], self.e2[1]));
            stats.sum_sq += sum4(_mm256_add_pd(self.x2[0], self.x2[1]));
            stats.max_abs_err = stats.max_abs_err.max(hmax(self.emax));
            *self = Stats::new();
        }
    }

    /// Adds lane sums of squared errors and of squares (f32, finite) and the lanes'
    /// largest error magnitudes.
    ///
    /// # Safety
    /// AVX.
    #[inline(always)]
    unsafe fn add_sums(&mut self, e2: __m256, x2: __m256, emax: __m256) {
        // SAFETY: register-only operations.
        unsafe {
            let e_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(e2));
            let e_hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e2));
            let x_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x2));
            let x_hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x2));
            self.e2[0] = _mm256_add_pd(self.e2[0], e_lo);
            self.e2[1] = _mm256_add_pd(self.e2[1], e_hi);
            self.x2[0] = _mm256_add_pd(self.x2[0], x_lo);
            self.x2[1] = _mm256_add_pd(self.x2[1], x_hi);
            self.emax = _mm256_max_ps(emax, self.emax);
        }
    }

    /// Adds the squares of `e` and `x` and the magnitudes of `e`.
    ///
    /// # Safety
    /// AVX2 and FMA.
    #[inline(always)]
    unsafe fn add(&mut self, e: __m256, x: __m256) {
        // SAFETY: register-only operations.
        unsafe {
            let el = _mm256_cvtps_pd(_mm256_castps256_ps128(e));
            let eh = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e));
            let xl = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
            let xh = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x));
            self.e2[0] = _mm256_fmadd_pd(el, el, self.e2[0]);
            self.e2[1] = _mm256_fmadd_pd(eh, eh, self.e2[1]);
            self.x2[0] = _mm256_fmadd_pd(xl, xl, self.x2[0]);
            self.x2[1] = _mm256_fmadd_pd(xh, xh, self.x2[1]);
            let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
            // max returns its second operand when either is NaN: a NaN error (a decoded
            // value of ∞ − ∞) is skipped, as `f32::max` does in the specification.
            self.emax = _mm256_max_ps(_mm256_and_ps(e, abs), self.emax);
        }
    }
}

/// Codes and error statistics of a group of finite values (the specification's
/// `quantize_span`, the statistics kept in `acc` until [`Stats::flush`]).
///
/// # Safety
/// AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn quantize(
    scheme: Scheme,
    p: &GroupParams,
    x: &[f32],
    start: usize,
    codes: &mut [u8],
    stats: &mut ErrorStats,
    acc: &mut Stats,
) {
    // 4-bit codes of a group at an odd position: the first shares a byte with the
    // previous group, so it goes alone and the rest start on a byte.
    let lead = (scheme.bits() == 4 && start % 2 == 1 && !x.is_empty()) as usize;
    if lead == 1 {
        quantize_span(scheme, p, &x[..1], start, 0, codes, stats);
    }
    let (x, start) = (&x[lead..], start + lead);
    let body = x.len() & !7;
    // SAFETY: `body ≤ x.len()`, a multiple of 8, and `start` is even for 4-bit codes.
    unsafe {
        match scheme {
            Scheme::Int8Sym => code_body::<SYM8>(p, x, body, codes, start, acc),
            Scheme::Int8Asym => code_body::<ASYM8>(p, x, body, codes, start, acc),
            Scheme::Int4Sym => code_body::<SYM4>(p, x, body, codes, start, acc),
            Scheme::Int4Asym => code_body::<ASYM4>(p, x, body, codes, start, acc),
        }
    }
    if body < x.len() {
        quantize_span(scheme, p, x, start, body, codes, stats);
    }
}

/// A group's parameters in every lane, for [`quant8`].
struct Quant {
    inv: __m256,
    scale: __m256,
    min: __m256,
    lo: __m256,
    hi: __m256,
}

/// The codes of eight values (as the stored byte values, in i32 lanes) and their
/// errors `x − x̂`, with the specification's operations: multiply by the inverse scale
/// (after subtracting the min), round to nearest even, clamp; decode with a multiply
/// then an add.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn quant8<const S: u8>(k: &Quant, v: __m256) -> (__m256, __m256i) {
    let asym = S == ASYM8 || S == ASYM4;
    // SAFETY: register-only operations.
    unsafe {
        let t = if asym { _mm256_sub_ps(v, k.min) } else { v };
        let q = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(t, k.inv),
        );
        // A NaN (an infinite difference times a zero inverse) clamps to the low code,
        // which is 0 for asymmetric schemes, as the specification's `NaN as u8`;
        // symmetric schemes multiply finite values by a finite inverse: no NaN.
        let q = _mm256_min_ps(_mm256_max_ps(q, k.lo), k.hi);
        let xh = if asym {
            _mm256_add_ps(_mm256_mul_ps(q, k.scale), k.min)
        } else {
            _mm256_mul_ps(q, k.scale)
        };
        let c = if S == SYM4 {
            _mm256_add_ps(q, _mm256_set1_ps(8.0))
        } else {
            q
        };
        (_mm256_sub_ps(v, xh), _mm256_cvtps_epi32(c))
    }
}

/// Codes of `x[..body]` into the packed row `codes` (the group at row position `start`),
/// with the specification's operations: multiply by the inverse scale (after subtracting
/// the min), round to nearest even, clamp; decode with a multiply then an add.
///
/// # Safety
/// AVX2/FMA/F16C; `body ≤ x.len()`, a multiple of 8; `start` even for 4-bit codes.
#[inline(always)]
unsafe fn code_body<const S: u8>(
    p: &GroupParams,
    x: &[f32],
    body: usize,
    codes: &mut [u8],
    start: usize,
    acc: &mut Stats,
) {
    let asym = S == ASYM8 || S == ASYM4;
    let four = S == SYM4 || S == ASYM4;
    let (qlo, qhi) = match S {
        SYM8 => (-127.0, 127.0),
        SYM4 => (-8.0, 7.0),
        ASYM8 => (0.0, 255.0),
        _ => (0.0, 15.0),
    };
    assert!(body <= x.len() && (!four || start.is_multiple_of(2)));
    assert!(start + body <= if four { codes.len() * 2 } else { codes.len() });
    // SAFETY: loads stay below `body`; stores write bytes start..start+body (8-bit) or
    // start/2..(start+body)/2 (4-bit, `start` even), inside `codes` by the assertions.
    unsafe {
        let inv = _mm256_set1_ps(p.inv);
        let scale = _mm256_set1_ps(p.scale);
        let min = _mm256_set1_ps(p.min);
        let (vlo, vhi) = (_mm256_set1_ps(qlo), _mm256_set1_ps(qhi));
        let pairs = _mm_set1_epi16(0x1001); // byte weights 1, 16: c[2i] + 16·c[2i+1]
        let src = x.as_ptr();
        let dst = codes.as_mut_ptr();
        // The group's own sums in f32 (each lane at most a few dozen squares, far more
        // precise than the statistics need), added to `acc` in f64 at the end; if they
        // overflow (or are NaN), the group's sums are taken again in f64.
        let (mut e2, mut x2, mut emax) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let k = Quant {
            inv,
            scale,
            min,
            lo: vlo,
            hi: vhi,
        };
        let mut i = 0;
        // Sixteen elements a step: one store of 16 bytes (8 at 4 bits).
        while i + 16 <= body {
            let (v0, v1) = (_mm256_loadu_ps(src.add(i)), _mm256_loadu_ps(src.add(i + 8)));
            let (e0, c0) = quant8::<S>(&k, v0);
            let (e1, c1) = quant8::<S>(&k, v1);
            e2 = _mm256_fmadd_ps(e0, e0, e2);
            x2 = _mm256_fmadd_ps(v0, v0, x2);
            e2 = _mm256_fmadd_ps(e1, e1, e2);
            x2 = _mm256_fmadd_ps(v1, v1, x2);
            // A NaN error (∞ − ∞ decoded) is skipped, as `f32::max` does.
            emax = _mm256_max_ps(_mm256_and_ps(e0, abs), emax);
            emax = _mm256_max_ps(_mm256_and_ps(e1, abs), emax);
            let w = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(c0, c1));
            let (wl, wh) = (_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
            match S {
                SYM8 => {
                    _mm_storeu_si128(dst.add(start + i) as *mut __m128i, _mm_packs_epi16(wl, wh))
                }
                ASYM8 => {
                    _mm_storeu_si128(dst.add(start + i) as *mut __m128i, _mm_packus_epi16(wl, wh))
                }
                _ => {
                    let n = _mm_maddubs_epi16(_mm_packus_epi16(wl, wh), pairs);
                    _mm_storel_epi64(
                        dst.add((start + i) / 2) as *mut __m128i,
                        _mm_packus_epi16(n, n),
                    );
                }
            }
            i += 16;
        }
        while i < body {
            let v = _mm256_loadu_ps(src.add(i));
            let (e, c) = quant8::<S>(&k, v);
            e2 = _mm256_fmadd_ps(e, e, e2);
            x2 = _mm256_fmadd_ps(v, v, x2);
            emax = _mm256_max_ps(_mm256_and_ps(e, abs), emax);
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
        let inf = _mm256_set1_ps(f32::INFINITY);
        let finite = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_LT_OQ>(e2, inf),
            _mm256_cmp_ps::<_CMP_LT_OQ>(x2, inf),
        );
        if _mm256_movemask_ps(finite) == 0xFF {
            acc.add_sums(e2, x2, emax);
        } else {
            let mut i = 0;
            while i < body {
                let v = _mm256_loadu_ps(src.add(i));
                let t = if asym { _mm256_sub_ps(v, min) } else { v };
                let q = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_mul_ps(t, inv),
                );
                let q = _mm256_min_ps(_mm256_max_ps(q, vlo), vhi);
                let xh = if asym {
                    _mm256_add_ps(_mm256_mul_ps(q, scale), min)
                } else {
                    _mm256_mul_ps(q, scale)
                };
                acc.add(_mm256_sub_ps(v, xh), v);
                i += 8;
            }
        }
    }
}
