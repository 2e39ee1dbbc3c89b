//! swarm-manager's layers (ARCHITECTURE.md, "swarm-manager's layers"), checked: every
//! top-level module of the crate is placed in [`LAYERS`], and its code (tests left out)
//! refers through `crate::<module>` only to modules of lower layers: never upwards, never
//! sideways to a module of its own layer. [`CONFINED`] lists what some modules must not
//! name at all (the store names no Raft, ipam and netstate no `Store`).
//!
//! The check reads the source as text: comments, string and character literals are
//! blanked first, then `#[cfg(test)]` items and the files of `#[cfg(test)] mod x;` are
//! left out, then every `crate::<name>` (also inside `use crate::{a, b::c}`) and every
//! `super::` that climbs to the crate root counts as a reference.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The declared order, bottom to top: (what the layer holds, its modules). A module may
/// refer to modules of lower layers only; the modules of one layer know nothing of each
/// other. Keep it in step with ARCHITECTURE.md ("swarm-manager's layers").
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundations: the manager's metrics, the store, certificates",
        &["metrics", "store", "ca"],
    ),
    (
        "pure address management on the state; mTLS and caller identity; runtime stalls",
        &["ipam", "tls", "stall"],
    ),
    (
        "pure network views; the scheduler; Raft replication of the store",
        &["netstate", "scheduler", "raft"],
    ),
    (
        "where a call is served; the reconciler framework, the orchestrators and the task reaper",
        &["router", "orchestrator"],
    ),
    (
        "the API edge of the services; reconcilers on the framework",
        &["api", "allocator", "ca_reconciler"],
    ),
    (
        "the gRPC services",
        &[
            "ca_service",
            "control",
            "dispatcher",
            "logbroker",
            "membership",
        ],
    ),
    ("one manager: wiring it all", &["manager"]),
];

#[test]
fn modules_refer_only_to_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = declared_modules(&src.join("lib.rs"));
    let layer_of = layer_index();
    let mut problems = String::new();

    for m in &modules {
        if !layer_of.contains_key(m.as_str()) {
            let _ = writeln!(
                problems,
                "module `{m}` is not placed in the layer order: add it to LAYERS in \
                 swarm-manager/tests/layers.rs and to ARCHITECTURE.md (swarm-manager's layers)"
            );
        }
    }
    for name in layer_of.keys() {
        if !modules.iter().any(|m| m == name) {
            let _ = writeln!(
                problems,
                "LAYERS names `{name}`, which src/lib.rs does not declare: remove or rename it"
            );
        }
    }

    for file in production_files(&src) {
        let rel = file.strip_prefix(&src).unwrap().to_path_buf();
        let Some(from) = top_module(&rel) else {
            continue;
        };
        let depth = module_depth(&rel);
        let code = blank_comments_and_literals(&read(&file));
        let code = drop_test_items(&code);
        for (line, to, text) in references(&code, depth) {
            if to == from {
                continue;
            }
            let (Some(&(fl, fname)), Some(&(tl, _))) =
                (layer_of.get(from.as_str()), layer_of.get(to.as_str()))
            else {
                if !modules.contains(&to) {
                    let _ = writeln!(
                        problems,
                        "src/{}:{line}: `{text}` names `{to}`, which is not a top-level module",
                        rel.display()
                    );
                }
                continue;
            };
            if tl >= fl {
                let how = if tl == fl {
                    "a module of its own layer"
                } else {
                    "a higher layer"
                };
                let _ = writeln!(
                    problems,
                    "src/{}:{line}: `{from}` (layer {fl}: {fname}) refers with `{text}` to `{to}`, \
                     {how} (layer {tl}: {})",
                    rel.display(),
                    LAYERS[tl].0,
                );
            }
        }
    }

    assert!(
        problems.is_empty(),
        "swarm-manager's layers are broken (bottom to top: {}).\n\
         A module may use only modules of lower layers; move the shared piece down \
         (e.g. into api.rs or store/) instead.\n{problems}",
        LAYERS
            .iter()
            .map(|(_, ms)| ms.join(" "))
            .collect::<Vec<_>>()
            .join(" < ")
    );
}

/// Identifiers some modules' code must not name (tests left out), and why.
const CONFINED: &[(&str, &[&str], &str)] = &[
    (
        "store",
        &["openraft", "tonic"],
        "the store knows nothing of Raft or gRPC: writes go through its Proposer trait",
    ),
    (
        "ca",
        &["tonic", "async", "tokio"],
        "ca/ is pure certificate work; its gRPC services are ca_service.rs",
    ),
    (
        "ipam",
        &["Store", "async", "tokio"],
        "ipam is pure: functions of a `&State` and values, no store handle, no async",
    ),
    (
        "netstate",
        &["Store", "async", "tokio"],
        "netstate is pure: functions of a `&State` and values, no store handle, no async",
    ),
];

