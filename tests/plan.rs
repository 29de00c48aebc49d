//! `plan`: the field's headline claims as tests on the numbers `plan --json`
//! prints, and its checkpoint figures against what `quantize` then writes.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use shrinkray::estimate::grid;
use shrinkray::plan::{GroupSize, Rules};
use shrinkray::quantize::{quantize, QuantizeOptions};

fn plan(args: &[&str]) -> Value {
    let out = Command::cargo_bin("shrinkray")
        .unwrap()
        .arg("plan")
        .args(args)
        .arg("--json")
        .assert()
        .success();
    serde_json::from_slice(&out.get_output().stdout).unwrap()
}

fn row<'a>(v: &'a Value, format: &str) -> &'a Value {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["format"] == format)
        .unwrap_or_else(|| panic!("no row {format}"))
}

fn gpus(r: &Value, mem_gb: u64) -> u64 {
    r["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["mem_bytes"] == mem_gb * 1_000_000_000)
        .unwrap()["count"]
        .as_u64()
        .unwrap()
}

#[test]
fn seventy_billion_parameters() {
    let v = plan(&["--params", "70B"]);
    assert_eq!(v["params"], 70_000_000_000u64);
    // "A 70B model needs about 140 GB in FP16 (two 80 GB GPUs)".
    let fp16 = row(&v, "FP16/BF16");
    assert_eq!(fp16["bytes"], 140_000_000_000u64);
    assert_eq!(gpus(fp16, 80), 2);
    // "... 280 GB in FP32".
    let fp32 = row(&v, "FP32");
    assert_eq!(fp32["bytes"], 280_000_000_000u64);
    assert_eq!(gpus(fp32, 80), 4); // 280 GB / 72 GB usable
                                   // "... about 35 GB at 4 bits (one GPU)": naive 35 GB; with one F16 scale per 64: 4.25 bpw, 37.2 GB.
    let int4 = row(&v, "int4 g64");
    assert_eq!(int4["naive_bytes"], 35_000_000_000u64);
    assert_eq!(int4["bytes"], 37_187_500_000u64);
    assert_eq!(int4["bits_per_weight"], 4.25);
    assert_eq!(gpus(int4, 80), 1);
    assert_eq!(gpus(int4, 24), 2);
    // Asymmetric adds a min per group: 4.5 bpw.
    assert_eq!(row(&v, "int4-asym g64")["bits_per_weight"], 4.5);
    assert_eq!(row(&v, "int8 g32")["bits_per_weight"], 8.5);
    // "4-bit divides memory by 4 to 8": by 3.76 from BF16 with g64 scales, 4 only naively.
    let ratio = int4["ratio_to_source"].as_f64().unwrap();
    assert!((ratio - 140.0 / 37.1875).abs() < 1e-9, "{ratio}");
}

#[test]
fn seven_billion_int4_is_under_4_gb_naively() {
    let v = plan(&["--params", "7B"]);
    let int4 = row(&v, "int4 g64");
    assert_eq!(int4["naive_bytes"], 3_500_000_000u64);
    assert!(int4["bytes"].as_u64().unwrap() < 4_000_000_000);
}

#[test]
fn mixture_of_experts_reports_total_and_active() {
    let v = plan(&["--params", "47B", "--active", "12B", "--gpu-mem", "80GB"]);
    assert_eq!(v["active_params"], 12_000_000_000u64);
    let int4 = row(&v, "int4 g64");
    // All 47B must be held; a token reads only the 12B active ones.
    assert_eq!(
        int4["bytes"],
        47_000_000_000u64 / 2 + 47_000_000_000u64 / 64 * 2
    );
    assert_eq!(int4["active_bytes"], 6_375_000_000u64);
    assert_eq!(int4["gpus"].as_array().unwrap().len(), 1);
    assert!(v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().contains("assumption")));
}

#[test]
fn checkpoint_figures_equal_what_quantize_writes() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for name in [
        "llama-bf16.safetensors",
        "llama-f32.safetensors",
        "llama-f16",
        "odd-shapes.safetensors",
    ] {
        let input = fixtures.join(name);
        let v = plan(&[input.to_str().unwrap()]);
        for (i, (scheme, group)) in grid().into_iter().enumerate() {
            let out: PathBuf = dir.path().join(format!("{name}-{i}"));
            let opts = QuantizeOptions {
                rules: Rules {
                    scheme,
                    group,
                    ..Rules::default()
                },
                ..Default::default()
            };
            let report = quantize(&input, &out, &opts).unwrap();
            let r = row(&v, &shrinkray::estimate::label(scheme, group));
            assert_eq!(r["exact"], true);
            assert_eq!(
                r["bytes"].as_u64(),
                report.totals.output_bytes_actual,
                "{name} {scheme} {group}: plan vs quantize"
            );
            assert_eq!(
                r["naive_bytes"].as_u64(),
                Some(report.totals.output_bytes_naive)
            );
            if group == GroupSize::Fixed(64) && scheme.name() == "int4-asym" {
                assert_eq!(
                    r["bytes"].as_u64(),
                    Some(report.totals.output_bytes_predicted)
                );
            }
        }
    }
}

#[test]
fn plan_needs_a_subject() {
    Command::cargo_bin("shrinkray")
        .unwrap()
        .arg("plan")
        .assert()
        .code(2);
    Command::cargo_bin("shrinkray")
        .unwrap()
        .args(["plan", "--params", "70B", "--headroom", "1.5"])
        .assert()
        .code(1);
}
