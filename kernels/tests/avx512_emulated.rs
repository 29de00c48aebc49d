//! The AVX-512 kernels against the scalar specification on an emulated CPU,
//! for hosts without AVX-512 (where `simd_vs_scalar` must skip them).
//!
//! The cases are those of `simd_vs_scalar`, from the same module (`cases`).
//! Codes, scales and mins must be bit-identical to the scalar run, error
//! statistics equal up to summation order. The AVX2 kernels run on the emulator too, first: they are known to
//! match natively, so a mismatch there is the harness's fault, not a kernel's.
//! On a host with AVX-512 the native test covers it and this one says so.
//!
//! x86_64 Linux only: the harness reads this process's memory through `/proc`.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

mod adversarial;
mod cases;
mod emu;
use cases::{batch_cases, compare, group_cases, inputs, long_cases, Case, Outputs};
use emu::{emulate_or_skip, Job};

use shrinkray_kernels::{Isa, QuantFormat, ScaleDtype, Scheme};

/// Runs `cases` on the scalar specification natively and on `isas` under emulation, and
/// compares; false when there is no emulator (the test is then SKIPPED).
fn check(what: &str, isas: &[Isa], cases: &[Case]) -> bool {
    let want: Vec<Outputs> = cases.iter().map(|c| c.run(Isa::Scalar)).collect();
    for &isa in isas {
        let mut got: Vec<Outputs> = cases
            .iter()
            .map(|c| Outputs::sized(&c.fmt, c.k, c.src().len()))
            .collect();
        let mut jobs: Vec<Job> = cases
            .iter()
            .zip(got.iter_mut())
            .map(|(c, o)| Job::new(isa, c.fmt, c.k, c.src(), o))
            .collect();
        if emulate_or_skip(&format!("{what} on {isa}"), &mut jobs, false).is_none() {
            return false;
        }
        for ((c, w), (g, j)) in cases.iter().zip(&want).zip(got.iter_mut().zip(&jobs)) {
            g.stats = *j.stats();
            compare(isa, &c.what, w, g);
        }
    }
    true
}

/// The ISAs to emulate, or none when the host runs AVX-512 itself.
fn emulated_isas() -> Vec<Isa> {
    if Isa::Avx512.is_available() {
        eprintln!("this CPU has AVX-512: simd_vs_scalar tests it natively; not emulated");
        vec![]
    } else {
        vec![Isa::Avx2, Isa::Avx512]
    }
}

#[test]
fn every_case_of_simd_vs_scalar_on_the_emulated_cpu() {
    let isas = emulated_isas();
    if isas.is_empty() {
        return;
    }
    let mut cases = Vec::new();
    for g in [1, 2, 7, 8, 16, 24, 32] {
        group_cases(g, 3 * g + 7, &mut cases);
    }
    group_cases(0, 300, &mut cases);
    long_cases(&mut cases);
    if !check("small, per-row and long groups", &isas, &cases) {
        return;
    }
    for g in [64, 128, 256] {
        let mut cases = Vec::new();
        group_cases(g, 3 * g + 7, &mut cases);
        check(
            &format!("group {g}, lengths 0..={}", 3 * g + 7),
            &isas,
            &cases,
        );
    }
    for g in [16, 32, 64, 128, 256] {
        let mut cases = Vec::new();
        batch_cases(g, &mut cases);
        check(&format!("rows of full groups of {g}"), &isas, &cases);
    }
}

/// Instructions each SIMD path executes per element on the emulated CPU, for 16 rows
/// of 4096 (groups of 64, F16 scales): a proxy for speed where the hardware is missing,
/// not a measurement of time. Slow (a callback per instruction); run it with
/// `cargo test --release -p shrinkray-kernels --test avx512_emulated -- --ignored --nocapture`.
#[test]
#[ignore]
fn instructions_per_element() {
    let (rows, k) = (16, 4096);
    let v = adversarial::values(0, rows * k, 64, &mut adversarial::Bits(3));
    for scheme in [Scheme::Int8Sym, Scheme::Int4Asym] {
        for (input, name) in inputs(&v) {
            let fmt = QuantFormat {
                dq: None,
                scheme,
                group: 64,
                scale_dtype: ScaleDtype::F16,
            };
            let c = Case {
                what: format!("{scheme} g64 {name} {rows}x{k}"),
                fmt,
                k,
                input,
                off: 0,
            };
            let want = c.run(Isa::Scalar);
            let mut line = c.what.clone();
            for isa in [Isa::Avx2, Isa::Avx512] {
                let mut got = Outputs::sized(&fmt, k, rows * k);
                let mut jobs = [Job::new(isa, fmt, k, c.src(), &mut got)];
                let Some(report) = emulate_or_skip(&c.what, &mut jobs, true) else {
                    return;
                };
                got.stats = *jobs[0].stats();
                compare(isa, &c.what, &want, &got);
                let report: serde_json::Value =
                    serde_json::from_str(&report).expect("the emulator's report is JSON");
                let n = report["instructions"]
                    .as_f64()
                    .expect("an instruction count in the emulator's report");
                line += &format!(", {isa} {:.3} instructions/element", n / (rows * k) as f64);
            }
            eprintln!("{line}");
        }
    }
}
