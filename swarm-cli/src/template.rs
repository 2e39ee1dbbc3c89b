//! `--format` with Go templates, as Docker's `formatter` package does it, through `gtmpl`:
//! `'{{.Name}}'` prints one line per object, `'table {{.ID}}\t{{.Name}}'` a table whose
//! header row is the same template run on Docker's column headers, `'{{json .}}'` the
//! object's fields as a JSON object with sorted keys. `\t` and `\n` typed literally in the
//! format are tabs and newlines. Docker's extra functions are there: `json`, `join`, `split`,
//! `lower`, `upper`, `title`, `truncate`, `pad`.
//!
//! The objects are JSON values (a `serde_json::Map` per row, Docker's field names as keys),
//! so `{{json .}}` and `{{.Field}}` see the same thing.

use std::collections::BTreeMap;

use gtmpl::{Context, FuncError, Template, Value};
use serde_json::{Map, Value as Json};

use crate::error::{CliError, Result};
use crate::table::Table;

/// What `--format` asks of an `ls`/`ps` command.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// Unset, "" or "table": the command's own table.
    Default,
    /// "json": the object as the API gives it, one per line (the form before templates).
    Json,
    /// A Go template; `table` when it started with "table ".
    Template { table: bool, text: String },
}

impl Format {
    pub fn parse(f: &Option<String>) -> Format {
        match f.as_deref().map(str::trim) {
            None | Some("") | Some("table") => Format::Default,
            Some("json") => Format::Json,
            Some(t) => match t.strip_prefix("table") {
                Some(rest) if rest.starts_with([' ', '\t']) => Format::Template {
                    table: true,
                    text: unescape(rest.trim()),
                },
                _ => Format::Template {
                    table: false,
                    text: unescape(t),
                },
            },
        }
    }
}

/// Docker replaces a literal `\t` and `\n` of the format by a tab and a newline.
fn unescape(s: &str) -> String {
    s.replace("\\t", "\t").replace("\\n", "\n")
}

/// A parsed template with Docker's functions.
pub struct GoTemplate {
    tmpl: Template,
    source: String,
}

impl GoTemplate {
    pub fn parse(text: &str) -> Result<GoTemplate> {
        let mut tmpl = Template::default();
        tmpl.add_funcs(&[
            ("json", json as gtmpl::Func),
            ("join", join as gtmpl::Func),
            ("split", split as gtmpl::Func),
            ("lower", lower as gtmpl::Func),
            ("upper", upper as gtmpl::Func),
            ("title", title as gtmpl::Func),
            ("truncate", truncate as gtmpl::Func),
            ("pad", pad as gtmpl::Func),
        ]);
        tmpl.parse(text).map_err(|e| {
            CliError::msg(format!(
                "template parsing error: {e} (in --format {text:?})"
            ))
        })?;
        Ok(GoTemplate {
            tmpl,
            source: text.to_string(),
        })
    }

    /// The template run on one object.
    pub fn render(&self, data: &Json) -> Result<String> {
        self.tmpl
            .render(&Context::from(to_gtmpl(data)))
            .map_err(|e| CliError::msg(format!("template: {e} (in --format {:?})", self.source)))
    }
}

/// The output of `ls`/`ps` for a template format: one line per row, or with `table` a
/// header row (`headers`: field name → Docker's column title) and columns aligned as Go's
/// tabwriter does. A table header is printed even without rows, as Docker does.
pub fn render_rows(
    table: bool,
    text: &str,
    headers: &[(&str, &str)],
    rows: &[Map<String, Json>],
) -> Result<String> {
    let t = GoTemplate::parse(text)?;
    let mut lines = Vec::with_capacity(rows.len() + 1);
    if table {
        let head: Map<String, Json> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), Json::String(v.to_string())))
            .collect();
        lines.push(t.render(&Json::Object(head))?);
    }
    for r in rows {
        lines.push(t.render(&Json::Object(r.clone()))?);
    }
    if !table {
        return Ok(lines.iter().map(|l| format!("{l}\n")).collect());
    }
    // Each rendered row may hold several lines; tabs make the columns.
    let mut cells = lines
        .iter()
        .flat_map(|l| l.split('\n'))
        .map(|l| l.split('\t').map(str::to_string).collect::<Vec<_>>());
    let mut tbl = Table::new(cells.next().unwrap_or_default());
    for c in cells {
        tbl.row(c);
    }
    Ok(tbl.render())
}

