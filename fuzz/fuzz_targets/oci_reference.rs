//! Image references as users and stack files write them (`swarm_oci::Reference::parse`).
//! Checks: no panic; a parsed reference prints as text that parses to the same reference;
//! its parts are what `Reference::new` accepts; replacing its tag with its own tag or its
//! digest with its own digest changes nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use swarm_oci::Reference;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = Reference::parse(input) else {
        return;
    };
    let text = r.to_string();
    let again = Reference::parse(&text)
        .unwrap_or_else(|e| panic!("{input:?} parsed, its text {text:?} does not: {e}"));
    assert_eq!(again, r, "{input:?} → {text:?}");
    let _ = r.manifest_reference();
    if let Some(tag) = r.tag() {
        let same = r.with_tag(tag).expect("its own tag is valid");
        assert_eq!(same.tag(), r.tag());
    }
    if let Some(d) = r.digest() {
        assert_eq!(r.with_digest(d.clone()).digest(), Some(d));
    }
});
