//! Error-minimising choice of each group's scale and min (`--optimize
//! search`): the same packed format and decoders as round-to-nearest (RTN),
//! only the stored parameters differ. Calibration-free: weights only.
//!
//! Per group of finite values `x` (NaN/±Inf read as 0), with `L` the largest
//! code step count (15 for int4-asym, 8 for int4, 255, 127):
//! 1. RTN fixes a base `b` (its min, or 0 when symmetric) and an extent
//!    `e = L·s₀` (its scale times `L`; signed for int4 so that the larger
//!    extreme maps to code −8).
//! 2. For the [`CANDIDATES`] inverse scales `invᵢ = (L − 1 + i/5) / e`,
//!    `i = 0..=10`, the codes `q = clamp(round((x − b)·invᵢ))` are refitted
//!    by least squares, `x ≈ s·q + m` (symmetric: `x ≈ s·q`), from the sums
//!    Σq, Σq², Σxq, Σx, Σx² ([`Sums::fit`]); each fit is scored by its squared
//!    error computed from the same sums ([`Sums::err`]).
//! 3. RTN's own parameters, scored the same way on RTN's codes, stand unless
//!    a candidate is strictly lower; the first lowest wins.
//!
//! Everything is f32 in a fixed order, so that SIMD kernels give the same
//! bits: a sum over a group adds element `j` to lane `j mod 8` in turn and
//! combines the lanes as `((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7))` ([`lane_sum`]);
//! the fit and the error are evaluated left to right as written.
//!
//! Version-1 files store the fit rounded to the scale dtype
//! ([`quantize_rows`]); with double quantization the fit goes through
//! [`crate::dq`].
//!
//! The row drivers here and in [`crate::dq`] are written once, over a
//! crate-private `Passes` trait that holds the per-element passes (and a few
//! per-group steps that the SIMD kernels do eight groups at a time): its
//! scalar implementation is this module's functions, the specification; the
//! AVX2 one (`arch`) returns the same bits, error statistics aside (equal up
//! to summation order). [`crate::quantize_rows_by`] picks one by [`Isa`];
//! [`code_sums_on`], [`sums_of_on`], [`fit_search_on`] and
//! [`fit_search_groups_on`] expose the passes for tests. [`Isa::Avx512`] runs the
//! AVX2 implementation of all of them (every AVX-512 CPU has AVX2).

use crate::scalar::{
    check_sizes, count_nonfinite, finite_or_zero, group_range, params_from_range_with,
    params_from_scale_min_with, put_params, quantize_span, Element, F16Convert, GroupParams,
    SoftF16,
};
use crate::{ErrorStats, Isa, QuantFormat, RowsOut, Scheme};

/// Lanes of the summation order every kernel follows (one AVX2 register of f32).
pub const LANES: usize = 8;

/// Groups the row drivers take a step at a time.
pub(crate) const BATCH: usize = 8;

/// Candidate inverse scales per group (besides round-to-nearest's own).
pub const CANDIDATES: usize = 11;

/// The numerator of candidate `i`'s inverse scale: `L − 1 + i/5`, in f32.
#[inline(always)]
pub fn candidate_steps(levels: f32, i: usize) -> f32 {
    (levels - 1.0) + i as f32 * 0.2
}

/// Sums `terms` in the kernels' order: term `j` is added to lane `j % 8` in
/// turn, then the lanes are combined as `((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7))`.
#[inline(always)]
pub fn lane_sum(terms: impl Iterator<Item = f32>) -> f32 {
    let mut l = [0.0f32; LANES];
    for (j, t) in terms.enumerate() {
        l[j % LANES] += t;
    }
    combine_lanes(&l)
}

/// The lane combination of [`lane_sum`].
#[inline(always)]
pub fn combine_lanes(l: &[f32; LANES]) -> f32 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// The step count `L` of a scheme: codes span `L` steps of the scale from the base.
pub fn levels(scheme: Scheme) -> f32 {
    match scheme {
        Scheme::Int8Sym => 127.0,
        Scheme::Int8Asym => 255.0,
        Scheme::Int4Sym => 8.0,
        Scheme::Int4Asym => 15.0,
    }
}

