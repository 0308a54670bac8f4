//! Small JSON helpers that never insert: serde_json's `IndexMut`
//! (`v["key"]`) adds `"key": null` when the key is absent, which would leave
//! nulls in stored objects, and panics on a value of the wrong type.

use serde_json::Value;

/// The items of the array at `v[key]`, or nothing; `v` is left unchanged.
pub fn items_mut<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    v.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// The object at `v[key]`, if there is one.
pub fn object_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    v.get_mut(key).filter(|x| x.is_object())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absent_keys_stay_absent() {
        let mut v = json!({"a": [1, 2], "s": "x"});
        assert_eq!(items_mut(&mut v, "a").count(), 2);
        assert_eq!(items_mut(&mut v, "missing").count(), 0);
        assert_eq!(items_mut(&mut v, "s").count(), 0);
        assert!(object_mut(&mut v, "missing").is_none());
        assert_eq!(v, json!({"a": [1, 2], "s": "x"}));
        let mut arr = json!([1]);
        assert_eq!(items_mut(&mut arr, "k").count(), 0);
    }
}
