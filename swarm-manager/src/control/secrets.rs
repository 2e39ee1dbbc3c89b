//! CreateSecret … RemoveConfig, and the secret and config references of a service's task
//! spec: SwarmKit's rules and messages, one implementation for both kinds ([`Blob`]).
//!
//! A secret's data goes into the store and never comes back out through this API: every
//! answer carries the secret with its data cleared. A config's data is returned.

use std::collections::BTreeMap;

use proto::{
    Config, ConfigReference, ConfigSpec, ContainerSpec, CreateConfigRequest, CreateSecretRequest,
    FileTarget, GetConfigRequest, GetSecretRequest, ListConfigsRequest, ListConfigsResponse,
    ListFilters, ListSecretsRequest, ListSecretsResponse, RemoveConfigRequest,
    RemoveConfigResponse, RemoveSecretRequest, RemoveSecretResponse, Secret, SecretReference,
    SecretSpec, ServiceSpec,
};
use swarm_common::id::new_id;
use tonic::Status;

use super::linearize;
use crate::api::propose_status;
use crate::store::{Kind, Object, Op, State, Store};

/// SwarmKit's limits: a secret's data is under 500 KiB, a config's under 1000 KiB.
pub const MAX_SECRET_SIZE: usize = 500 * 1024;
pub const MAX_CONFIG_SIZE: usize = 1000 * 1024;
/// Docker's default permission bits of a secret or config file.
pub const DEFAULT_FILE_MODE: u32 = 0o444;

/// What secrets and configs have in common, so that one code path serves both.
trait Blob: Clone + Into<Object> + 'static {
    const KIND: Kind;
    const MAX_SIZE: usize;
    fn id(&self) -> &str;
    fn name(&self) -> &str;
    fn labels(&self) -> Option<&BTreeMap<String, String>>;
    fn data(&self) -> &[u8];
    fn all(st: &State) -> Vec<&Self>;
    fn get<'a>(st: &'a State, id: &str) -> Option<&'a Self>;
    fn from_object(o: Object) -> Option<Self>;
    /// What the API may return of it.
    fn redacted(self) -> Self;
    /// The ids of this kind a container spec references.
    fn referenced_ids(c: &ContainerSpec) -> Vec<&str>;
}

/// The parts of [`Blob`] that read the same in both kinds (their fields have one layout).
macro_rules! blob_fields {
    ($variant:ident, $all:ident, $one:ident, $refs:ident, $ref_id:ident) => {
        fn id(&self) -> &str {
            &self.id
        }
        fn name(&self) -> &str {
            self.spec.as_ref().map_or("", |s| s.name.as_str())
        }
        fn labels(&self) -> Option<&BTreeMap<String, String>> {
            self.spec.as_ref().map(|s| &s.labels)
        }
        fn data(&self) -> &[u8] {
            self.spec.as_ref().map_or(&[], |s| s.data.as_slice())
        }
        fn all(st: &State) -> Vec<&Self> {
            st.$all().collect()
        }
        fn get<'a>(st: &'a State, id: &str) -> Option<&'a Self> {
            st.$one(id)
        }
        fn from_object(o: Object) -> Option<Self> {
            match o {
                Object::$variant(x) => Some(x),
                _ => None,
            }
        }
        fn referenced_ids(c: &ContainerSpec) -> Vec<&str> {
            c.$refs.iter().map(|r| r.$ref_id.as_str()).collect()
        }
    };
}

impl Blob for Secret {
    const KIND: Kind = Kind::Secret;
    const MAX_SIZE: usize = MAX_SECRET_SIZE;
    blob_fields!(Secret, secrets, secret, secrets, secret_id);
    /// Without its data: the API never returns it.
    fn redacted(mut self) -> Self {
        if let Some(spec) = self.spec.as_mut() {
            spec.data = Vec::new();
        }
        self
    }
}

