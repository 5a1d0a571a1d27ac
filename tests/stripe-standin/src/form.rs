//! Stripe's request parameters: `application/x-www-form-urlencoded` bodies (and query strings)
//! with bracketed keys — `metadata[k]=v`, `items[0][price]=p`, `expand[]=x` — parsed into a
//! JSON tree (objects, arrays of indexed entries, string leaves) that handlers read through
//! [`Params`].

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::errors::{ApiError, ApiResult};

/// Splits `a[b][0][c]` into `["a", "b", "0", "c"]`; `a[]` gives an empty last segment.
fn split_key(key: &str) -> Vec<String> {
    let Some(open) = key.find('[') else {
        return vec![key.to_string()];
    };
    let mut parts = vec![key[..open].to_string()];
    let mut rest = &key[open..];
    while let Some(stripped) = rest.strip_prefix('[') {
        match stripped.find(']') {
            Some(close) => {
                parts.push(stripped[..close].to_string());
                rest = &stripped[close + 1..];
            }
            None => {
                parts.push(stripped.to_string());
                rest = "";
            }
        }
    }
    parts
}

/// Inserts one leaf; `[]` segments append, numeric segments index (kept as object keys until
/// [`arrays_from_indexed`] turns them into arrays).
fn insert(node: &mut Map<String, Value>, path: &[String], value: String) {
    let (head, tail) = (&path[0], &path[1..]);
    if tail.is_empty() {
        if head.is_empty() {
            // `a[]=x` at the leaf: append under a fresh numeric key
            let next = node.len().to_string();
            node.insert(next, Value::String(value));
        } else {
            node.insert(head.clone(), Value::String(value));
        }
        return;
    }
    let key = if head.is_empty() {
        node.len().to_string()
    } else {
        head.clone()
    };
    let child = node.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        // `a=x&a[b]=y`: the nested form wins, as Rails/Rack do
        *child = Value::Object(Map::new());
    }
    if let Value::Object(map) = child {
        insert(map, tail, value);
    }
}

/// Objects whose keys are all decimal indices become arrays ordered by index.
fn arrays_from_indexed(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let all_indices = !map.is_empty()
                && map
                    .keys()
                    .all(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
            if all_indices {
                let mut entries: Vec<(u64, Value)> = map
                    .into_iter()
                    .map(|(k, v)| (k.parse().unwrap_or(u64::MAX), arrays_from_indexed(v)))
                    .collect();
                entries.sort_by_key(|(i, _)| *i);
                Value::Array(entries.into_iter().map(|(_, v)| v).collect())
            } else {
                Value::Object(
                    map.into_iter()
                        .map(|(k, v)| (k, arrays_from_indexed(v)))
                        .collect(),
                )
            }
        }
        other => other,
    }
}

/// Parses a form body or query string.
pub fn parse(input: &str) -> Result<Params, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(input).map_err(|e| format!("invalid form body: {e}"))?;
    let mut root = Map::new();
    for (key, value) in pairs {
        if key.is_empty() {
            continue;
        }
        let path = split_key(&key);
        insert(&mut root, &path, value);
    }
    match arrays_from_indexed(Value::Object(root)) {
        Value::Object(map) => Ok(Params(map)),
        _ => Ok(Params(Map::new())),
    }
}

/// Request parameters as a tree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(pub Map<String, Value>);

/// Reads a leaf or a missing value as a string.
pub fn leaf_str(v: &Value) -> Option<&str> {
    v.as_str()
}

impl Params {
    /// Merges another parameter set (e.g. query string into body); `other` wins.
    pub fn merge(&mut self, other: Params) {
        for (k, v) in other.0 {
            self.0.insert(k, v);
        }
    }

    /// A nested parameter set (`subscription_data`, `items[0]`).
    pub fn child(&self, key: &str) -> Params {
        match self.0.get(key) {
            Some(Value::Object(map)) => Params(map.clone()),
            _ => Params::default(),
        }
    }

    /// Entries of an indexed list (`items[0][...]`, `items[1][...]`).
    pub fn list(&self, key: &str) -> Vec<Params> {
        match self.0.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Object(map) => Params(map.clone()),
                    _ => Params::default(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether the key is present at all.
    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// A string leaf; empty strings count as absent (Stripe's "unset").
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(leaf_str).filter(|s| !s.is_empty())
    }

    /// A string leaf that must be present.
    pub fn required_str(&self, key: &str) -> ApiResult<&str> {
        self.str(key).ok_or_else(|| ApiError::missing(key))
    }

    /// A string leaf, or an explicit empty string meaning "clear" (`Some(None)`).
    pub fn nullable_str(&self, key: &str) -> Option<Option<&str>> {
        self.0
            .get(key)
            .and_then(leaf_str)
            .map(|s| if s.is_empty() { None } else { Some(s) })
    }

    /// A list of strings (`lookup_keys[0]=a`, `expand[]=b`, or a single `a=b`).
    pub fn strings(&self, key: &str) -> Vec<String> {
        match self.0.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
            _ => Vec::new(),
        }
    }

    /// An integer leaf.
    pub fn i64(&self, key: &str) -> ApiResult<Option<i64>> {
        match self.str(key) {
            None => Ok(None),
            Some(s) => s
                .parse::<i64>()
                .map(Some)
                .map_err(|_| ApiError::invalid_integer(key, s)),
        }
    }

    /// A non-negative integer leaf.
    pub fn u64(&self, key: &str) -> ApiResult<Option<u64>> {
        match self.i64(key)? {
            Some(n) if n < 0 => Err(ApiError::invalid(
                key,
                format!("Invalid non-negative integer: {n}"),
            )),
            other => Ok(other.map(|n| n as u64)),
        }
    }