/// The code range of a scheme's elements (signed for symmetric schemes), as f32.
pub fn code_range(scheme: Scheme) -> (f32, f32) {
    match scheme {
        Scheme::Int8Sym => (-127.0, 127.0),
        Scheme::Int4Sym => (-8.0, 7.0),
        Scheme::Int8Asym => (0.0, 255.0),
        Scheme::Int4Asym => (0.0, 15.0),
    }
}

/// A group's real-valued scale and min (before rounding to a stored form).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    /// Scale (int4: signed, so that the larger extreme maps to code −8).
    pub scale: f32,
    /// Min (0 for symmetric schemes).
    pub min: f32,
}

/// Round-to-nearest's real-valued parameters of a group of finite values.
/// With `nonpositive_min` the range is widened to include 0 (double
/// quantization stores mins as `−code·factor`).
pub fn fit_rtn(scheme: Scheme, x: &[f32], nonpositive_min: bool) -> Fit {
    let (lo, hi) = rtn_range(x, nonpositive_min);
    fit_from_range(scheme, lo, hi)
}

/// The range [`fit_rtn`] fits: the smallest and largest of `x`, and 0 with
/// `nonpositive_min` or when `x` is empty (either sign of zero may come out).
pub fn rtn_range(x: &[f32], nonpositive_min: bool) -> (f32, f32) {
    let start = if nonpositive_min || x.is_empty() {
        (0.0f32, 0.0f32)
    } else {
        (f32::INFINITY, f32::NEG_INFINITY)
    };
    x.iter().fold(start, |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Round-to-nearest's parameters from the range of [`rtn_range`].
#[inline(always)]
pub fn fit_from_range(scheme: Scheme, lo: f32, hi: f32) -> Fit {
    // −0 and +0 compare equal, so the reductions may return either: make zeros +0.
    let (lo, hi) = (lo + 0.0, hi + 0.0);
    match scheme {
        Scheme::Int8Sym => Fit {
            scale: hi.max(-lo) / 127.0,
            min: 0.0,
        },
        Scheme::Int4Sym => Fit {
            scale: if hi >= -lo { hi } else { lo } / -8.0,
            min: 0.0,
        },
        _ => Fit {
            scale: (hi - lo) / levels(scheme),
            min: lo,
        },
    }
}

/// A group's sums for least-squares fits `x ≈ s·q + m` of codes `q`, in f32
/// and in the order of [`lane_sum`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sums {
    /// Elements.
    pub n: f32,
    /// Σx.
    pub x: f32,
    /// Σx².
    pub x2: f32,
    /// Σq.
    pub q: f32,
    /// Σq².
    pub q2: f32,
    /// Σx·q.
    pub xq: f32,
}

impl Sums {
    /// The sums of `x` alone (Σq, Σq², Σxq left 0).
    pub fn of(x: &[f32]) -> Sums {
        Sums {
            n: x.len() as f32,
            x: lane_sum(x.iter().copied()),
            x2: lane_sum(x.iter().map(|&v| v * v)),
            ..Sums::default()
        }
    }

    /// Squared error of `x ≈ s·q + m` from the sums, evaluated left to right
    /// in f32: `Σx² − 2s·Σxq − 2m·Σx + s²·Σq² + 2sm·Σq + n·m²`.
    #[inline(always)]
    pub fn err(&self, s: f32, m: f32) -> f32 {
        let t = self.x2 - 2.0 * s * self.xq;
        let t = t - 2.0 * m * self.x;
        let t = t + s * s * self.q2;
        let t = t + 2.0 * s * m * self.q;
        t + self.n * m * m
    }

    /// The least-squares scale and min of these codes, or `None` when the
    /// codes do not determine a usable one. Symmetric: the min is 0. With
    /// `nonpositive_min`, a positive min is replaced by 0 and the scale refitted.
    #[inline(always)]
    pub fn fit(&self, sym: bool, nonpositive_min: bool) -> Option<(f32, f32)> {
        let scale_only = || (self.q2 > 0.0).then(|| (self.xq / self.q2, 0.0));
        let (s, m) = if sym {
            scale_only()?
        } else {
            let d = self.n * self.q2 - self.q * self.q;
            if d <= 0.0 {
                return None;
            }
            let s = (self.n * self.xq - self.q * self.x) / d;
            let m = (self.q2 * self.x - self.q * self.xq) / d;
            if nonpositive_min && m > 0.0 {
                scale_only()?
            } else {
                (s, m)
            }
        };
        (s.is_finite() && m.is_finite() && s != 0.0 && (sym || s > 0.0)).then_some((s, m))
    }
}

/// Adds to `whole` (the sums of `x` alone) the code sums of `x` under each
/// inverse scale of `invs`, codes `clamp(round((x − base)·inv))`, into `out`.
///
/// This is the hot loop of the search: every ISA must give the same bits.
pub fn code_sums(
    scheme: Scheme,
    x: &[f32],
    base: f32,
    invs: &[f32],
    whole: &Sums,
    out: &mut [Sums],
) {
    let (qlo, qhi) = code_range(scheme);
    for (o, &inv) in out.iter_mut().zip(invs) {
        let (mut q, mut q2, mut xq) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
        for (j, &v) in x.iter().enumerate() {
            let c = ((v - base) * inv).round_ties_even().clamp(qlo, qhi);
            let l = j % LANES;
            q[l] += c;
            q2[l] += c * c;
            xq[l] += v * c;
        }
        *o = Sums {
            q: combine_lanes(&q),
            q2: combine_lanes(&q2),
            xq: combine_lanes(&xq),
            ..*whole
        };
    }
}

/// A group's fit with the sums of the codes it was fitted to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchFit {
    /// Scale and min.
    pub fit: Fit,
    /// Sums of the winning candidate's codes (round-to-nearest's when it stands).
    pub sums: Sums,
}

