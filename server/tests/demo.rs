//! `vcodr demo --edges 200` as a test: the report's checks are assertions on
//! the system's state, read back through the admin API.

use std::process::Command;

#[test]
fn demo_with_200_edges_passes_every_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_vcodr"))
        .args(["demo", "--edges", "200"])
        .output()
        .expect("running vcodr demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("DEMO PASSED"), "{stdout}");
    for check in [
        "[ok] every acknowledged write is on b",
        "[ok] every edge follows b",
        "[ok] each sample stored once, none missing",
        "[ok] a fenced as ZOMBIE",
        "[ok] DR restored the other way round",
    ] {
        assert!(stdout.contains(check), "missing `{check}` in:\n{stdout}");
    }
    assert!(
        stdout.contains("500 of 500 acknowledged writes present"),
        "{stdout}"
    );
    assert!(stdout.contains("200 of 200 edges exact"), "{stdout}");
}