#[test]
fn confined_modules_do_not_name_what_they_must_not_know() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = String::new();
    for file in production_files(&src) {
        let rel = file.strip_prefix(&src).unwrap().to_path_buf();
        let Some(module) = top_module(&rel) else {
            continue;
        };
        let Some((_, banned, why)) = CONFINED.iter().find(|(m, _, _)| *m == module) else {
            continue;
        };
        let code = drop_test_items(&blank_comments_and_literals(&read(&file)));
        for (n, line) in code.lines().enumerate() {
            for word in line.split(|ch: char| !is_ident(ch)) {
                if banned.contains(&word) {
                    let _ = writeln!(
                        problems,
                        "src/{}:{}: `{word}` in `{module}`: {why}",
                        rel.display(),
                        n + 1
                    );
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems}");
}

/// The blanking and the reference scan themselves: the check must be able to fail.
#[test]
fn the_scan_sees_references_and_skips_comments_strings_and_tests() {
    let code = r##"
use crate::store::{Op, Store};
use crate::{api, router::Route};
// crate::manager in a comment
/* crate::manager in a block */
const S: &str = "crate::manager in a string";
const R: &str = r#"crate::manager"#;
const C: char = '{';
fn f<'a>(x: &'a str) { super::tls::x(); }
#[cfg(test)]
mod tests {
    use crate::manager;
    fn g() { let _ = "}"; }
}
#[cfg(test)]
use crate::manager::Manager;
fn h() { crate::ipam::f() }
"##;
    let code = drop_test_items(&blank_comments_and_literals(code));
    let refs: Vec<(usize, String)> = references(&code, 1)
        .into_iter()
        .map(|(line, to, _)| (line, to))
        .collect();
    assert_eq!(
        refs,
        vec![
            (2, "store".to_string()),
            (3, "api".to_string()),
            (3, "router".to_string()),
            (9, "tls".to_string()),
            (17, "ipam".to_string()),
        ]
    );
}

fn layer_index() -> BTreeMap<&'static str, (usize, &'static str)> {
    let mut out = BTreeMap::new();
    for (i, (name, modules)) in LAYERS.iter().enumerate() {
        for m in *modules {
            assert!(
                out.insert(*m, (i, *name)).is_none(),
                "`{m}` stands twice in LAYERS"
            );
        }
    }
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `mod x;` / `pub mod x;` / `pub(crate) mod x;` of lib.rs.
fn declared_modules(lib: &Path) -> Vec<String> {
    let code = drop_test_items(&blank_comments_and_literals(&read(lib)));
    let mut out = Vec::new();
    for (name, _) in mod_declarations(&code) {
        out.push(name);
    }
    out
}

/// Every `mod name;` (a module in its own file) with whether it is `#[cfg(test)]`.
fn mod_declarations(code: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let words: Vec<&str> = code.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        if *w != "mod" || i + 1 >= words.len() {
            continue;
        }
        let Some(name) = words[i + 1].strip_suffix(';') else {
            continue;
        };
        // Attributes and visibility stand before `mod`; look back past the visibility.
        let mut j = i;
        while j > 0 && (words[j - 1].starts_with("pub")) {
            j -= 1;
        }
        let is_test = j > 0 && words[j - 1] == "#[cfg(test)]";
        out.push((name.to_string(), is_test));
    }
    out
}

/// The crate's .rs files, without those of `#[cfg(test)] mod x;` (and what is under them).
fn production_files(src: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    walk(src, &mut all);
    all.sort();
    let mut test_dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut test_files: BTreeSet<PathBuf> = BTreeSet::new();
    for f in &all {
        let code = blank_comments_and_literals(&read(f));
        // Children of a/b.rs live in a/b/; of a/mod.rs and lib.rs in a/.
        let stem = f.file_stem().unwrap().to_string_lossy();
        let dir = if stem == "mod" || stem == "lib" {
            f.parent().unwrap().to_path_buf()
        } else {
            f.with_extension("")
        };
        for (name, is_test) in mod_declarations(&code) {
            if is_test {
                test_files.insert(dir.join(format!("{name}.rs")));
                test_dirs.insert(dir.join(&name));
            }
        }
    }
    all.into_iter()
        .filter(|f| !test_files.contains(f) && !test_dirs.iter().any(|d| f.starts_with(d)))
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `store/ops.rs` → `store`; `store.rs` → `store`; `lib.rs` → none.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib").then_some(name)
}

/// How many `super::` climb from this file's module to the crate root.
fn module_depth(rel: &Path) -> usize {
    let n = rel.components().count();
    if rel.file_name().is_some_and(|f| f == "mod.rs") {
        n - 1
    } else {
        n
    }
}