impl Blob for Config {
    const KIND: Kind = Kind::Config;
    const MAX_SIZE: usize = MAX_CONFIG_SIZE;
    blob_fields!(Config, configs, config, configs, config_id);
    /// Whole: a config's data is returned.
    fn redacted(self) -> Self {
        self
    }
}

/// SwarmKit's name rule for secrets and configs.
pub fn validate_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("name must be provided"));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let ok = name.len() <= 64
        && name
            .chars()
            .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        && name.starts_with(alnum)
        && name.ends_with(alnum);
    if !ok {
        return Err(Status::invalid_argument(format!(
            "invalid name {name:?}, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]"
        )));
    }
    Ok(())
}

async fn create<T: Blob>(store: &Store, obj: T) -> Result<T, Status> {
    let kind = T::KIND;
    validate_name(obj.name())?;
    let size = obj.data().len();
    if size == 0 || size >= T::MAX_SIZE {
        return Err(Status::invalid_argument(format!(
            "{kind} data must be larger than 0 and less than {} bytes ({kind} {} has {size})",
            T::MAX_SIZE,
            obj.name()
        )));
    }
    if T::all(&store.read()).iter().any(|o| o.name() == obj.name()) {
        return Err(Status::already_exists(format!(
            "{kind} {} already exists",
            obj.name()
        )));
    }
    // The id only, never the data.
    tracing::info!(id = obj.id(), "creating {kind}");
    let objs = store
        .write(vec![Op::Create(obj.into())])
        .await
        .map_err(propose_status)?;
    objs.into_iter()
        .next()
        .flatten()
        .and_then(T::from_object)
        .map(T::redacted)
        .ok_or_else(|| Status::internal(format!("the store did not return the written {kind}")))
}

/// The one object `reference` names: its id, its name, or a unique id prefix.
fn find<'a, T: Blob>(st: &'a State, reference: &str) -> Result<&'a T, Status> {
    let kind = T::KIND;
    if reference.is_empty() {
        return Err(Status::invalid_argument(format!(
            "a {kind} ID, ID prefix or name must be provided"
        )));
    }
    if let Some(o) = T::get(st, reference) {
        return Ok(o);
    }
    let all = T::all(st);
    if let Some(o) = all.iter().find(|o| o.name() == reference) {
        return Ok(o);
    }
    let prefixed: Vec<&&T> = all
        .iter()
        .filter(|o| o.id().starts_with(reference))
        .collect();
    match prefixed.as_slice() {
        [] => Err(Status::not_found(format!("{kind} {reference} not found"))),
        [one] => Ok(one),
        many => Err(Status::invalid_argument(format!(
            "{kind} {reference} is ambiguous: multiple IDs found with provided prefix ({} {kind}s match); give more characters of the ID",
            many.len()
        ))),
    }
}

/// Docker's `ls` filters (SwarmKit's ListSecrets/ListConfigs filters).
fn matches<T: Blob>(o: &T, f: &ListFilters) -> bool {
    let name_ok =
        f.name_prefixes.is_empty() || f.name_prefixes.iter().any(|p| o.name().starts_with(p));
    let id_ok = f.id_prefixes.is_empty() || f.id_prefixes.iter().any(|p| o.id().starts_with(p));
    let labels = o.labels();
    let labels_ok = f.labels.iter().all(|(k, v)| {
        labels
            .and_then(|l| l.get(k))
            .is_some_and(|have| v.is_empty() || have == v)
    });
    name_ok && id_ok && labels_ok
}

async fn list<T: Blob>(store: &Store, filters: Option<ListFilters>) -> Result<Vec<T>, Status> {
    linearize(store).await?;
    let f = filters.unwrap_or_default();
    let st = store.read();
    Ok(T::all(&st)
        .into_iter()
        .filter(|o| matches(*o, &f))
        .map(|o| o.clone().redacted())
        .collect())
}