/// A JSON value as gtmpl sees it: objects become maps (fields by name), numbers numbers.
pub fn to_gtmpl(v: &Json) -> Value {
    match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Value::from(u),
            (_, Some(i), _) => Value::from(i),
            (_, _, Some(f)) => Value::from(f),
            _ => Value::Nil,
        },
        Json::String(s) => Value::String(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(to_gtmpl).collect()),
        Json::Object(o) => Value::Map(o.iter().map(|(k, v)| (k.clone(), to_gtmpl(v))).collect()),
    }
}

/// The other way, keys sorted (Go's `json.Marshal` of a map).
pub fn from_gtmpl(v: &Value) -> Json {
    match v {
        Value::NoValue | Value::Nil | Value::Function(_) => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Json::from(u)
            } else if let Some(i) = n.as_i64() {
                Json::from(i)
            } else {
                n.as_f64().map_or(Json::Null, Json::from)
            }
        }
        Value::Array(a) => Json::Array(a.iter().map(from_gtmpl).collect()),
        Value::Map(m) | Value::Object(m) => {
            let sorted: BTreeMap<&String, Json> =
                m.iter().map(|(k, v)| (k, from_gtmpl(v))).collect();
            Json::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
    }
}

/// Go's `json.Marshal` escapes `<`, `>` and `&` in strings; serde_json does not.
fn go_json(v: &Json) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

fn arity(name: &str, args: &[Value], n: usize) -> std::result::Result<(), FuncError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(FuncError::Generic(format!(
            "{name} takes {n} argument(s), got {}",
            args.len()
        )))
    }
}

fn string_arg(name: &str, v: &Value) -> std::result::Result<String, FuncError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(_) | Value::Bool(_) => Ok(v.to_string()),
        Value::Nil | Value::NoValue => Ok(String::new()),
        other => Err(FuncError::Generic(format!(
            "{name}: expected a string, got {other}"
        ))),
    }
}

fn json(args: &[Value]) -> std::result::Result<Value, FuncError> {
    arity("json", args, 1)?;
    Ok(Value::String(go_json(&from_gtmpl(&args[0]))))
}

fn join(args: &[Value]) -> std::result::Result<Value, FuncError> {
    arity("join", args, 2)?;
    let sep = string_arg("join", &args[1])?;
    let items = match &args[0] {
        Value::Array(a) => a
            .iter()
            .map(|v| string_arg("join", v))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Value::Nil | Value::NoValue => Vec::new(),
        other => vec![string_arg("join", other)?],
    };
    Ok(Value::String(items.join(&sep)))
}

fn split(args: &[Value]) -> std::result::Result<Value, FuncError> {
    arity("split", args, 2)?;
    let s = string_arg("split", &args[0])?;
    let sep = string_arg("split", &args[1])?;
    Ok(Value::Array(
        s.split(sep.as_str())
            .map(|p| Value::String(p.to_string()))
            .collect(),
    ))
}

fn lower(args: &[Value]) -> std::result::Result<Value, FuncError> {
    arity("lower", args, 1)?;
    Ok(Value::String(string_arg("lower", &args[0])?.to_lowercase()))
}

fn upper(args: &[Value]) -> std::result::Result<Value, FuncError> {
    arity("upper", args, 1)?;
    Ok(Value::String(string_arg("upper", &args[0])?.to_uppercase()))
}

fn title(args: &[Value]) -> std::result::Result<Value, FuncError> {
    arity("title", args, 1)?;
    let s = string_arg("title", &args[0])?;
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = c.is_whitespace();
    }
    Ok(Value::String(out))
}

fn int_arg(name: &str, v: &Value) -> std::result::Result<usize, FuncError> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| FuncError::Generic(format!("{name}: expected a count, got {v}"))),
        other => Err(FuncError::Generic(format!(
            "{name}: expected a count, got {other}"
        ))),
    }
}

/// `truncate S N`: the first N characters.
fn truncate(args: &[Value]) -> std::result::Result<Value, FuncError> {
    arity("truncate", args, 2)?;
    let s = string_arg("truncate", &args[0])?;
    let n = int_arg("truncate", &args[1])?;
    Ok(Value::String(s.chars().take(n).collect()))
}

