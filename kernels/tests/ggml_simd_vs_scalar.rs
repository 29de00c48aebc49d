//! The SIMD paths of the ggml block kernels against the scalar specification
//! (`ggml::quantize_blocks`): block bytes (codes and the stored f16 `d`/`m`)
//! bit-identical, counts, flags and `max_abs_err` identical, `sum_sq_err` and
//! `sum_sq` equal up to summation order. Every type, lengths of 0..=9 blocks,
//! misaligned input and output slices, adversarial blocks, long mixed inputs
//! (eight-block batches holding blocks the vector code hands to the scalar
//! code), a fixed-seed proptest sweep, and the gguf-py golden vectors through
//! the SIMD path. F16 and BF16 sources (`quantize_blocks_src`): every 16-bit
//! pattern, the adversarial kinds rounded to 16 bits, 16-bit edge values and
//! misaligned slices, through the scalar and SIMD paths against the
//! specification on the converted f32 values. An instruction set this CPU lacks is reported as SKIPPED on
//! stderr.

use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::Value;
use shrinkray_kernels::ggml::{
    quantize_blocks, quantize_blocks_src, quantize_blocks_with, GgmlType,
};
use shrinkray_kernels::{ErrorStats, Isa, Src};

mod golden;
use golden::{golden, hex, input, mask_q4_1_signs};

const QK: usize = 32;

/// The SIMD implementations this CPU runs (each missing one reported as SKIPPED).
fn simd_isas() -> Vec<Isa> {
    let mut v = Vec::new();
    for isa in Isa::ALL.into_iter().filter(|&i| i != Isa::Scalar) {
        if isa.is_available() {
            v.push(isa);
        } else {
            eprintln!("SKIPPED: {isa} not available");
        }
    }
    v
}

/// A deterministic stream of bits (SplitMix64).
struct Bits(u64);

impl Bits {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn sign(&mut self) -> f32 {
        if self.next() & 1 == 0 {
            1.0
        } else {
            -1.0
        }
    }
    /// Student-t-ish, with the occasional large outlier.
    fn heavy(&mut self) -> f32 {
        let a = self.unit() + self.unit() + self.unit() + self.unit();
        let w = self.unit();
        let v = a / (0.05 + w * w);
        if self.below(61) == 0 {
            v * 40.0
        } else {
            v
        }
    }
}

/// One `f32` ulp away from zero (`up`) or towards it (`v` finite and nonzero).
fn nudge(v: f32, up: bool) -> f32 {
    let b = v.to_bits();
    f32::from_bits(if up { b + 1 } else { b - 1 })
}

/// Adversarial block kinds; `KINDS` itself means "each block of a random kind".
const KINDS: usize = 18;

