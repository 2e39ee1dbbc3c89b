//! `swarm secret create|ls|inspect|rm` and `swarm config create|ls|inspect|rm`: one
//! implementation for both kinds ([`Which`]), Docker's tables, inspect JSON and `--pretty`.

use std::collections::BTreeMap;
use std::io::Read;

use clap::{Args, Subcommand};
use proto::*;
use tonic::Code;

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::format::{ago, natural_cmp, timestamp};
use crate::table::Table;

/// The verbs of `swarm secret` and `swarm config` (the same for both kinds).
#[derive(Debug, Subcommand)]
pub enum DataCmd {
    /// Create one from a file or STDIN as content
    Create(CreateArgs),
    /// Display detailed information on one or more of them
    Inspect(InspectArgs),
    /// List them
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Remove one or more of them
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Labels
    #[arg(short, long, value_name = "key=value")]
    pub label: Vec<String>,
    /// NAME and FILE ("-" reads STDIN)
    #[arg(value_name = "NAME FILE|-")]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Filter output based on conditions provided (name=, id=, label=)
    #[arg(short, long, value_name = "filter")]
    pub filter: Vec<String>,
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format: "table" (default) or "json" (one object per line)
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Output format: "json" (default)
    #[arg(short, long)]
    pub format: Option<String>,
    /// Print the information in a human friendly format
    #[arg(long)]
    pub pretty: bool,
    #[arg(value_name = "NAME|ID")]
    pub refs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(value_name = "NAME|ID")]
    pub refs: Vec<String>,
}

/// Docker's argument counts, checked before connecting.
pub fn check_arity(which: Which, cmd: &DataCmd) -> Result<()> {
    use crate::arity::{check_args, Arity::*};
    let w = which.word();
    let upper = w.to_uppercase();
    match cmd {
        DataCmd::Create(a) => check_args(
            &format!("swarm {w} create"),
            &format!("swarm {w} create [OPTIONS] {upper} file|-"),
            Exactly(2),
            a.args.len(),
        ),
        DataCmd::Inspect(a) => check_args(
            &format!("swarm {w} inspect"),
            &format!("swarm {w} inspect [OPTIONS] {upper} [{upper}...]"),
            AtLeast(1),
            a.refs.len(),
        ),
        DataCmd::Rm(a) => check_args(
            &format!("swarm {w} rm"),
            &format!("swarm {w} rm {upper} [{upper}...]"),
            AtLeast(1),
            a.refs.len(),
        ),
        DataCmd::Ls(_) => Ok(()),
    }
}

/// Runs one `secret`/`config` verb.
pub async fn run(c: &Client, which: Which, cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Create(a) => create(c, which, a).await,
        DataCmd::Ls(a) => ls(c, which, a).await,
        DataCmd::Inspect(a) => inspect(c, which, a).await,
        DataCmd::Rm(a) => rm(c, which, a).await,
    }
}

/// Which kind a command works on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Which {
    Secret,
    Config,
}

impl Which {
    fn word(self) -> &'static str {
        match self {
            Which::Secret => "secret",
            Which::Config => "config",
        }
    }
}

/// A secret or a config as the commands show it. A secret's data is never there.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Item {
    pub id: String,
    pub version: u64,
    pub created_at: i64,
    pub updated_at: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Configs only.
    pub data: Option<Vec<u8>>,
}

fn meta(m: Option<&Meta>) -> (u64, i64, i64) {
    m.map_or((0, 0, 0), |m| (m.version, m.created_at, m.updated_at))
}

impl From<Secret> for Item {
    fn from(s: Secret) -> Self {
        let (version, created_at, updated_at) = meta(s.meta.as_ref());
        let spec = s.spec.unwrap_or_default();
        Item {
            id: s.id,
            version,
            created_at,
            updated_at,
            name: spec.name,
            labels: spec.labels,
            data: None,
        }
    }
}

impl From<Config> for Item {
    fn from(c: Config) -> Self {
        let (version, created_at, updated_at) = meta(c.meta.as_ref());
        let spec = c.spec.unwrap_or_default();
        Item {
            id: c.id,
            version,
            created_at,
            updated_at,
            name: spec.name,
            labels: spec.labels,
            data: Some(spec.data),
        }
    }
}

