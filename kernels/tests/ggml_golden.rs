//! The ggml block kernels against the golden vectors of gguf-py 0.19.0
//! (`fixtures/gguf/golden.json`, described in `fixtures/gguf/NOTES.md`),
//! plus the properties the format promises: the rounding error bound, the
//! nibble order, and the handling of NaN inputs.

use serde_json::Value;
use shrinkray_kernels::ggml::{dequantize_blocks, quantize_blocks, GgmlType};

mod golden;
use golden::{golden, hex, input, mask_q4_1_signs};

fn flag(case: &Value, key: &str, ty: GgmlType) -> bool {
    case.get(key)
        .and_then(|m| m.get(ty.name()))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn quantize(ty: GgmlType, x: &[f32]) -> (Vec<u8>, shrinkray_kernels::ErrorStats) {
    let mut out = vec![0xA5; ty.row_bytes(x.len())];
    let st = quantize_blocks(ty, x, &mut out);
    (out, st)
}

fn f16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// The overflow and zero counts the expected bytes imply for input `x`.
fn expected_flags(ty: GgmlType, x: &[f32], bytes: &[u8]) -> (u64, u64) {
    let (mut over, mut zero) = (0, 0);
    for (xs, b) in x.chunks(32).zip(bytes.chunks(ty.block_bytes())) {
        let d = f16_at(b, 0);
        let m = if ty == GgmlType::Q4_1 {
            f16_at(b, 2)
        } else {
            0
        };
        let inf = |h: u16| h & 0x7FFF == 0x7C00;
        over += (inf(d) || inf(m)) as u64;
        let informative = match ty {
            GgmlType::Q4_1 => xs.iter().any(|&v| v != xs[0]),
            _ => xs.iter().any(|&v| v != 0.0),
        };
        zero += (d & 0x7FFF == 0 && informative) as u64;
    }
    (over, zero)
}

#[test]
fn golden_file_is_the_one_described() {
    let g = golden();
    assert_eq!(g["gguf_version"], "0.19.0");
    for ty in GgmlType::ALL {
        assert_eq!(
            g["block_bytes"][ty.name()].as_u64(),
            Some(ty.block_bytes() as u64)
        );
    }
    assert_eq!(g["cases"].as_array().unwrap().len(), 44);
}

#[test]
fn every_golden_case_matches_byte_for_byte() {
    let g = golden();
    let mut checked = 0;
    let mut masked = 0;
    let mut failures = Vec::new();
    for case in g["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let x = input(case);
        assert!(
            x.iter().all(|v| v.is_finite()),
            "{name}: golden inputs are finite"
        );
        for ty in GgmlType::ALL {
            let mut want = hex(case[ty.name()].as_str().unwrap());
            let (mut got, st) = quantize(ty, &x);
            assert_eq!(got.len(), want.len(), "{name} {}", ty.name());
            if flag(case, "signed_zero_ambiguous", ty) {
                assert_eq!(ty, GgmlType::Q4_1, "{name}: only q4_1 is ambiguous");
                mask_q4_1_signs(&mut want);
                mask_q4_1_signs(&mut got);
                masked += 1;
            }
            if got != want {
                failures.push(format!(
                    "{name} {}:\n  want {}\n  got  {}",
                    ty.name(),
                    case[ty.name()].as_str().unwrap(),
                    got.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ));
                continue;
            }
            checked += 1;
            assert_eq!(st.count, x.len() as u64);
            assert_eq!((st.nonfinite, st.first_nonfinite), (0, None));
            let (over, zero) = expected_flags(ty, &x, &want);
            assert_eq!(
                (st.overflowed_groups, st.zeroed_groups),
                (over, zero),
                "{name} {}: overflowed/zeroed groups",
                ty.name()
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, 44 * 3);
    assert_eq!(masked, 2, "zeros_neg_first and zeros_mixed_sign");
}

/// The cases whose blocks hit f16 overflow or underflow are flagged (names from NOTES.md).
#[test]
fn overflow_and_zero_flags_on_named_cases() {
    let g = golden();
    let cases = g["cases"].as_array().unwrap();
    let by_name = |n: &str| input(cases.iter().find(|c| c["name"] == n).unwrap());
    // Scales that do not fit f16: stored as ±Inf and flagged (q8_0's d = 1e6/127 still fits).
    for (name, types) in [
        ("f16_overflow_1e6", &[GgmlType::Q4_0, GgmlType::Q4_1][..]),
        ("f16_overflow_1e7", &GgmlType::ALL[..]),
        ("huge_1e30", &GgmlType::ALL[..]),
    ] {
        for ty in GgmlType::ALL {
            let (b, st) = quantize(ty, &by_name(name));
            let over = types.contains(&ty);
            assert_eq!(st.overflowed_groups, over as u64, "{name} {}", ty.name());
            assert_eq!(
                f16_at(&b, 0) & 0x7FFF == 0x7C00,
                over,
                "{name} {}",
                ty.name()
            );
            if over {
                assert_eq!(st.sum_sq_err, 0.0, "{name}: overflowed blocks add no error");
                assert_eq!(st.max_abs_err, 0.0);
            } else {
                assert!(st.sum_sq_err > 0.0);
            }
            assert!(st.sum_sq > 0.0);
        }
    }
    // Q8_0 boundary: d = 65519 is stored as 65504, d = 65520 becomes +Inf.
    let (b, st) = quantize(GgmlType::Q8_0, &by_name("f16_q8_boundary_65519"));
    assert_eq!((f16_at(&b, 0), st.overflowed_groups), (0x7BFF, 0));
    let (b, st) = quantize(GgmlType::Q8_0, &by_name("f16_q8_boundary_65520"));
    assert_eq!((f16_at(&b, 0), st.overflowed_groups), (0x7C00, 1));
    // Values near 1e-30 have a d that flushes to 0 in f16.
    for ty in GgmlType::ALL {
        let (b, st) = quantize(ty, &by_name("tiny_1e-30"));
        assert_eq!(f16_at(&b, 0) & 0x7FFF, 0, "{}", ty.name());
        assert_eq!(
            (st.zeroed_groups, st.overflowed_groups),
            (1, 0),
            "{}",
            ty.name()
        );
    }
    // All-zero and constant blocks are not "zeroed".
    for name in ["zeros_pos", "zeros_mixed_sign", "const_pos", "const_neg"] {
        for ty in GgmlType::ALL {
            let (_, st) = quantize(ty, &by_name(name));
            assert_eq!(
                (st.zeroed_groups, st.overflowed_groups),
                (0, 0),
                "{name} {}",
                ty.name()
            );
        }
    }
}

/// Q4_0 with the multiply and add fused (one rounding): what an FMA build and gguf ≤ 0.17.1 produce.
fn q4_0_fused(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in x.chunks(32) {
        let mut imax = 0;
        for i in 1..32 {
            if b[i].abs() > b[imax].abs() {
                imax = i;
            }
        }
        let d = b[imax] / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend(half::f16::from_f32(d).to_le_bytes());
        let q: Vec<u8> = b
            .iter()
            .map(|&v| {
                let t = v.mul_add(id, 8.5);
                if t.is_finite() {
                    (t as u8).min(15)
                } else {
                    0
                }
            })
            .collect();
        out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
    }
    out
}

#[test]
fn fma_variant_differs_and_we_implement_the_unfused_rounding() {
    let g = golden();
    let mut seen = 0;
    for case in g["cases"].as_array().unwrap() {
        let Some(fv) = case.get("fma_variant") else {
            continue;
        };
        let name = case["name"].as_str().unwrap();
        let x = input(case);
        for (ty_name, fused_hex) in fv.as_object().unwrap() {
            let ty = GgmlType::from_name(ty_name).unwrap();
            let fused = hex(fused_hex.as_str().unwrap());
            let (got, _) = quantize(ty, &x);
            assert_eq!(got, hex(case[ty.name()].as_str().unwrap()), "{name}");
            assert_ne!(got, fused, "{name}: we must not match the FMA build");
            if ty == GgmlType::Q4_0 {
                assert_eq!(q4_0_fused(&x), fused, "{name}: fused model reproduces it");
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 3);
}

#[test]
fn type_constants() {
    use GgmlType::*;
    let table = [
        (Q8_0, 34, 8, 7, "q8_0", 8),
        (Q4_0, 18, 2, 2, "q4_0", 4),
        (Q4_1, 20, 3, 3, "q4_1", 4),
    ];
    for (ty, bytes, id, ft, name, bits) in table {
        assert_eq!(ty.block_bytes(), bytes);
        assert_eq!(ty.type_id(), id);
        assert_eq!(ty.file_type(), ft);
        assert_eq!(ty.name(), name);
        assert_eq!(GgmlType::from_name(name), Some(ty));
        assert_eq!(GgmlType::from_name(&name.to_uppercase()), Some(ty));
        assert_eq!(ty.bits(), bits);
        assert_eq!(ty.row_bytes(4096), 128 * bytes);
        assert_eq!(ty.row_bytes(0), 0);
    }
    assert_eq!(GgmlType::BLOCK, 32);
    assert_eq!(GgmlType::from_name("q5_0"), None);
}

/// Deterministic weight-like values: an LCG through a heavy-tailed transform.
fn weights(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    let mut u = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|i| {
            let a = u() + u() + u() + u() - 2.0;
            let w = u();
            let v = a / (0.05 + w * w) * scale;
            if i % 61 == 7 {
                v * 40.0
            } else {
                v
            }
        })
        .collect()
}

#[test]
fn reconstruction_error_is_at_most_half_a_step() {
    for (seed, scale) in [(1, 1.0f32), (2, 0.01), (3, 100.0), (4, 1e-3)] {
        let x = weights(32 * 200, seed, scale);
        for ty in GgmlType::ALL {
            let (b, st) = quantize(ty, &x);
            assert_eq!((st.overflowed_groups, st.zeroed_groups), (0, 0));
            let mut y = vec![0.0; x.len()];
            dequantize_blocks(ty, &b, &mut y);
            let mut sse = 0.0f64;
            let mut max_err = 0.0f32;
            for (bi, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let blk = &b[bi * ty.block_bytes()..];
                let d = half::f16::from_bits(f16_at(blk, 0)).to_f32().abs();
                for (&v, &r) in xs.iter().zip(ys) {
                    let e = (v - r).abs();
                    // Half a step of the stored d, plus the mismatch between the stored d
                    // and the f32 d the quants were computed with (relative 2^-11, times
                    // at most 8/127/15 steps), plus f32 rounding of the reconstruction.
                    let bound = match ty {
                        GgmlType::Q8_0 => d / 2.0 + d * 127.0 / 2048.0 + v.abs() * 1e-6,
                        // The grid is [-8d, 7d] with -8d at the extreme: values beyond
                        // 7d on the other side are clipped to 7d (error up to d).
                        GgmlType::Q4_0 => {
                            (d / 2.0).max(v.abs() - 7.0 * d) + d * 8.0 / 2048.0 + v.abs() * 1e-6
                        }
                        GgmlType::Q4_1 => {
                            // plus the rounding of the min to f16
                            let m = half::f16::from_bits(f16_at(blk, 2)).to_f32();
                            d / 2.0 + d * 15.0 / 2048.0 + m.abs() / 2048.0 + v.abs() * 1e-6
                        }
                    };
                    assert!(
                        e <= bound,
                        "{} seed {seed} block {bi}: x {v} y {r} err {e} > {bound} (d {d})",
                        ty.name()
                    );
                    sse += (e as f64) * (e as f64);
                    max_err = max_err.max(e);
                }
            }
            // The returned statistics describe exactly this reconstruction.
            assert_eq!(st.max_abs_err, max_err, "{}", ty.name());
            assert!((st.sum_sq_err - sse).abs() <= 1e-9 * sse, "{}", ty.name());
            let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
            assert!((st.sum_sq - ss).abs() <= 1e-9 * ss);
            assert_eq!(st.count, x.len() as u64);
        }
    }
}

#[test]
fn values_on_the_grid_reconstruct_exactly() {
    // Each input is integers on the type's grid with d = 1 (and m = -3 for q4_1).
    let grid = |ty: GgmlType| -> Vec<f32> {
        (0..32)
            .map(|i| match ty {
                GgmlType::Q8_0 => [127.0, -127.0, (i * 9 % 255) as f32 - 127.0][i.min(2)],
                GgmlType::Q4_0 => [-8.0, 7.0, (i % 16) as f32 - 8.0][i.min(2)],
                GgmlType::Q4_1 => [-3.0, 12.0, (i * 5 % 16) as f32 - 3.0][i.min(2)],
            })
            .collect()
    };
    for ty in GgmlType::ALL {
        let x = grid(ty);
        let (b, st) = quantize(ty, &x);
        assert_eq!(
            f16_at(&b, 0),
            half::f16::from_f32(1.0).to_bits(),
            "{}",
            ty.name()
        );
        let mut y = vec![0.0; 32];
        dequantize_blocks(ty, &b, &mut y);
        assert_eq!(y, x, "{}", ty.name());
        assert_eq!((st.sum_sq_err, st.max_abs_err), (0.0, 0.0), "{}", ty.name());
        assert_eq!(st.sqnr_db(), f64::INFINITY);
    }
}

#[test]
fn nibble_order_is_j_low_and_j_plus_16_high() {
    // Q4_1 with min 0, max 15: d = 1, m = 0, and q = x exactly.
    let q: Vec<u8> = (0..32).map(|i| ((i * 7 + 3) % 16) as u8).collect();
    let mut x: Vec<f32> = q.iter().map(|&c| c as f32).collect();
    x[30] = 0.0; // make sure both ends of the range are present
    x[31] = 15.0;
    let mut qs = q.clone();
    qs[30] = 0;
    qs[31] = 15;
    let (b, _) = quantize(GgmlType::Q4_1, &x);
    assert_eq!(f16_at(&b, 0), half::f16::from_f32(1.0).to_bits());
    assert_eq!(f16_at(&b, 2), 0);
    for j in 0..16 {
        assert_eq!(b[4 + j], qs[j] | (qs[j + 16] << 4), "byte {j}");
    }
    // Q4_0 with max -8 at element 0: d = 1, q = x + 8.
    let mut x = vec![0.0f32; 32];
    x[0] = -8.0;
    x[1] = 7.0; // element 1: q 15 in the low nibble of byte 1
    x[17] = -3.0; // element 17: q 5 in the high nibble of byte 1
    let (b, _) = quantize(GgmlType::Q4_0, &x);
    assert_eq!(f16_at(&b, 0), half::f16::from_f32(1.0).to_bits());
    assert_eq!(b[2], 0x80); // element 0 → 0 (low), element 16 → 8 (high)
    assert_eq!(b[3], 0x5F);
    assert!(b[4..].iter().all(|&v| v == 0x88));
    // Decoding undoes the packing.
    let mut y = vec![0.0; 32];
    dequantize_blocks(GgmlType::Q4_0, &b, &mut y);
    assert_eq!(y, x);
}

#[test]
fn nan_and_inf_inputs_are_counted_and_read_as_zero() {
    let mut x = weights(96, 9, 1.0);
    let mut clean = x.clone();
    x[40] = f32::NAN;
    x[45] = f32::INFINITY;
    x[90] = f32::NEG_INFINITY;
    for i in [40, 45, 90] {
        clean[i] = 0.0;
    }
    for ty in GgmlType::ALL {
        let (b, st) = quantize(ty, &x);
        let (want, st_clean) = quantize(ty, &clean);
        assert_eq!(b, want, "{}", ty.name());
        assert_eq!(st.nonfinite, 3);
        assert_eq!(st.first_nonfinite, Some(40));
        assert_eq!(st.count, 96);
        assert_eq!(st.sum_sq, st_clean.sum_sq);
        assert_eq!(st.sum_sq_err, st_clean.sum_sq_err);
        assert_eq!(st.max_abs_err, st_clean.max_abs_err);
        assert_eq!(st.overflowed_groups, 0);
        assert!(st.sum_sq_err.is_finite());
    }
    // A whole block of NaN is a block of +0.0.
    let x = vec![f32::NAN; 32];
    for ty in GgmlType::ALL {
        let (b, st) = quantize(ty, &x);
        assert_eq!(b, quantize(ty, &[0.0; 32]).0);
        assert_eq!((st.nonfinite, st.first_nonfinite), (32, Some(0)));
        assert_eq!((st.sum_sq_err, st.zeroed_groups), (0.0, 0));
    }
}

#[test]
fn signed_zero_rules() {
    // Q4_0: d = x[0] / -8 for an all-zero block (numpy's argmax takes element 0).
    let (b, _) = quantize(GgmlType::Q4_0, &[0.0; 32]);
    assert_eq!(f16_at(&b, 0), 0x8000);
    let mut x = [0.0f32; 32];
    x[0] = -0.0;
    let (b, _) = quantize(GgmlType::Q4_0, &x);
    assert_eq!(f16_at(&b, 0), 0x0000);
    // Q4_1: min and max keep the first of equal values, so element 0's zero wins.
    let (b, _) = quantize(GgmlType::Q4_1, &x);
    assert_eq!((f16_at(&b, 0), f16_at(&b, 2)), (0x0000, 0x8000));
    let (b, _) = quantize(GgmlType::Q4_1, &[0.0; 32]);
    assert_eq!((f16_at(&b, 0), f16_at(&b, 2)), (0x0000, 0x0000));
}

#[test]
fn rows_back_to_back_equal_blocks_one_at_a_time() {
    let x = weights(32 * 37, 5, 0.5);
    for ty in GgmlType::ALL {
        let (all, st) = quantize(ty, &x);
        let mut cat = Vec::new();
        let mut merged = shrinkray_kernels::ErrorStats::default();
        for (i, b) in x.chunks(32).enumerate() {
            let (bytes, s) = quantize(ty, b);
            cat.extend(bytes);
            merged.merge(&s, (i * 32) as u64);
        }
        assert_eq!(all, cat);
        assert_eq!(st.count, merged.count);
        assert_eq!(st.max_abs_err, merged.max_abs_err);
        assert!((st.sum_sq_err - merged.sum_sq_err).abs() <= 1e-12 * st.sum_sq_err);
    }
    // Empty input, empty output.
    for ty in GgmlType::ALL {
        let (b, st) = quantize(ty, &[]);
        assert!(b.is_empty());
        assert_eq!(st, shrinkray_kernels::ErrorStats::default());
    }
}

#[test]
#[should_panic(expected = "not a multiple of 32")]
fn partial_block_panics() {
    quantize_blocks(GgmlType::Q8_0, &[0.0; 33], &mut [0; 68]);
}

#[test]
#[should_panic(expected = "output length")]
fn wrong_output_length_panics() {
    quantize_blocks(GgmlType::Q4_0, &[0.0; 32], &mut [0; 34]);
}