/// One block of kind `kind`.
fn block(kind: usize, r: &mut Bits) -> [f32; QK] {
    let mut b = [0f32; QK];
    match kind {
        0 => b.iter_mut().for_each(|v| *v = r.heavy() * 0.02),
        // Zeros of both signs.
        1 => b.iter_mut().for_each(|v| *v = [0.0, -0.0][r.below(2)]),
        // Zeros that are the min (or max) of a block: +0 and −0 in some order.
        2 => {
            let s = r.sign();
            b.iter_mut()
                .for_each(|v| *v = s * (r.unit().abs() + 0.001) * 3.0);
            let sub = r.below(4);
            for (i, v) in b.iter_mut().enumerate() {
                if r.below(4) == 0 || i == 31 {
                    *v = match sub {
                        0 => 0.0,
                        1 => -0.0,
                        _ => [0.0, -0.0][r.below(2)],
                    };
                }
            }
            if sub == 3 {
                b[0] = -b[0]; // a value of the other sign first
            }
        }
        // Constants, of any sign and magnitude.
        3 => {
            let c = r.unit() * 2f32.powi(r.below(80) as i32 - 40);
            b.iter_mut().for_each(|v| *v = c);
        }
        // Q8_0 ties: max 127·s, the rest (k + 1/2)·s, some one ulp off.
        4 => {
            let s = 2f32.powi(r.below(40) as i32 - 20);
            for v in b.iter_mut() {
                let t = (r.below(254) as f32 - 127.0 + 0.5) * s;
                *v = match r.below(4) {
                    0 => nudge(t, true),
                    1 => nudge(t, false),
                    _ => t,
                };
            }
            b[r.below(QK)] = 127.0 * s * r.sign();
        }
        // Q4_0 ties: max ±8·s (first of either sign), the rest (k + 1/2)·s.
        5 => {
            let s = 2f32.powi(r.below(40) as i32 - 20);
            for v in b.iter_mut() {
                let t = (r.below(16) as f32 - 8.0 + 0.5) * s;
                *v = match r.below(4) {
                    0 => nudge(t, true),
                    1 => nudge(t, false),
                    _ => t,
                };
            }
            b[r.below(QK)] = 8.0 * s * r.sign();
            if r.below(2) == 0 {
                b[r.below(QK)] = 8.0 * s * r.sign();
            }
        }
        // Q4_1 ties: min m, max m + 15·s, the rest m + (k + 1/2)·s.
        6 => {
            let s = 2f32.powi(r.below(30) as i32 - 15);
            let m = (r.below(64) as f32 - 32.0) * s;
            for v in b.iter_mut() {
                let t = m + (r.below(15) as f32 + 0.5) * s;
                *v = match r.below(4) {
                    0 => nudge(t, true),
                    1 => nudge(t, false),
                    _ => t,
                };
            }
            b[r.below(QK)] = m;
            b[r.below(QK)] = m + 15.0 * s;
        }
        // f32 subnormals and the smallest normals: d subnormal, 1/d finite or not.
        7 => {
            let e = r.below(40) as i32 - 150;
            b.iter_mut().for_each(|v| *v = r.unit() * 2f32.powi(e));
            if r.below(2) == 0 {
                b[r.below(QK)] = f32::MIN_POSITIVE * r.sign();
            }
        }
        // Huge values, and values either side of 2^60.
        8 => {
            let big = [1e30, 3e38, f32::MAX, 2f32.powi(60), 1e18, 1.2e18, 1e19];
            let c = big[r.below(big.len())];
            for v in b.iter_mut() {
                *v = match r.below(4) {
                    0 => c * r.sign(),
                    1 => nudge(c, r.below(2) == 0) * r.sign(),
                    2 => r.unit() * c,
                    _ => r.unit(),
                };
            }
        }
        // f16 boundaries of d (and of the Q4_1 range): overflow, the last finite, subnormal
        // d, ties between f16 subnormals, and d that flushes to 0.
        9 => {
            let ds = [
                65504.0,
                65519.0,
                65520.0,
                65536.0,
                1e5,
                2f32.powi(-14),
                2f32.powi(-24),
                2f32.powi(-25),
                3.0 * 2f32.powi(-25),
                1e-9,
                1e-30,
            ];
            let per = [127.0, 8.0, 15.0][r.below(3)];
            let amax = ds[r.below(ds.len())] * per * (1.0 + r.unit() * 2f32.powi(-9));
            b.iter_mut().for_each(|v| *v = r.unit() * amax);
            b[r.below(QK)] = amax * r.sign();
        }
        // Q4_1's m beyond f16, with a small range.
        10 => {
            let cs = [65504.0, 65519.99, 65520.0, 70000.0, 1e5];
            let c = cs[r.below(cs.len())] * r.sign();
            let w = [0.0, 1.0, 100.0][r.below(3)];
            b.iter_mut().for_each(|v| *v = c + r.unit() * w);
        }
        // One outlier per block.
        11 => {
            b.iter_mut().for_each(|v| *v = r.unit() * 0.01);
            b[r.below(QK)] = 1000.0 * r.sign();
        }
        // NaN (several payloads) and ±Inf among ordinary values.
        12 => {
            for v in b.iter_mut() {
                *v = match r.below(10) {
                    0 => f32::NAN,
                    1 => f32::from_bits(0xFFC0_0001 ^ (r.next() as u32 & 0x803F_FFFF)),
                    2 => f32::INFINITY,
                    3 => f32::NEG_INFINITY,
                    _ => r.heavy(),
                };
            }
        }
        // The largest |x| several times, with both signs.
        13 => {
            let c = r.unit() * 10.0;
            b.iter_mut().for_each(|v| *v = r.unit() * c * 0.9);
            for _ in 0..1 + r.below(6) {
                b[r.below(QK)] = c * r.sign();
            }
        }
        // Values on the Q4_0 grid of a power-of-two d.
        14 => {
            let d = 2f32.powi(r.below(20) as i32 - 10);
            b.iter_mut()
                .for_each(|v| *v = d * (r.below(16) as f32 - 8.0));
            b[0] = -8.0 * d;
        }
        // Any bits at all.
        15 => b
            .iter_mut()
            .for_each(|v| *v = f32::from_bits(r.next() as u32)),
        // Any finite magnitude, one per block.
        16 => {
            let e = r.below(250) as i32 - 125;
            b.iter_mut()
                .for_each(|v| *v = r.heavy() * 2f32.powi(e).min(1e37));
        }
        // Scales near 1 with exact halves (ties for every type at once).
        _ => b
            .iter_mut()
            .for_each(|v| *v = (r.below(64) as f32 - 32.0) * 0.5),
    }
    b
}

