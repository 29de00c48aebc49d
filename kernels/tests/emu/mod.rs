//! Runs kernels on an emulated CPU, for instruction sets this host lacks.
//!
//! `bochs_call.py` (beside this file) runs one function of this very process
//! on Bochs's x86_64 CPU, which implements AVX-512, through the
//! `bochscpu-python` package: it mirrors this process's memory page by page,
//! executes `run_jobs`, and writes back the bytes the call changed. This
//! process blocks until it is done, then checks the outputs natively.
//!
//! The interpreter is `$SHRINKRAY_BOCHS_PYTHON`, else `python3`. Without the
//! package the caller reports the test as SKIPPED, unless
//! `SHRINKRAY_REQUIRE_EMULATOR=1` (set by `.ci/run`) makes that a failure.
#![allow(dead_code)] // each test file uses what it needs

use std::path::Path;
use std::process::Command;

use half::{bf16, f16};
use shrinkray_kernels::{ErrorStats, Isa, QuantFormat, RowsOut, Src};

use crate::cases::Outputs;

/// One call of [`shrinkray_kernels::quantize_rows_unchecked`], as `run_jobs` takes it:
/// plain pointers, so that the emulated call allocates nothing.
pub struct Job {
    isa: Isa,
    fmt: QuantFormat,
    k: usize,
    dtype: u8,
    src: *const u8,
    len: usize,
    codes: *mut u8,
    codes_len: usize,
    scales: *mut u8,
    scales_len: usize,
    mins: *mut u8,
    mins_len: usize,
    stats: ErrorStats,
}

impl Job {
    /// A job quantizing `src` into `out` (both must outlive the emulated call).
    pub fn new(isa: Isa, fmt: QuantFormat, k: usize, src: Src<'_>, out: &mut Outputs) -> Job {
        let (dtype, ptr, len) = match src {
            Src::F32(x) => (0, x.as_ptr() as *const u8, x.len()),
            Src::F16(x) => (1, x.as_ptr() as *const u8, x.len()),
            Src::BF16(x) => (2, x.as_ptr() as *const u8, x.len()),
        };
        Job {
            isa,
            fmt,
            k,
            dtype,
            src: ptr,
            len,
            codes: out.codes.as_mut_ptr(),
            codes_len: out.codes.len(),
            scales: out.scales.as_mut_ptr(),
            scales_len: out.scales.len(),
            mins: out.mins.as_mut_ptr(),
            mins_len: out.mins.len(),
            stats: ErrorStats::default(),
        }
    }

    /// The statistics the call returned.
    pub fn stats(&self) -> &ErrorStats {
        &self.stats
    }
}

/// Runs every job; this is the function the emulator executes.
extern "C" fn run_jobs(jobs: *mut Job, n: usize) {
    // SAFETY: `emulate` passes a live, exclusively borrowed slice of `n` jobs.
    let jobs = unsafe { std::slice::from_raw_parts_mut(jobs, n) };
    for j in jobs {
        // SAFETY: `Job::new` took these pointers and lengths from live slices that its
        // caller keeps alive and untouched until `emulate` returns.
        let (src, out) = unsafe {
            let src = match j.dtype {
                0 => Src::F32(std::slice::from_raw_parts(j.src as *const f32, j.len)),
                1 => Src::F16(std::slice::from_raw_parts(j.src as *const f16, j.len)),
                _ => Src::BF16(std::slice::from_raw_parts(j.src as *const bf16, j.len)),
            };
            let out = RowsOut {
                codes: std::slice::from_raw_parts_mut(j.codes, j.codes_len),
                scales: std::slice::from_raw_parts_mut(j.scales, j.scales_len),
                mins: std::slice::from_raw_parts_mut(j.mins, j.mins_len),
                super_scales: &mut [],
                super_mins: &mut [],
            };
            (src, out)
        };
        // SAFETY: the emulated CPU implements every instruction set the tests pass.
        j.stats =
            unsafe { shrinkray_kernels::quantize_rows_unchecked(j.isa, &j.fmt, j.k, src, out) };
    }
}

/// Why the jobs did not run.
#[derive(Debug)]
pub enum Failure {
    /// No emulator here (the message says why).
    Unavailable(String),
    /// The emulated call faulted, or the harness failed.
    Failed(String),
}

/// Runs `jobs` on the emulated CPU; on success every job's outputs and statistics are
/// filled, and the emulator's report (JSON) is returned. `count_instructions` adds the
/// number of instructions executed to it (slow: a callback per instruction).
pub fn emulate(jobs: &mut [Job], count_instructions: bool) -> Result<String, Failure> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emu/bochs_call.py");
    let python = std::env::var("SHRINKRAY_BOCHS_PYTHON").unwrap_or_else(|_| "python3".into());
    // The emulated call's stack: 1 MiB of this process, 16-byte aligned at the call.
    let stack = vec![0u8; 1 << 20];
    let rsp = ((stack.as_ptr() as usize + stack.len()) & !15) - 8;
    let fs_base: usize;
    // SAFETY: on x86_64 Linux the first word of the thread control block, at fs:0, is the
    // block's own address (the FS base); reading it has no side effect.
    unsafe { std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) fs_base) };
    let out = Command::new(&python)
        .env(
            "BOCHS_COUNT_INSTRUCTIONS",
            if count_instructions { "1" } else { "0" },
        )
        .arg(&script)
        .arg(std::process::id().to_string())
        .arg(fs_base.to_string())
        .arg((run_jobs as extern "C" fn(*mut Job, usize) as usize).to_string())
        .arg(rsp.to_string())
        .arg((jobs.as_mut_ptr() as usize).to_string())
        .arg(jobs.len().to_string())
        .output()
        .map_err(|e| Failure::Unavailable(format!("cannot run {python}: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Some(3) => Err(Failure::Unavailable(stderr)),
        _ => Err(Failure::Failed(format!("{} ({})", stderr, out.status))),
    }
}

/// [`emulate`], where an unavailable emulator is a SKIPPED message (or a failure under
/// `SHRINKRAY_REQUIRE_EMULATOR=1`) and a failed run a panic; returns the emulator's
/// report when the jobs ran.
pub fn emulate_or_skip(what: &str, jobs: &mut [Job], count_instructions: bool) -> Option<String> {
    match emulate(jobs, count_instructions) {
        Ok(report) => {
            eprintln!("{what}: {} jobs on the emulated CPU: {report}", jobs.len());
            Some(report)
        }
        Err(Failure::Unavailable(why)) => {
            if std::env::var("SHRINKRAY_REQUIRE_EMULATOR").is_ok_and(|v| v == "1") {
                panic!(
                    "{what}: SHRINKRAY_REQUIRE_EMULATOR=1 but the emulator is unavailable: {why}"
                );
            }
            eprintln!(
                "SKIPPED: {what}: no CPU emulator ({why}); install it with \
                 `pip install bochscpu-python` (README, \"Kernels this CPU cannot run\")"
            );
            None
        }
        Err(Failure::Failed(why)) => panic!("{what}: the emulated run failed: {why}"),
    }
}
