//! `quantize --optimize search` and `--compare rtn`: the same packed format
//! (verify's independent decoder reads it), less error than round to nearest,
//! the same bytes on every ISA, and the comparison in the report.

mod support;
use support::*;

#[test]
fn search_writes_the_same_format_with_less_error_and_reports_the_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("llama-bf16.safetensors");
    let mut files = Vec::new();
    for isa in shrinkray_kernels::Isa::available() {
        let out = dir.path().join(format!("s-{}.safetensors", isa.name()));
        let run = shrinkray()
            .env("SHRINKRAY_ISA", isa.name())
            .args([
                "quantize",
                "--optimize",
                "search",
                "--compare",
                "rtn",
                "--json",
            ])
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .assert()
            .success();
        let r = json(&run.get_output().stdout);
        assert_eq!(r["method"], "search");
        let (e, rtn) = (&r["totals"]["error"], &r["totals"]["rtn_error"]);
        let (e, rtn) = (e["rmse"].as_f64().unwrap(), rtn["rmse"].as_f64().unwrap());
        assert!(e < 0.95 * rtn, "search {e} vs rtn {rtn}");
        for t in r["tensors"].as_array().unwrap() {
            if let (Some(a), Some(b)) =
                (t["error"]["rmse"].as_f64(), t["rtn_error"]["rmse"].as_f64())
            {
                assert!(a <= b, "{}: search {a} > rtn {b}", t["name"]);
            }
        }
        // The round-to-nearest figure is what a plain run reports.
        let plain = shrinkray()
            .args(["quantize", "--json"])
            .arg(&input)
            .arg("-o")
            .arg(dir.path().join("rtn.safetensors"))
            .arg("--force")
            .assert()
            .success();
        let plain = json(&plain.get_output().stdout)["totals"]["error"]["rmse"]
            .as_f64()
            .unwrap();
        assert!((plain - rtn).abs() <= 1e-6 * rtn, "{plain} vs {rtn}");
        // verify decodes it with its own decoder and measures the same error.
        let v = shrinkray()
            .args(["verify", "--json"])
            .arg(&input)
            .arg(&out)
            .assert()
            .success();
        let v = json(&v.get_output().stdout)["error"]["rmse"]
            .as_f64()
            .unwrap();
        assert!((v - e).abs() <= 1e-6 * e, "verify {v} vs quantize {e}");
        files.push(std::fs::read(&out).unwrap());
    }
    assert!(files.windows(2).all(|w| w[0] == w[1]), "ISAs disagree");
}

#[test]
fn search_is_refused_for_formats_with_a_reference_rounding() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [["--format", "gguf"], ["--format", "mlx"]] {
        let out = dir.path().join("q.out");
        shrinkray()
            .args(["quantize", "--optimize", "search"])
            .args(extra)
            .arg(fixture("llama-bf16.safetensors"))
            .arg("-o")
            .arg(&out)
            .assert()
            .code(1)
            .stderr(predicates::str::contains(
                "apply to the packed safetensors format",
            ));
        assert!(!out.exists());
    }
}
