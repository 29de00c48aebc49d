//! Arbitrary bytes as a checkpoint file (safetensors, or GGUF when the bytes
//! start with its magic): opening it memory-mapped and with plain reads must
//! agree (safetensors), nothing panics, and whatever is accepted must plan,
//! quantize and verify.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shrinkray::checkpoint::{Checkpoint, ReadMode};
use shrinkray::engine::Nonfinite;
use shrinkray::plan::{Plan, Rules};
use shrinkray::quantize::{quantize, QuantizeOptions};

/// A private scratch directory on tmpfs when there is one.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("shrinkray-fuzz-checkpoint-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let input = dir.join("in.safetensors");
    std::fs::write(&input, data).unwrap();
    let mapped = Checkpoint::open_with(&input, ReadMode::Map);
    // GGUF inputs are read through the map only (--no-mmap refuses them, by design).
    let read = if shrinkray::gguf::is_gguf(data) {
        match &mapped {
            Ok(_) => Checkpoint::open_with(&input, ReadMode::Map),
            Err(_) => Checkpoint::open_with(&input, ReadMode::Read),
        }
    } else {
        Checkpoint::open_with(&input, ReadMode::Read)
    };
    let ckpt = match (mapped, read) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.shards[0].tensors, b.shards[0].tensors);
            assert_eq!(a.shards[0].metadata, b.shards[0].metadata);
            for t in &a.shards[0].tensors {
                assert_eq!(a.shards[0].data(t).unwrap(), b.shards[0].data(t).unwrap());
            }
            a
        }
        (Err(a), Err(b)) => {
            let (a, b) = (a.to_string(), b.to_string());
            assert!(a.contains("in.safetensors") && b.contains("in.safetensors"), "{a} / {b}");
            return;
        }
        (a, b) => panic!("map and read disagree: {a:?} / {b:?}"),
    };
    let rules = Rules {
        gguf: shrinkray::gguf::is_gguf(data).then_some(shrinkray_kernels::ggml::GgmlType::Q4_0),
        ..Rules::default()
    };
    let Ok(plan) = Plan::build(&ckpt, &rules) else {
        return;
    };
    assert!(plan.predicted_bytes() > 0);
    let input_bytes: u64 = ckpt.shards[0].tensors.iter().map(|t| t.nbytes() as u64).sum();
    if input_bytes > 1 << 20 {
        return;
    }
    let out = dir.join(if rules.gguf.is_some() {
        "out.gguf"
    } else {
        "out.safetensors"
    });
    let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
    let opts = QuantizeOptions {
        rules,
        nonfinite: Nonfinite::Zero,
        force: true,
        ..Default::default()
    };
    match quantize(&input, &out, &opts) {
        Ok(r) => {
            let size = std::fs::metadata(&out).unwrap().len();
            assert_eq!(r.totals.output_bytes_actual, Some(size));
            assert_eq!(r.totals.output_bytes_predicted, size);
            let v = shrinkray::verify::verify(&input, &out, &Default::default()).unwrap();
            assert!(v.failures.is_empty(), "{:?}", v.failures);
        }
        // Only a group whose scale no format can store may be refused.
        Err(e) => {
            let m = e.to_string();
            assert!(
                m.contains("beyond the range of F32") || m.contains("beyond F16's range"),
                "{m}"
            )
        }
    }
    let _ = std::fs::remove_file(&out);
});
