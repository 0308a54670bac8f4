//! Server-side apply (`PATCH` with `application/apply-patch+yaml`).
//!
//! The applied configuration is merged into the live object (by merge key
//! for built-in lists, as strategic merge does), and the manager's field set
//! is recorded in `managedFields` with operation `Apply`. A field that
//! another manager owns with a different value is a conflict (409) unless
//! the request says `force=true`, in which case ownership moves.

use crate::fields::{fields_of, leaf_paths, value_at};
use crate::request::{Reply, Request};
use crate::rest::{self, ApiResult, Part, Target};
use crate::state::ApiState;
use crate::status::ApiError;
use serde_json::{json, Value};

pub async fn server_side_apply(
    state: &ApiState,
    t: &Target,
    name: &str,
    req: &Request,
    applied: Value,
    part: Part,
) -> ApiResult<Reply> {
    let manager = req
        .param("fieldManager")
        .ok_or_else(|| {
            ApiError::bad_request(
                "PATCH with application/apply-patch+yaml requires the fieldManager parameter",
            )
        })?
        .to_owned();
    if !applied.is_object() {
        return Err(ApiError::bad_request(
            "the applied configuration must be an object",
        ));
    }
    if applied["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n != name)
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            applied["metadata"]["name"].as_str().unwrap_or_default()
        )));
    }
    let force = req.flag("force");
    let dry_run = req.param("dryRun").is_some();
    for _ in 0..8 {
        let current = match state.store.get(&t.key(name)).await? {
            Some(kv) => Some((rest::from_stored(&t.res, &kv)?, kv)),
            None => None,
        };
        let Some((live, kv)) = current else {
            // Apply creates what does not exist yet.
            let mut obj = applied.clone();
            obj["metadata"]["name"] = json!(name);
            return rest::create_object(state, t, obj, &manager, "Apply", dry_run).await;
        };
        let mine = fields_of(&applied);
        // Conflicts: another manager owns a field we set, with another value.
        let mut conflicts = vec![];
        for entry in live["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let owner = entry["manager"].as_str().unwrap_or_default();
            if owner == manager {
                continue;
            }
            let theirs = leaf_paths(&entry["fieldsV1"]);
            for path in leaf_paths(&mine) {
                if theirs.contains(&path) && value_at(&live, &path) != value_at(&applied, &path) {
                    conflicts.push((owner.to_owned(), path));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            let lines: Vec<String> = conflicts
                .iter()
                .map(|(m, p)| format!("conflict with {m:?}: {p}"))
                .collect();
            let msg = if lines.len() == 1 {
                format!("Apply failed with 1 conflict: {}", lines[0])
            } else {
                format!(
                    "Apply failed with {} conflicts: {}",
                    lines.len(),
                    lines.join("\n")
                )
            };
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m:?}"), "field": p}))
                .collect();
            let mut e = ApiError::conflict_message(msg);
            e.details = Some(json!({"causes": causes}));
            return Err(e);
        }
        let reg = state.registry();
        let mut merged = live.clone();
        let mut patch = applied.clone();
        if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            m.remove("managedFields");
        }
        if t.res.custom.is_some() {
            mast_api::patch::merge_patch(&mut merged, &patch);
        } else {
            mast_api::patch::strategic_merge(
                &reg.schemas,
                &mut merged,
                &patch,
                Some(&reg.schema_of(&t.res)),
            )
            .map_err(|e| ApiError::unprocessable_patch(e.to_string()))?;
        }
        // Fields this manager applied before but no longer applies go,
        // unless another manager also owns them.
        let previous = live["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["manager"] == manager.as_str() && e["operation"] == "Apply")
            .map(|e| leaf_paths(&e["fieldsV1"]))
            .unwrap_or_default();
        let now_applied = leaf_paths(&mine);
        for path in previous.iter().filter(|p| !now_applied.contains(p)) {
            remove_path(&mut merged, path);
        }
        // Forced conflicts move ownership: drop the field from the others.
        let mut managed: Vec<Value> = merged["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if force {
            for entry in managed.iter_mut() {
                if entry["manager"] != manager.as_str() {
                    for (_, p) in conflicts.iter() {
                        remove_fields_path(&mut entry["fieldsV1"], p);
                    }
                }
            }
        }
        managed.retain(|e| !(e["manager"] == manager.as_str() && e["operation"] == "Apply"));
        managed.push(
            json!({"manager": manager, "operation": "Apply", "apiVersion": t.res.api_version(),
            "time": rest::now(), "fieldsType": "FieldsV1", "fieldsV1": mine}),
        );
        merged["metadata"]["managedFields"] = json!(managed);
        merged["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
        match rest::write_update(
            state,
            t,
            &live,
            &kv,
            merged,
            rest::WriteOpts {
                part,
                manager: None,
                dry_run,
            },
        )
        .await
        {
            Err(e)
                if e.reason == "Conflict"
                    && e.details
                        .as_ref()
                        .is_some_and(|d| d.get("causes").is_none()) =>
            {
                continue
            }
            Err(e) => return Err(e),
            Ok(out) => return Ok(rest::render_one(t, req, out, 200)),
        }
    }
    Err(ApiError::conflict(&t.res.plural, &t.res.group, name))
}

fn remove_path(obj: &mut Value, path: &str) {
    // Only plain `.a.b.c` paths are removed; list items stay (safer).
    if path.contains('[') {
        return;
    }
    let segs: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    let mut cur = obj;
    for s in &segs[..segs.len().saturating_sub(1)] {
        match cur.get_mut(*s) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let (Some(m), Some(last)) = (cur.as_object_mut(), segs.last()) {
        m.remove(*last);
    }
}

fn remove_fields_path(fields: &mut Value, path: &str) {
    if path.contains('[') {
        return;
    }
    let segs: Vec<String> = path
        .trim_start_matches('.')
        .split('.')
        .map(|s| format!("f:{s}"))
        .collect();
    let mut cur = fields;
    for s in &segs[..segs.len().saturating_sub(1)] {
        match cur.get_mut(s) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let (Some(m), Some(last)) = (cur.as_object_mut(), segs.last()) {
        m.remove(last);
    }
}
