//! The control plane's module graph stays acyclic and Stripe has one sender: read from
//! the source, so a change that breaks either fails here (issue 14's structure rules).

use crate::helpers::repo_file;

/// Every `.rs` file under `dir`, with its path relative to `control-plane/src`.
fn sources(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

fn all_sources() -> Vec<(String, String)> {
    let root = repo_file("control-plane/src");
    let mut out = Vec::new();
    sources(&root, &root, &mut out);
    assert!(out.len() > 20, "the sources were found");
    out
}

#[test]
fn only_the_wiring_depends_on_the_http_surface() {
    // `http/` may use everything; webhooks, jobs, the ledger, overage, entitlements and
    // the rest must not use `http/` (their shared state is `state.rs`), so no cycle runs
    // through it.
    let offenders: Vec<String> = all_sources()
        .into_iter()
        .filter(|(path, _)| !path.starts_with("http/") && path != "startup.rs" && path != "main.rs")
        .filter(|(_, text)| text.contains("crate::http"))
        .map(|(path, _)| path)
        .collect();
    assert!(
        offenders.is_empty(),
        "modules using crate::http: {offenders:?}"
    );
}

#[test]
fn only_the_stripe_module_sends_to_stripe() {
    let senders = [
        "stripe_billing::",
        "stripe_core::",
        "stripe_checkout::",
        "stripe_product::",
        "stripe::Client",
    ];
    let offenders: Vec<String> = all_sources()
        .into_iter()
        .filter(|(path, _)| !path.starts_with("stripe/"))
        .filter(|(_, text)| senders.iter().any(|s| text.contains(s)))
        .map(|(path, _)| path)
        .collect();
    assert!(
        offenders.is_empty(),
        "modules calling Stripe outside stripe/: {offenders:?}"
    );
}