/// The source with comments, string and character literals replaced by spaces (newlines
/// kept, so that line numbers stay right).
fn blank_comments_and_literals(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(k).copied().unwrap_or('\0');
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if (c[i] == 'r' || (c[i] == 'b' && at(i + 1) == 'r'))
            && !is_ident(at(i.wrapping_sub(1)))
            && {
                let mut k = i + if c[i] == 'b' { 2 } else { 1 };
                while at(k) == '#' {
                    k += 1;
                }
                at(k) == '"'
            }
        {
            // Raw string: r"..", r#".."#, br"..".
            let mut k = i + if c[i] == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while at(k) == '#' {
                hashes += 1;
                k += 1;
            }
            k += 1;
            while k < c.len() {
                if c[k] == '"' && (1..=hashes).all(|h| at(k + h) == '#') {
                    k += 1 + hashes;
                    break;
                }
                k += 1;
            }
            for &ch in &c[i..k.min(c.len())] {
                blank(&mut out, ch);
            }
            i = k;
        } else if c[i] == '"' {
            blank(&mut out, c[i]);
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            if i < c.len() {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A character literal ('x', '\n', '\''); a lifetime ('a) has no closing quote.
            let mut k = i + 1;
            if at(k) == '\\' {
                k += 2;
                while k < c.len() && c[k] != '\'' {
                    k += 1;
                }
            } else {
                k += 1;
            }
            for &ch in &c[i..(k + 1).min(c.len())] {
                blank(&mut out, ch);
            }
            i = k + 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// Blanks each item marked `#[cfg(test)]` (up to its `;` or the end of its `{ }` block).
fn drop_test_items(code: &str) -> String {
    let mut c: Vec<char> = code.chars().collect();
    let pat: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i + pat.len() <= c.len() {
        if c[i..i + pat.len()] != pat[..] {
            i += 1;
            continue;
        }
        let start = i;
        let mut k = i + pat.len();
        let mut depth = 0usize;
        while k < c.len() {
            match c[k] {
                ';' if depth == 0 => break,
                '{' => depth += 1,
                '}' => {
                    // The end of the item's block (or of the block around it).
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            k += 1;
        }
        let end = (k + 1).min(c.len());
        for ch in &mut c[start..end] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        i = k + 1;
    }
    c.into_iter().collect()
}

/// (line, top-level module, text) of every reference to a top-level module: `crate::x`,
/// each name of `crate::{x, y::z}`, and `super::…::x` climbing to the crate root from a
/// file `depth` modules below it (inline `mod m { }` blocks count one more).
fn references(code: &str, depth: usize) -> Vec<(usize, String, String)> {
    let c: Vec<char> = code.chars().collect();
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let starts = |k: usize, pat: &str| pat.chars().enumerate().all(|(n, p)| at(k + n) == p);
    let ident_at = |k: usize| -> String {
        c[k.min(c.len())..]
            .iter()
            .take_while(|&&ch| is_ident(ch))
            .collect()
    };
    let mut out = Vec::new();
    let mut line = 1;
    let mut braces = 0usize;
    // Brace depths at which inline modules opened.
    let mut inline: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let before = if i == 0 { ' ' } else { c[i - 1] };
        match c[i] {
            '\n' => line += 1,
            '{' => braces += 1,
            '}' => {
                braces = braces.saturating_sub(1);
                if inline.last() == Some(&braces) {
                    inline.pop();
                }
            }
            _ => {}
        }
        if is_ident(before) || before == '$' || before == ':' {
            i += 1;
            continue;
        }
        if starts(i, "mod ") {
            // `mod name {` opens an inline module at the current depth.
            let mut k = i + 4;
            while at(k) == ' ' {
                k += 1;
            }
            let name = ident_at(k);
            k += name.chars().count();
            while at(k).is_whitespace() {
                k += 1;
            }
            if !name.is_empty() && at(k) == '{' {
                inline.push(braces);
            }
        } else if starts(i, "crate::") {
            let k = i + "crate::".len();
            if at(k) == '{' {
                let group: String = c[k + 1..].iter().collect();
                for name in group_heads(&group) {
                    out.push((line, name.clone(), format!("crate::{{{name}, …}}")));
                }
            } else {
                let name = ident_at(k);
                if !name.is_empty() {
                    out.push((line, name.clone(), format!("crate::{name}")));
                }
            }
            i = k;
            continue;
        } else if starts(i, "super::") {
            let mut k = i;
            let mut climbs = 0;
            while starts(k, "super::") {
                climbs += 1;
                k += "super::".len();
            }
            if climbs >= depth + inline.len() {
                let name = ident_at(k);
                if !name.is_empty() {
                    let text = format!("{}{name}", "super::".repeat(climbs));
                    out.push((line, name, text));
                }
            }
            i = k;
            continue;
        }
        i += 1;
    }
    out
}

/// The first name of each path in a `use` group: `a, b::c, d::{e}}` → a, b, d.
fn group_heads(group: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut expect = true;
    let chars: Vec<char> = group.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        match ch {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expect = true,
            _ if expect && depth == 0 && is_ident(ch) => {
                let name: String = chars[i..].iter().take_while(|&&c| is_ident(c)).collect();
                i += name.chars().count();
                if name != "self" {
                    out.push(name);
                }
                expect = false;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}
