//! What the differential tests share: a deterministic bit stream, the
//! adversarial value patterns every SIMD path is run on, the tolerance for
//! error sums (equal up to summation order), and the SIMD paths to test.
#![allow(dead_code)] // each test file uses what it needs

use shrinkray_kernels::{ErrorStats, Isa};

/// A deterministic stream of bits (SplitMix64).
pub struct Bits(pub u64);

impl Bits {
    /// The next 64 bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Number of value patterns of [`values`].
pub const PATTERNS: usize = 15;

/// `n` values of adversarial pattern `kind` for a group size `g`.
pub fn values(kind: usize, n: usize, g: usize, bits: &mut Bits) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let u = bits.unit();
            match kind {
                0 => u * (1.0 + 8.0 * u * u * u * u), // heavy-ish tails
                1 => [0.0, -0.0][i % 2],
                2 => 0.375,
                3 => u * 1e-39, // f32 subnormals (tiny scales, infinite inverses)
                4 => {
                    if i % 3 == 0 {
                        u * 1e30
                    } else {
                        u * 1e-30
                    }
                }
                5 => {
                    // One outlier per group.
                    if i % g == (i / g * 7) % g {
                        1000.0 * u.signum()
                    } else {
                        u * 0.01
                    }
                }
                6 => [u, f32::NAN, f32::INFINITY, f32::NEG_INFINITY]
                    [(bits.next() % 4) as usize * ((i % 5 == 0) as usize)],
                7 => {
                    // Exact ties once scaled: the group's extreme is 127·2^e, the rest n + 1/2.
                    if i % g == 0 {
                        127.0
                    } else {
                        ((bits.next() % 254) as f32 - 127.0) + 0.5
                    }
                }
                8 => u * 65504.0 * 4.0, // beyond F16 scales (saturated, flagged)
                9 => u * 1e20,          // squares beyond f32: error sums must not overflow
                10 => u * 1e30,
                11 => u * 3e38, // differences and decodings overflow f32
                12 => {
                    // Groups whose minimum sits on an edge of F16: an asymmetric min,
                    // rounded down to F16, overflows below −65504 and from 65520 up.
                    let edges = [65520.0, 65519.996, -65504.0, -65504.008, 65504.0];
                    let lo = edges[(i / g) % edges.len()];
                    if i % g == 0 {
                        lo
                    } else {
                        lo + u.abs() * 8.0
                    }
                }
                14 => {
                    // Codes that round just beyond the code range (by 0.1–0.3 of a step)
                    // before clamping, one recipe per run of 8 groups (a batch of the SIMD
                    // paths): an F16 scale rounded down far enough, subnormal for the
                    // symmetric schemes, and for the asymmetric ones a minimum 0.6 below
                    // −65504 (where the stored min stops; flagged). q is F16's quantum.
                    let q = 2f32.powi(-24);
                    let (lo, hi) = match (i / (8 * g)) % 8 {
                        0 => (-127.0 * 1.006 * 64.0 * q, 0.5 * 127.0 * 1.006 * 64.0 * q),
                        1 => (-8.0 * 1.08 * 5.0 * q, 0.5 * 8.0 * 1.08 * 5.0 * q),
                        2 => (-65504.6, -65504.0 + 15.0),
                        3 => (-65504.6, -65504.0 + 255.0),
                        4 => (-0.5 * 127.0 * 1.006 * 64.0 * q, 127.0 * 1.006 * 64.0 * q),
                        5 => (0.0, 15.0 * 10.4 * q),
                        6 => (0.0, 255.0 * 100.25 * q),
                        _ => (-8.0 * 1.08 * 5.0 * q, 8.0 * 1.08 * 5.0 * q),
                    };
                    match i % g {
                        0 => lo,
                        1 => hi,
                        _ => lo + (hi - lo) * u.abs(),
                    }
                }
                _ => {
                    // All positive, or all negative, per group (mins of 0 with double quantization).
                    let sign = if (i / g).is_multiple_of(2) { 1.0 } else { -1.0 };
                    sign * (1.5 + u)
                }
            }
        })
        .collect()
}

/// Equal up to summation order (relative 1e-5), plus what squaring in f32 may
/// lose (each square below f32's smallest normal can flush to 0); an
/// overflowed sum is never close to a finite one.
pub fn close(a: f64, b: f64, count: u64) -> bool {
    if a.is_finite() != b.is_finite() {
        return a == b || (a.is_nan() && b.is_nan());
    }
    let floor = count as f64 * f32::MIN_POSITIVE as f64;
    a == b || (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + floor || (a.is_nan() && b.is_nan())
}

/// Asserts that `got` (from `isa`) has `want`'s counts and max error exactly,
/// and its error sums up to summation order ([`close`]).
pub fn compare_stats(isa: Isa, what: &str, want: &ErrorStats, got: &ErrorStats) {
    let counts = |s: &ErrorStats| {
        (
            s.count,
            s.nonfinite,
            s.first_nonfinite,
            s.overflowed_groups,
            s.zeroed_groups,
        )
    };
    assert_eq!(counts(want), counts(got), "{isa} {what}: counts");
    assert_eq!(
        want.max_abs_err.to_bits(),
        got.max_abs_err.to_bits(),
        "{isa} {what}: max abs error {} vs {}",
        want.max_abs_err,
        got.max_abs_err
    );
    assert!(
        close(want.sum_sq_err, got.sum_sq_err, want.count),
        "{isa} {what}: sum sq err {} vs {}",
        want.sum_sq_err,
        got.sum_sq_err
    );
    assert!(
        close(want.sum_sq, got.sum_sq, want.count),
        "{isa} {what}: sum sq {} vs {}",
        want.sum_sq,
        got.sum_sq
    );
}

/// The SIMD implementations this CPU runs; each one it lacks is reported as SKIPPED.
pub fn simd_isas() -> Vec<Isa> {
    let mut v = Vec::new();
    for isa in Isa::ALL.into_iter().filter(|&i| i != Isa::Scalar) {
        if isa.is_available() {
            v.push(isa);
        } else {
            eprintln!("SKIPPED: {isa} is not supported by this CPU; its kernels were not tested");
        }
    }
    v
}
