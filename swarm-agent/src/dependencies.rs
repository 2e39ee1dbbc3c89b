//! The secrets and configs the managers sent this node (SwarmKit's agent `secrets`/`configs`
//! stores): kept in memory only, never written to the data root, and forgotten when the
//! dispatcher says no task of the node needs them any more. [`Dependencies::files_for`]
//! turns a task's references into the files its container gets ([`TaskFiles`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use proto::{assignment_change, AssignmentChange, Config, FileTarget, Secret, Task};

/// Where a secret with a relative target appears in the container (Docker's).
pub const SECRETS_DIR: &str = "/run/secrets";

/// The secrets and configs this node holds, by id.
#[derive(Clone, Default)]
pub struct Dependencies {
    inner: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    secrets: HashMap<String, Secret>,
    configs: HashMap<String, Config>,
}

/// One file a task's container gets. Its `Debug` leaves the data out.
#[derive(Clone, PartialEq)]
pub struct TaskFile {
    /// Absolute path in the container.
    pub path: String,
    /// A secret (true) or a config.
    pub secret: bool,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for TaskFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFile")
            .field("path", &self.path)
            .field("secret", &self.secret)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// The secret and config files of one task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskFiles(pub Vec<TaskFile>);

impl TaskFiles {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn lock(m: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The container path of a target: relative ones go under `base`.
fn container_path(base: &str, target: &str) -> String {
    if target.starts_with('/') {
        target.to_string()
    } else {
        format!("{}/{target}", base.trim_end_matches('/'))
    }
}

fn owner(kind: &str, name: &str, what: &str, v: &str) -> Result<u32, String> {
    if v.is_empty() {
        return Ok(0);
    }
    v.parse().map_err(|_| {
        format!("{kind} {name}: {what} {v:?} is not numeric (the managers should have refused it)")
    })
}

fn file(
    kind: &str,
    name: &str,
    base: &str,
    target: Option<&FileTarget>,
    data: &[u8],
) -> Result<TaskFile, String> {
    let default = FileTarget {
        name: name.to_string(),
        mode: 0o444,
        ..Default::default()
    };
    let t = target.unwrap_or(&default);
    let target_name = if t.name.is_empty() { name } else { &t.name };
    Ok(TaskFile {
        path: container_path(base, target_name),
        secret: kind == "secret",
        uid: owner(kind, name, "uid", &t.uid)?,
        gid: owner(kind, name, "gid", &t.gid)?,
        mode: t.mode & 0o777,
        data: data.to_vec(),
    })
}

impl Dependencies {
    /// Applies the secret and config changes of an assignments message. A COMPLETE message
    /// replaces everything held (`complete` = true), so what it leaves out is forgotten.
    pub fn apply(&self, complete: bool, changes: &[AssignmentChange]) {
        let mut held = lock(&self.inner);
        if complete {
            held.secrets.clear();
            held.configs.clear();
        }
        let remove = assignment_change::Action::Remove as i32;
        // Ids only in the log, never data.
        for c in changes {
            if let Some(s) = &c.secret {
                if c.action == remove {
                    held.secrets.remove(&s.id);
                    tracing::info!("secret {} forgotten", s.id);
                } else {
                    held.secrets.insert(s.id.clone(), s.clone());
                    tracing::info!("secret {} received", s.id);
                }
            }
            if let Some(o) = &c.config {
                if c.action == remove {
                    held.configs.remove(&o.id);
                    tracing::info!("config {} forgotten", o.id);
                } else {
                    held.configs.insert(o.id.clone(), o.clone());
                    tracing::info!("config {} received", o.id);
                }
            }
        }
    }

    /// Forgets everything (the node left the swarm).
    pub fn clear(&self) {
        let mut held = lock(&self.inner);
        held.secrets.clear();
        held.configs.clear();
    }

    /// The ids of what is held: (secrets, configs), sorted.
    pub fn held_ids(&self) -> (Vec<String>, Vec<String>) {
        let held = lock(&self.inner);
        let mut s: Vec<String> = held.secrets.keys().cloned().collect();
        let mut c: Vec<String> = held.configs.keys().cloned().collect();
        s.sort();
        c.sort();
        (s, c)
    }

    /// The files of the task's secrets and configs, or why they cannot be made (one this
    /// node was not sent).
    pub fn files_for(&self, task: &Task) -> Result<TaskFiles, String> {
        let Some(c) = task.spec.as_ref().and_then(|s| s.container.as_ref()) else {
            return Ok(TaskFiles::default());
        };
        let held = lock(&self.inner);
        let mut files = Vec::new();
        for r in &c.secrets {
            let s = held.secrets.get(&r.secret_id).ok_or_else(|| {
                format!(
                    "secret {} ({}) was not sent to this node",
                    r.secret_name, r.secret_id
                )
            })?;
            let data = s.spec.as_ref().map_or(&[][..], |sp| sp.data.as_slice());
            files.push(file(
                "secret",
                &r.secret_name,
                SECRETS_DIR,
                r.file.as_ref(),
                data,
            )?);
        }
        for r in &c.configs {
            let o = held.configs.get(&r.config_id).ok_or_else(|| {
                format!(
                    "config {} ({}) was not sent to this node",
                    r.config_name, r.config_id
                )
            })?;
            let data = o.spec.as_ref().map_or(&[][..], |sp| sp.data.as_slice());
            files.push(file("config", &r.config_name, "/", r.file.as_ref(), data)?);
        }
        Ok(TaskFiles(files))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{
        ConfigReference, ConfigSpec, ContainerSpec, SecretReference, SecretSpec, TaskSpec,
    };

    fn secret(id: &str, data: &[u8]) -> Secret {
        Secret {
            id: id.into(),
            spec: Some(SecretSpec {
                name: format!("name-{id}"),
                data: data.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn change(action: assignment_change::Action, s: Secret) -> AssignmentChange {
        AssignmentChange {
            action: action as i32,
            secret: Some(s),
            ..Default::default()
        }
    }

    fn task() -> Task {
        Task {
            id: "t1".into(),
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    secrets: vec![SecretReference {
                        secret_id: "s1".into(),
                        secret_name: "db_pw".into(),
                        file: Some(FileTarget {
                            name: "db_pw".into(),
                            uid: "1000".into(),
                            gid: "".into(),
                            mode: 0o400,
                        }),
                    }],
                    configs: vec![ConfigReference {
                        config_id: "c1".into(),
                        config_name: "app.conf".into(),
                        file: Some(FileTarget {
                            name: "etc/app.conf".into(),
                            mode: 0o444,
                            ..Default::default()
                        }),
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn files_come_from_what_was_sent_and_go_when_forgotten() {
        use assignment_change::Action;
        let deps = Dependencies::default();
        let e = deps.files_for(&task()).unwrap_err();
        assert!(e.contains("secret db_pw (s1) was not sent"), "{e}");
        deps.apply(true, &[change(Action::Update, secret("s1", b"hunter2"))]);
        deps.apply(
            false,
            &[AssignmentChange {
                action: Action::Update as i32,
                config: Some(Config {
                    id: "c1".into(),
                    spec: Some(ConfigSpec {
                        name: "app.conf".into(),
                        data: b"port=80".to_vec(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        );
        let files = deps.files_for(&task()).unwrap();
        assert_eq!(files.0.len(), 2);
        let s = &files.0[0];
        assert_eq!(
            (s.path.as_str(), s.secret, s.uid, s.gid, s.mode),
            ("/run/secrets/db_pw", true, 1000, 0, 0o400)
        );
        assert_eq!(s.data, b"hunter2");
        assert!(
            !format!("{files:?}").contains("hunter2"),
            "Debug shows no data"
        );
        let c = &files.0[1];
        assert_eq!((c.path.as_str(), c.secret), ("/etc/app.conf", false));
        assert_eq!(c.data, b"port=80");
        deps.apply(
            false,
            &[change(
                Action::Remove,
                Secret {
                    id: "s1".into(),
                    ..Default::default()
                },
            )],
        );
        assert_eq!(deps.held_ids(), (vec![], vec!["c1".to_string()]));
        // A COMPLETE message replaces everything.
        deps.apply(true, &[change(Action::Update, secret("s2", b"x"))]);
        assert_eq!(deps.held_ids(), (vec!["s2".to_string()], vec![]));
    }
}
