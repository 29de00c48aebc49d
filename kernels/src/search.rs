//! Error-minimising choice of each group's scale and min (`--optimize
//! search`): the same packed format and decoder as round-to-nearest (RTN),
//! only the stored parameters differ. This scalar code is the specification;
//! every ISA runs it (the result is bit-identical by construction).
//!
//! Per group, with `lo`/`hi` its smallest and largest value and `r = hi − lo`:
//! 1. Candidates are clipped ranges given to the RTN parameter rule
//!    ([`params_from_range`]), so every candidate is stored exactly as RTN
//!    stores its own: RTN itself (no clipping), the top clipped by
//!    `r·i/32`, the bottom clipped by `r·i/32`, and both, for `i = 1..=8`
//!    (symmetric schemes: the range scaled by `1 − i/32`, `i = 1..=12`).
//! 2. Each candidate is scored by the exact squared error of the group as a
//!    reader decodes it with the stored parameters; the first lowest wins.
//! 3. The winner's codes are refitted by least squares (`x ≈ s·c + m`, or
//!    `x ≈ s·c` for symmetric schemes); the refit, its scale and min rounded
//!    to nearest in the scale dtype, replaces the winner if its exact error is
//!    lower, and the refit is repeated on the new codes (up to 4 rounds).
//!
//! So the stored error is never above RTN's. NaN/±Inf are read as 0 (and
//! counted) as in RTN.

use crate::scalar::{
    check_sizes, code, count_nonfinite, decode, finite_or_zero, params_from_range,
    params_from_scale_min, put_params, quantize_span, Element, GroupParams,
};
use crate::{ErrorStats, QuantFormat, RowsOut, Scheme};

/// Rounds of least-squares refitting.
const REFITS: usize = 4;

/// Exact squared error of `x` quantized and decoded with `p`.
fn sse(scheme: Scheme, p: &GroupParams, x: &[f32]) -> f64 {
    x.iter()
        .map(|&v| {
            let e = (v - decode(scheme, p, code(scheme, p, v))) as f64;
            e * e
        })
        .sum()
}

/// The chosen parameters of one group of finite values `x`.
pub fn search_params(fmt: &QuantFormat, x: &[f32]) -> GroupParams {
    let (scheme, dt) = (fmt.scheme, fmt.scale_dtype);
    let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (lo, hi) = if x.is_empty() { (0.0, 0.0) } else { (lo, hi) };
    let mut best = params_from_range(scheme, dt, lo, hi);
    let mut best_err = sse(scheme, &best, x);
    if hi <= lo || best_err == 0.0 {
        return best;
    }
    let consider = |p: GroupParams, best: &mut GroupParams, best_err: &mut f64| {
        if p.overflowed || p.zeroed {
            return;
        }
        let e = sse(scheme, &p, x);
        if e < *best_err {
            *best = p;
            *best_err = e;
        }
    };
    let r = hi - lo;
    if scheme.symmetric() {
        for i in 1..=12 {
            let f = 1.0 - i as f32 / 32.0;
            consider(
                params_from_range(scheme, dt, lo * f, hi * f),
                &mut best,
                &mut best_err,
            );
        }
    } else {
        for i in 1..=8 {
            let d = r * i as f32 / 32.0;
            for (a, b) in [(lo, hi - d), (lo + d, hi), (lo + d, hi - d)] {
                consider(
                    params_from_range(scheme, dt, a, b),
                    &mut best,
                    &mut best_err,
                );
            }
        }
    }
    // Least-squares refits of the winner's codes (each round refits the codes
    // of the current best; a round that does not improve ends the search).
    for _ in 0..REFITS {
        let before = best_err;
        let levels: Vec<f64> = x
            .iter()
            .map(|&v| {
                let c = code(scheme, &best, v);
                match scheme {
                    Scheme::Int8Sym => (c as i8) as f64,
                    Scheme::Int4Sym => c as f64 - 8.0,
                    _ => c as f64,
                }
            })
            .collect();
        let n = x.len() as f64;
        let (sl, sl2) = levels
            .iter()
            .fold((0.0, 0.0), |(a, b), &l| (a + l, b + l * l));
        let sx: f64 = x.iter().map(|&v| v as f64).sum();
        let sxl: f64 = x.iter().zip(&levels).map(|(&v, &l)| v as f64 * l).sum();
        let refit = if scheme.symmetric() {
            (sl2 > 0.0).then(|| ((sxl / sl2) as f32, 0.0))
        } else {
            let d = n * sl2 - sl * sl;
            (d > 0.0).then(|| {
                let s = (n * sxl - sl * sx) / d;
                let m = (sl2 * sx - sl * sxl) / d;
                (s as f32, m as f32)
            })
        };
        if let Some((s, m)) = refit.filter(|(s, m)| s.is_finite() && m.is_finite() && *s != 0.0) {
            consider(
                params_from_scale_min(scheme, dt, s, m),
                &mut best,
                &mut best_err,
            );
        }
        if best_err >= before {
            break;
        }
    }
    best
}

/// Quantizes whole rows like [`crate::scalar::quantize_rows`], with each
/// group's parameters from [`search_params`]. Same contract and output format.
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
            buf.extend(group.iter().map(|v| finite_or_zero(v.to_f32())));
            let p = search_params(fmt, &buf);
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
    use crate::scalar::group_params;
    use crate::ScaleDtype;

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

    #[test]
    fn never_worse_than_round_to_nearest_and_better_on_gaussian_groups() {
        for scheme in Scheme::ALL {
            for dt in [ScaleDtype::F16, ScaleDtype::BF16, ScaleDtype::F32] {
                let fmt = QuantFormat {
                    scheme,
                    group: 64,
                    scale_dtype: dt,
                };
                let (mut rtn, mut found) = (0.0, 0.0);
                for seed in 0..200 {
                    let x = normals(64, seed);
                    let e_rtn = sse(scheme, &group_params(scheme, dt, &x), &x);
                    let e = sse(scheme, &search_params(&fmt, &x), &x);
                    assert!(e <= e_rtn, "{scheme} {dt} seed {seed}: {e} > {e_rtn}");
                    rtn += e_rtn;
                    found += e;
                }
                eprintln!("{scheme} {dt}: squared error {:.4} of RTN's", found / rtn);
                // At 4 bits the search must find a real gain on Gaussian groups.
                if scheme.bits() == 4 {
                    assert!(found < 0.95 * rtn, "{scheme} {dt}: {found} vs {rtn}");
                }
            }
        }
    }

    #[test]
    fn constant_zero_and_tiny_groups_are_exact_as_in_rtn() {
        for scheme in Scheme::ALL {
            let fmt = QuantFormat {
                scheme,
                group: 8,
                scale_dtype: ScaleDtype::F16,
            };
            for x in [[0.0f32; 8], [0.375; 8], [-2.5; 8]] {
                let p = search_params(&fmt, &x);
                assert_eq!(
                    p,
                    group_params(scheme, ScaleDtype::F16, &x),
                    "{scheme} {x:?}"
                );
            }
        }
    }
}
