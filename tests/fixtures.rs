//! The committed fixtures are exactly what the deterministic generator makes.

use std::path::Path;

#[test]
fn fixtures_are_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let written = shrinkray::synth::make_fixtures(dir.path()).unwrap();
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    assert_eq!(written.len(), 6);
    for p in written {
        let rel = p.strip_prefix(dir.path()).unwrap();
        let want =
            std::fs::read(committed.join(rel)).unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
        let got = std::fs::read(&p).unwrap();
        assert!(
            want == got,
            "{} differs from the generator's output: run `cargo run --release --example make_fixtures`",
            rel.display()
        );
    }
}
