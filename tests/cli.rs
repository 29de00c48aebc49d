//! The binary end to end: every subcommand, `--json` output parsed, exit codes
//! (0 ok, 1 error, 2 usage, 3 verify failed), and that failures leave no output.

use std::path::{Path, PathBuf};

use predicates::prelude::*;
use serde_json::Value;

mod support;
use support::*;

#[test]
fn quantize_json_report_matches_the_file_and_the_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.safetensors");
    let input = fixture("llama-bf16.safetensors");
    let dry = shrinkray()
        .args(["quantize", "--dry-run", "--json"])
        .arg(&input)
        .assert()
        .success();
    let dry = json(&dry.get_output().stdout);
    assert_eq!(dry["dry_run"], true);
    assert!(listing(dir.path()).is_empty(), "a dry run writes nothing");

    let run = shrinkray()
        .args(["quantize", "--json"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(predicate::str::is_empty()); // no progress bar when stderr is not a terminal
    let r = json(&run.get_output().stdout);
    let t = &r["totals"];
    let on_disk = std::fs::metadata(&out).unwrap().len();
    assert_eq!(t["output_bytes_actual"].as_u64(), Some(on_disk));
    assert_eq!(t["output_bytes_predicted"].as_u64(), Some(on_disk));
    assert_eq!(
        dry["totals"]["output_bytes_predicted"].as_u64(),
        Some(on_disk)
    );
    // BF16 → int4: the naive claim is exactly 4x; the real ratio is lower.
    let naive = t["ratio_naive"].as_f64().unwrap();
    assert!((naive - 4.0).abs() < 0.01, "naive {naive}");
    assert!(t["ratio_actual"].as_f64().unwrap() < naive);
    assert_eq!(r["scheme"], "int4-asym");
    assert_eq!(r["group_size"], "64");
    assert_eq!(r["isa"], shrinkray::kernels::Isa::best().name());
    let o = &t["overhead"];
    let gap: u64 = ["scales", "mins", "kept", "headers", "padding"]
        .iter()
        .map(|k| o[k].as_u64().unwrap())
        .sum();
    assert_eq!(
        gap + t["output_bytes_naive"].as_u64().unwrap(),
        on_disk,
        "the gap is fully explained"
    );
    let rel = t["error"]["rel_error"].as_f64().unwrap();
    assert!(rel > 0.01 && rel < 0.3, "int4 relative error {rel}");
    assert_eq!(
        listing(dir.path()),
        vec!["q.safetensors"],
        "no temporary file left"
    );
}

#[test]
fn human_report_has_the_three_ratios_and_the_error() {
    let dir = tempfile::tempdir().unwrap();
    shrinkray()
        .arg("quantize")
        .arg(fixture("llama-f32.safetensors"))
        .arg("-o")
        .arg(dir.path().join("q.safetensors"))
        .args(["--scheme", "int8", "--top", "5"])
        .assert()
        .success()
        .stdout(predicate::str::contains("naive"))
        .stdout(predicate::str::contains("predicted"))
        .stdout(predicate::str::contains("equal to the prediction"))
        .stdout(predicate::str::contains("SQNR"))
        .stdout(predicate::str::contains("5 of 21 tensors shown"));
}

#[test]
fn sharded_quantize_verify_dequantize_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let packed = dir.path().join("packed");
    let input = fixture("llama-f16");
    shrinkray()
        .arg("quantize")
        .arg(&input)
        .arg("-o")
        .arg(&packed)
        .args([
            "--scheme",
            "int8",
            "--group-size",
            "row",
            "--keep",
            "embed_tokens",
        ])
        .args(["--override", r"mlp\.down_proj=int4:32"])
        .assert()
        .success();
    assert_eq!(
        listing(&packed),
        vec![
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json"
        ]
    );

    let v = shrinkray()
        .arg("verify")
        .arg(&input)
        .arg(&packed)
        .arg("--json")
        .assert()
        .success();
    let v = json(&v.get_output().stdout);
    assert_eq!(v["passed"], true);
    assert_eq!(v["output_bytes_actual"], v["output_bytes_expected"]);
    let by_name = |n: &str| {
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name("model.embed_tokens.weight")["stored_as"], "keep");
    assert_eq!(
        by_name("model.layers.0.mlp.down_proj.weight")["stored_as"],
        "int4"
    );
    assert_eq!(
        by_name("model.layers.0.mlp.down_proj.weight")["group_size"],
        32
    );
    assert_eq!(
        by_name("model.layers.0.mlp.up_proj.weight")["group_size"],
        128
    );

    // Thresholds not met → exit 3, with the reason.
    shrinkray()
        .arg("verify")
        .arg(&input)
        .arg(&packed)
        .args(["--max-rel-error", "1e-6"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("FAIL: tensor"));
    shrinkray()
        .arg("verify")
        .arg(&input)
        .arg(&packed)
        .args(["--min-ratio", "10"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("below --min-ratio"));

    let i = shrinkray()
        .arg("inspect")
        .arg(&packed)
        .arg("--json")
        .assert()
        .success();
    let i = json(&i.get_output().stdout);
    assert_eq!(i["packed"], true);
    assert_eq!(i["params"], 428_672);
    assert_eq!(i["tensors"].as_array().unwrap().len(), 21);

    let restored = dir.path().join("restored");
    shrinkray()
        .arg("dequantize")
        .arg(&packed)
        .arg("-o")
        .arg(&restored)
        .assert()
        .success()
        .stdout(predicate::str::contains("restored 15 tensor(s), copied 6"));
    let orig = json(
        &shrinkray()
            .arg("inspect")
            .arg(&input)
            .arg("--json")
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    let back = json(
        &shrinkray()
            .arg("inspect")
            .arg(&restored)
            .arg("--json")
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    let shapes = |j: &Value| {
        let mut v: Vec<(String, String, String)> = j["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].to_string(),
                    t["dtype"].to_string(),
                    t["shape"].to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(shapes(&orig), shapes(&back));
    assert_eq!(back["packed"], false);
}

#[test]
fn inspect_plain_file_table() {
    shrinkray()
        .arg("inspect")
        .arg(fixture("odd-shapes.safetensors"))
        .assert()
        .success()
        .stdout(predicate::str::contains("odd.scalar"))
        .stdout(predicate::str::contains("I64"))
        .stdout(predicate::str::contains("format = pt"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["quantize"],
        vec!["quantize", "x.safetensors", "-o", "y", "--scheme", "int3"],
        vec!["quantize", "x.safetensors", "-o", "y", "--group-size", "0"],
        vec![
            "quantize",
            "x.safetensors",
            "-o",
            "y",
            "--override",
            "no-equals-sign",
        ],
        vec!["quantize", "x.safetensors", "-o", "y", "--keep", "("],
        vec![
            "quantize",
            "x.safetensors",
            "-o",
            "y",
            "--scale-dtype",
            "f8",
        ],
        vec!["frobnicate"],
    ] {
        shrinkray().args(&args).assert().code(2);
    }
}

#[test]
fn bad_input_exits_1_naming_the_file_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    let bytes = std::fs::read(fixture("llama-bf16.safetensors")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let text = dir.path().join("text.safetensors");
    std::fs::write(&text, b"hello, this is not a checkpoint").unwrap();
    let short = dir.path().join("short.safetensors");
    std::fs::write(&short, [8u8, 0, 0, 0, 0, 0, 0, 0, b'{', b'}']).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for (input, needle) in [
        (
            truncated.clone(),
            "does not end exactly at the end of the file",
        ),
        (text.clone(), "header length is over the 100 MB cap"),
        (short.clone(), "header length runs past the end of the file"),
        (dir.path().join("missing.safetensors"), "cannot open"),
    ] {
        shrinkray()
            .arg("quantize")
            .arg(&input)
            .arg("-o")
            .arg(out.join("q.safetensors"))
            .assert()
            .code(1)
            .stderr(predicate::str::starts_with("error: "))
            .stderr(predicate::str::contains(input.display().to_string()))
            .stderr(predicate::str::contains(needle));
    }
    assert!(listing(&out).is_empty());
    assert_eq!(
        std::fs::read(&truncated).unwrap(),
        bytes[..bytes.len() - 10],
        "input untouched"
    );
}

#[test]
fn nonfinite_values_are_refused_by_default_and_zeroed_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("nan.safetensors");
    let mut v = vec![0.5f32; 4 * 64];
    v[70] = f32::NAN;
    v[200] = f32::INFINITY;
    let raw = shrinkray::synth::encode(&v, safetensors::Dtype::F32);
    shrinkray::synth::write(
        &input,
        &[("w".into(), safetensors::Dtype::F32, vec![4, 64], raw)],
        &[],
    )
    .unwrap();
    let out = dir.path().join("q.safetensors");
    shrinkray()
        .arg("quantize")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "tensor `w`: 2 non-finite value(s)",
        ))
        .stderr(predicate::str::contains("flat index 70"));
    assert_eq!(
        listing(dir.path()),
        vec!["nan.safetensors"],
        "no output, no temporary file"
    );
    let ok = shrinkray()
        .arg("quantize")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["--nonfinite", "zero", "--json"])
        .assert()
        .success();
    let r = json(&ok.get_output().stdout);
    assert_eq!(r["tensors"][0]["error"]["nonfinite"], 2);
    assert!(r["warnings"][0]
        .as_str()
        .unwrap()
        .contains("quantized as 0"));
}

#[test]
fn outputs_never_overwrite_inputs_and_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    std::fs::copy(fixture("llama-bf16.safetensors"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    for force in [false, true] {
        let mut cmd = shrinkray();
        cmd.arg("quantize").arg(&input).arg("-o").arg(&input);
        if force {
            cmd.arg("--force");
        }
        cmd.assert()
            .code(1)
            .stderr(predicate::str::contains("never writes over its input"));
    }
    // Writing into the directory of a single-file input names the output after the input: refused too.
    shrinkray()
        .arg("quantize")
        .arg(&input)
        .arg("-o")
        .arg(dir.path())
        .arg("--force")
        .assert()
        .code(1);
    assert_eq!(std::fs::read(&input).unwrap(), before);

    let out = dir.path().join("q.safetensors");
    std::fs::write(&out, b"precious").unwrap();
    shrinkray()
        .arg("quantize")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--force"));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    shrinkray()
        .arg("quantize")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .arg("--force")
        .assert()
        .success();
    assert_ne!(std::fs::read(&out).unwrap(), b"precious");

    shrinkray()
        .arg("quantize")
        .arg(&input)
        .arg("-o")
        .arg(dir.path().join("no/such/dir/q.safetensors"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("does not exist"));
}

#[test]
fn packed_files_are_not_quantized_again_and_plain_files_not_dequantized() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q.safetensors");
    shrinkray()
        .arg("quantize")
        .arg(fixture("odd-shapes.safetensors"))
        .arg("-o")
        .arg(&q)
        .assert()
        .success();
    shrinkray()
        .arg("quantize")
        .arg(&q)
        .arg("-o")
        .arg(dir.path().join("qq.safetensors"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already a shrinkray packed file"));
    shrinkray()
        .arg("dequantize")
        .arg(fixture("odd-shapes.safetensors"))
        .arg("-o")
        .arg(dir.path().join("d.safetensors"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not a shrinkray packed file"));
}

#[test]
fn every_kernel_implementation_writes_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("llama-f16");
    let mut files = Vec::new();
    for isa in shrinkray::kernels::Isa::available() {
        for scheme in ["int4", "int8-asym"] {
            let out = dir.path().join(format!("{isa}-{scheme}"));
            let r = shrinkray()
                .env("SHRINKRAY_ISA", isa.name())
                .arg("quantize")
                .arg(&input)
                .arg("-o")
                .arg(&out)
                .args(["--scheme", scheme, "--json"])
                .assert()
                .success();
            assert_eq!(json(&r.get_output().stdout)["isa"], isa.name());
            let bytes: Vec<Vec<u8>> = listing(&out)
                .iter()
                .map(|f| std::fs::read(out.join(f)).unwrap())
                .collect();
            files.push((scheme, isa, bytes));
        }
    }
    for (scheme, isa, bytes) in &files {
        let (_, _, scalar) = files
            .iter()
            .find(|(s, i, _)| s == scheme && i.name() == "scalar")
            .unwrap();
        assert!(
            bytes == scalar,
            "{isa} {scheme}: output differs from the scalar specification's"
        );
    }
}

#[test]
fn unknown_or_unavailable_isa_is_an_error() {
    shrinkray()
        .env("SHRINKRAY_ISA", "avx9000")
        .arg("quantize")
        .arg(fixture("odd-shapes.safetensors"))
        .arg("--dry-run")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("SHRINKRAY_ISA=avx9000: unknown"));
    // Every implementation this build has that this CPU cannot run is refused by name.
    let missing: Vec<_> = shrinkray::kernels::Isa::ALL
        .into_iter()
        .filter(|isa| !isa.is_available())
        .collect();
    if missing.is_empty() {
        eprintln!("SKIPPED: this CPU runs every implementation; none to refuse");
    }
    for isa in missing {
        shrinkray()
            .env("SHRINKRAY_ISA", isa.name())
            .arg("quantize")
            .arg(fixture("odd-shapes.safetensors"))
            .arg("--dry-run")
            .assert()
            .code(1)
            .stderr(predicate::str::contains(format!(
                "SHRINKRAY_ISA={isa}: this CPU cannot run {isa}"
            )));
    }
}

#[test]
fn bench_reports_kernels_next_to_memcpy() {
    let b = shrinkray()
        .args([
            "bench",
            "--size",
            "1MiB",
            "--reps",
            "1",
            "--dtype",
            "bf16",
            "--scheme",
            "int4",
            "--threads",
            "1",
            "--json",
        ])
        .assert()
        .success();
    let r = json(&b.get_output().stdout);
    let rows = r["rows"].as_array().unwrap();
    let kinds: Vec<&str> = rows.iter().map(|x| x["kind"].as_str().unwrap()).collect();
    assert_eq!(&kinds[..2], ["memcpy", "read"]);
    assert_eq!(kinds.len(), 2 + shrinkray::kernels::Isa::available().len());
    for row in rows {
        assert!(row["gb_s"].as_f64().unwrap() > 0.0);
        assert_eq!(row["bytes"], 1 << 20);
    }
    assert_eq!(rows[2]["isa"], "scalar");
    assert_eq!(rows[2]["scheme"], "int4");
}

#[test]
fn bench_times_the_whole_pipeline_on_a_file() {
    let b = shrinkray()
        .arg("bench")
        .arg("--file")
        .arg(fixture("llama-f32.safetensors"))
        .args(["--skip-kernels", "--reps", "1", "--json"])
        .assert()
        .success();
    let r = json(&b.get_output().stdout);
    let e = &r["end_to_end"];
    assert_eq!(
        e["bytes"],
        std::fs::metadata(fixture("llama-f32.safetensors"))
            .unwrap()
            .len()
    );
    assert!(e["gb_s"].as_f64().unwrap() > 0.0);
    assert!(e["no_fsync_gb_s"].as_f64().unwrap() > 0.0);
    assert!(e["disk_write_s"].as_f64().unwrap() > 0.0);
    assert_eq!(e["reps"], 1);
    // The phases of the timed run: each positive, together within the whole run.
    for (total, parts) in [
        ("median_s", ["read_quantize_s", "finish_s"]),
        (
            "no_fsync_median_s",
            ["no_fsync_read_quantize_s", "no_fsync_finish_s"],
        ),
    ] {
        let total = e[total].as_f64().unwrap();
        let parts: Vec<f64> = parts.iter().map(|p| e[p].as_f64().unwrap()).collect();
        assert!(parts.iter().all(|&p| p > 0.0), "{parts:?}");
        assert!(parts.iter().sum::<f64>() <= total, "{parts:?} > {total}");
    }
    // The output of the run it timed: int4-asym g64 of the fixture, as `quantize` writes it.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.safetensors");
    quantize_json(
        &fixture("llama-f32.safetensors"),
        &out,
        &["--scheme", "int4-asym", "--group-size", "64"],
    );
    assert_eq!(e["output_bytes"], std::fs::metadata(&out).unwrap().len());
    assert!(r["rows"].as_array().unwrap().is_empty());
}

#[test]
fn no_fsync_writes_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for (name, flags) in [("a", &[][..]), ("b", &["--no-fsync"][..])] {
        let out = dir.path().join(format!("{name}.safetensors"));
        let r = quantize_json(&fixture("llama-bf16.safetensors"), &out, flags);
        // Only the run that skipped the flush says so.
        let warned = r["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("not flushed to disk"));
        assert_eq!(warned, name == "b", "{name}: {}", r["warnings"]);
        outs.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(outs[0], outs[1]);
    // Nothing but the two outputs: the temporaries were renamed into place.
    assert_eq!(listing(dir.path()), ["a.safetensors", "b.safetensors"]);
}

/// The `<svg>` of figure `id` in an HTML report, checked to be well-formed XML.
fn figure_svg(html: &str, id: &str) -> String {
    let at = html
        .find(&format!("<figure id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no figure {id}"));
    let start = at + html[at..].find("<svg").unwrap();
    let end = start + html[start..].find("</svg>").unwrap() + "</svg>".len();
    let svg = &html[start..end];
    roxmltree::Document::parse(svg)
        .unwrap_or_else(|e| panic!("figure {id}: not well-formed SVG: {e}"));
    svg.to_string()
}

fn texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(str::trim).map(String::from))
        .collect()
}

#[test]
fn html_reports_of_quantize_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("llama-bf16.safetensors");
    let packed = dir.path().join("q.safetensors");
    let page = dir.path().join("quantize.html");
    let r = shrinkray()
        .arg("quantize")
        .arg(&input)
        .arg("-o")
        .arg(&packed)
        .arg("--report")
        .arg(&page)
        .arg("--json")
        .assert()
        .success();
    let r = json(&r.get_output().stdout);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for forbidden in ["<script", "src=", "href=", "<link", "@import"] {
        assert!(
            !html.contains(forbidden),
            "the report must be self-contained: found {forbidden}"
        );
    }
    let bytes = texts(&figure_svg(&html, "bytes-by-group"));
    for series in [
        "input",
        "codes",
        "scales",
        "mins",
        "kept",
        "embeddings: in",
        "attention: in",
        "MLP: in",
        "norms: in",
    ] {
        assert!(
            bytes.iter().any(|t| t == series),
            "bytes chart lacks {series}: {bytes:?}"
        );
    }
    let ratios = texts(&figure_svg(&html, "ratios"));
    let t = &r["totals"];
    for (name, key) in [
        ("naive", "ratio_naive"),
        ("predicted", "ratio_predicted"),
        ("actual", "ratio_actual"),
    ] {
        let want = format!("{name} {:.2}x", t[key].as_f64().unwrap());
        assert!(
            ratios.contains(&want),
            "ratio chart lacks {want}: {ratios:?}"
        );
    }
    let errors = figure_svg(&html, "error-by-layer");
    let quantized = t["tensors_quantized"].as_u64().unwrap() as usize;
    assert_eq!(
        errors.matches("<circle").count(),
        quantized,
        "one point per quantized tensor"
    );
    let sqnr = figure_svg(&html, "sqnr-histogram");
    assert!(texts(&sqnr).iter().any(|t| t.contains("SQNR")));
    assert!(
        html.contains("model.layers.1.mlp.up_proj.weight"),
        "the tables are in the page"
    );

    let vpage = dir.path().join("verify.html");
    shrinkray()
        .arg("verify")
        .arg(&input)
        .arg(&packed)
        .arg("--report")
        .arg(&vpage)
        .assert()
        .success();
    let vhtml = std::fs::read_to_string(&vpage).unwrap();
    assert!(vhtml.contains("PASS"));
    assert_eq!(
        figure_svg(&vhtml, "error-by-layer")
            .matches("<circle")
            .count(),
        quantized
    );
    let vratios = texts(&figure_svg(&vhtml, "ratios"));
    let actual = format!("actual {:.2}x", t["ratio_actual"].as_f64().unwrap());
    assert!(vratios.contains(&actual), "{vratios:?}");
}

/// A 64 MiB F32 checkpoint: large enough that quantizing it (debug build) outlasts a signal.
fn big_checkpoint(dir: &Path) -> PathBuf {
    let path = dir.join("big.safetensors");
    let (rows, k) = (4096, 4096);
    let bytes = shrinkray::bench::synthetic(rows * k, safetensors::Dtype::F32);
    shrinkray::synth::write(
        &path,
        &[("w".into(), safetensors::Dtype::F32, vec![rows, k], bytes)],
        &[],
    )
    .unwrap();
    path
}

#[test]
fn sigint_and_sigterm_stop_cleanly_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = big_checkpoint(dir.path());
    let before = std::fs::read(&input).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("shrinkray"))
            .env("SHRINKRAY_ISA", "scalar") // the slowest path: the run is certainly still going
            .arg("quantize")
            .arg(&input)
            .arg("-o")
            .arg(out_dir.join("q.safetensors"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the temporary output: the engine is running.
        let start = std::time::Instant::now();
        while listing(&out_dir).is_empty() {
            assert!(
                start.elapsed().as_secs() < 30,
                "no temporary output appeared"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "SIG{signal}: {stderr}");
        assert!(
            stderr.contains(&format!("interrupted by SIG{signal}")),
            "{stderr}"
        );
        assert!(
            listing(&out_dir).is_empty(),
            "SIG{signal} left {:?}",
            listing(&out_dir)
        );
    }
    assert!(std::fs::read(&input).unwrap() == before, "input untouched");
}

#[test]
fn stale_temporaries_of_dead_runs_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    // What a SIGKILLed run leaves: a temporary named after a process that no longer exists.
    let stale = dir.path().join(".q.safetensors.shrinkray-tmp-4194999");
    std::fs::write(&stale, b"half a file").unwrap();
    let unrelated = dir.path().join(".other.safetensors.shrinkray-tmp-4194999");
    std::fs::write(&unrelated, b"another output's").unwrap();
    shrinkray()
        .arg("quantize")
        .arg(fixture("odd-shapes.safetensors"))
        .arg("-o")
        .arg(dir.path().join("q.safetensors"))
        .assert()
        .success();
    assert!(!stale.exists());
    assert!(
        unrelated.exists(),
        "only this output's temporaries are touched"
    );
}
