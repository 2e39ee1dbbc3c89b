//! Secrets and configs through the Control API over an in-memory store.

use proto::control_server::Control;
use proto::*;
use tonic::Code;

use super::super::tests::{api, create, local, spec, update};
use super::{MAX_CONFIG_SIZE, MAX_SECRET_SIZE};
use crate::control::ControlApi;

async fn new_secret(api: &ControlApi, name: &str, data: &[u8]) -> Result<Secret, tonic::Status> {
    api.create_secret(local(CreateSecretRequest {
        spec: Some(SecretSpec {
            name: name.into(),
            data: data.to_vec(),
            ..Default::default()
        }),
    }))
    .await
    .map(|r| r.into_inner())
}

async fn new_config(api: &ControlApi, name: &str, data: &[u8]) -> Result<Config, tonic::Status> {
    api.create_config(local(CreateConfigRequest {
        spec: Some(ConfigSpec {
            name: name.into(),
            data: data.to_vec(),
            ..Default::default()
        }),
    }))
    .await
    .map(|r| r.into_inner())
}

async fn remove_secret(api: &ControlApi, r: &str) -> Result<(), tonic::Status> {
    api.remove_secret(local(RemoveSecretRequest {
        secret_id: r.into(),
    }))
    .await
    .map(|_| ())
}

fn with_secrets(name: &str, secrets: Vec<SecretReference>) -> ServiceSpec {
    let mut s = spec(name, "busybox");
    s.task.as_mut().unwrap().container.as_mut().unwrap().secrets = secrets;
    s
}