/// `nblocks` blocks of kind `kind` (`KINDS`: a random kind per block).
fn blocks(kind: usize, nblocks: usize, r: &mut Bits) -> Vec<f32> {
    let mut x = Vec::with_capacity(nblocks * QK);
    for _ in 0..nblocks {
        let k = if kind == KINDS { r.below(KINDS) } else { kind };
        x.extend(block(k, r));
    }
    x
}

/// Equal up to summation order (relative 1e-5), plus what squaring in f32 may lose:
/// each square below f32's smallest normal can flush to 0. Both finite: the f64 sums of
/// f32 squares never overflow, so an infinite sum is an f32 overflow, not rounding.
fn close(a: f64, b: f64, count: u64) -> bool {
    let floor = count as f64 * f32::MIN_POSITIVE as f64;
    a.is_finite()
        && b.is_finite()
        && (a == b || (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + floor)
}

/// Quantizes `x` with the specification and with `isa`, into output slices starting
/// `out_off` bytes into a larger buffer, and returns the first difference, if any.
fn difference(isa: Isa, ty: GgmlType, x: &[f32], out_off: usize) -> Option<String> {
    let n = ty.row_bytes(x.len());
    let mut want = vec![0x5Au8; n + out_off + 3];
    let mut got = want.clone();
    let ws: ErrorStats = quantize_blocks(ty, x, &mut want[out_off..out_off + n]);
    let gs = quantize_blocks_with(isa, ty, x, &mut got[out_off..out_off + n]);
    compare(ty, x, out_off, (&want, &ws), (&got, &gs))
}

/// The first difference between the specification's output buffer and statistics (`want`)
/// and another implementation's (`got`) on the f32 input `x` (`out_off` as in [`difference`]).
fn compare(
    ty: GgmlType,
    x: &[f32],
    out_off: usize,
    (want, ws): (&[u8], &ErrorStats),
    (got, gs): (&[u8], &ErrorStats),
) -> Option<String> {
    if want != got {
        let bb = ty.block_bytes();
        let i = want.iter().zip(got).position(|(a, b)| a != b).unwrap();
        let blk = i.saturating_sub(out_off) / bb;
        let at = (out_off + blk * bb).min(want.len() - bb);
        return Some(format!(
            "bytes differ at {i} (block {blk}, input {:?})\n  want {:02x?}\n  got  {:02x?}",
            x.get(blk * QK..(blk + 1) * QK),
            &want[at..at + bb],
            &got[at..at + bb]
        ));
    }
    let counts = |s: &ErrorStats| {
        (
            s.count,
            s.nonfinite,
            s.first_nonfinite,
            s.overflowed_groups,
            s.zeroed_groups,
        )
    };
    if counts(ws) != counts(gs) {
        return Some(format!("counts: {:?} vs {:?}", counts(ws), counts(gs)));
    }
    if ws.max_abs_err.to_bits() != gs.max_abs_err.to_bits() {
        return Some(format!(
            "max abs err {:e} vs {:e}",
            ws.max_abs_err, gs.max_abs_err
        ));
    }
    if !close(ws.sum_sq_err, gs.sum_sq_err, ws.count) {
        return Some(format!(
            "sum sq err {:e} vs {:e}",
            ws.sum_sq_err, gs.sum_sq_err
        ));
    }
    if !close(ws.sum_sq, gs.sum_sq, ws.count) {
        return Some(format!("sum sq {:e} vs {:e}", ws.sum_sq, gs.sum_sq));
    }
    None
}

fn check(isa: Isa, ty: GgmlType, x: &[f32], out_off: usize, what: &str) {
    if let Some(d) = difference(isa, ty, x, out_off) {
        panic!("{isa} {} {what}: {d}", ty.name());
    }
}

/// `x` copied to start `off` elements into a fresh buffer (so its address is not 32-byte aligned).
fn misaligned(x: &[f32], off: usize) -> Vec<f32> {
    let mut v = vec![f32::NAN; off];
    v.extend_from_slice(x);
    v
}

#[test]
fn every_type_kind_length_and_offset() {
    let isas = simd_isas();
    let mut r = Bits(1);
    for ty in GgmlType::ALL {
        for kind in 0..=KINDS {
            for nblocks in 0..=9 {
                for off in [0, 1, 3, 7] {
                    let x = blocks(kind, nblocks, &mut r);
                    let buf = misaligned(&x, off);
                    for &isa in &isas {
                        let what = format!("kind {kind} blocks {nblocks} offset {off}");
                        check(isa, ty, &buf[off..], off % 3, &what);
                    }
                }
            }
        }
    }
}

/// Long inputs: eight-block batches with a block the vector code hands over, in every
/// position, and the tails after them.
#[test]
fn long_mixed_inputs() {
    let isas = simd_isas();
    let mut r = Bits(2);
    for ty in GgmlType::ALL {
        for (nblocks, kind) in [(64, 0), (67, KINDS), (257, KINDS), (1000, 16), (129, 2)] {
            for rep in 0..3 {
                let mut x = blocks(kind, nblocks, &mut r);
                // Plant a NaN, an Inf, a huge value or a tiny block at a few places.
                for _ in 0..rep * 3 {
                    let i = r.below(x.len());
                    x[i] = [f32::NAN, f32::INFINITY, 3e38, 1e-39][r.below(4)];
                }
                let off = rep;
                let buf = misaligned(&x, off);
                for &isa in &isas {
                    let what = format!("{nblocks} blocks of kind {kind}, rep {rep}");
                    check(isa, ty, &buf[off..], rep, &what);
                }
            }
        }
    }
}

/// Each adversarial kind in each of the eight positions of a batch, the others ordinary.
#[test]
fn every_kind_at_every_batch_position() {
    let isas = simd_isas();
    let mut r = Bits(3);
    for ty in GgmlType::ALL {
        for kind in 0..KINDS {
            for pos in 0..8 {
                let mut x = blocks(0, 16, &mut r);
                x[pos * QK..(pos + 1) * QK].copy_from_slice(&block(kind, &mut r));
                x[(8 + pos) * QK..(9 + pos) * QK].copy_from_slice(&block(kind, &mut r));
                for &isa in &isas {
                    check(isa, ty, &x, 0, &format!("kind {kind} at {pos}"));
                }
            }
        }
    }
}

/// Exhaustive small cases: every block made of two values from a list of edge values
/// (one at a chosen position, the other everywhere else).
#[test]
fn pairs_of_edge_values() {
    let isas = simd_isas();
    let edges = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -8.0,
        8.0,
        127.0,
        1e-39,
        -1e-39,
        f32::MIN_POSITIVE,
        1e-37,
        65520.0 * 127.0,
        65504.0 * 8.0,
        -65520.0,
        2f32.powi(60),
        f32::from_bits(2f32.powi(60).to_bits() - 1),
        -3e38,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ];
    for ty in GgmlType::ALL {
        let mut x = Vec::new();
        for &a in &edges {
            for &b in &edges {
                for pos in [0, 5, 31] {
                    let mut blk = [a; QK];
                    blk[pos] = b;
                    x.extend(blk);
                }
            }
        }
        for &isa in &isas {
            check(isa, ty, &x, 0, "edge pairs");
            // The same blocks one at a time (the single-block path).
            for (i, blk) in x.chunks(QK).enumerate() {
                check(isa, ty, blk, 0, &format!("edge pair block {i}"));
            }
        }
    }
}