/// `pad S L R`: S with L spaces before and R after.
fn pad(args: &[Value]) -> std::result::Result<Value, FuncError> {
    arity("pad", args, 3)?;
    let s = string_arg("pad", &args[0])?;
    let l = int_arg("pad", &args[1])?;
    let r = int_arg("pad", &args[2])?;
    Ok(Value::String(format!(
        "{}{s}{}",
        " ".repeat(l),
        " ".repeat(r)
    )))
}

/// The template of `inspect --format`, checked before anything is fetched; `None` for
/// the JSON array (unset, "" or "json") and for `--pretty`. It runs on each object as
/// `inspect` prints it but with Docker's (Go's) field names, so that Docker's templates
/// work: `{{.ID}}`, `{{.Spec.Name}}`, `{{.Meta.CreatedAt}}`, `{{json .Spec.Labels}}`.
pub fn inspect_template(format: &Option<String>, pretty: bool) -> Result<Option<GoTemplate>> {
    match format.as_deref().map(str::trim) {
        _ if pretty => Ok(None),
        None | Some("") | Some("json") => Ok(None),
        Some(t) => GoTemplate::parse(&unescape(t)).map(Some),
    }
}

impl GoTemplate {
    /// One rendered line per inspected object (see [`inspect_template`]).
    pub fn render_all(&self, values: &[Json]) -> Result<String> {
        let mut out = String::new();
        for v in values {
            out.push_str(&self.render(&docker_names(v))?);
            out.push('\n');
        }
        Ok(out)
    }
}

