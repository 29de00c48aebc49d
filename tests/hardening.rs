//! Hardening beyond malformed headers: scales that do not fit their dtype,
//! `--no-mmap`, a full disk, free-space warnings, and bounded memory on a
//! checkpoint past 4 GiB.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command as StdCommand;

use predicates::prelude::*;
use safetensors::Dtype;

mod support;
use support::*;

fn write_f32(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let list: Vec<_> = tensors
        .iter()
        .map(|(n, shape, v)| {
            (
                n.to_string(),
                Dtype::F32,
                shape.clone(),
                shrinkray::synth::encode(v, Dtype::F32),
            )
        })
        .collect();
    shrinkray::synth::write(path, &list, &[]).unwrap();
}

/// A header-only F32 checkpoint whose data is a hole (a sparse file), with
/// `filled` bytes of real values at the start of each tensor.
fn sparse_checkpoint(path: &Path, tensors: &[(String, Vec<usize>)], filled: usize) {
    let mut header = serde_json::Map::new();
    let mut at = 0u64;
    for (name, shape) in tensors {
        let n = shape.iter().product::<usize>() as u64 * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [at, at + n]}),
        );
        at += n;
    }
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut f = File::create(path).unwrap();
    f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    let data_start = 8 + text.len() as u64;
    f.set_len(data_start + at).unwrap();
    if filled > 0 {
        let values = shrinkray::bench::synthetic(filled / 4, Dtype::F32);
        let mut at = data_start;
        for (_, shape) in tensors {
            f.write_all_at(&values, at).unwrap();
            at += shape.iter().product::<usize>() as u64 * 4;
        }
    }
}

#[test]
fn scales_beyond_f16_are_stored_in_f32_for_that_tensor_only() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let wave = |amp: f32| -> Vec<f32> {
        (0..4 * 64)
            .map(|i| amp * ((i * 37 % 101) as f32 / 50.0 - 1.0))
            .collect()
    };
    write_f32(
        &input,
        &[
            ("big", vec![4, 64], wave(1.0e6)), // scale 2e6/15 > 65504
            ("normal", vec![4, 64], wave(1.0)),
            ("tiny", vec![4, 64], wave(1.0e-9)), // scale ~1e-10 rounds to 0 in F16
        ],
    );
    let out = dir.path().join("q.safetensors");
    let r = quantize_json(&input, &out, &[]);
    let sdt = |i: usize| r["tensors"][i]["scale_dtype"].as_str().unwrap().to_string();
    assert_eq!(
        (sdt(0), sdt(1), sdt(2)),
        ("F32".into(), "F16".into(), "F32".into())
    );
    assert_eq!(
        r["totals"]["output_bytes_actual"],
        r["totals"]["output_bytes_predicted"]
    );
    assert_eq!(
        r["totals"]["output_bytes_actual"].as_u64().unwrap(),
        std::fs::metadata(&out).unwrap().len()
    );
    let warnings = r["warnings"].to_string();
    assert!(
        warnings.contains("big: scales stored in F32, not F16: 4 group(s) beyond its range"),
        "{warnings}"
    );
    assert!(
        warnings.contains("tiny: scales stored in F32, not F16: 0 group(s) beyond its range, 4 whose scale rounds to 0"),
        "{warnings}"
    );
    // Every tensor decodes within int4's error, the tiny one included.
    let v = shrinkray()
        .args(["verify", "--json", "--max-rel-error", "0.1"])
        .arg(&input)
        .arg(&out)
        .assert()
        .success();
    let v = json(&v.get_output().stdout);
    for t in v["tensors"].as_array().unwrap() {
        let rel = t["error"]["rel_error"].as_f64().unwrap();
        assert!(rel > 0.0 && rel < 0.1, "{t}");
    }
    assert_eq!(listing(dir.path()), vec!["in.safetensors", "q.safetensors"]);
}