/// The data of `create NAME FILE|-`.
fn read_data(which: Which, file: &str) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin()
            .lock()
            .read_to_end(&mut data)
            .map_err(|e| CliError::msg(format!("error reading content from STDIN: {e}")))?;
    } else {
        data = std::fs::read(file).map_err(|e| {
            CliError::msg(format!(
                "error reading content from {file:?}: {e}; give a readable file, or - to read the {} from STDIN",
                which.word()
            ))
        })?;
    }
    Ok(data)
}

pub async fn create(c: &Client, which: Which, a: CreateArgs) -> Result<()> {
    let (name, file) = match a.args.as_slice() {
        [name, file] => (name.clone(), file.clone()),
        _ => unreachable!("arity checked before"),
    };
    let labels = crate::network_cmd::key_values("--label", &a.label)?;
    let data = read_data(which, &file)?;
    let mut ctl = c.control.clone();
    let id = match which {
        Which::Secret => {
            ctl.create_secret(CreateSecretRequest {
                spec: Some(SecretSpec { name, labels, data }),
            })
            .await
            .map_err(|s| c.err(s))?
            .into_inner()
            .id
        }
        Which::Config => {
            ctl.create_config(CreateConfigRequest {
                spec: Some(ConfigSpec { name, labels, data }),
            })
            .await
            .map_err(|s| c.err(s))?
            .into_inner()
            .id
        }
    };
    println!("{id}");
    Ok(())
}

/// Docker's `--filter` keys of `secret ls`/`config ls`.
pub fn parse_filters(items: &[String]) -> Result<ListFilters> {
    let mut f = ListFilters::default();
    for item in items {
        let Some((key, value)) = item.split_once('=') else {
            return Err(CliError::msg(format!(
                "bad format of filter (expected name=value): {item}"
            )));
        };
        match key {
            "name" => f.name_prefixes.push(value.to_string()),
            "id" => f.id_prefixes.push(value.to_string()),
            "label" => {
                let (k, v) = value.split_once('=').unwrap_or((value, ""));
                f.labels.insert(k.to_string(), v.to_string());
            }
            other => {
                return Err(CliError::msg(format!(
                    "invalid filter '{other}': use name=, id= or label="
                )))
            }
        }
    }
    Ok(f)
}

async fn list(c: &Client, which: Which, filters: Option<ListFilters>) -> Result<Vec<Item>> {
    let mut ctl = c.control.clone();
    let mut items: Vec<Item> = match which {
        Which::Secret => ctl
            .list_secrets(ListSecretsRequest { filters })
            .await
            .map_err(|s| c.err(s))?
            .into_inner()
            .secrets
            .into_iter()
            .map(Item::from)
            .collect(),
        Which::Config => ctl
            .list_configs(ListConfigsRequest { filters })
            .await
            .map_err(|s| c.err(s))?
            .into_inner()
            .configs
            .into_iter()
            .map(Item::from)
            .collect(),
    };
    items.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    Ok(items)
}

/// Docker's `secret ls` (`ID NAME DRIVER CREATED UPDATED`) and `config ls` (`ID NAME CREATED
/// UPDATED`) tables: full ids, times as "2 minutes ago".
pub fn ls_table(which: Which, items: &[Item], now_ms: i64) -> String {
    let mut t = match which {
        Which::Secret => Table::new(["ID", "NAME", "DRIVER", "CREATED", "UPDATED"]),
        Which::Config => Table::new(["ID", "NAME", "CREATED", "UPDATED"]),
    };
    for i in items {
        let mut row = vec![i.id.clone(), i.name.clone()];
        if which == Which::Secret {
            row.push(String::new());
        }
        row.push(ago(now_ms, i.created_at));
        row.push(ago(now_ms, i.updated_at));
        t.row(row);
    }
    t.render()
}

