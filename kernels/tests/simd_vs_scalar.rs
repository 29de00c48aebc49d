//! Every SIMD path against the scalar specification: codes, scales and mins
//! bit-identical, error statistics equal up to summation order, over every
//! scheme, scale dtype, source dtype, group size, length 0..=3·group+7,
//! misaligned starts and adversarial values (the cases live in `cases`, which
//! `avx512_emulated` runs too). An instruction set this CPU lacks is reported
//! as SKIPPED on stderr.

mod adversarial;
mod cases;
use adversarial::simd_isas;
use cases::{batch_cases, compare, group_cases, long_cases, Case};

use shrinkray_kernels::Isa;

/// Runs every case on the specification and on each SIMD path this CPU runs, and compares.
fn check(cases: &[Case]) {
    let isas = simd_isas();
    for c in cases {
        let want = c.run(Isa::Scalar);
        for &isa in &isas {
            compare(isa, &c.what, &want, &c.run(isa));
        }
    }
}

/// Every length 0..=3g+7 of each group size in `gs`.
fn lengths(gs: &[usize]) {
    let mut cases = Vec::new();
    for &g in gs {
        group_cases(g, 3 * g + 7, &mut cases);
    }
    check(&cases);
}

#[test]
fn small_groups() {
    lengths(&[1, 2, 7, 8, 16, 24]);
}

#[test]
fn group_32() {
    lengths(&[32]);
}

#[test]
fn group_64() {
    lengths(&[64]);
}

#[test]
fn group_128() {
    lengths(&[128]);
}

#[test]
fn group_256() {
    lengths(&[256]);
}

#[test]
fn per_row_groups() {
    // g = k: one group per row of every length, including ones far off the 8-lane grid.
    let mut cases = Vec::new();
    group_cases(0, 300, &mut cases);
    check(&cases);
}

/// Many rows, long rows, and long groups of values just below the magnitude (2^59)
/// from which kernels sum error squares in f64: a kernel that summed a whole group
/// in f32 would overflow.
#[test]
fn many_rows_long_rows_and_long_groups() {
    let mut cases = Vec::new();
    long_cases(&mut cases);
    for c in cases.iter().filter(|c| c.what.contains("5e17")) {
        let st = c.run(Isa::Scalar).stats;
        assert!(st.sum_sq.is_finite() && st.sum_sq > 1e39, "{}", c.what);
    }
    check(&cases);
}

/// Rows of 8 or more full groups (the batched paths), with every pattern, source
/// dtype and scheme, F16 and F32 scales, and rows that end in a short group.
#[test]
fn batches_of_full_groups() {
    for g in [16, 32, 64, 128, 256] {
        let mut cases = Vec::new();
        batch_cases(g, &mut cases);
        check(&cases);
    }
}