#[test]
fn double_quantized_factors_are_widened_only_when_they_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let wave = |amp: f32| -> Vec<f32> {
        (0..4 * 64)
            .map(|i| amp * ((i * 37 % 101) as f32 / 50.0 - 1.0))
            .collect()
    };
    write_f32(
        &input,
        &[
            ("big", vec![4, 64], wave(1.0e6)), // factors 2e6/15/63 and 1e6/63 fit F16
            ("normal", vec![4, 64], wave(1.0)),
            ("tiny", vec![4, 64], wave(1.0e-9)), // factor ~1e-12 rounds to 0 in F16
        ],
    );
    let out = dir.path().join("q.safetensors");
    let r = quantize_json(&input, &out, &["--scale-bits", "6", "--group-size", "16"]);
    let sdt = |i: usize| r["tensors"][i]["scale_dtype"].as_str().unwrap().to_string();
    assert_eq!(
        (sdt(0), sdt(1), sdt(2)),
        ("F16".into(), "F16".into(), "F32".into())
    );
    assert_eq!(
        r["totals"]["output_bytes_actual"].as_u64().unwrap(),
        std::fs::metadata(&out).unwrap().len()
    );
    let warnings = r["warnings"].to_string();
    assert!(
        warnings.contains("tiny: scales stored in F32"),
        "{warnings}"
    );
    assert!(!warnings.contains("big:"), "{warnings}");
    let v = shrinkray()
        .args(["verify", "--json", "--max-rel-error", "0.1"])
        .arg(&input)
        .arg(&out)
        .assert()
        .success();
    let v = json(&v.get_output().stdout);
    for t in v["tensors"].as_array().unwrap() {
        let rel = t["error"]["rel_error"].as_f64().unwrap();
        assert!(rel > 0.0 && rel < 0.1, "{t}");
    }
}

#[test]
fn a_group_beyond_f32_is_an_error_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let mut v = vec![0.0f32; 2 * 64];
    v[3] = 3.0e38;
    v[9] = -3.0e38; // max − min overflows f32
    write_f32(&input, &[("huge", vec![2, 64], v)]);
    let before = std::fs::read(&input).unwrap();
    shrinkray()
        .arg("quantize")
        .arg(&input)
        .arg("-o")
        .arg(dir.path().join("q.safetensors"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("in.safetensors"))
        .stderr(predicate::str::contains(
            "tensor `huge`: 1 group(s) need a scale or min beyond the range of F32",
        ));
    assert_eq!(listing(dir.path()), vec!["in.safetensors"]);
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn no_mmap_reads_write_the_same_bytes_and_refuse_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for (out, extra) in [(&a, None), (&b, Some("--no-mmap"))] {
        shrinkray()
            .arg("quantize")
            .arg(fixture("llama-f16"))
            .arg("-o")
            .arg(out)
            .args(extra)
            .assert()
            .success();
    }
    let names = listing(&a);
    assert_eq!(names.len(), 3, "two shards and the index");
    assert_eq!(names, listing(&b));
    for n in &names {
        assert_eq!(
            std::fs::read(a.join(n)).unwrap(),
            std::fs::read(b.join(n)).unwrap(),
            "{n}"
        );
    }

    // Malformed files: the same refusal either way.
    let good = std::fs::read(fixture("llama-bf16.safetensors")).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut huge_len = good.clone();
    huge_len[..8].copy_from_slice(&(200_000_000u64).to_le_bytes());
    let mut past_end = good.clone();
    past_end[..8].copy_from_slice(&((good.len() as u64) + 1).to_le_bytes());
    let mut bad_offsets = good.clone();
    let text = String::from_utf8(good[8..8 + n].to_vec()).unwrap();
    let moved = text.replacen("\"data_offsets\":[0,", "\"data_offsets\":[2,", 1);
    assert_ne!(moved, text);
    bad_offsets[8..8 + n].copy_from_slice(moved.as_bytes());
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "short",
            good[..5].to_vec(),
            "too short for the 8-byte header length",
        ),
        ("cap", huge_len, "over the 100 MB cap"),
        ("past-end", past_end, "runs past the end of the file"),
        (
            "truncated",
            good[..good.len() - 1].to_vec(),
            "does not end exactly at the end",
        ),
        ("offsets", bad_offsets, "`lm_head.weight`"),
    ];
    for (name, bytes, message) in cases {
        let path = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&path, &bytes).unwrap();
        for extra in [None, Some("--no-mmap")] {
            shrinkray()
                .arg("quantize")
                .arg(&path)
                .arg("-o")
                .arg(dir.path().join("out.safetensors"))
                .args(extra)
                .assert()
                .code(1)
                .stderr(predicate::str::contains(format!("{name}.safetensors")))
                .stderr(predicate::str::contains(message));
        }
        assert!(!dir.path().join("out.safetensors").exists(), "{name}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name}");
    }
}

