//! Reading compose files: YAML, variable interpolation (`$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?err}`, `$$`) from the environment and the `.env` file beside the
//! first file, checks against the schema of `compose` file by file, and the merge of several
//! files (later files override earlier ones, key by key). Every error names the file, the
//! line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::compose::ComposeFile;
use crate::error::{CliError, Result};

/// One step of a key path: a mapping key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path, printed as Docker's loader names keys: `services.web.deploy.replicas`,
/// `services.web.ports[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }

    pub fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One compose file as read: its text (for line numbers) and its interpolated tree.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
    pub tree: Value,
}

/// The files of one deploy, merged.
#[derive(Debug)]
pub struct Loaded {
    pub sources: Vec<Source>,
    pub merged: Value,
    pub compose: ComposeFile,
    /// Relative paths (env_file, secret and config files) are relative to this directory:
    /// the first file's.
    pub workdir: PathBuf,
}

impl Loaded {
    /// An error at `path`, located in the last file that sets it (or the deepest part of it
    /// that one sets).
    pub fn error_at(&self, path: &KeyPath, msg: impl std::fmt::Display) -> CliError {
        let src = self
            .sources
            .iter()
            .max_by_key(|s| depth_set(&s.tree, path))
            .or(self.sources.last());
        match src {
            Some(s) => located(s, path, msg),
            None => CliError::msg(format!("{path}: {msg}")),
        }
    }
}

/// How many leading segments of `path` the tree sets.
fn depth_set(tree: &Value, path: &KeyPath) -> usize {
    let mut v = tree;
    for (i, s) in path.0.iter().enumerate() {
        let next = match (s, v) {
            (Seg::Key(k), Value::Mapping(m)) => m.get(k.as_str()),
            (Seg::Index(n), Value::Sequence(l)) => l.get(*n),
            _ => None,
        };
        match next {
            Some(n) => v = n,
            None => return i,
        }
    }
    path.0.len()
}

fn located(src: &Source, path: &KeyPath, msg: impl std::fmt::Display) -> CliError {
    let file = src.path.display();
    match locate(&src.text, &path.0) {
        Some(line) if path.0.is_empty() => CliError::msg(format!("{file}:{line}: {msg}")),
        Some(line) => CliError::msg(format!("{file}:{line}: {path}: {msg}")),
        None if path.0.is_empty() => CliError::msg(format!("{file}: {msg}")),
        None => CliError::msg(format!("{file}: {path}: {msg}")),
    }
}

/// Reads, interpolates, checks and merges `files`. `env` is the process environment.
pub fn load(files: &[PathBuf], env: &BTreeMap<String, String>) -> Result<Loaded> {
    let first = files
        .first()
        .ok_or_else(|| CliError::msg("Please specify a Compose file (with --compose-file)"))?;
    let workdir = first
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let mut vars = dot_env(&workdir.join(".env"))?;
    vars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut sources = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::msg(format!("cannot read compose file {}: {e}", path.display()))
        })?;
        let raw: Value = serde_yaml::from_str(&text).map_err(|e| {
            let at = e
                .location()
                .map_or(String::new(), |l| format!(":{}", l.line()));
            CliError::msg(format!("{}{at}: invalid YAML: {e}", path.display()))
        })?;
        let mut src = Source {
            path: path.clone(),
            text,
            tree: Value::Null,
        };
        let tree = match raw {
            Value::Null => Value::Mapping(Mapping::new()),
            v @ Value::Mapping(_) => v,
            other => {
                return Err(located(
                    &src,
                    &KeyPath::default(),
                    format!(
                        "a compose file is a mapping at the top level, found {}",
                        super::compose::lenient::kind(&other)
                    ),
                ))
            }
        };
        src.tree =
            interpolate(tree, &KeyPath::default(), &vars).map_err(|(p, m)| located(&src, &p, m))?;
        check(&src)?;
        sources.push(src);
    }
    let mut merged = Value::Mapping(Mapping::new());
    for s in &sources {
        merge(&mut merged, &s.tree);
    }
    let compose: ComposeFile = serde_yaml::from_value(merged.clone())
        .map_err(|e| CliError::msg(format!("merged compose files: {e}")))?;
    Ok(Loaded {
        sources,
        merged,
        compose,
        workdir,
    })
}

/// `stack config`: the files merged (and interpolated unless `env` is None), as YAML.
pub fn merged_text(files: &[PathBuf], env: Option<&BTreeMap<String, String>>) -> Result<String> {
    let merged = match env {
        Some(env) => load(files, env)?.merged,
        None => {
            let mut merged = Value::Mapping(Mapping::new());
            for path in files {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    CliError::msg(format!("cannot read compose file {}: {e}", path.display()))
                })?;
                let v: Value = serde_yaml::from_str(&text)
                    .map_err(|e| CliError::msg(format!("{}: invalid YAML: {e}", path.display())))?;
                merge(&mut merged, &v);
            }
            merged
        }
    };
    serde_yaml::to_string(&merged)
        .map_err(|e| CliError::msg(format!("cannot print the config: {e}")))
}