/// Values the proptest sweep draws from: mostly ordinary numbers at one magnitude per
/// block, with halves, zeros, and (in some blocks) anything at all.
fn sweep_block() -> impl Strategy<Value = Vec<f32>> {
    let ordinary = prop_oneof![
        8 => -1.0f32..1.0,
        2 => (-16i32..16).prop_map(|k| k as f32 + 0.5),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
    ];
    let anything = prop_oneof![
        6 => -1.0f32..1.0,
        1 => any::<u32>().prop_map(f32::from_bits),
        1 => prop::sample::select(vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3e38,
            1e-39,
            0.0,
            -0.0,
        ]),
    ];
    let values = prop_oneof![
        5 => prop::collection::vec(ordinary, QK),
        1 => prop::collection::vec(anything, QK),
    ];
    (values, -140i32..80).prop_map(|(v, e)| {
        let m = 2f32.powi(e);
        v.into_iter().map(|x| x * m).collect()
    })
}

#[test]
fn proptest_sweep_with_a_fixed_seed() {
    let isas = simd_isas();
    if isas.is_empty() {
        return;
    }
    let config = Config {
        cases: 4000,
        failure_persistence: None,
        ..Config::default()
    };
    let seed: [u8; 32] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5A);
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let strategy = (
        0usize..3,
        0usize..8,
        prop::collection::vec(sweep_block(), 0..20),
    );
    runner
        .run(&strategy, |(t, off, blks)| {
            let ty = GgmlType::ALL[t];
            let x: Vec<f32> = blks.concat();
            let buf = misaligned(&x, off);
            for &isa in &isas {
                if let Some(d) = difference(isa, ty, &buf[off..], off % 2) {
                    return Err(TestCaseError::fail(format!("{isa} {}: {d}", ty.name())));
                }
            }
            Ok(())
        })
        .unwrap();
}