/// `v` with every field named as Go names it (`created_at` → `CreatedAt`). The keys of
/// user maps (labels, driver options) stay as they are.
pub fn docker_names(v: &Json) -> Json {
    match v {
        Json::Array(a) => Json::Array(a.iter().map(docker_names).collect()),
        Json::Object(o) => Json::Object(
            o.iter()
                .map(|(k, v)| {
                    let user_map =
                        k.ends_with("labels") || k.ends_with("options") || k.ends_with("opts");
                    let v = if user_map { v.clone() } else { docker_names(v) };
                    (go_name(k), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `created_at` → `CreatedAt`, `id` → `ID`, `node_id` → `NodeID`.
fn go_name(key: &str) -> String {
    key.split('_')
        .map(|part| match part {
            "id" => "ID".to_string(),
            "ip" => "IP".to_string(),
            "tls" => "TLS".to_string(),
            _ => {
                let mut c = part.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect())
                    .unwrap_or_default()
            }
        })
        .collect()
}

/// A row from `(field, value)` pairs.
pub fn row<const N: usize>(fields: [(&str, Json); N]) -> Map<String, Json> {
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// Docker's `Labels` field of a row: `k=v` pairs joined by commas, sorted.
pub fn labels_field(labels: &std::collections::BTreeMap<String, String>) -> Json {
    Json::String(
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render_inspect(text: &str, values: &[Json]) -> Result<String> {
        inspect_template(&Some(text.to_string()), false)?
            .expect("a template")
            .render_all(values)
    }

    fn rows() -> Vec<Map<String, Json>> {
        vec![
            row([
                ("ID", json!("abc")),
                ("Name", json!("web")),
                ("Replicas", json!("2/2")),
                ("Self", json!(true)),
            ]),
            row([
                ("ID", json!("def")),
                ("Name", json!("a-long-name")),
                ("Replicas", json!("0/1")),
                ("Self", json!(false)),
            ]),
        ]
    }

    const HEAD: &[(&str, &str)] = &[("ID", "ID"), ("Name", "NAME"), ("Replicas", "REPLICAS")];

    #[test]
    fn formats_parse_as_dockers() {
        assert_eq!(Format::parse(&None), Format::Default);
        assert_eq!(Format::parse(&Some("table".into())), Format::Default);
        assert_eq!(Format::parse(&Some("json".into())), Format::Json);
        assert_eq!(
            Format::parse(&Some("table {{.ID}}\\t{{.Name}}".into())),
            Format::Template {
                table: true,
                text: "{{.ID}}\t{{.Name}}".into()
            }
        );
        assert_eq!(
            Format::parse(&Some("{{.Name}}".into())),
            Format::Template {
                table: false,
                text: "{{.Name}}".into()
            }
        );
        // "tablet" is not the table prefix.
        assert!(matches!(
            Format::parse(&Some("tablet{{.ID}}".into())),
            Format::Template { table: false, .. }
        ));
    }

    #[test]
    fn plain_template_prints_a_line_per_row() {
        let out = render_rows(false, "{{.Name}} {{.Replicas}}", HEAD, &rows()).unwrap();
        assert_eq!(out, "web 2/2\na-long-name 0/1\n");
        let out = render_rows(false, "{{if .Self}}*{{end}}{{.ID}}", HEAD, &rows()).unwrap();
        assert_eq!(out, "*abc\ndef\n");
    }

    #[test]
    fn table_prefix_adds_headers_and_aligns_columns() {
        let out = render_rows(true, "{{.ID}}\t{{.Name}}\t{{.Replicas}}", HEAD, &rows()).unwrap();
        assert_eq!(
            out,
            "ID        NAME          REPLICAS\n\
             abc       web           2/2\n\
             def       a-long-name   0/1\n"
        );
        // Headers even when nothing matched.
        let out = render_rows(true, "{{.ID}}\t{{.Name}}", HEAD, &[]).unwrap();
        assert_eq!(out, "ID        NAME\n");
    }

    #[test]
    fn json_of_the_row_has_sorted_keys_and_go_escapes() {
        let out = render_rows(false, "{{json .}}", HEAD, &rows()[..1]).unwrap();
        assert_eq!(
            out,
            "{\"ID\":\"abc\",\"Name\":\"web\",\"Replicas\":\"2/2\",\"Self\":true}\n"
        );
        let r = [row([("Ports", json!("*:80->80/tcp & <x>"))])];
        let out = render_rows(false, "{{json .Ports}}", &[], &r).unwrap();
        assert_eq!(out, "\"*:80-\\u003e80/tcp \\u0026 \\u003cx\\u003e\"\n");
    }

    #[test]
    fn dockers_functions() {
        let r = [row([("Name", json!("shop_web")), ("L", json!(["a", "b"]))])];
        let one = |t: &str| render_rows(false, t, &[], &r).unwrap();
        assert_eq!(one("{{upper .Name}}"), "SHOP_WEB\n");
        assert_eq!(one("{{lower \"AB\"}}"), "ab\n");
        assert_eq!(one("{{title \"hello world\"}}"), "Hello World\n");
        assert_eq!(one("{{join .L \",\"}}"), "a,b\n");
        assert_eq!(one("{{index (split .Name \"_\") 1}}"), "web\n");
        assert_eq!(one("{{truncate .Name 4}}"), "shop\n");
        assert_eq!(one("{{pad .Name 1 2}}|"), " shop_web  |\n");
        assert_eq!(one("{{printf \"%s!\" .Name}}"), "shop_web!\n");
    }

    #[test]
    fn template_errors_are_reported_not_panics() {
        let e = render_rows(false, "{{.Name", HEAD, &rows()).unwrap_err();
        assert!(e.to_string().contains("template parsing error"), "{e}");
        let e = render_rows(false, "{{nosuchfunc .Name}}", HEAD, &rows()).unwrap_err();
        assert!(e.to_string().contains("template"), "{e}");
        let e = render_rows(false, "{{json}}", HEAD, &rows()).unwrap_err();
        assert!(e.to_string().contains("json"), "{e}");
    }

    #[test]
    fn inspect_templates_use_dockers_field_names() {
        let v = json!({"id": "n1", "spec": {"name": "web", "labels": {"tier_name": "b"}},
                       "meta": {"created_at": 5}, "node_id": "x"});
        assert_eq!(
            render_inspect(
                "{{.ID}} {{.Spec.Name}} {{.Meta.CreatedAt}} {{.NodeID}}",
                std::slice::from_ref(&v)
            )
            .unwrap(),
            "n1 web 5 x\n"
        );
        // Label keys are the user's: not renamed.
        assert_eq!(
            render_inspect("{{json .Spec.Labels}}", &[v]).unwrap(),
            "{\"tier_name\":\"b\"}\n"
        );
    }
}