/// Checks one file against the schema on its own, so an error names its file.
fn check(src: &Source) -> Result<()> {
    let r: std::result::Result<ComposeFile, _> = serde_path_to_error::deserialize(src.tree.clone());
    let Err(e) = r else { return Ok(()) };
    let mut path = KeyPath::default();
    for seg in e.path().iter() {
        match seg {
            serde_path_to_error::Segment::Map { key } => path.0.push(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Seq { index } => path.0.push(Seg::Index(*index)),
            _ => {}
        }
    }
    let msg = e.inner().to_string();
    // "unknown field `foo`, expected one of …": the key is the unknown one.
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((key, _)) = rest.split_once('`') {
            // serde_path_to_error already ends the path with it.
            if path.0.last() != Some(&Seg::Key(key.to_string())) {
                path.0.push(Seg::Key(key.to_string()));
            }
            return Err(located(
                src,
                &path,
                format!("unknown key {key:?}: it is not a compose key Swarm knows"),
            ));
        }
    }
    Err(located(src, &path, msg))
}

/// Deep merge: mappings merge key by key, anything else is replaced.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// A `.env` file: `KEY=VALUE` lines, `#` comments, optional quotes. Missing is fine.
pub fn dot_env(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            return Err(CliError::msg(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    parse_env_lines(&text, path)
}

/// `KEY=VALUE` lines (env files and `.env`).
pub fn parse_env_lines(text: &str, path: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(CliError::msg(format!(
                "{}:{}: invalid line {line:?}: expected KEY=VALUE",
                path.display(),
                n + 1
            )));
        };
        let v = v.trim();
        let v = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|r| r.strip_suffix(*q)))
            .unwrap_or(v);
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

type InterpError = (KeyPath, String);

fn interpolate(
    v: Value,
    path: &KeyPath,
    vars: &BTreeMap<String, String>,
) -> std::result::Result<Value, InterpError> {
    Ok(match v {
        Value::String(s) => Value::String(substitute(&s, vars).map_err(|m| (path.clone(), m))?),
        Value::Sequence(l) => Value::Sequence(
            l.into_iter()
                .enumerate()
                .map(|(i, x)| interpolate(x, &path.index(i), vars))
                .collect::<std::result::Result<_, _>>()?,
        ),
        Value::Mapping(m) => {
            let mut out = Mapping::new();
            for (k, x) in m {
                let p = match &k {
                    Value::String(s) => path.key(s),
                    _ => path.clone(),
                };
                out.insert(k, interpolate(x, &p, vars)?);
            }
            Value::Mapping(out)
        }
        other => other,
    })
}

/// Docker's (and the shell's) substitution in one string.
pub fn substitute(s: &str, vars: &BTreeMap<String, String>) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = closing_brace(r)
                .ok_or_else(|| format!("invalid interpolation format in {s:?}: missing '}}'"))?;
            out.push_str(&expand(&r[..end], s, vars)?);
            rest = &r[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 {
                return Err(format!(
                    "invalid interpolation format in {s:?}: use $$ for a literal $"
                ));
            }
            out.push_str(vars.get(&after[..len]).map_or("", String::as_str));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The index of the `}` closing a `${` whose inside starts `r` (defaults may nest `${…}`).
fn closing_brace(r: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in r.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The inside of `${…}`.
fn expand(
    inner: &str,
    whole: &str,
    vars: &BTreeMap<String, String>,
) -> std::result::Result<String, String> {
    let name_len = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, op) = inner.split_at(name_len);
    if name.is_empty() {
        return Err(format!(
            "invalid interpolation format for {whole:?}: a variable name is missing"
        ));
    }
    let val = vars.get(name);
    let set_nonempty = val.is_some_and(|v| !v.is_empty());
    let sub = |w: &str| substitute(w, vars);
    Ok(match op {
        "" => val.cloned().unwrap_or_default(),
        _ if op.starts_with(":-") => {
            if set_nonempty {
                val.cloned().unwrap_or_default()
            } else {
                sub(&op[2..])?
            }
        }
        _ if op.starts_with('-') => match val {
            Some(v) => v.clone(),
            None => sub(&op[1..])?,
        },
        _ if op.starts_with(":?") => {
            if set_nonempty {
                val.cloned().unwrap_or_default()
            } else {
                return Err(format!(
                    "required variable {name} is missing a value: {}",
                    &op[2..]
                ));
            }
        }
        _ if op.starts_with('?') => match val {
            Some(v) => v.clone(),
            None => {
                return Err(format!(
                    "required variable {name} is missing a value: {}",
                    &op[1..]
                ))
            }
        },
        _ if op.starts_with(":+") => {
            if set_nonempty {
                sub(&op[2..])?
            } else {
                String::new()
            }
        }
        _ if op.starts_with('+') => {
            if val.is_some() {
                sub(&op[1..])?
            } else {
                String::new()
            }
        }
        _ => return Err(format!("invalid interpolation format for {whole:?}")),
    })
}

/// The 1-based line of `path` in block-style YAML `text`: the line of its deepest segment
/// found (a flow-style `{…}`/`[…]` value is not entered). None when not even the first
/// segment is there.
pub fn locate(text: &str, path: &[Seg]) -> Option<usize> {
    // Each line as entries (indent, content, line): "- a: 1" gives a "-" entry and an
    // "a: 1" entry two columns further in.
    let mut entries: Vec<(usize, &str, usize)> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
            continue;
        }
        let mut indent = raw.len() - trimmed.len();
        let mut content = trimmed;
        while let Some(r) =
            content
                .strip_prefix("- ")
                .or(if content == "-" { Some("") } else { None })
        {
            entries.push((indent, "-", n + 1));
            let inner = r.trim_start();
            indent += content.len() - inner.len();
            content = inner;
            if content.is_empty() {
                break;
            }
        }
        if !content.is_empty() {
            entries.push((indent, content, n + 1));
        }
    }
    let mut lo = 0;
    let mut hi = entries.len();
    let mut found = None;
    for seg in path {
        let Some(level) = entries[lo..hi].iter().map(|e| e.0).min() else {
            break;
        };
        let at_level = (lo..hi).filter(|&i| entries[i].0 == level);
        let hit = match seg {
            Seg::Key(k) => at_level
                .into_iter()
                .find(|&i| key_of(entries[i].1) == Some(k.as_str())),
            Seg::Index(n) => at_level
                .into_iter()
                .filter(|&i| entries[i].1 == "-")
                .nth(*n),
        };
        let Some(i) = hit else { break };
        found = Some(entries[i].2);
        let end = (i + 1..hi).find(|&j| entries[j].0 <= level).unwrap_or(hi);
        // A "-" entry's children start on its own line, at the next entry.
        lo = i + 1;
        hi = end;
        if let Seg::Key(_) = seg {
            // The value on the key's own line (flow or scalar) has no children to enter.
            if lo >= hi {
                break;
            }
        }
    }
    found
}