fn by_name(name: &str) -> SecretReference {
    SecretReference {
        secret_name: name.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn sizes_and_names_follow_swarmkit() {
    let (api, _) = api();
    let e = new_secret(&api, "empty", b"").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("secret data must be larger than 0 and less than 512000 bytes"),
        "{}",
        e.message()
    );
    let e = new_secret(&api, "big", &vec![b'x'; MAX_SECRET_SIZE])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    new_secret(&api, "just_under", &vec![b'x'; MAX_SECRET_SIZE - 1])
        .await
        .unwrap();
    // A config may be twice as big.
    new_config(&api, "cfg", &vec![b'x'; MAX_SECRET_SIZE + 1])
        .await
        .unwrap();
    let e = new_config(&api, "cfg_big", &vec![b'x'; MAX_CONFIG_SIZE])
        .await
        .unwrap_err();
    assert!(
        e.message()
            .contains("config data must be larger than 0 and less than 1024000 bytes"),
        "{}",
        e.message()
    );
    for bad in ["-x", "x-", "a/b", "with space", &"a".repeat(65)] {
        let e = new_secret(&api, bad, b"1").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        assert!(
            e.message().contains("only 64 [a-zA-Z0-9-_.]"),
            "{}",
            e.message()
        );
    }
}

#[tokio::test]
async fn duplicate_names_are_refused() {
    let (api, _) = api();
    new_secret(&api, "db_pw", b"one").await.unwrap();
    let e = new_secret(&api, "db_pw", b"two").await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert_eq!(e.message(), "secret db_pw already exists");
    // Configs are another namespace.
    new_config(&api, "db_pw", b"cfg").await.unwrap();
    let e = new_config(&api, "db_pw", b"cfg").await.unwrap_err();
    assert_eq!(e.message(), "config db_pw already exists");
}

#[tokio::test]
async fn a_secrets_data_is_never_returned_a_configs_is() {
    let (api, store) = api();
    let created = new_secret(&api, "db_pw", b"hunter2").await.unwrap();
    assert!(created.spec.as_ref().unwrap().data.is_empty());
    let got = api
        .get_secret(local(GetSecretRequest {
            secret_id: "db_pw".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.id, created.id);
    assert!(got.spec.as_ref().unwrap().data.is_empty());
    let listed = api
        .list_secrets(local(ListSecretsRequest { filters: None }))
        .await
        .unwrap()
        .into_inner()
        .secrets;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].spec.as_ref().unwrap().data.is_empty());
    // The store keeps it (for the nodes that run its tasks).
    assert_eq!(
        store
            .read()
            .secret(&created.id)
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .data,
        b"hunter2"
    );
    let cfg = new_config(&api, "app.conf", b"port=80").await.unwrap();
    assert_eq!(cfg.spec.as_ref().unwrap().data, b"port=80");
    let got = api
        .get_config(local(GetConfigRequest {
            config_id: cfg.id[..6].into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.spec.as_ref().unwrap().data, b"port=80");
}

#[tokio::test]
async fn list_filters_by_name_prefix_id_prefix_and_label() {
    let (api, _) = api();
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("env".to_string(), "prod".to_string());
    let a = api
        .create_secret(local(CreateSecretRequest {
            spec: Some(SecretSpec {
                name: "app_key".into(),
                labels,
                data: b"k".to_vec(),
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    new_secret(&api, "db_pw", b"p").await.unwrap();
    let names = |f: ListFilters| {
        let api = api.clone();
        async move {
            let mut v: Vec<String> = api
                .list_secrets(local(ListSecretsRequest { filters: Some(f) }))
                .await
                .unwrap()
                .into_inner()
                .secrets
                .into_iter()
                .map(|s| s.spec.unwrap().name)
                .collect();
            v.sort();
            v
        }
    };
    let f = |n: &[&str], i: &[&str], l: &[(&str, &str)]| ListFilters {
        name_prefixes: n.iter().map(|s| s.to_string()).collect(),
        id_prefixes: i.iter().map(|s| s.to_string()).collect(),
        labels: l
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    assert_eq!(names(f(&[], &[], &[])).await, ["app_key", "db_pw"]);
    assert_eq!(names(f(&["db"], &[], &[])).await, ["db_pw"]);
    assert_eq!(names(f(&[], &[&a.id[..5]], &[])).await, ["app_key"]);
    assert_eq!(names(f(&[], &[], &[("env", "")])).await, ["app_key"]);
    assert_eq!(names(f(&[], &[], &[("env", "prod")])).await, ["app_key"]);
    assert!(names(f(&[], &[], &[("env", "dev")])).await.is_empty());
    assert!(names(f(&["db"], &[], &[("env", "")])).await.is_empty());
}

#[tokio::test]
async fn services_reference_existing_secrets_with_docker_defaults() {
    let (api, _) = api();
    let s = new_secret(&api, "db_pw", b"pw").await.unwrap();
    let e = create(&api, with_secrets("web", vec![by_name("nope")]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("secret not found: nope"),
        "{}",
        e.message()
    );
    let svc = create(&api, with_secrets("web", vec![by_name("db_pw")]))
        .await
        .unwrap();
    let r = &svc.spec.unwrap().task.unwrap().container.unwrap().secrets[0];
    assert_eq!(r.secret_id, s.id);
    assert_eq!(r.secret_name, "db_pw");
    let file = r.file.as_ref().unwrap();
    assert_eq!(
        (
            file.name.as_str(),
            file.uid.as_str(),
            file.gid.as_str(),
            file.mode
        ),
        ("db_pw", "0", "0", 0o444)
    );
    // Two references on one target.
    new_secret(&api, "other", b"x").await.unwrap();
    let mut clash = by_name("other");
    clash.file = Some(FileTarget {
        name: "db_pw".into(),
        mode: 0o400,
        ..Default::default()
    });
    let e = create(&api, with_secrets("web2", vec![by_name("db_pw"), clash]))
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "secret references 'db_pw' and 'other' have a conflicting target: 'db_pw'"
    );
    let mut escape = by_name("other");
    escape.file = Some(FileTarget {
        name: "../etc/passwd".into(),
        ..Default::default()
    });
    let e = create(&api, with_secrets("web3", vec![escape]))
        .await
        .unwrap_err();
    assert!(e.message().contains("invalid target"), "{}", e.message());
}

#[tokio::test]
async fn a_secret_in_use_cannot_be_removed_until_the_service_lets_go() {
    let (api, _) = api();
    new_secret(&api, "db_pw", b"pw").await.unwrap();
    let web = create(&api, with_secrets("web", vec![by_name("db_pw")]))
        .await
        .unwrap();
    let e = remove_secret(&api, "db_pw").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "secret 'db_pw' is in use by the following service: web"
    );
    create(&api, with_secrets("api", vec![by_name("db_pw")]))
        .await
        .unwrap();
    let e = remove_secret(&api, "db_pw").await.unwrap_err();
    assert_eq!(
        e.message(),
        "secret 'db_pw' is in use by the following services: api, web"
    );
    let version = web.meta.as_ref().unwrap().version;
    update(&api, &web.id, version, with_secrets("web", vec![]))
        .await
        .unwrap();
    api.remove_service(local(RemoveServiceRequest {
        service_id: "api".into(),
    }))
    .await
    .unwrap();
    remove_secret(&api, "db_pw").await.unwrap();
    let e = remove_secret(&api, "db_pw").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}
