//! End-to-end: encryption at rest and autolock on three real `test-agent` managers driven by
//! the real `swarm` CLI (loopback harness): the Raft files hold neither a secret's bytes nor
//! a private key in the clear; a restarted manager stays locked until `swarm unlock` gives
//! the key (a wrong or rotated-away key is refused) while the other two keep serving.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::{swarm_bin, wait_for, AgentClient, AgentProc, CliOutput, Cluster};

const LOCKED: &str = "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"swarm unlock\" to unlock it.";
const SECRET: &[u8] = b"autolock-db-password-7f3a91c2";

/// `swarm ARGS` on `node` with `input` on stdin.
fn swarm_stdin(node: &AgentProc, args: &[&str], input: &[u8]) -> CliOutput {
    let mut child = Command::new(swarm_bin())
        .arg("-H")
        .arg(format!("unix://{}", node.socket().display()))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the swarm CLI");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().expect("the swarm CLI").into()
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            found.extend(files_containing(&p, needle));
        } else if std::fs::read(&p)
            .unwrap_or_default()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(p.display().to_string());
        }
    }
    found
}

fn raft_dir(n: &AgentProc) -> std::path::PathBuf {
    n.data_root.join("raft")
}

fn dek_file(n: &AgentProc) -> String {
    std::fs::read_to_string(raft_dir(n).join("raft.dek")).unwrap_or_default()
}

/// Node `i`'s data key wrapped by the unlock key, its `raft.kek` gone, its TLS key sealed.
fn autolocked_on_disk(n: &AgentProc) -> bool {
    let key = std::fs::read_to_string(n.cert_paths().1).unwrap_or_default();
    dek_file(n).contains("\"locked\":true")
        && !raft_dir(n).join("raft.kek").exists()
        && !key.contains("PRIVATE KEY")
        && !key.is_empty()
}

fn restart(c: &mut Cluster, i: usize) {
    c.nodes[i].stop();
    c.nodes[i].start().expect("restarting the agent");
}

fn assert_locked(c: &Cluster, i: usize) {
    let info = c.node(i).swarm(&["info"]);
    assert!(
        info.stdout.starts_with("Swarm: locked\n"),
        "{info:?}\n{}",
        c.logs()
    );
    let ls = c.node(i).swarm(&["node", "ls"]);
    assert_eq!(ls.code, 1, "{ls:?}");
    assert_eq!(
        ls.stderr.trim(),
        format!("Error response from daemon: {LOCKED}"),
        "the CLI says how to unlock"
    );
}

fn unlock(c: &Cluster, i: usize, key: &str) -> CliOutput {
    swarm_stdin(c.node(i), &["unlock"], format!("{key}\n").as_bytes())
}

fn wait_serving(c: &Cluster, i: usize) {
    wait_for(Duration::from_secs(30), || {
        c.node(i).swarm(&["node", "ls"]).ok()
    })
    .unwrap_or_else(|_| panic!("node {i} does not serve after unlock\n{}", c.logs()));
}