/// The error-minimising fit of a group of finite values (module documentation).
pub fn fit_search(scheme: Scheme, x: &[f32], nonpositive_min: bool) -> SearchFit {
    fit_search_with(&mut Scalar, scheme, x, nonpositive_min)
}

/// [`fit_search`] with the per-element passes of `p` (identical results).
#[inline(always)]
pub(crate) fn fit_search_with<P: Passes>(
    p: &mut P,
    scheme: Scheme,
    x: &[f32],
    nonpositive_min: bool,
) -> SearchFit {
    let (lo, hi, whole) = p.range_and_sums(x, nonpositive_min);
    let rtn = fit_from_range(scheme, lo, hi);
    if rtn.scale == 0.0 {
        return SearchFit {
            fit: rtn,
            sums: whole,
        };
    }
    p.candidates(scheme, x, &rtn, &whole, nonpositive_min)
}

/// The candidate inverse scales of a group with round-to-nearest's fit `rtn`
/// (scale ≠ 0): `1 / scale`, then [`CANDIDATES`] from [`candidate_steps`].
#[inline(always)]
pub fn candidate_invs(scheme: Scheme, rtn: &Fit) -> [f32; CANDIDATES + 1] {
    let l = levels(scheme);
    let extent = rtn.scale * l;
    let mut invs = [0.0f32; CANDIDATES + 1];
    invs[0] = 1.0 / rtn.scale;
    for (i, inv) in invs[1..].iter_mut().enumerate() {
        *inv = candidate_steps(l, i) / extent;
    }
    invs
}

/// The end of [`fit_search`] once round-to-nearest's fit `rtn` (scale ≠ 0) and the
/// sums of `x` are known: the candidates' code sums, fits and errors, and the choice.
#[inline(always)]
fn search_candidates(
    scheme: Scheme,
    x: &[f32],
    rtn: &Fit,
    whole: &Sums,
    nonpositive_min: bool,
) -> SearchFit {
    let sym = scheme.symmetric();
    let invs = candidate_invs(scheme, rtn);
    let mut sums = [Sums::default(); CANDIDATES + 1];
    code_sums(scheme, x, rtn.min, &invs, whole, &mut sums);
    let mut best = SearchFit {
        fit: *rtn,
        sums: sums[0],
    };
    let mut best_err = sums[0].err(rtn.scale, rtn.min);
    for s in &sums[1..] {
        if let Some((scale, min)) = s.fit(sym, nonpositive_min) {
            let e = s.err(scale, min);
            if e < best_err {
                best_err = e;
                best = SearchFit {
                    fit: Fit { scale, min },
                    sums: *s,
                };
            }
        }
    }
    best
}