/// The golden bytes of gguf-py 0.19.0 through every SIMD path (as `ggml_golden.rs` checks
/// them through the specification), and the same statistics as the specification.
#[test]
fn golden_bytes_through_simd() {
    let isas = simd_isas();
    let g = golden();
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 44);
    for &isa in &isas {
        let mut checked = 0;
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let x = input(case);
            for ty in GgmlType::ALL {
                let mut want = hex(case[ty.name()].as_str().unwrap());
                let mut got = vec![0xA5; ty.row_bytes(x.len())];
                quantize_blocks_with(isa, ty, &x, &mut got);
                let ambiguous = case
                    .get("signed_zero_ambiguous")
                    .and_then(|m| m.get(ty.name()))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if ambiguous {
                    mask_q4_1_signs(&mut want);
                    mask_q4_1_signs(&mut got);
                }
                assert!(
                    got == want,
                    "{isa} {name} {}:\n  want {}\n  got  {}",
                    ty.name(),
                    case[ty.name()].as_str().unwrap(),
                    got.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
                check(isa, ty, &x, 0, name);
                checked += 1;
            }
        }
        assert_eq!(checked, 44 * 3);
    }
}

#[test]
fn scalar_isa_is_the_specification() {
    let mut r = Bits(4);
    let x = blocks(KINDS, 40, &mut r);
    for ty in GgmlType::ALL {
        let mut a = vec![0u8; ty.row_bytes(x.len())];
        let mut b = a.clone();
        let sa = quantize_blocks(ty, &x, &mut a);
        let sb = quantize_blocks_with(Isa::Scalar, ty, &x, &mut b);
        assert_eq!((a, sa), (b, sb));
    }
}

