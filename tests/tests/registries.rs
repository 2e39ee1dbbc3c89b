//! Private registries as a Docker Swarm user meets them, in the lab: a registry serving TLS
//! with a certificate from the lab's CA (which every node's agent trusts, `--registry-ca`) and
//! requiring a login (htpasswd). A service of its image is rejected, saying the registry
//! refused it, without a login; after `swarm login` and `--with-registry-auth` its tasks pull
//! and run; the login is never shown by `service inspect`; an update without the flag keeps it.
//! A plain-HTTP registry is reached only when the node lists it as insecure (the lab's own
//! registry is; a second one on another port is not). Needs what `cargo xtask test` installs
//! (containerd, runc, docker-registry, apache2-utils, busybox-static …). One lab at a time.

use std::path::Path;

use proto::TaskState;
use swarm_oci::local::htpasswd_entry;
use swarm_oci::{Credentials, LocalSecurity, Registry, RegistryOptions};
use tests::images::{busybox_image, BUSYBOX};
use tests::lab::config::UNDERLAY_IP;
use tests::lab::testing::{test_lab as lab, wait_running, LONG};
use tests::lab::{registry_ca, Lab, LabNode};
use tests::{wait_for, AgentClient, CliOutput};

const USER: &str = "lab";
const PASSWORD: &str = "s3cret-Pa55";

/// `swarm ARGS…` on `node` with the given Docker config directory, trusting the lab's CA,
/// `stdin` on its standard input.
fn swarm(node: &LabNode, docker_config: &Path, ca: &Path, args: &[&str], stdin: &str) -> CliOutput {
    node.swarm_with_input(
        args,
        &[
            ("DOCKER_CONFIG", docker_config.as_os_str()),
            ("SSL_CERT_FILE", ca.as_os_str()),
        ],
        stdin.as_bytes(),
    )
}

/// Pushes the busybox image to `registry` from the underlay; its manifest digest.
fn push_busybox(lab: &Lab, registry: &str, opts: RegistryOptions) -> String {
    let image = busybox_image(Path::new(BUSYBOX)).unwrap_or_else(|e| panic!("{e:#}"));
    let host = registry.to_string();
    lab.in_underlay(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let reg = Registry::with_options(&host, opts)?;
            let r = reg.push(&image, "busybox", "latest").await?;
            anyhow::Ok(r.manifest_digest.to_string())
        })
    })
    .unwrap_or_else(|e| panic!("pushing busybox to {registry}: {e:#}"))
}

/// Waits until the only task of `service` is rejected; `service ps --no-trunc` then.
fn rejected(node: &LabNode, service: &str) -> String {
    wait_for(LONG, || {
        node.tasks(service)
            .unwrap_or_default()
            .iter()
            .any(|t| t.state() == TaskState::Rejected)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            node.swarm(&["service", "ps", "--no-trunc", service]).stdout,
            node.agent_log_tail()
        )
    });
    node.swarm_ok(&["service", "ps", "--no-trunc", service])
}