/// The parameters stored for a group of finite values in a version-1 file:
/// the fit of [`fit_search`] rounded to nearest in the scale dtype, then one
/// refinement: the codes rounded again with them are refitted, and the refit
/// (rounded) replaces them when it scores lower on those codes. A constant or
/// empty group gets round-to-nearest's exact parameters.
pub fn stored_fit(fmt: &QuantFormat, x: &[f32]) -> GroupParams {
    stored_fit_with(&mut Scalar, fmt, x)
}

/// [`stored_fit`] with the per-element passes of `p` (identical results).
#[inline(always)]
pub(crate) fn stored_fit_with<P: Passes>(p: &mut P, fmt: &QuantFormat, x: &[f32]) -> GroupParams {
    let found = fit_search_with(p, fmt.scheme, x, false);
    stored_from_search(p, fmt, x, &found)
}

/// The end of [`stored_fit`], from the group's [`fit_search`].
#[inline(always)]
fn stored_from_search<P: Passes>(
    p: &mut P,
    fmt: &QuantFormat,
    x: &[f32],
    found: &SearchFit,
) -> GroupParams {
    let q = match stored_first::<P::F16>(fmt, x, found) {
        Ok(q) => q,
        Err(done) => return done,
    };
    let mut s2 = [Sums::default()];
    p.code_sums(fmt.scheme, x, q.min, &[q.inv], &found.sums, &mut s2);
    stored_refined::<P::F16>(fmt, &q, &s2[0])
}

/// Parameters not yet chosen (array initialisers).
pub(crate) const UNSET: GroupParams = GroupParams {
    scale: 0.0,
    min: 0.0,
    inv: 0.0,
    overflowed: false,
    zeroed: false,
    scale_bits: 0,
    min_bits: 0,
};

/// [`stored_from_search`] of consecutive groups (`x` cut into groups of `fmt.group`,
/// at most [`BATCH`]), a step at a time: their parameters into `out`.
#[inline(always)]
pub(crate) fn stored_batch<P: Passes>(
    p: &mut P,
    fmt: &QuantFormat,
    x: &[f32],
    found: &[SearchFit],
    out: &mut [GroupParams],
) {
    let n = out.len().min(found.len()).min(BATCH);
    let mut first = [Err(UNSET); BATCH];
    let (mut bases, mut invs) = ([0.0f32; BATCH], [0.0f32; BATCH]);
    let mut wholes = [Sums::default(); BATCH];
    for (j, group) in x.chunks(fmt.group).take(n).enumerate() {
        first[j] = stored_first::<P::F16>(fmt, group, &found[j]);
        if let Ok(q) = first[j] {
            (bases[j], invs[j]) = (q.min, q.inv);
        }
        wholes[j] = found[j].sums;
    }
    let mut s2 = [Sums::default(); BATCH];
    let (b, i, w) = (&bases[..n], &invs[..n], &wholes[..n]);
    p.code_sums_groups(fmt.scheme, x, fmt.group, b, i, w, &mut s2[..n]);
    for j in 0..n {
        out[j] = match first[j] {
            Ok(q) => stored_refined::<P::F16>(fmt, &q, &s2[j]),
            Err(done) => done,
        };
    }
}

/// The first step of [`stored_from_search`]: the search's fit rounded to the scale
/// dtype (`Ok`), or the final parameters of a group whose fit has a zero scale (`Err`).
#[inline(always)]
fn stored_first<C: F16Convert>(
    fmt: &QuantFormat,
    x: &[f32],
    found: &SearchFit,
) -> Result<GroupParams, GroupParams> {
    let (scheme, dt) = (fmt.scheme, fmt.scale_dtype);
    let f = found.fit;
    if f.scale == 0.0 {
        let (lo, hi) = group_range(x);
        return Err(params_from_range_with::<C>(scheme, dt, lo, hi));
    }
    Ok(params_from_scale_min_with::<C>(scheme, dt, f.scale, f.min))
}