/// The key of a `key: value` line (quotes removed).
fn key_of(content: &str) -> Option<&str> {
    let (k, _) = if let Some(r) = content.strip_prefix('"') {
        let end = r.find('"')?;
        return r[end + 1..].starts_with(':').then_some(&r[..end]);
    } else if let Some(r) = content.strip_prefix('\'') {
        let end = r.find('\'')?;
        return r[end + 1..].starts_with(':').then_some(&r[..end]);
    } else {
        content.split_once(':')?
    };
    Some(k.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitution_follows_docker() {
        let v = vars(&[("TAG", "1.2"), ("EMPTY", "")]);
        assert_eq!(substitute("img:${TAG}", &v).unwrap(), "img:1.2");
        assert_eq!(substitute("img:$TAG-x", &v).unwrap(), "img:1.2-x");
        assert_eq!(substitute("${NOPE:-def}", &v).unwrap(), "def");
        assert_eq!(substitute("${EMPTY:-def}", &v).unwrap(), "def");
        assert_eq!(substitute("${EMPTY-def}", &v).unwrap(), "");
        assert_eq!(substitute("${NOPE-a${TAG}}", &v).unwrap(), "a1.2");
        assert_eq!(substitute("$$HOME", &v).unwrap(), "$HOME");
        assert_eq!(substitute("${NOPE}", &v).unwrap(), "");
        assert!(substitute("${NOPE:?must be set}", &v)
            .unwrap_err()
            .contains("required variable NOPE is missing a value: must be set"));
        assert!(substitute("${TAG", &v).is_err());
        assert!(substitute("a $ b", &v).is_err());
    }

    #[test]
    fn locate_finds_keys_and_list_items() {
        let text = "\
version: '3.8'
services:
  web:
    image: x
    ports:
      - 80:80
      - target: 81
        published: 8081
    deploy:
      replicas: 2
  db:
    image: y
";
        let p = |s: &[Seg]| locate(text, s);
        let k = |s: &str| Seg::Key(s.into());
        assert_eq!(
            p(&[k("services"), k("web"), k("deploy"), k("replicas")]),
            Some(10)
        );
        assert_eq!(p(&[k("services"), k("db"), k("image")]), Some(12));
        assert_eq!(
            p(&[k("services"), k("web"), k("ports"), Seg::Index(1)]),
            Some(7)
        );
        assert_eq!(
            p(&[
                k("services"),
                k("web"),
                k("ports"),
                Seg::Index(1),
                k("published")
            ]),
            Some(8)
        );
        // Not there: the deepest part that is.
        assert_eq!(p(&[k("services"), k("web"), k("nope")]), Some(3));
        assert_eq!(p(&[k("nope")]), None);
    }

    #[test]
    fn dot_env_lines() {
        let m = parse_env_lines(
            "# c\nA=1\nexport B=\"two words\"\n\nC='x=y'\n",
            Path::new(".env"),
        )
        .unwrap();
        assert_eq!(m, vars(&[("A", "1"), ("B", "two words"), ("C", "x=y")]));
        assert!(parse_env_lines("oops\n", Path::new(".env")).is_err());
    }
}