pub async fn ls(c: &Client, which: Which, a: LsArgs) -> Result<()> {
    let fmt = crate::template::Format::parse(&a.format);
    let filters = parse_filters(&a.filter)?;
    let items = list(c, which, Some(filters)).await?;
    if let crate::template::Format::Template { table, text } = &fmt {
        let now = swarm_common::clock::now_ms();
        let rows: Vec<_> = items
            .iter()
            .map(|i| crate::format_rows::data(which, i, now))
            .collect();
        let headers = crate::format_rows::data_headers(which);
        print!(
            "{}",
            crate::template::render_rows(*table, text, headers, &rows)?
        );
        return Ok(());
    }
    if a.quiet {
        for i in &items {
            println!("{}", i.id);
        }
    } else if fmt == crate::template::Format::Json {
        for i in &items {
            println!("{}", serde_json::to_string(&inspect_value(which, i))?);
        }
    } else {
        print!("{}", ls_table(which, &items, swarm_common::clock::now_ms()));
    }
    Ok(())
}

/// Standard base64 (what Go's encoding/json makes of a `[]byte`).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Docker's inspect object: `ID`, `Version.Index`, `CreatedAt`, `UpdatedAt`, `Spec` (`Name`,
/// `Labels`, and a config's `Data` in base64).
pub fn inspect_value(which: Which, i: &Item) -> serde_json::Value {
    let mut spec = serde_json::json!({"Name": i.name, "Labels": i.labels});
    if let (Which::Config, Some(data)) = (which, &i.data) {
        spec["Data"] = base64(data).into();
    }
    serde_json::json!({
        "ID": i.id,
        "Version": {"Index": i.version},
        "CreatedAt": timestamp(i.created_at),
        "UpdatedAt": timestamp(i.updated_at),
        "Spec": spec,
    })
}

/// Docker's `inspect --pretty`.
pub fn pretty(which: Which, i: &Item, now_ms: i64) -> String {
    let mut out = format!("ID:              {}\nName:              {}\n", i.id, i.name);
    if !i.labels.is_empty() {
        out.push_str("Labels:\n");
        for (k, v) in &i.labels {
            if v.is_empty() {
                out.push_str(&format!(" - {k}\n"));
            } else {
                out.push_str(&format!(" - {k}={v}\n"));
            }
        }
    }
    if which == Which::Secret {
        out.push_str("Driver:            \n");
    }
    out.push_str(&format!(
        "Created at:        {}\nUpdated at:        {}\n",
        ago(now_ms, i.created_at),
        ago(now_ms, i.updated_at)
    ));
    if let (Which::Config, Some(data)) = (which, &i.data) {
        out.push_str("Data:\n");
        out.push_str(&String::from_utf8_lossy(data));
        if !data.ends_with(b"\n") {
            out.push('\n');
        }
    }
    out
}

async fn get(c: &Client, which: Which, reference: &str) -> Result<Item> {
    let mut ctl = c.control.clone();
    let r = match which {
        Which::Secret => ctl
            .get_secret(GetSecretRequest {
                secret_id: reference.to_string(),
            })
            .await
            .map(|r| Item::from(r.into_inner())),
        Which::Config => ctl
            .get_config(GetConfigRequest {
                config_id: reference.to_string(),
            })
            .await
            .map(|r| Item::from(r.into_inner())),
    };
    r.map_err(|s| {
        if s.code() == Code::NotFound {
            CliError::msg(format!("No such {}: {reference}", which.word()))
        } else {
            c.err(s)
        }
    })
}

pub async fn inspect(c: &Client, which: Which, a: InspectArgs) -> Result<()> {
    if a.pretty && a.format.is_some() {
        return Err(CliError::msg(
            "--format is incompatible with human friendly format",
        ));
    }
    let tmpl = crate::template::inspect_template(&a.format, a.pretty)?;
    let mut items = Vec::new();
    let mut errors = Vec::new();
    for r in &a.refs {
        match get(c, which, r).await {
            Ok(i) => items.push(i),
            Err(e) => errors.push(e),
        }
    }
    if a.pretty {
        let now = swarm_common::clock::now_ms();
        let blocks: Vec<String> = items.iter().map(|i| pretty(which, i, now)).collect();
        print!("{}", blocks.join("\n\n"));
    } else {
        let values: Vec<serde_json::Value> =
            items.iter().map(|i| inspect_value(which, i)).collect();
        match tmpl {
            Some(t) => print!("{}", t.render_all(&values)?),
            None => println!("{}", crate::json::inspect_array(&values)?),
        }
    }
    CliError::join(errors).map_or(Ok(()), Err)
}

