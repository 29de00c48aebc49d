//! Double quantization (packed format version 2): each group's scale and
//! min are stored as small integer codes of a per-super-group factor, so that
//! small groups cost few bits (as ggml's Q4_K stores 6-bit sub-scales).
//! This scalar code is the specification of how the codes are chosen.
//!
//! Layout, per row (README, "The packed format"): `S` consecutive groups form
//! a super-group (the last one of a row may have fewer). With `b` code bits,
//! `Ls = 2^b − 1` and `Lm = 2^(b−1) − 1`:
//! * asymmetric schemes: group scale = `cs · F`, group min = `−(cm · M)`, with
//!   `cs`, `cm` in `[0, Ls]` and `F`, `M` the super-group's scale and min
//!   factors (stored in the scale dtype). Mins are never positive: a group
//!   whose values are all positive is encoded from 0 up.
//! * symmetric schemes: group scale = `cs · F` with `cs` a signed code in
//!   `[−Lm, Lm]` (two's complement in its `b` bits); no mins.
//!
//! Choosing them, per super-group of finite values (NaN/±Inf read as 0):
//! 1. Each group gets a real-valued scale `s` and min `m ≤ 0`: round to
//!    nearest's from its range widened to include 0 ([`Method::Rtn`]), or
//!    the least-squares search of [`crate::search::fit_search`] ([`Method::Search`]).
//! 2. `F = R(max |s| / Ls)` (symmetric: `/ Lm`), `M = R(max −m / Ls)`, with
//!    `R` rounding to nearest in the scale dtype; a factor beyond the dtype
//!    saturates and is flagged (`overflowed_groups`), one below the smallest
//!    normal f32 is 0.
//! 3. `cs = round(s / F)`, `cm = round(−m / M)` (multiplying by the f32
//!    inverses), clamped to their ranges; a non-zero `s` never gets `cs = 0`.
//!    [`Method::Search`] then takes the first of `(cs, cm)` and its
//!    neighbours `(cs ± 1, cm ± 1)` (in range, and never a zero scale code)
//!    with the lowest error on the fit's own codes
//!    ([`crate::search::Sums::err`]), and refines once: the codes
//!    rounded again with the chosen scale and min are refitted, and the
//!    refit's `(cs, cm)` (or a neighbour's, chosen the same way) replaces them
//!    when it scores lower on those codes.
//! 4. Element codes are those of version 1 with the decoded scale and min:
//!    `clamp(round((x − min) · (1 / scale)))`, so the error statistics are exact.

use crate::scalar::{check_sizes, count_nonfinite, Element, GroupParams};
use crate::search::{fit_from_range, Convert, Fit, Passes, Scalar, SearchFit, Sums, BATCH};
use crate::{DoubleQuant, ErrorStats, Method, QuantFormat, RowsOut, ScaleDtype, Scheme};

/// Largest scale code: `2^b − 1` (asymmetric), `2^(b−1) − 1` (symmetric).
fn max_code(scheme: Scheme, d: &DoubleQuant) -> i32 {
    if scheme.symmetric() {
        (1 << (d.bits - 1)) - 1
    } else {
        (1 << d.bits) - 1
    }
}

/// A super-group factor rounded to the scale dtype: `(value, stored bits, saturated)`.
fn factor(dt: ScaleDtype, v: f32) -> (f32, u32, bool) {
    let (r, bits) = match dt {
        ScaleDtype::F16 => {
            let h = half::f16::from_f32(v);
            (h.to_f32(), h.to_bits() as u32)
        }
        ScaleDtype::BF16 => {
            let h = half::bf16::from_f32(v);
            (h.to_f32(), h.to_bits() as u32)
        }
        ScaleDtype::F32 => (v, v.to_bits()),
    };
    if !r.is_finite() {
        let bits = match dt {
            ScaleDtype::F16 => 0x7BFF,
            ScaleDtype::BF16 => 0x7F7F,
            ScaleDtype::F32 => f32::MAX.to_bits(),
        };
        let v = match dt {
            ScaleDtype::F16 => half::f16::from_bits(bits as u16).to_f32(),
            ScaleDtype::BF16 => half::bf16::from_bits(bits as u16).to_f32(),
            ScaleDtype::F32 => f32::MAX,
        };
        return (v, bits, true);
    }
    if r < f32::MIN_POSITIVE {
        return (0.0, 0, false);
    }
    (r, bits, false)
}

