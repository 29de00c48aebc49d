//! The fuzz targets' invariants at a small scale, in the normal suite:
//! mutated safetensors and GGUF files never make the readers panic, the
//! memory-mapped and plain-read safetensors readers agree, and what the GGUF
//! reader accepts lies inside the file, aligned and without overlap.

use std::path::Path;

use proptest::prelude::*;
use shrinkray::checkpoint::{Checkpoint, ReadMode};
use shrinkray::gguf;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name),
    )
    .unwrap()
}

/// A small valid safetensors file: the fixture's header over a short data section.
fn small_safetensors() -> Vec<u8> {
    let tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = vec![
        (
            "w".into(),
            safetensors::Dtype::F32,
            vec![2, 8],
            vec![0x3f; 64],
        ),
        ("n".into(), safetensors::Dtype::BF16, vec![4], vec![0x40; 8]),
        ("i".into(), safetensors::Dtype::I64, vec![1], vec![1; 8]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.safetensors");
    shrinkray::synth::write(&p, &tensors, &[("format", "pt")]).unwrap();
    std::fs::read(p).unwrap()
}

/// `base` with up to 8 bytes overwritten and maybe cut short.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = base.len();
    (
        proptest::collection::vec((0..n, any::<u8>()), 0..8),
        prop_oneof![Just(n), 0..=n],
    )
        .prop_map(move |(edits, len)| {
            let mut b = base.clone();
            for (i, v) in edits {
                b[i] = v;
            }
            b.truncate(len);
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mapped_and_plain_reads_agree_on_any_safetensors_bytes(bytes in mutated(small_safetensors())) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        std::fs::write(&p, &bytes).unwrap();
        let a = Checkpoint::open_with(&p, ReadMode::Map);
        let b = Checkpoint::open_with(&p, ReadMode::Read);
        match (a, b) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(&a.shards[0].tensors, &b.shards[0].tensors);
                for t in &a.shards[0].tensors {
                    prop_assert_eq!(a.shards[0].data(t).unwrap(), b.shards[0].data(t).unwrap());
                }
            }
            (Err(a), Err(b)) => {
                prop_assert_eq!(a.to_string(), b.to_string());
                prop_assert!(a.to_string().contains("m.safetensors"));
            }
            (a, b) => prop_assert!(false, "map {:?} vs read {:?}", a.err(), b.err()),
        }
        prop_assert_eq!(std::fs::read(&p).unwrap(), bytes, "the input is never written");
    }

    #[test]
    fn the_gguf_reader_accepts_only_what_fits(bytes in mutated(fixture("gguf/tiny-ref.gguf"))) {
        if let Ok(h) = gguf::read_header(&bytes) {
            let mut spans = Vec::new();
            for t in &h.tensors {
                prop_assert_eq!(t.start % h.alignment, 0);
                prop_assert!(t.start + t.nbytes <= bytes.len() as u64);
                spans.push((t.start, t.start + t.nbytes));
            }
            spans.sort();
            prop_assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
        }
    }
}