#[test]
fn simd_paths_panic_on_bad_lengths() {
    for isa in Isa::available() {
        for ty in GgmlType::ALL {
            let partial = std::panic::catch_unwind(|| {
                let mut out = vec![0u8; ty.block_bytes()];
                quantize_blocks_with(isa, ty, &[0.0; 33], &mut out);
            });
            assert!(partial.is_err(), "{isa} {}: partial block", ty.name());
            let wrong = std::panic::catch_unwind(|| {
                let mut out = vec![0u8; ty.block_bytes() + 1];
                quantize_blocks_with(isa, ty, &[0.0; 32], &mut out);
            });
            assert!(wrong.is_err(), "{isa} {}: output length", ty.name());
        }
    }
}

// ---- F16 and BF16 sources -------------------------------------------------------------

/// A 16-bit float input, owned, with `off` leading elements that are not part of it.
enum Halves {
    F16(Vec<f16>, usize),
    BF16(Vec<bf16>, usize),
}

impl Halves {
    /// `bits` as f16 (`bf == false`) or bf16, after `off` NaN elements (misaligning it).
    fn new(bf: bool, bits: &[u16], off: usize) -> Halves {
        let all = std::iter::repeat_n(0x7E01u16, off).chain(bits.iter().copied());
        if bf {
            Halves::BF16(all.map(bf16::from_bits).collect(), off)
        } else {
            Halves::F16(all.map(f16::from_bits).collect(), off)
        }
    }
    fn src(&self) -> Src<'_> {
        match self {
            Halves::F16(v, off) => Src::F16(&v[*off..]),
            Halves::BF16(v, off) => Src::BF16(&v[*off..]),
        }
    }
    /// The input converted to f32 (exact).
    fn to_f32(&self) -> Vec<f32> {
        match self {
            Halves::F16(v, off) => v[*off..].iter().map(|h| h.to_f32()).collect(),
            Halves::BF16(v, off) => v[*off..].iter().map(|h| h.to_f32()).collect(),
        }
    }
    fn name(&self) -> &'static str {
        match self {
            Halves::F16(..) => "F16",
            Halves::BF16(..) => "BF16",
        }
    }
}

/// Compares `quantize_blocks_src` on `h`, for the scalar path (bytes and statistics
/// exactly) and every SIMD path (as [`difference`]), with the specification on the
/// converted values; returns the first difference.
fn half_difference(isas: &[Isa], ty: GgmlType, h: &Halves, out_off: usize) -> Option<String> {
    let x = h.to_f32();
    let n = ty.row_bytes(x.len());
    let mut want = vec![0x5Au8; n + out_off + 3];
    let ws = quantize_blocks(ty, &x, &mut want[out_off..out_off + n]);
    let mut got = vec![0x5Au8; n + out_off + 3];
    let ss = quantize_blocks_src(Isa::Scalar, ty, h.src(), &mut got[out_off..out_off + n]);
    if let Some(d) = compare(ty, &x, out_off, (&want, &ws), (&got, &ss)) {
        return Some(format!("scalar {}: {d}", h.name()));
    }
    let bits = |s: &ErrorStats| (s.sum_sq.to_bits(), s.sum_sq_err.to_bits());
    if bits(&ws) != bits(&ss) {
        return Some(format!("scalar {}: sums {ws:?} vs {ss:?}", h.name()));
    }
    for &isa in isas {
        let mut got = vec![0x5Au8; n + out_off + 3];
        let gs = quantize_blocks_src(isa, ty, h.src(), &mut got[out_off..out_off + n]);
        if let Some(d) = compare(ty, &x, out_off, (&want, &ws), (&got, &gs)) {
            return Some(format!("{isa} {}: {d}", h.name()));
        }
    }
    None
}