    /// A boolean leaf (`true`/`false`).
    pub fn bool(&self, key: &str) -> ApiResult<Option<bool>> {
        match self.str(key) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(s) => Err(ApiError::invalid(key, format!("Invalid boolean: {s}"))),
        }
    }

    /// `metadata[k]=v` as a map; `None` when absent, `Some(empty)` for `metadata=` (clear).
    /// Values that are empty strings are kept so updates can delete those keys.
    pub fn metadata(&self, key: &str) -> ApiResult<Option<BTreeMap<String, String>>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(Some(BTreeMap::new())),
            Some(Value::Object(map)) => {
                let mut out = BTreeMap::new();
                for (k, v) in map {
                    match v.as_str() {
                        Some(s) => {
                            out.insert(k.clone(), s.to_string());
                        }
                        None => {
                            return Err(ApiError::invalid(
                                &format!("{key}[{k}]"),
                                "Invalid metadata value",
                            ));
                        }
                    }
                }
                Ok(Some(out))
            }
            Some(_) => Err(ApiError::invalid(key, "Invalid hash")),
        }
    }

    /// Rejects parameters outside `allowed` (besides `expand`), like Stripe's `parameter_unknown`.
    pub fn only(&self, allowed: &[&str]) -> ApiResult<()> {
        for key in self.0.keys() {
            if key != "expand" && !allowed.contains(&key.as_str()) {
                return Err(ApiError::unknown_param(key));
            }
        }
        Ok(())
    }

    /// Rejects keys of a nested set outside `allowed`, naming them `prefix[key]`.
    pub fn only_nested(&self, prefix: &str, allowed: &[&str]) -> ApiResult<()> {
        for key in self.0.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(ApiError::unknown_param(&format!("{prefix}[{key}]")));
            }
        }
        Ok(())
    }

    /// `expand[]` paths.
    pub fn expand(&self) -> Vec<String> {
        self.strings("expand")
    }
}

/// Applies a metadata update Stripe-style: keys are merged, an empty value deletes its key,
/// an empty map (`metadata=`) clears everything.
pub fn merge_metadata(target: &mut BTreeMap<String, String>, update: BTreeMap<String, String>) {
    if update.is_empty() {
        target.clear();
        return;
    }
    for (k, v) in update {
        if v.is_empty() {
            target.remove(&k);
        } else {
            target.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bracketed_keys_nest_into_objects_and_indexed_arrays() {
        let p = parse(
            "customer=cus_1&metadata%5Bplan%5D=pro&metadata[tenant]=t%201&line_items%5B0%5D%5Bprice%5D=price_a&line_items%5B0%5D%5Bquantity%5D=2&line_items%5B1%5D%5Bprice%5D=price_b&expand%5B0%5D=latest_invoice",
        )
        .unwrap();
        assert_eq!(p.str("customer"), Some("cus_1"));
        assert_eq!(p.0["metadata"], json!({"plan": "pro", "tenant": "t 1"}));
        let items = p.list("line_items");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].str("price"), Some("price_a"));
        assert_eq!(items[0].u64("quantity").unwrap(), Some(2));
        assert_eq!(items[1].str("price"), Some("price_b"));
        assert_eq!(p.expand(), vec!["latest_invoice".to_string()]);
    }

    #[test]
    fn indices_order_numerically_not_lexically() {
        let body: Vec<String> = (0..12).map(|i| format!("lookup_keys[{i}]=k{i}")).collect();
        let p = parse(&body.join("&")).unwrap();
        let keys = p.strings("lookup_keys");
        assert_eq!(keys.len(), 12);
        assert_eq!(keys[10], "k10");
        assert_eq!(keys[2], "k2");
    }

    #[test]
    fn empty_brackets_append() {
        let p = parse("expand[]=a&expand[]=b&types[]=x").unwrap();
        assert_eq!(p.expand(), vec!["a".to_string(), "b".to_string()]);
        assert_eq!(p.strings("types"), vec!["x".to_string()]);
    }

    #[test]
    fn nested_objects_inside_arrays_and_deep_keys() {
        let p = parse("subscription_details[items][0][id]=si_1&subscription_details[items][0][price]=price_2&subscription_details[proration_date]=1700000000&created[gte]=5").unwrap();
        let details = p.child("subscription_details");
        let items = details.list("items");
        assert_eq!(items[0].str("id"), Some("si_1"));
        assert_eq!(items[0].str("price"), Some("price_2"));
        assert_eq!(details.i64("proration_date").unwrap(), Some(1_700_000_000));
        assert_eq!(p.child("created").i64("gte").unwrap(), Some(5));
    }

    #[test]
    fn empty_metadata_clears_and_empty_values_delete() {
        let p = parse("metadata=").unwrap();
        assert_eq!(p.metadata("metadata").unwrap(), Some(BTreeMap::new()));
        let mut current = BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]);
        let update = parse("metadata[a]=&metadata[c]=3")
            .unwrap()
            .metadata("metadata")
            .unwrap()
            .unwrap();
        merge_metadata(&mut current, update);
        assert_eq!(
            current,
            BTreeMap::from([
                ("b".to_string(), "2".to_string()),
                ("c".to_string(), "3".to_string())
            ])
        );
        merge_metadata(&mut current, BTreeMap::new());
        assert!(current.is_empty());
    }

    #[test]
    fn unknown_parameters_are_named() {
        let p = parse("email=a%40b.c&colour=blue").unwrap();
        let err = p.only(&["email"]).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("colour"));
        assert_eq!(err.code, Some("parameter_unknown"));
    }

    #[test]
    fn invalid_integers_and_booleans_are_rejected() {
        let p = parse("amount=12x&flag=yes").unwrap();
        assert!(p.i64("amount").is_err());
        assert!(p.bool("flag").is_err());
    }
}