/// The version-1 parameters a reader decodes from scale code `cs` and min code `cm`.
#[inline(always)]
pub(crate) fn decoded(f: f32, m: f32, cs: i32, cm: i32) -> GroupParams {
    let scale = cs as f32 * f;
    let min = -(cm as f32 * m);
    GroupParams {
        scale,
        min,
        inv: if scale == 0.0 { 0.0 } else { 1.0 / scale },
        overflowed: false,
        zeroed: false,
        scale_bits: 0,
        min_bits: 0,
    }
}

/// What step 3 (module documentation) needs of a super-group.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Codes {
    /// A symmetric scheme (signed scale codes, no mins).
    pub sym: bool,
    /// The smallest scale code (`−lmax` when symmetric, else 0).
    pub lmin: i32,
    /// The largest scale (and min) code.
    pub lmax: i32,
    /// The super-group's scale factor.
    pub fs: f32,
    /// The super-group's min factor (0 when symmetric).
    pub fm: f32,
    /// `1 / fs`, or 0.
    pub inv_s: f32,
    /// `1 / fm`, or 0.
    pub inv_m: f32,
    /// [`Method::Search`] with a non-zero scale factor: the neighbours and the refinement.
    pub search: bool,
}

impl Codes {
    /// The codes of a real scale and min: nearest, clamped; a non-zero scale keeps a
    /// non-zero code.
    #[inline(always)]
    pub(crate) fn of(&self, fit: &Fit) -> (i32, i32) {
        let (lmin, lmax) = (self.lmin, self.lmax);
        let mut cs = ((fit.scale * self.inv_s).round_ties_even() as i32).clamp(lmin, lmax);
        if cs == 0 && fit.scale != 0.0 && self.fs != 0.0 {
            cs = if fit.scale > 0.0 { 1 } else { -1 };
        }
        let cm = ((-fit.min * self.inv_m).round_ties_even() as i32).clamp(0, lmax);
        (cs, cm)
    }
}

/// Step 3 for consecutive groups of a super-group (`x` cut into groups of `g`,
/// `fits` their step-1 fits): their scale and min codes into `out`.
#[inline(always)]
pub(crate) fn choose_codes<P: Passes>(
    ps: &mut P,
    c: &Codes,
    scheme: Scheme,
    x: &[f32],
    g: usize,
    fits: &[SearchFit],
    out: &mut [(i32, i32)],
) {
    let n = out.len().min(fits.len());
    for (o, f) in out.iter_mut().zip(fits) {
        *o = c.of(&f.fit);
    }
    if !c.search {
        return;
    }
    let near = |ps: &mut P, at: (i32, i32), sums: &Sums| {
        ps.best_near(c.sym, (c.lmin, c.lmax), (c.fs, c.fm), at, sums)
    };
    let (mut bases, mut invs) = ([0.0f32; BATCH], [0.0f32; BATCH]);
    let mut wholes = [Sums::default(); BATCH];
    for j in 0..n {
        out[j] = near(ps, out[j], &fits[j].sums);
        let p = decoded(c.fs, c.fm, out[j].0, out[j].1);
        (bases[j], invs[j], wholes[j]) = (p.min, p.inv, fits[j].sums);
    }
    // One refinement: the codes rounded again with these parameters are refitted, and
    // the refit's parameter codes (or a neighbour's) taken when they score lower on
    // those codes.
    let mut s2 = [Sums::default(); BATCH];
    let (b, i, w) = (&bases[..n], &invs[..n], &wholes[..n]);
    ps.code_sums_groups(scheme, x, g, b, i, w, &mut s2[..n]);
    for j in 0..n {
        let p = decoded(c.fs, c.fm, out[j].0, out[j].1);
        if let Some((scale, min)) = s2[j].fit(c.sym, true) {
            let next = near(ps, c.of(&Fit { scale, min }), &s2[j]);
            let pn = decoded(c.fs, c.fm, next.0, next.1);
            if s2[j].err(pn.scale, pn.min) < s2[j].err(p.scale, p.min) {
                out[j] = next;
            }
        }
    }
}