async fn get<T: Blob>(store: &Store, reference: &str) -> Result<T, Status> {
    linearize(store).await?;
    let st = store.read();
    find::<T>(&st, reference).map(|o| o.clone().redacted())
}

/// Refused while a service's spec references it (SwarmKit checks services, not tasks: a task
/// that still runs keeps the files it was given).
async fn remove<T: Blob>(store: &Store, reference: &str) -> Result<(), Status> {
    let kind = T::KIND;
    let id = {
        let st = store.read();
        let o = find::<T>(&st, reference)?;
        let mut users: Vec<&str> = st
            .services()
            .filter(|s| {
                s.spec
                    .as_ref()
                    .and_then(|sp| sp.task.as_ref())
                    .and_then(|t| t.container.as_ref())
                    .is_some_and(|c| T::referenced_ids(c).contains(&o.id()))
            })
            .map(|s| s.name())
            .collect();
        users.sort_unstable();
        if !users.is_empty() {
            let noun = if users.len() == 1 {
                "service"
            } else {
                "services"
            };
            return Err(Status::invalid_argument(format!(
                "{kind} '{}' is in use by the following {noun}: {}",
                o.name(),
                users.join(", ")
            )));
        }
        o.id().to_string()
    };
    tracing::info!(id = %id, "removing {kind}");
    store
        .write(vec![Op::Delete { kind, id }])
        .await
        .map_err(propose_status)?;
    Ok(())
}

// ------------------------------------------------------------ the RPCs

/// The four RPCs of one kind over the generic implementation above.
macro_rules! kind_rpcs {
    (
        $obj:ident, $spec:ident, $id:ident, $items:ident, $what:literal,
        $create:ident($create_req:ident), $get:ident($get_req:ident),
        $list:ident($list_req:ident) -> $list_resp:ident,
        $remove:ident($remove_req:ident) -> $remove_resp:ident
    ) => {
        pub(super) async fn $create(store: &Store, req: $create_req) -> Result<$obj, Status> {
            let spec: $spec = req.spec.ok_or_else(|| {
                Status::invalid_argument(concat!(
                    "the request needs a ",
                    $what,
                    " spec (name, data)"
                ))
            })?;
            let obj = $obj {
                id: new_id(),
                meta: None,
                spec: Some(spec),
            };
            create(store, obj).await
        }

        pub(super) async fn $get(store: &Store, req: $get_req) -> Result<$obj, Status> {
            get(store, &req.$id).await
        }

        pub(super) async fn $list(store: &Store, req: $list_req) -> Result<$list_resp, Status> {
            Ok($list_resp {
                $items: list(store, req.filters).await?,
            })
        }

        pub(super) async fn $remove(
            store: &Store,
            req: $remove_req,
        ) -> Result<$remove_resp, Status> {
            remove::<$obj>(store, &req.$id).await?;
            Ok($remove_resp {})
        }
    };
}

kind_rpcs!(
    Secret, SecretSpec, secret_id, secrets, "secret",
    create_secret(CreateSecretRequest), get_secret(GetSecretRequest),
    list_secrets(ListSecretsRequest) -> ListSecretsResponse,
    remove_secret(RemoveSecretRequest) -> RemoveSecretResponse
);

kind_rpcs!(
    Config, ConfigSpec, config_id, configs, "config",
    create_config(CreateConfigRequest), get_config(GetConfigRequest),
    list_configs(ListConfigsRequest) -> ListConfigsResponse,
    remove_config(RemoveConfigRequest) -> RemoveConfigResponse
);

// ------------------------------------------------------------ references in services

/// One reference as the checks see it: (id, name, target) borrowed mutably from either kind.
struct RefMut<'a> {
    id: &'a mut String,
    name: &'a mut String,
    file: &'a mut Option<FileTarget>,
}

fn secret_refs(refs: &mut [SecretReference]) -> Vec<RefMut<'_>> {
    refs.iter_mut()
        .map(|r| RefMut {
            id: &mut r.secret_id,
            name: &mut r.secret_name,
            file: &mut r.file,
        })
        .collect()
}