#[test]
fn autolocked_managers_stay_locked_until_unlocked_and_raft_files_hold_nothing_in_the_clear() {
    let mut c = Cluster::formed(3, 28501, 3);
    let out = swarm_stdin(c.node(0), &["secret", "create", "db_pw", "-"], SECRET);
    assert!(out.ok(), "{out:?}");

    let out = c.node(0).swarm(&["update", "--autolock=true"]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout.starts_with("Swarm updated.\nTo unlock a swarm manager after it restarts, run the `swarm unlock`\ncommand and provide the following key:\n\n    SWMKEY-1-"),
        "{}",
        out.stdout
    );
    let key = c
        .node(0)
        .swarm(&["unlock-key", "-q"])
        .stdout
        .trim()
        .to_string();
    assert!(
        key.starts_with("SWMKEY-1-") && out.stdout.contains(&key),
        "{key}"
    );

    // The key reached every manager through Raft: each re-wrapped its data key and sealed
    // its TLS key.
    wait_for(Duration::from_secs(20), || {
        c.nodes.iter().all(autolocked_on_disk)
    })
    .unwrap_or_else(|_| panic!("not every manager is autolocked on disk\n{}", c.logs()));
    for n in &c.nodes {
        let dir = raft_dir(n);
        assert!(dir.join("raft.redb").exists());
        let secret = files_containing(&dir, SECRET);
        assert!(secret.is_empty(), "the secret in the clear in {secret:?}");
        let keys = files_containing(&dir, b"PRIVATE KEY");
        assert!(keys.is_empty(), "the CA key in the clear in {keys:?}");
    }

    // A restarted manager stays locked; the other two keep serving.
    restart(&mut c, 2);
    assert_locked(&c, 2);
    for i in [0, 1] {
        let out = c.node(i).swarm(&["secret", "ls"]);
        assert!(out.ok() && out.stdout.contains("db_pw"), "{out:?}");
    }

    // A wrong key is refused and changes nothing; the right one brings it back.
    let wrong = c
        .node(0)
        .swarm(&["unlock-key", "-q"])
        .stdout
        .replace("SWMKEY-1-", "SWMKEY-1-A");
    for bad in [
        wrong.trim(),
        "SWMKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "nonsense",
    ] {
        let out = unlock(&c, 2, bad);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(
            out.stderr
                .contains("swarm could not be unlocked: invalid key provided"),
            "{out:?}"
        );
    }
    assert_locked(&c, 2);
    let out = unlock(&c, 2, &key);
    assert!(out.ok(), "{out:?}\n{}", c.logs());
    wait_serving(&c, 2);
    let out = unlock(&c, 2, &key);
    assert_eq!(out.stderr, "Error: swarm is not locked\n");

    // Rotation: every manager re-wraps with the new key; the old one stops working.
    let before: Vec<String> = c.nodes.iter().map(dek_file).collect();
    let out = c.node(1).swarm(&["unlock-key", "--rotate", "-q"]);
    assert!(out.ok(), "{out:?}");
    let new_key = out.stdout.trim().to_string();
    assert!(new_key.starts_with("SWMKEY-1-") && new_key != key);
    wait_for(Duration::from_secs(20), || {
        c.nodes
            .iter()
            .zip(&before)
            .all(|(n, old)| dek_file(n) != *old && autolocked_on_disk(n))
    })
    .unwrap_or_else(|_| panic!("not every manager re-wrapped its key\n{}", c.logs()));
    restart(&mut c, 2);
    assert_locked(&c, 2);
    let out = unlock(&c, 2, &key);
    assert!(
        out.stderr
            .contains("swarm could not be unlocked: invalid key provided"),
        "the old key still unlocks: {out:?}"
    );
    let out = unlock(&c, 2, &new_key);
    assert!(out.ok(), "{out:?}\n{}", c.logs());
    wait_serving(&c, 2);

    // Autolock off: the data keys are wrapped by `raft.kek` again, the TLS keys in PEM, and
    // a restarted manager starts by itself.
    let out = c.node(0).swarm(&["update", "--autolock=false"]);
    assert_eq!(out.stdout, "Swarm updated.\n", "{out:?}");
    wait_for(Duration::from_secs(20), || {
        c.nodes.iter().all(|n| {
            raft_dir(n).join("raft.kek").exists()
                && std::fs::read_to_string(n.cert_paths().1)
                    .unwrap_or_default()
                    .contains("PRIVATE KEY")
        })
    })
    .unwrap_or_else(|_| panic!("autolock off did not reach every manager\n{}", c.logs()));
    restart(&mut c, 2);
    wait_serving(&c, 2);
    let out = c.node(2).swarm(&["unlock-key"]);
    assert_eq!(out.stderr, "Error: no unlock key is set\n", "{out:?}");
}