/// The last step of [`stored_from_search`]: with `s2` the sums of the codes rounded
/// again with `q`, their refit (rounded) when it scores lower on them, else `q`.
#[inline(always)]
fn stored_refined<C: F16Convert>(fmt: &QuantFormat, q: &GroupParams, s2: &Sums) -> GroupParams {
    let (scheme, dt) = (fmt.scheme, fmt.scale_dtype);
    let refit = s2
        .fit(scheme.symmetric(), false)
        .map(|(scale, min)| params_from_scale_min_with::<C>(scheme, dt, scale, min))
        .filter(|r| !r.overflowed && !r.zeroed && r.scale != 0.0);
    match refit {
        Some(r) if s2.err(r.scale, r.min) < s2.err(q.scale, q.min) => r,
        _ => *q,
    }
}

/// The per-element passes of the search and of double quantization, and the
/// steps of a few groups at a time that SIMD kernels do with one group per lane,
/// one implementation per instruction set. [`Scalar`] and the default methods
/// (this module's and [`crate::dq`]'s functions) are the specification; every
/// other implementation returns the same bits (the error statistics of
/// [`Passes::quantize`] up to summation order).
pub(crate) trait Passes {
    /// How f32 values are rounded to F16 (the same results either way).
    type F16: F16Convert;
    /// [`rtn_range`] (up to the sign of zeros).
    fn range(&mut self, x: &[f32], nonpositive_min: bool) -> (f32, f32);
    /// [`rtn_range`] (up to the sign of zeros) and [`Sums::of`].
    fn range_and_sums(&mut self, x: &[f32], nonpositive_min: bool) -> (f32, f32, Sums);
    /// [`fit_search`] of consecutive groups: `x` cut into groups of `g` elements
    /// (the last may be shorter), one fit per group into `out`.
    #[inline(always)]
    fn fit_search_groups(
        &mut self,
        scheme: Scheme,
        x: &[f32],
        g: usize,
        nonpositive_min: bool,
        out: &mut [SearchFit],
    ) where
        Self: Sized,
    {
        for (o, group) in out.iter_mut().zip(x.chunks(g)) {
            *o = fit_search_with(self, scheme, group, nonpositive_min);
        }
    }
    /// The version-1 parameters of consecutive groups from their fits
    /// ([`stored_batch`]: the end of [`stored_fit`] for each).
    #[inline(always)]
    fn stored_groups(
        &mut self,
        fmt: &QuantFormat,
        x: &[f32],
        found: &[SearchFit],
        out: &mut [GroupParams],
    ) where
        Self: Sized,
    {
        stored_batch(self, fmt, x, found, out)
    }
    /// [`code_sums`] of consecutive groups (cut as in [`Passes::fit_search_groups`])
    /// with one base and inverse scale each: `out[i]` from `wholes[i]`, `bases[i]`,
    /// `invs[i]`.
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
        for (i, (o, group)) in out.iter_mut().zip(x.chunks(g)).enumerate() {
            let o = std::slice::from_mut(o);
            self.code_sums(scheme, group, bases[i], &invs[i..i + 1], &wholes[i], o);
        }
    }
    /// Double quantization's scale and min codes of consecutive groups of a
    /// super-group ([`crate::dq::choose_codes`], which is the specification).
    #[inline(always)]
    fn choose_codes(
        &mut self,
        c: &crate::dq::Codes,
        scheme: Scheme,
        x: &[f32],
        g: usize,
        fits: &[SearchFit],
        out: &mut [(i32, i32)],
    ) where
        Self: Sized,
    {
        crate::dq::choose_codes(self, c, scheme, x, g, fits, out)
    }
    /// Double quantization's choice of scale and min codes near `c`
    /// ([`crate::dq::best_near`]).
    #[inline(always)]
    fn best_near(
        &mut self,
        sym: bool,
        range: (i32, i32),
        factors: (f32, f32),
        c: (i32, i32),
        sums: &Sums,
    ) -> (i32, i32) {
        crate::dq::best_near(sym, range, factors, c, sums)
    }
    /// The end of [`fit_search`]: [`search_candidates`].
    fn candidates(
        &mut self,
        scheme: Scheme,
        x: &[f32],
        rtn: &Fit,
        whole: &Sums,
        nonpositive_min: bool,
    ) -> SearchFit;
    /// [`code_sums`].
    fn code_sums(
        &mut self,
        scheme: Scheme,
        x: &[f32],
        base: f32,
        invs: &[f32],
        whole: &Sums,
        out: &mut [Sums],
    );
    /// The codes of a group of finite values `x` with parameters `p`, written at
    /// row position `start` of the packed row `codes`, and their error statistics
    /// (added to `stats`, or kept until [`Passes::finish`]).
    fn quantize(
        &mut self,
        scheme: Scheme,
        p: &GroupParams,
        x: &[f32],
        start: usize,
        codes: &mut [u8],
        stats: &mut ErrorStats,
    );
    /// Adds the statistics still kept to `stats`.
    fn finish(&mut self, stats: &mut ErrorStats);
}

