//! Resolving what the user typed to stored objects, like Docker: exact id, then exact name
//! (service/network name, node hostname, full task name), then a unique id prefix.

use proto::{Network, Node, Service, Task};
use tonic::Status;

use crate::store::{task_name, State};

/// The ways a kind of object can be named.
struct Names<'a, T> {
    kind: &'static str,
    /// What to call the name in messages ("name", "hostname").
    name_word: &'static str,
    exact: Option<&'a T>,
    id: fn(&T) -> &str,
    has_name: fn(&T, &str) -> bool,
}

/// Every object the reference names: the one with that id, every one with that name, or
/// the one whose id starts with it.
fn resolve_all<'a, T>(
    n: &Names<'a, T>,
    reference: &str,
    all: impl Iterator<Item = &'a T>,
) -> Result<Vec<&'a T>, Status> {
    if reference.is_empty() {
        return Err(Status::invalid_argument(format!(
            "a {kind} ID, ID prefix or {word} must be provided",
            kind = n.kind,
            word = n.name_word
        )));
    }
    if let Some(o) = n.exact {
        return Ok(vec![o]);
    }
    let mut named = Vec::new();
    let mut prefixed = Vec::new();
    for o in all {
        if (n.has_name)(o, reference) {
            named.push(o);
        } else if (n.id)(o).starts_with(reference) {
            prefixed.push(o);
        }
    }
    if !named.is_empty() {
        return Ok(named);
    }
    match prefixed.len() {
        0 => Err(Status::not_found(format!(
            "{kind} {reference} not found",
            kind = n.kind
        ))),
        1 => Ok(prefixed),
        count => Err(Status::invalid_argument(format!(
            "{kind} {reference} is ambiguous: multiple IDs found with provided prefix ({count} {kind}s match); give more characters of the ID",
            kind = n.kind
        ))),
    }
}

/// The one object the reference names; several objects with that name is an error.
fn find_one<'a, T>(
    n: &Names<'a, T>,
    reference: &str,
    all: impl Iterator<Item = &'a T>,
) -> Result<&'a T, Status> {
    let found = resolve_all(n, reference, all)?;
    match found.as_slice() {
        [one] => Ok(one),
        many => Err(Status::invalid_argument(format!(
            "{kind} {reference} is ambiguous ({count} matches found: {count} {kind}s have this {word}); use the {kind} ID",
            kind = n.kind,
            count = many.len(),
            word = n.name_word
        ))),
    }
}

fn service_names<'a>(st: &'a State, reference: &str) -> Names<'a, Service> {
    Names {
        kind: "service",
        name_word: "name",
        exact: st.service(reference),
        id: |s| s.id.as_str(),
        has_name: |s, r| s.name() == r,
    }
}

fn node_names<'a>(st: &'a State, reference: &str) -> Names<'a, Node> {
    Names {
        kind: "node",
        name_word: "hostname",
        exact: st.node(reference),
        id: |n| n.id.as_str(),
        has_name: |n, r| n.hostname() == r,
    }
}

fn network_names<'a>(st: &'a State, reference: &str) -> Names<'a, Network> {
    Names {
        kind: "network",
        name_word: "name",
        exact: st.network(reference),
        id: |n| n.id.as_str(),
        has_name: |n, r| n.spec.as_ref().is_some_and(|s| s.name == r),
    }
}

fn is_task_name(t: &Task, r: &str) -> bool {
    // Cheap pre-check before formatting: the name ends with the id.
    r.len() > t.id.len() && r.ends_with(t.id.as_str()) && task_name(t) == r
}

fn task_names<'a>(st: &'a State, reference: &str) -> Names<'a, Task> {
    Names {
        kind: "task",
        name_word: "name",
        exact: st.task(reference),
        id: |t| t.id.as_str(),
        has_name: is_task_name,
    }
}

pub(super) fn find_service<'a>(st: &'a State, reference: &str) -> Result<&'a Service, Status> {
    if let Some(s) = st
        .service_by_name(reference)
        .filter(|_| st.service(reference).is_none())
    {
        return Ok(s);
    }
    find_one(&service_names(st, reference), reference, st.services())
}

pub(super) fn find_node<'a>(st: &'a State, reference: &str) -> Result<&'a Node, Status> {
    find_one(&node_names(st, reference), reference, st.nodes())
}

pub(super) fn find_network<'a>(st: &'a State, reference: &str) -> Result<&'a Network, Status> {
    if let Some(n) = st
        .network_by_name(reference)
        .filter(|_| st.network(reference).is_none())
    {
        return Ok(n);
    }
    find_one(&network_names(st, reference), reference, st.networks())
}

pub(super) fn find_task<'a>(st: &'a State, reference: &str) -> Result<&'a Task, Status> {
    find_one(&task_names(st, reference), reference, st.tasks())
}

/// Service ids a `ListTasks` filter names. An exact id of a service that no longer exists
/// still matches its leftover tasks.
pub(super) fn filter_service_ids(st: &State, reference: &str) -> Result<Vec<String>, Status> {
    match resolve_all(&service_names(st, reference), reference, st.services()) {
        Ok(found) => Ok(found.into_iter().map(|s| s.id.clone()).collect()),
        Err(e)
            if e.code() == tonic::Code::NotFound
                && st.tasks_of_service(reference).next().is_some() =>
        {
            Ok(vec![reference.to_string()])
        }
        Err(e) => Err(e),
    }
}

/// Node ids a `ListTasks` filter names (every node with that hostname). An exact id of a
/// removed node still matches its leftover tasks.
pub(super) fn filter_node_ids(st: &State, reference: &str) -> Result<Vec<String>, Status> {
    match resolve_all(&node_names(st, reference), reference, st.nodes()) {
        Ok(found) => Ok(found.into_iter().map(|n| n.id.clone()).collect()),
        Err(e)
            if e.code() == tonic::Code::NotFound
                && st.tasks_on_node(reference).next().is_some() =>
        {
            Ok(vec![reference.to_string()])
        }
        Err(e) => Err(e),
    }
}
