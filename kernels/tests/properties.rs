//! Property tests of the scalar specification: the round-to-nearest error
//! bound, the clamp bound, and that requantizing a reconstruction gives back
//! the same codes.

use proptest::prelude::*;
use shrinkray_kernels::scalar::{code, decode, group_params, quantize_rows};
use shrinkray_kernels::{QuantFormat, RowsOut, ScaleDtype, Scheme};

fn scheme() -> impl Strategy<Value = Scheme> {
    prop::sample::select(Scheme::ALL.to_vec())
}

fn scale_dtype() -> impl Strategy<Value = ScaleDtype> {
    prop::sample::select(vec![ScaleDtype::F16, ScaleDtype::BF16, ScaleDtype::F32])
}

/// Values like weights: mostly small, some outliers, exact zeros, a magnitude per group.
fn values(max_len: usize) -> impl Strategy<Value = Vec<f32>> {
    let one = prop_oneof![
        6 => -1.0f32..1.0,
        1 => -30.0f32..30.0,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
    ];
    (prop::collection::vec(one, 1..max_len), -8i32..8).prop_map(|(v, e)| {
        let m = 2f32.powi(e);
        v.into_iter().map(|x| x * m).collect()
    })
}

/// The range of values the codes of `p` can represent: [lo, hi].
fn representable(scheme: Scheme, p: &shrinkray_kernels::scalar::GroupParams) -> (f32, f32) {
    let (a, b) = match scheme {
        Scheme::Int8Sym => (decode(scheme, p, (-127i8) as u8), decode(scheme, p, 127)),
        Scheme::Int4Sym => (decode(scheme, p, 0), decode(scheme, p, 15)),
        Scheme::Int8Asym => (decode(scheme, p, 0), decode(scheme, p, 255)),
        Scheme::Int4Asym => (decode(scheme, p, 0), decode(scheme, p, 15)),
    };
    (a.min(b), a.max(b))
}

/// The gap between representable values of `dt` at magnitude `v` (F16 subnormals included).
fn spacing(dt: ScaleDtype, v: f32) -> f32 {
    if v == 0.0 {
        return 0.0;
    }
    let e = v.abs().log2().floor() as i32;
    match dt {
        ScaleDtype::F16 => 2f32.powi(e - 10).max(2f32.powi(-24)),
        ScaleDtype::BF16 => 2f32.powi(e - 7),
        ScaleDtype::F32 => 0.0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Inside the representable range the error is at most half a step; outside, at most one step.
    #[test]
    fn error_is_bounded_by_the_step(s in scheme(), dt in scale_dtype(), x in values(300)) {
        let p = group_params(s, dt, &x);
        prop_assert!(p.scale.is_finite() && p.min.is_finite());
        prop_assert!(!p.overflowed);
        let step = p.scale.abs();
        let (lo, hi) = representable(s, &p);
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs())) + p.min.abs();
        // f32 arithmetic in x·inv, the subtraction of min and the decode: a few ulps of the magnitudes.
        let slack = 8.0 * f32::EPSILON * (amax + 16.0 * step);
        if p.zeroed {
            // Flagged degradation: the scale underflowed the dtype; elements decode to 0 (or the min).
            return Ok(());
        }
        if step == 0.0 {
            // A constant group (or zeros): everything decodes to the min, rounded down in the dtype.
            for &v in &x {
                let err = (v - decode(s, &p, code(s, &p, v))).abs();
                prop_assert!(err <= spacing(dt, v) + slack, "{s:?} {dt:?} v={v} err={err}");
            }
            return Ok(());
        }
        for &v in &x {
            let c = code(s, &p, v);
            let err = (v - decode(s, &p, c)).abs();
            if v >= lo && v <= hi {
                prop_assert!(err <= step / 2.0 + slack, "{s:?} {dt:?} v={v} err={err} step={step}");
            } else {
                // One step, plus what the rounding of the stored scale moves the far end
                // (at most 8 steps of int4's opposite side, 127 of int8, each off by u).
                let u = spacing(dt, step) / step;
                prop_assert!(err <= step * (1.0 + 128.0 * u) + slack, "clamped {s:?} {dt:?} v={v} err={err} step={step}");
            }
        }
    }

    /// Quantizing the reconstruction gives the same codes (F32 scales: no scale rounding).
    #[test]
    fn requantizing_the_reconstruction_is_idempotent(s in scheme(), x in values(200), g in 1usize..80) {
        let f = QuantFormat { dq: None, scheme: s, group: g, scale_dtype: ScaleDtype::F32 };
        let k = x.len();
        let run = |src: &[f32]| {
            let mut c = vec![0u8; f.code_bytes_per_row(k)];
            let mut sc = vec![0u8; f.scale_bytes_per_row(k)];
            let mut m = vec![0u8; f.min_bytes_per_row(k)];
            quantize_rows(&f, k, src, RowsOut { super_scales: &mut [], super_mins: &mut [], codes: &mut c, scales: &mut sc, mins: &mut m });
            (c, sc, m)
        };
        let (c1, _, _) = run(&x);
        // Reconstruct group by group with the specification's own decode.
        let mut xhat = Vec::with_capacity(k);
        for grp in x.chunks(g) {
            let p = group_params(s, ScaleDtype::F32, grp);
            xhat.extend(grp.iter().map(|&v| decode(s, &p, code(s, &p, v))));
        }
        let (c2, _, _) = run(&xhat);
        prop_assert_eq!(c1, c2);
    }

    /// Rows are independent: quantizing rows one at a time equals quantizing them together.
    #[test]
    fn rows_are_independent(s in scheme(), dt in scale_dtype(), x in values(256), k in 1usize..40, g in 1usize..50) {
        let rows = x.len() / k;
        prop_assume!(rows >= 1);
        let x = &x[..rows * k];
        let f = QuantFormat { dq: None, scheme: s, group: g, scale_dtype: dt };
        let (cb, sb, mb) = (f.code_bytes_per_row(k), f.scale_bytes_per_row(k), f.min_bytes_per_row(k));
        let mut all = (vec![0u8; rows * cb], vec![0u8; rows * sb], vec![0u8; rows * mb]);
        let st = quantize_rows(&f, k, x, RowsOut { super_scales: &mut [], super_mins: &mut [], codes: &mut all.0, scales: &mut all.1, mins: &mut all.2 });
        let mut sum = 0.0;
        for r in 0..rows {
            let mut one = (vec![0u8; cb], vec![0u8; sb], vec![0u8; mb]);
            let s1 = quantize_rows(&f, k, &x[r * k..(r + 1) * k], RowsOut { super_scales: &mut [], super_mins: &mut [], codes: &mut one.0, scales: &mut one.1, mins: &mut one.2 });
            prop_assert_eq!(&all.0[r * cb..(r + 1) * cb], &one.0[..]);
            prop_assert_eq!(&all.1[r * sb..(r + 1) * sb], &one.1[..]);
            prop_assert_eq!(&all.2[r * mb..(r + 1) * mb], &one.2[..]);
            sum += s1.sum_sq_err;
        }
        prop_assert!((st.sum_sq_err - sum).abs() <= 1e-9 * sum.max(1e-30));
    }
}