fn half_check(isas: &[Isa], ty: GgmlType, h: &Halves, out_off: usize, what: &str) {
    if let Some(d) = half_difference(isas, ty, h, out_off) {
        panic!("{} {what}: {d}", ty.name());
    }
}

/// f32 values rounded to f16 (`bf == false`) or bf16 bits (nearest even).
fn round_bits(bf: bool, x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|&v| {
            if bf {
                bf16::from_f32(v).to_bits()
            } else {
                f16::from_f32(v).to_bits()
            }
        })
        .collect()
}

/// Whether 16-bit `bits` are NaN or ±Inf.
fn nonfinite_bits(bf: bool, bits: u16) -> bool {
    let exp = if bf { 0x7F80 } else { 0x7C00 };
    bits & exp == exp
}

/// Every one of the 65536 patterns of each 16-bit type, in three orders: shuffled (most
/// blocks hold a NaN or ±Inf somewhere and take the scalar fallback), shuffled without
/// NaN/±Inf (replaced by other patterns), and sorted by magnitude (blocks of one
/// magnitude: the vector path, tiny blocks, huge ones), each at a few misalignments.
#[test]
fn f16_bf16_every_bit_pattern() {
    let isas = simd_isas();
    let mut r = Bits(10);
    for bf in [false, true] {
        let mut shuffled: Vec<u16> = (0..=u16::MAX).collect();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, r.below(i + 1));
        }
        let finite: Vec<u16> = shuffled
            .iter()
            .map(|&b| {
                let mut b = b;
                while nonfinite_bits(bf, b) {
                    b = r.next() as u16;
                }
                b
            })
            .collect();
        let mut sorted: Vec<u16> = (0..=u16::MAX).collect();
        sorted.sort_by_key(|&b| (b & 0x7FFF, r.below(2)));
        for (name, bits) in [
            ("shuffled", &shuffled),
            ("finite", &finite),
            ("sorted", &sorted),
        ] {
            for ty in GgmlType::ALL {
                for off in [0, 1, 7] {
                    let h = Halves::new(bf, bits, off);
                    half_check(&isas, ty, &h, off % 3, &format!("{name} offset {off}"));
                }
            }
        }
    }
}

/// The adversarial f32 kinds rounded to F16 and BF16, at every length of 0..=9 blocks and
/// a few misalignments, and long mixed inputs with planted NaN, ±Inf and extreme values.
#[test]
fn f16_bf16_adversarial_kinds() {
    let isas = simd_isas();
    let mut r = Bits(11);
    for bf in [false, true] {
        for ty in GgmlType::ALL {
            for kind in 0..=KINDS {
                for nblocks in 0..=9 {
                    for off in [0, 1, 3] {
                        let bits = round_bits(bf, &blocks(kind, nblocks, &mut r));
                        let h = Halves::new(bf, &bits, off);
                        let what = format!("kind {kind} blocks {nblocks} offset {off}");
                        half_check(&isas, ty, &h, off % 3, &what);
                    }
                }
            }
            for (nblocks, kind) in [(67, KINDS), (257, KINDS), (129, 2), (100, 0)] {
                for rep in 0..3 {
                    let mut bits = round_bits(bf, &blocks(kind, nblocks, &mut r));
                    // NaN (two kinds), ±Inf, the largest finite value, the smallest subnormal.
                    let planted: [u16; 6] = if bf {
                        [0x7FC0, 0xFF81, 0x7F80, 0xFF80, 0x7F7F, 0x0001]
                    } else {
                        [0x7E00, 0xFC01, 0x7C00, 0xFC00, 0x7BFF, 0x0001]
                    };
                    for _ in 0..rep * 4 {
                        let i = r.below(bits.len());
                        bits[i] = planted[r.below(planted.len())];
                    }
                    let h = Halves::new(bf, &bits, rep);
                    let what = format!("{nblocks} blocks of kind {kind}, rep {rep}");
                    half_check(&isas, ty, &h, rep, &what);
                }
            }
        }
    }
}

