//! The documents' promises point at tests: every test that README,
//! `docs/SECURITY.md`, `docs/VAULT.md` or `docs/PROTOCOL.md` cites by name
//! (`file::test_name` or `module::tests::test_name`) must exist, so a
//! renamed or deleted test cannot leave a claim without its check.

use std::{fs, path::Path};

fn sources(dir: &Path, out: &mut String) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push_str(&fs::read_to_string(&p).unwrap_or_default());
        }
    }
}

/// Names in backticks that look like a test path: lower-case segments
/// joined by `::`, the last a long snake-case name.
fn cited(doc: &str) -> Vec<String> {
    doc.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            let segs: Vec<&str> = s.split("::").collect();
            segs.len() >= 2
                && segs.iter().all(|g| {
                    !g.is_empty()
                        && g.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                })
                && segs.last().is_some_and(|l| l.matches('_').count() >= 3)
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_test_the_documents_cite_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut code = String::new();
    sources(&root.join("tests"), &mut code);
    sources(&root.join("src"), &mut code);
    let mut total = 0;
    let mut missing = Vec::new();
    for doc in [
        "README.md",
        "docs/SECURITY.md",
        "docs/VAULT.md",
        "docs/PROTOCOL.md",
    ] {
        let text = fs::read_to_string(root.join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
        for c in cited(&text) {
            total += 1;
            let name = c.rsplit("::").next().unwrap_or_default();
            if !code.contains(&format!("fn {name}(")) {
                missing.push(format!("{doc}: {c}"));
            }
        }
    }
    assert!(
        total > 50,
        "only {total} cited tests found: the pattern broke"
    );
    assert!(missing.is_empty(), "cited but missing: {missing:#?}");
}