pub async fn rm(c: &Client, which: Which, a: RmArgs) -> Result<()> {
    let mut errors = Vec::new();
    for r in &a.refs {
        let id = match get(c, which, r).await {
            Ok(i) => i.id,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let mut ctl = c.control.clone();
        let res = match which {
            Which::Secret => ctl
                .remove_secret(RemoveSecretRequest { secret_id: id })
                .await
                .map(|_| ()),
            Which::Config => ctl
                .remove_config(RemoveConfigRequest { config_id: id })
                .await
                .map(|_| ()),
        };
        match res {
            Ok(()) => println!("{r}"),
            Err(s) => errors.push(c.err(s)),
        }
    }
    CliError::join(errors).map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, data: Option<&[u8]>) -> Item {
        Item {
            id: format!("{name}0123456789abcdefghijklm")[..25].to_string(),
            version: 12,
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_060_000,
            name: name.into(),
            labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
            data: data.map(|d| d.to_vec()),
        }
    }

    #[test]
    fn ls_tables_are_dockers() {
        let now = 1_700_000_120_000;
        let t = ls_table(Which::Secret, &[item("db_pw", None)], now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "ID                          NAME      DRIVER    CREATED         UPDATED"
        );
        assert_eq!(
            lines[1],
            "db_pw0123456789abcdefghij   db_pw               2 minutes ago   about a minute ago"
        );
        let t = ls_table(Which::Config, &[item("app.conf", Some(b"x"))], now);
        assert!(
            t.starts_with("ID                          NAME       CREATED         UPDATED\n"),
            "{t}"
        );
    }

    #[test]
    fn inspect_shows_a_configs_data_in_base64_and_never_a_secrets() {
        let v = inspect_value(Which::Config, &item("app.conf", Some(b"port=80\n")));
        assert_eq!(v["Spec"]["Data"], "cG9ydD04MAo=");
        assert_eq!(v["Spec"]["Name"], "app.conf");
        assert_eq!(v["Version"]["Index"], 12);
        assert_eq!(v["Spec"]["Labels"]["env"], "prod");
        let v = inspect_value(Which::Secret, &item("db_pw", None));
        assert!(v["Spec"].get("Data").is_none());
        for (data, b64) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
        ] {
            assert_eq!(base64(data), b64);
        }
    }

    #[test]
    fn pretty_is_dockers() {
        let now = 1_700_000_120_000;
        let p = pretty(Which::Config, &item("app.conf", Some(b"port=80")), now);
        assert!(p.contains("Name:              app.conf\n"), "{p}");
        assert!(p.contains("Labels:\n - env=prod\n"), "{p}");
        assert!(p.ends_with("Data:\nport=80\n"), "{p}");
        assert!(!p.contains("Driver"), "{p}");
        let p = pretty(Which::Secret, &item("db_pw", None), now);
        assert!(p.contains("Driver:"), "{p}");
        assert!(!p.contains("Data:"), "{p}");
    }

    #[test]
    fn filters_are_dockers() {
        let f = parse_filters(&[
            "name=db".to_string(),
            "id=abc".to_string(),
            "label=env=prod".to_string(),
            "label=tier".to_string(),
        ])
        .unwrap();
        assert_eq!(f.name_prefixes, ["db"]);
        assert_eq!(f.id_prefixes, ["abc"]);
        assert_eq!(f.labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(f.labels.get("tier").map(String::as_str), Some(""));
        let e = parse_filters(&["driver=x".to_string()]).unwrap_err();
        assert!(e.to_string().contains("invalid filter 'driver'"), "{e}");
    }
}