/// Blocks made of two 16-bit edge values (one at a chosen position, the other everywhere
/// else), whole and one block at a time: zeros of both signs, subnormals, the extremes of
/// each type (BF16's overflow F16 `d` and `m`; tiny ones zero it or overflow `1/d`),
/// NaN and ±Inf.
#[test]
fn f16_bf16_pairs_of_edge_values() {
    let isas = simd_isas();
    let f16_edges: [u16; 16] = [
        0x0000, 0x8000, 0x3C00, 0xBC00, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x5800,
        0xC800, 0x7C00, 0xFC00, 0x7E00, 0xFD00,
    ];
    let bf16_edges: [u16; 18] = [
        0x0000, 0x8000, 0x3F80, 0xBF80, 0x0001, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F, 0x5F80,
        0x5F7F, 0x477F, 0xC780, 0x7F80, 0xFF80, 0x7FC0, 0xFF81,
    ];
    for (bf, edges) in [(false, &f16_edges[..]), (true, &bf16_edges[..])] {
        let mut bits = Vec::new();
        for &a in edges {
            for &b in edges {
                for pos in [0, 5, 31] {
                    let mut blk = [a; QK];
                    blk[pos] = b;
                    bits.extend(blk);
                }
            }
        }
        for ty in GgmlType::ALL {
            half_check(&isas, ty, &Halves::new(bf, &bits, 1), 0, "edge pairs");
            for (i, blk) in bits.chunks(QK).enumerate() {
                let what = format!("edge pair block {i}");
                half_check(&isas, ty, &Halves::new(bf, blk, 0), 1, &what);
            }
        }
    }
}

/// F32 through `quantize_blocks_src` is `quantize_blocks_with`; bad lengths panic.
#[test]
fn src_f32_is_quantize_blocks_with_and_lengths_are_checked() {
    let mut r = Bits(12);
    let x = blocks(KINDS, 40, &mut r);
    for isa in Isa::available() {
        for ty in GgmlType::ALL {
            let mut a = vec![0u8; ty.row_bytes(x.len())];
            let mut b = a.clone();
            let sa = quantize_blocks_with(isa, ty, &x, &mut a);
            let sb = quantize_blocks_src(isa, ty, Src::F32(&x), &mut b);
            assert_eq!((a, sa), (b, sb), "{isa} {}", ty.name());
            for (n, bytes) in [(33, ty.block_bytes()), (32, ty.block_bytes() + 1)] {
                let h = vec![f16::ZERO; n];
                let hb = vec![bf16::ZERO; n];
                let bad = std::panic::catch_unwind(|| {
                    quantize_blocks_src(isa, ty, Src::F16(&h), &mut vec![0u8; bytes])
                });
                assert!(bad.is_err(), "{isa} {} F16 {n} → {bytes}", ty.name());
                let bad = std::panic::catch_unwind(|| {
                    quantize_blocks_src(isa, ty, Src::BF16(&hb), &mut vec![0u8; bytes])
                });
                assert!(bad.is_err(), "{isa} {} BF16 {n} → {bytes}", ty.name());
            }
        }
    }
}
