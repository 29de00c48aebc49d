//! Arbitrary bytes as `model.safetensors.index.json` next to two valid
//! shards: never a panic, every refusal names the index or a shard, nothing
//! outside the checkpoint directory is opened, and what is accepted quantizes.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use safetensors::Dtype;
use shrinkray::checkpoint::Checkpoint;
use shrinkray::quantize::{quantize, QuantizeOptions};

/// A private directory holding the checkpoint's two shards, made once; and a
/// shard-shaped file beside it, outside, that an index must never reach.
fn checkpoint_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let root = base.join(format!("shrinkray-fuzz-index-{}", std::process::id()));
        let dir = root.join("ckpt");
        std::fs::create_dir_all(&dir).unwrap();
        let f32s = |n: usize| {
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            shrinkray::synth::encode(&v, Dtype::F32)
        };
        let a = [
            ("x".to_string(), Dtype::F32, vec![2, 64], f32s(128)),
            ("n".to_string(), Dtype::F32, vec![4], f32s(4)),
        ];
        let b = [("y".to_string(), Dtype::F32, vec![3, 32], f32s(96))];
        shrinkray::synth::write(&dir.join("a.safetensors"), &a, &[]).unwrap();
        shrinkray::synth::write(&dir.join("b.safetensors"), &b, &[]).unwrap();
        shrinkray::synth::write(&root.join("outside.safetensors"), &b, &[]).unwrap();
        let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = checkpoint_dir();
    let index = dir.join("model.safetensors.index.json");
    std::fs::write(&index, data).unwrap();
    let ckpt = match Checkpoint::open(dir) {
        Ok(c) => c,
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains(dir.to_str().unwrap()), "{m}");
            return;
        }
    };
    for s in &ckpt.shards {
        assert_eq!(s.path.parent(), Some(dir.as_path()), "{:?} escapes", s.path);
    }
    let out = dir.parent().unwrap().join("out");
    let opts = QuantizeOptions {
        force: true,
        ..Default::default()
    };
    let r = quantize(dir, &out, &opts).expect("a valid checkpoint quantizes");
    assert_eq!(r.totals.tensors, ckpt.tensors().count());
    let _ = std::fs::remove_dir_all(&out);
});