#[test]
fn a_tls_registry_with_a_login_needs_both_and_plain_http_needs_listing() {
    let (_g, lab) = lab(1, 0);
    let m = lab.node(1);
    let root = lab.root().to_path_buf();
    let ca = registry_ca::cert_path(&root);
    let ca_pem = std::fs::read(&ca).expect("the lab's CA");

    // The secure registry: TLS from the lab's CA, htpasswd login.
    let sec_dir = root.join("secure-registry");
    let tls = registry_ca::issue(&root, UNDERLAY_IP, &sec_dir.join("tls"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let htpasswd = sec_dir.join("htpasswd");
    std::fs::write(
        &htpasswd,
        htpasswd_entry(USER, PASSWORD).unwrap_or_else(|e| panic!("{e}")),
    )
    .expect("htpasswd");
    let secure = lab
        .underlay()
        .start_extra_registry(
            "secure-registry",
            5443,
            &LocalSecurity {
                tls: Some(tls),
                htpasswd: Some(htpasswd),
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    // A plain-HTTP registry no node lists as insecure.
    let plain = lab
        .underlay()
        .start_extra_registry("plain-registry", 5001, &LocalSecurity::default())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let secure_digest = push_busybox(
        &lab,
        secure.addr(),
        RegistryOptions {
            ca_pem: Some(ca_pem),
            credentials: Some(Credentials::new(USER, PASSWORD)),
            ..RegistryOptions::default()
        },
    );
    push_busybox(
        &lab,
        plain.addr(),
        RegistryOptions {
            insecure: true,
            ..RegistryOptions::default()
        },
    );
    let docker_config = tempfile::tempdir().expect("DOCKER_CONFIG");
    let cfg = docker_config.path();
    let image = format!("{}/busybox:latest", secure.addr());
    let cli = |args: &[&str]| swarm(m, cfg, &ca, args, "");

    // No login: the CLI cannot pin the image (Docker's warning), the node's pull is refused
    // and `service ps` says by which registry and what to do.
    let out = cli(&[
        "service",
        "create",
        "-d",
        "--name",
        "nologin",
        "--restart-condition",
        "none",
        "--with-registry-auth",
        &image,
        "sleep",
        "600",
    ]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("no login for registry {}", secure.addr())),
        "the flag says it has nothing to send: {out:?}"
    );
    let ps = rejected(m, "nologin");
    eprintln!("without a login:\n{ps}");
    assert!(ps.contains(secure.addr()), "names the registry: {ps}");
    assert!(
        ps.contains("HTTP 401") && ps.contains("swarm login"),
        "unauthorized, and the fix: {ps}"
    );
    m.swarm_ok(&["service", "rm", "nologin"]);

    // `swarm login` (checked against the registry over TLS), then --with-registry-auth.
    let out = swarm(
        m,
        cfg,
        &ca,
        &["login", "-u", USER, "--password-stdin", secure.addr()],
        PASSWORD,
    );
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.contains("Login Succeeded"), "{out:?}");
    // Without the flag the login stays on the client: the node is refused.
    let out = cli(&[
        "service",
        "create",
        "-d",
        "--name",
        "noflag",
        "--restart-condition",
        "none",
        &image,
        "sleep",
        "600",
    ]);
    assert!(out.ok(), "{out:?}");
    let ps = rejected(m, "noflag");
    assert!(ps.contains("HTTP 401"), "{ps}");
    m.swarm_ok(&["service", "rm", "noflag"]);

    let out = cli(&[
        "service",
        "create",
        "-d",
        "--name",
        "private",
        "--with-registry-auth",
        &image,
        "sleep",
        "600",
    ]);
    assert!(out.ok(), "{out:?}");
    let tasks = wait_running(&lab, "private", 1);
    assert!(
        tasks[0]
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .is_some_and(|c| c.pull_options.is_none()),
        "the Control API never returns the login"
    );
    let inspect = m.swarm_ok(&["service", "inspect", "private"]);
    let encoded = swarm_oci::RegistryAuth {
        credentials: Credentials::new(USER, PASSWORD),
        server_address: secure.addr().to_string(),
    }
    .encode();
    assert!(
        !inspect.contains(PASSWORD) && !inspect.contains(&encoded),
        "service inspect shows no login: {inspect}"
    );

    // An update without the flag keeps the service's login: with the manifest gone from the
    // node, the new task pulls it again from the registry, with that login.
    m.ctr(&["content", "rm", &secure_digest])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        !m.ctr(&["content", "ls", "-q"])
            .unwrap_or_default()
            .contains(&secure_digest),
        "the manifest is gone from the node"
    );
    let out = cli(&["service", "update", "-d", "--env-add", "STEP=2", "private"]);
    assert!(out.ok(), "{out:?}");
    wait_for(LONG, || {
        m.tasks("private").unwrap_or_default().iter().any(|t| {
            t.state() == TaskState::Running
                && t.spec
                    .as_ref()
                    .and_then(|s| s.container.as_ref())
                    .is_some_and(|c| c.env.iter().any(|e| e == "STEP=2"))
        })
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            m.swarm(&["service", "ps", "--no-trunc", "private"]).stdout
        )
    });
    assert!(
        m.ctr(&["content", "ls", "-q"])
            .unwrap_or_default()
            .contains(&secure_digest),
        "the manifest was pulled again"
    );

    // `stack deploy --with-registry-auth`: the stack's service pulls with the login too (the
    // manifest removed from the node again, so that it must).
    m.swarm_ok(&["service", "rm", "private"]);
    m.ctr(&["content", "rm", &secure_digest])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let compose = docker_config.path().join("stack.yml");
    std::fs::write(
        &compose,
        format!("services:\n  app:\n    image: {image}\n    command: [\"sleep\", \"600\"]\n"),
    )
    .expect("compose file");
    let compose = compose.to_string_lossy().to_string();
    let deploy = [
        "stack",
        "deploy",
        "-c",
        &compose,
        "--with-registry-auth",
        "shop",
    ];
    let out = cli(&deploy);
    assert!(out.ok(), "{out:?}");
    let first = wait_running(&lab, "shop_app", 1);
    // Deployed again unchanged: the service keeps its task.
    let out = cli(&deploy);
    assert!(out.ok(), "{out:?}");
    let again = m.tasks("shop_app").expect("tasks");
    assert!(
        again.len() == 1 && again[0].id == first[0].id,
        "an unchanged stack is not redeployed: {again:?}"
    );
    m.swarm_ok(&["stack", "rm", "shop"]);

    // Plain HTTP: the lab's registry, listed insecure on every node, serves; the other one,
    // not listed, is asked over HTTPS and the pull fails naming it.
    let listed = format!("{}/busybox:latest", lab.registry());
    m.create_service(&["--name", "listed", &listed, "sleep", "600"]);
    wait_running(&lab, "listed", 1);
    let unlisted = format!("{}/busybox:latest", plain.addr());
    let out = cli(&[
        "service",
        "create",
        "-d",
        "--name",
        "unlisted",
        "--restart-condition",
        "none",
        &unlisted,
        "sleep",
        "600",
    ]);
    assert!(out.ok(), "{out:?}");
    let ps = rejected(m, "unlisted");
    eprintln!("plain HTTP, not listed:\n{ps}");
    assert!(ps.contains(plain.addr()), "names the registry: {ps}");
    assert!(
        ps.contains("server gave HTTP response to HTTPS client")
            && ps.contains(&format!("--insecure-registry {}", plain.addr())),
        "Docker's words, and the fix: {ps}"
    );
}
