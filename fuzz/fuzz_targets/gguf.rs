//! Arbitrary bytes as a GGUF file: the header reader never panics, what it
//! accepts lies inside the file (aligned, without overlap), and laying the
//! accepted header out again gives a header that reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shrinkray::gguf::{self, OutTensor};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = gguf::read_header(data) else {
        return;
    };
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for t in &h.tensors {
        assert_eq!(t.start % h.alignment, 0, "{}", t.name);
        assert!(t.start + t.nbytes <= data.len() as u64, "{}", t.name);
        spans.push((t.start, t.start + t.nbytes));
    }
    spans.sort();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "overlap");
    // Lay it out again (alignment 32, tensors packed in order) and read it back.
    let kvs: Vec<_> = h
        .kvs
        .iter()
        .filter(|(k, _)| k != "general.alignment")
        .cloned()
        .collect();
    let outs: Vec<OutTensor> = h
        .tensors
        .iter()
        .map(|t| OutTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            ty: t.ty,
            nbytes: t.nbytes,
        })
        .collect();
    let Ok(l) = gguf::layout(&kvs, &outs) else {
        return; // e.g. a tensor ggml could not describe in the other direction
    };
    if l.total > 64 << 20 {
        return;
    }
    let mut file = l.header.clone();
    file.resize(l.total as usize, 0);
    let again = gguf::read_header(&file).expect("a laid-out header reads back");
    assert_eq!(again.kvs.len(), kvs.len());
    for ((k1, v1), (k2, v2)) in again.kvs.iter().zip(&kvs) {
        assert_eq!(k1, k2);
        // NaN floats differ from themselves: compare the encodings.
        assert_eq!(format!("{v1:?}"), format!("{v2:?}"));
    }
    let names = |h: &gguf::Header| -> Vec<_> {
        h.tensors.iter().map(|t| (t.name.clone(), t.shape.clone(), t.ty, t.nbytes)).collect()
    };
    assert_eq!(names(&again), names(&h));
});
