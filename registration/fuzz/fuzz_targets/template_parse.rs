//! Fuzzes the `{placeholder}` template parser: any text either parses or is refused, and what
//! parses renders with fixed pod facts (every label it names present, and then absent) without
//! panicking; a literal template renders to itself.
#![no_main]

use std::collections::BTreeMap;

use lanyard_registration::PodFacts;
use lanyard_registration::template::{Placeholder, RenderError, Template};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(template) = Template::parse(text) else {
        return;
    };
    assert_eq!(template.as_str(), text);

    let mut labels = BTreeMap::new();
    let mut namespace_labels = BTreeMap::new();
    for p in template.placeholders() {
        match p {
            Placeholder::Label(k) => {
                labels.insert(k.clone(), "v".to_owned());
            }
            Placeholder::NamespaceLabel(k) => {
                namespace_labels.insert(k.clone(), "v".to_owned());
            }
            _ => {}
        }
    }
    let pod = PodFacts {
        namespace: "ns",
        name: "pod",
        uid: "00000000-0000-4000-8000-000000000000",
        service_account: "sa",
        node_name: "node",
        labels: &labels,
        namespace_labels: Some(&namespace_labels),
    };
    let rendered = template
        .render("example.org", &pod)
        .expect("every label the template names is set");
    if template.is_literal() {
        assert_eq!(rendered, text);
    }

    // Without any label: rendering fails exactly when the template names one.
    let empty = BTreeMap::new();
    let bare = PodFacts {
        labels: &empty,
        namespace_labels: None,
        ..pod
    };
    let needs_label = template
        .placeholders()
        .any(|p| matches!(p, Placeholder::Label(_) | Placeholder::NamespaceLabel(_)));
    match template.render("example.org", &bare) {
        Ok(_) => assert!(!needs_label),
        Err(RenderError::MissingValue(_)) => assert!(needs_label),
    }
});
