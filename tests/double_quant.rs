//! Double-quantized scales (`--scale-bits`, packed format version 2): exact
//! sizes, the independent decoder of `verify` agreeing with the kernels'
//! own error figures, the same bytes on every ISA, version 1 still written
//! and read for plain files, and refusals.

mod common;
mod support;
use support::*;

use serde_json::Value;

/// The `shrinkray` metadata entry of a packed file.
fn packed_meta(path: &std::path::Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    serde_json::from_str(header["__metadata__"]["shrinkray"].as_str().unwrap()).unwrap()
}

fn rmse(v: &Value) -> f64 {
    v["rmse"].as_f64().unwrap()
}

#[test]
fn every_scheme_and_method_round_trips_through_the_independent_decoder() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("llama-bf16.safetensors");
    for scheme in ["int4-asym", "int4", "int8", "int8-asym"] {
        for (bits, groups) in [("6", "8"), ("3", "1"), ("8", "3")] {
            for method in ["rtn", "search"] {
                let mut files = Vec::new();
                for isa in shrinkray_kernels::Isa::available() {
                    let out = dir
                        .path()
                        .join(format!("{scheme}-{bits}-{method}-{isa}.safetensors"));
                    let run = shrinkray()
                        .env("SHRINKRAY_ISA", isa.name())
                        .args([
                            "quantize",
                            "--json",
                            "--scheme",
                            scheme,
                            "--group-size",
                            "32",
                        ])
                        .args([
                            "--scale-bits",
                            bits,
                            "--super-group",
                            groups,
                            "--optimize",
                            method,
                        ])
                        .arg(&input)
                        .arg("-o")
                        .arg(&out)
                        .assert()
                        .success();
                    let r = json(&run.get_output().stdout);
                    let what = format!("{scheme} dq{bits}/{groups} {method} {isa}");
                    let t = &r["totals"];
                    assert_eq!(
                        t["output_bytes_predicted"], t["output_bytes_actual"],
                        "{what}"
                    );
                    assert_eq!(r["scale_bits"], bits.parse::<u64>().unwrap(), "{what}");
                    assert_eq!(packed_meta(&out)["format"], 2, "{what}");
                    let v = shrinkray()
                        .args(["verify", "--json"])
                        .arg(&input)
                        .arg(&out)
                        .assert()
                        .success();
                    let v = json(&v.get_output().stdout);
                    let (e, ve) = (rmse(&t["error"]), rmse(&v["error"]));
                    assert!(
                        (e - ve).abs() <= 1e-6 * e,
                        "{what}: verify {ve} vs quantize {e}"
                    );
                    // 3-bit codes cost accuracy, but the reconstruction stays usable.
                    assert!(v["error"]["rel_error"].as_f64().unwrap() < 0.2, "{what}");
                    files.push(std::fs::read(&out).unwrap());
                }
                assert!(
                    files.windows(2).all(|w| w[0] == w[1]),
                    "{scheme} {bits} {method}: ISAs disagree"
                );
            }
        }
    }
}

#[test]
fn sizes_are_exact_and_plain_files_stay_version_1() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("llama-f32.safetensors");
    // lm_head is 256×128: per row 64 code bytes, 4 groups of 32 with 6-bit
    // scale and min codes (3 + 3 bytes), one super-group: 2 F16 factors.
    let out = dir.path().join("dq.safetensors");
    let r = quantize_json(
        &input,
        &out,
        &[
            "--group-size",
            "32",
            "--scale-bits",
            "6",
            "--super-group",
            "8",
        ],
    );
    let head = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "lm_head.weight")
        .unwrap();
    assert_eq!(head["output_bytes"], 256 * (64 + 3 + 3 + 2 + 2), "{head}");
    assert_eq!(head["action"], "int4-asym dq6/8");
    let meta = packed_meta(&out);
    assert_eq!(meta["tensors"]["lm_head.weight"]["scale_bits"], 6);
    assert_eq!(meta["tensors"]["lm_head.weight"]["super_group"], 8);
    let inspect = shrinkray().arg("inspect").arg(&out).assert().success();
    let text = String::from_utf8_lossy(&inspect.get_output().stdout).into_owned();
    assert!(text.contains("shrinkray packed format 2"), "{text}");
    assert!(text.contains("int4-asym g32 dq6/8 F16"), "{text}");

    let plain = dir.path().join("plain.safetensors");
    quantize_json(&input, &plain, &[]);
    let meta = packed_meta(&plain);
    assert_eq!(meta["format"], 1);
    assert!(meta["tensors"]["lm_head.weight"]
        .get("scale_bits")
        .is_none());
    // Both dequantize to the original names, shapes and dtypes.
    let mut headers = Vec::new();
    for f in [&out, &plain] {
        let back = dir.path().join("back.safetensors");
        shrinkray()
            .arg("dequantize")
            .arg(f)
            .arg("-o")
            .arg(&back)
            .arg("--force")
            .assert()
            .success();
        let bytes = std::fs::read(&back).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let h: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let shapes: Vec<(String, Value, Value)> = h
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, v)| (k.clone(), v["dtype"].clone(), v["shape"].clone()))
            .collect();
        headers.push(shapes);
    }
    assert_eq!(headers[0], headers[1]);
    assert!(headers[0].iter().any(|(n, d, s)| n == "lm_head.weight"
        && d == "F32"
        && *s == serde_json::json!([256, 128])));
}