#[test]
fn a_full_disk_stops_the_run_and_leaves_nothing() {
    if StdCommand::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: prlimit (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.safetensors");
    // The output is about 250 KB; the file-size limit stops the writes at 100 KB.
    let run = StdCommand::new("prlimit")
        .arg("--fsize=100000")
        .arg("--")
        .arg(assert_cmd::cargo::cargo_bin("shrinkray"))
        .arg("quantize")
        .arg(fixture("llama-bf16.safetensors"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the file size limit (ulimit -f) is below the 245.27 KiB this file needs"),
        "{stderr}"
    );
    assert!(stderr.contains("q.safetensors"), "{stderr}");
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn dry_run_warns_when_the_destination_lacks_space() {
    let dir = tempfile::tempdir().unwrap();
    let free = shrinkray::writer::free_space(dir.path()).expect("statvfs works here");
    // int8 per row keeps about a quarter of F32: five times the free space in
    // (a sparse file: only its header is read) is more than the space left.
    let k = 4096usize;
    let rows = (free * 5).div_ceil(4 * k as u64) as usize;
    let input = dir.path().join("huge.safetensors");
    sparse_checkpoint(&input, &[("w".into(), vec![rows, k])], 0);
    let run = shrinkray()
        .args([
            "quantize",
            "--dry-run",
            "--json",
            "--scheme",
            "int8",
            "--group-size",
            "row",
        ])
        .arg(&input)
        .arg("-o")
        .arg(dir.path().join("q.safetensors"))
        .assert()
        .success();
    let r = json(&run.get_output().stdout);
    let predicted = r["totals"]["output_bytes_predicted"].as_u64().unwrap();
    assert!(predicted > free);
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("free, below the"), "{warnings}");
    assert!(warnings.contains("this output needs"), "{warnings}");
    // Enough room: no warning.
    let small = dir.path().join("small.safetensors");
    std::fs::copy(fixture("llama-bf16.safetensors"), &small).unwrap();
    let run = shrinkray()
        .args(["quantize", "--dry-run", "--json"])
        .arg(&small)
        .arg("-o")
        .arg(dir.path().join("q.safetensors"))
        .assert()
        .success();
    assert_eq!(
        json(&run.get_output().stdout)["warnings"],
        serde_json::json!([])
    );
}

/// Peak memory stays bounded on a checkpoint past 4 GiB: 17 tensors of
/// 256 MiB (sparse; 1 MiB of real values at the start of each).
#[test]
fn peak_memory_is_bounded_on_a_checkpoint_past_4_gib() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.safetensors");
    let tensors: Vec<(String, Vec<usize>)> = (0..17)
        .map(|i| (format!("layer{i}.weight"), vec![8192, 8192]))
        .collect();
    sparse_checkpoint(&input, &tensors, 1 << 20);
    assert!(std::fs::metadata(&input).unwrap().len() > 4 << 30);
    let out = dir.path().join("q.safetensors");
    let r = quantize_json(&input, &out, &[]);
    let rss = r["peak_rss_bytes"].as_u64().expect("Linux reports VmHWM");
    let largest_out = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["output_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    eprintln!(
        "peak RSS {} MiB for {} MiB in, largest tensor output {} MiB",
        rss >> 20,
        std::fs::metadata(&input).unwrap().len() >> 20,
        largest_out >> 20
    );
    assert!(
        rss < (256 << 20) + largest_out,
        "peak RSS {rss} bytes is over 256 MiB + {largest_out}"
    );
    assert_eq!(
        r["totals"]["output_bytes_actual"].as_u64().unwrap(),
        std::fs::metadata(&out).unwrap().len()
    );
}