fn config_refs(refs: &mut [ConfigReference]) -> Vec<RefMut<'_>> {
    refs.iter_mut()
        .map(|r| RefMut {
            id: &mut r.config_id,
            name: &mut r.config_name,
            file: &mut r.file,
        })
        .collect()
}

/// A path in the container a secret or config may be written to: absolute, or relative
/// without `..`, empty or `.` components.
fn check_target(kind: Kind, name: &str, target: &str) -> Result<(), Status> {
    let bad = target.is_empty()
        || target.contains('\0')
        || target
            .trim_start_matches('/')
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Status::invalid_argument(format!(
            "invalid target {target:?} of {kind} {name}: give a file name (or path) without empty, '.' or '..' components"
        )));
    }
    Ok(())
}

fn check_owner(kind: Kind, name: &str, what: &str, value: &str) -> Result<(), Status> {
    if !value.is_empty() && value.parse::<u32>().is_err() {
        return Err(Status::invalid_argument(format!(
            "invalid {what} {value:?} of {kind} {name}: give a numeric {what}"
        )));
    }
    Ok(())
}

/// Resolves and checks one kind's references: each names an existing object (by id, or by
/// name when the id is empty; SwarmKit's "secret not found" otherwise), gets Docker's
/// defaults (target = the name, owner 0:0, mode 0444), and no two share a target.
fn resolve_kind<T: Blob>(st: &State, refs: Vec<RefMut<'_>>) -> Result<(), Status> {
    let kind = T::KIND;
    let mut missing = Vec::new();
    let mut targets: BTreeMap<String, String> = BTreeMap::new();
    for r in refs {
        let found = if r.id.is_empty() {
            T::all(st).into_iter().find(|o| o.name() == r.name.as_str())
        } else {
            T::get(st, r.id).filter(|o| r.name.is_empty() || o.name() == r.name.as_str())
        };
        let Some(o) = found else {
            missing.push(if r.name.is_empty() {
                r.id.clone()
            } else {
                r.name.clone()
            });
            continue;
        };
        *r.id = o.id().to_string();
        *r.name = o.name().to_string();
        let file = r.file.get_or_insert_with(|| FileTarget {
            name: o.name().to_string(),
            uid: "0".into(),
            gid: "0".into(),
            mode: DEFAULT_FILE_MODE,
        });
        if file.name.is_empty() {
            file.name = o.name().to_string();
        }
        check_target(kind, o.name(), &file.name)?;
        check_owner(kind, o.name(), "uid", &file.uid)?;
        check_owner(kind, o.name(), "gid", &file.gid)?;
        if file.mode > 0o777 {
            return Err(Status::invalid_argument(format!(
                "invalid mode {:o} of {kind} {}: give permission bits (0 to 0777)",
                file.mode,
                o.name()
            )));
        }
        if let Some(prev) = targets.insert(file.name.clone(), o.name().to_string()) {
            return Err(Status::invalid_argument(format!(
                "{kind} references '{prev}' and '{}' have a conflicting target: '{}'",
                o.name(),
                file.name
            )));
        }
    }
    if !missing.is_empty() {
        let noun = if missing.len() == 1 {
            kind.to_string()
        } else {
            format!("{kind}s")
        };
        return Err(Status::invalid_argument(format!(
            "{noun} not found: {}; create it first (swarm {kind} create)",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// The secret and config references of a service's task spec, resolved and checked.
pub(super) fn resolve_references(st: &State, spec: &mut ServiceSpec) -> Result<(), Status> {
    let Some(c) = spec.task.as_mut().and_then(|t| t.container.as_mut()) else {
        return Ok(());
    };
    resolve_kind::<Secret>(st, secret_refs(&mut c.secrets))?;
    resolve_kind::<Config>(st, config_refs(&mut c.configs))
}

#[cfg(test)]
mod tests;