/// The first of `(c0, m0)` and its neighbours `(c0 ± 1, m0 ± 1)` (symmetric: the
/// scale code's only) with the lowest error of the codes `sums` were taken with (an
/// upper bound of the error once the codes are rounded again with them), in the
/// order `(c0, m0)`, then by scale code then min code, each from −1 to +1; codes out
/// of `lmin..=lmax` (min codes: `0..=lmax`) are skipped. `(f, m)` are the super-group
/// factors.
#[inline(always)]
pub(crate) fn best_near(
    sym: bool,
    (lmin, lmax): (i32, i32),
    (f, m): (f32, f32),
    (c0, m0): (i32, i32),
    sums: &Sums,
) -> (i32, i32) {
    let score = |cs: i32, cm: i32| {
        let p = decoded(f, m, cs, cm);
        sums.err(p.scale, p.min)
    };
    let (mut best, mut at) = (score(c0, m0), (c0, m0));
    let dms: &[i32] = if sym { &[0] } else { &[-1, 0, 1] };
    for ds in [-1, 0, 1] {
        for &dm in dms {
            let (a, b) = (c0 + ds, m0 + dm);
            // A neighbour never has a zero scale code: it would flatten the group.
            if (ds, dm) == (0, 0)
                || a == 0
                || !(lmin..=lmax).contains(&a)
                || !(0..=lmax).contains(&b)
            {
                continue;
            }
            let e = score(a, b);
            if e < best {
                (best, at) = (e, (a, b));
            }
        }
    }
    at
}

/// Writes the `b`-bit field `i` of a row's packed codes (LSB first).
fn put_bits(dst: &mut [u8], bits: u32, i: usize, v: u32) {
    let v = v & ((1u32 << bits) - 1);
    let at = i * bits as usize;
    let (byte, shift) = (at / 8, at % 8);
    dst[byte] |= (v << shift) as u8;
    if shift + bits as usize > 8 {
        dst[byte + 1] |= (v >> (8 - shift)) as u8;
    }
}

/// Stores a factor's bits at index `i` of `dst`.
fn put_factor(dt: ScaleDtype, dst: &mut [u8], i: usize, bits: u32) {
    match dt {
        ScaleDtype::F32 => dst[4 * i..4 * i + 4].copy_from_slice(&bits.to_le_bytes()),
        _ => dst[2 * i..2 * i + 2].copy_from_slice(&(bits as u16).to_le_bytes()),
    }
}

/// Quantizes whole rows with double-quantized scales (`fmt.dq` must be set),
/// parameters chosen by `method`. Same contract as [`crate::quantize_rows`].
///
/// # Panics
/// If `fmt.dq` is `None` or out of range, or a slice length does not match.
pub fn quantize_rows<T: Element>(
    method: Method,
    fmt: &QuantFormat,
    k: usize,
    src: &[T],
    out: RowsOut<'_>,
) -> ErrorStats {
    quantize_rows_with(&mut Scalar, method, fmt, k, src, out)
}