/// Conversion of a row of `T` to f32 (one implementation per instruction set).
pub(crate) trait Convert<T> {
    /// Writes `src` as f32 into `dst` (same length) with NaN and ±Inf read as 0;
    /// returns whether every element was finite.
    fn convert(&mut self, src: &[T], dst: &mut [f32]) -> bool;
}

/// The scalar passes: the specification.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Scalar;

impl Passes for Scalar {
    type F16 = SoftF16;

    #[inline(always)]
    fn range(&mut self, x: &[f32], nonpositive_min: bool) -> (f32, f32) {
        rtn_range(x, nonpositive_min)
    }

    #[inline(always)]
    fn range_and_sums(&mut self, x: &[f32], nonpositive_min: bool) -> (f32, f32, Sums) {
        let (lo, hi) = rtn_range(x, nonpositive_min);
        (lo, hi, Sums::of(x))
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
        search_candidates(scheme, x, rtn, whole, nonpositive_min)
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
        code_sums(scheme, x, base, invs, whole, out)
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
        quantize_span(scheme, p, x, start, 0, codes, stats)
    }

    #[inline(always)]
    fn finish(&mut self, _stats: &mut ErrorStats) {}
}

impl<T: Element> Convert<T> for Scalar {
    #[inline(always)]
    fn convert(&mut self, src: &[T], dst: &mut [f32]) -> bool {
        let mut finite = true;
        for (d, v) in dst.iter_mut().zip(src) {
            let x = v.to_f32();
            finite &= x.is_finite();
            *d = finite_or_zero(x);
        }
        finite
    }
}

/// [`code_sums`] run by `isa` (the same bits on every one).
///
/// # Panics
/// If `isa` is not available on this CPU, or `out` is shorter than `invs`.
pub fn code_sums_on(
    isa: Isa,
    scheme: Scheme,
    x: &[f32],
    base: f32,
    invs: &[f32],
    whole: &Sums,
    out: &mut [Sums],
) {
    assert!(out.len() >= invs.len(), "one output per inverse scale");
    match isa {
        Isa::Scalar => code_sums(scheme, x, base, invs, whole, out),
        Isa::Avx2 | Isa::Avx512 => {
            assert!(isa.is_available(), "{isa} is not available on this CPU");
            crate::arch::avx2_code_sums(scheme, x, base, invs, whole, out)
        }
    }
}

/// [`fit_search`] run by `isa` (the same bits on every one).
///
/// # Panics
/// If `isa` is not available on this CPU.
pub fn fit_search_on(isa: Isa, scheme: Scheme, x: &[f32], nonpositive_min: bool) -> SearchFit {
    match isa {
        Isa::Scalar => fit_search(scheme, x, nonpositive_min),
        Isa::Avx2 | Isa::Avx512 => {
            assert!(isa.is_available(), "{isa} is not available on this CPU");
            crate::arch::avx2_fit_search(scheme, x, nonpositive_min)
        }
    }
}

