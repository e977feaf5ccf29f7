//! A protobuf `Struct` (the claims `ValidateJWTSVID` returns) back to JSON, for printing.

/// `s` as a JSON object.
pub fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

/// One protobuf `Value` as JSON. Whole numbers (times) print as integers.
pub fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => (*n as i64).into(),
        Some(Kind::NumberValue(n)) => (*n).into(),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::ListValue(l)) => l.values.iter().map(value_to_json).collect(),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(kind: prost_types::value::Kind) -> prost_types::Value {
        prost_types::Value { kind: Some(kind) }
    }

    #[test]
    fn claims_print_as_json() {
        use prost_types::value::Kind;
        let nested = prost_types::Struct {
            fields: [
                ("ok".to_owned(), value(Kind::BoolValue(true))),
                ("none".to_owned(), value(Kind::NullValue(0))),
            ]
            .into(),
        };
        let claims = prost_types::Struct {
            fields: [
                (
                    "sub".to_owned(),
                    value(Kind::StringValue("spiffe://a/b".into())),
                ),
                ("exp".to_owned(), value(Kind::NumberValue(1_700_000_000.0))),
                ("ratio".to_owned(), value(Kind::NumberValue(0.5))),
                (
                    "aud".to_owned(),
                    value(Kind::ListValue(prost_types::ListValue {
                        values: vec![value(Kind::StringValue("x".into()))],
                    })),
                ),
                ("nested".to_owned(), value(Kind::StructValue(nested))),
            ]
            .into(),
        };
        assert_eq!(
            struct_to_json(&claims),
            serde_json::json!({
                "sub": "spiffe://a/b", "exp": 1700000000, "aud": ["x"],
                "ratio": 0.5, "nested": {"ok": true, "none": null}
            })
        );
        assert_eq!(
            struct_to_json(&claims)["exp"].to_string(),
            "1700000000",
            "a whole number prints without a fraction"
        );
    }
}