#[test]
fn search_with_double_quantized_scales_beats_round_to_nearest_at_a_smaller_size() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("llama-f32.safetensors");
    let dq = quantize_json(
        &input,
        &dir.path().join("dq.safetensors"),
        &[
            "--scheme",
            "int4",
            "--group-size",
            "16",
            "--scale-bits",
            "5",
            "--optimize",
            "search",
            "--compare",
            "rtn",
        ],
    );
    let rtn64 = quantize_json(&input, &dir.path().join("rtn.safetensors"), &[]);
    let (t, r) = (&dq["totals"], &rtn64["totals"]);
    // Smaller than the default (int4-asym g64, F16 scale and min)…
    assert!(
        t["output_bytes_actual"].as_u64() < r["output_bytes_actual"].as_u64(),
        "{} vs {}",
        t["output_bytes_actual"],
        r["output_bytes_actual"]
    );
    // …with at least 15% less error (most of it from the smaller groups the
    // cheap scales pay for), and less than its own round to nearest.
    let (e, e64, ertn) = (rmse(&t["error"]), rmse(&r["error"]), rmse(&t["rtn_error"]));
    assert!(e < 0.85 * e64, "search dq {e} vs default {e64}");
    assert!(e < ertn, "search dq {e} vs rtn dq {ertn}");
}