/// [`quantize_rows`] with the per-element passes of `ps` (identical results).
#[inline(always)]
pub(crate) fn quantize_rows_with<T: Element, P: Passes + Convert<T>>(
    ps: &mut P,
    method: Method,
    fmt: &QuantFormat,
    k: usize,
    src: &[T],
    out: RowsOut<'_>,
) -> ErrorStats {
    let d = fmt.dq.expect("a double-quantized format");
    assert!(
        DoubleQuant::BITS.contains(&d.bits) && d.groups > 0,
        "double quantization: {d:?}"
    );
    let mut stats = ErrorStats::default();
    let rows = check_sizes(fmt, k, src.len(), &out);
    let scheme = fmt.scheme;
    let sym = scheme.symmetric();
    let (cb, sb) = (fmt.code_bytes_per_row(k), fmt.scale_bytes_per_row(k));
    let (gpr, spr) = (fmt.groups_per_row(k), fmt.supers_per_row(k));
    let lmax = max_code(scheme, &d);
    let lmin = if sym { -lmax } else { 0 };
    out.scales.fill(0);
    out.mins.fill(0);
    let mut row = vec![0.0f32; if rows > 0 { k } else { 0 }];
    let mut fits = Vec::with_capacity(if rows > 0 { gpr } else { 0 });
    for r in 0..rows {
        let src_row = &src[r * k..(r + 1) * k];
        if !ps.convert(src_row, &mut row) {
            count_nonfinite(src_row, r * k, &mut stats);
        }
        let group = |gi: usize| &row[gi * fmt.group..((gi + 1) * fmt.group).min(k)];
        // Every group's real-valued fit first (step 1), then the super-groups.
        fits.clear();
        match method {
            Method::Rtn => fits.extend((0..gpr).map(|gi| {
                let (lo, hi) = ps.range(group(gi), true);
                SearchFit {
                    fit: fit_from_range(scheme, lo, hi),
                    sums: Sums::default(),
                }
            })),
            Method::Search => {
                let none = SearchFit {
                    fit: Fit {
                        scale: 0.0,
                        min: 0.0,
                    },
                    sums: Sums::default(),
                };
                fits.resize(gpr, none);
                ps.fit_search_groups(scheme, &row, fmt.group, true, &mut fits);
            }
        }
        for (si, g0) in (0..gpr).step_by(d.groups).enumerate() {
            let g1 = (g0 + d.groups).min(gpr);
            let fits = &fits[g0..g1];
            let smax = fits.iter().fold(0.0f32, |a, f| a.max(f.fit.scale.abs()));
            let mmax = fits.iter().fold(0.0f32, |a, f| a.max(-f.fit.min));
            let (fs, fs_bits, over_s) = factor(fmt.scale_dtype, smax / lmax as f32);
            let (fm, fm_bits, over_m) = if sym {
                (0.0, 0, false)
            } else {
                factor(fmt.scale_dtype, mmax / lmax as f32)
            };
            put_factor(fmt.scale_dtype, out.super_scales, r * spr + si, fs_bits);
            if !sym {
                put_factor(fmt.scale_dtype, out.super_mins, r * spr + si, fm_bits);
            }
            let ctx = Codes {
                sym,
                lmin,
                lmax,
                fs,
                fm,
                inv_s: if fs == 0.0 { 0.0 } else { 1.0 / fs },
                inv_m: if fm == 0.0 { 0.0 } else { 1.0 / fm },
                search: method == Method::Search && fs != 0.0,
            };
            // A few groups at a time (as in `search`).
            for b0 in (g0..g1).step_by(BATCH) {
                let b1 = (b0 + BATCH).min(g1);
                let mut codes = [(0i32, 0i32); BATCH];
                let run = &row[b0 * fmt.group..(b1 * fmt.group).min(k)];
                let fits = &fits[b0 - g0..b1 - g0];
                ps.choose_codes(&ctx, scheme, run, fmt.group, fits, &mut codes[..b1 - b0]);
                for (j, gi) in (b0..b1).enumerate() {
                    let x = group(gi);
                    let (cs, cm) = codes[j];
                    let p = decoded(fs, fm, cs, cm);
                    put_bits(&mut out.scales[r * sb..(r + 1) * sb], d.bits, gi, cs as u32);
                    if !sym {
                        put_bits(&mut out.mins[r * sb..(r + 1) * sb], d.bits, gi, cm as u32);
                    }
                    stats.overflowed_groups += (over_s || over_m) as u64;
                    // (The spread is only looked at for a zero scale.)
                    stats.zeroed_groups += (p.scale == 0.0 && x.iter().any(|&v| v != x[0])) as u64;
                    let codes = &mut out.codes[r * cb..(r + 1) * cb];
                    ps.quantize(scheme, &p, x, gi * fmt.group, codes, &mut stats);
                }
            }
        }
    }
    ps.finish(&mut stats);
    stats.count = src.len() as u64;
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard normal values (Box–Muller on a 64-bit LCG), deterministic.
    pub(crate) fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        let mut u = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (a, b) = (u(), u());
                ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
            })
            .collect()
    }

    fn run(method: Method, fmt: &QuantFormat, k: usize, x: &[f32]) -> ErrorStats {
        run_on(crate::Isa::Scalar, method, fmt, k, x, 1).0
    }

    /// Runs `reps` times (outputs allocated once): the statistics and the best time.
    fn run_on(
        isa: crate::Isa,
        method: Method,
        fmt: &QuantFormat,
        k: usize,
        x: &[f32],
        reps: usize,
    ) -> (ErrorStats, f64) {
        let rows = x.len() / k;
        let mut c = vec![0u8; rows * fmt.code_bytes_per_row(k)];
        let mut s = vec![0u8; rows * fmt.scale_bytes_per_row(k)];
        let mut m = vec![0u8; rows * fmt.min_bytes_per_row(k)];
        let mut ss = vec![0u8; rows * fmt.super_bytes_per_row(k)];
        let mut sm = vec![0u8; rows * fmt.super_min_bytes_per_row(k)];
        let mut best = (ErrorStats::default(), f64::INFINITY);
        for _ in 0..reps {
            let out = RowsOut {
                codes: &mut c,
                scales: &mut s,
                mins: &mut m,
                super_scales: &mut ss,
                super_mins: &mut sm,
            };
            let t = std::time::Instant::now();
            let st = if fmt.dq.is_some() && isa == crate::Isa::Scalar {
                quantize_rows(method, fmt, k, x, out)
            } else {
                crate::quantize_rows_by(isa, method, fmt, k, crate::Src::F32(x), out)
            };
            best = (st, best.1.min(t.elapsed().as_secs_f64()));
        }
        best
    }

    #[test]
    #[ignore = "prints the error table; run in release"]
    fn error_table() {
        let k = 11008;
        let x = gaussian(k * 256, 7);
        let f = |scheme, group, dq| QuantFormat {
            scheme,
            group,
            scale_dtype: ScaleDtype::F16,
            dq,
        };
        let dq = |bits, groups| Some(DoubleQuant { bits, groups });
        for (name, fmt) in [
            ("int4-asym g64", f(Scheme::Int4Asym, 64, None)),
            ("int4 g32", f(Scheme::Int4Sym, 32, None)),
            ("int4-asym g32 dq6/8", f(Scheme::Int4Asym, 32, dq(6, 8))),
            ("int4-asym g32 dq7/128", f(Scheme::Int4Asym, 32, dq(7, 128))),
            ("int4-asym g32 dq8/128", f(Scheme::Int4Asym, 32, dq(8, 128))),
            ("int4-asym g64 dq6/4", f(Scheme::Int4Asym, 64, dq(6, 4))),
            ("int4-asym g64 dq6/64", f(Scheme::Int4Asym, 64, dq(6, 64))),
            ("int4-asym g64 dq7/16", f(Scheme::Int4Asym, 64, dq(7, 16))),
            ("int4 g32 dq6/8", f(Scheme::Int4Sym, 32, dq(6, 8))),
            ("int4 g32 dq7/128", f(Scheme::Int4Sym, 32, dq(7, 128))),
            ("int4 g32 dq8/16", f(Scheme::Int4Sym, 32, dq(8, 16))),
        ] {
            let bpw = fmt.bytes_per_row(k) as f64 * 8.0 / k as f64;
            let rtn = run(Method::Rtn, &fmt, k, &x);
            let se = run(Method::Search, &fmt, k, &x);
            eprintln!(
                "{name:24} {bpw:.4} bpw  rtn {:.5}  search {:.5}",
                rtn.rmse(),
                se.rmse(),
            );
            // Single-thread speed of each path, GB/s of F32 input (best of 3; scalar once).
            for isa in crate::Isa::available() {
                let mut speeds = String::new();
                for method in [Method::Rtn, Method::Search] {
                    let reps = if isa == crate::Isa::Scalar { 1 } else { 3 };
                    let (st, dt) = run_on(isa, method, &fmt, k, &x, reps);
                    let want = if method == Method::Rtn { &rtn } else { &se };
                    assert_eq!(st.rmse() as f32, want.rmse() as f32, "{isa} {method:?}");
                    speeds += &format!(
                        "  {} {:.3} GB/s",
                        method.name(),
                        (x.len() * 4) as f64 / dt / 1e9
                    );
                }
                eprintln!("{:24} {isa:6}{speeds}", "");
            }
        }
    }
}