/// [`fit_search`] of consecutive groups run by `isa` (the same bits on every one):
/// `x` cut into groups of `g` elements (the last may be shorter), one fit per group
/// into `out` (as many as fit).
///
/// # Panics
/// If `isa` is not available on this CPU, or `g == 0`.
pub fn fit_search_groups_on(
    isa: Isa,
    scheme: Scheme,
    x: &[f32],
    g: usize,
    nonpositive_min: bool,
    out: &mut [SearchFit],
) {
    assert!(g > 0, "group size must be at least 1");
    match isa {
        Isa::Scalar => Scalar.fit_search_groups(scheme, x, g, nonpositive_min, out),
        Isa::Avx2 | Isa::Avx512 => {
            assert!(isa.is_available(), "{isa} is not available on this CPU");
            crate::arch::avx2_fit_search_groups(scheme, x, g, nonpositive_min, out)
        }
    }
}

/// [`Sums::of`] run by `isa` (the same bits on every one).
///
/// # Panics
/// If `isa` is not available on this CPU.
pub fn sums_of_on(isa: Isa, x: &[f32]) -> Sums {
    match isa {
        Isa::Scalar => Sums::of(x),
        Isa::Avx2 | Isa::Avx512 => {
            assert!(isa.is_available(), "{isa} is not available on this CPU");
            crate::arch::avx2_sums_of(x)
        }
    }
}

/// Quantizes whole rows like [`crate::scalar::quantize_rows`], with each
/// group's scale and min from [`fit_search`] rounded to nearest in the scale
/// dtype (saturating and flagged like RTN's). Same contract and output format.
pub fn quantize_rows<T: Element>(
    fmt: &QuantFormat,
    k: usize,
    src: &[T],
    out: RowsOut<'_>,
) -> ErrorStats {
    quantize_rows_with(&mut Scalar, fmt, k, src, out)
}

