//! The control plane's module graph stays acyclic and Stripe has one sender: read from
//! the source (`crate::x` on code lines), so a change that breaks either fails here.

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

/// The top-level modules each top-level module names (`crate::x`), from code lines only.
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut graph = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for (path, text) in all_sources() {
        let module = path
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let uses = graph.entry(module.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

#[test]
fn the_control_planes_module_graph_has_no_cycle() {
    let graph = module_graph();
    assert!(graph.contains_key("http") && graph.contains_key("webhooks"));
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit(
        m: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("module cycle: {} -> {m}", path[at..].join(" -> "));
        }
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut done = std::collections::BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn only_the_wiring_depends_on_the_http_surface() {
    // `http/` may use everything; webhooks, jobs, the ledger and the rest share state
    // through `state.rs`, never through the HTTP surface.
    let offenders: Vec<String> = module_graph()
        .into_iter()
        .filter(|(m, uses)| m != "http" && m != "startup" && uses.contains("http"))
        .map(|(m, _)| m)
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

/// The statements on a table found outside the module that owns it (`FROM`, `JOIN`,
/// `INTO` or `UPDATE` naming it), by file.
fn statements_outside(table: &str, owner: &str, verbs: &[&str]) -> Vec<String> {
    all_sources()
        .into_iter()
        // The customer's data export reads every table as it is stored.
        .filter(|(path, _)| path != owner && path != "http/export.rs")
        .filter(|(_, text)| {
            // One space between words, so a statement split over lines is found too.
            let text = text
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_ascii_uppercase();
            verbs.iter().any(|verb| {
                text.match_indices(&format!("{verb} {}", table.to_ascii_uppercase()))
                    .any(|(i, m)| {
                        // The whole name, not a longer table's (`subscriptions_x`).
                        !text[i + m.len()..]
                            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                    })
            })
        })
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn every_statement_on_subscriptions_is_in_the_subscription_store() {
    let offenders = statements_outside(
        "subscriptions",
        "subscription_store.rs",
        &["FROM", "JOIN", "INTO", "UPDATE"],
    );
    assert!(
        offenders.is_empty(),
        "statements on subscriptions outside subscription_store.rs: {offenders:?}"
    );
}

#[test]
fn every_statement_on_customers_is_in_the_customers_module() {
    // A join that only reads a customer's Stripe id beside another table's rows is the
    // other table's statement.
    let offenders = statements_outside("customers", "customers.rs", &["FROM", "INTO", "UPDATE"]);
    assert!(
        offenders.is_empty(),
        "statements on customers outside customers.rs: {offenders:?}"
    );
}