#[test]
fn double_quantization_is_refused_where_it_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.gguf");
    shrinkray()
        .args(["quantize", "--scale-bits", "6", "--format", "gguf"])
        .arg(fixture("llama-bf16.safetensors"))
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicates::str::contains(
            "--scale-bits, --target-bpw and --target-size apply to the packed safetensors format",
        ));
    assert!(!out.exists());
    for bad in [["--scale-bits", "9"], ["--scale-bits", "1"]] {
        shrinkray()
            .arg("quantize")
            .args(bad)
            .arg(fixture("llama-bf16.safetensors"))
            .arg("-o")
            .arg(dir.path().join("x.safetensors"))
            .assert()
            .code(2);
    }
    shrinkray()
        .args(["quantize", "--super-group", "4"])
        .arg(fixture("llama-bf16.safetensors"))
        .arg("-o")
        .arg(dir.path().join("x.safetensors"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--scale-bits"));
}

/// The allocation part of a `--target-bpw` report.
fn allocation(r: &Value) -> &Value {
    &r["allocation"]
}

#[test]
fn target_bpw_allocates_within_the_budget_and_beats_one_format_for_all() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("llama-f32.safetensors");
    let mut last = f64::INFINITY;
    for target in ["4.5", "5", "6"] {
        let out = dir.path().join(format!("t{target}.safetensors"));
        let r = quantize_json(&input, &out, &["--target-bpw", target]);
        let a = allocation(&r);
        let t = &r["totals"];
        assert_eq!(t["output_bytes_predicted"], t["output_bytes_actual"]);
        let target: f64 = target.parse().unwrap();
        assert!(a["achieved_bpw"].as_f64().unwrap() <= target, "{a}");
        assert!(a["chosen_bytes"].as_u64() <= a["budget_bytes"].as_u64());
        // Every allocated tensor is stored as chosen.
        for c in a["tensors"].as_array().unwrap() {
            let chosen = &c["options"][c["chosen"].as_u64().unwrap() as usize];
            assert_eq!(chosen["on_hull"], true);
            let row = r["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == c["name"])
                .unwrap();
            assert_eq!(row["output_bytes"], chosen["bytes"], "{}", c["name"]);
        }
        // More bits, less error.
        let e = rmse(&t["error"]);
        assert!(e < last, "{target}: {e} vs {last}");
        last = e;
        shrinkray()
            .args(["verify", "--max-rel-error", "0.2"])
            .arg(&input)
            .arg(&out)
            .assert()
            .success();
    }
    // At 4.5 bpw of tensor data, the allocation beats the default format
    // (int4-asym g64 with F16 scale and min, 4.5 bpw before kept tensors).
    let alloc = quantize_json(
        &input,
        &dir.path().join("a.safetensors"),
        &["--target-bpw", "4.5"],
    );
    let rtn = quantize_json(&input, &dir.path().join("d.safetensors"), &[]);
    let (ea, ed) = (
        rmse(&alloc["totals"]["error"]),
        rmse(&rtn["totals"]["error"]),
    );
    assert!(ea < 0.9 * ed, "allocated {ea} vs default {ed}");
}

#[test]
fn target_bpw_respects_fixed_tensors_and_refuses_an_impossible_budget() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("llama-f32.safetensors");
    let out = dir.path().join("o.safetensors");
    let r = quantize_json(
        &input,
        &out,
        &[
            "--target-bpw",
            "8",
            "--override",
            "lm_head=int8:row",
            "--keep",
            "embed",
        ],
    );
    let row = |name: &str| {
        r["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(row("lm_head.weight")["action"], "int8");
    assert_eq!(row("model.embed_tokens.weight")["action"], "keep");
    let names: Vec<&str> = allocation(&r)["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"lm_head.weight") && !names.contains(&"model.embed_tokens.weight"));

    let bad = dir.path().join("bad.safetensors");
    shrinkray()
        .args(["quantize", "--target-bpw", "3"])
        .arg(&input)
        .arg("-o")
        .arg(&bad)
        .assert()
        .code(1)
        .stderr(predicates::str::contains(
            "--target-bpw 3: the smallest candidate for every tensor already needs",
        ));
    assert!(!bad.exists());
    shrinkray()
        .args(["quantize", "--target-bpw", "4.5", "--scheme", "int8"])
        .arg(&input)
        .arg("-o")
        .arg(&bad)
        .assert()
        .code(2);
    shrinkray()
        .args(["quantize", "--target-bpw", "4.5", "--format", "mlx"])
        .arg(&input)
        .arg("-o")
        .arg(&bad)
        .assert()
        .code(1)
        .stderr(predicates::str::contains(
            "--target-size apply to the packed",
        ));
    assert!(!bad.exists());
}

#[test]
fn target_size_bounds_the_files_headers_included() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("llama-bf16.safetensors");
    let mut last = f64::INFINITY;
    for size in [240_000u64, 260_000, 300_000] {
        let out = dir.path().join(format!("s{size}.safetensors"));
        let r = quantize_json(&input, &out, &["--target-size", &format!("{size}B")]);
        let on_disk = std::fs::metadata(&out).unwrap().len();
        assert!(on_disk <= size, "{on_disk} > {size}");
        assert!(
            on_disk > size * 95 / 100,
            "{on_disk} leaves much of {size} unused"
        );
        assert!(r["allocation"]["target"]
            .as_str()
            .unwrap()
            .starts_with("--target-size"));
        let e = rmse(&r["totals"]["error"]);
        assert!(e < last, "{size}: {e} vs {last}");
        last = e;
    }
}

#[test]
fn the_test_suites_own_decoder_reads_version_2_as_dequantize_does() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("llama-f32.safetensors");
    for (scheme, group, bits, sg) in [
        ("int4-asym", "32", "6", "8"),
        ("int4", "16", "5", "3"),
        ("int8", "64", "2", "1"),
        ("int8-asym", "7", "7", "5"),
    ] {
        let what = format!("{scheme} g{group} dq{bits}/{sg}");
        let out = dir.path().join("q.safetensors");
        let r = quantize_json(
            &input,
            &out,
            &[
                "--force",
                "--scheme",
                scheme,
                "--group-size",
                group,
                "--scale-bits",
                bits,
                "--super-group",
                sg,
                "--optimize",
                "search",
            ],
        );
        let back = dir.path().join("back.safetensors");
        shrinkray()
            .arg("dequantize")
            .arg(&out)
            .arg("-o")
            .arg(&back)
            .arg("--force")
            .assert()
            .success();
        let decoded = common::decode_packed(&out);
        let (mut sq, mut n) = (0.0f64, 0usize);
        for (name, d) in &decoded {
            let Some(q) = &d.quant else { continue };
            assert_eq!(q.meta["scale_bits"], bits.parse::<u64>().unwrap(), "{what}");
            // Bit for bit what `dequantize` (src/decode.rs) wrote.
            let theirs = common::load_f32(&back, name);
            assert_eq!(theirs.len(), d.values.len(), "{what} {name}");
            for (a, b) in theirs.iter().zip(&d.values) {
                assert_eq!(a.to_bits(), b.to_bits(), "{what} {name}");
            }
            let orig = common::load_f32(&input, name);
            for (a, b) in orig.iter().zip(&d.values) {
                sq += ((a - b) as f64).powi(2);
            }
            n += orig.len();
        }
        let e = (sq / n as f64).sqrt();
        let reported = rmse(&r["totals"]["error"]);
        assert!(
            (e - reported).abs() <= 1e-6 * reported,
            "{what}: {e} vs {reported}"
        );
    }
}

#[test]
fn the_search_never_flattens_a_group_to_a_zero_scale() {
    // Regression: a neighbour with scale code 0 could win on a group's bound,
    // which flagged the group as zeroed and widened the tensor's factors to F32.
    let dir = tempfile::tempdir().unwrap();
    for fx in ["llama-bf16.safetensors", "llama-f32.safetensors"] {
        let r = quantize_json(
            &fixture(fx),
            &dir.path().join("q.safetensors"),
            &["--force", "--target-bpw", "4.5", "--optimize", "search"],
        );
        assert_eq!(r["warnings"], serde_json::json!([]), "{fx}");
        assert_eq!(r["totals"]["error"]["zeroed_groups"], 0, "{fx}");
        let a = &r["allocation"];
        let data: u64 = r["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["output_bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(Some(data), a["chosen_bytes"].as_u64(), "{fx}");
    }
}