/// [`quantize_rows`] with the per-element passes of `p` (identical results).
#[inline(always)]
pub(crate) fn quantize_rows_with<T: Element, P: Passes + Convert<T>>(
    p: &mut P,
    fmt: &QuantFormat,
    k: usize,
    src: &[T],
    mut out: RowsOut<'_>,
) -> ErrorStats {
    let mut stats = ErrorStats::default();
    let rows = check_sizes(fmt, k, src.len(), &out);
    let cb = fmt.code_bytes_per_row(k);
    let gpr = fmt.groups_per_row(k);
    let mut row = vec![0.0f32; if rows > 0 { k } else { 0 }];
    for r in 0..rows {
        let src_row = &src[r * k..(r + 1) * k];
        if !p.convert(src_row, &mut row) {
            count_nonfinite(src_row, r * k, &mut stats);
        }
        // A few groups at a time, each step for all of them (the same results as
        // group by group): independent work side by side for out-of-order CPUs.
        let group = |gi: usize| &row[gi * fmt.group..((gi + 1) * fmt.group).min(k)];
        let none = SearchFit {
            fit: Fit {
                scale: 0.0,
                min: 0.0,
            },
            sums: Sums::default(),
        };
        for g0 in (0..gpr).step_by(BATCH) {
            let g1 = (g0 + BATCH).min(gpr);
            let mut found = [none; BATCH];
            let run = &row[g0 * fmt.group..(g1 * fmt.group).min(k)];
            p.fit_search_groups(fmt.scheme, run, fmt.group, false, &mut found[..g1 - g0]);
            let mut params = [UNSET; BATCH];
            let n = g1 - g0;
            p.stored_groups(fmt, run, &found[..n], &mut params[..n]);
            for (j, gi) in (g0..g1).enumerate() {
                let x = group(gi);
                let gp = params[j];
                put_params(fmt, k, &mut out, r, gi, &gp);
                stats.overflowed_groups += gp.overflowed as u64;
                stats.zeroed_groups += gp.zeroed as u64;
                let codes = &mut out.codes[r * cb..(r + 1) * cb];
                p.quantize(fmt.scheme, &gp, x, gi * fmt.group, codes, &mut stats);
            }
        }
    }
    p.finish(&mut stats);
    stats.count = src.len() as u64;
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::{code, decode, group_params};
    use crate::ScaleDtype;

    /// Exact squared error of `x` quantized and decoded with `p`.
    fn sse(scheme: Scheme, p: &GroupParams, x: &[f32]) -> f64 {
        x.iter()
            .map(|&v| {
                let e = (v - decode(scheme, p, code(scheme, p, v))) as f64;
                e * e
            })
            .sum()
    }

    /// A deterministic stream of roughly normal values (sum of uniforms).
    fn normals(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut u = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        (0..n)
            .map(|_| (0..12).map(|_| u()).sum::<f32>() - 6.0)
            .collect()
    }

    fn searched(fmt: &QuantFormat, x: &[f32]) -> GroupParams {
        stored_fit(fmt, x)
    }

    #[test]
    fn lane_sum_is_the_documented_order() {
        let t: Vec<f32> = (0..19).map(|i| 1.0 + i as f32 * 1e-7).collect();
        let mut l = [0.0f32; 8];
        for (j, v) in t.iter().enumerate() {
            l[j % 8] += v;
        }
        let want = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
        assert_eq!(lane_sum(t.iter().copied()).to_bits(), want.to_bits());
    }

    #[test]
    fn sums_error_matches_the_direct_error_of_the_same_codes() {
        for scheme in Scheme::ALL {
            let x = normals(64, 3);
            let rtn = fit_rtn(scheme, &x, false);
            let inv = 1.0 / rtn.scale;
            let mut s = [Sums::default()];
            code_sums(scheme, &x, rtn.min, &[inv], &Sums::of(&x), &mut s);
            let (qlo, qhi) = code_range(scheme);
            let direct: f64 = x
                .iter()
                .map(|&v| {
                    let q = ((v - rtn.min) * inv).round_ties_even().clamp(qlo, qhi);
                    let e = v as f64 - (rtn.scale as f64 * q as f64 + rtn.min as f64);
                    e * e
                })
                .sum();
            let from_sums = s[0].err(rtn.scale, rtn.min) as f64;
            assert!(
                (from_sums - direct).abs() <= 1e-3 * s[0].x2 as f64,
                "{scheme}: {from_sums} vs {direct}"
            );
        }
    }

    #[test]
    fn better_than_round_to_nearest_on_gaussian_groups() {
        for scheme in Scheme::ALL {
            for dt in [ScaleDtype::F16, ScaleDtype::BF16, ScaleDtype::F32] {
                let fmt = QuantFormat {
                    dq: None,
                    scheme,
                    group: 64,
                    scale_dtype: dt,
                };
                let (mut rtn, mut found) = (0.0, 0.0);
                for seed in 0..200 {
                    let x = normals(64, seed);
                    rtn += sse(scheme, &group_params(scheme, dt, &x), &x);
                    found += sse(scheme, &searched(&fmt, &x), &x);
                }
                eprintln!("{scheme} {dt}: squared error {:.4} of RTN's", found / rtn);
                let want = match (scheme.bits(), dt) {
                    // BF16 keeps 8 bits of a scale: its rounding eats part of the gain.
                    (4, ScaleDtype::BF16) => 0.97,
                    (4, _) => 0.9,
                    _ => 1.0,
                };
                assert!(found < want * rtn, "{scheme} {dt}: {found} vs {rtn}");
            }
        }
    }

    #[test]
    fn constant_zero_and_tiny_groups_are_exact_as_in_rtn() {
        for scheme in Scheme::ALL {
            let fmt = QuantFormat {
                dq: None,
                scheme,
                group: 8,
                scale_dtype: ScaleDtype::F16,
            };
            for x in [[0.0f32; 8], [0.375; 8], [-2.5; 8]] {
                let p = searched(&fmt, &x);
                assert_eq!(
                    sse(scheme, &p, &x),
                    sse(scheme, &group_params(scheme, ScaleDtype::F16, &x), &x),
                    "{scheme} {x:?}"
                );
            }
        }
    }
}
